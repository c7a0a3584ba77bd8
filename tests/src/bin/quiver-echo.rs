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
    eprintln!("quiver-echo: http on {http}, tcp on {tcp}");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
