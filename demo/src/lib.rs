//! quiver-demo: a whole mesh on one machine, for a new user's first five minutes
//! (`cargo run --release -- demo`).
//!
//! In this process: the control plane (embedded SQLite under `--dir`), the admin client that
//! applies the sample mesh and mints join tokens, and a traffic generator with a running
//! tally. As child processes (this same executable, so one build is enough): the sample
//! apps (`demo-app`, see [`apps`]) and one sidecar each (`sidecar`, the quiver-proxy library
//! in control-plane mode). Ctrl-C or SIGTERM stops them in order and exits 0.
//!
//! This crate wires things together; it must not grow mesh logic of its own: everything the
//! demo shows goes through the same API, proxies and resources a real deployment uses. It is
//! the one crate that depends on both planes (`quiver-control` and `quiver-proxy`).
#![forbid(unsafe_code)]

pub mod apps;
pub mod children;
pub mod plan;
pub mod traffic;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quiver_api::v1;
use tokio::sync::mpsc;

use children::{Children, Role};
use plan::{NAMESPACE, Ports};
use quiver_control::cli::Connection;
use quiver_control::cli::client as admin_client;
use quiver_control::server::{self, Config};

/// Generated code for the ratings service (proto/demo.proto).
pub mod proto {
    tonic::include_proto!("quiver.demo");
}

/// `quiver-demo` flags.
#[derive(Debug, clap::Parser)]
#[command(
    name = "quiver-demo",
    bin_name = "quiver-demo",
    about = "Run a sample mesh on this machine: the control plane (SQLite), three services \
             with sidecars, steady traffic and a live tally. Ctrl-C stops everything."
)]
pub struct DemoArgs {
    /// API port: gRPC, gRPC-web, /metrics and the console [default: 127.0.0.1:8080, or a free
    /// port with --port-base 0].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The discovery listener the sidecars join and watch [default: 127.0.0.1:15010, or a
    /// free port with --port-base 0].
    #[arg(long)]
    pub discovery_listen: Option<SocketAddr>,
    /// The sample apps and sidecars use ports N to N+25 on 127.0.0.1 (catalog v2 also
    /// 127.0.0.2). 0: every port, --listen and --discovery-listen included unless given, is
    /// chosen by the OS.
    #[arg(long, default_value_t = 15100)]
    pub port_base: u16,
    /// Where the demo keeps its files: store/ (SQLite, recreated at each start), logs/ (one per
    /// process), ca.pem and the YAML it applies.
    #[arg(long, default_value = "./quiver-demo")]
    pub dir: PathBuf,
    /// Requests per second the traffic generator sends to frontend.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: u32,
    /// How often to print the tally.
    #[arg(long, default_value = "5s", value_parser = report_every)]
    pub report_every: Duration,
    /// Serve the web console from this directory instead of the bundle embedded in the
    /// binary (console development: console/build.sh writes console/dist).
    #[arg(long)]
    pub console_dir: Option<PathBuf>,
}

fn report_every(s: &str) -> Result<Duration, String> {
    match quiver_api::duration::parse(s)? {
        d if d < Duration::from_millis(100) => Err("must be at least 100ms".into()),
        d => Ok(d),
    }
}

