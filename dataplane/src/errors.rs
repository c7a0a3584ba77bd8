//! The data path's error, classified at the edge. [`ErrorKind`] is the one table of what
//! each kind means: the `quiver-error` reason on the wire (also the metric label), the
//! status code, whether another attempt is safe, which side failed, and what a retry or
//! outlier policy sees. Header round-trips, metrics and retry judgement all read it.

use std::time::Duration;

use http::StatusCode;

/// Header carrying the reason on every response the proxy itself generates.
pub const ERROR_HEADER: &str = "quiver-error";

/// Which way a request or stream crosses this proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the local app, out to the mesh.
    Outbound,
    /// From the mesh, in to the local app.
    Inbound,
}

impl Direction {
    /// The metric label and access-log field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Where a failure happened, for an operator deciding whom to page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This proxy refused or could not route (policy, bad input, draining, overload).
    Local,
    /// The peer proxy or the path to it (QUIC, TLS, identity).
    Peer,
    /// The app behind the serving proxy.
    App,
}

/// What an attempt's failure looks like to retry and outlier policies. It also decides
/// retry safety: after `Connect` nothing reached an app, so any method may be tried again;
/// after `Timeout` or `Reset` the app may have done the work, so only idempotent methods
/// are (`policy::retry::eligible`); `Answered` is judged by its status like any response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// Nothing reached an app.
    Connect,
    /// No response head in time.
    Timeout,
    /// The stream broke before a response head.
    Reset,
    /// The proxy answered itself; policies see its status code.
    Answered,
}

/// The kinds of [`ProxyError`], with everything that is decided per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NoRoute,
    NoEndpoint,
    PeerIdentityMismatch,
    PeerHandshake,
    PeerConnect,
    UpstreamConnect,
    UpstreamTimeout,
    UpstreamReset,
    BadRequest,
    HeaderTooLarge,
    Draining,
    Overloaded,
    Denied,
    Fault,
}

/// One row of the table.
struct Row {
    reason: &'static str,
    status: StatusCode,
    side: Side,
    attempt: AttemptFailure,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::NoRoute,
        ErrorKind::NoEndpoint,
        ErrorKind::PeerIdentityMismatch,
        ErrorKind::PeerHandshake,
        ErrorKind::PeerConnect,
        ErrorKind::UpstreamConnect,
        ErrorKind::UpstreamTimeout,
        ErrorKind::UpstreamReset,
        ErrorKind::BadRequest,
        ErrorKind::HeaderTooLarge,
        ErrorKind::Draining,
        ErrorKind::Overloaded,
        ErrorKind::Denied,
        ErrorKind::Fault,
    ];

    const fn row(self) -> Row {
        use AttemptFailure::{Answered, Connect, Reset, Timeout};
        use Side::{App, Local, Peer};
        use StatusCode as S;
        let (reason, status, side, attempt) = match self {
            ErrorKind::NoRoute => ("no-route", S::NOT_FOUND, Local, Answered),
            ErrorKind::NoEndpoint => ("no-endpoint", S::SERVICE_UNAVAILABLE, Local, Answered),
            ErrorKind::PeerIdentityMismatch => {
                ("peer-identity-mismatch", S::BAD_GATEWAY, Peer, Connect)
            }
            ErrorKind::PeerHandshake => ("peer-handshake", S::BAD_GATEWAY, Peer, Connect),
            ErrorKind::PeerConnect => ("peer-connect", S::SERVICE_UNAVAILABLE, Peer, Connect),
            ErrorKind::UpstreamConnect => {
                ("upstream-connect", S::SERVICE_UNAVAILABLE, App, Connect)
            }
            ErrorKind::UpstreamTimeout => ("upstream-timeout", S::GATEWAY_TIMEOUT, App, Timeout),
            ErrorKind::UpstreamReset => ("upstream-reset", S::BAD_GATEWAY, App, Reset),
            ErrorKind::BadRequest => ("bad-request", S::BAD_REQUEST, Local, Answered),
            ErrorKind::HeaderTooLarge => (
                "header-too-large",
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Local,
                Answered,
            ),
            ErrorKind::Draining => ("draining", S::SERVICE_UNAVAILABLE, Local, Connect),
            ErrorKind::Overloaded => ("overloaded", S::SERVICE_UNAVAILABLE, Local, Connect),
            ErrorKind::Denied => ("denied", S::FORBIDDEN, Local, Answered),
            // The status is the route's; this one is only the fallback.
            ErrorKind::Fault => ("fault", S::SERVICE_UNAVAILABLE, Local, Answered),
        };
        Row {
            reason,
            status,
            side,
            attempt,
        }
    }

    /// The `quiver-error` value and metric label.
    pub const fn reason(self) -> &'static str {
        self.row().reason
    }

    /// The kind a `quiver-error` value names; None for anything else, so a label built
    /// from a peer's header stays bounded.
    pub fn from_reason(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.reason() == reason)
    }

    pub const fn status(self) -> StatusCode {
        self.row().status
    }

    pub const fn side(self) -> Side {
        self.row().side
    }

    /// How retry and outlier policies count an attempt that failed this way.
    pub const fn attempt_failure(self) -> AttemptFailure {
        self.row().attempt
    }
}

