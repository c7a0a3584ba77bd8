//! Measures Apply latency and Watch fan-out against a real server on 127.0.0.1.
//!
//! `cargo run -p quiver-control --example bench -- [--database-url postgres://...]
//! [--watchers 200] [--applies 200]`
//!
//! Starts a control plane (SQLite in a temp dir unless --database-url is given; the database
//! should be an empty scratch one), opens W Watch streams on Routes, then applies M route
//! updates one after another. Prints Apply round-trip latency and, per update, the time until
//! the last of the W watchers received it.

use std::time::{Duration, Instant};

use clap::Parser;
use quiver_api::v1::{self, mesh_admin_client::MeshAdminClient};
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long, default_value_t = 200)]
    watchers: usize,
    #[arg(long, default_value_t = 200)]
    applies: usize,
}

const TOKEN: &str = "qvr_bench-admin-token-at-least-32-chars";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let mut flags = vec![
        "quiver-control".to_string(),
        "--listen=127.0.0.1:0".into(),
        "--discovery-listen=127.0.0.1:0".into(),
        format!("--data-dir={}", dir.path().display()),
        format!("--admin-token={TOKEN}"),
    ];
    if let Some(url) = &args.database_url {
        flags.push(format!("--database-url={url}"));
    }
    let config = quiver_control::server::Config::try_parse_from(flags)?;
    let running = quiver_control::server::start(&config).await?;
    let url = format!("http://{}", running.addr);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await?;
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse()?;
    let intercept = move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", auth.clone());
        Ok(req)
    };
    let mut admin = MeshAdminClient::with_interceptor(channel.clone(), intercept.clone());

    admin.apply_service(service()).await?;
    admin.apply_route(route(0)).await?;

    // W watchers on one HTTP/2 connection each 50 (like many proxies on few replicas).
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let mut synced = 0;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let mut channels = Vec::new();
    for i in 0..args.watchers {
        if i % 50 == 0 {
            channels.push(
                tonic::transport::Endpoint::from_shared(url.clone())?
                    .connect()
                    .await?,
            );
        }
        let mut c = MeshAdminClient::with_interceptor(
            channels[channels.len() - 1].clone(),
            intercept.clone(),
        );
        let (seen_tx, ready_tx) = (seen_tx.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let Ok(resp) = c.watch_routes(v1::WatchRequest::default()).await else {
                return;
            };
            let mut stream = resp.into_inner();
            while let Ok(Some(e)) = stream.message().await {
                if e.r#type == v1::watch_event::Type::Synced as i32 {
                    let _ = ready_tx.send(());
                } else if e.r#type == v1::watch_event::Type::Modified as i32 {
                    let _ = seen_tx.send((e.resource_version, Instant::now()));
                }
            }
        });
    }
    while synced < args.watchers {
        ready_rx.recv().await;
        synced += 1;
    }

    let mut apply = Vec::new();
    let mut fanout = Vec::new();
    for i in 1..=args.applies {
        let start = Instant::now();
        let resp = admin.apply_route(route(i)).await?.into_inner();
        apply.push(start.elapsed());
        let version = resp
            .route
            .and_then(|r| r.metadata)
            .map(|m| m.resource_version)
            .unwrap_or(0);
        let mut got = 0;
        let mut last = start;
        while got < args.watchers {
            let (v, at) = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("watchers gone"))?;
            if v == version {
                got += 1;
                last = last.max(at);
            }
        }
        fanout.push(last - start);
    }
    let engine = if args.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!(
        "store={engine} watchers={} applies={} (debug build unless --release)",
        args.watchers, args.applies
    );
    report("apply round trip", &mut apply);
    report("apply -> last watcher", &mut fanout);
    running.shutdown().await?;
    Ok(())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{what:<24} p50 {:>8.2} ms   p90 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}

fn service() -> v1::Service {
    v1::Service {
        status: None,
        metadata: Some(v1::ObjectMeta {
            name: "reviews".into(),
            ..Default::default()
        }),
        spec: Some(v1::ServiceSpec {
            subsets: ["v1", "v2"]
                .iter()
                .map(|v| v1::Subset {
                    name: v.to_string(),
                    labels: [("version".to_string(), v.to_string())].into(),
                })
                .collect(),
            ..Default::default()
        }),
    }
}

/// The route with a canary weight that changes on every apply.
fn route(i: usize) -> v1::Route {
    let w = (i % 99 + 1) as u32;
    v1::Route {
        metadata: Some(v1::ObjectMeta {
            name: "reviews".into(),
            ..Default::default()
        }),
        spec: Some(v1::RouteSpec {
            service: "reviews".into(),
            rules: vec![v1::RouteRule {
                name: "default".into(),
                backends: vec![
                    v1::WeightedBackend {
                        subset: "v1".into(),
                        weight: 100 - w,
                        ..Default::default()
                    },
                    v1::WeightedBackend {
                        subset: "v2".into(),
                        weight: w,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
        }),
    }
}
