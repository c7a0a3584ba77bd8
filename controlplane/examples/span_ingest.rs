//! Measures how many spans per second the control plane stores from ReportTelemetry.
//!
//! `cargo run --release -p quiver-control --example span_ingest -- [--spans 200000]
//! [--batch 256] [--streams 1] [--database-url postgres://...]`
//!
//! Starts a control plane in this process (SQLite in a temp dir unless --database-url names
//! an empty scratch database), joins one proxy identity with a join token and a CSR, then
//! streams spans (4-span traces, as a two-hop request produces) in batches over real mTLS to
//! the discovery listener, as fast as the server takes them. Prints sustained spans/s (from
//! the first batch sent to the server's answer, which comes after the last batch is stored)
//! and the process RSS (control plane and this client together). Then it times what reads
//! cost on the filled store: GetTrace of traces spread over it, and SearchTraces with the
//! console's default range (all, by service, errors only, by service with a minimum duration).
//!
//! Trace ids are scrambled (a bijection of a counter), as random as a proxy's. Retention is
//! off.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use quiver_api::SpiffeId;
use quiver_api::tls::{MeshIdentity, pinned_client_config_without_identity};
use quiver_api::v1::{
    self, mesh_admin_client::MeshAdminClient, mesh_discovery_client::MeshDiscoveryClient,
};
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    database_url: Option<String>,
    /// Spans to send in total.
    #[arg(long, default_value_t = 200_000)]
    spans: usize,
    /// Spans per TelemetryBatch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Concurrent ReportTelemetry streams (each a proxy connection).
    #[arg(long, default_value_t = 1)]
    streams: usize,
}

