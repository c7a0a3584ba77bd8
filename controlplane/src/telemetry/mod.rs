//! What the control plane does with telemetry, without I/O: checking spans and edge
//! statistics as they arrive from proxies, turning them into store records (with the
//! reporter's namespace from its certificate), building trace summaries and the service
//! graph, and the latency-quantile math. The gRPC handlers (`api::telemetry`) and the
//! retention sweeper ([`sweeper`]) call this; nothing in this file touches a socket or the
//! store. How spans are kept (the span-block codec, and the searches that read blocks
//! back through the store) is [`blocks`].

use std::collections::{BTreeMap, BTreeSet};

use quiver_api::v1;

use crate::discovery::Caller;
use crate::store::{EdgeRecord, SpanRecord};

pub mod blocks;
pub mod otlp;
pub mod sweeper;
#[cfg(test)]
mod tests;
pub mod writer;

pub use quiver_policy::latency::{LATENCY_BOUNDS_MS, LATENCY_BUCKETS, quantile_ms};

/// Longest accepted text field (names, routes, identities); a path longer than this is not
/// worth storing, and it bounds what one proxy can make us keep.
const MAX_TEXT: usize = 1024;
/// A span may start at most this far in the future (clock skew between hosts).
const MAX_FUTURE_NANOS: i64 = 10 * 60 * 1_000_000_000;
/// Longest accepted span or edge interval.
const MAX_DURATION_NANOS: i64 = 24 * 3600 * 1_000_000_000;

/// One proxy's checked batch, as ReportTelemetry received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedBatch {
    pub spans: Vec<SpanRecord>,
    pub edges: Vec<EdgeRecord>,
}

/// Why a span or an edge interval was refused; the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    TraceId,
    SpanId,
    ParentSpanId,
    Kind,
    Service,
    Time,
    Duration,
    StatusCode,
    TooLong,
    Counts,
    Buckets,
}

impl Refusal {
    /// The label value: what was wrong, in snake case.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TraceId => "trace_id",
            Refusal::SpanId => "span_id",
            Refusal::ParentSpanId => "parent_span_id",
            Refusal::Kind => "kind",
            Refusal::Service => "service",
            Refusal::Time => "time",
            Refusal::Duration => "duration",
            Refusal::StatusCode => "status_code",
            Refusal::TooLong => "too_long",
            Refusal::Counts => "counts",
            Refusal::Buckets => "buckets",
        }
    }
}

fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        // All zeros is W3C's "invalid" id.
        && s.bytes().any(|b| b != b'0')
}

/// A span as it will be stored, or why not. `now_ns` bounds how far in the future it may start.
pub fn check_span(span: v1::Span, caller: &Caller, now_ns: i64) -> Result<SpanRecord, Refusal> {
    if !is_hex_id(&span.trace_id, 32) {
        return Err(Refusal::TraceId);
    }
    if !is_hex_id(&span.span_id, 16) {
        return Err(Refusal::SpanId);
    }
    if !span.parent_span_id.is_empty() && !is_hex_id(&span.parent_span_id, 16) {
        return Err(Refusal::ParentSpanId);
    }
    if !matches!(span.kind.as_str(), "CLIENT" | "SERVER") {
        return Err(Refusal::Kind);
    }
    if span.service.is_empty() {
        return Err(Refusal::Service);
    }
    let texts = [
        &span.service,
        &span.peer_service,
        &span.peer_identity,
        &span.name,
        &span.route,
        &span.error,
        &span.quic_connection_id,
        &span.endpoint,
    ];
    if texts.iter().any(|t| t.len() > MAX_TEXT) {
        return Err(Refusal::TooLong);
    }
    if span.start_unix_nanos <= 0 || span.start_unix_nanos > now_ns.saturating_add(MAX_FUTURE_NANOS)
    {
        return Err(Refusal::Time);
    }
    if !(0..=MAX_DURATION_NANOS).contains(&span.duration_nanos) {
        return Err(Refusal::Duration);
    }
    if span.status_code > 999 {
        return Err(Refusal::StatusCode);
    }
    // The certificate's namespace: a proxy cannot write into another namespace.
    Ok(to_record(
        span,
        caller.namespace.clone(),
        caller.spiffe_id.clone(),
    ))
}

