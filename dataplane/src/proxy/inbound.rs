//! Mesh -> proxy -> app. Accepts QUIC connections from peer proxies (mTLS already verified by
//! the handshake), reads each HTTP/3 request, maps it to a local service port and forwards it
//! to the app over HTTP/1.1, h2c or TCP. The caller's SPIFFE id reaches the app in
//! `x-quiver-peer-identity` (overwriting anything the caller sent).
//!
//! Per request: accept -> decide (snapshot) -> connect (app pool) -> copy -> record.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use quiver_api::SpiffeId;
use tokio::net::TcpStream;

use crate::Inputs;
use crate::errors::{Direction, ProxyError};
use crate::limits::{self, Limit};
use crate::mesh::body::{self, H3Body, ProxyBody};
use crate::mesh::paths::PathClass;
use crate::mesh::server::Incoming;
use crate::mesh::stream::{Respond, ServerRecv, ServerStream};
use crate::proxy::http::{
    PEER_IDENTITY_HEADER, TARGET_HEADER, check_header_size, content_length, error_kind,
    normalize_path, rebase_uri, strip_hop_by_hop,
};
use crate::snapshot::{LocalPort, Protocol, Target};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::record::RequestRecord;
use crate::telemetry::trace::SpanKind;

/// Accept peers until drain; while draining, refuse new connections at once (the dialler gets
/// CONNECTION_REFUSED instead of waiting for a handshake timeout).
pub async fn serve(inputs: Arc<Inputs>) {
    loop {
        let incoming = tokio::select! {
            i = inputs.transport.incoming() => match i {
                Some(i) => i,
                None => return,
            },
            _ = inputs.drain.signaled() => break,
        };
        let inputs = inputs.clone();
        tokio::spawn(async move { connection(inputs, incoming).await });
    }
    inputs.transport.refuse_incoming().await;
}

/// One peer's connection: each request on its own task; GOAWAY on drain.
async fn connection(inputs: Arc<Inputs>, incoming: Incoming) {
    let remote = incoming.remote_address();
    let class = {
        let snapshot = inputs.snapshot();
        PathClass::of(remote.ip(), snapshot.zone_of(remote.ip()), &snapshot.zone)
    };
    let Some(mut conn) = inputs.transport.accept(incoming, class).await else {
        return;
    };
    let mut goaway_sent = false;
    loop {
        tokio::select! {
            r = conn.next() => match r {
                Some(pending) => {
                    let inputs = inputs.clone();
                    let peer = conn.peer().clone();
                    let connection_id = conn.trace_id().clone();
                    tokio::spawn(async move {
                        // A stream whose head never completes would hold one of the peer's
                        // stream slots (and this task) for the connection's life.
                        let wait = inputs.tuning.limits.stream_header_timeout;
                        match tokio::time::timeout(wait, pending.resolve()).await {
                            Ok(Some((req, stream))) => {
                                request(inputs, peer, &connection_id, req, stream).await;
                            }
                            Ok(None) => {}
                            Err(_) => {
                                limits::count(&inputs.metrics.limit_refusals, Limit::StreamHeaderTimeout);
                                tracing::debug!(peer.id = %peer, "request stream sent no complete head in time");
                            }
                        }
                    });
                }
                None => break,
            },
            _ = inputs.drain.signaled(), if !goaway_sent => {
                goaway_sent = true;
                conn.goaway().await;
            }
        }
    }
    conn.closed().await;
}

