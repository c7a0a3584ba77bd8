//! quiver-echo: the sample app for the demo and manual testing. An HTTP/1.1 + h2c echo (see
//! `quiver_tests::apps::start_http_echo` for its routes) and a TCP echo that honours half-close.
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
    eprintln!("quiver-echo: http on {http}, tcp on {tcp}");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