/// A span in its stored shape, with the namespace and reporter given (the span's own
/// namespace field is not used). Also how stored blocks are read back.
pub fn to_record(span: v1::Span, namespace: String, reporter: String) -> SpanRecord {
    SpanRecord {
        is_error: span.status_code >= 500 || !span.error.is_empty(),
        trace_id: span.trace_id,
        span_id: span.span_id,
        parent_span_id: span.parent_span_id,
        kind: span.kind,
        namespace,
        service: span.service,
        peer_service: span.peer_service,
        peer_identity: span.peer_identity,
        name: span.name,
        route: span.route,
        start_ns: span.start_unix_nanos,
        duration_ns: span.duration_nanos,
        // At most 999 when checked; a stored value is one that was checked.
        status_code: i32::try_from(span.status_code).unwrap_or(0),
        error: span.error,
        attempt: i32::try_from(span.attempt).unwrap_or(i32::MAX),
        request_bytes: i64::try_from(span.request_bytes).unwrap_or(i64::MAX),
        response_bytes: i64::try_from(span.response_bytes).unwrap_or(i64::MAX),
        quic_connection_id: span.quic_connection_id,
        endpoint: span.endpoint,
        reporter,
    }
}

/// An edge interval as it will be stored, or why not.
pub fn check_edge(edge: v1::EdgeStats, caller: &Caller) -> Result<EdgeRecord, Refusal> {
    if edge.source_service.is_empty() || edge.destination_service.is_empty() {
        return Err(Refusal::Service);
    }
    if edge.source_service.len() > MAX_TEXT
        || edge.destination_service.len() > MAX_TEXT
        || edge.destination_subset.len() > MAX_TEXT
    {
        return Err(Refusal::TooLong);
    }
    let (start, end) = (edge.interval_start_unix_nanos, edge.interval_end_unix_nanos);
    if start <= 0 || end < start || end - start > MAX_DURATION_NANOS {
        return Err(Refusal::Time);
    }
    if edge.errors > edge.requests || edge.requests > i64::MAX as u64 {
        return Err(Refusal::Counts);
    }
    // Buckets must account for every request, or the quantiles would lie.
    let sum = edge
        .latency_buckets
        .iter()
        .try_fold(0u64, |acc, n| acc.checked_add(*n));
    let buckets_ok = if edge.requests == 0 {
        edge.latency_buckets.is_empty()
            || (edge.latency_buckets.len() == LATENCY_BUCKETS && sum == Some(0))
    } else {
        edge.latency_buckets.len() == LATENCY_BUCKETS && sum == Some(edge.requests)
    };
    if !buckets_ok {
        return Err(Refusal::Buckets);
    }
    let mut buckets = edge.latency_buckets;
    buckets.resize(LATENCY_BUCKETS, 0);
    Ok(EdgeRecord {
        namespace: caller.namespace.clone(),
        source_service: edge.source_service,
        destination_service: edge.destination_service,
        destination_subset: edge.destination_subset,
        interval_start_ns: start,
        interval_end_ns: end,
        // Checked above: requests fits, errors <= requests.
        requests: i64::try_from(edge.requests).unwrap_or(i64::MAX),
        errors: i64::try_from(edge.errors).unwrap_or(i64::MAX),
        latency_buckets: buckets,
        reporter: caller.spiffe_id.clone(),
    })
}

/// Summed counts of a set of edge intervals.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
    /// The earliest start of the intervals added (None: none yet).
    first_start_ns: Option<i64>,
}

impl Totals {
    fn add(&mut self, e: &EdgeRecord) {
        self.first_start_ns = Some(
            self.first_start_ns
                .map_or(e.interval_start_ns, |s| s.min(e.interval_start_ns)),
        );
        self.requests = self
            .requests
            .saturating_add(u64::try_from(e.requests).unwrap_or(0));
        self.errors = self
            .errors
            .saturating_add(u64::try_from(e.errors).unwrap_or(0));
        if self.buckets.len() < e.latency_buckets.len() {
            self.buckets.resize(e.latency_buckets.len(), 0);
        }
        for (sum, n) in self.buckets.iter_mut().zip(&e.latency_buckets) {
            *sum = sum.saturating_add(*n);
        }
    }

    /// (request rate /s, error share, p50 ms, p99 ms) over the part of `window` in which
    /// this edge was seen: a call that started reporting 30 s ago into a 5 m window is
    /// divided by 30 s, not 300 (the rate a young mesh shows would otherwise be a tenth of
    /// the truth); one seen throughout divides by the whole window.
    fn rates(&self, window: &Window) -> (f64, f64, f64, f64) {
        let seen_from = self
            .first_start_ns
            .map_or(window.start_ns, |s| s.max(window.start_ns));
        let seen_secs = (window.end_ns - seen_from) as f64 / 1e9;
        let window_secs = (window.end_ns - window.start_ns) as f64 / 1e9;
        let divisor = if seen_secs > 0.0 {
            seen_secs.min(window_secs)
        } else {
            window_secs
        };
        let rate = self.requests as f64 / divisor.max(1e-9);
        let errors = if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        };
        (
            rate,
            errors,
            quantile_ms(&self.buckets, 0.5),
            quantile_ms(&self.buckets, 0.99),
        )
    }
}

