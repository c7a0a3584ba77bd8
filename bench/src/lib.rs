//! `quiver-bench`: the data-plane benchmark (the default command), `quiver-bench
//! propagation`, the control plane's config push ([`propagation`]), `quiver-bench tracing`
//! ([`tracing`]) and `quiver-bench load`, load against an address given on the command line
//! ([`remote_load`]).
//!
//! The data-plane benchmark starts its own backends in process, a proxy
//! pair as two child processes of the release `quiver-proxy`, and measures the same loads
//! direct (client -> backend) and through the mesh (client -> A -> HTTP/3 mTLS -> B ->
//! backend). See docs/benchmarks.md.
//!
//! This module owns the command line and the process layout (which runtime runs what);
//! [`run`] sequences scenarios, [`load`] generates load, [`pair`] runs the proxies,
//! [`backends`] the apps. It never edits or links the proxy: the pair under test is the
//! shipped binary.

pub mod backends;
pub mod load;
pub mod pair;
pub mod procstat;
pub mod propagation;
pub mod remote_load;
pub mod report;
pub mod run;
pub mod stats;
pub mod tracing;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand, ValueEnum};

use self::backends::Backends;

/// Benchmark Quiver on loopback: without a command, the proxy pair against direct
/// connections; `propagation`, config push from the control plane to watching proxies;
/// `load`, HTTP/1.1 load against a URL (a proxy set up elsewhere).
#[derive(Debug, Clone, Parser)]
#[command(name = "quiver-bench", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub data_plane: Args,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Time from an Apply until every watching proxy holds the new version, and the
    /// control plane's RSS.
    Propagation(propagation::Args),
    /// The h1 load through a pair joined to a control plane, tracing off (0% sampling)
    /// against on (100%): req/s, CPU per request, spans shipped and stored.
    Tracing(tracing::Args),
    /// Standalone HTTP/1.1 keep-alive load against a listener somewhere else (e.g. a proxy
    /// across an emulated WAN link): latency percentiles, requests still in flight when the
    /// window closes, throughput, and an optional bulk download sharing the path.
    Load(Box<remote_load::Args>),
}

/// The data-plane benchmark: the proxy pair against direct connections.
#[derive(Debug, Clone, Parser)]
#[command(name = "quiver-bench", version)]
pub struct Args {
    /// Scenarios to run, in order (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "h1,rate1k,grpc,bulk,close,policy"
    )]
    pub scenarios: Vec<Scenario>,
    /// Paths to measure each scenario on (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "direct,mesh")]
    pub paths: Vec<PathKind>,
    /// Measured time per scenario and path (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measured window (connections and QUIC warm up; not counted).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Connections (h1, rate1k), concurrent workers (close), concurrent streams (grpc).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Offered load of the rate1k scenario, requests per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// HTTP/2 connections the grpc scenario spreads its streams over.
    #[arg(long, default_value_t = 1)]
    pub grpc_connections: usize,
    /// Bytes sent by the bulk scenario (e.g. 1GiB, 256MiB, 1000000).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub bulk_bytes: u64,
    /// Give up on a bulk transfer after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub bulk_timeout: Duration,
    /// `tuning.workers` of each proxy (tokio worker threads). 1 matches Envoy's
    /// `--concurrency 1` in ../shared/bench.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Extra `tuning:` key for both proxies, KEY=VALUE (repeatable), e.g.
    /// `--tuning stream_receive_window=16777216`.
    #[arg(long = "tuning", value_parser = parse_key_value)]
    pub tuning: Vec<(String, String)>,
    /// RUST_LOG for the proxies. `info` (their default) writes one access-log line per
    /// request; `warn` measures without access logs.
    #[arg(long, default_value = "info")]
    pub proxy_log: String,
    /// Keep each pair's configs, logs and certificates instead of deleting them.
    #[arg(long)]
    pub keep_files: bool,
    /// The quiver-proxy binary (default: next to this executable).
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// Threads of the load generator: 1 = a current-thread runtime (default; leaves the
    /// cores to the proxies), more = a multi-thread runtime with that many workers.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Worker threads of the in-process backends' runtime.
    #[arg(long, default_value_t = 1)]
    pub backend_threads: usize,
    /// Print one JSON object per row on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Start backends and the pair, print the entry addresses, and stay up until Ctrl-C
    /// (for wrk, h2load and friends).
    #[arg(long)]
    pub serve: bool,
}

