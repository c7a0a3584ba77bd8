//! TLS for the discovery listener: a server certificate issued by the mesh CA for
//! `spiffe://<td>/ns/quiver-system/sa/control-plane`, and client certificates that are
//! optional in the handshake (Join comes before a proxy has one) but, when sent, must chain
//! to a root of the current trust bundle and be within its validity, on every connection:
//! the listener resumes no TLS session, so an expired or retired SVID cannot ride on a ticket.
//! Handlers that need an identity insist on it ([`crate::api`]).
//!
//! The rustls config follows the CA: when the bundle changes (a root rotation or retirement,
//! here or on another replica), the next handshake trusts exactly the new bundle's roots. The
//! server certificate is kept while its root stays in the bundle, so a proxy that has not yet
//! heard of a new root can still reach this listener (and hear of it); once that root is
//! retired, a certificate from the current intermediate replaces it. TLS is done here with
//! tokio-rustls, not by tonic, whose TLS config is fixed when the server starts.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use quiver_api::SpiffeId;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::ca::{CaError, CaState, MeshCa};

/// Lifetime of the listener's certificate; a new one is issued at every start and when its
/// root is retired.
pub const SERVER_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
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

/// The server certificate in use and the root it chains to.
struct ServerCert {
    chain_pem: String,
    key_pem: String,
    root_pem: String,
}

/// The discovery listener's TLS: the current rustls config, rebuilt on every CA change.
pub struct ListenerTls {
    ca: Arc<MeshCa>,
    cert: RwLock<ServerCert>,
    config: RwLock<Arc<rustls::ServerConfig>>,
}

impl ListenerTls {
    /// A certificate from the CA's current signer and a config trusting its bundle.
    pub fn new(ca: Arc<MeshCa>) -> Result<Arc<Self>, ListenerTlsError> {
        let state = ca.current();
        let cert = issue(&ca, &state)?;
        let config = build(&cert, &state)?;
        Ok(Arc::new(Self {
            ca,
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

    /// Rebuild the config for `state`: new client roots; a new server certificate only when
    /// the one in use chains to a root no longer in the bundle.
    fn follow(&self, state: &CaState) -> Result<(), ListenerTlsError> {
        let mut cert = self
            .cert
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let trusted = cert.root_pem == state.root_pem()
            || state.retiring().iter().any(|r| *r == cert.root_pem);
        if !trusted {
            *cert = issue(&self.ca, state)?;
        }
        let config = build(&cert, state)?;
        *self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        Ok(())
    }

    /// Follow the CA's changes for as long as the task runs.
    pub async fn keep_current(self: Arc<Self>) {
        let mut changes = self.ca.subscribe();
        while changes.changed().await.is_ok() {
            let state = changes.borrow_and_update().clone();
            match self.follow(&state) {
                Ok(()) => tracing::info!("discovery listener TLS follows the new trust bundle"),
                Err(e) => {
                    tracing::error!(error = %e, "discovery listener TLS: keeping the old config");
                }
            }
        }
    }
}

fn issue(ca: &MeshCa, state: &CaState) -> Result<ServerCert, CaError> {
    let id = control_plane_id(ca.trust_domain())?;
    let issued = ca.issue(&id, SERVER_CERT_TTL)?;
    Ok(ServerCert {
        chain_pem: issued.chain_pem,
        key_pem: issued.key_pem,
        root_pem: state.root_pem().to_string(),
    })
}

fn build(
    cert: &ServerCert,
    state: &CaState,
) -> Result<Arc<rustls::ServerConfig>, ListenerTlsError> {
    let bad = |what: &str, e: String| ListenerTlsError::Config(format!("{what}: {e}"));
    let provider = quiver_api::tls::provider();
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
    let chain = quiver_api::certs::certs_from_pem(&cert.chain_pem)
        .map_err(|e| bad("server certificate", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| bad("server key", e.to_string()))?;
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
                    tracing::warn!(error = %e, "discovery listener: accept failed");
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