async fn request(
    inputs: Arc<Inputs>,
    peer: Arc<SpiffeId>,
    connection_id: &str,
    mut req: Request<()>,
    mut stream: ServerStream,
) {
    // Held until the response body is fully sent: drain must not close the connection under it.
    let _inflight = inputs.drain.track();
    // A CONNECT that carries an upgrade becomes the request it carries before anything looks
    // at it: the record, authorization and the app all see the app's method and path.
    let (upgrade, restored) = match crate::proxy::upgrade::from_mesh(&mut req) {
        Ok(u) => (u, Ok(())),
        Err(e) => (None, Err(e)),
    };
    let mut record = RequestRecord::new(
        &inputs.metrics,
        Direction::Inbound,
        req.method().clone(),
        req.uri(),
        inputs.tuning.access_log_query,
    );
    record.set_peer(peer.as_str());
    // The server span continues the caller's trace; the app sees it as the parent.
    let declared = content_length(req.headers()).unwrap_or(0);
    let span = record.trace_request(&inputs, req.headers_mut(), SpanKind::Server, declared);
    span.peer_identity = peer.to_string();
    span.quic_connection_id = connection_id.to_string();
    span.peer_service = peer
        .workload_parts()
        .map(|(_, sa)| sa.to_string())
        .unwrap_or_default();
    let source = span.peer_service.clone();
    record.set_source(&source);
    // Authorization and the app see one path: the normalized one (CONNECT has none).
    let normalized = restored.and_then(|()| {
        if req.method() == Method::CONNECT {
            Ok(())
        } else {
            normalize_path(req.uri_mut(), &inputs.tuning.request_paths)
        }
    });
    let decided = normalized.and_then(|()| decide(&inputs, &req, &peer));
    let port = match decided {
        Ok(p) => p,
        Err(e) => {
            // The deciding rule goes to the access log (`policy=`), not to the caller.
            record.set_detail(e.to_string());
            record.fail(&e);
            send_error(&mut stream, &e).await;
            return;
        }
    };
    record.set_service(&port.service);
    if req.method() == Method::CONNECT {
        drop(record);
        tunnel(&inputs, &port, stream).await;
        return;
    }
    let (mut tx, rx) = stream.split();
    let (answer, upgrade_rx) = match upgrade {
        Some(protocol) => {
            let answer = crate::proxy::upgrade::to_app(&inputs, &peer, &port, req, protocol);
            (answer.await, Some(rx))
        }
        None => (forward(&inputs, &peer, &port, req, rx).await, None),
    };
    match answer {
        Ok(mut resp) => {
            // The app switched: the CONNECT succeeded (200, with `quiver-upgrade`), and the
            // request is recorded with the app's 101.
            let switched = match upgrade_rx {
                Some(rx) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    Some((hyper::upgrade::on(&mut resp), rx))
                }
                _ => None,
            };
            let (mut parts, body) = resp.into_parts();
            let status = parts.status;
            if switched.is_some() {
                parts.status = StatusCode::OK;
            }
            let error = error_kind(&parts.headers);
            if let Some(span) = record.span_mut() {
                span.response_bytes = content_length(&parts.headers).unwrap_or(0);
            }
            let head = Response::from_parts(parts, ());
            if let Err(e) = tx.send_response(head).await {
                tracing::debug!(error = %e, "peer went away before the response");
                return;
            }
            record.finish(status, error);
            if let Some((on_upgrade, rx)) = switched {
                crate::proxy::upgrade::pump(
                    &inputs,
                    Direction::Inbound,
                    &port.service,
                    on_upgrade,
                    tx,
                    rx,
                )
                .await;
                return;
            }
            let sent = Metrics::bytes(
                &inputs.metrics.response_bytes,
                Direction::Inbound,
                &port.service,
            );
            if let Err(e) = body::send_body(body::Counted::new(body, sent), &mut tx).await {
                tracing::debug!(error = %e, "response body aborted");
            }
        }
        Err(e) => {
            record.fail(&e);
            send_error(&mut tx, &e).await;
        }
    }
}

