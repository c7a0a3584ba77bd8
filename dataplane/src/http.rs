//! HTTP message hygiene shared by both directions: hop-by-hop headers, header-size limits,
//! the proxy's own error responses, and per-request accounting.

use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Uri};

use crate::body::{self, ProxyBody};
use crate::errors::{Direction, ERROR_HEADER, ErrorKind, ProxyError};
use crate::metrics::{DurationLabels, Metrics, RequestLabels, status_class};

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
    let mut resp = Response::new(body::full(format!("{e}\n")));
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

/// One request's outcome, recorded exactly once: in [`RequestRecord::finish`] when the
/// response head is known, or on drop when the task was cancelled (the caller went away)
/// before a response. Drain accounting is separate: it must cover the body too.
pub struct RequestRecord<'a> {
    metrics: &'a Metrics,
    direction: Direction,
    service: String,
    /// The calling service (outbound: this proxy's; inbound: the peer's).
    source: String,
    route: String,
    method: http::Method,
    path: String,
    peer: String,
    /// What the policy decided (route, backend, endpoint, attempts...), for the access log.
    detail: String,
    start: Instant,
    started_at: std::time::SystemTime,
    done: bool,
    /// This request's place in its trace.
    span: Option<crate::trace::SpanInfo>,
    /// Where spans and edge counts go (control-plane mode), and the tail rule's threshold.
    telemetry: Option<(&'a crate::trace::Telemetry, std::time::Duration)>,
}

impl<'a> RequestRecord<'a> {
    pub fn new(
        metrics: &'a Metrics,
        direction: Direction,
        method: http::Method,
        path: String,
    ) -> Self {
        Self {
            metrics,
            direction,
            service: String::new(),
            source: String::new(),
            route: String::new(),
            method,
            path,
            peer: String::new(),
            detail: String::new(),
            start: Instant::now(),
            started_at: std::time::SystemTime::now(),
            done: false,
            span: None,
            telemetry: None,
        }
    }

    /// Continue the trace the request's headers carry (or start one, sampled per
    /// `mesh.tracing`) with a new span of `kind`, and rewrite the headers so the next hop sees
    /// that span as its parent. Returns the span to fill in further.
    pub fn trace_request(
        &mut self,
        inputs: &'a crate::Inputs,
        headers: &mut http::HeaderMap,
        kind: crate::trace::SpanKind,
    ) -> &mut crate::trace::SpanInfo {
        use crate::trace::{SpanInfo, TraceContext};
        let tracing_cfg = inputs.snapshot().policy.mesh.tracing.clone();
        let mut span = SpanInfo::begin(TraceContext::extract(headers), kind, tracing_cfg.rate());
        span.request_bytes = content_length(headers).unwrap_or(0);
        crate::trace::inject(headers, &span.trace_id, &span.span_id, span.sampled);
        self.telemetry = inputs.telemetry.as_ref().map(|t| (t, tracing_cfg.slow()));
        self.span.insert(span)
    }

    pub fn span_mut(&mut self) -> Option<&mut crate::trace::SpanInfo> {
        self.span.as_mut()
    }

    pub fn set_service(&mut self, service: &str) {
        self.service = service.to_string();
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn set_source(&mut self, source: &str) {
        self.source = source.to_string();
    }

    pub fn set_route(&mut self, route: &str) {
        self.route = route.to_string();
    }

    pub fn set_peer(&mut self, peer: &str) {
        self.peer = peer.to_string();
    }

    pub fn set_detail(&mut self, detail: String) {
        self.detail = detail;
    }

    /// Record the response status, and the kind of error when a proxy made the response.
    pub fn finish(mut self, status: StatusCode, error: Option<ErrorKind>) {
        let reason = error.map_or("", ErrorKind::reason);
        self.record(status_class(status.as_u16()), status.as_u16(), reason);
    }

    /// Record a request this proxy answered with an error.
    pub fn fail(self, e: &ProxyError) {
        self.finish(e.status(), Some(e.kind()));
    }

    fn record(&mut self, class: &'static str, status: u16, error: &'static str) {
        self.done = true;
        let elapsed = self.start.elapsed();
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                direction: self.direction.as_str(),
                service: self.service.clone(),
                source: self.source.clone(),
                route: self.route.clone(),
                status_class: class,
                code: status,
                error,
            })
            .inc();
        self.metrics
            .request_duration
            .get_or_create(&DurationLabels {
                direction: self.direction.as_str(),
                service: self.service.clone(),
                source: self.source.clone(),
                route: self.route.clone(),
                status_class: class,
            })
            .observe(elapsed.as_secs_f64());
        let (trace_id, route, endpoint, attempts, bytes_in, bytes_out) = match &self.span {
            Some(s) => (
                crate::trace::hex(&s.trace_id),
                s.route.as_str(),
                s.endpoint.as_str(),
                s.attempts,
                s.request_bytes,
                s.response_bytes,
            ),
            None => (String::new(), "", "", 0, 0, 0),
        };
        tracing::info!(
            target: "access",
            direction = self.direction.as_str(),
            dst.service = %self.service,
            src.service = %self.source,
            src.peer = %self.peer,
            method = %self.method,
            path = %self.path,
            status,
            error,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            trace_id = %trace_id,
            route,
            endpoint,
            attempts,
            bytes.request = bytes_in,
            bytes.response = bytes_out,
            policy = %self.detail,
        );
        self.ship(elapsed, status, error);
    }

    /// Count the edge (outbound) and queue the span when the rules keep it.
    fn ship(&mut self, elapsed: std::time::Duration, status: u16, error: &'static str) {
        let (Some((telemetry, slow)), Some(info)) = (self.telemetry, self.span.take()) else {
            return;
        };
        let failed = status >= 500 || !error.is_empty();
        let (service, peer_service) = match info.kind {
            crate::trace::SpanKind::Client => {
                telemetry.count_edge(&self.service, elapsed, failed);
                (telemetry.local_service.clone(), self.service.clone())
            }
            crate::trace::SpanKind::Server => (self.service.clone(), info.peer_service),
        };
        if !(info.sampled || failed || elapsed >= slow) {
            return;
        }
        let path = self.path.split('?').next().unwrap_or_default();
        let queued = telemetry.offer(crate::trace::FinishedSpan {
            trace_id: info.trace_id,
            span_id: info.span_id,
            parent_id: info.parent_id,
            kind: info.kind,
            service,
            peer_service,
            peer_identity: info.peer_identity,
            name: format!("{} {path}", self.method),
            route: info.route,
            start: self.started_at,
            duration: elapsed,
            status,
            error,
            attempts: info.attempts,
            request_bytes: info.request_bytes,
            response_bytes: info.response_bytes,
            quic_connection_id: info.quic_connection_id,
            endpoint: info.endpoint,
        });
        if !queued {
            self.metrics.spans_dropped.inc();
        }
    }
}

impl Drop for RequestRecord<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.record("cancelled", 0, "");
        }
    }
}

#[cfg(test)]
mod tests {
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
    fn error_kind_is_bounded_to_known_values() {
        let mut h = HeaderMap::new();
        assert_eq!(error_kind(&h), None);
        h.insert(ERROR_HEADER, HeaderValue::from_static("no-endpoint"));
        assert_eq!(error_kind(&h), Some(ErrorKind::NoEndpoint));
        h.insert(ERROR_HEADER, HeaderValue::from_static("made-up-by-a-peer"));
        assert_eq!(error_kind(&h), None);
    }
}
