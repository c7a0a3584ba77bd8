//! TLS for the control plane's listeners, done here with tokio-rustls rather than by tonic
//! (whose TLS config is fixed when the server starts): every handshake takes the config
//! current at that moment, so certificates are replaced while the control plane runs.
//!
//! The discovery listener: a server certificate issued by the mesh CA for
//! `spiffe://<td>/ns/quiver-system/sa/control-plane`, and client certificates that are
//! optional in the handshake (Join comes before a proxy has one) but, when sent, must chain
//! to a root of the current trust bundle and be within its validity, on every connection:
//! the listener resumes no TLS session, so an expired or retired SVID cannot ride on a ticket.
//! Handlers that need an identity insist on it ([`crate::api`]).
//!
//! The API listener with `--tls-mesh-ca`: a certificate from the mesh CA for the API's host
//! names, no client certificates, ALPN `h2` and `http/1.1`; the trust bundle clients verify
//! it with is written to `api-ca.pem` whenever it changes. With `--tls-cert`/`--tls-key` the
//! operator's files are read again every [`CHECK_EVERY`] and a changed pair is taken
//! (cert-manager and the like replace them in place).
//!
//! A mesh-CA certificate follows the CA: when the bundle changes (a root rotation or
//! retirement, here or on another replica), the next handshake trusts exactly the new
//! bundle's roots. The server certificate is kept while its root stays in the bundle, so a
//! proxy that has not yet heard of a new root can still reach the listener (and hear of it);
//! once that root is retired, a certificate from the current intermediate replaces it. It is
//! also replaced when the intermediate is renewed under the same root, and in any case once
//! less than [`RENEW_BEFORE_END`] of it is left (a certificate never outlives the
//! intermediate that signed it, so without this a control plane running through its
//! intermediate's year would lose its listeners).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use quiver_api::SpiffeId;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::ca::{CaError, CaState, MeshCa};

/// Lifetime asked for a listener's certificate (the CA clamps it to its signer's end); a new
/// one is issued at every start and as the module header says.
pub const SERVER_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// A listener certificate with less than this left is replaced.
pub const RENEW_BEFORE_END: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often a listener looks at its certificate's end and its files, besides CA changes.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The control plane's SPIFFE id in `trust_domain` (its namespace is reserved: no join token,
/// Service or workload may use it, `quiver_api::spiffe::reserved_namespace`).
pub fn control_plane_id(trust_domain: &str) -> Result<SpiffeId, CaError> {
    SpiffeId::control_plane(trust_domain).map_err(|e| CaError::TrustDomain(trust_domain.into(), e))
}

/// Why a listener config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ListenerTlsError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("{0}")]
    Config(String),
}

/// The server certificate in use, the root it chains to and the signer that issued it, and
/// the trust bundle the config in use was built with.
struct ServerCert {
    chain_pem: String,
    key_pem: String,
    root_pem: String,
    signer_pem: String,
    not_after: SystemTime,
    bundle_pem: String,
}

/// Which listener, and where its certificate comes from.
enum Kind {
    /// MeshDiscovery: the control plane's SPIFFE id, client certificates optional.
    Discovery,
    /// The API with `--tls-mesh-ca`: its host names; the bundle written to `bundle_file`.
    ApiMeshCa {
        names: Vec<String>,
        bundle_file: PathBuf,
    },
    /// The API with the operator's certificate and key files.
    ApiFiles { cert: PathBuf, key: PathBuf },
}

/// A listener's TLS: the current rustls config, rebuilt as the module header says.
pub struct ListenerTls {
    ca: Arc<MeshCa>,
    kind: Kind,
    cert: RwLock<ServerCert>,
    config: RwLock<Arc<rustls::ServerConfig>>,
}

impl ListenerTls {
    /// The discovery listener: a certificate from the CA's current signer and a config
    /// trusting its bundle.
    pub fn new(ca: Arc<MeshCa>) -> Result<Arc<Self>, ListenerTlsError> {
        Self::start(ca, Kind::Discovery)
    }

