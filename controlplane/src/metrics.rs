//! Control-plane metrics, served as Prometheus text on `/metrics` of the API port.
//!
//! Labels are bounded: `method` is an RPC name, `code` a gRPC code name, `op` a store
//! operation. Never an object name.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `queue_full`, `export_failed` or `rejected`.
    pub reason: &'static str,
}

/// Which CA certificate: `root` (the trust anchor proxies hold) or `signer` (the online
/// intermediate that signs SVIDs, or the operator's CA).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaCertificateLabels {
    pub certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    calls: Family<CallLabels, Counter>,
    token_checks: Family<OutcomeLabels, Counter>,
    watches_refused: Counter,
    registrations_refused: Family<RefusalLabels, Counter>,
    store: Family<StoreLabels, Histogram>,
    watchers: Gauge,
    revocations: Gauge,
    revoked_refusals: Family<MethodLabels, Counter>,
    ca_expiry: Family<CaCertificateLabels, Gauge>,
    telemetry: TelemetryMetrics,
    otlp: OtlpMetrics,
}

/// What the OTLP exporter (`--otlp-endpoint`) did; all zero when it is off.
#[derive(Clone, Debug)]
pub struct OtlpMetrics {
    spans_exported: Counter,
    spans_dropped: Family<DropLabels, Counter>,
    batches_exported: Counter,
    batches_failed: Counter,
    attempts_failed: Family<CodeLabels, Counter>,
    queue: Gauge,
    duration: Histogram,
}

impl OtlpMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            spans_exported: Counter::default(),
            spans_dropped: Family::default(),
            batches_exported: Counter::default(),
            batches_failed: Counter::default(),
            attempts_failed: Family::default(),
            queue: Gauge::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.5, 12)),
        };
        let r = registry.sub_registry_with_prefix("otlp");
        r.register(
            "spans_exported",
            "Spans the OTLP receiver accepted",
            m.spans_exported.clone(),
        );
        r.register(
            "spans_dropped",
            "Spans not exported: queue_full (ingest outran the exporter), export_failed \
             (the batch failed after its retries), rejected (the receiver refused them)",
            m.spans_dropped.clone(),
        );
        r.register(
            "batches_exported",
            "Export calls that succeeded",
            m.batches_exported.clone(),
        );
        r.register(
            "batches_failed",
            "Batches dropped after failing every try",
            m.batches_failed.clone(),
        );
        r.register(
            "export_attempts_failed",
            "Failed Export calls (each try, retried or not), by gRPC code",
            m.attempts_failed.clone(),
        );
        r.register(
            "queue_spans",
            "Spans waiting in the export queue",
            m.queue.clone(),
        );
        r.register_with_unit(
            "export_duration",
            "Time taken by each Export call, failed ones included",
            Unit::Seconds,
            m.duration.clone(),
        );
        m
    }

    pub fn exported(&self, spans: u64) {
        self.spans_exported.inc_by(spans);
        self.batches_exported.inc();
    }

    pub fn dropped(&self, reason: &'static str, spans: u64) {
        self.spans_dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(spans);
    }

    /// A batch given up on: its spans are dropped as `export_failed`.
    pub fn batch_failed(&self, spans: u64) {
        self.batches_failed.inc();
        self.dropped("export_failed", spans);
    }

    pub fn attempt_failed(&self, code: tonic::Code) {
        self.attempts_failed
            .get_or_create(&CodeLabels {
                code: code_name(code),
            })
            .inc();
    }

    pub fn queued(&self, spans: usize) {
        self.queue.set(i64::try_from(spans).unwrap_or(i64::MAX));
    }

    /// Observes the elapsed time when dropped.
    pub fn export_timer(&self) -> StoreTimer {
        StoreTimer {
            histogram: self.duration.clone(),
            start: Instant::now(),
        }
    }
}

