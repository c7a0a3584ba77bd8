//! Dialling the discovery listener: a tonic channel over our own rustls config, because the
//! control plane's certificate is an SVID (one SPIFFE URI SAN, no DNS name) that stock
//! hostname verification refuses. The dialer takes only a [`PinnedClientConfig`]: the server
//! must prove the control plane's SPIFFE id in the handshake, not merely any id of the trust
//! domain. Used by the proxy (joining with
//! [`crate::tls::pinned_client_config_without_identity`], then with its
//! `MeshIdentity::pinned_client_config`), by tests and by the propagation benchmark.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

use crate::tls::PinnedClientConfig;

/// Why the discovery listener could not be dialled.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("discovery address {0}: {1}")]
    Endpoint(SocketAddr, tonic::transport::Error),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, tonic::transport::Error),
    /// The TLS handshake failed; the reason is rustls' (for an impostor: both ids).
    #[error("TLS handshake with {0}: {1}")]
    Handshake(SocketAddr, String),
}

/// Connects TCP then TLS with a fixed config, whatever URI tonic asks for. A failed
/// handshake's reason is kept: tonic's connect error does not carry it.
#[derive(Clone)]
struct TlsDialer {
    addr: SocketAddr,
    tls: TlsConnector,
    handshake_error: Arc<Mutex<Option<String>>>,
}

impl tower_service::Service<http::Uri> for TlsDialer {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (addr, tls) = (self.addr, self.tls.clone());
        let handshake_error = self.handshake_error.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            // The verifier checks the SPIFFE id, not this name; rustls still wants one.
            let name = ServerName::try_from("quiver-control").map_err(std::io::Error::other)?;
            match tls.connect(name, tcp).await {
                Ok(stream) => Ok(TokioIo::new(stream)),
                Err(e) => {
                    *handshake_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                    Err(e)
                }
            }
        })
    }
}

/// A gRPC channel to the discovery listener at `addr` using `tls` (its ALPN must offer
/// `h2`). Connects before returning, so a refused handshake (an impostor server: the error
/// names both ids) shows up here, or on the first call when it is our client certificate
/// that is refused (TLS 1.3 reports that after the handshake).
pub async fn connect(addr: SocketAddr, tls: PinnedClientConfig) -> Result<Channel, DialError> {
    let handshake_error = Arc::new(Mutex::new(None));
    let dialer = TlsDialer {
        addr,
        tls: TlsConnector::from(Arc::new(tls.into_inner())),
        handshake_error: handshake_error.clone(),
    };
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| DialError::Endpoint(addr, e))?
        .connect_with_connector(dialer)
        .await
        .map_err(|e| {
            match handshake_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                Some(reason) => DialError::Handshake(addr, reason),
                None => DialError::Connect(addr, e),
            }
        })
}