    /// The API listener with `--tls-mesh-ca`: a certificate for `names` from the mesh CA; the
    /// trust bundle written to `bundle_file` now and whenever it changes.
    pub fn for_api(
        ca: Arc<MeshCa>,
        names: Vec<String>,
        bundle_file: PathBuf,
    ) -> Result<Arc<Self>, ListenerTlsError> {
        let tls = Self::start(ca, Kind::ApiMeshCa { names, bundle_file })?;
        tls.write_bundle(&tls.ca.current())?;
        Ok(tls)
    }

    /// The API listener with the operator's PEM files (read again every [`CHECK_EVERY`]).
    pub fn from_files(
        ca: Arc<MeshCa>,
        cert: PathBuf,
        key: PathBuf,
    ) -> Result<Arc<Self>, ListenerTlsError> {
        Self::start(ca, Kind::ApiFiles { cert, key })
    }

    fn start(ca: Arc<MeshCa>, kind: Kind) -> Result<Arc<Self>, ListenerTlsError> {
        let state = ca.current();
        let cert = issue(&ca, &kind, &state)?;
        let config = build(&kind, &cert, &state)?;
        Ok(Arc::new(Self {
            ca,
            kind,
            cert: RwLock::new(cert),
            config: RwLock::new(config),
        }))
    }

    /// The config the next handshake uses.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc: the value is whole.
        self.config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The certificate chain (PEM) handshakes present now.
    pub fn chain_pem(&self) -> String {
        self.cert
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .chain_pem
            .clone()
    }

    /// Rebuild the config for `state` at `now`: new client roots; a new server certificate
    /// when the module header says so. True when the certificate was replaced.
    pub fn follow(&self, state: &CaState, now: SystemTime) -> Result<bool, ListenerTlsError> {
        let mut cert = self
            .cert
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = match &self.kind {
            Kind::ApiFiles { .. } => {
                let fresh = issue(&self.ca, &self.kind, state)?;
                (fresh.chain_pem != cert.chain_pem || fresh.key_pem != cert.key_pem)
                    .then_some(fresh)
            }
            Kind::Discovery | Kind::ApiMeshCa { .. } => {
                let current_root = cert.root_pem == state.root_pem();
                let kept = current_root || state.retiring().iter().any(|r| *r == cert.root_pem);
                let renewed = current_root && cert.signer_pem != state.signer_pem();
                // Only when a new one would end later (not while the signer itself ends:
                // its renewal failing is reported where it fails, `ca::keep_refreshed`).
                let ending = (cert.not_after <= now
                    || cert
                        .not_after
                        .duration_since(now)
                        .is_ok_and(|left| left < RENEW_BEFORE_END))
                    && state.signer_not_after() > cert.not_after;
                if !kept || renewed || ending {
                    Some(issue(&self.ca, &self.kind, state)?)
                } else {
                    None
                }
            }
        };
        // The periodic look with nothing new: the config in use stays (not rebuilt).
        if fresh.is_none() && cert.bundle_pem == state.bundle_pem() {
            return Ok(false);
        }
        // Nothing is changed unless the new config builds (a key that is not the
        // certificate's, say): the last good one stays in use.
        let config = build(&self.kind, fresh.as_ref().unwrap_or(&cert), state)?;
        let replace = fresh.is_some();
        match fresh {
            Some(fresh) => *cert = fresh,
            None => cert.bundle_pem = state.bundle_pem().to_string(),
        }
        *self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        drop(cert);
        self.write_bundle(state)?;
        Ok(replace)
    }

