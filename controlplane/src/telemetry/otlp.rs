//! Optional OTLP/gRPC export of the spans the control plane accepts (`--otlp-endpoint`), so
//! Jaeger, Tempo or an OpenTelemetry Collector receive the mesh's traces too.
//!
//! Ingest hands every stored batch to [`OtlpExport::offer`], which only `try_send`s into a
//! bounded queue: a full queue drops (and counts) spans, it never makes ingest wait. One task
//! drains the queue in batches, maps them to OTLP (pure functions, [`resource_spans`]) and
//! calls `TraceService/Export`, retrying a retryable failure a bounded number of times.
//! Delivery is at most once. Nothing here touches the store, and no export failure reaches
//! ingest or the proxies.
//!
//! Why our own tonic client over `opentelemetry-proto`'s generated types and not the
//! `opentelemetry-otlp` SDK exporter: the SDK exporter sends every span under the one
//! `Resource` of its provider, while our spans come from many services and each must carry its
//! own `service.name` (one `ResourceSpans` per service). Building OTLP messages directly also
//! keeps ids and nanosecond times exactly as the proxies reported them, and lets the retry
//! and drop policy be ours (and counted in our metrics).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use tokio::sync::mpsc;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::metrics::OtlpMetrics;
use crate::store::SpanRecord;

/// Spans waiting for the exporter by default (`--otlp-queue`); beyond it, new spans are
/// dropped. The span writer offers a whole commit at once (up to
/// [`super::writer::MAX_SPANS`]): the queue holds two.
pub const QUEUE_SPANS: usize = 2 * super::writer::MAX_SPANS;
/// At most this many spans per Export call.
pub const MAX_BATCH: usize = 512;
/// A batch is sent at the latest this long after its first span arrived.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Retries of a failed Export call (after the first try) before the batch is dropped.
pub const MAX_RETRIES: u32 = 3;
/// Wait before the first retry; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The instrumentation scope of every exported span: the proxies recorded them.
const SCOPE: &str = "quiver-proxy";

/// Where spans go: an `http://` or `https://` URL with host and port and no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    uri: http::Uri,
    tls: bool,
}

impl OtlpEndpoint {
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl std::fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // scheme://host:port as given (http::Uri would add a "/" path).
        let scheme = if self.tls { "https" } else { "http" };
        match self.uri.authority() {
            Some(authority) => write!(f, "{scheme}://{authority}"),
            None => self.uri.fmt(f),
        }
    }
}

impl serde::Serialize for OtlpEndpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for OtlpEndpoint {
    type Err = String;

    /// `--otlp-endpoint`: checked whole at start-up, so a typo is refused there and not found
    /// out at the first export.
    fn from_str(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("not a URL ({e}); expected e.g. http://otel-collector:4317"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(format!(
                    "scheme {other:?} is not supported: OTLP/gRPC needs http:// or https://"
                ));
            }
            None => return Err("no scheme: write http://host:4317 or https://host:4317".into()),
        };
        let Some(authority) = uri.authority() else {
            return Err("no host: write http://host:4317".into());
        };
        if authority.as_str().contains('@') {
            return Err("user info in the URL is not supported: use --otlp-header".into());
        }
        if authority.host().is_empty() {
            return Err("no host: write http://host:4317".into());
        }
        if !tls && authority.port_u16().is_none() {
            return Err("no port: OTLP/gRPC listens on 4317 (http://host:4317)".into());
        }
        if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
            return Err(format!(
                "a path ({:?}) is not used by OTLP/gRPC: give only scheme://host:port",
                uri.path_and_query()
                    .map(http::uri::PathAndQuery::as_str)
                    .unwrap_or_default()
            ));
        }
        Ok(Self { uri, tls })
    }
}

/// One `--otlp-header name=value`, sent as gRPC metadata on every Export call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpHeader {
    name: AsciiMetadataKey,
    value: AsciiMetadataValue,
}

impl OtlpHeader {
    pub fn name(&self) -> &str {
        self.name.as_str()
    }
}

impl FromStr for OtlpHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((name, value)) = s.split_once('=') else {
            return Err("expected name=value (e.g. authorization=Bearer <token>)".into());
        };
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Err("the header name is empty".into());
        }
        if name.ends_with("-bin") {
            return Err(format!("{name:?}: binary (-bin) headers are not supported"));
        }
        let name = AsciiMetadataKey::from_str(&name)
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        let value = AsciiMetadataValue::from_str(value.trim())
            .map_err(|_| format!("the value of {name:?} is not printable ASCII"))?;
        Ok(Self { name, value })
    }
}

