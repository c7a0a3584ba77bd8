//! Config push latency: N proxies Watch their snapshot over mTLS; one Apply changes a Route;
//! how long until every watcher holds the new version?
//!
//! `cargo run --release -p quiver-control --example propagation -- --watchers 1000
//! [--applies 5] [--endpoints 10] [--streams-per-connection 1] [--database-url postgres://...]`
//!
//! The control plane runs in a child process (this example re-executed with `--serve`), so
//! its RSS is its own; the watchers run here, one TLS connection each by default (as proxies
//! would). Each Apply flips the weights of the `reviews` Route; a watcher's latency is the
//! time from sending the Apply until it read a snapshot carrying the new weights. Reports
//! p50 / p99 / max over all watchers and applies, and the control plane's RSS.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use quiver_api::certs;
use quiver_api::tls::{MeshIdentity, client_config_without_identity};
use quiver_api::v1::mesh_discovery_client::MeshDiscoveryClient;
use quiver_api::v1::{self, mesh_admin_client::MeshAdminClient};
use quiver_control::discovery::client;
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    #[arg(long, default_value_t = 5)]
    applies: usize,
    /// Registered endpoints of the called service (snapshot size).
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Watch streams sharing one TLS connection (1 = one connection per proxy).
    #[arg(long, default_value_t = 1)]
    streams_per_connection: usize,
    #[arg(long)]
    database_url: Option<String>,
    /// Internal: run the control plane only (the child process).
    #[arg(long, hide = true)]
    serve: Option<std::path::PathBuf>,
}

const TOKEN: &str = "qvr_bench-admin";

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match &args.serve {
        Some(dir) => rt.block_on(serve(dir, args.database_url.as_deref())),
        None => rt.block_on(bench(&args)),
    }
}

