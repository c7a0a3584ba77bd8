//! Resource limits (`tuning.limits`), like Envoy's overload manager: how many peer connections
//! and handshakes the proxy takes on, when a peer must first prove its address (QUIC Retry),
//! and how long a caller may hold a connection, a stream or a tunnel without making progress.
//!
//! This file owns the knobs, their defaults and bounds, and the one counter of refusals
//! (`quiver_limit_refusals_total{limit}`, labelled with the knob's name). Enforcement lives
//! where the resource is: inbound QUIC admission in `mesh/admission.rs`, the app-facing
//! timeouts in `proxy/outbound.rs`, the peer's request-head timeout in `proxy/inbound.rs`,
//! the tunnel idle timer in `proxy/tunnel.rs`. docs/security.md has why each default is what
//! it is.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use quiver_api::duration::serde_human;
use quiver_api::validate::FieldError;
use serde::{Deserialize, Serialize};

/// `tuning.limits`: every field may be omitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Peer connections (inbound, handshaking or open) at once; beyond it a new one is refused.
    pub max_connections: u32,
    /// Peer connections at once from one source IP address (only addresses a peer has proven:
    /// a handshake that has not yet shown it owns its address counts toward `max_connections`
    /// alone, so a spoofed source cannot use up a real peer's share).
    pub max_connections_per_peer: u32,
    /// Inbound handshakes in progress at once; beyond it a new attempt is refused.
    pub max_handshakes: u32,
    /// With this many handshakes in progress, a new attempt from an address it has not proven
    /// is answered with a QUIC Retry: it costs the proxy no state, and only a peer that
    /// receives packets at its source address can answer it. 0: always.
    pub retry_above_handshakes: u32,
    /// App-facing listeners: from accepting a connection to a complete first request head,
    /// and from the end of one request head to the start of the next (HTTP/1.1 keep-alive).
    #[serde(with = "serde_human")]
    pub request_header_timeout: Duration,
    /// App-facing listeners: from a request head that announces a body to the body's first
    /// bytes.
    #[serde(with = "serde_human")]
    pub request_body_timeout: Duration,
    /// A CONNECT or TCP tunnel with no bytes either way for this long is closed (both sides).
    #[serde(with = "serde_human")]
    pub tunnel_idle_timeout: Duration,
    /// From a peer opening a request stream to its complete head.
    #[serde(with = "serde_human")]
    pub stream_header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_peer: 64,
            max_handshakes: 512,
            retry_above_handshakes: 64,
            request_header_timeout: Duration::from_secs(30),
            request_body_timeout: Duration::from_secs(30),
            tunnel_idle_timeout: Duration::from_secs(3600),
            stream_header_timeout: Duration::from_secs(10),
        }
    }
}

/// The longest any of the timeouts may be: beyond a day they are mistakes.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

impl Limits {
    /// Every problem, each naming its field under `tuning.limits`.
    pub fn validate(&self, errs: &mut Vec<FieldError>) {
        let mut err = |field: &str, reason: String| {
            errs.push(FieldError {
                path: format!("tuning.limits.{field}"),
                reason,
            });
        };
        for (field, n) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_peer", self.max_connections_per_peer),
            ("max_handshakes", self.max_handshakes),
        ] {
            if n == 0 {
                err(field, "must be at least 1".into());
            }
        }
        if self.max_connections_per_peer > self.max_connections {
            err(
                "max_connections_per_peer",
                format!(
                    "{} is more than max_connections ({})",
                    self.max_connections_per_peer, self.max_connections
                ),
            );
        }
        if self.retry_above_handshakes > self.max_handshakes {
            err(
                "retry_above_handshakes",
                format!(
                    "{} is more than max_handshakes ({}): Retry would never be asked",
                    self.retry_above_handshakes, self.max_handshakes
                ),
            );
        }
        for (field, d) in [
            ("request_header_timeout", self.request_header_timeout),
            ("request_body_timeout", self.request_body_timeout),
            ("tunnel_idle_timeout", self.tunnel_idle_timeout),
            ("stream_header_timeout", self.stream_header_timeout),
        ] {
            if d.is_zero() {
                err(field, "must be more than 0s".into());
            } else if d > MAX_TIMEOUT {
                err(field, "must be at most 24h".into());
            }
        }
    }
}

/// Which limit refused or closed something: the metric label, named like its knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Connections,
    ConnectionsPerPeer,
    Handshakes,
    RequestHeaderTimeout,
    RequestBodyTimeout,
    TunnelIdleTimeout,
    StreamHeaderTimeout,
}

impl Limit {
    /// The metric label: the `tuning.limits` field that decided.
    pub const fn name(self) -> &'static str {
        match self {
            Limit::Connections => "max_connections",
            Limit::ConnectionsPerPeer => "max_connections_per_peer",
            Limit::Handshakes => "max_handshakes",
            Limit::RequestHeaderTimeout => "request_header_timeout",
            Limit::RequestBodyTimeout => "request_body_timeout",
            Limit::TunnelIdleTimeout => "tunnel_idle_timeout",
            Limit::StreamHeaderTimeout => "stream_header_timeout",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

/// `quiver_limit_refusals_total{limit}`: connections refused and connections, streams and
/// tunnels closed because a limit was reached.
pub type Refusals = Family<LimitLabels, Counter>;

/// Count one refusal or closure by `limit`.
pub fn count(refusals: &Refusals, limit: Limit) {
    refusals
        .get_or_create(&LimitLabels {
            limit: limit.name(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_field() {
        let mut errs = Vec::new();
        Limits::default().validate(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let bad = Limits {
            max_connections: 0,
            max_connections_per_peer: 5,
            max_handshakes: 10,
            retry_above_handshakes: 11,
            request_header_timeout: Duration::ZERO,
            request_body_timeout: Duration::from_secs(86_401),
            tunnel_idle_timeout: Duration::MAX,
            stream_header_timeout: Duration::from_secs(1),
        };
        let mut errs = Vec::new();
        bad.validate(&mut errs);
        let fields: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            fields,
            [
                "tuning.limits.max_connections",
                "tuning.limits.max_connections_per_peer",
                "tuning.limits.retry_above_handshakes",
                "tuning.limits.request_header_timeout",
                "tuning.limits.request_body_timeout",
                "tuning.limits.tunnel_idle_timeout",
            ],
            "{errs:?}"
        );
    }
}