/// What `--otlp-*` configure.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    pub endpoint: OtlpEndpoint,
    pub headers: Vec<OtlpHeader>,
    /// Per Export call (and per connection attempt).
    pub timeout: Duration,
    /// Spans waiting for the exporter, at most (`--otlp-queue`).
    pub queue: usize,
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpSetupError {
    #[error("--otlp-endpoint {endpoint}: TLS setup failed: {source}")]
    Tls {
        endpoint: String,
        source: tonic::transport::Error,
    },
}

/// The ingest side of the exporter: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct OtlpExport {
    tx: mpsc::Sender<SpanRecord>,
    metrics: OtlpMetrics,
}

impl OtlpExport {
    /// Queue spans for export; those that do not fit are dropped and counted.
    pub fn offer(&self, spans: Vec<SpanRecord>) {
        let mut dropped = 0u64;
        for s in spans {
            if self.tx.try_send(s).is_err() {
                // Full, or the exporter is gone (shutting down): either way not sent.
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.metrics.dropped("queue_full", dropped);
        }
        self.metrics
            .queued(self.tx.max_capacity() - self.tx.capacity());
    }
}

/// Start the exporter task. The channel connects lazily (and reconnects by itself), so an
/// unreachable collector at start-up is not an error: its batches fail and are counted.
pub fn start(
    config: OtlpConfig,
    metrics: OtlpMetrics,
) -> Result<(OtlpExport, tokio::task::JoinHandle<()>), OtlpSetupError> {
    let channel = channel(&config)?;
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let exporter = Exporter {
        client: TraceServiceClient::new(channel),
        headers: config.headers,
        timeout: config.timeout,
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(exporter.run(rx));
    Ok((OtlpExport { tx, metrics }, task))
}

fn channel(config: &OtlpConfig) -> Result<Channel, OtlpSetupError> {
    let mut endpoint = Endpoint::from(config.endpoint.uri.clone())
        .connect_timeout(config.timeout)
        .timeout(config.timeout);
    if config.endpoint.tls {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().with_native_roots())
            .map_err(|source| OtlpSetupError::Tls {
                endpoint: config.endpoint.to_string(),
                source,
            })?;
    }
    Ok(endpoint.connect_lazy())
}

struct Exporter {
    client: TraceServiceClient<Channel>,
    headers: Vec<OtlpHeader>,
    timeout: Duration,
    metrics: OtlpMetrics,
}

impl Exporter {
    async fn run(mut self, mut rx: mpsc::Receiver<SpanRecord>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            // Wait for a first span, then fill the batch until it is full or BATCH_DELAY passed.
            if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            let deadline = tokio::time::Instant::now() + BATCH_DELAY;
            let mut closed = false;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            self.metrics.queued(rx.len());
            self.export(std::mem::take(&mut batch)).await;
            if closed {
                return;
            }
        }
    }

