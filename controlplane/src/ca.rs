//! The mesh certificate authority: created once per mesh (or loaded from an operator's files),
//! kept in the store so that every replica signs with the same key, and turned into SVIDs for
//! proxies that redeem a join token.
//!
//! The SPIFFE id of an SVID comes from the join token's scope, never from the CSR.

use std::path::Path;
use std::time::{Duration, SystemTime};

use quiver_api::SpiffeId;
use quiver_api::certs::{CertError, CertificateAuthority, IssuedCert};

use crate::store::{Store, StoreError};

/// Validity of a generated mesh root.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("certificate: {0}")]
    Cert(#[from] CertError),
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: the CA key is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyMode { path: String, mode: u32 },
    #[error("--ca-cert and --ca-key go together")]
    HalfConfigured,
    #[error("trust domain {0:?}: {1}")]
    TrustDomain(String, quiver_api::spiffe::SpiffeIdError),
}

/// The mesh CA and its trust bundle.
pub struct MeshCa {
    trust_domain: String,
    authority: CertificateAuthority,
    bundle_pem: String,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl MeshCa {
    /// Load the operator's CA from files when given, else the CA stored in the database, else
    /// generate an ECDSA P-256 root for `trust_domain` and store it.
    pub async fn load_or_create(
        store: &dyn Store,
        trust_domain: &str,
        operator: Option<(&Path, &Path)>,
    ) -> Result<Self, CaError> {
        SpiffeId::parse(&format!("spiffe://{trust_domain}"))
            .map_err(|e| CaError::TrustDomain(trust_domain.into(), e))?;
        let (cert_pem, key_pem) = match operator {
            Some((cert, key)) => (read(cert)?, read_private(key)?),
            None => match store.certificate_authority().await? {
                Some(stored) => stored,
                None => {
                    let root = CertificateAuthority::generate(trust_domain, ROOT_VALIDITY)?;
                    // Another replica may have stored one meanwhile: whichever landed first wins.
                    store
                        .init_certificate_authority(root.cert_pem(), root.key_pem())
                        .await?
                }
            },
        };
        let authority = CertificateAuthority::from_pem(&cert_pem, &key_pem)?;
        Ok(Self {
            trust_domain: trust_domain.into(),
            authority,
            bundle_pem: cert_pem,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The PEM certificates a peer's chain must lead to (the CA certificate; for an operator
    /// intermediate, peers should also trust the operator's root).
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// Issue a certificate and a new key for `id` (the control plane's own listener).
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedCert, CaError> {
        Ok(self.authority.issue(id, ttl)?)
    }

    /// Issue a server certificate for `id` that also names `hosts` (the API listener's TLS).
    pub fn issue_for_hosts(
        &self,
        id: &SpiffeId,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        Ok(self.authority.issue_for_hosts(id, hosts, ttl)?)
    }

    /// Sign the public key of `csr_der` into an SVID for `ns`/`service_account`.
    pub fn sign(
        &self,
        csr_der: &[u8],
        namespace: &str,
        service_account: &str,
        ttl: Duration,
    ) -> Result<(SpiffeId, String, SystemTime), CaError> {
        let id = SpiffeId::workload(&self.trust_domain, namespace, service_account)
            .map_err(|e| CaError::TrustDomain(self.trust_domain.clone(), e))?;
        let (chain, not_after) = self.authority.sign_csr(csr_der, &id, ttl)?;
        Ok((id, chain, not_after))
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Read a private key, refusing one that group or others can read.
fn read_private(path: &Path) -> Result<String, CaError> {
    let shared = quiver_api::certs::shared_key_mode(path).map_err(|source| CaError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if let Some(mode) = shared {
        return Err(CaError::KeyMode {
            path: path.display().to_string(),
            mode,
        });
    }
    read(path)
}
