//! Sequencing: each scenario runs direct, then through a fresh proxy pair (restarted per
//! scenario so each row's peak RSS is its own), and every row is printed as soon as it exists.

use std::net::SocketAddr;

use anyhow::Context;

use super::backends::Backends;
use super::load::{self, CpuProbe, Measured, Window};
use super::pair::{PairOptions, ProxyPair};
use super::procstat::ticks_to_us;
use super::report::{Row, TABLE_HEADER, table_line};
use super::{Args, PathKind, Scenario};

/// Where a path's load enters.
#[derive(Debug, Clone, Copy)]
struct Targets {
    http: SocketAddr,
    grpc: SocketAddr,
    tcp: SocketAddr,
}

fn pair_options(args: &Args) -> anyhow::Result<PairOptions> {
    let proxy_bin = match &args.proxy_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating quiver-bench")?
            .with_file_name("quiver-proxy"),
    };
    Ok(PairOptions {
        proxy_bin,
        workers: args.workers,
        tuning: args.tuning.clone(),
        log: args.proxy_log.clone(),
        keep_files: args.keep_files,
        policy: false,
    })
}

/// Run (or serve). `Ok(false)` when some row had errors.
pub async fn run(args: &Args, backends: &Backends) -> anyhow::Result<bool> {
    let opts = pair_options(args)?;
    if args.serve {
        serve(&opts, backends).await?;
        return Ok(true);
    }
    let direct = Targets {
        http: backends.http,
        grpc: backends.grpc,
        tcp: backends.sink,
    };
    let client = if args.client_threads <= 1 {
        "current-thread".to_string()
    } else {
        format!("{} threads", args.client_threads)
    };
    let settings = format!(
        "quiver-bench: {cores} cores; proxy workers {w}; conns {c}; duration {d:?} (+{wu:?} warm-up); \
         rate {r}/s; bulk {b} MiB; client {client}; backends {bt} thread(s); proxy log {log}; \
         load average {load}",
        cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        w = args.workers,
        c = args.connections,
        d = args.duration,
        wu = args.warmup,
        r = args.rate,
        b = args.bulk_bytes >> 20,
        bt = args.backend_threads,
        log = args.proxy_log,
        load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "?".into()),
    );
    if args.json {
        eprintln!("{settings}");
    } else {
        println!("{settings}");
        if !args.tuning.is_empty() {
            println!("tuning: {:?}", args.tuning);
        }
        println!("{TABLE_HEADER}");
    }
    let mut all_ok = true;
    for &scenario in &args.scenarios {
        let mut direct_row = None;
        for &path in &args.paths {
            eprintln!("[{}] {} {} ...", clock(), scenario.name(), path.name());
            let row = match path {
                PathKind::Direct => measure(args, scenario, direct, None).await,
                PathKind::Mesh => mesh_row(args, &opts, backends, scenario).await?,
            };
            let mut row = row_or_failure(scenario, path, row);
            if path == PathKind::Mesh {
                if let Some(d) = &direct_row {
                    compare(&mut row, d);
                }
            } else {
                direct_row = Some(row.clone());
            }
            all_ok &= !row.failed();
            if args.json {
                println!("{}", row.json());
            } else {
                println!("{}", table_line(&row));
            }
        }
    }
    Ok(all_ok)
}

/// A fresh pair, one scenario through it, then its RSS; a proxy that died is an error.
async fn mesh_row(
    args: &Args,
    opts: &PairOptions,
    backends: &Backends,
    scenario: Scenario,
) -> anyhow::Result<anyhow::Result<Row>> {
    let opts = PairOptions {
        policy: scenario == Scenario::Policy,
        ..opts.clone()
    };
    let mut pair = ProxyPair::start(&opts, backends).await?;
    let e = pair.entries;
    let targets = Targets {
        http: e.http,
        grpc: e.grpc,
        tcp: e.tcp,
    };
    let probe = || pair.cpu_ticks();
    let row = measure(args, scenario, targets, Some(&probe)).await;
    if let Err(e) = pair.check_alive() {
        return Ok(Err(e));
    }
    Ok(row.and_then(|mut r| {
        r.proxy_rss_mib = Some(pair.peak_rss_mib()?);
        Ok(r)
    }))
}

fn row_or_failure(scenario: Scenario, path: PathKind, r: anyhow::Result<Row>) -> Row {
    r.unwrap_or_else(|e| {
        eprintln!("{} {}: {e:#}", scenario.name(), path.name());
        let mut row = Row::new(scenario.name(), path.name());
        row.errors = 1;
        row.error_samples = vec![format!("{e:#}")];
        row
    })
}