    /// One batch: Export, retried on retryable failures with doubling backoff, then dropped.
    async fn export(&mut self, batch: Vec<SpanRecord>) {
        let count = batch.len() as u64;
        let message = ExportTraceServiceRequest {
            resource_spans: resource_spans(batch),
        };
        let mut backoff = FIRST_BACKOFF;
        for attempt in 0..=MAX_RETRIES {
            let mut req = tonic::Request::new(message.clone());
            req.set_timeout(self.timeout);
            for h in &self.headers {
                req.metadata_mut().insert(h.name.clone(), h.value.clone());
            }
            let timer = self.metrics.export_timer();
            let result = self.client.export(req).await;
            drop(timer);
            match result {
                Ok(resp) => {
                    let rejected = resp
                        .get_ref()
                        .partial_success
                        .as_ref()
                        .map(|p| u64::try_from(p.rejected_spans).unwrap_or(0).min(count))
                        .unwrap_or(0);
                    if rejected > 0 {
                        let why = resp
                            .get_ref()
                            .partial_success
                            .as_ref()
                            .map(|p| p.error_message.as_str())
                            .unwrap_or_default();
                        tracing::warn!(rejected, reason = why, "OTLP receiver rejected spans");
                        self.metrics.dropped("rejected", rejected);
                    }
                    self.metrics.exported(count - rejected);
                    return;
                }
                Err(status) => {
                    self.metrics.attempt_failed(status.code());
                    let retry = retryable(status.code()) && attempt < MAX_RETRIES;
                    tracing::warn!(
                        otlp.code = ?status.code(),
                        otlp.message = status.message(),
                        spans = count,
                        attempt = attempt + 1,
                        retry,
                        "OTLP export failed"
                    );
                    if !retry {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
        self.metrics.batch_failed(count);
    }
}

/// Whether an Export failure may succeed when tried again (the OTLP specification's list of
/// retryable gRPC codes); any other failure drops the batch at once.
pub fn retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Cancelled
            | DeadlineExceeded
            | Aborted
            | OutOfRange
            | Unavailable
            | DataLoss
            | ResourceExhausted
    )
}

/// Spans as OTLP: one `ResourceSpans` per (namespace, service), in that order.
pub fn resource_spans(spans: Vec<SpanRecord>) -> Vec<ResourceSpans> {
    let mut by_service: BTreeMap<(String, String), Vec<Span>> = BTreeMap::new();
    for s in spans {
        let key = (s.namespace.clone(), s.service.clone());
        if let Some(span) = to_otlp(&s) {
            by_service.entry(key).or_default().push(span);
        }
    }
    by_service
        .into_iter()
        .map(|((namespace, service), spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string("service.name", service),
                    string("service.namespace", namespace),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: SCOPE.into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect()
}

/// One stored span as OTLP; None if its ids are not hex (ingest checked them, so never).
pub fn to_otlp(s: &SpanRecord) -> Option<Span> {
    let trace_id = hex_bytes(&s.trace_id)?;
    let span_id = hex_bytes(&s.span_id)?;
    let parent_span_id = if s.parent_span_id.is_empty() {
        Vec::new()
    } else {
        hex_bytes(&s.parent_span_id)?
    };
    let kind = match s.kind.as_str() {
        "CLIENT" => span::SpanKind::Client,
        "SERVER" => span::SpanKind::Server,
        _ => span::SpanKind::Unspecified,
    };
    // Ingest refused negative starts and durations.
    let start = u64::try_from(s.start_ns).unwrap_or(0);
    let end = start.saturating_add(u64::try_from(s.duration_ns).unwrap_or(0));
    let status = if s.is_error {
        Status {
            code: status::StatusCode::Error as i32,
            message: s.error.clone(),
        }
    } else {
        Status::default()
    };
    Some(Span {
        trace_id,
        span_id,
        parent_span_id,
        name: s.name.clone(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: attributes(s),
        status: Some(status),
        ..Default::default()
    })
}

/// OpenTelemetry semantic-convention attributes where one exists, `quiver.*` for the rest.
fn attributes(s: &SpanRecord) -> Vec<KeyValue> {
    let mut a = Vec::new();
    // The proxies name spans "METHOD /path".
    if let Some((method, path)) = s.name.split_once(' ')
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
    {
        text(&mut a, "http.request.method", method);
        if path.starts_with('/') {
            text(&mut a, "url.path", path);
        }
        text(&mut a, "network.protocol.name", "http");
    }
    if !s.quic_connection_id.is_empty() {
        // Between proxies every request travels as HTTP/3 over QUIC.
        text(&mut a, "network.protocol.version", "3");
        text(&mut a, "network.transport", "quic");
    }
    if s.kind == "CLIENT" {
        if let Some((host, port)) = split_host_port(&s.endpoint) {
            text(&mut a, "server.address", host);
            a.push(int("server.port", i64::from(port)));
        }
        // What Jaeger's and Tempo's service graphs read for the callee of a CLIENT span.
        text(&mut a, "peer.service", &s.peer_service);
    }
    if s.status_code != 0 {
        a.push(int("http.response.status_code", i64::from(s.status_code)));
    }
    if !s.error.is_empty() {
        text(&mut a, "error.type", &s.error);
    } else if s.status_code >= 500 {
        text(&mut a, "error.type", &s.status_code.to_string());
    }
    if s.request_bytes > 0 {
        a.push(int("http.request.body.size", s.request_bytes));
    }
    if s.response_bytes > 0 {
        a.push(int("http.response.body.size", s.response_bytes));
    }
    text(&mut a, "quiver.route", &s.route);
    text(&mut a, "quiver.peer_service", &s.peer_service);
    text(&mut a, "quiver.peer_identity", &s.peer_identity);
    if s.attempt > 0 {
        a.push(int("quiver.attempt", i64::from(s.attempt)));
    }
    text(&mut a, "quiver.quic_connection_id", &s.quic_connection_id);
    text(&mut a, "quiver.endpoint", &s.endpoint);
    text(&mut a, "quiver.reporter", &s.reporter);
    a
}

/// A string attribute, left out when empty.
fn text(a: &mut Vec<KeyValue>, key: &str, v: &str) {
    if !v.is_empty() {
        a.push(string(key, v.to_string()));
    }
}

/// `ip:port`, `host:port` or `[v6]:port`.
fn split_host_port(endpoint: &str) -> Option<(&str, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some((host, port))
}

fn string(key: &str, v: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v)),
        }),
        ..Default::default()
    }
}

fn int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

/// Lowercase or uppercase hex to bytes.
fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests;
