//! quiver-echo: the sample app for the demo and manual testing. An HTTP/1.1 + h2c echo (see
//! `quiver_tests::apps::start_http_echo` for its routes), a TCP echo that honours half-close,
//! and optionally a gRPC health service (`grpc.health.v1`, the tonic-health crate): the
//! server as a whole (`""`) is SERVING, the service `quiver.test.Down` NOT_SERVING.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "quiver-echo",
    version,
    about = "Echo app for Quiver demos and tests"
)]
struct Args {
    /// Where to serve the HTTP echo.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Where to serve the TCP echo.
    #[arg(long, default_value = "127.0.0.1:9000")]
    tcp: SocketAddr,
    /// Where to serve the gRPC health service (h2c); off when absent.
    #[arg(long)]
    grpc_health: Option<SocketAddr>,
    /// Where to serve the HTTP echo over TLS (needs --tls-cert and --tls-key); off when absent.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    https: Option<SocketAddr>,
    /// The certificate chain (PEM) for --https.
    #[arg(long)]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) for --https.
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = quiver_tests::apps::serve_http_echo(args.http)
        .await
        .with_context(|| format!("binding {}", args.http))?;
    let tcp = quiver_tests::apps::serve_tcp_echo(args.tcp)
        .await
        .with_context(|| format!("binding {}", args.tcp))?;
    if let Some(addr) = args.grpc_health {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("quiver.test.Down", tonic_health::ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        eprintln!("quiver-echo: grpc health on {addr}");
        tokio::spawn(async move {
            // Keep the reporter: dropping it would not change the statuses, but it is the
            // handle a test would use.
            let _reporter = reporter;
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
    }
    if let (Some(addr), Some(cert), Some(key)) = (args.https, &args.tls_cert, &args.tls_key) {
        let config = server_tls(cert, key)?;
        let bound = quiver_tests::apps::serve_https_echo(addr, config)
            .await
            .with_context(|| format!("binding {addr}"))?;
        eprintln!("quiver-echo: https on {bound}");
    }
    eprintln!("quiver-echo: http on {http}, tcp on {tcp}");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// A TLS server config for --https from PEM files (no client certificates asked).
fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let chain = quiver_api::certs::certs_from_pem(
        &std::fs::read_to_string(cert).with_context(|| format!("--tls-cert {}", cert.display()))?,
    )?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("--tls-key {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(quiver_api::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // HTTP/2 preferred, as most HTTPS servers do; HTTP/1.1 for clients that offer only it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}
