//! The proxy's Prometheus metrics. Labels are bounded: direction, service names from config,
//! status class, the proxy's own error reasons, and peer proxies' SPIFFE ids (one per
//! workload identity the proxy talks to); never paths, peers' ports or connection ids.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: &'static str,
    /// The destination service (inbound: this proxy's own service).
    pub service: String,
    /// The calling service (outbound: this proxy's own; inbound: the peer's, from its SPIFFE
    /// id's service account; "" when unknown).
    pub source: String,
    /// The Route that decided an outbound request ("" when none applied, and inbound).
    pub route: String,
    pub status_class: &'static str,
    /// The HTTP status code (0 when the caller went away before a response).
    pub code: u16,
    /// The proxy's `quiver-error` reason, or "" when the response came from an app.
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub direction: &'static str,
    pub service: String,
    pub source: String,
    pub route: String,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: &'static str,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpConnLabels {
    pub direction: &'static str,
    pub service: String,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SideLabels {
    /// "client" (we dialled) or "server" (a peer dialled us).
    pub side: &'static str,
}

/// One peer's path: who, which way, which class and controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// The peer proxy's SPIFFE id.
    pub peer: String,
    pub side: &'static str,
    /// The path class: loopback, zone or region.
    pub class: &'static str,
    /// The congestion controller under the loss filter: cubic, newreno or bbr.
    pub congestion: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub side: &'static str,
    pub result: &'static str,
}

/// Every metric the data path records.
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<DurationLabels, Histogram>,
    pub tcp_received: Family<TcpLabels, Counter>,
    pub tcp_sent: Family<TcpLabels, Counter>,
    pub tcp_connections: Family<TcpConnLabels, Counter>,
    pub quic_connections: Family<SideLabels, Gauge>,
    pub quic_handshakes: Family<HandshakeLabels, Counter>,
    pub quic_rtt: Family<SideLabels, Histogram>,
    pub quic_lost_packets: Family<SideLabels, Counter>,
    pub quic_sent_packets: Family<SideLabels, Counter>,
    pub quic_lost_bytes: Family<SideLabels, Counter>,
    pub quic_congestion_events: Family<SideLabels, Counter>,
    pub quic_cwnd: Family<SideLabels, Histogram>,
    /// Inbound handshakes in progress (`tuning.limits.max_handshakes` bounds it).
    pub quic_handshaking: Gauge,
    /// Connection attempts answered with a QUIC Retry (address validation).
    pub quic_retries: Counter,
    /// Connections refused and connections, streams and tunnels closed by `tuning.limits`.
    pub limit_refusals: crate::limits::Refusals,
    /// Peer connections closed or refused after the handshake because the deny-list covers
    /// the peer's certificate (handshakes the verifiers refuse count as failed handshakes).
    pub revoked_peers: Family<SideLabels, Counter>,
    /// Identities in the deny-list this proxy enforces.
    pub revocations: Gauge,
    pub path: PathMetrics,
    /// HTTP body bytes from the caller (request) and to the caller (response).
    pub request_bytes: Family<TcpLabels, Counter>,
    pub response_bytes: Family<TcpLabels, Counter>,
    pub identity_reloads: Family<ResultLabels, Counter>,
    pub identity_expiry: Gauge,
    pub retries: Family<ServiceLabels, Counter>,
    pub retry_stops: Family<ReasonLabels, Counter>,
    pub ejections: Family<ServiceLabels, Counter>,
    pub overloads: Family<ReasonLabels, Counter>,
    pub faults: Family<ReasonLabels, Counter>,
    pub mirrored: Family<ServiceLabels, Counter>,
    pub denied: Family<ServiceLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    /// 1 while a Watch stream to the control plane is open (control-plane mode).
    pub control_plane_connected: Gauge,
    /// Version of the last snapshot applied from the control plane.
    pub snapshot_version: Gauge,
    /// Spans dropped because the shipping queue was full (the control plane slow or away).
    pub spans_dropped: Counter,
    /// Spans handed to the control plane.
    pub spans_shipped: Counter,
    /// Connections the capture rules redirected to this proxy (proxy/transparent.rs).
    pub captured: Family<CaptureLabels, Counter>,
    /// Queries the pod's DNS resolver answered, by outcome.
    pub dns_queries: Family<DnsLabels, Counter>,
}