/// Why the proxy could not deliver a request or stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No service or port matches the request.
    #[error("no route: {0}")]
    NoRoute(String),
    /// The service is known but has no endpoints.
    #[error("service {0} has no endpoints")]
    NoEndpoint(String),
    /// The peer proved a valid mesh identity, but not the one expected for that endpoint.
    #[error("peer at {addr} is {got}, expected {expected}")]
    PeerIdentityMismatch {
        addr: String,
        expected: String,
        got: String,
    },
    /// The TLS handshake with the peer failed (its certificate, or ours, was refused).
    #[error("TLS with peer {addr} failed: {detail}")]
    PeerHandshake { addr: String, detail: String },
    /// The peer proxy could not be reached over QUIC.
    #[error("cannot reach peer {addr}: {detail}")]
    PeerConnect { addr: String, detail: String },
    /// The app behind the (local or remote) proxy refused or did not answer the connect.
    #[error("cannot connect to the app: {0}")]
    UpstreamConnect(String),
    /// No response head within the response timeout.
    #[error("no response within {0:?}")]
    UpstreamTimeout(Duration),
    /// The stream or connection broke mid-request.
    #[error("upstream reset: {0}")]
    UpstreamReset(String),
    /// The request itself is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Header block above the configured limit.
    #[error("header block of {size} bytes exceeds the {limit}-byte limit")]
    HeaderTooLarge { size: usize, limit: usize },
    /// The proxy is shutting down and takes no new requests.
    #[error("proxy is draining")]
    Draining,
    /// Every endpoint is at its circuit-breaker limit (`limit` names which).
    #[error("every endpoint is at its {0} limit")]
    Overloaded(&'static str),
    /// An AuthorizationPolicy (or the mesh default) refused the caller.
    #[error("denied: {0}")]
    Denied(String),
    /// A route's fault injection answered instead of the app.
    #[error("injected fault: status {0}")]
    Fault(u16),
}

