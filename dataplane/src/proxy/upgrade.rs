//! HTTP/1.1 Upgrade (WebSocket, or any other token) across the mesh.
//!
//! HTTP/3 has no `Upgrade` (RFC 9114 §4.5 forbids 101) and h3 0.0.8's extended CONNECT knows
//! only `webtransport` and `connect-udp`, so an upgrade crosses between proxies as a plain
//! HTTP/3 CONNECT stream (`:authority` as the app sent it, `quiver-target` as on any request)
//! that carries the original request: its method in `quiver-upgrade-method`, its path and query
//! in `quiver-upgrade-path`, the protocol asked for in `quiver-upgrade`, and its end-to-end
//! headers as they are. The callee's proxy restores the request ([`from_mesh`]) before its path
//! is normalized and authorized like any request, replays it to the app on an HTTP/1.1
//! connection of its own ([`to_app`]) and answers the CONNECT with 200 and `quiver-upgrade`
//! when the app switched (the app's 101 headers, e.g. `Sec-WebSocket-Accept`, ride along), or
//! with the app's own answer when it did not. The caller's proxy turns the first into a 101
//! for its app ([`switched`]); both then pump bytes (`proxy::tunnel`, with its idle timeout).
//!
//! This module translates heads and pumps; it decides nothing: routing (caller) and
//! authorization (callee) run on the restored request in `proxy/dispatch.rs` and
//! `proxy/inbound.rs`, exactly as for a request that does not upgrade.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::Inputs;
use crate::errors::{Direction, ProxyError};
use crate::mesh::body::{self, ProxyBody, RecvHalf, SendHalf};
use crate::mesh::stream::{ClientRecv, ClientSend};
use crate::mesh::transport::PeerConn;
use crate::proxy::http::{
    PEER_IDENTITY_HEADER, TARGET_HEADER, check_header_size, strip_hop_by_hop,
};
use crate::proxy::tunnel;
use crate::snapshot::{LocalPort, Protocol};
use quiver_api::SpiffeId;

/// On the CONNECT between proxies: the protocol the app asked for. On the callee's 200: the
/// protocol the app switched to (its 101's `Upgrade`).
pub const UPGRADE_HEADER: &str = "quiver-upgrade";
/// On the CONNECT between proxies: the app's request method.
pub const METHOD_HEADER: &str = "quiver-upgrade-method";
/// On the CONNECT between proxies: the app's (normalized) path and query.
pub const PATH_HEADER: &str = "quiver-upgrade-path";

/// An app's request that asks to switch protocols, with what it needs on the caller's side.
pub struct Upgrade {
    /// The `Upgrade` header the app sent (`websocket`).
    pub protocol: HeaderValue,
    /// Resolves to the app's connection once the 101 has been written to it.
    pub on_upgrade: OnUpgrade,
}

/// The protocol an app's request asks to switch to: its `Upgrade` header, when its
/// `Connection` header names `upgrade` (RFC 9110 §7.8). Only HTTP/1.1 has the mechanism.
///
/// `h2c` is left out (a request asking only for it is an ordinary request, its upgrade headers
/// dropped as hop-by-hop, as before): the sidecar already speaks HTTP/2 to apps that want it,
/// and a tunnel would carry every later request on that connection past routing and
/// authorization. Clients offer it opportunistically (`curl --http2`) and do fine without.
pub fn requested(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    let offered = headers.get(header::UPGRADE)?.to_str().ok()?;
    let kept: Vec<&str> = offered
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("h2c"))
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// Take an app's upgrade out of its request, if it asks for one. An upgrade request with a
/// body is refused: the body would have to cross before the switch, and no upgrade in use
/// (WebSocket, h2c) sends one.
pub fn take(
    parts: &mut http::request::Parts,
    has_body: bool,
) -> Result<Option<Upgrade>, ProxyError> {
    let Some(protocol) = requested(parts.version, &parts.headers) else {
        return Ok(None);
    };
    if has_body {
        return Err(ProxyError::BadRequest(
            "an upgrade request must not carry a body".into(),
        ));
    }
    let on_upgrade = parts
        .extensions
        .remove::<OnUpgrade>()
        .ok_or_else(|| ProxyError::BadRequest("this connection cannot be upgraded".into()))?;
    Ok(Some(Upgrade {
        protocol,
        on_upgrade,
    }))
}

