//! quiver-control: the Quiver control plane server, and `quiver-control demo`.
//!
//! Without a subcommand the flags are the server's ([`Config`]), exactly as always. The first
//! argument may instead name a subcommand: `demo` (a whole sample mesh on this machine), and,
//! hidden, the demo's child processes `demo-app NAME` and `sidecar ARGS...` (the quiver-proxy
//! library), so that one binary is all the demo needs.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use quiver_control::demo;
use quiver_control::server::{self, Config};

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let _program = args.next();
    match args.next().as_ref().and_then(|a| a.to_str()) {
        Some("demo") => {
            return match parse::<demo::DemoArgs>(std::env::args_os().skip(1)) {
                Ok(a) => demo::main(a),
                Err(code) => code,
            };
        }
        Some("demo-app") => {
            return match parse::<demo::apps::AppArgs>(std::env::args_os().skip(1)) {
                Ok(a) => {
                    demo::children::exit_with_parent();
                    demo::apps::main(a)
                }
                Err(code) => code,
            };
        }
        Some("sidecar") => {
            // The proxy's own command line, unchanged: `quiver-control sidecar --help` is
            // `quiver-proxy --help`.
            demo::children::exit_with_parent();
            let argv = std::iter::once("quiver-control sidecar".into()).chain(args);
            return quiver_proxy::cli::main_from(argv);
        }
        _ => {}
    }
    server_main()
}

/// Parse a subcommand's flags; on error print it and give the exit status (64 for bad flags).
fn parse<P: Parser>(args: impl Iterator<Item = std::ffi::OsString>) -> Result<P, ExitCode> {
    P::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(64)
        } else {
            ExitCode::SUCCESS
        }
    })
}

fn server_main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // Bad flags or environment: EX_USAGE, like every Quiver binary.
            let _ = e.print();
            return ExitCode::from(64);
        }
        Err(e) => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    init_tracing(&config.log_format);
    // Keep rustls on ring even if another provider is ever linked in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(config = %serde_json::to_string(&config)?, "starting");
    let mut running = server::start(&config).await?;
    if let Some(token) = &running.new_admin_token {
        // Printed once, on stdout, so an installer can capture it; only its hash is stored.
        println!("Admin token (shown once, store it now): {token}");
    }
    tracing::info!(addr = %running.addr, store = running.store_engine, "serving gRPC, gRPC-web and /metrics");
    tokio::select! {
        r = running.wait() => r,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            running.shutdown().await
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