/// Add "vs direct" notes to a mesh row.
fn compare(mesh: &mut Row, direct: &Row) {
    let mut notes = Vec::new();
    if let (Some(m50), Some(d50), Some(m99), Some(d99)) =
        (mesh.p50_ms, direct.p50_ms, mesh.p99_ms, direct.p99_ms)
    {
        notes.push(format!(
            "added p50 {:+.3} ms, p99 {:+.3} ms vs direct",
            m50 - d50,
            m99 - d99
        ));
    }
    if let (Some(m), Some(d)) = (mesh.rps, direct.rps)
        && d > 0.0
        && mesh.scenario != "rate1k"
    {
        notes.push(format!("{:.0}% of direct req/s", 100.0 * m / d));
    }
    if let (Some(m), Some(d)) = (mesh.mib_s, direct.mib_s)
        && d > 0.0
    {
        notes.push(format!("{:.0}% of direct", 100.0 * m / d));
    }
    if !mesh.note.is_empty() {
        notes.push(std::mem::take(&mut mesh.note));
    }
    mesh.note = notes.join("; ");
}

async fn measure(
    args: &Args,
    scenario: Scenario,
    t: Targets,
    cpu: CpuProbe<'_>,
) -> anyhow::Result<Row> {
    let window = || Window::after(args.warmup, args.duration);
    let n = args.connections;
    let measured = match scenario {
        Scenario::H1 | Scenario::Policy => load::h1_closed(t.http, n, window(), cpu).await?,
        Scenario::Rate1k => load::h1_open(t.http, n, args.rate, window(), cpu).await?,
        Scenario::Grpc => {
            load::grpc_closed(t.grpc, args.grpc_connections, n, window(), cpu).await?
        }
        Scenario::Close => load::close_closed(t.http, n, window(), cpu).await?,
        Scenario::Bulk => {
            let b = load::bulk(t.tcp, args.bulk_bytes, args.bulk_timeout, cpu).await?;
            let mut row = Row::new(scenario.name(), path_name(cpu));
            row.mib_s = Some(b.mib_per_s());
            row.requests = 1;
            if let Some(ticks) = b.cpu_ticks {
                row.note = format!(
                    "proxies used {:.2} CPU s ({:.0}% of one core)",
                    ticks_to_us(ticks) / 1e6,
                    100.0 * ticks_to_us(ticks) / 1e6 / b.seconds
                );
            }
            return Ok(row);
        }
    };
    Ok(request_row(scenario, path_name(cpu), measured))
}

fn path_name(cpu: CpuProbe<'_>) -> &'static str {
    if cpu.is_some() { "mesh" } else { "direct" }
}

fn request_row(scenario: Scenario, path: &'static str, m: Measured) -> Row {
    let Measured {
        mut outcome,
        seconds,
        cpu_ticks,
    } = m;
    outcome.sort();
    let mut row = Row::new(scenario.name(), path);
    let requests = outcome.requests();
    row.requests = requests;
    row.rps = Some(requests as f64 / seconds);
    row.p50_ms = outcome.percentile_ms(0.50);
    row.p99_ms = outcome.percentile_ms(0.99);
    row.proxy_cpu_us_per_req = cpu_ticks
        .filter(|_| requests > 0)
        .map(|t| ticks_to_us(t) / requests as f64);
    row.errors = outcome.errors;
    row.error_samples = outcome.error_samples;
    if requests == 0 && row.errors == 0 {
        row.errors = 1;
        row.error_samples = vec!["no request completed in the window".into()];
    }
    row
}

/// `--serve`: stand the pair up, print where to send load, stay up until interrupted.
async fn serve(opts: &PairOptions, backends: &Backends) -> anyhow::Result<()> {
    let mut pair = ProxyPair::start(opts, backends).await?;
    let e = pair.entries;
    println!(
        "quiver-bench --serve: proxy pair up (workers {} per proxy); Ctrl-C stops everything.
  mesh  http1  http://{http}/      A's HTTP/1.1 (and h2c) listener -> B -> backend
  mesh  grpc   http://{grpc}       A's gRPC listener (service quiver.testing.Echo)
  mesh  tcp    {tcp}         A's TCP listener -> HTTP/3 CONNECT -> sink (send, half-close, read count)
  B     quic   {quic}         HTTP/3 + mTLS; certificates of this run in {pki}
  direct http1 http://{dhttp}/
  direct grpc  http://{dgrpc}
  direct tcp   {dsink}
  admin  A http://{aadmin}/metrics (pid {apid}), B http://{badmin}/metrics (pid {bpid})
  logs   {dir}
e.g.  wrk -c16 -t2 -d10s http://{http}/
      h2load -n100000 -c1 -m16 http://{http}/",
        opts.workers,
        http = e.http,
        grpc = e.grpc,
        tcp = e.tcp,
        quic = e.b_quic,
        pki = pair.pki_dir.display(),
        dhttp = backends.http,
        dgrpc = backends.grpc,
        dsink = backends.sink,
        aadmin = pair.a.admin,
        apid = pair.a.pid(),
        badmin = pair.b.admin,
        bpid = pair.b.pid(),
        dir = pair.dir.display(),
    );
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        pair.check_alive()?;
    }
}

/// Wall-clock time of day (UTC), for progress lines.
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}