/// The prepared request head (`dispatch::prepare_head`: hop-by-hop headers gone,
/// `quiver-target` set) as the CONNECT that carries it to the peer proxy.
pub fn mesh_head(mut head: Request<()>, protocol: &HeaderValue) -> Result<Request<()>, ProxyError> {
    let path = head
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let path =
        HeaderValue::from_str(path).map_err(|e| ProxyError::BadRequest(format!("path: {e}")))?;
    let method = HeaderValue::from_str(head.method().as_str())
        .map_err(|e| ProxyError::BadRequest(format!("method: {e}")))?;
    let authority = head
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| ProxyError::BadRequest("request names no host".into()))?;
    let uri: Uri = authority
        .parse()
        .map_err(|e| ProxyError::BadRequest(format!("authority {authority:?}: {e}")))?;
    let headers = head.headers_mut();
    headers.insert(UPGRADE_HEADER, protocol.clone());
    headers.insert(METHOD_HEADER, method);
    headers.insert(PATH_HEADER, path);
    *head.method_mut() = Method::CONNECT;
    *head.uri_mut() = uri;
    Ok(head)
}

/// The protocol the peer says the app switched to: set only on a 2xx answer to the CONNECT
/// (any other answer is the app's, or a proxy's, ordinary response).
pub fn accepted(resp: &Response<()>) -> Option<HeaderValue> {
    if !resp.status().is_success() {
        return None;
    }
    resp.headers().get(UPGRADE_HEADER).cloned()
}

/// The peer's 200 (the app switched) as the 101 the calling app expects; the tunnel between
/// the app's connection and the CONNECT stream runs on its own task from here.
pub fn switched(
    inputs: &Arc<Inputs>,
    service: String,
    peer: PeerConn,
    stream: (ClientSend, ClientRecv),
    resp: Response<()>,
    protocol: HeaderValue,
    on_upgrade: OnUpgrade,
) -> Response<ProxyBody> {
    let (mut parts, ()) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(UPGRADE_HEADER);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(header::UPGRADE, protocol);
    parts.status = StatusCode::SWITCHING_PROTOCOLS;
    parts.version = Version::HTTP_11;
    let inputs = inputs.clone();
    tokio::spawn(async move {
        let _inflight = inputs.drain.track();
        // Holding the connection handle keeps the QUIC connection open for the tunnel's life.
        let _peer = peer;
        let (tx, rx) = stream;
        pump(&inputs, Direction::Outbound, &service, on_upgrade, tx, rx).await;
    });
    Response::from_parts(parts, body::empty())
}

/// On the callee's proxy: a CONNECT that carries an upgrade back into the request it carries
/// (method, path, `:authority`), returning the protocol asked for. `None` for any other
/// request, which is left as it is.
pub fn from_mesh(req: &mut Request<()>) -> Result<Option<HeaderValue>, ProxyError> {
    if req.method() != Method::CONNECT {
        return Ok(None);
    }
    let Some(protocol) = req.headers_mut().remove(UPGRADE_HEADER) else {
        return Ok(None);
    };
    let field = |name: &str, v: Option<HeaderValue>| {
        v.and_then(|v| v.to_str().ok().map(str::to_string))
            .ok_or_else(|| ProxyError::BadRequest(format!("{name}: missing or not text")))
    };
    let method = field(METHOD_HEADER, req.headers_mut().remove(METHOD_HEADER))?;
    let method = Method::from_bytes(method.as_bytes())
        .ok()
        .filter(|m| *m != Method::CONNECT)
        .ok_or_else(|| ProxyError::BadRequest(format!("{METHOD_HEADER}: not a method")))?;
    let path = field(PATH_HEADER, req.headers_mut().remove(PATH_HEADER))?;
    if !path.starts_with('/') {
        return Err(ProxyError::BadRequest(format!(
            "{PATH_HEADER}: must start with /"
        )));
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| ProxyError::BadRequest("the upgrade names no authority".into()))?;
    let uri = Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| ProxyError::BadRequest(format!("{PATH_HEADER}: {e}")))?;
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    Ok(Some(protocol))
}