const TRUST_DOMAIN: &str = "mesh.local";
/// Sidecars drain this long on SIGTERM; the demo waits a bit more before SIGKILL.
const SIDECAR_DRAIN: &str = "3s";
const SIDECAR_GRACE: Duration = Duration::from_secs(8);
const APP_GRACE: Duration = Duration::from_secs(3);
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Run the demo; the process's exit status.
pub fn main(args: DemoArgs) -> ExitCode {
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
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The files the demo writes.
struct Files {
    dir: PathBuf,
    store: PathBuf,
    logs: PathBuf,
}

impl Files {
    fn prepare(dir: &Path) -> anyhow::Result<Self> {
        let store = dir.join("store");
        let logs = dir.join("logs");
        // A fresh mesh each run: no stale workloads, tokens or routes from last time.
        if store.exists() {
            std::fs::remove_dir_all(&store)
                .with_context(|| format!("--dir: removing the old store {}", store.display()))?;
        }
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("--dir: creating {}", logs.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            store,
            logs,
        })
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // Ports first: a second demo started by mistake must fail before touching the first
    // one's files.
    let (ports, held) = Ports::reserve(args.port_base)?;
    let free = args.port_base == 0;
    let api_addr = args
        .listen
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, if free { 0 } else { 8080 })));
    let discovery_addr = args
        .discovery_listen
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, if free { 0 } else { 15010 })));

    // The control plane, in this process.
    let listener = tokio::net::TcpListener::bind(api_addr).await.map_err(|e| {
        anyhow::anyhow!(
            "port {} (--listen {api_addr}, the API and console port) is not free: {e}. \
             Is another quiver-control running? Move it with --listen ADDR, or use --port-base 0",
            api_addr.port()
        )
    })?;
    if let Err(e) = std::net::TcpListener::bind(discovery_addr) {
        bail!(
            "port {} (--discovery-listen {discovery_addr}, where sidecars join) is not free: \
             {e}. Move it with --discovery-listen ADDR, or use --port-base 0",
            discovery_addr.port()
        );
    }
    let files = Files::prepare(&args.dir)?;
    init_tracing(&files.logs.join("control-plane.log"))?;
    let admin_token = quiver_control::auth::new_secret("qvr_");
    // The server's defaults for whatever the demo does not set (so new server flags need no
    // change here), with the environment ignored: the user's QUIVER_DATABASE_URL or
    // QUIVER_CA_CERT (a proxy setting too) are not for the demo's own control plane.
    let mut config = server_defaults()?;
    config.listen = api_addr;
    config.discovery_listen = discovery_addr;
    config.lease_ttl = Duration::from_secs(10);
    config.database_url = None;
    config.data_dir = files.store.clone();
    config.trust_domain = TRUST_DOMAIN.into();
    config.svid_ttl = Duration::from_secs(3600);
    config.admin_token = Some(admin_token.clone());
    config.console_dir = args.console_dir.clone();
    let running = server::start_on(&config, listener)
        .await
        .context("starting the control plane")?;
    let api = format!("http://{}", running.addr);
    println!(
        "Quiver demo: control plane on {api} (SQLite in {}), discovery on {}",
        files.store.display(),
        running.discovery_addr
    );

    // The control plane's listeners are bound: the children may take their ports now.
    drop(held);
    let mut children = Children::new()?;
    let outcome = tokio::select! {
        r = demo(&args, &files, &ports, &api, &admin_token, running.discovery_addr, &mut children) => r,
        _ = children::stop_signal() => Ok(()),
    };
    if let Err(e) = &outcome {
        eprintln!("error: {e:#}");
    }
    println!("stopping (Ctrl-C again to kill at once)...");
    tokio::select! {
        _ = async {
            children.stop(Role::Sidecar, SIDECAR_GRACE).await;
            children.stop(Role::App, APP_GRACE).await;
        } => {}
        _ = children::stop_signal() => children.stop_now().await,
    }
    running
        .shutdown()
        .await
        .context("stopping the control plane")?;
    println!("stopped; files are in {}", files.dir.display());
    outcome.map_err(|_| anyhow::anyhow!("the demo failed (see above)"))
}

/// How many endpoints a sidecar's current snapshot lists, over all services (None until its
/// admin port answers with a snapshot).
async fn snapshot_endpoints(http: &traffic::HttpClient, url: &http::Uri) -> Option<usize> {
    let (status, body) = traffic::get(http, url.clone()).await.ok()?;
    if !status.is_success() {
        return None;
    }
    let config: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let services = config.get("snapshot")?.get("services")?.as_object()?;
    Some(
        services
            .values()
            .filter_map(|s| s.get("endpoints")?.as_array().map(Vec::len))
            .sum(),
    )
}

/// The server's [`Config`] with every default and no environment variable read.
fn server_defaults() -> anyhow::Result<Config> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Config::command()
        .mut_args(|a| a.env(None))
        .try_get_matches_from(["quiver-control"])
        .context("the control plane's default settings")?;
    Config::from_arg_matches(&matches).context("the control plane's default settings")
}

