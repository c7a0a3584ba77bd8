//! OTLP export end to end: a real OTLP/gRPC receiver (the collector's TraceService, served by
//! tonic in this test), a real quiver-control with `--otlp-endpoint`, and a proxy joined over
//! mTLS reporting a two-hop trace with ReportTelemetry. The receiver must get every span with
//! its ids, parent links, kinds, names, status, times and service; with the receiver down,
//! ingest and storage go on and the failure is counted; a bad flag is refused at start.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::mesh::{self, Discovery};
use common::{PgTestDb, SqliteTestDb, TestServer};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use quiver_api::v1;
use quiver_tests::eventually;

const MS: i64 = 1_000_000;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// What the receiver got: each Export call's message and its `x-tenant` header.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Call>>>);

/// One Export call: its message and its `x-tenant` header.
type Call = (ExportTraceServiceRequest, Option<String>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let tenant = req
            .metadata()
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        self.0.lock().unwrap().push((req.into_inner(), tenant));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Received {
    /// Every received span with its resource's service.name and the call's x-tenant header.
    fn spans(&self) -> Vec<(String, Option<String>, Span)> {
        let mut out = Vec::new();
        for (req, tenant) in self.0.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let attrs = &rs.resource.as_ref().expect("a resource").attributes;
                let service = string_attr(attrs, "service.name").expect("service.name");
                assert_eq!(
                    string_attr(attrs, "service.namespace").as_deref(),
                    Some("shop"),
                    "service.namespace is the reporting proxy's namespace"
                );
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push((service.clone(), tenant.clone(), s.clone()));
                    }
                }
            }
        }
        out
    }
}