/// On the callee's proxy: replay an authorized upgrade request to the app on an HTTP/1.1
/// connection of its own (never a pooled one: it becomes the tunnel). The app's answer comes
/// back with hop-by-hop headers removed; a 101 also carries `quiver-upgrade` (the protocol the
/// app switched to) and its connection in the response's upgrade handle.
pub async fn to_app(
    inputs: &Inputs,
    peer: &SpiffeId,
    port: &LocalPort,
    req: Request<()>,
    protocol: HeaderValue,
) -> Result<Response<hyper::body::Incoming>, ProxyError> {
    if port.protocol != Protocol::Http1 {
        return Err(ProxyError::BadRequest(format!(
            "{} port {} is not http1: only HTTP/1.1 apps can switch protocols",
            port.service, port.port
        )));
    }
    check_header_size(req.headers(), inputs.tuning.max_header_bytes)?;
    let (parts, ()) = req.into_parts();
    let authority = crate::proxy::http::app_authority(&parts.uri, port);
    let origin: Uri = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .parse()
        .map_err(|e| ProxyError::BadRequest(format!("path: {e}")))?;
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(TARGET_HEADER);
    let id =
        HeaderValue::from_str(peer.as_str()).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    headers.insert(PEER_IDENTITY_HEADER, id);
    let host =
        HeaderValue::from_str(&authority).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    headers.insert(header::HOST, host);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol.clone());

    let dial = tokio::time::timeout(inputs.tuning.connect_timeout, TcpStream::connect(port.app));
    let sock = match dial.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ProxyError::UpstreamConnect(format!("{}: {e}", port.app))),
        Err(_) => {
            return Err(ProxyError::UpstreamConnect(format!(
                "{}: connect timed out",
                port.app
            )));
        }
    };
    let _ = sock.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, ProxyBody>(TokioIo::new(sock))
            .await
            .map_err(|e| ProxyError::UpstreamConnect(format!("{}: {e}", port.app)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "app connection for an upgrade ended with an error");
        }
    });
    let mut out = Request::new(body::empty());
    *out.method_mut() = parts.method;
    *out.uri_mut() = origin;
    *out.headers_mut() = headers;
    let resp = tokio::time::timeout(inputs.tuning.response_timeout, sender.send_request(out))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout(inputs.tuning.response_timeout))?
        .map_err(|e| ProxyError::UpstreamReset(e.to_string()))?;
    let (mut parts, body) = resp.into_parts();
    let switched_to = (parts.status == StatusCode::SWITCHING_PROTOCOLS).then(|| {
        parts
            .headers
            .get(header::UPGRADE)
            .cloned()
            .unwrap_or(protocol)
    });
    strip_hop_by_hop(&mut parts.headers);
    // Only this proxy says whether the app switched.
    parts.headers.remove(UPGRADE_HEADER);
    if let Some(p) = switched_to {
        parts.headers.insert(UPGRADE_HEADER, p);
    }
    Ok(Response::from_parts(parts, body))
}

