//! HTTP message hygiene shared by both directions: hop-by-hop headers, header-size limits,
//! `content-length`, and the proxy's own error responses.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;

use http::{Response, Uri};
use quiver_policy::path::PathRules;

use crate::errors::{ERROR_HEADER, ErrorKind, ProxyError};
use crate::mesh::body::{self, ProxyBody};

/// Mesh-internal header naming the destination `service[:port]` on the hop between proxies.
pub const TARGET_HEADER: &str = "quiver-target";
/// Header carrying the caller's verified SPIFFE id to the app.
pub const PEER_IDENTITY_HEADER: &str = "x-quiver-peer-identity";

/// Remove connection-specific headers (RFC 9110 §7.6.1), which HTTP/2 and HTTP/3 forbid, and
/// every header the `Connection` header names. `te: trailers` survives (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The authority a peer's request names for the local app (inbound): its URI's, else the
/// service's name.
pub fn app_authority(uri: &Uri, port: &crate::snapshot::LocalPort) -> String {
    uri.authority()
        .map_or_else(|| port.service.clone(), |a| a.as_str().to_string())
}

/// The authority a request addressed: its absolute-form URI's, else its Host header.
pub fn authority_of(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    if let Some(a) = uri.authority() {
        return Some(a.as_str().to_string());
    }
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}

/// `uri`'s path and query under a new scheme and authority (the next hop's view).
pub fn rebase_uri(scheme: &str, authority: &str, uri: &Uri) -> Result<Uri, ProxyError> {
    let path = uri
        .path_and_query()
        .map(http::uri::PathAndQuery::as_str)
        .unwrap_or("/");
    Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| ProxyError::BadRequest(format!("authority {authority:?}: {e}")))
}

/// Normalize `uri`'s path in place (`quiver_policy::path`): what routes and authorization
/// match is what the next hop receives. The query is kept as it is; a path that is already
/// normal costs no allocation. A refused path is a 400 `bad-request` that does not echo it.
/// A request target without a path (`GET api:80`, the authority form, which is for CONNECT
/// only) is refused too: routes would match an empty path while the next hop received `/`.
/// Callers do not pass CONNECT requests here.
pub fn normalize_path(uri: &mut Uri, rules: &PathRules) -> Result<(), ProxyError> {
    let Some(pq) = uri.path_and_query() else {
        return Err(ProxyError::BadRequest(
            "the request target has no path (the authority form is for CONNECT only)".into(),
        ));
    };
    if pq.path() == "*" {
        // `OPTIONS *`: the server itself, no path to normalize.
        return Ok(());
    }
    let normalized = match quiver_policy::path::normalize(pq.path(), rules) {
        Ok(Cow::Borrowed(_)) => return Ok(()),
        Ok(Cow::Owned(p)) => p,
        Err(e) => return Err(ProxyError::BadRequest(e.to_string())),
    };
    let pq = match pq.query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|e| ProxyError::BadRequest(format!("normalized path: {e}")))?,
    );
    *uri = Uri::from_parts(parts)
        .map_err(|e| ProxyError::BadRequest(format!("normalized path: {e}")))?;
    Ok(())
}

/// Size of a header block as HTTP/2 and HTTP/3 count it (name + value + 32 per field).
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum()
}

/// The declared `content-length`, if any and valid.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Refuse a header block above `limit`.
pub fn check_header_size(headers: &HeaderMap, limit: usize) -> Result<(), ProxyError> {
    let size = header_bytes(headers);
    if size > limit {
        return Err(ProxyError::HeaderTooLarge { size, limit });
    }
    Ok(())
}

/// The response the proxy sends when it cannot deliver a request.
pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(format!("{}\n", e.public_message())));
    *resp.status_mut() = e.status();
    resp.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(e.reason()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The `quiver-error` kind on a response, if a proxy (this one or the peer) made it. Only
/// kinds from [`ErrorKind`]'s table are recognised, which keeps metric labels bounded
/// whatever a peer sends.
pub fn error_kind(headers: &HeaderMap) -> Option<ErrorKind> {
    headers
        .get(ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorKind::from_reason)
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn strips_hop_by_hop_but_keeps_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn header_limit_names_sizes() {
        let mut h = HeaderMap::new();
        h.insert("x-big", HeaderValue::from_str(&"a".repeat(2000)).unwrap());
        let e = check_header_size(&h, 1024).unwrap_err();
        assert_eq!(e.reason(), "header-too-large");
        assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(check_header_size(&h, 4096).is_ok());
    }

    #[test]
    fn a_target_without_a_path_is_refused_not_matched_as_empty() {
        // Found by the fuzz target outbound_http1 (`CONNECONNECT api:443`): before, routes
        // matched the path "" and the peer was sent "/".
        let rules = PathRules::default();
        let mut uri: Uri = "api:443".parse().unwrap();
        let e = normalize_path(&mut uri, &rules).unwrap_err();
        assert_eq!(e.reason(), "bad-request");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let mut star: Uri = "*".parse().unwrap();
        normalize_path(&mut star, &rules).unwrap();
        let mut origin: Uri = "/a/../b?q".parse().unwrap();
        normalize_path(&mut origin, &rules).unwrap();
        assert_eq!(origin, "/b?q");
        let mut absolute: Uri = "http://api/%61?q".parse().unwrap();
        normalize_path(&mut absolute, &rules).unwrap();
        assert_eq!(absolute, "http://api/a?q");
    }

    #[test]
    fn error_kind_is_bounded_to_known_values() {
        let mut h = HeaderMap::new();
        assert_eq!(error_kind(&h), None);
        h.insert(ERROR_HEADER, HeaderValue::from_static("no-endpoint"));
        assert_eq!(error_kind(&h), Some(ErrorKind::NoEndpoint));
        h.insert(ERROR_HEADER, HeaderValue::from_static("made-up-by-a-peer"));
        assert_eq!(error_kind(&h), None);
    }
}
