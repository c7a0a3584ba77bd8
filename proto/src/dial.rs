//! Dialling the discovery listener: a tonic channel over our own rustls config, because the
//! control plane's certificate is an SVID (one SPIFFE URI SAN, no DNS name) that stock
//! hostname verification refuses. Used by the proxy (joining with
//! [`crate::tls::client_config_without_identity`], then with its
//! `MeshIdentity::client_config(&[b"h2"])`), by tests and by the propagation benchmark.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

/// Why the discovery listener could not be dialled.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("discovery address {0}: {1}")]
    Endpoint(SocketAddr, tonic::transport::Error),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, tonic::transport::Error),
}

/// Connects TCP then TLS with a fixed config, whatever URI tonic asks for.
#[derive(Clone)]
struct TlsDialer {
    addr: SocketAddr,
    tls: TlsConnector,
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
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            // The verifier checks the SPIFFE id, not this name; rustls still wants one.
            let name = ServerName::try_from("quiver-control").map_err(std::io::Error::other)?;
            Ok(TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}

/// A gRPC channel to the discovery listener at `addr` using `tls` (its ALPN must offer
/// `h2`). Connects before returning, so a refused handshake shows up here or on the first
/// call (TLS 1.3 reports a refused client certificate after the handshake).
pub async fn connect(addr: SocketAddr, tls: rustls::ClientConfig) -> Result<Channel, DialError> {
    let dialer = TlsDialer {
        addr,
        tls: TlsConnector::from(Arc::new(tls)),
    };
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| DialError::Endpoint(addr, e))?
        .connect_with_connector(dialer)
        .await
        .map_err(|e| DialError::Connect(addr, e))
}