/// The look-back window of a service graph, Unix ns.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start_ns: i64,
    pub end_ns: i64,
}

/// The service graph over `span` from the edge intervals that ended in it. Edges are exact
/// counts (every request, sampled or not); a node's numbers are those of the requests into
/// it. Services only ever seen as callers appear as nodes with no traffic.
pub fn service_graph(edges: &[EdgeRecord], span: Window, window: String) -> v1::ServiceGraph {
    let mut by_edge: BTreeMap<(String, String, String), Totals> = BTreeMap::new();
    let mut by_node: BTreeMap<(String, String), Totals> = BTreeMap::new();
    for e in edges {
        by_edge
            .entry((
                e.namespace.clone(),
                e.source_service.clone(),
                e.destination_service.clone(),
            ))
            .or_default()
            .add(e);
        by_node
            .entry((e.namespace.clone(), e.destination_service.clone()))
            .or_default()
            .add(e);
        by_node
            .entry((e.namespace.clone(), e.source_service.clone()))
            .or_default();
    }
    let nodes = by_node
        .into_iter()
        .map(|((namespace, service), t)| {
            let (request_rate, error_rate, p50_ms, p99_ms) = t.rates(&span);
            v1::GraphNode {
                namespace,
                service,
                request_rate,
                error_rate,
                p50_ms,
                p99_ms,
            }
        })
        .collect();
    let edges = by_edge
        .into_iter()
        .map(|((namespace, source_service, destination_service), t)| {
            let (request_rate, error_rate, p50_ms, p99_ms) = t.rates(&span);
            v1::GraphEdge {
                source_service,
                destination_service,
                namespace,
                request_rate,
                error_rate,
                p50_ms,
                p99_ms,
            }
        })
        .collect();
    v1::ServiceGraph {
        nodes,
        edges,
        window,
    }
}

/// One summary per trace from all of its spans (`spans` ordered by start), newest first.
pub fn summaries(spans: Vec<SpanRecord>) -> Vec<v1::TraceSummary> {
    let mut by_trace: BTreeMap<String, Vec<SpanRecord>> = BTreeMap::new();
    for s in spans {
        by_trace.entry(s.trace_id.clone()).or_default().push(s);
    }
    let mut out: Vec<(i64, v1::TraceSummary)> = by_trace
        .into_iter()
        .filter_map(|(trace_id, spans)| {
            // The earliest span; on a tie, the one without a parent (the root).
            let root = spans
                .iter()
                .min_by_key(|s| (s.start_ns, !s.parent_span_id.is_empty()))?;
            let start = root.start_ns;
            let end = spans
                .iter()
                .map(|s| s.start_ns.saturating_add(s.duration_ns))
                .max()
                .unwrap_or(start);
            let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
            let summary = v1::TraceSummary {
                trace_id,
                root_service: root.service.clone(),
                root_name: root.name.clone(),
                start: rfc3339_nanos(start),
                duration_nanos: end.saturating_sub(start),
                span_count: u32::try_from(spans.len()).unwrap_or(u32::MAX),
                error: spans.iter().any(|s| s.is_error),
                services: services.into_iter().map(String::from).collect(),
            };
            Some((start, summary))
        })
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.trace_id.cmp(&b.1.trace_id)));
    out.into_iter().map(|(_, s)| s).collect()
}

/// A stored span in its API shape.
pub fn to_api(s: SpanRecord) -> v1::Span {
    v1::Span {
        trace_id: s.trace_id,
        span_id: s.span_id,
        parent_span_id: s.parent_span_id,
        kind: s.kind,
        namespace: s.namespace,
        service: s.service,
        peer_service: s.peer_service,
        peer_identity: s.peer_identity,
        name: s.name,
        route: s.route,
        start_unix_nanos: s.start_ns,
        duration_nanos: s.duration_ns,
        status_code: u32::try_from(s.status_code).unwrap_or(0),
        error: s.error,
        attempt: u32::try_from(s.attempt).unwrap_or(0),
        request_bytes: u64::try_from(s.request_bytes).unwrap_or(0),
        response_bytes: u64::try_from(s.response_bytes).unwrap_or(0),
        quic_connection_id: s.quic_connection_id,
        endpoint: s.endpoint,
    }
}

/// RFC 3339 with nanoseconds, UTC.
pub fn rfc3339_nanos(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Unix nanoseconds of an RFC 3339 time.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}
