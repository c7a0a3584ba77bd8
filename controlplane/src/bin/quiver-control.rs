//! quiver-control: the Quiver control plane server. The flags are [`Config`]'s;
//! `quiver-control ca export-root` is the one subcommand (`cli::control_ca`).
//! (The demo, which runs this control plane next to sidecars, is the `quiver-demo` crate.)
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use quiver_control::server::{self, Config};

fn main() -> ExitCode {
    // `quiver-control ca ...`: operator commands on the store (export-root), not the server.
    if std::env::args_os().nth(1).is_some_and(|a| a == "ca") {
        return quiver_control::cli::control_ca::main(std::env::args_os().skip(1));
    }
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
    if let Err(e) = config.check() {
        // Refused before anything starts, naming the flag: EX_USAGE.
        eprintln!("error: {e}");
        return ExitCode::from(64);
    }
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
        deliver_first_token(&config, token)?;
    }
    if let Some(path) = &running.api_ca_file {
        println!(
            "API served over TLS (mesh CA); verify it with: quiverctl --server https://{} --ca-file {}",
            running.addr,
            path.display()
        );
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

/// Hand the first admin token to the operator, once (only its hash is stored): on a
/// terminal, printed; otherwise (a service manager, a log collector) written to a file only
/// its owner can read, and only the path is printed.
fn deliver_first_token(config: &Config, token: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!("Admin token (shown once, store it now): {token}");
        return Ok(());
    }
    let path = config.data_dir.join(server::ADMIN_TOKEN_FILE);
    server::write_private(&path, &format!("{token}\n"))
        .map_err(|e| anyhow::anyhow!("writing the first admin token to {}: {e}", path.display()))?;
    println!(
        "Admin token written to {} (mode 0600; stdout is not a terminal). Store it and delete the file.",
        path.display()
    );
    Ok(())
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
