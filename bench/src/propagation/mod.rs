//! `quiver-bench propagation`: how long a change applied through the admin API takes to
//! reach every watching proxy. A `quiver-control` child process on a scratch store (SQLite,
//! or a Postgres database made for the run), N MeshDiscovery Watch streams over mTLS in this
//! process, then `--rounds` Applies of a Route; for each, the time from sending the Apply
//! until each watcher has read a snapshot at or past the version it returned. See
//! docs/benchmarks.md, "Config propagation".
//!
//! This module owns the command line and the sequence; [`control`] runs the control plane,
//! [`mesh`] sets up what the watchers watch and runs them, [`round`] counts and reports.

pub mod control;
pub mod mesh;
pub mod round;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use quiver_api::v1;
use tokio::sync::mpsc;

use self::control::ControlPlane;
use self::mesh::Event;
use self::round::{Latency, Memory, ROUND_HEADER, Report, RoundTracker, round_line, summary};
use crate::stats::Outcome;
use quiver_tests::scratch::{ScratchDatabase, redact};

/// Config propagation: N proxies Watch, one Apply, time until every one holds it.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Watch streams (proxies) to open.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Applies to measure, one after another (each flips the Route's weights).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Registered endpoints of the called service (snapshot size).
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Watch streams sharing one TLS connection (1 = one connection per proxy, as proxies do).
    #[arg(long, default_value_t = 1)]
    pub streams_per_connection: usize,
    /// Run on Postgres: the URL of a server (and database) whose user may CREATE DATABASE,
    /// e.g. postgres://postgres@127.0.0.1:5432/postgres. A scratch database is created next
    /// to it and dropped afterwards. Without it: SQLite in a temp dir.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Pause before each Apply (lets the previous round's stragglers settle).
    #[arg(long, default_value = "500ms", value_parser = super::parse_duration)]
    pub pause: Duration,
    /// Give up on a round (and fail) when some watcher still lacks the change after this.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    pub round_timeout: Duration,
    /// The quiver-control binary (default: next to this executable).
    #[arg(long)]
    pub control_bin: Option<PathBuf>,
    /// RUST_LOG for the control plane (its log goes to a file in its temp dir).
    #[arg(long, default_value = "info")]
    pub control_log: String,
    /// Worker threads of the watchers' runtime (the control plane is another process).
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Run the benchmark; an error is any watcher that did not get a change, or a set-up failure.
pub fn main(args: Args) -> anyhow::Result<bool> {
    if args.watchers == 0 || args.rounds == 0 || args.streams_per_connection == 0 {
        bail!("--watchers, --rounds and --streams-per-connection must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("bench-watchers")
        .enable_all()
        .build()
        .context("starting the watchers' runtime")?;
    let result = runtime.block_on(async {
        // Dropping the losing future kills the control plane and drops the scratch database.
        tokio::select! {
            r = run(&args) => r,
            s = super::interrupted() => Err(anyhow!("interrupted by {s}")),
        }
    });
    // Watcher tasks are still parked on their streams: shut down without waiting for them.
    runtime.shutdown_background();
    result.map(|()| true)
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let bin = match &args.control_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating quiver-bench")?
            .with_file_name("quiver-control"),
    };
    let (store, db) = match &args.database_url {
        Some(url) => ("postgres", Some(ScratchDatabase::create(url).await?)),
        None => ("sqlite", None),
    };
    let mut cp =
        ControlPlane::start(&bin, db.as_ref().map(|d| d.url.as_str()), &args.control_log).await?;
    let process = format!(
        "child process {} (pid {}), VmRSS/VmHWM from /proc/{}/status",
        bin.display(),
        cp.pid(),
        cp.pid()
    );
    let load = load_average();
    let settings = format!(
        "quiver-bench propagation: store {store}{db}; {w} watchers ({s} stream(s) per TLS \
         connection); {e} endpoints; {r} rounds; {cores} cores; watcher threads {t}; load \
         average {load}\ncontrol plane: {process}",
        db = db
            .as_ref()
            .map(|d| format!(" ({})", redact(&d.url)))
            .unwrap_or_default(),
        w = args.watchers,
        s = args.streams_per_connection,
        e = args.endpoints,
        r = args.rounds,
        cores = cores(),
        t = args.client_threads,
        load = load,
    );
    if args.json {
        eprintln!("{settings}");
    } else {
        println!("{settings}");
    }

    let tls = mesh::set_up(&cp, args.endpoints).await?;
    let rss_idle_mib = cp.rss_mib()?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let started = Instant::now();
    mesh::spawn_watchers(
        cp.discovery,
        &tls,
        args.watchers,
        args.streams_per_connection,
        events_tx,
    )
    .await?;
    let mut ready = 0;
    while ready < args.watchers {
        match tokio::time::timeout(args.round_timeout, events.recv()).await {
            Ok(Some(Event::Ready(_))) => ready += 1,
            Ok(Some(Event::Lost(w, e))) => {
                bail!("watcher {w} failed before its first snapshot: {e}")
            }
            Ok(Some(Event::Snapshot { .. })) => {}
            Ok(None) | Err(_) => bail!(
                "only {ready} of {} watchers had a first snapshot after {:?}",
                args.watchers,
                args.round_timeout
            ),
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    let rss_watching_mib = cp.rss_mib()?;
    if !args.json {
        println!("{ROUND_HEADER}");
    }

    let mut admin = cp.admin();
    let mut rounds = Vec::with_capacity(args.rounds);
    let mut all = Outcome::default();
    for round in 1..=args.rounds {
        tokio::time::sleep(args.pause).await;
        let v1_weight = if round % 2 == 1 { 80 } else { 20 };
        let sent_at = Instant::now();
        let applied = admin
            .apply_route(mesh::route(v1_weight)?)
            .await
            .with_context(|| format!("round {round}: ApplyRoute"))?
            .into_inner();
        let apply = sent_at.elapsed();
        if applied.outcome() != v1::ApplyOutcome::Updated {
            bail!(
                "round {round}: ApplyRoute said {:?}, not Updated",
                applied.outcome()
            );
        }
        let version = applied
            .route
            .and_then(|r| r.metadata)
            .map(|m| m.resource_version)
            .context("ApplyRoute returned no resourceVersion")?;
        let mut tracker = RoundTracker::new(args.watchers, version, v1_weight, sent_at);
        let deadline = tokio::time::Instant::now() + args.round_timeout;
        while tracker.missing() > 0 {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::Snapshot {
                    watcher,
                    version: seen_version,
                    v1_weight: seen_weight,
                    at,
                })) => tracker
                    .observe(watcher, seen_version, seen_weight, at)
                    .with_context(|| format!("round {round}"))?,
                Ok(Some(Event::Lost(w, e))) => bail!("round {round}: watcher {w} lost: {e}"),
                Ok(Some(Event::Ready(_))) => {}
                Ok(None) | Err(_) => bail!(
                    "round {round}: {} of {} watchers still lack version {version} after {:?}",
                    tracker.missing(),
                    args.watchers,
                    args.round_timeout
                ),
            }
        }
        cp.check_alive()?;
        let (mut row, samples) = tracker.finish(round, apply);
        row.control_plane_rss_mib = Some(cp.rss_mib()?);
        if !args.json {
            println!("{}", round_line(&row));
        }
        rounds.push(row);
        all.merge(samples);
    }
    all.sort();
    let report = Report {
        benchmark: "propagation",
        store,
        watchers: args.watchers,
        streams_per_connection: args.streams_per_connection,
        endpoints: args.endpoints,
        connect_s,
        rounds,
        overall: Latency::of(&all),
        control_plane: Memory {
            pid: cp.pid(),
            rss_idle_mib,
            rss_watching_mib,
            rss_after_mib: cp.rss_mib()?,
            peak_rss_mib: cp.peak_rss_mib()?,
        },
        control_plane_process: process,
        cores: cores(),
        load_average: load,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", summary(&report));
    }
    // The control plane dies first, then its scratch database is dropped.
    drop(cp);
    drop(db);
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
