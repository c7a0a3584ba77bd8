//! TLS for the discovery listener: a server certificate issued by the mesh CA at start for
//! `spiffe://<td>/ns/quiver-system/sa/control-plane`, and client certificates that are
//! optional in the handshake (Join comes before a proxy has one) but, when sent, must chain
//! to the mesh CA. Handlers that need an identity insist on it ([`crate::api`]).

use std::time::Duration;

use quiver_api::SpiffeId;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::ca::{CaError, MeshCa};

/// Lifetime of the listener's certificate; a new one is issued at every start.
pub const SERVER_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The control plane's SPIFFE id in `trust_domain` (its namespace is reserved: no join token,
/// Service or workload may use it, `quiver_api::spiffe::reserved_namespace`).
pub fn control_plane_id(trust_domain: &str) -> Result<SpiffeId, CaError> {
    SpiffeId::control_plane(trust_domain).map_err(|e| CaError::TrustDomain(trust_domain.into(), e))
}

/// The discovery listener's TLS config.
pub fn server_tls(ca: &MeshCa) -> Result<ServerTlsConfig, CaError> {
    let id = control_plane_id(ca.trust_domain())?;
    let issued = ca.issue(&id, SERVER_CERT_TTL)?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(issued.chain_pem, issued.key_pem))
        .client_ca_root(Certificate::from_pem(ca.bundle_pem()))
        .client_auth_optional(true))
}
