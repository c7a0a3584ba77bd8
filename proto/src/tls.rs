//! Mesh mTLS for rustls: one identity, one trust bundle, TLS 1.3 only, ring only.
//!
//! The server side requires a client certificate chaining to the bundle and carrying exactly
//! one SPIFFE id of our trust domain. The client side checks the chain the same way; between
//! proxies, whether the server is *the* identity expected for that endpoint is decided by the
//! caller after the handshake ([`peer_spiffe_id`]) so that a mismatch is reported with both
//! ids, before any request is sent. A client of the control plane instead pins the server's
//! id inside the handshake ([`PinnedClientConfig`]): a workload certificate of the trust
//! domain is refused before a join token or a CSR leaves the process.
//!
//! A trust bundle only ever changes with overlap ([`check_bundle_change`]): a new bundle must
//! keep at least one root the holder already trusts.
//!
//! Both sides refuse a peer leaf that the deny-list covers
//! ([`crate::revocation::DenyList::check`]) with a `certificate_revoked` alert, and both
//! refuse TLS session resumption: a resumed handshake skips the verifiers, so an expired or
//! revoked certificate would keep connecting on a ticket. With resumption off, the verifiers
//! below are the one place that judges every connection's certificate (docs/security.md,
//! "Every connection shows a valid certificate").

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::certs::{self, CertError};
use crate::revocation::DenyList;
use crate::spiffe::SpiffeId;