const TOKEN: &str = "qvr_bench-admin-token-at-least-32-chars";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.batch > 0 && args.streams > 0,
        "--batch and --streams must be > 0"
    );
    let dir = tempfile::tempdir()?;
    let mut flags = vec![
        "quiver-control".to_string(),
        "--listen=127.0.0.1:0".into(),
        "--discovery-listen=127.0.0.1:0".into(),
        format!("--data-dir={}", dir.path().display()),
        format!("--admin-token={TOKEN}"),
        // Retention must not delete what is being measured.
        "--trace-max-spans=100000000".into(),
    ];
    if let Some(url) = &args.database_url {
        flags.push(format!("--database-url={url}"));
        // A fresh store: any key seals its CA (the benchmark keeps nothing).
        flags.push(format!(
            "--ca-key-encryption-key={}",
            quiver_tests::scratch::ca_key_encryption_key(dir.path()).display()
        ));
    }
    let config = quiver_control::server::Config::try_parse_from(flags)?;
    let running = quiver_control::server::start(&config).await?;

    // Join one identity, as a proxy does: a join token, a locally made key and CSR, over TLS.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.addr))?
        .connect()
        .await?;
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse()?;
    let mut admin =
        MeshAdminClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", auth.clone());
            Ok(req)
        });
    let join_token = admin
        .create_join_token(v1::CreateJoinTokenRequest {
            namespace: "bench".into(),
            service_account: "load".into(),
            ttl: "10m".into(),
            uses: 1,
        })
        .await?
        .into_inner()
        .token;
    let bundle = admin
        .get_trust_bundle(v1::GetTrustBundleRequest {})
        .await?
        .into_inner()
        .pem;
    let (key_pem, csr_der) = quiver_api::certs::new_key_and_csr()?;
    let control_plane = SpiffeId::control_plane("mesh.local")?;
    let tls = pinned_client_config_without_identity(&bundle, &control_plane, &[b"h2"])?;
    let joined =
        MeshDiscoveryClient::new(quiver_api::dial::connect(running.discovery_addr, tls).await?)
            .join(v1::JoinRequest {
                join_token,
                csr_der,
            })
            .await?
            .into_inner();
    let identity = MeshIdentity::from_pem(&joined.cert_chain_pem, &key_pem, &bundle)?;
    println!(
        "store {}, joined as {}, {} spans in batches of {} on {} stream(s)",
        running.store_engine, joined.spiffe_id, args.spans, args.batch, args.streams
    );

    let per_stream = args.spans.div_ceil(args.streams);
    let mut tasks = Vec::new();
    let started = Instant::now();
    for stream_no in 0..args.streams {
        let tls = identity.pinned_client_config(&control_plane, &[b"h2"])?;
        let channel = quiver_api::dial::connect(running.discovery_addr, tls).await?;
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut client = MeshDiscoveryClient::new(channel);
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let mut sent = 0;
                let mut trace_no = 0u64;
                while sent < per_stream {
                    let n = batch.min(per_stream - sent);
                    let spans = spans(stream_no as u64, &mut trace_no, n);
                    sent += n;
                    let b = v1::TelemetryBatch {
                        spans,
                        edges: vec![],
                        dropped_spans: 0,
                    };
                    if tx.send(b).await.is_err() {
                        return;
                    }
                }
            });
            client
                .report_telemetry(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(|r| r.into_inner().accepted_spans)
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await??;
    }
    let elapsed = started.elapsed();
    println!(
        "accepted {accepted} spans in {:.2}s: {:.0} spans/s sustained",
        elapsed.as_secs_f64(),
        accepted as f64 / elapsed.as_secs_f64()
    );
    println!(
        "process RSS {} (peak {}) — control plane and the sending client in one process",
        proc_status("VmRSS"),
        proc_status("VmHWM")
    );

    // Reads on the filled store.
    let traces_per_stream = (per_stream as u64).div_ceil(4);
    let mut took = Vec::new();
    for i in 0..10u64 {
        let trace_id = format!(
            "{:016x}{:016x}",
            scramble(1),
            scramble(1 + i * traces_per_stream / 10)
        );
        let t = Instant::now();
        let trace = admin
            .get_trace(v1::GetTraceRequest { trace_id })
            .await?
            .into_inner();
        took.push(t.elapsed());
        anyhow::ensure!(
            trace.spans.len() == 4,
            "a trace came back with {} spans",
            trace.spans.len()
        );
    }
    took.sort();
    println!(
        "GetTrace of 10 traces spread over the store: median {:.1} ms, max {:.1} ms",
        took[5].as_secs_f64() * 1e3,
        took[9].as_secs_f64() * 1e3
    );
    let searches = [
        ("newest 20", v1::SearchTracesRequest::default()),
        (
            "service=ratings",
            v1::SearchTracesRequest {
                service: "ratings".into(),
                ..Default::default()
            },
        ),
        (
            "errorsOnly",
            v1::SearchTracesRequest {
                errors_only: true,
                ..Default::default()
            },
        ),
        (
            "service=frontend errorsOnly",
            v1::SearchTracesRequest {
                service: "frontend".into(),
                errors_only: true,
                ..Default::default()
            },
        ),
        (
            "service=catalog minDuration=4ms",
            v1::SearchTracesRequest {
                service: "catalog".into(),
                min_duration: "4ms".into(),
                ..Default::default()
            },
        ),
    ];
    for (what, req) in searches {
        let t = Instant::now();
        let found = admin.search_traces(req).await?.into_inner().traces.len();
        println!(
            "SearchTraces {what} (last 15 minutes, limit 20): {found} traces in {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    running.shutdown().await?;
    Ok(())
}

/// `n` spans of 4-span traces (frontend -> catalog -> ratings), continuing `trace_no`.
fn spans(stream: u64, trace_no: &mut u64, n: usize) -> Vec<v1::Span> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as i64;
    let hops = [
        ("CLIENT", "frontend", "catalog"),
        ("SERVER", "catalog", "frontend"),
        ("CLIENT", "catalog", "ratings"),
        ("SERVER", "ratings", "catalog"),
    ];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let trace = format!(
            "{:016x}{:016x}",
            scramble(stream + 1),
            scramble(*trace_no + 1)
        );
        for (i, (kind, service, peer)) in hops.iter().enumerate() {
            if out.len() == n {
                break;
            }
            let span_id = |i: usize| format!("{:012x}{:04x}", *trace_no + 1, i + 1);
            let status = if trace_no.is_multiple_of(50) {
                503
            } else {
                200
            };
            out.push(v1::Span {
                trace_id: trace.clone(),
                span_id: span_id(i),
                parent_span_id: if i == 0 {
                    String::new()
                } else {
                    span_id(i - 1)
                },
                kind: (*kind).into(),
                namespace: "bench".into(),
                service: (*service).into(),
                peer_service: (*peer).into(),
                peer_identity: format!("spiffe://mesh.local/ns/bench/sa/{peer}"),
                name: "GET /api/items".into(),
                route: "default".into(),
                start_unix_nanos: now + i as i64 * 100_000,
                duration_nanos: 5_000_000 - i as i64 * 1_000_000,
                status_code: status,
                error: String::new(),
                attempt: 1,
                request_bytes: 120,
                response_bytes: 2048,
                quic_connection_id: "8a1f2c3d4e5f6071".into(),
                endpoint: "10.0.0.7:15443".into(),
            });
        }
        *trace_no += 1;
    }
    out
}

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l[field.len() + 1..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// SplitMix64's finaliser: a bijection on u64, so distinct counters stay distinct ids, with
/// the bits spread as a random id's are.
fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