/// What the pod's DNS resolver did with a query (`proxy/dns.rs`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub outcome: &'static str,
}

/// A captured connection: its direction, what became of it and the protocol it spoke (the
/// declared one into the mesh, the detected one for egress).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureLabels {
    pub direction: &'static str,
    pub outcome: &'static str,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub service: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

impl Metrics {
    /// Create the metrics and register them under `quiver_`.
    pub fn register(registry: &mut Registry) -> Self {
        let latency = || Histogram::new(exponential_buckets(0.0001, 2.0, 20));
        let m = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency),
            tcp_received: Family::default(),
            tcp_sent: Family::default(),
            tcp_connections: Family::default(),
            quic_connections: Family::default(),
            quic_handshakes: Family::default(),
            quic_rtt: Family::new_with_constructor(latency),
            quic_lost_packets: Family::default(),
            quic_sent_packets: Family::default(),
            quic_lost_bytes: Family::default(),
            quic_congestion_events: Family::default(),
            quic_cwnd: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(4096.0, 2.0, 14))
            }),
            quic_handshaking: Gauge::default(),
            quic_retries: Counter::default(),
            limit_refusals: Family::default(),
            revoked_peers: Family::default(),
            revocations: Gauge::default(),
            path: PathMetrics::default(),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            identity_reloads: Family::default(),
            identity_expiry: Gauge::default(),
            retries: Family::default(),
            retry_stops: Family::default(),
            ejections: Family::default(),
            overloads: Family::default(),
            faults: Family::default(),
            mirrored: Family::default(),
            denied: Family::default(),
            config_reloads: Family::default(),
            control_plane_connected: Gauge::default(),
            snapshot_version: Gauge::default(),
            spans_dropped: Counter::default(),
            spans_shipped: Counter::default(),
            captured: Family::default(),
            dns_queries: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("quiver");
        // Counters are registered without `_total`: the encoder appends it.
        r.register(
            "requests",
            "HTTP requests handled, by direction, destination and source service, route, status code and class, and proxy error",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from request received to response head sent",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register(
            "request_bytes",
            "HTTP request body bytes received from callers, by direction and service",
            m.request_bytes.clone(),
        );
        r.register(
            "response_bytes",
            "HTTP response body bytes sent back to callers, by direction and service",
            m.response_bytes.clone(),
        );
        r.register(
            "tcp_received_bytes",
            "Bytes read from local TCP connections (app side) of tunnels",
            m.tcp_received.clone(),
        );
        r.register(
            "tcp_sent_bytes",
            "Bytes written to local TCP connections (app side) of tunnels",
            m.tcp_sent.clone(),
        );
        r.register(
            "tcp_connections",
            "TCP tunnels handled, by direction, service and proxy error",
            m.tcp_connections.clone(),
        );
        r.register(
            "quic_connections",
            "Open QUIC connections to (client) and from (server) peer proxies",
            m.quic_connections.clone(),
        );
        r.register(
            "quic_handshakes",
            "QUIC + mTLS handshakes, by side and result",
            m.quic_handshakes.clone(),
        );
        r.register_with_unit(
            "quic_rtt",
            "Smoothed RTT of QUIC connections, sampled every 5 s",
            Unit::Seconds,
            m.quic_rtt.clone(),
        );
        r.register(
            "quic_lost_packets",
            "QUIC packets declared lost (each loss makes their frames be sent again)",
            m.quic_lost_packets.clone(),
        );
        r.register(
            "quic_sent_packets",
            "QUIC packets sent",
            m.quic_sent_packets.clone(),
        );
        r.register(
            "quic_lost_bytes",
            "Bytes in QUIC packets declared lost (their frames are retransmitted)",
            m.quic_lost_bytes.clone(),
        );
        r.register(
            "quic_congestion_events",
            "QUIC loss events the congestion controller acted on (the window was reduced); losses taken as random are quic_path_tolerated_losses",
            m.quic_congestion_events.clone(),
        );
        r.register_with_unit(
            "quic_congestion_window",
            "Congestion window of QUIC connections, sampled every 5 s",
            Unit::Bytes,
            m.quic_cwnd.clone(),
        );
        r.register(
            "quic_handshakes_in_progress",
            "Inbound QUIC handshakes in progress (bounded by tuning.limits.max_handshakes)",
            m.quic_handshaking.clone(),
        );
        r.register(
            "quic_retries",
            "Inbound connection attempts answered with a QUIC Retry (the peer must prove its address first; tuning.limits.retry_above_handshakes)",
            m.quic_retries.clone(),
        );
        r.register(
            "limit_refusals",
            "Connections refused, and connections, streams and tunnels closed, by the tuning.limits field that decided",
            m.limit_refusals.clone(),
        );
        r.register(
            "revoked_peer_connections",
            "Peer connections closed (live ones when a deny-list arrives) or refused right after \
             the handshake because the peer's certificate is revoked, by side",
            m.revoked_peers.clone(),
        );
        r.register(
            "revocations",
            "Revoked identities in the deny-list this proxy enforces",
            m.revocations.clone(),
        );
        m.path.register(r);
        r.register(
            "identity_reloads",
            "Identity (certificate, key, trust bundle) reloads, by result",
            m.identity_reloads.clone(),
        );
        r.register_with_unit(
            "identity_cert_expiry_timestamp",
            "Unix time at which the certificate in use expires",
            Unit::Seconds,
            m.identity_expiry.clone(),
        );
        r.register(
            "retries",
            "Retries sent (attempts after the first), by service",
            m.retries.clone(),
        );
        r.register(
            "retry_stops",
            "Requests that wanted a retry and did not get one, by service and reason (budget-exhausted, attempts-exhausted, ...)",
            m.retry_stops.clone(),
        );
        r.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by service",
            m.ejections.clone(),
        );
        r.register(
            "overload_refusals",
            "Requests refused at once because every endpoint was at a circuit-breaker limit",
            m.overloads.clone(),
        );
        r.register(
            "faults_injected",
            "Faults injected by routes, by service and kind (delay, abort)",
            m.faults.clone(),
        );
        r.register(
            "mirrored_requests",
            "Requests copied to a mirror backend, by service",
            m.mirrored.clone(),
        );
        r.register(
            "authz_denied",
            "Inbound requests and tunnels refused by authorization, by service",
            m.denied.clone(),
        );
        r.register(
            "config_reloads",
            "Config changes applied (file reloads and control-plane snapshots), by result",
            m.config_reloads.clone(),
        );
        r.register(
            "control_plane_connected",
            "1 while the Watch stream to the control plane is open",
            m.control_plane_connected.clone(),
        );
        r.register(
            "snapshot_version",
            "Version of the last config snapshot applied from the control plane",
            m.snapshot_version.clone(),
        );
        r.register(
            "spans_dropped",
            "Spans dropped because the queue to the control plane was full",
            m.spans_dropped.clone(),
        );
        r.register(
            "spans_shipped",
            "Spans sent to the control plane",
            m.spans_shipped.clone(),
        );
        r.register(
            "capture_connections",
            "Connections the capture rules sent to this proxy, by direction, outcome (mesh, \
             undeclared-port, egress, egress-denied, egress-failed, plaintext-refused, \
             plaintext-allowed, app-unreachable, refused) and protocol",
            m.captured.clone(),
        );
        r.register(
            "dns_queries",
            "DNS queries the pod's resolver handled (--capture), by outcome: mesh (a virtual \
             IP), nxdomain (an unknown .mesh name), forwarded, servfail, malformed",
            m.dns_queries.clone(),
        );
        m
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    pub fn count(family: &Family<ServiceLabels, Counter>, service: &str) {
        family
            .get_or_create(&ServiceLabels {
                service: service.to_string(),
            })
            .inc();
    }

    pub fn count_reason(
        family: &Family<ReasonLabels, Counter>,
        service: &str,
        reason: &'static str,
    ) {
        family
            .get_or_create(&ReasonLabels {
                service: service.to_string(),
                reason,
            })
            .inc();
    }

    pub fn identity_reload(&self, ok: bool) {
        self.identity_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    pub fn identity_expiry(&self, unix: Option<u64>) {
        self.identity_expiry
            .set(unix.map(|u| u as i64).unwrap_or(0));
    }

    /// The body-bytes counter of `family` for one direction and service, to hand to a
    /// [`crate::mesh::body::Counted`] body.
    pub fn bytes(
        family: &Family<TcpLabels, Counter>,
        direction: crate::errors::Direction,
        service: &str,
    ) -> Counter {
        family
            .get_or_create(&TcpLabels {
                direction: direction.as_str(),
                service: service.to_string(),
            })
            .clone()
    }

    pub fn handshake(&self, side: &'static str, ok: bool) {
        self.quic_handshakes
            .get_or_create(&HandshakeLabels {
                side,
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }
}

/// Status class label for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Per-peer path metrics: what an operator reads to see a degraded path.
#[derive(Default)]
pub struct PathMetrics {
    pub connections: Family<PathLabels, Gauge>,
    pub rtt: Family<PathLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub min_rtt: Family<PathLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub cwnd: Family<PathLabels, Gauge>,
    pub pacing_rate: Family<PathLabels, Gauge>,
    pub sent_packets: Family<PathLabels, Counter>,
    pub lost_packets: Family<PathLabels, Counter>,
    pub lost_bytes: Family<PathLabels, Counter>,
    pub congestion_events: Family<PathLabels, Counter>,
    pub tolerated_losses: Family<PathLabels, Counter>,
    /// Open connections per path, the source of truth for `connections`: opening, closing
    /// and removing a closed peer's gauges happen under this lock, so a connection opened
    /// while the previous one closes never loses its gauges.
    open: std::sync::Mutex<HashMap<PathLabels, usize>>,
}

impl PathMetrics {
    pub fn opened(&self, path: &PathLabels) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(path.clone()).or_default();
        *n += 1;
        self.connections.get_or_create(path).set(*n as i64);
    }

    /// The peer's gauges go with its last connection; its counters stay (they are totals).
    pub fn closed(&self, path: &PathLabels) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(path.clone()).or_default();
        *n = n.saturating_sub(1);
        if *n > 0 {
            self.connections.get_or_create(path).set(*n as i64);
            return;
        }
        open.remove(path);
        self.connections.remove(path);
        self.rtt.remove(path);
        self.min_rtt.remove(path);
        self.cwnd.remove(path);
        self.pacing_rate.remove(path);
    }
}