/// Which local port a request from the mesh is for, and whether its caller may reach it
/// (AuthorizationPolicy, else the mesh default; a CONNECT is judged on its source alone).
fn decide(inputs: &Inputs, req: &Request<()>, peer: &SpiffeId) -> Result<LocalPort, ProxyError> {
    let connect = req.method() == Method::CONNECT;
    let authority = if connect {
        req.uri().authority().map(|a| a.as_str().to_string())
    } else {
        req.headers()
            .get(TARGET_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
    .ok_or_else(|| ProxyError::BadRequest(format!("request carries no {TARGET_HEADER}")))?;
    let target = Target::from_authority(&authority)?;
    let snapshot = inputs.snapshot();
    let port = snapshot.resolve_inbound(&target)?.clone();
    if !connect && !port.protocol.is_http() {
        return Err(ProxyError::BadRequest(format!(
            "{} port {} is tcp: use CONNECT",
            port.service, port.port
        )));
    }
    let authz = &snapshot.policy.authz;
    let verdict = if connect {
        authz.evaluate_tcp(&port.service, Some(peer))
    } else {
        authz.evaluate(
            &port.service,
            Some(peer),
            req.method().as_str(),
            req.uri().path(),
        )
    };
    if let quiver_policy::authz::Verdict::Denied(reason) = verdict {
        crate::telemetry::metrics::Metrics::count(&inputs.metrics.denied, &port.service);
        return Err(ProxyError::Denied(format!(
            "{peer} may not call {} ({reason})",
            port.service
        )));
    }
    Ok(port)
}

fn error_head(e: &ProxyError) -> Response<()> {
    let mut resp = Response::new(());
    *resp.status_mut() = e.status();
    resp.headers_mut().insert(
        crate::errors::ERROR_HEADER,
        HeaderValue::from_static(e.reason()),
    );
    resp
}

/// Answer with the proxy's own error, on a whole request stream or its sending half.
async fn send_error(stream: &mut impl Respond, e: &ProxyError) {
    if stream.send_response(error_head(e)).await.is_ok() {
        let _ = stream
            .send_data(Bytes::from(format!("{}\n", e.public_message())))
            .await;
        let _ = stream.finish().await;
    }
}

/// Send one request to the app and return its response (body still streaming).
async fn forward(
    inputs: &Inputs,
    peer: &SpiffeId,
    port: &LocalPort,
    req: Request<()>,
    rx: ServerRecv,
) -> Result<Response<hyper::body::Incoming>, ProxyError> {
    check_header_size(req.headers(), inputs.tuning.max_header_bytes)?;
    let (parts, ()) = req.into_parts();
    let authority = crate::proxy::http::app_authority(&parts.uri, port);
    let uri = rebase_uri("http", &authority, &parts.uri)?;
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(TARGET_HEADER);
    let id =
        HeaderValue::from_str(peer.as_str()).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    headers.insert(PEER_IDENTITY_HEADER, id);
    let http2 = matches!(port.protocol, Protocol::Http2 | Protocol::Grpc);
    if !http2 {
        let host =
            HeaderValue::from_str(&authority).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        headers.insert(header::HOST, host);
    }
    let mut body = H3Body::new(rx, content_length(&headers)).may_be_abandoned();
    body.peek_end();
    if matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
    ) {
        body.settle().await;
    }
    let received = Metrics::bytes(
        &inputs.metrics.request_bytes,
        Direction::Inbound,
        &port.service,
    );
    let counted = crate::mesh::body::Counted::new(body.boxed(), received);
    let mut out = Request::new(http_body_util::BodyExt::boxed_unsync(counted));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    if http2 {
        *out.version_mut() = http::Version::HTTP_2;
    }
    let client = inputs
        .apps
        .client(port.app, http2, inputs.tuning.connect_timeout);
    let resp = tokio::time::timeout(inputs.tuning.response_timeout, client.request(out))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout(inputs.tuning.response_timeout))?
        .map_err(|e| {
            if e.is_connect() {
                ProxyError::UpstreamConnect(format!("{}: {}", port.app, source_chain(&e)))
            } else {
                ProxyError::UpstreamReset(source_chain(&e))
            }
        })?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// CONNECT from a peer: dial the app, answer 200, pump bytes.
async fn tunnel(inputs: &Inputs, port: &LocalPort, mut stream: ServerStream) {
    let dial = tokio::time::timeout(inputs.tuning.connect_timeout, TcpStream::connect(port.app));
    let refused = match dial.await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("{}: {e}", port.app)),
        Err(_) => Err(format!("{}: connect timed out", port.app)),
    };
    let sock = match refused {
        Ok(s) => s,
        Err(detail) => {
            send_error(&mut stream, &ProxyError::UpstreamConnect(detail)).await;
            let failed: crate::mesh::body::BodyError = "the app refused the connection".into();
            crate::proxy::tunnel::record(
                &inputs.metrics,
                Direction::Inbound,
                &port.service,
                Default::default(),
                Some(&failed),
            );
            return;
        }
    };
    let _ = sock.set_nodelay(true);
    let mut ok = Response::new(());
    *ok.status_mut() = StatusCode::OK;
    if stream.send_response(ok).await.is_err() {
        return;
    }
    let (tx, rx) = stream.split();
    let idle = inputs.tuning.limits.tunnel_idle_timeout;
    let (bytes, err) = crate::proxy::tunnel::pump(sock, tx, rx, idle).await;
    crate::proxy::tunnel::record(
        &inputs.metrics,
        Direction::Inbound,
        &port.service,
        bytes,
        err.as_ref(),
    );
}

/// Pooled HTTP clients to local apps, one per (address, protocol).
#[derive(Default)]
pub struct AppClients {
    clients: Mutex<HashMap<(SocketAddr, bool), Client<AppConnector, ProxyBody>>>,
}

impl AppClients {
    fn client(
        &self,
        addr: SocketAddr,
        http2: bool,
        connect_timeout: Duration,
    ) -> Client<AppConnector, ProxyBody> {
        let mut map = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry((addr, http2))
            .or_insert_with(|| {
                let mut b = Client::builder(TokioExecutor::new());
                b.pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(256)
                    .pool_timer(hyper_util::rt::TokioTimer::new())
                    // Host stays as the caller sent it; the URI's authority is not the app's.
                    .set_host(false)
                    .http2_only(http2);
                b.build(AppConnector {
                    addr,
                    timeout: connect_timeout,
                })
            })
            .clone()
    }
}

/// Dials one fixed app address whatever the URI says (the URI keeps the caller's authority).
#[derive(Clone)]
pub struct AppConnector {
    addr: SocketAddr,
    timeout: Duration,
}

impl tower_service::Service<Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (addr, timeout) = (self.addr, self.timeout);
        Box::pin(async move {
            let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            s.set_nodelay(true)?;
            Ok(TokioIo::new(s))
        })
    }
}