/// Once the app's connection has switched protocols (on the caller's proxy, after its 101 went
/// to the app; on the callee's, after the 200 went to the caller): pump between it and the
/// CONNECT stream until both directions end, and record the tunnel. A connection hyper never
/// hands over resets the stream, so the other side sees a failure, not an end.
pub async fn pump(
    inputs: &Inputs,
    direction: Direction,
    service: &str,
    on_upgrade: OnUpgrade,
    mut tx: impl SendHalf,
    rx: impl RecvHalf,
) {
    match on_upgrade.await {
        Ok(upgraded) => {
            let idle = inputs.tuning.limits.tunnel_idle_timeout;
            let (bytes, err) = tunnel::pump(TokioIo::new(upgraded), tx, rx, idle).await;
            tunnel::record(&inputs.metrics, direction, service, bytes, err.as_ref());
        }
        Err(e) => {
            tracing::debug!(error = %e, ?direction, "the app's switched connection was lost");
            tx.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn head(connection: &str, upgrade: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_str(connection).unwrap(),
        );
        h.insert(header::UPGRADE, HeaderValue::from_str(upgrade).unwrap());
        h
    }

    #[test]
    fn an_upgrade_needs_both_headers_and_http1_1() {
        let v11 = Version::HTTP_11;
        let ws = requested(v11, &head("keep-alive, Upgrade", "websocket"));
        assert_eq!(ws.unwrap(), "websocket");
        assert!(requested(v11, &head("keep-alive", "websocket")).is_none());
        let mut only_connection = head("upgrade", "x");
        only_connection.remove(header::UPGRADE);
        assert!(requested(v11, &only_connection).is_none());
        assert!(requested(Version::HTTP_10, &head("upgrade", "websocket")).is_none());
        assert!(requested(Version::HTTP_2, &head("upgrade", "websocket")).is_none());
    }

    #[test]
    fn h2c_is_not_carried() {
        let v11 = Version::HTTP_11;
        assert!(requested(v11, &head("Upgrade, HTTP2-Settings", "h2c")).is_none());
        let other = requested(v11, &head("upgrade", "H2C, foo/2")).unwrap();
        assert_eq!(other, "foo/2");
    }

    #[test]
    fn the_carried_request_comes_back_whole_and_bad_fields_are_named() {
        let mut head = Request::new(());
        *head.method_mut() = Method::GET;
        *head.uri_mut() = "https://chat:8080/room/1?x=2".parse().unwrap();
        head.headers_mut()
            .insert("sec-websocket-key", HeaderValue::from_static("k"));
        let mut carried = mesh_head(head, &HeaderValue::from_static("websocket")).unwrap();
        assert_eq!(carried.method(), Method::CONNECT);
        assert_eq!(carried.uri(), "chat:8080");
        let protocol = from_mesh(&mut carried).unwrap().unwrap();
        assert_eq!(protocol, "websocket");
        assert_eq!(carried.method(), Method::GET);
        assert_eq!(carried.uri(), "https://chat:8080/room/1?x=2");
        assert_eq!(carried.headers()["sec-websocket-key"], "k");
        assert!(!carried.headers().contains_key(METHOD_HEADER));

        let bad = |name: &str, value: &str| {
            let mut r = Request::new(());
            *r.method_mut() = Method::CONNECT;
            *r.uri_mut() = "chat:8080".parse().unwrap();
            let h = r.headers_mut();
            h.insert(UPGRADE_HEADER, HeaderValue::from_static("websocket"));
            h.insert(METHOD_HEADER, HeaderValue::from_static("GET"));
            h.insert(PATH_HEADER, HeaderValue::from_static("/"));
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
            from_mesh(&mut r).unwrap_err().to_string()
        };
        assert!(bad(PATH_HEADER, "room").contains(PATH_HEADER));
        assert!(bad(METHOD_HEADER, "CONNECT").contains(METHOD_HEADER));
        assert!(bad(METHOD_HEADER, "G T").contains(METHOD_HEADER));

        // Any other CONNECT (a TCP tunnel) is left alone.
        let mut tunnel = Request::new(());
        *tunnel.method_mut() = Method::CONNECT;
        assert!(from_mesh(&mut tunnel).unwrap().is_none());
    }
}