/// A load shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// HTTP/1.1 keep-alive, closed loop.
    H1,
    /// HTTP/1.1 keep-alive, open loop at a fixed rate, coordinated-omission corrected.
    #[value(name = "rate1k")]
    Rate1k,
    /// gRPC unary calls, concurrent streams on shared HTTP/2 connections.
    Grpc,
    /// One large transfer through a TCP tunnel into a byte-counting sink.
    Bulk,
    /// A new client TCP connection per request.
    Close,
    /// `h1` through a Route with five match rules, an 80/20 split and retries, and an
    /// AuthorizationPolicy on the callee.
    Policy,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::H1 => "h1",
            Scenario::Rate1k => "rate1k",
            Scenario::Grpc => "grpc",
            Scenario::Bulk => "bulk",
            Scenario::Close => "close",
            Scenario::Policy => "policy",
        }
    }
}

/// Which way the load goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PathKind {
    /// Client -> backend.
    Direct,
    /// Client -> A -> B -> backend.
    Mesh,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Mesh => "mesh",
        }
    }
}

/// Run the benchmark (or `--serve`). `Ok(false)`: it ran, but some row had errors.
pub fn main(args: Args) -> anyhow::Result<bool> {
    // The backends get their own runtime (and threads) before the client's starts; both are
    // dropped outside any async context, which tokio requires.
    let backends = Backends::start(args.backend_threads)?;
    let runtime = client_runtime(args.client_threads)?;
    let result = runtime.block_on(async {
        // Dropping the losing future drops any running proxy pair, which kills the children.
        tokio::select! {
            r = run::run(&args, &backends) => r,
            // Ctrl-C is how --serve is meant to end; anywhere else it cuts the run short.
            s = interrupted() => if args.serve {
                eprintln!("quiver-bench: {s}, stopping");
                Ok(true)
            } else {
                Err(anyhow!("interrupted by {s}"))
            },
        }
    });
    drop(runtime);
    drop(backends);
    result
}

/// The load generator's runtime: `threads` <= 1 is a current-thread runtime (it leaves the
/// cores to what is measured), more is a multi-thread runtime with that many workers.
fn client_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("bench-client")
            .enable_all()
            .build()
    }
    .context("starting the client runtime")
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    quiver_api::duration::parse(s)
}

/// `KEY=VALUE` for `--tuning`.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(format!(
            "{k:?} is not a tuning key (see docs/proxy-config.md)"
        ));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

/// A byte count: a plain number, or with a K/M/G suffix (powers of 1024; `B`/`iB` optional).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 1GiB, 256M, 1000)"))?;
    n.checked_mul(mult)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?}: must be between 1 byte and 16 EiB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("64k"), Ok(64 << 10));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn tuning_pairs() {
        assert_eq!(
            parse_key_value("send_window = 1000"),
            Ok(("send_window".into(), "1000".into()))
        );
        assert!(parse_key_value("nokey").is_err());
        assert!(parse_key_value("Bad-Key=1").is_err());
    }

    #[test]
    fn propagation_is_a_command_and_the_data_plane_stays_the_default() {
        let cli = Cli::parse_from(["quiver-bench", "propagation", "--watchers", "20"]);
        match cli.command {
            Some(Command::Propagation(p)) => {
                assert_eq!(p.watchers, 20);
                assert_eq!(p.rounds, 5);
                assert_eq!(p.endpoints, 10);
                assert!(p.database_url.is_none());
            }
            other => panic!("propagation not parsed: {other:?}"),
        }
        let cli = Cli::parse_from(["quiver-bench", "tracing", "--sampling", "50"]);
        assert!(
            matches!(cli.command, Some(Command::Tracing(t)) if t.sampling == 50.0 && t.rounds == 3)
        );
        let cli = Cli::parse_from(["quiver-bench", "--scenarios", "h1", "--json"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.data_plane.scenarios, [Scenario::H1]);
        assert!(cli.data_plane.json);
        let defaults = Cli::parse_from(["quiver-bench", "propagation"]);
        assert!(matches!(defaults.command, Some(Command::Propagation(p)) if p.watchers == 1000));
    }

    #[test]
    fn defaults_are_the_issue_scenarios() {
        let a = Args::parse_from(["quiver-bench"]);
        assert_eq!(
            a.scenarios,
            [
                Scenario::H1,
                Scenario::Rate1k,
                Scenario::Grpc,
                Scenario::Bulk,
                Scenario::Close,
                Scenario::Policy
            ]
        );
        assert_eq!(a.duration, Duration::from_secs(10));
        assert_eq!(a.bulk_bytes, 1 << 30);
        assert_eq!(a.workers, 1);
    }
}