    /// `api-ca.pem` as the bundle is now (`--tls-mesh-ca` only), replaced whole.
    fn write_bundle(&self, state: &CaState) -> Result<(), ListenerTlsError> {
        let Kind::ApiMeshCa { bundle_file, .. } = &self.kind else {
            return Ok(());
        };
        if std::fs::read_to_string(bundle_file).is_ok_and(|b| b == state.bundle_pem()) {
            return Ok(());
        }
        let bad = |e: std::io::Error| {
            ListenerTlsError::Config(format!("writing {}: {e}", bundle_file.display()))
        };
        if let Some(dir) = bundle_file.parent() {
            std::fs::create_dir_all(dir).map_err(bad)?;
        }
        let tmp = bundle_file.with_extension("pem.tmp");
        std::fs::write(&tmp, state.bundle_pem().as_bytes()).map_err(bad)?;
        std::fs::rename(&tmp, bundle_file).map_err(bad)?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Discovery => "discovery listener",
            Kind::ApiMeshCa { .. } | Kind::ApiFiles { .. } => "API listener",
        }
    }

    /// Follow the CA's changes, and look at the certificate's end (and files) every
    /// [`CHECK_EVERY`], for as long as the task runs.
    pub async fn keep_current(self: Arc<Self>) {
        let mut changes = self.ca.subscribe();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
            let state = changes.borrow_and_update().clone();
            match self.follow(&state, SystemTime::now()) {
                Ok(true) => tracing::info!(listener = self.name(), "TLS: a new server certificate"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(listener = self.name(), error = %e, "TLS: keeping the old config");
                }
            }
        }
    }
}

fn issue(ca: &MeshCa, kind: &Kind, state: &CaState) -> Result<ServerCert, ListenerTlsError> {
    let (chain_pem, key_pem) = match kind {
        Kind::Discovery => {
            let issued = ca.issue(&control_plane_id(ca.trust_domain())?, SERVER_CERT_TTL)?;
            (issued.chain_pem, issued.key_pem)
        }
        Kind::ApiMeshCa { names, .. } => {
            let id = control_plane_id(ca.trust_domain())?;
            let issued = ca.issue_for_hosts(&id, names, SERVER_CERT_TTL)?;
            (issued.chain_pem, issued.key_pem)
        }
        Kind::ApiFiles { cert, key } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p)
                    .map_err(|e| ListenerTlsError::Config(format!("reading {}: {e}", p.display())))
            };
            (read(cert)?, read(key)?)
        }
    };
    let not_after = crate::ca::pem_not_after(&chain_pem)
        .ok_or_else(|| ListenerTlsError::Config("the server certificate does not parse".into()))?;
    Ok(ServerCert {
        chain_pem,
        key_pem,
        root_pem: state.root_pem().to_string(),
        signer_pem: state.signer_pem().to_string(),
        not_after,
        bundle_pem: state.bundle_pem().to_string(),
    })
}

fn build(
    kind: &Kind,
    cert: &ServerCert,
    state: &CaState,
) -> Result<Arc<rustls::ServerConfig>, ListenerTlsError> {
    let bad = |what: &str, e: String| ListenerTlsError::Config(format!("{what}: {e}"));
    let provider = quiver_api::tls::provider();
    let chain = quiver_api::certs::certs_from_pem(&cert.chain_pem)
        .map_err(|e| bad("server certificate", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| bad("server key", e.to_string()))?;
    if !matches!(kind, Kind::Discovery) {
        // The API: anyone may connect (tokens authenticate), over HTTP/2 or HTTP/1.1.
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("protocol versions", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| bad("server certificate", e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        return Ok(Arc::new(config));
    }
    let mut roots = rustls::RootCertStore::empty();
    for root in quiver_api::certs::certs_from_pem(state.bundle_pem())
        .map_err(|e| bad("trust bundle", e.to_string()))?
    {
        roots
            .add(root)
            .map_err(|e| bad("trust bundle", e.to_string()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad("client verifier", e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("server certificate", e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session to resume (rustls' default keeps a session cache and sends TLS 1.3 tickets):
    // a resumed handshake skips the client verifier, so a proxy whose SVID has expired could
    // go on calling Renew and Watch on a ticket from when it was valid. Every connection shows
    // its certificate again, as between proxies (`quiver_api::tls`).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// TLS connections accepted on `listener` with the config current at each handshake
/// (TCP_NODELAY on, see `server::incoming`). Handshakes run in their own tasks, so a slow
/// client holds up no one; failed ones are logged at debug and dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ListenerTls>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(listener = tls.name(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
