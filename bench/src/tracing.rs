//! `quiver-bench tracing`: what tracing costs the data path. A `quiver-control` child on a
//! scratch store, two `quiver-proxy` children joined to it (caller `client`, callee `bench`
//! in front of the in-process HTTP backend), and the `h1` load through them, alternating
//! MeshConfig `tracing.samplingPercent` between 0 ("off": no span is kept unless it fails or
//! is slow) and `--sampling` (default 100: every request ships a client and a server span,
//! which the control plane stores). Rows are interleaved (off, on, off, on, ...) so drift in
//! the machine's load hits both modes alike. See docs/benchmarks.md, "Tracing".

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use quiver_api::v1;

use super::backends::Backends;
use super::load::{self, Window};
use super::pair::free_tcp_ports;
use super::procstat;
use super::propagation::control::ControlPlane;
use super::propagation::mesh::yaml;
use quiver_tests::mesh::{admin_get, metric};
use quiver_tests::scratch::{ScratchDatabase, redact};

/// Tracing on versus off, through a joined proxy pair.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Measured time per row.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub duration: Duration,
    /// Load before each measured window (not counted).
    #[arg(long, default_value = "2s", value_parser = super::parse_duration)]
    pub warmup: Duration,
    /// Keep-alive connections of the h1 load.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Pairs of rows (off, then on) to run.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Head-sampling percentage of the "on" rows (0-100).
    #[arg(long, default_value_t = 100.0)]
    pub sampling: f64,
    /// `tuning.workers` of each proxy (1 matches the data-plane benchmark).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// RUST_LOG for the proxies (`info` writes the access log, as in production).
    #[arg(long, default_value = "info")]
    pub proxy_log: String,
    /// Run the control plane on Postgres (a scratch database is made next to this URL's
    /// database and dropped afterwards). Without it: SQLite in a temp dir.
    #[arg(long)]
    pub database_url: Option<String>,
    /// The quiver-control binary (default: next to this executable).
    #[arg(long)]
    pub control_bin: Option<PathBuf>,
    /// The quiver-proxy binary (default: next to this executable).
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
}

/// Run the benchmark. `Ok(false)`: it ran, but some row had request errors.
pub fn main(args: Args) -> anyhow::Result<bool> {
    if !(0.0..=100.0).contains(&args.sampling) {
        bail!("--sampling {}: must be 0 to 100", args.sampling);
    }
    if args.rounds == 0 || args.connections == 0 {
        bail!("--rounds and --connections must be at least 1");
    }
    let backends = Backends::start(1)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(&args, &backends) => r,
            s = super::interrupted() => Err(anyhow!("interrupted by {s}")),
        }
    });
    drop(runtime);
    drop(backends);
    result
}

/// One measured row.
struct Row {
    mode: &'static str,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Both proxies' CPU per request.
    proxy_us: f64,
    /// The control plane's CPU per request.
    control_us: f64,
    /// This process's CPU per request (the load generator and the backend app).
    bench_us: f64,
    /// The whole machine's busy CPU per request (everything above, the kernel's interrupt
    /// work, and whatever else runs).
    machine_us: f64,
    /// Share of the machine's CPU time the hypervisor gave to other guests.
    steal_pct: f64,
    shipped_per_s: f64,
    dropped: f64,
    stored_per_s: f64,
}