/// Everything after the control plane is up; returns only on failure (a signal ends it from
/// outside).
async fn demo(
    args: &DemoArgs,
    files: &Files,
    ports: &Ports,
    api: &str,
    admin_token: &str,
    discovery: SocketAddr,
    children: &mut Children,
) -> anyhow::Result<()> {
    let conn = Connection {
        server: Some(api.to_string()),
        token: Some(admin_token.to_string()),
        ca_file: None,
        context: None,
    };
    let mut admin = admin_client::connect(&conn).await?;

    // The mesh, applied the way an operator would.
    let mesh = files.write("mesh.yaml", &plan::mesh_yaml(ports, TRUST_DOMAIN))?;
    files.write("split-50-50.yaml", &plan::route_yaml(50))?;
    files.write("split-90-10.yaml", &plan::route_yaml(90))?;
    files.write("all-v2.yaml", &plan::route_yaml(0))?;
    files.write("canary.yaml", &plan::canary_yaml())?;
    println!(
        "applying {} (what `quiverctl apply -f` does):",
        mesh.display()
    );
    quiver_control::cli::resources::apply(&conn, std::slice::from_ref(&mesh)).await?;
    let bundle = admin
        .get_trust_bundle(v1::GetTrustBundleRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("GetTrustBundle: {}", admin_client::describe(&s)))?
        .into_inner()
        .pem;
    let ca = files.write("ca.pem", &bundle)?;

    // The apps, then their sidecars.
    let local = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let outbound_of = |name: &str| {
        ports
            .sidecars
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.outbound)
            .map(|(p, _)| p)
            .unwrap_or_default()
    };
    let apps: Vec<(&str, SocketAddr, Vec<String>)> = vec![
        (
            "frontend",
            local(ports.frontend_app),
            vec![
                "frontend".into(),
                "--catalog".into(),
                format!("http://127.0.0.1:{}", outbound_of("frontend")),
            ],
        ),
        (
            "catalog-v1",
            local(ports.catalog_app),
            vec![
                "catalog".into(),
                "--version".into(),
                "v1".into(),
                "--ratings".into(),
                format!("http://127.0.0.1:{}", outbound_of("catalog-v1")),
            ],
        ),
        (
            "catalog-v2",
            SocketAddr::from((plan::CATALOG_V2_HOST, ports.catalog_app)),
            vec![
                "catalog".into(),
                "--version".into(),
                "v2".into(),
                "--ratings".into(),
                format!("http://127.0.0.1:{}", outbound_of("catalog-v2")),
            ],
        ),
        ("ratings", local(ports.ratings_app), vec!["ratings".into()]),
    ];
    for (name, addr, rest) in &apps {
        let mut argv = vec!["demo-app".to_string()];
        argv.extend(rest.iter().cloned());
        argv.extend(["--listen".into(), addr.to_string()]);
        let log = files.logs.join(format!("{name}.log"));
        children.spawn(name, Role::App, &argv, &[], &log)?;
    }
    for (name, addr, _) in &apps {
        let what = format!("the {name} app to listen on {addr}");
        until(children, START_TIMEOUT, &what, || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await?;
    }

    for s in &ports.sidecars {
        let token = admin
            .create_join_token(v1::CreateJoinTokenRequest {
                namespace: NAMESPACE.into(),
                service_account: s.service.into(),
                ttl: "10m".into(),
                uses: 1,
            })
            .await
            .map_err(|e| anyhow::anyhow!("CreateJoinToken: {}", admin_client::describe(&e)))?
            .into_inner()
            .token;
        let mut argv: Vec<String> = vec![
            "sidecar".into(),
            "--control-plane".into(),
            discovery.to_string(),
            "--ca-cert".into(),
            ca.display().to_string(),
            "--service".into(),
            s.service.into(),
            "--zone".into(),
            "local".into(),
            "--quic-listen".into(),
            format!("127.0.0.1:{}", s.quic),
            "--advertise".into(),
            format!("127.0.0.1:{}", s.quic),
            "--admin-listen".into(),
            format!("127.0.0.1:{}", s.admin),
            "--http-proxy-listen".into(),
            format!("127.0.0.1:{}", s.http_proxy),
            "--app-host".into(),
            s.app_host.to_string(),
            "--drain-timeout".into(),
            SIDECAR_DRAIN.into(),
            // Request counts per destination subset, what canaries are judged by, often
            // enough for canary.yaml's 10 s steps.
            "--edge-interval".into(),
            plan::EDGE_INTERVAL.into(),
        ];
        if let Some(v) = s.version {
            argv.extend(["--label".into(), format!("version={v}")]);
        }
        if let Some((port, target)) = s.outbound {
            argv.extend(["--outbound".into(), format!("127.0.0.1:{port}={target}")]);
        }
        let log = files.logs.join(format!("{}-sidecar.log", s.name));
        // The token goes through the environment: argv is visible to every local user.
        children.spawn(
            s.name,
            Role::Sidecar,
            &argv,
            &[("QUIVER_JOIN_TOKEN", token)],
            &log,
        )?;
    }
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for s in &ports.sidecars {
        let url: http::Uri = format!("http://127.0.0.1:{}/readyz", s.admin).parse()?;
        let what = format!("the {} sidecar to be ready ({url})", s.name);
        let (http, url) = (&http, &url);
        until(children, START_TIMEOUT, &what, || async move {
            match http.get(url.clone()).await {
                Ok(r) if r.status().is_success() => Some(()),
                _ => None,
            }
        })
        .await?;
    }
    let admin = &admin;
    until(
        children,
        START_TIMEOUT,
        "all four workloads to be registered",
        || async move {
            let list = admin
                .clone()
                .list_workloads(v1::ListRequest {
                    namespace: NAMESPACE.into(),
                })
                .await
                .ok()?
                .into_inner();
            (list.items.len() >= ports.sidecars.len()).then_some(())
        },
    )
    .await?;
    // Registered is not yet known: a sidecar learns the endpoints from its next snapshot. A
    // first request sent before that is answered 503 no-endpoint, and the tally and the
    // Topology page would show a failed call the demo made itself. So wait until every
    // sidecar's snapshot (its admin /config) lists all four endpoints.
    for s in &ports.sidecars {
        let url: http::Uri = format!("http://127.0.0.1:{}/config", s.admin).parse()?;
        let what = format!("the {} sidecar to know all four endpoints ({url})", s.name);
        let (http, url) = (&http, &url);
        until(children, START_TIMEOUT, &what, || async move {
            let endpoints = snapshot_endpoints(http, url).await?;
            (endpoints >= ports.sidecars.len()).then_some(())
        })
        .await?;
    }
    let frontend = local(ports.frontend_app);
    let first = Instant::now();
    let http = &http;
    // Why the last try failed, for the error if none succeeds (a denial, no endpoints, ...).
    let last = &std::sync::Mutex::new(String::new());
    until(
        children,
        START_TIMEOUT,
        "a first answer through the mesh",
        || async move {
            let why = match traffic::call(http, frontend).await {
                traffic::Outcome::Served {
                    rating_ok: true, ..
                } => return Some(()),
                traffic::Outcome::Served { .. } => "frontend answered without a rating".into(),
                traffic::Outcome::Failed(e) => e,
            };
            *last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
            None
        },
    )
    .await
    .map_err(|e| {
        match last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_str()
        {
            "" => e,
            why => anyhow::anyhow!("{e:#}; the last try got: {why}"),
        }
    })?;
    tracing::info!(after = ?first.elapsed(), "first answer through the mesh");

    print_banner(args, files, ports, api, admin_token, children);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let generator = tokio::spawn(traffic::generate(frontend, args.rate, tx));
    let _stop_generator = AbortOnDrop(generator);
    // A window of ~10 s of traffic: a route change shows within seconds.
    let mut tally = traffic::Tally::new((args.rate as usize * 10).max(20));
    let started = Instant::now();
    let mut report = tokio::time::interval(args.report_every);
    report.tick().await;
    loop {
        tokio::select! {
            Some(o) = rx.recv() => tally.record(o),
            _ = report.tick() => {
                println!("[{:>4}s] {}", started.elapsed().as_secs(), tally.line());
                if let Some(e) = tally.take_last_error() {
                    println!("        last error: {e}");
                }
            }
            e = children.next_exit() => return Err(died(e)),
        }
    }
}