/// The child: a control plane on 127.0.0.1, announcing its ports on stdout.
async fn serve(dir: &std::path::Path, database_url: Option<&str>) -> anyhow::Result<()> {
    let mut flags = vec![
        "quiver-control".to_string(),
        "--listen=127.0.0.1:0".into(),
        "--discovery-listen=127.0.0.1:0".into(),
        format!("--data-dir={}", dir.display()),
        format!("--admin-token={TOKEN}"),
    ];
    if let Some(url) = database_url {
        flags.push(format!("--database-url={url}"));
    }
    let config = quiver_control::server::Config::try_parse_from(flags)?;
    let running = quiver_control::server::start(&config).await?;
    println!("READY {} {}", running.addr, running.discovery_addr);
    // Until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await?;
    running.shutdown().await
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn yaml<R: quiver_api::resource::Resource>(text: &str) -> anyhow::Result<R> {
    let docs = quiver_api::document::parse_documents(text)?;
    let any = docs.into_iter().next().context("one document")?;
    Ok(serde_yaml::from_value(any.to_yaml_value()?)?)
}

fn route(v1_weight: u32) -> anyhow::Result<v1::Route> {
    yaml(&format!(
        "apiVersion: quiver.dev/v1\nkind: Route\nmetadata: {{name: reviews, namespace: shop}}\n\
         spec:\n  service: reviews\n  rules:\n  - name: default\n    backends:\n    \
         - {{subset: v1, weight: {v1_weight}}}\n    - {{subset: v2, weight: {}}}\n",
        100 - v1_weight
    ))
}

async fn join(
    admin: &mut MeshAdminClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            impl tonic::service::Interceptor,
        >,
    >,
    discovery: SocketAddr,
    bundle: &str,
    sa: &str,
) -> anyhow::Result<MeshIdentity> {
    let token = admin
        .create_join_token(v1::CreateJoinTokenRequest {
            namespace: "shop".into(),
            service_account: sa.into(),
            ttl: "10m".into(),
            uses: 1,
        })
        .await?
        .into_inner()
        .token;
    let (key, csr_der) = certs::new_key_and_csr()?;
    let tls = client_config_without_identity(bundle, "mesh.local", &[b"h2"])?;
    let joined = MeshDiscoveryClient::new(client::connect(discovery, tls).await?)
        .join(v1::JoinRequest {
            join_token: token,
            csr_der,
        })
        .await?
        .into_inner();
    Ok(MeshIdentity::from_pem(
        &joined.cert_chain_pem,
        &key,
        bundle,
    )?)
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--serve").arg(dir.path());
    if let Some(url) = &args.database_url {
        cmd.arg("--database-url").arg(url);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the control plane child")?;
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line)?;
    let mut parts = line.split_whitespace().skip(1);
    let api: SocketAddr = parts.next().context("api addr")?.parse()?;
    let discovery: SocketAddr = parts.next().context("discovery addr")?.parse()?;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{api}"))?
        .connect()
        .await?;
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse()?;
    let mut admin =
        MeshAdminClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", auth.clone());
            Ok(req)
        });
    admin
        .apply_service(yaml::<v1::Service>(
            "apiVersion: quiver.dev/v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\n\
             spec:\n  ports: [{name: http, port: 9080, protocol: http1}]\n  subsets:\n  \
             - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n",
        )?)
        .await?;
    admin
        .apply_service(yaml::<v1::Service>(
            "apiVersion: quiver.dev/v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
             spec:\n  ports: [{name: http, port: 8080, protocol: http1}]\n",
        )?)
        .await?;
    admin.apply_route(route(50)?).await?;
    let bundle = admin
        .get_trust_bundle(v1::GetTrustBundleRequest {})
        .await?
        .into_inner()
        .pem;
    let reviews = join(&mut admin, discovery, &bundle, "reviews").await?;
    let mut reviews_client = MeshDiscoveryClient::new(
        client::connect(discovery, reviews.client_config(&[b"h2"])?).await?,
    );
    for i in 0..args.endpoints {
        let mut reg = v1::WorkloadRegistration {
            service: "reviews".into(),
            address: format!("10.0.{}.{}:15443", i / 250, i % 250 + 1),
            zone: "zone-a".into(),
            ..Default::default()
        };
        reg.labels.insert(
            "version".into(),
            if i % 2 == 0 { "v1" } else { "v2" }.into(),
        );
        reviews_client.register(reg).await?;
    }
    let web = join(&mut admin, discovery, &bundle, "web").await?;
    let tls = web.client_config(&[b"h2"])?;
    let rss_idle = rss_mib(pid);

    // Watchers: each reports (weight of the first backend, when) for every snapshot.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(u32, Instant)>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let started = Instant::now();
    let mut channel = None;
    for i in 0..args.watchers {
        if i % args.streams_per_connection.max(1) == 0 {
            channel = Some(client::connect(discovery, tls.clone()).await?);
        }
        let mut c = MeshDiscoveryClient::new(channel.clone().context("channel")?)
            .max_decoding_message_size(64 << 20);
        let (seen_tx, ready_tx) = (seen_tx.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let Ok(resp) = c
                .watch(v1::ProxyWatchRequest {
                    services: vec!["web".into()],
                })
                .await
            else {
                eprintln!("watch refused");
                return;
            };
            let mut stream = resp.into_inner();
            let mut first = true;
            while let Ok(Some(snap)) = stream.message().await {
                let at = Instant::now();
                if first {
                    first = false;
                    let _ = ready_tx.send(());
                    continue;
                }
                let weight = snap
                    .routes
                    .first()
                    .and_then(|r| r.spec.as_ref())
                    .and_then(|s| s.rules.first())
                    .and_then(|r| r.backends.first())
                    .map(|b| b.weight)
                    .unwrap_or_default();
                let _ = seen_tx.send((weight, at));
            }
        });
    }
    for _ in 0..args.watchers {
        ready_rx.recv().await.context("a watcher failed")?;
    }
    let connect_time = started.elapsed();
    let rss_watching = rss_mib(pid);

    let mut all = Vec::new();
    let mut apply_times = Vec::new();
    for round in 0..args.applies {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let weight = if round % 2 == 0 { 80 } else { 20 };
        let t0 = Instant::now();
        admin.apply_route(route(weight)?).await?;
        apply_times.push(t0.elapsed());
        let mut got = Vec::with_capacity(args.watchers);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got.len() < args.watchers {
            match tokio::time::timeout_at(deadline, seen_rx.recv()).await {
                Ok(Some((w, at))) if w == weight => got.push(at.duration_since(t0)),
                Ok(Some(_)) => {}
                _ => anyhow::bail!(
                    "round {round}: only {} of {} watchers got the change",
                    got.len(),
                    args.watchers
                ),
            }
        }
        got.sort();
        println!(
            "apply {round}: Apply {} | every watcher by p50 {} p99 {} max {}",
            ms(apply_times[round]),
            ms(percentile(&got, 0.5)),
            ms(percentile(&got, 0.99)),
            ms(*got.last().unwrap_or(&Duration::ZERO)),
        );
        all.extend(got);
    }
    all.sort();
    let rss_after = rss_mib(pid);
    let show = |r: Option<f64>| {
        r.map(|v| format!("{v:.1} MiB"))
            .unwrap_or_else(|| "?".into())
    };
    println!(
        "\nwatchers {} ({} per connection), endpoints {}, store {}, {} applies",
        args.watchers,
        args.streams_per_connection,
        args.endpoints,
        if args.database_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        args.applies
    );
    println!("all watchers connected and synced in {}", ms(connect_time));
    println!(
        "Apply -> watcher holds new version: p50 {} | p99 {} | max {}  ({} samples)",
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(*all.last().unwrap_or(&Duration::ZERO)),
        all.len()
    );
    println!(
        "control-plane RSS: {} idle, {} with watchers, {} after the applies",
        show(rss_idle),
        show(rss_watching),
        show(rss_after)
    );
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}