/// Why an identity or trust bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Cert { what: String, source: CertError },
    #[error("{0}: no private key (PKCS#8, SEC1 or PKCS#1 PEM) found")]
    NoKey(String),
    #[error("trust bundle holds a certificate rustls refuses as a root: {0}")]
    BadRoot(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// A client config that accepts exactly one server identity: the only kind of config the
/// discovery dialer ([`crate::dial::connect`]) takes, so no client of the control plane can
/// forget to pin it.
#[derive(Debug, Clone)]
pub struct PinnedClientConfig {
    config: rustls::ClientConfig,
    server: SpiffeId,
}

impl PinnedClientConfig {
    /// The server identity this config accepts.
    pub fn server(&self) -> &SpiffeId {
        &self.server
    }

    pub fn into_inner(self) -> rustls::ClientConfig {
        self.config
    }
}

/// The process-wide crypto provider: ring, passed explicitly so that another provider in the
/// dependency graph can never make rustls' implicit builders panic.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This proxy's SVID, its key and the mesh trust bundle.
pub struct MeshIdentity {
    pub spiffe_id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub bundle: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshIdentity")
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

impl MeshIdentity {
    /// Build from PEM strings (cert chain, private key, trust bundle).
    pub fn from_pem(chain: &str, key: &str, bundle: &str) -> Result<Self, IdentityError> {
        let chain = certs::certs_from_pem(chain).map_err(|source| IdentityError::Cert {
            what: "certificate chain".into(),
            source,
        })?;
        let spiffe_id = certs::spiffe_id_of(&chain[0]).map_err(|source| IdentityError::Cert {
            what: "certificate chain".into(),
            source,
        })?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|_| IdentityError::NoKey("private key".into()))?;
        let bundle = certs::certs_from_pem(bundle).map_err(|source| IdentityError::Cert {
            what: "trust bundle".into(),
            source,
        })?;
        Ok(Self {
            spiffe_id,
            chain,
            key,
            bundle,
        })
    }

    /// Load from PEM files.
    pub fn from_files(chain: &Path, key: &Path, bundle: &Path) -> Result<Self, IdentityError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| IdentityError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let (c, k, b) = (read(chain)?, read(key)?, read(bundle)?);
        Self::from_pem(&c, &k, &b).map_err(|e| match e {
            IdentityError::NoKey(_) => IdentityError::NoKey(key.display().to_string()),
            other => other,
        })
    }

    pub fn trust_domain(&self) -> &str {
        self.spiffe_id.trust_domain()
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, IdentityError> {
        let mut roots = RootCertStore::empty();
        for c in &self.bundle {
            roots
                .add(c.clone())
                .map_err(|e| IdentityError::BadRoot(e.to_string()))?;
        }
        Ok(Arc::new(roots))
    }

    /// TLS 1.3 server config requiring a mesh client certificate, on every handshake (no
    /// session tickets, no resumption).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, IdentityError> {
        self.server_config_denying(alpn, &DenyList::default())
    }

    /// [`Self::server_config`] that also refuses client certificates `deny` covers (read at
    /// each handshake, so a replaced list applies at once).
    pub fn server_config_denying(
        &self,
        alpn: &[&[u8]],
        deny: &DenyList,
    ) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = provider();
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| IdentityError::Verifier(e.to_string()))?;
        let verifier = Arc::new(SpiffeClientVerifier {
            inner,
            trust_domain: self.trust_domain().to_string(),
            deny: deny.clone(),
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // No session to resume: every client shows its certificate to the verifier again.
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Ok(cfg)
    }

    /// TLS 1.3 client config presenting our SVID and accepting servers whose chain reaches the
    /// bundle and whose certificate carries one SPIFFE id of our trust domain, on every
    /// handshake (it never resumes a session).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, IdentityError> {
        self.client_config_denying(alpn, &DenyList::default())
    }

    /// [`Self::client_config`] that also refuses server certificates `deny` covers.
    pub fn client_config_denying(
        &self,
        alpn: &[&[u8]],
        deny: &DenyList,
    ) -> Result<rustls::ClientConfig, IdentityError> {
        self.client_config_for(None, alpn, deny)
    }

    /// Like [`MeshIdentity::client_config`], but the handshake succeeds only when the server
    /// proves `server` (the control plane's id).
    pub fn pinned_client_config(
        &self,
        server: &SpiffeId,
        alpn: &[&[u8]],
    ) -> Result<PinnedClientConfig, IdentityError> {
        Ok(PinnedClientConfig {
            config: self.client_config_for(Some(server.clone()), alpn, &DenyList::default())?,
            server: server.clone(),
        })
    }

    fn client_config_for(
        &self,
        pinned: Option<SpiffeId>,
        alpn: &[&[u8]],
        deny: &DenyList,
    ) -> Result<rustls::ClientConfig, IdentityError> {
        let provider = provider();
        let verifier = Arc::new(SpiffeServerVerifier {
            roots: self.roots()?,
            algs: provider.signature_verification_algorithms,
            trust_domain: self.trust_domain().to_string(),
            deny: deny.clone(),
            pinned,
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Never offer a ticket: the server's certificate is verified on every connection.
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(cfg)
    }
}

/// TLS 1.3 client config without a client certificate that accepts only a server proving
/// `server` (the control plane's id) with a chain to `bundle_pem`: a proxy joining the mesh
/// before it has an SVID, with the trust bundle it was given out of band (`--ca-cert`).
pub fn pinned_client_config_without_identity(
    bundle_pem: &str,
    server: &SpiffeId,
    alpn: &[&[u8]],
) -> Result<PinnedClientConfig, IdentityError> {
    let bundle = certs::certs_from_pem(bundle_pem).map_err(|source| IdentityError::Cert {
        what: "trust bundle".into(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for c in bundle {
        roots
            .add(c)
            .map_err(|e| IdentityError::BadRoot(e.to_string()))?;
    }
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: Arc::new(roots),
        algs: provider.signature_verification_algorithms,
        trust_domain: server.trust_domain().to_string(),
        deny: DenyList::default(),
        pinned: Some(server.clone()),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(PinnedClientConfig {
        config: cfg,
        server: server.clone(),
    })
}

/// Why a new trust bundle was not taken.
#[derive(Debug, thiserror::Error)]
pub enum BundleChangeRefused {
    #[error("the new trust bundle does not parse: {0}")]
    Unreadable(CertError),
    #[error(
        "the new trust bundle keeps none of the roots trusted now ({current}); it holds only \
         {next}. A bundle may change only with overlap: add the new root next to an old one \
         first (quiverctl ca rotate)"
    )]
    NoOverlap { current: String, next: String },
}

/// May a holder of `current` switch to `next_pem`? Only when `next_pem` keeps at least one
/// certificate of `current` (byte for byte): rotation adds a root beside the old one before
/// the old one is retired, so a legitimate change always overlaps, while a bundle that swaps
/// in a foreign CA never does.
pub fn check_bundle_change(
    current: &[CertificateDer<'_>],
    next_pem: &str,
) -> Result<Vec<CertificateDer<'static>>, BundleChangeRefused> {
    let next = certs::certs_from_pem(next_pem).map_err(BundleChangeRefused::Unreadable)?;
    if next.iter().any(|n| current.iter().any(|c| c == n)) {
        return Ok(next);
    }
    let describe = |set: &[CertificateDer<'_>]| {
        set.iter()
            .map(|c| certs::describe(c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(BundleChangeRefused::NoOverlap {
        current: describe(current),
        next: describe(&next),
    })
}

/// The SPIFFE id of a verified peer, from the chain rustls (or quinn's `peer_identity`) hands
/// back after the handshake.
pub fn peer_spiffe_id(chain: &[CertificateDer<'_>]) -> Result<SpiffeId, CertError> {
    let leaf = chain.first().ok_or(CertError::NoSpiffeId)?;
    certs::spiffe_id_of(leaf)
}

/// Refusal raised inside the verifiers so the alert carries a reason in logs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SvidRefused(String);

fn refuse(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(SvidRefused(
        msg,
    )))))
}

/// The checks both sides run on the peer's leaf after its chain: one SPIFFE id of our trust
/// domain, and not revoked (refused with rustls' `Revoked`, which sends the
/// `certificate_revoked` alert).
fn check_svid(
    end_entity: &CertificateDer<'_>,
    trust_domain: &str,
    deny: &DenyList,
) -> Result<(), rustls::Error> {
    match certs::spiffe_id_of(end_entity) {
        Ok(id) if id.trust_domain() == trust_domain => {}
        Ok(id) => {
            return Err(refuse(format!(
                "peer {id} is not in trust domain {trust_domain}"
            )));
        }
        Err(e) => return Err(refuse(format!("peer certificate is not an SVID: {e}"))),
    }
    deny.check(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::Revoked))
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
    trust_domain: String,
    deny: DenyList,
    /// The one server identity accepted (a client of the control plane), checked in the
    /// handshake; `None` between proxies, where the caller checks the endpoint's id after it.
    pinned: Option<SpiffeId>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // SVIDs carry no DNS names, so the webpki name check is replaced by the SPIFFE check.
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        check_svid(end_entity, &self.trust_domain, &self.deny)?;
        if let Some(pinned) = &self.pinned {
            let id = certs::spiffe_id_of(end_entity)
                .map_err(|e| refuse(format!("peer certificate is not an SVID: {e}")))?;
            if &id != pinned {
                return Err(refuse(format!(
                    "the server presented {id}, not the control plane's id {pinned}"
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configs are TLS 1.3 only; a TLS 1.2 signature is never legitimate here.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    deny: DenyList,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_svid(end_entity, &self.trust_domain, &self.deny)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;
