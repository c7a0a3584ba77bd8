//! One request's record: its metrics, its access-log line and its span, written exactly once.

use std::time::Instant;

use http::StatusCode;

use crate::errors::{Direction, ErrorKind, ProxyError};
use crate::telemetry::metrics::{DurationLabels, Metrics, RequestLabels, status_class};

/// One request's outcome, recorded exactly once: in [`RequestRecord::finish`] when the
/// response head is known, or on drop when the task was cancelled (the caller went away)
/// The `service` label (and edge destination) of a request to a destination this proxy does
/// not know: one value however many Hosts an app names. Not a DNS label, so no Service can
/// share it.
pub const UNKNOWN_SERVICE: &str = "(unknown)";

/// before a response. Drain accounting is separate: it must cover the body too.
pub struct RequestRecord<'a> {
    metrics: &'a Metrics,
    direction: Direction,
    service: String,
    /// The calling service (outbound: this proxy's; inbound: the peer's).
    source: String,
    route: String,
    /// The backend an outbound request was sent to (its subset is counted in the edge).
    backend: Option<std::sync::Arc<quiver_policy::services::Backend>>,
    method: http::Method,
    path: String,
    peer: String,
    /// What the policy decided (route, backend, endpoint, attempts...), for the access log.
    detail: String,
    start: Instant,
    started_at: std::time::SystemTime,
    done: bool,
    /// This request's place in its trace.
    span: Option<crate::telemetry::trace::SpanInfo>,
    /// Where spans and edge counts go (control-plane mode), and the tail rule's threshold.
    telemetry: Option<(&'a crate::telemetry::trace::Telemetry, std::time::Duration)>,
}

impl<'a> RequestRecord<'a> {
    /// A record of a request to `uri`. Its path goes to the access log without the query
    /// string unless `with_query` (`tuning.access_log_query`): queries often carry tokens and
    /// personal data, and access logs travel further than requests do.
    pub fn new(
        metrics: &'a Metrics,
        direction: Direction,
        method: http::Method,
        uri: &http::Uri,
        with_query: bool,
    ) -> Self {
        let path = match uri.path_and_query() {
            Some(pq) if with_query => pq.as_str().to_string(),
            Some(pq) => pq.path().to_string(),
            None => String::new(),
        };
        Self {
            metrics,
            direction,
            service: String::new(),
            source: String::new(),
            route: String::new(),
            backend: None,
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
    /// that span as its parent. `request_bytes` is the declared body length. Returns the span
    /// to fill in further.
    pub fn trace_request(
        &mut self,
        inputs: &'a crate::Inputs,
        headers: &mut http::HeaderMap,
        kind: crate::telemetry::trace::SpanKind,
        request_bytes: u64,
    ) -> &mut crate::telemetry::trace::SpanInfo {
        use crate::telemetry::trace::{SpanInfo, TraceContext};
        let tracing_cfg = inputs.snapshot().policy.mesh.tracing.clone();
        let mut span = SpanInfo::begin(TraceContext::extract(headers), kind, tracing_cfg.rate());
        span.request_bytes = request_bytes;
        crate::telemetry::trace::inject(headers, &span.trace_id, &span.span_id, span.sampled);
        self.telemetry = inputs.telemetry.as_ref().map(|t| (t, tracing_cfg.slow()));
        self.span.insert(span)
    }

    pub fn span_mut(&mut self) -> Option<&mut crate::telemetry::trace::SpanInfo> {
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

    pub fn set_backend(
        &mut self,
        backend: Option<std::sync::Arc<quiver_policy::services::Backend>>,
    ) {
        self.backend = backend;
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
                crate::telemetry::trace::hex(&s.trace_id),
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
            crate::telemetry::trace::SpanKind::Client => {
                // The subset of the service called ("" for the whole service, or when the
                // rule sent the request to another service).
                let subset = self
                    .backend
                    .as_deref()
                    .filter(|b| b.service == self.service)
                    .map_or("", |b| b.subset.as_str());
                telemetry.count_edge(&self.service, subset, elapsed, failed);
                (telemetry.local_service.clone(), self.service.clone())
            }
            crate::telemetry::trace::SpanKind::Server => (self.service.clone(), info.peer_service),
        };
        if !(info.sampled || failed || elapsed >= slow) {
            return;
        }
        // Span names never carry the query, whatever the access log does.
        let path = self.path.split('?').next().unwrap_or_default();
        let queued = telemetry.offer(crate::telemetry::trace::FinishedSpan {
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