fn died(e: children::Exited) -> anyhow::Error {
    eprintln!(
        "{} {} exited unexpectedly ({}); last lines of {}:\n{}",
        e.name,
        e.role,
        e.status,
        e.log.display(),
        children::tail(&e.log, 20)
    );
    anyhow::anyhow!("{} {} exited: {}", e.name, e.role, e.status)
}

/// Poll `check` until it says yes; fail on `timeout`, or at once if a child dies meanwhile.
async fn until<F, Fut>(
    children: &mut Children,
    timeout: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let poll = async {
        let deadline = Instant::now() + timeout;
        loop {
            if check().await.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        r = poll => r,
        e = children.next_exit() => Err(died(e)),
    }
}

fn print_banner(
    args: &DemoArgs,
    files: &Files,
    ports: &Ports,
    api: &str,
    admin_token: &str,
    children: &Children,
) {
    let dir = files.dir.display();
    let frontend_sidecar = ports.sidecars.first();
    println!();
    println!(
        "The mesh is up. Processes (logs in {}):",
        files.logs.display()
    );
    for p in children.procs() {
        println!(
            "  {:<11} {:<7} pid {:<7} {}",
            p.name,
            p.role,
            p.pid,
            p.log.display()
        );
    }
    println!();
    println!("  console + API   {api}/");
    println!("  admin token     {admin_token}");
    println!(
        "  frontend        http://127.0.0.1:{}/   (which catalog version answered, and the rating)",
        ports.frontend_app
    );
    if let Some(s) = frontend_sidecar {
        println!(
            "  metrics         http://127.0.0.1:{}/metrics   (frontend's sidecar)",
            s.admin
        );
    }
    let v1 = format!("http://127.0.0.1:{}", ports.catalog_app);
    let v2 = format!("http://{}:{}", plan::CATALOG_V2_HOST, ports.catalog_app);
    println!("  catalog v1 app  {v1}/   (its own port, not through the mesh)");
    println!("  catalog v2 app  {v2}/");
    println!(
        "  canary          {dir}/canary.yaml   (catalog v1 -> v2: 10, 25, 50, 100%, a check every 10s)"
    );
    println!();
    println!("Try, in another terminal (from the repository root):");
    println!("  alias quiverctl='cargo run -q --release -p quiver-control --bin quiverctl --'");
    println!("  export QUIVER_SERVER={api} QUIVER_TOKEN={admin_token}");
    println!(
        "  quiverctl get workloads                      # the four sidecars, their labels and leases"
    );
    println!("  quiverctl get routes -n {NAMESPACE} -o yaml");
    println!(
        "  quiverctl apply -f {dir}/split-50-50.yaml    # watch the tally below follow within seconds"
    );
    println!(
        "  quiverctl apply -f {dir}/all-v2.yaml         # or {dir}/split-90-10.yaml to go back"
    );
    println!(
        "  curl -s http://127.0.0.1:{}/                # frontend -> catalog -> ratings, with the SPIFFE ids each saw",
        ports.frontend_app
    );
    if let Some(s) = frontend_sidecar {
        println!(
            "  curl -si -x http://127.0.0.1:{} http://ratings:9090/   # frontend may not call ratings: denied",
            s.http_proxy
        );
    }
    println!();
    let canary = plan::CANARY;
    println!("Watch a canary promote, then one roll back:");
    println!(
        "  quiverctl apply -f {dir}/canary.yaml      # 10% of catalog to v2, then 25, 50, 100%"
    );
    println!(
        "  while sleep 2; do quiverctl get canary {canary} -n {NAMESPACE} -o wide; done   # Promoted in about 40s"
    );
    println!(
        "  quiverctl delete canary {canary} -n {NAMESPACE}   # back to the Route's 90/10, to start over"
    );
    println!(
        "  curl -s {v2}{} -d '{{\"errorPercent\": 30, \"extraLatency\": \"200ms\"}}'   # v2 fails 30% (demo only)",
        apps::MISBEHAVE_PATH
    );
    println!(
        "  quiverctl apply -f {dir}/canary.yaml      # two failed checks: RolledBack, all traffic to v1"
    );
    println!(
        "  curl -s {v2}{} -d '{{\"errorPercent\": 0}}'   # heal v2",
        apps::MISBEHAVE_PATH
    );
    println!();
    println!(
        "Traffic: {} requests/s to frontend; the tally covers the last ~10 s. Ctrl-C stops everything.",
        args.rate
    );
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The control plane's logs go to a file: the terminal is for the tally.
fn init_tracing(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("creating log file {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}
