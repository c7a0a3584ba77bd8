//! `quiver-proxy --config FILE`: run the sidecar. `--check`: validate the file and exit.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use quiver_proxy::config::ProxyConfig;

/// Quiver's sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "quiver-proxy", version)]
struct Args {
    /// Static config file (YAML). See docs/proxy-config.md.
    #[arg(long, short = 'c', env = "QUIVER_PROXY_CONFIG")]
    config: PathBuf,
    /// Validate the config, print every problem with its field, and exit (like `nginx -t`).
    #[arg(long)]
    check: bool,
    /// How often to re-read the config file for live changes (services, routes,
    /// authorization, mesh defaults); 0s turns it off.
    #[arg(long, default_value = "5s", value_parser = quiver_api::duration::parse)]
    reload_interval: std::time::Duration,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "QUIVER_LOG_JSON")]
    log_json: bool,
}

/// Exit status for a bad config (EX_USAGE / EX_CONFIG style, like linkerd's 64).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_json);
    // ring only: if another provider ever enters the graph, implicit builders must not panic.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let config = match ProxyConfig::load(&args.config) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{}: invalid config:", args.config.display());
            for e in &errs.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    let workers = config.bootstrap.tuning.workers;
    let (path, reload) = (args.config.clone(), args.reload_interval);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if workers > 0 {
        rt.worker_threads(workers);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "effective config");
        let proxy = match quiver_proxy::Proxy::bind(config).await {
            Ok(p) if !reload.is_zero() => p.reload_config_from(path, reload),
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        proxy.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown signal received");
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