impl PathMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "quic_path_connections",
            "Open QUIC connections per peer proxy, side, path class and congestion controller",
            self.connections.clone(),
        );
        r.register_with_unit(
            "quic_path_rtt",
            "Smoothed RTT to the peer (the most recently sampled connection; every 5 s)",
            Unit::Seconds,
            self.rtt.clone(),
        );
        r.register_with_unit(
            "quic_path_min_rtt",
            "Lowest RTT seen to the peer (the most recently sampled connection)",
            Unit::Seconds,
            self.min_rtt.clone(),
        );
        r.register_with_unit(
            "quic_path_congestion_window",
            "Congestion window towards the peer (the most recently sampled connection)",
            Unit::Bytes,
            self.cwnd.clone(),
        );
        r.register(
            "quic_path_pacing_rate_bytes_per_second",
            "Pacing rate towards the peer: quinn paces at 1.25 x congestion window / smoothed RTT",
            self.pacing_rate.clone(),
        );
        r.register(
            "quic_path_sent_packets",
            "QUIC packets sent to the peer",
            self.sent_packets.clone(),
        );
        r.register(
            "quic_path_lost_packets",
            "QUIC packets to the peer declared lost; their frames were retransmitted in new packets",
            self.lost_packets.clone(),
        );
        r.register_with_unit(
            "quic_path_lost",
            "Bytes in QUIC packets to the peer declared lost (and retransmitted)",
            Unit::Bytes,
            self.lost_bytes.clone(),
        );
        r.register(
            "quic_path_congestion_events",
            "Loss events towards the peer that the congestion controller acted on (window reduced)",
            self.congestion_events.clone(),
        );
        r.register(
            "quic_path_tolerated_losses",
            "Loss events towards the peer taken as random loss: retransmitted, the window kept",
            self.tolerated_losses.clone(),
        );
    }
}