async fn run(args: &Args, backends: &Backends) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("locating quiver-bench")?;
    let control_bin = args
        .control_bin
        .clone()
        .unwrap_or_else(|| exe.with_file_name("quiver-control"));
    let proxy_bin = args
        .proxy_bin
        .clone()
        .unwrap_or_else(|| exe.with_file_name("quiver-proxy"));
    if !proxy_bin.is_file() {
        bail!(
            "proxy binary {} not found: run `cargo build --release --workspace`",
            proxy_bin.display()
        );
    }
    let db = match &args.database_url {
        Some(url) => Some(ScratchDatabase::create(url).await?),
        None => None,
    };
    let cp = ControlPlane::start(&control_bin, db.as_ref().map(|d| d.url.as_str()), "warn").await?;
    let mut admin = cp.admin();
    let app_port = backends.http.port();
    for doc in [
        format!(
            "apiVersion: quiver.dev/v1\nkind: Service\nmetadata: {{name: bench, namespace: bench}}\n\
             spec:\n  ports: [{{name: http, port: 80, protocol: http1, targetPort: {app_port}}}]\n"
        ),
        "apiVersion: quiver.dev/v1\nkind: Service\nmetadata: {name: client, namespace: bench}\n\
         spec:\n  ports: [{name: http, port: 80, protocol: http1}]\n"
            .to_string(),
    ] {
        admin
            .apply_service(yaml::<v1::Service>(&doc)?)
            .await
            .context("applying a Service")?;
    }
    set_sampling(&mut admin, 0.0, &[]).await?;
    let mut sampling = 0.0;

    let dir = quiver_tests::pki::temp_dir("bench-tracing");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &cp.bundle_pem).context("writing the trust bundle")?;
    let tuning = dir.join("tuning.yaml");
    std::fs::write(&tuning, format!("tuning: {{workers: {}}}\n", args.workers))?;
    let mut callee = Joined::spawn(&proxy_bin, &mut admin, &cp, &dir, "bench", None, args).await?;
    let [outbound] = free_tcp_ports()?;
    let mut caller = Joined::spawn(
        &proxy_bin,
        &mut admin,
        &cp,
        &dir,
        "client",
        Some(outbound),
        args,
    )
    .await?;
    callee.wait_ready().await?;
    caller.wait_ready().await?;
    wait_answers(outbound).await?;

    println!(
        "quiver-bench tracing: h1 through a joined pair, {c} connections, {d:?} per row after \
         {w:?} warm-up; off = samplingPercent 0, on = samplingPercent {s}; store {store}; \
         proxies RUST_LOG={log}, {workers} worker(s); load average {load}",
        c = args.connections,
        d = args.duration,
        w = args.warmup,
        s = args.sampling,
        store = db
            .as_ref()
            .map(|d| format!("postgres ({})", redact(&d.url)))
            .unwrap_or_else(|| "sqlite".into()),
        log = args.proxy_log,
        workers = args.workers,
        load = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
    );
    println!(
        "{:<5} {:>9} {:>8} {:>8} {:>6} {:>14} {:>12} {:>12} {:>14} {:>7} {:>13} {:>9} {:>12}",
        "mode",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "proxy us/req",
        "cp us/req",
        "load us/req",
        "machine us/req",
        "steal%",
        "shipped/s",
        "dropped",
        "stored/s"
    );
    let mut rows = Vec::new();
    for _ in 0..args.rounds {
        for (mode, percent) in [("off", 0.0), ("on", args.sampling)] {
            if percent != sampling {
                set_sampling(&mut admin, percent, &[&caller, &callee]).await?;
                sampling = percent;
            }
            let row = measure(args, mode, outbound, &cp, [&caller, &callee]).await?;
            println!(
                "{:<5} {:>9.0} {:>8.2} {:>8.2} {:>6} {:>14.1} {:>12.1} {:>12.1} {:>14.1} {:>7.1} {:>13.0} {:>9.0} {:>12.0}",
                row.mode,
                row.rps,
                row.p50_ms,
                row.p99_ms,
                row.errors,
                row.proxy_us,
                row.control_us,
                row.bench_us,
                row.machine_us,
                row.steal_pct,
                row.shipped_per_s,
                row.dropped,
                row.stored_per_s
            );
            rows.push(row);
            caller.check_alive()?;
            callee.check_alive()?;
        }
    }
    let median = |mode: &str, f: fn(&Row) -> f64| {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.mode == mode).map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median("off", |r| r.rps), median("on", |r| r.rps));
    let (cpu_off, cpu_on) = (median("off", |r| r.proxy_us), median("on", |r| r.proxy_us));
    let (all_off, all_on) = (
        median("off", |r| r.machine_us),
        median("on", |r| r.machine_us),
    );
    let ratio = on / off;
    println!(
        "median req/s: off {off:.0}, on {on:.0} -> on/off {ratio:.3} ({} the 15% target); \
         proxy CPU per request: off {cpu_off:.1} us, on {cpu_on:.1} us ({:+.1}%); machine CPU \
         per request: off {all_off:.1} us, on {all_on:.1} us ({:+.1}%); control plane stored \
         {:.0} spans/s at the 'on' rate",
        if ratio >= 0.85 { "within" } else { "OUTSIDE" },
        (cpu_on / cpu_off - 1.0) * 100.0,
        (all_on / all_off - 1.0) * 100.0,
        median("on", |r| r.stored_per_s),
    );
    Ok(rows.iter().all(|r| r.errors == 0))
}