/// A real OTLP/gRPC receiver on 127.0.0.1:0.
async fn receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let service = TraceServiceServer::new(received.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("OTLP receiver");
    });
    (addr, received)
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::IntValue(n) => Some(*n),
            _ => None,
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[allow(clippy::too_many_arguments)]
fn span(
    trace: &str,
    id: &str,
    parent: &str,
    kind: &str,
    service: &str,
    peer: &str,
    name: &str,
    start: i64,
    duration: i64,
    status: u32,
    error: &str,
) -> v1::Span {
    v1::Span {
        trace_id: trace.into(),
        span_id: id.into(),
        parent_span_id: parent.into(),
        kind: kind.into(),
        service: service.into(),
        peer_service: peer.into(),
        peer_identity: format!("spiffe://mesh.local/ns/shop/sa/{peer}"),
        name: name.into(),
        route: "default".into(),
        start_unix_nanos: start,
        duration_nanos: duration,
        status_code: status,
        error: error.into(),
        attempt: 1,
        request_bytes: 10,
        response_bytes: 20,
        quic_connection_id: "0a0b".into(),
        endpoint: if kind == "CLIENT" {
            "127.0.0.1:15443".into()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

/// frontend -> catalog -> ratings, four spans; the second hop fails (ratings answers 503,
/// catalog's client span carries the proxy-made error).
fn two_hop_trace(trace: &str, t0: i64) -> Vec<v1::Span> {
    vec![
        span(
            trace,
            "b000000000000001",
            "",
            "CLIENT",
            "frontend",
            "catalog",
            "GET /items",
            t0,
            40 * MS + 7,
            200,
            "",
        ),
        span(
            trace,
            "b000000000000002",
            "b000000000000001",
            "SERVER",
            "catalog",
            "frontend",
            "GET /items",
            t0 + MS,
            38 * MS,
            200,
            "",
        ),
        span(
            trace,
            "b000000000000003",
            "b000000000000002",
            "CLIENT",
            "catalog",
            "ratings",
            "GET /stars",
            t0 + 2 * MS + 1,
            30 * MS,
            503,
            "upstream_reset",
        ),
        span(
            trace,
            "b000000000000004",
            "b000000000000003",
            "SERVER",
            "ratings",
            "catalog",
            "GET /stars",
            t0 + 3 * MS,
            28 * MS,
            503,
            "",
        ),
    ]
}

async fn report(client: &mut Discovery, spans: Vec<v1::Span>) -> u64 {
    let batch = v1::TelemetryBatch {
        spans,
        ..Default::default()
    };
    client
        .report_telemetry(tokio_stream::iter(vec![batch]))
        .await
        .expect("ReportTelemetry")
        .into_inner()
        .accepted_spans
}

async fn metrics_text(addr: SocketAddr) -> String {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/metrics")
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of one series (exact name and labels) in /metrics, 0 when absent.
fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// `promtool check metrics` on `text`: (passed, what it said).
fn promtool(text: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool: {e}\npromtool is required: \
                 `apt-get install -y --no-install-recommends prometheus`"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// The trace as the store has it (GetTrace over the admin API).
async fn stored_span_ids(server: &TestServer, trace: &str) -> Vec<String> {
    let mut ids: Vec<String> = server
        .admin()
        .await
        .get_trace(v1::GetTraceRequest {
            trace_id: trace.into(),
        })
        .await
        .expect("GetTrace")
        .into_inner()
        .spans
        .into_iter()
        .map(|s| s.span_id)
        .collect();
    ids.sort();
    ids
}

async fn exports_a_two_hop_trace(database_url: Option<&str>, data_dir: &std::path::Path) {
    let (addr, received) = receiver().await;
    let endpoint = format!("http://{addr}");
    let server = TestServer::start_with(
        database_url,
        data_dir,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-header",
            "x-tenant=shop",
            "--otlp-timeout",
            "5s",
        ],
    )
    .await;
    let proxy = mesh::join(&server, "shop", "web").await;
    let mut client = proxy.client().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let t0 = now_ns() - 5_000 * MS;
    let sent = two_hop_trace(trace, t0);
    assert_eq!(report(&mut client, sent.clone()).await, 4);

    let got = eventually(
        "4 spans at the OTLP receiver",
        Duration::from_secs(15),
        || {
            let spans = received.spans();
            async move { (spans.len() >= 4).then_some(spans) }
        },
    )
    .await;
    assert_eq!(got.len(), 4, "each span exactly once: {got:#?}");
    for want in &sent {
        let (service, tenant, s) = got
            .iter()
            .find(|(_, _, s)| hex(&s.span_id) == want.span_id)
            .unwrap_or_else(|| panic!("span {} not exported", want.span_id));
        assert_eq!(service, &want.service, "service.name of {}", want.span_id);
        assert_eq!(tenant.as_deref(), Some("shop"), "--otlp-header is sent");
        assert_eq!(hex(&s.trace_id), trace);
        assert_eq!(hex(&s.parent_span_id), want.parent_span_id);
        let kind = if want.kind == "CLIENT" {
            SpanKind::Client
        } else {
            SpanKind::Server
        };
        assert_eq!(s.kind, kind as i32, "kind of {}", want.span_id);
        assert_eq!(s.name, want.name);
        assert_eq!(s.start_time_unix_nano, want.start_unix_nanos as u64);
        assert_eq!(
            s.end_time_unix_nano,
            (want.start_unix_nanos + want.duration_nanos) as u64
        );
        let status = s.status.clone().unwrap_or_default();
        if want.status_code >= 500 || !want.error.is_empty() {
            assert_eq!(status.code, StatusCode::Error as i32, "{}", want.span_id);
            assert_eq!(status.message, want.error);
        } else {
            assert_eq!(status.code, StatusCode::Unset as i32, "{}", want.span_id);
        }
        assert_eq!(
            int_attr(&s.attributes, "http.response.status_code"),
            Some(i64::from(want.status_code))
        );
        assert_eq!(
            string_attr(&s.attributes, "url.path").as_deref(),
            want.name.strip_prefix("GET ")
        );
        assert_eq!(
            string_attr(&s.attributes, "quiver.peer_service").as_deref(),
            Some(want.peer_service.as_str())
        );
        assert_eq!(int_attr(&s.attributes, "quiver.attempt"), Some(1));
        if want.kind == "CLIENT" {
            assert_eq!(
                string_attr(&s.attributes, "server.address").as_deref(),
                Some("127.0.0.1")
            );
            assert_eq!(int_attr(&s.attributes, "server.port"), Some(15443));
        }
    }
    // Storage is untouched by the export.
    assert_eq!(stored_span_ids(&server, trace).await.len(), 4);
    let body = eventually("exported spans counted", Duration::from_secs(5), || async {
        let body = metrics_text(server.addr).await;
        (metric(&body, "quiver_otlp_spans_exported_total") == 4.0).then_some(body)
    })
    .await;
    assert!(metric(&body, "quiver_otlp_batches_exported_total") >= 1.0);
    assert_eq!(
        metric(
            &body,
            "quiver_otlp_spans_dropped_total{reason=\"export_failed\"}"
        ),
        0.0
    );
    server.stop().await;
}

#[tokio::test]
async fn exports_a_two_hop_trace_on_sqlite() {
    let db = SqliteTestDb::create();
    exports_a_two_hop_trace(None, db.dir.path()).await;
}

#[tokio::test]
async fn exports_a_two_hop_trace_on_postgres() {
    let db = PgTestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    exports_a_two_hop_trace(Some(&db.url), dir.path()).await;
}

#[tokio::test]
async fn receiver_down_keeps_ingest_and_counts_failures() {
    // A port nobody listens on: bound, then closed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let endpoint = format!("http://{closed}");
    let db = SqliteTestDb::create();
    let server = TestServer::start_with(
        None,
        db.dir.path(),
        &["--otlp-endpoint", &endpoint, "--otlp-timeout", "1s"],
    )
    .await;
    let proxy = mesh::join(&server, "shop", "web").await;
    let mut client = proxy.client().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4737";
    let started = std::time::Instant::now();
    assert_eq!(
        report(&mut client, two_hop_trace(trace, now_ns() - 5_000 * MS)).await,
        4
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "ingest did not wait for the exporter ({:?})",
        started.elapsed()
    );
    assert_eq!(stored_span_ids(&server, trace).await.len(), 4);
    // One batch: a first try and three retries (backoff 0.25 + 0.5 + 1 s), then dropped.
    let body = eventually(
        "the failed batch counted",
        Duration::from_secs(20),
        || async {
            let body = metrics_text(server.addr).await;
            (metric(&body, "quiver_otlp_batches_failed_total") >= 1.0).then_some(body)
        },
    )
    .await;
    assert_eq!(
        metric(
            &body,
            "quiver_otlp_spans_dropped_total{reason=\"export_failed\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &body,
            "quiver_otlp_export_attempts_failed_total{code=\"UNAVAILABLE\"}"
        ),
        4.0,
        "a first try and 3 retries:\n{body}"
    );
    assert_eq!(metric(&body, "quiver_otlp_spans_exported_total"), 0.0);
    let (ok, said) = promtool(&body);
    assert!(ok, "promtool refused /metrics:\n{said}\n---\n{body}");
    // Later reports are still stored and answered.
    let trace2 = "4bf92f3577b34da6a3ce929d0e0e4738";
    assert_eq!(
        report(&mut client, two_hop_trace(trace2, now_ns() - 4_000 * MS)).await,
        4
    );
    assert_eq!(stored_span_ids(&server, trace2).await.len(), 4);
    server.stop().await;
}

/// The real binary, with bad OTLP flags: refused before anything starts, naming the flag.
#[test]
fn bad_otlp_flags_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--otlp-endpoint", "ftp://collector:4317"],
            "--otlp-endpoint",
            "scheme",
        ),
        (
            &["--otlp-endpoint", "http://collector"],
            "--otlp-endpoint",
            "4317",
        ),
        (
            &["--otlp-endpoint", "collector:4317"],
            "--otlp-endpoint",
            "http://",
        ),
        (
            &[
                "--otlp-endpoint",
                "http://c:4317",
                "--otlp-header",
                "novalue",
            ],
            "--otlp-header",
            "name=value",
        ),
        (
            &["--otlp-endpoint", "http://c:4317", "--otlp-timeout", "0s"],
            "--otlp-timeout",
            "longer than 0s",
        ),
        (
            &["--otlp-header", "x-tenant=shop"],
            "--otlp-endpoint",
            "required",
        ),
        (
            &["--otlp-endpoint", "http://c:4317", "--otlp-queue", "0"],
            "--otlp-queue",
            "not in 1..=10000000",
        ),
    ];
    for (flags, names, reason) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_quiver-control"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--discovery-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path())
            .args(*flags)
            .env_remove("QUIVER_OTLP_ENDPOINT")
            .env_remove("QUIVER_OTLP_HEADERS")
            .output()
            .expect("run quiver-control");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flags:?}: {stderr}");
        assert!(
            stderr.contains(names) && stderr.contains(reason),
            "{flags:?}: the error names {names} and says {reason:?}: {stderr}"
        );
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was created before the flags were checked"
    );
}