impl ProxyError {
    /// What the caller is told in the response body. A denial says no more than that: which
    /// policy and rule decided is for the serving side's access log, not for the caller to
    /// probe.
    pub fn public_message(&self) -> String {
        match self {
            ProxyError::Denied(_) => "denied by an authorization policy".to_string(),
            e => e.to_string(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::NoRoute(_) => ErrorKind::NoRoute,
            ProxyError::NoEndpoint(_) => ErrorKind::NoEndpoint,
            ProxyError::PeerIdentityMismatch { .. } => ErrorKind::PeerIdentityMismatch,
            ProxyError::PeerHandshake { .. } => ErrorKind::PeerHandshake,
            ProxyError::PeerConnect { .. } => ErrorKind::PeerConnect,
            ProxyError::UpstreamConnect(_) => ErrorKind::UpstreamConnect,
            ProxyError::UpstreamTimeout(_) => ErrorKind::UpstreamTimeout,
            ProxyError::UpstreamReset(_) => ErrorKind::UpstreamReset,
            ProxyError::BadRequest(_) => ErrorKind::BadRequest,
            ProxyError::HeaderTooLarge { .. } => ErrorKind::HeaderTooLarge,
            ProxyError::Draining => ErrorKind::Draining,
            ProxyError::Overloaded(_) => ErrorKind::Overloaded,
            ProxyError::Denied(_) => ErrorKind::Denied,
            ProxyError::Fault(_) => ErrorKind::Fault,
        }
    }

    /// The `quiver-error` value and metric label.
    pub fn reason(&self) -> &'static str {
        self.kind().reason()
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Fault(s) => StatusCode::from_u16(*s).unwrap_or(self.kind().status()),
            _ => self.kind().status(),
        }
    }

    /// The error a peer proxy meant by refusing a stream with `status` and the `quiver-error`
    /// `kind` (`what` says what was asked, for the message). A refusal without a known
    /// reason came from the peer's app; kinds that only make sense on the peer's side (its
    /// policy, its overload) arrive here as a reset of this stream.
    pub fn from_peer(kind: Option<ErrorKind>, status: StatusCode, what: &str) -> ProxyError {
        let detail = format!("peer answered {status} to {what}");
        match kind {
            Some(ErrorKind::NoRoute) => ProxyError::NoRoute(detail),
            Some(ErrorKind::UpstreamTimeout) => ProxyError::UpstreamTimeout(Duration::ZERO),
            Some(ErrorKind::Draining) => ProxyError::Draining,
            Some(ErrorKind::UpstreamConnect) | None => ProxyError::UpstreamConnect(detail),
            Some(other) => ProxyError::UpstreamReset(format!("{detail} ({})", other.reason())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_and_is_distinct() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            assert!(seen.insert(kind.reason()), "{kind:?} reuses a reason");
            assert_eq!(ErrorKind::from_reason(kind.reason()), Some(kind));
        }
        assert_eq!(ErrorKind::from_reason("made-up"), None);
        assert_eq!(ErrorKind::from_reason(""), None);
    }

    #[test]
    fn failures_before_any_app_saw_the_request_count_as_connect_failures() {
        use AttemptFailure::*;
        let connect: Vec<_> = ErrorKind::ALL
            .into_iter()
            .filter(|k| k.attempt_failure() == Connect)
            .collect();
        assert_eq!(
            connect,
            [
                ErrorKind::PeerIdentityMismatch,
                ErrorKind::PeerHandshake,
                ErrorKind::PeerConnect,
                ErrorKind::UpstreamConnect,
                ErrorKind::Draining,
                ErrorKind::Overloaded,
            ]
        );
        assert_eq!(ErrorKind::UpstreamTimeout.attempt_failure(), Timeout);
        assert_eq!(ErrorKind::UpstreamReset.attempt_failure(), Reset);
        assert_eq!(ErrorKind::NoEndpoint.attempt_failure(), Answered);
    }

    #[test]
    fn a_fault_answers_with_the_routes_status() {
        assert_eq!(
            ProxyError::Fault(429).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(ProxyError::Fault(429).reason(), "fault");
        assert_eq!(
            ProxyError::Fault(42).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn a_peer_refusal_keeps_its_kind() {
        let s = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            ProxyError::from_peer(Some(ErrorKind::Draining), s, "CONNECT"),
            ProxyError::Draining
        );
        assert_eq!(
            ProxyError::from_peer(None, s, "CONNECT").kind(),
            ErrorKind::UpstreamConnect
        );
        assert_eq!(
            ProxyError::from_peer(Some(ErrorKind::Overloaded), s, "CONNECT").kind(),
            ErrorKind::UpstreamReset
        );
    }
}
