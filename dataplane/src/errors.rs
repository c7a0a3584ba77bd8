//! The data path's error, classified at the edge: each maps to a status code, the
//! `quiver-error` reason an app sees, a metric label, and whether a retry may help.

use http::StatusCode;

/// Header carrying the reason on every response the proxy itself generates.
pub const ERROR_HEADER: &str = "quiver-error";

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
    UpstreamTimeout(std::time::Duration),
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
    /// The `quiver-error` value and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoRoute(_) => "no-route",
            ProxyError::NoEndpoint(_) => "no-endpoint",
            ProxyError::PeerIdentityMismatch { .. } => "peer-identity-mismatch",
            ProxyError::PeerHandshake { .. } => "peer-handshake",
            ProxyError::PeerConnect { .. } => "peer-connect",
            ProxyError::UpstreamConnect(_) => "upstream-connect",
            ProxyError::UpstreamTimeout(_) => "upstream-timeout",
            ProxyError::UpstreamReset(_) => "upstream-reset",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::HeaderTooLarge { .. } => "header-too-large",
            ProxyError::Draining => "draining",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::Denied(_) => "denied",
            ProxyError::Fault(_) => "fault",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoint(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::PeerIdentityMismatch { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::PeerHandshake { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::PeerConnect { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamReset(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeaderTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Denied(_) => StatusCode::FORBIDDEN,
            ProxyError::Fault(s) => {
                StatusCode::from_u16(*s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }

    /// Whether the request certainly did not reach an app, so another attempt is safe.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::NoEndpoint(_)
                | ProxyError::PeerConnect { .. }
                | ProxyError::UpstreamConnect(_)
                | ProxyError::Draining
                | ProxyError::Overloaded(_)
        )
    }
}