/// An OTLP receiver that accepts calls and never answers them: the exporter is stuck.
struct Stuck;

#[tonic::async_trait]
impl TraceService for Stuck {
    async fn export(
        &self,
        _req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_stuck_receiver_drops_spans_past_the_queue_and_never_slows_ingest() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Stuck))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("http://{addr}");
    let db = SqliteTestDb::create();
    let server = TestServer::start_with(
        None,
        db.dir.path(),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-timeout",
            "60s",
            "--otlp-queue",
            &OTLP_QUEUE.to_string(),
        ],
    )
    .await;
    let proxy = mesh::join(&server, "shop", "web").await;
    let mut client = proxy.client().await;
    // 10,000 spans: one batch (up to 512) stuck in its Export call, 8,192 queued, the rest
    // dropped. 20 traces of 500 root spans each.
    const SPANS: u64 = 10_000;
    let t0 = now_ns() - 60_000 * MS;
    let batches: Vec<v1::TelemetryBatch> = (0..20u64)
        .map(|t| v1::TelemetryBatch {
            spans: (0..500u64)
                .map(|i| {
                    let mut s = span(
                        &format!("5a0000000000000000000000{t:08x}"),
                        &format!("c{:015x}", t * 500 + i),
                        "",
                        "SERVER",
                        "catalog",
                        "frontend",
                        "GET /items",
                        t0 + (t * 500 + i) as i64 * MS,
                        MS,
                        200,
                        "",
                    );
                    s.quic_connection_id.clear();
                    s
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let started = std::time::Instant::now();
    let accepted = client
        .report_telemetry(tokio_stream::iter(batches))
        .await
        .expect("ReportTelemetry")
        .into_inner()
        .accepted_spans;
    assert_eq!(accepted, SPANS, "every span stored");
    let took = started.elapsed();
    let body = metrics_text(server.addr).await;
    let queue_full = metric(
        &body,
        "quiver_otlp_spans_dropped_total{reason=\"queue_full\"}",
    );
    let min = (SPANS as usize - otlp_queue() - 512) as f64;
    let max = (SPANS as usize - otlp_queue()) as f64;
    assert!(
        (min..=max).contains(&queue_full),
        "queue_full drops {queue_full} outside {min}..={max}:\n{body}"
    );
    assert!(
        metric(&body, "quiver_otlp_queue_spans") >= otlp_queue() as f64 - 512.0,
        "the queue is full:\n{body}"
    );
    assert_eq!(metric(&body, "quiver_otlp_spans_exported_total"), 0.0);
    assert_eq!(
        metric(&body, "quiver_telemetry_spans_accepted_total"),
        SPANS as f64
    );
    // Storing 10,000 spans on a busy machine takes a while; the export adds nothing to it:
    // stuck for 60 s per try, it would have held ingest for minutes.
    assert!(took < Duration::from_secs(30), "ingest took {took:?}");
    server.stop().await;
}

/// `--otlp-queue` of the stuck-receiver test (the default holds 65,536).
const OTLP_QUEUE: usize = 8192;

fn otlp_queue() -> usize {
    OTLP_QUEUE
}

/// https:// endpoints are verified against the system's CA certificates; rustls-native-certs
/// reads SSL_CERT_FILE first, so the real binary, given a test CA there, must trust a
/// receiver with a certificate from it, and export to it over TLS.
#[tokio::test]
async fn exports_over_tls_to_an_https_endpoint() {
    // A CA and a receiver certificate for "localhost".
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Received::default();
    let identity = tonic::transport::Identity::from_pem(leaf.pem(), leaf_key.serialize_pem());
    let service = TraceServiceServer::new(received.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (api, discovery) = (free(), free());
    let log = dir.path().join("quiver-control.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_quiver-control"))
        .args(["--listen", &api.to_string()])
        .args(["--discovery-listen", &discovery.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--admin-token", common::ADMIN_TOKEN])
        .args(["--otlp-endpoint", &format!("https://localhost:{port}")])
        .args(["--otlp-header", "x-tenant=shop"])
        .env("SSL_CERT_FILE", &ca_file)
        .env_remove("SSL_CERT_DIR")
        .env_remove("QUIVER_DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start quiver-control");
    let _child = KillOnDrop(child);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    for addr in [api, discovery] {
        let up = tokio::time::timeout(Duration::from_secs(30), async {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            up.is_ok(),
            "quiver-control did not listen on {addr}:\n{}",
            logged()
        );
    }
    let server = TestServer {
        running: None,
        addr: api,
        discovery,
        admin: common::ADMIN_TOKEN.into(),
        url: format!("http://{api}"),
    };
    let proxy = mesh::join(&server, "shop", "web").await;
    let mut client = proxy.client().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4739";
    let sent = two_hop_trace(trace, now_ns() - 5_000 * MS);
    assert_eq!(report(&mut client, sent.clone()).await, 4);
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let spans = received.spans();
            if spans.len() >= 4 {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no spans over TLS; quiver-control said:\n{}", logged()));
    let mut ids: Vec<String> = got.iter().map(|(_, _, s)| hex(&s.span_id)).collect();
    ids.sort();
    let mut want: Vec<String> = sent.iter().map(|s| s.span_id.clone()).collect();
    want.sort();
    assert_eq!(ids, want);
    assert!(
        got.iter().all(|(_, tenant, s)| {
            tenant.as_deref() == Some("shop") && hex(&s.trace_id) == trace
        })
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