/// Apply a MeshConfig with `percent` head sampling and wait until every one of `proxies`
/// runs a snapshot newer than the one it ran before.
async fn set_sampling(
    admin: &mut super::propagation::control::Admin,
    percent: f64,
    proxies: &[&Joined],
) -> anyhow::Result<()> {
    let mut before = Vec::new();
    for p in proxies {
        before.push(p.snapshot_version().await);
    }
    let doc = format!(
        "apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {{name: mesh}}\n\
         spec:\n  tracing: {{samplingPercent: {percent}}}\n"
    );
    admin
        .apply_mesh_config(yaml::<v1::MeshConfig>(&doc)?)
        .await
        .context("applying the MeshConfig")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for (p, was) in proxies.iter().zip(before) {
        while p.snapshot_version().await <= was {
            if tokio::time::Instant::now() > deadline {
                bail!("a proxy did not get the MeshConfig change within 15s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

async fn measure(
    args: &Args,
    mode: &'static str,
    outbound: std::net::SocketAddr,
    cp: &ControlPlane,
    proxies: [&Joined; 2],
) -> anyhow::Result<Row> {
    let shipped = |texts: &[String]| -> (f64, f64) {
        texts.iter().fold((0.0, 0.0), |(s, d), t| {
            (
                s + metric(t, "quiver_spans_shipped_total").unwrap_or(0.0),
                d + metric(t, "quiver_spans_dropped_total").unwrap_or(0.0),
            )
        })
    };
    let window = Window::after(args.warmup, args.duration);
    let cpu = || -> anyhow::Result<u64> {
        Ok(procstat::cpu_ticks(proxies[0].pid())? + procstat::cpu_ticks(proxies[1].pid())?)
    };
    // Counters at the window's edges are read by a task on this runtime: the load runs on it
    // too, and a read takes well under a millisecond.
    let edges = async {
        tokio::time::sleep_until(window.from.into()).await;
        let before = (
            read_all(&proxies).await,
            stored(cp).await,
            procstat::cpu_ticks(cp.pid()),
            procstat::cpu_ticks(std::process::id()),
            procstat::machine_ticks(),
        );
        tokio::time::sleep_until(window.until.into()).await;
        let after = (
            read_all(&proxies).await,
            stored(cp).await,
            procstat::cpu_ticks(cp.pid()),
            procstat::cpu_ticks(std::process::id()),
            procstat::machine_ticks(),
        );
        (before, after)
    };
    let (measured, (before, after)) = tokio::join!(
        load::h1_closed(outbound, args.connections, window, Some(&cpu)),
        edges
    );
    let mut m = measured?;
    m.outcome.sort();
    let requests = m.outcome.requests() as f64;
    let per_request = |ticks: u64| procstat::ticks_to_us(ticks) / requests.max(1.0);
    let (s0, d0) = shipped(&before.0);
    let (s1, d1) = shipped(&after.0);
    let (m0, m1) = (before.4?, after.4?);
    let (busy, steal) = (
        m1.busy.saturating_sub(m0.busy),
        m1.steal.saturating_sub(m0.steal),
    );
    Ok(Row {
        mode,
        rps: requests / m.seconds,
        p50_ms: m.outcome.percentile_ms(0.5).unwrap_or(f64::NAN),
        p99_ms: m.outcome.percentile_ms(0.99).unwrap_or(f64::NAN),
        errors: m.outcome.errors,
        proxy_us: per_request(m.cpu_ticks.unwrap_or(0)),
        control_us: per_request(after.2?.saturating_sub(before.2?)),
        bench_us: per_request(after.3?.saturating_sub(before.3?)),
        machine_us: per_request(busy),
        steal_pct: 100.0 * steal as f64 / (busy + steal).max(1) as f64,
        shipped_per_s: (s1 - s0) / m.seconds,
        dropped: d1 - d0,
        stored_per_s: (after.1 - before.1) / m.seconds,
    })
}

async fn read_all(proxies: &[&Joined; 2]) -> Vec<String> {
    let mut out = Vec::new();
    for p in proxies {
        out.push(p.metrics().await);
    }
    out
}

/// Spans the control plane has accepted into its store so far.
async fn stored(cp: &ControlPlane) -> f64 {
    let text = admin_get(cp.api, "/metrics")
        .await
        .map(|(_, t)| t)
        .unwrap_or_default();
    quiver_tests::metric_sum(&text, "quiver_telemetry_spans_accepted_total", &[])
}

/// GET / through the caller's outbound listener until the callee's app answers.
async fn wait_answers(outbound: std::net::SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let window = Window::after(Duration::ZERO, Duration::from_millis(200));
        if let Ok(m) = load::h1_closed(outbound, 1, window, None).await
            && m.outcome.errors == 0
            && m.outcome.requests() > 0
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no answer through the joined pair at {outbound} after 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `quiver-proxy` child joined to the control plane.
struct Joined {
    child: Child,
    admin: std::net::SocketAddr,
    log: PathBuf,
}

impl Joined {
    async fn spawn(
        bin: &Path,
        admin: &mut super::propagation::control::Admin,
        cp: &ControlPlane,
        dir: &Path,
        service: &str,
        outbound: Option<std::net::SocketAddr>,
        args: &Args,
    ) -> anyhow::Result<Self> {
        let token = admin
            .create_join_token(v1::CreateJoinTokenRequest {
                namespace: "bench".into(),
                service_account: service.into(),
                ttl: "10m".into(),
                uses: 1,
            })
            .await
            .with_context(|| format!("join token for {service}"))?
            .into_inner()
            .token;
        let [admin_addr, http_proxy] = free_tcp_ports()?;
        let log = dir.join(format!("{service}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(dir.join("tuning.yaml"))
            .arg("--control-plane")
            .arg(cp.discovery.to_string())
            .arg("--ca-cert")
            .arg(dir.join("ca.pem"))
            .arg("--service")
            .arg(service)
            .arg("--quic-listen=127.0.0.1:0")
            .arg(format!("--admin-listen={admin_addr}"))
            .arg(format!("--http-proxy-listen={http_proxy}"))
            .env("QUIVER_JOIN_TOKEN", token)
            .env("RUST_LOG", &args.proxy_log)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        if let Some(o) = outbound {
            cmd.arg(format!("--outbound={o}=bench/http1"));
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            admin: admin_addr,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics")
            .await
            .map(|(_, t)| t)
            .unwrap_or_default()
    }

    async fn snapshot_version(&self) -> f64 {
        metric(&self.metrics().await, "quiver_snapshot_version").unwrap_or(0.0)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "proxy exited ({status}); log {}:\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.check_alive()?;
            if matches!(admin_get(self.admin, "/readyz").await, Ok((200, _))) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("proxy not ready after 30s; log {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
