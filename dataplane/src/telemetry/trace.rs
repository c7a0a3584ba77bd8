//! Trace context: W3C `traceparent` / `tracestate` read from apps and peers and passed on,
//! B3 (single `b3` header or `X-B3-*`) accepted on the way in, a new trace started when none
//! came. Pure functions over header maps; recording and shipping spans is elsewhere.

use http::HeaderMap;
use http::header::HeaderValue;
use quiver_policy::latency::{LATENCY_BUCKETS, bucket_of};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Where a request sits in a trace: the trace, the span that made the request (our parent),
/// and whether the trace is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of the span we record.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
}

/// What the incoming headers said about the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A valid context (W3C preferred over B3).
    Context(TraceContext),
    /// Nothing, or nothing valid: start a new trace.
    None,
}

impl TraceContext {
    /// A new root: random trace id, no parent, sampled as decided by the caller.
    pub fn root(sampled: bool) -> Self {
        Self {
            trace_id: nonzero_random(),
            parent_id: None,
            sampled,
        }
    }

    /// Read `traceparent` (version 00 and, by the spec's rule, later versions' first four
    /// fields), else B3. Malformed values are ignored, as the W3C spec asks.
    pub fn extract(headers: &HeaderMap) -> Incoming {
        if let Some(tp) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok())
            && let Some(c) = parse_traceparent(tp)
        {
            return Incoming::Context(c);
        }
        if let Some(b3) = headers.get("b3").and_then(|v| v.to_str().ok())
            && let Some(c) = parse_b3_single(b3)
        {
            return Incoming::Context(c);
        }
        if let Some(c) = parse_b3_multi(headers) {
            return Incoming::Context(c);
        }
        Incoming::None
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// A new span id (never all zero).
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

fn nonzero_random() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

/// `00-<trace>-<span>-<flags>` naming `span` as the parent of whatever the next hop records.
pub fn traceparent(trace_id: &[u8; 16], span: &[u8; 8], sampled: bool) -> String {
    format!(
        "00-{}-{}-{}",
        hex(trace_id),
        hex(span),
        if sampled { "01" } else { "00" }
    )
}

/// Write W3C headers for the next hop (our span is its parent). B3 headers that came in are
/// removed: one format travels on, and a stale B3 must not contradict it. `tracestate` is
/// left as it came.
pub fn inject(headers: &mut HeaderMap, trace_id: &[u8; 16], span: &[u8; 8], sampled: bool) {
    for name in [
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    ] {
        headers.remove(name);
    }
    if let Ok(v) = HeaderValue::from_str(&traceparent(trace_id, span, sampled)) {
        headers.insert(TRACEPARENT, v);
    }
}

fn parse_traceparent(s: &str) -> Option<TraceContext> {
    let s = s.trim();
    let mut parts = s.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if flags.len() != 2 || !is_lower_hex(flags) {
        return None;
    }
    let trace_id: [u8; 16] = unhex(trace)?;
    let parent_id: [u8; 8] = unhex(parent)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceContext {
        trace_id,
        parent_id: Some(parent_id),
        sampled: flags & 1 == 1,
    })
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`, or a lone sampling decision (ignored here:
/// it carries no ids).
fn parse_b3_single(s: &str) -> Option<TraceContext> {
    let mut parts = s.trim().split('-');
    let trace = parts.next()?;
    let span = parts.next()?;
    let sampled = match parts.next() {
        None => true,
        Some("1" | "d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    Some(TraceContext {
        trace_id: b3_trace_id(trace)?,
        parent_id: Some(unhex(span)?).filter(|p| *p != [0; 8]),
        sampled,
    })
    .filter(|c| c.trace_id != [0; 16] && c.parent_id.is_some())
}

fn parse_b3_multi(h: &HeaderMap) -> Option<TraceContext> {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let trace_id = b3_trace_id(get("x-b3-traceid")?)?;
    let span: [u8; 8] = unhex(get("x-b3-spanid")?)?;
    let sampled = !matches!(get("x-b3-sampled"), Some("0" | "false"));
    if trace_id == [0; 16] || span == [0; 8] {
        return None;
    }
    Some(TraceContext {
        trace_id,
        parent_id: Some(span),
        sampled,
    })
}

/// B3 trace ids are 64 or 128 bits; a 64-bit one is left-padded with zeros, as Zipkin does.
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    match s.len() {
        32 => unhex(&s.to_ascii_lowercase()),
        16 => {
            let low: [u8; 8] = unhex(&s.to_ascii_lowercase())?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Head sampling: the same decision for a trace id at every proxy (the id's low 8 bytes as
/// a number, against `rate` of the range), so a trace is kept or dropped whole even when a
/// hop sees no sampled flag.
pub fn head_sampled(trace_id: &[u8; 16], rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low);
    (x as f64) < rate * (u64::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn w3c_traceparent_is_read_and_bad_ones_are_ignored() {
        let h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let Incoming::Context(c) = TraceContext::extract(&h) else {
            panic!("not read")
        };
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&c.parent_id.unwrap()), "00f067aa0ba902b7");
        assert!(c.sampled);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(
                TraceContext::extract(&headers(&[("traceparent", bad)])),
                Incoming::None,
                "{bad}"
            );
        }
        // A later version may carry more fields; the first four are read.
        let h = headers(&[(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more",
        )]);
        assert!(matches!(TraceContext::extract(&h), Incoming::Context(c) if !c.sampled));
    }

    #[test]
    fn b3_single_and_multi_are_accepted_with_64_bit_ids_padded() {
        let h = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        let Incoming::Context(c) = TraceContext::extract(&h) else {
            panic!()
        };
        assert_eq!(c.trace_id_hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert!(c.sampled);
        let h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]);
        let Incoming::Context(c) = TraceContext::extract(&h) else {
            panic!()
        };
        assert_eq!(c.trace_id_hex(), "0000000000000000463ac35c9f6413ad");
        assert!(!c.sampled);
        // W3C wins when both are present.
        let h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]);
        assert!(matches!(TraceContext::extract(&h),
            Incoming::Context(c) if c.trace_id_hex() == "4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn inject_writes_w3c_and_drops_b3() {
        let mut h = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        let c = TraceContext::root(true);
        let span = new_span_id();
        inject(&mut h, &c.trace_id, &span, true);
        assert!(h.get("b3").is_none());
        let Incoming::Context(read) = TraceContext::extract(&h) else {
            panic!()
        };
        assert_eq!(read.trace_id, c.trace_id);
        assert_eq!(read.parent_id, Some(span));
    }

    #[test]
    fn head_sampling_is_a_function_of_the_trace_id_and_keeps_the_rate() {
        let n = 20_000;
        let kept = (0..n)
            .filter(|_| head_sampled(&TraceContext::root(false).trace_id, 0.1))
            .count();
        let share = kept as f64 / n as f64;
        assert!((0.09..=0.11).contains(&share), "{share}");
        let id = TraceContext::root(false).trace_id;
        assert_eq!(head_sampled(&id, 0.3), head_sampled(&id, 0.3));
        assert!(head_sampled(&id, 1.0));
        assert!(!head_sampled(&id, 0.0));
    }
}

/// Which side of a call a span describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Outbound: this proxy calling a service for its app.
    Client,
    /// Inbound: this proxy in front of the called service.
    Server,
}

impl SpanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "CLIENT",
            Self::Server => "SERVER",
        }
    }
}

/// A finished span, waiting to be shipped to the control plane.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub kind: SpanKind,
    /// The service of the proxy that recorded it.
    pub service: String,
    /// CLIENT: the destination service; SERVER: the caller's service account.
    pub peer_service: String,
    pub peer_identity: String,
    /// `METHOD /path` (no query).
    pub name: String,
    pub route: String,
    pub start: std::time::SystemTime,
    pub duration: std::time::Duration,
    pub status: u16,
    pub error: &'static str,
    pub attempts: u32,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub quic_connection_id: String,
    pub endpoint: String,
}

/// The trace facts of one request, filled in as the request is decided.
#[derive(Debug, Clone)]
pub struct SpanInfo {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
    pub kind: SpanKind,
    pub peer_service: String,
    pub peer_identity: String,
    pub route: String,
    pub endpoint: String,
    pub attempts: u32,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub quic_connection_id: String,
}

impl SpanInfo {
    /// Continue `incoming` (or start a trace sampled at `rate`) with a new span of `kind`.
    pub fn begin(incoming: Incoming, kind: SpanKind, rate: f64) -> Self {
        let ctx = match incoming {
            Incoming::Context(c) => c,
            Incoming::None => {
                let mut c = TraceContext::root(false);
                c.sampled = head_sampled(&c.trace_id, rate);
                c
            }
        };
        Self {
            trace_id: ctx.trace_id,
            span_id: new_span_id(),
            parent_id: ctx.parent_id,
            sampled: ctx.sampled,
            kind,
            peer_service: String::new(),
            peer_identity: String::new(),
            route: String::new(),
            endpoint: String::new(),
            attempts: 0,
            request_bytes: 0,
            response_bytes: 0,
            quic_connection_id: String::new(),
        }
    }
}

type EdgeMap = std::collections::HashMap<String, std::collections::HashMap<String, EdgeCounts>>;

/// Where outbound requests went: a service, and the subset of it the route chose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Edge {
    pub destination: String,
    pub subset: String,
}

/// Requests to one destination over the current interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeCounts {
    pub requests: u64,
    pub errors: u64,
    /// One count per bound in `quiver_policy::latency::LATENCY_BOUNDS_MS`, plus +Inf.
    pub buckets: [u64; LATENCY_BUCKETS],
}

/// Finished spans and per-destination counts, bound for the control plane. Spans wait in a
/// bounded queue: when it is full they are dropped and counted, and the request never waits.
pub struct Telemetry {
    /// This proxy's own service (the source of its outbound calls).
    pub local_service: String,
    tx: tokio::sync::mpsc::Sender<FinishedSpan>,
    rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<FinishedSpan>>>,
    dropped: std::sync::atomic::AtomicU64,
    /// Per destination service, then per subset of it the requests were sent to (nested so
    /// that counting a request allocates nothing once its edge exists).
    edges: std::sync::Mutex<EdgeMap>,
}

impl Telemetry {
    pub fn new(local_service: String, capacity: usize) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        Self {
            local_service,
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            dropped: Default::default(),
            edges: Default::default(),
        }
    }

    /// Queue a span; false (and counted) when the queue is full.
    pub fn offer(&self, span: FinishedSpan) -> bool {
        match self.tx.try_send(span) {
            Ok(()) => true,
            Err(_) => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
        }
    }

    /// Spans dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// The queue's receiving end, once (for the shipping task).
    pub fn receiver(&self) -> Option<tokio::sync::mpsc::Receiver<FinishedSpan>> {
        self.rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Count one outbound request to `destination`, sent to its subset `subset` ("" for
    /// the whole service).
    pub fn count_edge(
        &self,
        destination: &str,
        subset: &str,
        duration: std::time::Duration,
        error: bool,
    ) {
        let bucket = bucket_of(duration.as_secs_f64() * 1000.0);
        let mut edges = self
            .edges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let per_subset = match edges.get_mut(destination) {
            Some(m) => m,
            None => edges.entry(destination.to_string()).or_default(),
        };
        let e = match per_subset.get_mut(subset) {
            Some(e) => e,
            None => per_subset.entry(subset.to_string()).or_default(),
        };
        e.requests += 1;
        e.errors += u64::from(error);
        e.buckets[bucket] += 1;
    }

    /// The counts since the last call, per destination and subset.
    pub fn take_edges(&self) -> Vec<(Edge, EdgeCounts)> {
        let mut edges = self
            .edges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut *edges)
            .into_iter()
            .flat_map(|(destination, per_subset)| {
                per_subset.into_iter().map(move |(subset, counts)| {
                    (
                        Edge {
                            destination: destination.clone(),
                            subset,
                        },
                        counts,
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod telemetry_tests {
    use super::*;

    fn span() -> FinishedSpan {
        FinishedSpan {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: None,
            kind: SpanKind::Client,
            service: "web".into(),
            peer_service: "reviews".into(),
            peer_identity: String::new(),
            name: "GET /".into(),
            route: String::new(),
            start: std::time::SystemTime::now(),
            duration: std::time::Duration::from_millis(3),
            status: 200,
            error: "",
            attempts: 1,
            request_bytes: 0,
            response_bytes: 0,
            quic_connection_id: String::new(),
            endpoint: String::new(),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let t = Telemetry::new("web".into(), 2);
        assert!(t.offer(span()));
        assert!(t.offer(span()));
        assert!(!t.offer(span()));
        assert!(!t.offer(span()));
        assert_eq!(t.take_dropped(), 2);
        assert_eq!(t.take_dropped(), 0);
        let mut rx = t.receiver().unwrap();
        assert!(rx.try_recv().is_ok());
        assert!(t.receiver().is_none(), "one consumer");
    }

    #[test]
    fn edges_bucket_latency_and_reset_when_taken() {
        let t = Telemetry::new("web".into(), 1);
        t.count_edge(
            "reviews",
            "v1",
            std::time::Duration::from_micros(500),
            false,
        );
        t.count_edge("reviews", "v1", std::time::Duration::from_millis(30), true);
        t.count_edge("reviews", "v1", std::time::Duration::from_secs(60), false);
        t.count_edge("reviews", "v2", std::time::Duration::from_millis(3), false);
        let mut edges = t.take_edges();
        edges.sort_by(|a, b| a.0.subset.cmp(&b.0.subset));
        assert_eq!(edges.len(), 2, "one per subset");
        let (dest, c) = &edges[0];
        assert_eq!(
            (dest.destination.as_str(), dest.subset.as_str()),
            ("reviews", "v1")
        );
        assert_eq!((c.requests, c.errors), (3, 1));
        assert_eq!(c.buckets[0], 1, "0.5 ms <= 1 ms");
        assert_eq!(c.buckets[5], 1, "30 ms <= 50 ms");
        assert_eq!(c.buckets[13], 1, "60 s in +Inf");
        assert_eq!(edges[1].1.requests, 1);
        assert!(t.take_edges().is_empty());
    }
}