/// What ReportTelemetry and the trace retention did.
#[derive(Clone, Debug, Default)]
struct TelemetryMetrics {
    spans_accepted: Counter,
    spans_refused: Family<RefusalLabels, Counter>,
    edges_accepted: Counter,
    edges_refused: Family<RefusalLabels, Counter>,
    proxy_dropped: Counter,
    spans_deleted: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let quiver = registry.sub_registry_with_prefix("quiver");
        let calls = Family::<CallLabels, Counter>::default();
        quiver.register(
            "api_calls",
            "Admin API calls by method and gRPC status code",
            calls.clone(),
        );
        let token_checks = Family::<OutcomeLabels, Counter>::default();
        quiver.register(
            "api_token_checks",
            "Bearer tokens checked, by outcome: cached (answered from memory), looked_up (read \
             from the store), unknown_cached (a token the store recently did not know), \
             malformed (too short to be a token), throttled (refused: too many unknown tokens \
             to look up)",
            token_checks.clone(),
        );
        let watches_refused = Counter::default();
        quiver.register(
            "discovery_watches_refused",
            "Watch streams refused because their identity already had \
             --max-watches-per-identity open",
            watches_refused.clone(),
        );
        let registrations_refused = Family::<RefusalLabels, Counter>::default();
        quiver.register(
            "discovery_registrations_refused",
            "Workload registrations refused, by reason: address (not the caller's source \
             address), limit (--max-endpoints-per-identity), sidecar_port (a port that targets \
             the sidecar's own listener)",
            registrations_refused.clone(),
        );
        let store = Family::<StoreLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0002, 2.5, 12))
        });
        quiver.register_with_unit(
            "store_operation_duration",
            "Time taken by store operations",
            Unit::Seconds,
            store.clone(),
        );
        let watchers = Gauge::default();
        quiver.register("watchers", "Open Watch streams", watchers.clone());
        let revocations = Gauge::default();
        quiver.register(
            "revocations",
            "Revocations in force that proxies are sent (their deny-list)",
            revocations.clone(),
        );
        let revoked_refusals = Family::<MethodLabels, Counter>::default();
        quiver.register(
            "revoked_refusals",
            "MeshDiscovery calls refused because the caller's certificate or join token is \
             covered by a revocation, by method",
            revoked_refusals.clone(),
        );
        let ca_expiry = Family::<CaCertificateLabels, Gauge>::default();
        quiver.register_with_unit(
            "ca_certificate_expiry_timestamp",
            "Unix time at which the mesh CA's certificates expire: certificate=\"root\" (the \
             trust anchor), certificate=\"signer\" (the intermediate, renewed 90 days before it \
             ends, or the operator's CA)",
            Unit::Seconds,
            ca_expiry.clone(),
        );
        let telemetry = TelemetryMetrics::default();
        let t = quiver.sub_registry_with_prefix("telemetry");
        t.register(
            "spans_accepted",
            "Spans from proxies that were valid and stored (a span sent twice counts once)",
            telemetry.spans_accepted.clone(),
        );
        t.register(
            "spans_refused",
            "Spans from proxies refused, by what was wrong with them",
            telemetry.spans_refused.clone(),
        );
        t.register(
            "edge_stats_accepted",
            "Edge statistics intervals from proxies that were stored",
            telemetry.edges_accepted.clone(),
        );
        t.register(
            "edge_stats_refused",
            "Edge statistics intervals from proxies refused, by what was wrong with them",
            telemetry.edges_refused.clone(),
        );
        t.register(
            "proxy_dropped_spans",
            "Spans proxies report having dropped before sending (their buffer was full)",
            telemetry.proxy_dropped.clone(),
        );
        t.register(
            "spans_deleted",
            "Spans deleted by trace retention (age or count)",
            telemetry.spans_deleted.clone(),
        );
        let otlp = OtlpMetrics::register(quiver);
        Self {
            calls,
            token_checks,
            watches_refused,
            registrations_refused,
            store,
            watchers,
            revocations,
            revoked_refusals,
            ca_expiry,
            telemetry,
            otlp,
        }
    }

    /// The CA certificates' expiry times (`quiver_ca_certificate_expiry_timestamp_seconds`).
    pub fn ca_expiry(&self) -> Family<CaCertificateLabels, Gauge> {
        self.ca_expiry.clone()
    }

    /// The gauge of revocations proxies are sent (`quiver_revocations`).
    pub fn revocations(&self) -> Gauge {
        self.revocations.clone()
    }

    /// A discovery call refused because its caller (or join token) is revoked.
    pub fn revoked_refusal(&self, method: &'static str) {
        self.revoked_refusals
            .get_or_create(&MethodLabels { method })
            .inc();
    }

    /// The OTLP exporter's metrics (`quiver_otlp_*`).
    pub fn otlp(&self) -> OtlpMetrics {
        self.otlp.clone()
    }

    /// Spans (new ones) and edge intervals one commit of the span writer stored.
    pub fn telemetry_stored(&self, spans_accepted: u64, edges_accepted: u64) {
        let t = &self.telemetry;
        t.spans_accepted.inc_by(spans_accepted);
        t.edges_accepted.inc_by(edges_accepted);
    }

    /// What one received batch held that will not be stored: refused spans and edges, and
    /// the spans its proxy dropped before sending.
    pub fn telemetry_refused(
        &self,
        span_refusals: &[&'static str],
        edge_refusals: &[&'static str],
        proxy_dropped: u64,
    ) {
        let t = &self.telemetry;
        for reason in span_refusals {
            t.spans_refused
                .get_or_create(&RefusalLabels { reason })
                .inc();
        }
        for reason in edge_refusals {
            t.edges_refused
                .get_or_create(&RefusalLabels { reason })
                .inc();
        }
        t.proxy_dropped.inc_by(proxy_dropped);
    }

    pub fn spans_swept(&self, n: u64) {
        self.telemetry.spans_deleted.inc_by(n);
    }

    pub fn call(&self, method: &'static str, code: tonic::Code) {
        self.calls
            .get_or_create(&CallLabels {
                method,
                code: code_name(code),
            })
            .inc();
    }

    /// One bearer-token check and how it was answered.
    pub fn token_check(&self, outcome: &'static str) {
        self.token_checks
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A Watch refused for its identity's limit.
    pub fn watch_refused(&self) {
        self.watches_refused.inc();
    }

    /// A registration refused by one of the registration bounds.
    pub fn registration_refused(&self, reason: &'static str) {
        self.registrations_refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    pub fn store_timer(&self, op: &'static str) -> StoreTimer {
        StoreTimer {
            histogram: self.store.get_or_create(&StoreLabels { op }).clone(),
            start: Instant::now(),
        }
    }

    /// Counts one open watcher until the guard is dropped (also when the client goes away).
    pub fn watcher(&self) -> WatcherGuard {
        self.watchers.inc();
        WatcherGuard(self.watchers.clone())
    }

    pub fn watchers(&self) -> u64 {
        u64::try_from(self.watchers.get()).unwrap_or(0)
    }
}

/// Records the elapsed time when dropped, so a cancelled call still counts.
pub struct StoreTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for StoreTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

pub struct WatcherGuard(Gauge);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Prometheus text for `registry`.
pub fn encode(registry: &Arc<Registry>) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
