//! The trace store end to end, on Postgres and SQLite: a proxy joined over real mTLS streams
//! spans and edge statistics with ReportTelemetry; SearchTraces, GetTrace and GetServiceGraph
//! read them back; retention deletes old and excess spans.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::mesh::{self, Discovery};
use common::{PgTestDb, SqliteTestDb, TestServer};
use quiver_api::v1;
use quiver_tests::eventually;
use tonic::Code;

const MS: i64 = 1_000_000;
const SEC: i64 = 1_000 * MS;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn rfc3339(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A trace id whose last bytes are `n` (distinct per test trace).
fn trace_id(n: u32) -> String {
    format!("4bf92f3577b34da6a3ce9290{n:08x}")
}

#[allow(clippy::too_many_arguments)]
fn span(
    trace: &str,
    id: &str,
    parent: &str,
    kind: &str,
    service: &str,
    peer: &str,
    start: i64,
    duration: i64,
    status: u32,
) -> v1::Span {
    v1::Span {
        trace_id: trace.into(),
        span_id: id.into(),
        parent_span_id: parent.into(),
        kind: kind.into(),
        // Whatever the proxy claims, the certificate's namespace is recorded.
        namespace: "evil".into(),
        service: service.into(),
        peer_service: peer.into(),
        peer_identity: format!("spiffe://mesh.local/ns/shop/sa/{peer}"),
        name: "GET /items".into(),
        route: "default".into(),
        start_unix_nanos: start,
        duration_nanos: duration,
        status_code: status,
        attempt: 1,
        request_bytes: 10,
        response_bytes: 20,
        quic_connection_id: "0a0b".into(),
        endpoint: "127.0.0.1:15443".into(),
        ..Default::default()
    }
}

/// frontend -> catalog -> ratings: two proxies per hop, four spans; ratings answers 503.
fn two_hop_trace(trace: &str, t0: i64) -> Vec<v1::Span> {
    vec![
        span(
            trace,
            "a000000000000001",
            "",
            "CLIENT",
            "frontend",
            "catalog",
            t0,
            40 * MS,
            503,
        ),
        span(
            trace,
            "a000000000000002",
            "a000000000000001",
            "SERVER",
            "catalog",
            "frontend",
            t0 + MS,
            38 * MS,
            503,
        ),
        span(
            trace,
            "a000000000000003",
            "a000000000000002",
            "CLIENT",
            "catalog",
            "ratings",
            t0 + 2 * MS,
            30 * MS,
            503,
        ),
        span(
            trace,
            "a000000000000004",
            "a000000000000003",
            "SERVER",
            "ratings",
            "catalog",
            t0 + 3 * MS,
            28 * MS,
            503,
        ),
    ]
}

fn buckets(pairs: &[(usize, u64)]) -> Vec<u64> {
    let mut b = vec![0; 14];
    for (i, n) in pairs {
        b[*i] = *n;
    }
    b
}

fn edge(src: &str, dst: &str, requests: u64, errors: u64, b: Vec<u64>, end: i64) -> v1::EdgeStats {
    v1::EdgeStats {
        source_namespace: "evil".into(),
        source_service: src.into(),
        destination_service: dst.into(),
        destination_subset: String::new(),
        requests,
        errors,
        latency_buckets: b,
        // Longer than the 1m window the graph is asked for: the edge has been seen for the
        // whole window, so its rate divides by all of it.
        interval_start_unix_nanos: end - 90 * SEC,
        interval_end_unix_nanos: end,
    }
}

/// Stream `batches` on one ReportTelemetry call; the answer's accepted count.
async fn report(client: &mut Discovery, batches: Vec<v1::TelemetryBatch>) -> u64 {
    client
        .report_telemetry(tokio_stream::iter(batches))
        .await
        .expect("ReportTelemetry")
        .into_inner()
        .accepted_spans
}

async fn search(client: &mut common::Client, req: v1::SearchTracesRequest) -> Vec<String> {
    client
        .search_traces(req)
        .await
        .expect("SearchTraces")
        .into_inner()
        .traces
        .into_iter()
        .map(|t| t.trace_id)
        .collect()
}

fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{body}"))
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn expect_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, field: &str) {
    let e = r.expect_err("the call must fail");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().starts_with(field) || e.message().contains(&format!("; {field}")),
        "the error names {field:?}: {}",
        e.message()
    );
}

async fn ingest_and_query(server: &TestServer) {
    let proxy = mesh::join(server, "shop", "web").await;
    let mut client = proxy.client().await;
    let now = now_ns();
    let t1 = trace_id(1);
    let t2 = trace_id(2);
    let t3 = trace_id(3);
    let t0 = now - 10 * SEC;

    let mut first = two_hop_trace(&t1, t0);
    // Malformed spans in the same batch: refused one by one, the rest is kept.
    first.push(span(
        "not-hex",
        "b000000000000001",
        "",
        "CLIENT",
        "frontend",
        "x",
        t0,
        MS,
        200,
    ));
    first.push(span(
        &trace_id(9),
        "b000000000000002",
        "",
        "INTERNAL",
        "frontend",
        "x",
        t0,
        MS,
        200,
    ));
    first.push(span(
        &trace_id(9),
        "b0001",
        "",
        "SERVER",
        "frontend",
        "x",
        t0,
        MS,
        200,
    ));
    let ends = now - 5 * SEC;
    let batch1 = v1::TelemetryBatch {
        spans: first,
        edges: vec![
            edge("frontend", "catalog", 100, 0, buckets(&[(4, 100)]), ends),
            edge(
                "frontend",
                "catalog",
                200,
                20,
                buckets(&[(4, 200)]),
                ends - 10 * SEC,
            ),
            edge(
                "catalog",
                "ratings",
                50,
                5,
                buckets(&[(0, 25), (7, 25)]),
                ends,
            ),
            // Outside a 1m window: must not count.
            edge(
                "frontend",
                "catalog",
                1000,
                1000,
                buckets(&[(13, 1000)]),
                now - 2 * 3600 * SEC,
            ),
            // Buckets that do not add up to the requests: refused.
            edge("frontend", "catalog", 10, 0, buckets(&[(4, 9)]), ends),
        ],
        dropped_spans: 0,
    };
    let batch2 = v1::TelemetryBatch {
        spans: vec![
            span(
                &t2,
                "c000000000000001",
                "",
                "CLIENT",
                "frontend",
                "catalog",
                now - 60 * SEC,
                5 * MS,
                200,
            ),
            // 30 minutes old: outside the default 15-minute search window.
            span(
                &t3,
                "d000000000000001",
                "",
                "SERVER",
                "catalog",
                "frontend",
                now - 1800 * SEC,
                10 * MS,
                500,
            ),
            span(
                &t3,
                "d000000000000002",
                "d000000000000001",
                "CLIENT",
                "catalog",
                "ratings",
                now - 1800 * SEC,
                -5,
                500,
            ),
        ],
        edges: vec![],
        dropped_spans: 7,
    };
    assert_eq!(report(&mut client, vec![batch1, batch2]).await, 6);

    // Without a client certificate there is no caller to record.
    let mut anonymous = mesh::anonymous(server.discovery, &proxy.bundle_pem).await;
    let refused = anonymous
        .report_telemetry(tokio_stream::iter(vec![v1::TelemetryBatch::default()]))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);

    let mut admin = server.admin().await;
    // GetTrace: 4 spans, by start, linked parent to child, namespace from the certificate.
    let trace = admin
        .get_trace(v1::GetTraceRequest {
            trace_id: t1.clone(),
        })
        .await
        .expect("GetTrace")
        .into_inner();
    assert_eq!(trace.spans.len(), 4, "{trace:?}");
    let ids: Vec<&str> = trace.spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "a000000000000001",
            "a000000000000002",
            "a000000000000003",
            "a000000000000004"
        ]
    );
    for pair in trace.spans.windows(2) {
        assert_eq!(pair[1].parent_span_id, pair[0].span_id);
    }
    assert_eq!(trace.spans[0].parent_span_id, "");
    assert!(
        trace.spans.iter().all(|s| s.namespace == "shop"),
        "{trace:?}"
    );
    assert_eq!(trace.spans[3].service, "ratings");
    assert_eq!(trace.spans[3].kind, "SERVER");
    assert_eq!(trace.spans[2].start_unix_nanos, t0 + 2 * MS);
    assert_eq!(trace.spans[2].duration_nanos, 30 * MS);
    assert_eq!(
        trace.spans[2].peer_identity,
        "spiffe://mesh.local/ns/shop/sa/ratings"
    );
    assert_eq!(trace.spans[2].endpoint, "127.0.0.1:15443");
    assert_eq!(trace.spans[2].response_bytes, 20);
    expect_code(
        admin
            .get_trace(v1::GetTraceRequest {
                trace_id: trace_id(77),
            })
            .await,
        Code::NotFound,
        "trace",
    );
    // The span with a negative duration was refused; its sibling was kept.
    let t3_trace = admin
        .get_trace(v1::GetTraceRequest {
            trace_id: t3.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t3_trace.spans.len(), 1);

    // SearchTraces.
    let all = admin
        .search_traces(v1::SearchTracesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .traces;
    assert_eq!(
        all.iter().map(|t| t.trace_id.as_str()).collect::<Vec<_>>(),
        [t1.as_str(), t2.as_str()],
        "newest first, the 30-minute-old trace outside the default window"
    );
    let s1 = &all[0];
    assert_eq!(s1.root_service, "frontend");
    assert_eq!(s1.root_name, "GET /items");
    assert_eq!(s1.span_count, 4);
    assert!(s1.error);
    assert_eq!(s1.duration_nanos, 40 * MS);
    assert_eq!(s1.services, ["catalog", "frontend", "ratings"]);
    assert_eq!(s1.start, rfc3339(t0));
    assert!(!all[1].error);

    let q = |f: fn(&mut v1::SearchTracesRequest)| {
        let mut r = v1::SearchTracesRequest::default();
        f(&mut r);
        r
    };
    assert_eq!(
        search(&mut admin, q(|r| r.service = "ratings".into())).await,
        [t1.as_str()]
    );
    assert_eq!(
        search(&mut admin, q(|r| r.service = "frontend".into())).await,
        [t1.as_str(), t2.as_str()]
    );
    assert_eq!(
        search(&mut admin, q(|r| r.service = "nobody".into())).await,
        Vec::<String>::new()
    );
    assert_eq!(
        search(&mut admin, q(|r| r.errors_only = true)).await,
        [t1.as_str()]
    );
    assert_eq!(
        search(
            &mut admin,
            q(|r| {
                r.errors_only = true;
                r.service = "frontend".into();
            })
        )
        .await,
        [t1.as_str()],
        "frontend took part in an errored trace"
    );
    assert_eq!(
        search(&mut admin, q(|r| r.min_duration = "35ms".into())).await,
        [t1.as_str()]
    );
    assert_eq!(
        search(&mut admin, q(|r| r.min_duration = "41ms".into())).await,
        Vec::<String>::new()
    );
    assert_eq!(search(&mut admin, q(|r| r.limit = 1)).await, [t1.as_str()]);
    assert_eq!(
        search(&mut admin, q(|r| r.namespace = "evil".into())).await,
        Vec::<String>::new()
    );
    assert_eq!(
        search(&mut admin, q(|r| r.namespace = "shop".into()))
            .await
            .len(),
        2
    );
    let hour_ago = rfc3339(now - 3600 * SEC);
    let thirty_s_ago = rfc3339(now - 30 * SEC);
    let mut r = v1::SearchTracesRequest {
        start: hour_ago.clone(),
        errors_only: true,
        ..Default::default()
    };
    assert_eq!(
        search(&mut admin, r.clone()).await,
        [t1.as_str(), t3.as_str()]
    );
    r.end = thirty_s_ago.clone();
    assert_eq!(search(&mut admin, r).await, [t3.as_str()], "time range end");
    let r = v1::SearchTracesRequest {
        end: thirty_s_ago,
        ..Default::default()
    };
    assert_eq!(search(&mut admin, r).await, [t2.as_str()]);

    // Bad input names the field.
    expect_code(
        admin
            .search_traces(q(|r| r.min_duration = "x".into()))
            .await,
        Code::InvalidArgument,
        "minDuration: \"x\" is not a duration",
    );
    expect_code(
        admin
            .search_traces(q(|r| r.start = "yesterday".into()))
            .await,
        Code::InvalidArgument,
        "start:",
    );
    expect_code(
        admin.search_traces(q(|r| r.limit = 500)).await,
        Code::InvalidArgument,
        "limit:",
    );
    expect_code(
        admin
            .search_traces(q(|r| r.service = "Not A Label".into()))
            .await,
        Code::InvalidArgument,
        "service:",
    );
    expect_code(
        admin
            .get_trace(v1::GetTraceRequest {
                trace_id: "xyz".into(),
            })
            .await,
        Code::InvalidArgument,
        "traceId:",
    );
    expect_code(
        admin
            .get_service_graph(v1::GetServiceGraphRequest {
                window: "2h".into(),
                namespace: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "window:",
    );

    // GetServiceGraph: exact counts over the window, quantiles from the summed buckets.
    let graph = admin
        .get_service_graph(v1::GetServiceGraphRequest {
            window: "1m".into(),
            namespace: String::new(),
        })
        .await
        .expect("GetServiceGraph")
        .into_inner();
    assert_eq!(graph.window, "1m");
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    let fc = graph
        .edges
        .iter()
        .find(|e| e.source_service == "frontend" && e.destination_service == "catalog")
        .expect("frontend -> catalog");
    assert_eq!(fc.namespace, "shop");
    assert!(close(fc.request_rate, 300.0 / 60.0), "{fc:?}");
    assert!(close(fc.error_rate, 20.0 / 300.0), "{fc:?}");
    assert!(close(fc.p50_ms, 17.5), "{fc:?}");
    assert!(close(fc.p99_ms, 24.85), "{fc:?}");
    let cr = graph
        .edges
        .iter()
        .find(|e| e.source_service == "catalog")
        .expect("catalog -> ratings");
    assert!(close(cr.request_rate, 50.0 / 60.0), "{cr:?}");
    assert!(close(cr.error_rate, 0.1), "{cr:?}");
    assert!(close(cr.p50_ms, 1.0), "{cr:?}");
    assert!(close(cr.p99_ms, 247.0), "{cr:?}");
    assert_eq!(graph.edges.len(), 2);
    let node = |name: &str| {
        graph
            .nodes
            .iter()
            .find(|n| n.service == name)
            .unwrap()
            .clone()
    };
    assert!(close(node("catalog").request_rate, 5.0));
    assert!(close(node("ratings").error_rate, 0.1));
    assert_eq!(node("frontend").request_rate, 0.0);
    let other_ns = admin
        .get_service_graph(v1::GetServiceGraphRequest {
            window: String::new(),
            namespace: "other".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other_ns.edges.is_empty() && other_ns.nodes.is_empty());
    assert_eq!(other_ns.window, "5m");

    // A viewer token reads all three.
    let viewer = admin
        .create_api_token(v1::CreateApiTokenRequest {
            role: "viewer".into(),
            description: "trace reader".into(),
            ttl: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut viewer = server.client(Some(&viewer)).await;
    assert_eq!(
        search(&mut viewer, q(|r| r.service = "ratings".into())).await,
        [t1.as_str()]
    );
    viewer
        .get_trace(v1::GetTraceRequest {
            trace_id: t1.clone(),
        })
        .await
        .expect("viewer GetTrace");
    viewer
        .get_service_graph(v1::GetServiceGraphRequest::default())
        .await
        .expect("viewer graph");
    let mut nobody = server.client(None).await;
    assert_eq!(
        nobody
            .search_traces(v1::SearchTracesRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // Counted: accepted, refused by reason, dropped by the proxy.
    let body = http_get(server.addr, "/metrics").await;
    assert_eq!(metric(&body, "quiver_telemetry_spans_accepted_total"), 6.0);
    assert_eq!(
        metric(
            &body,
            "quiver_telemetry_spans_refused_total{reason=\"trace_id\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &body,
            "quiver_telemetry_spans_refused_total{reason=\"kind\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &body,
            "quiver_telemetry_spans_refused_total{reason=\"span_id\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &body,
            "quiver_telemetry_spans_refused_total{reason=\"duration\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &body,
            "quiver_telemetry_edge_stats_refused_total{reason=\"buckets\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&body, "quiver_telemetry_edge_stats_accepted_total"),
        4.0
    );
    assert_eq!(
        metric(&body, "quiver_telemetry_proxy_dropped_spans_total"),
        7.0
    );

    // The same batch again (a proxy retrying) stores nothing twice.
    let again = v1::TelemetryBatch {
        spans: two_hop_trace(&t1, t0),
        ..Default::default()
    };
    assert_eq!(report(&mut client, vec![again]).await, 0);
    let trace = admin
        .get_trace(v1::GetTraceRequest { trace_id: t1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(trace.spans.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_query_on_sqlite() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    ingest_and_query(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_query_on_postgres() {
    let db = PgTestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Some(&db.url), dir.path()).await;
    ingest_and_query(&server).await;
    server.stop().await;
}

/// Spans older than the retention go, and only the newest --trace-max-spans stay.
async fn retention(server: &TestServer) {
    let proxy = mesh::join(server, "shop", "web").await;
    let mut client = proxy.client().await;
    let now = now_ns();
    let old = trace_id(100);
    let mut spans = vec![
        span(
            &old,
            "e000000000000001",
            "",
            "CLIENT",
            "frontend",
            "catalog",
            now - 2 * 3600 * SEC,
            MS,
            200,
        ),
        span(
            &old,
            "e000000000000002",
            "e000000000000001",
            "SERVER",
            "catalog",
            "frontend",
            now - 2 * 3600 * SEC,
            MS,
            200,
        ),
    ];
    for i in 0..7u32 {
        spans.push(span(
            &trace_id(200 + i),
            "f000000000000001",
            "",
            "CLIENT",
            "frontend",
            "catalog",
            now - (60 - i64::from(i)) * SEC,
            MS,
            200,
        ));
    }
    // The old trace in one batch, then one batch per new span: each batch is a block, and
    // retention removes whole blocks.
    let new = spans.split_off(2);
    let mut batches = vec![v1::TelemetryBatch {
        spans,
        ..Default::default()
    }];
    batches.extend(new.into_iter().map(|s| v1::TelemetryBatch {
        spans: vec![s],
        ..Default::default()
    }));
    assert_eq!(report(&mut client, batches).await, 9);
    let mut admin = server.admin().await;
    let wide = v1::SearchTracesRequest {
        start: rfc3339(now - 3 * 3600 * SEC),
        limit: 200,
        ..Default::default()
    };
    let kept = eventually("retention to delete spans", Duration::from_secs(10), || {
        let mut admin = admin.clone();
        let wide = wide.clone();
        async move {
            let ids = search(&mut admin, wide).await;
            (ids.len() == 5).then_some(ids)
        }
    })
    .await;
    let newest: Vec<String> = (2..7u32).rev().map(|i| trace_id(200 + i)).collect();
    assert_eq!(kept, newest, "the newest five stay");
    let gone = admin.get_trace(v1::GetTraceRequest { trace_id: old }).await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
    // The counter moves just after the delete commits: poll it.
    eventually(
        "4 deleted spans counted",
        Duration::from_secs(5),
        || async {
            let body = http_get(server.addr, "/metrics").await;
            (metric(&body, "quiver_telemetry_spans_deleted_total") == 4.0).then_some(())
        },
    )
    .await;
}

const RETENTION_FLAGS: &[&str] = &[
    "--trace-retention=1h",
    "--trace-max-spans=5",
    "--trace-sweep-interval=100ms",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_sqlite() {
    let db = SqliteTestDb::create();
    let server = TestServer::start_with(None, db.dir.path(), RETENTION_FLAGS).await;
    retention(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_postgres() {
    let db = PgTestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(Some(&db.url), dir.path(), RETENTION_FLAGS).await;
    retention(&server).await;
    server.stop().await;
}

/// `n` one-span traces from `first` on, each with its own duration, status and byte counts,
/// so a span stored in another row's columns would show.
fn numbered_spans(first: u32, n: u32, t0: i64) -> Vec<v1::Span> {
    (first..first + n)
        .map(|i| {
            let mut s = span(
                &trace_id(10_000 + i),
                &format!("c{i:015x}"),
                "",
                if i % 2 == 0 { "CLIENT" } else { "SERVER" },
                &format!("svc-{}", i % 7),
                "peer",
                t0 + i64::from(i) * MS,
                i64::from(i + 1) * MS,
                200 + i % 3,
            );
            s.request_bytes = u64::from(i) * 3;
            s.response_bytes = u64::from(i) * 5;
            s.endpoint = format!("10.0.0.{}:15443", i % 250);
            s
        })
        .collect()
}

/// Two proxies stream at once; their batches are stored together (one writer, group
/// commits), yet each call's answer counts exactly its own new spans, a batch sent twice
/// counts 0 the second time, and every span comes back with its own values, whichever
/// statement size (64, 16, 4 or 1 rows) carried it.
async fn concurrent_streams(server: &TestServer) {
    let web = mesh::join(server, "shop", "web").await;
    let api = mesh::join(server, "shop", "api").await;
    let t0 = now_ns() - 60 * SEC;
    let batch = |spans| v1::TelemetryBatch {
        spans,
        ..Default::default()
    };
    let a = vec![
        batch(numbered_spans(0, 300, t0)),
        batch(numbered_spans(300, 300, t0)),
        batch(numbered_spans(0, 300, t0)),
    ];
    let b = vec![
        batch(numbered_spans(600, 300, t0)),
        batch(numbered_spans(900, 77, t0)),
    ];
    let (mut ca, mut cb) = (web.client().await, api.client().await);
    let (na, nb) = tokio::join!(report(&mut ca, a), report(&mut cb, b));
    assert_eq!((na, nb), (600, 377), "new spans per call");
    let body = http_get(server.addr, "/metrics").await;
    assert_eq!(
        metric(&body, "quiver_telemetry_spans_accepted_total"),
        977.0
    );

    let mut admin = server.admin().await;
    let sent = numbered_spans(0, 977, t0);
    // First and last of a 64-row statement, a 16-row one, a 4-row one and the 1-row tail.
    for i in [0usize, 63, 256, 300, 599, 600, 948, 972, 975, 976] {
        let want = &sent[i];
        let got = admin
            .get_trace(v1::GetTraceRequest {
                trace_id: want.trace_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("span {i}: {e}"))
            .into_inner()
            .spans;
        assert_eq!(got.len(), 1, "span {i} stored once");
        let g = &got[0];
        assert_eq!(
            (
                &g.span_id,
                &g.kind,
                &g.service,
                g.start_unix_nanos,
                g.duration_nanos,
                g.status_code,
                g.request_bytes,
                g.response_bytes,
                &g.endpoint,
                &g.namespace,
            ),
            (
                &want.span_id,
                &want.kind,
                &want.service,
                want.start_unix_nanos,
                want.duration_nanos,
                want.status_code,
                want.request_bytes,
                want.response_bytes,
                &want.endpoint,
                &"shop".to_string(),
            ),
            "span {i} read back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_on_sqlite() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    concurrent_streams(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_on_postgres() {
    let db = PgTestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Some(&db.url), dir.path()).await;
    concurrent_streams(&server).await;
    server.stop().await;
}

/// Spans are stored in blocks, one per reported batch: five batches (a minute apart) make five
/// blocks; a trace whose spans lie in different blocks is read whole and found by searches
/// that need several of its spans; a batch sent again is stored once, and a span sent again
/// in a new batch is read once; with --trace-max-spans 45, retention deletes the oldest block
/// whole; and a search's conditions hold on spans inside its time range.
async fn blocks(server: &TestServer) {
    let proxy = mesh::join(server, "shop", "web").await;
    let mut client = proxy.client().await;
    let base = now_ns();
    let (x, y, z) = (trace_id(500), trace_id(501), trace_id(502));
    let mut batches: Vec<Vec<v1::Span>> = (0..5u32)
        .map(|b| {
            (0..10u32)
                .map(|i| {
                    let start = base + i64::from(b) * 60 * SEC + i64::from(i) * MS;
                    span(
                        &trace_id(600 + b * 10 + i),
                        "d000000000000001",
                        "",
                        "CLIENT",
                        "filler",
                        "catalog",
                        start,
                        MS,
                        200,
                    )
                })
                .collect()
        })
        .collect();
    let mut put = |batch: usize, slot: usize, trace: &str, service: &str, duration: i64, status| {
        let s = &mut batches[batch][slot];
        s.trace_id = trace.to_string();
        s.span_id = format!("e00000000000000{batch}");
        s.service = service.to_string();
        s.duration_nanos = duration;
        s.status_code = status;
    };
    // x: frontend in block 1, catalog failing in block 3.
    put(1, 0, &x, "frontend", MS, 200);
    put(3, 0, &x, "catalog", MS, 503);
    // y: frontend in block 2, a slow catalog span in block 4.
    put(2, 1, &y, "frontend", MS, 200);
    put(4, 1, &y, "catalog", 5 * SEC, 200);
    // z: one span in block 0 (retention deletes it), one in block 2.
    put(0, 2, &z, "frontend", MS, 200);
    put(2, 2, &z, "catalog", MS, 200);
    let batch = |spans: &Vec<v1::Span>| v1::TelemetryBatch {
        spans: spans.clone(),
        ..Default::default()
    };
    for (i, spans) in batches.iter().enumerate().take(4) {
        assert_eq!(
            report(&mut client, vec![batch(spans)]).await,
            10,
            "batch {i}"
        );
    }
    // Batch 1 again: nothing new.
    assert_eq!(report(&mut client, vec![batch(&batches[1])]).await, 0);
    // 40 spans, within the limit: retention leaves them all.
    let mut admin = server.admin().await;
    let reader = admin.clone();
    let get = |trace: String| {
        let mut admin = reader.clone();
        async move {
            match admin
                .get_trace(v1::GetTraceRequest { trace_id: trace })
                .await
            {
                Ok(t) => t.into_inner().spans.len(),
                Err(s) if s.code() == Code::NotFound => 0,
                Err(s) => panic!("GetTrace: {s:?}"),
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(z.clone()).await, 2, "both of z's spans, blocks 0 and 2");
    assert_eq!(report(&mut client, vec![batch(&batches[4])]).await, 10);
    // 50 spans: the oldest block (batch 0's ten) goes whole, and nothing else.
    eventually(
        "the oldest block deleted",
        Duration::from_secs(10),
        || async {
            let body = http_get(server.addr, "/metrics").await;
            (metric(&body, "quiver_telemetry_spans_deleted_total") == 10.0).then_some(())
        },
    )
    .await;
    let wide = v1::SearchTracesRequest {
        start: rfc3339(base - 60 * SEC),
        end: rfc3339(base + 6 * 60 * SEC),
        limit: 200,
        ..Default::default()
    };
    let kept = search(&mut admin, wide.clone()).await;
    // 40 spans in 38 traces: 35 fillers, x and y with two spans each, z with one left.
    assert_eq!(kept.len(), 38, "{kept:?}");
    for i in 0..10u32 {
        let batch0 = trace_id(600 + i);
        assert!(
            !kept.contains(&batch0),
            "trace {batch0} of the deleted block"
        );
    }
    assert_eq!(get(z.clone()).await, 1, "z's span in block 2 stays");
    assert_eq!(get(x.clone()).await, 2, "x across blocks 1 and 3");
    assert_eq!(get(y.clone()).await, 2, "y across blocks 2 and 4");
    let frontend_errors = search(
        &mut admin,
        v1::SearchTracesRequest {
            service: "frontend".into(),
            errors_only: true,
            ..wide.clone()
        },
    )
    .await;
    assert_eq!(frontend_errors, [x.as_str()]);
    let frontend_slow = search(
        &mut admin,
        v1::SearchTracesRequest {
            service: "frontend".into(),
            min_duration: "1s".into(),
            ..wide.clone()
        },
    )
    .await;
    assert_eq!(frontend_slow, [y.as_str()]);
    // Conditions hold on spans in the range: from just after x's frontend span (block 1) on,
    // x has an error but no frontend span in range.
    let after_frontend = v1::SearchTracesRequest {
        start: rfc3339(base + 90 * SEC),
        ..wide.clone()
    };
    let errors_only = v1::SearchTracesRequest {
        errors_only: true,
        ..after_frontend.clone()
    };
    assert_eq!(search(&mut admin, errors_only.clone()).await, [x.as_str()]);
    let frontend_errors = v1::SearchTracesRequest {
        service: "frontend".into(),
        ..errors_only
    };
    assert!(search(&mut admin, frontend_errors).await.is_empty());
    // The deleted block's spans are gone from the count the metric reports too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = http_get(server.addr, "/metrics").await;
    assert_eq!(metric(&body, "quiver_telemetry_spans_deleted_total"), 10.0);

    // x's frontend span again, in a new batch with a new span: the batch is new (2 stored),
    // but GetTrace shows every span once.
    let mut again = batches[1][0].clone();
    again.start_unix_nanos = base + 60 * SEC;
    let mut extra = again.clone();
    extra.span_id = "e0000000000000ff".into();
    extra.parent_span_id = again.span_id.clone();
    extra.start_unix_nanos += MS;
    assert_eq!(
        report(
            &mut client,
            vec![v1::TelemetryBatch {
                spans: vec![again, extra],
                ..Default::default()
            }]
        )
        .await,
        2
    );
    let spans = admin
        .get_trace(v1::GetTraceRequest {
            trace_id: x.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .spans;
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(
        ids,
        ["e000000000000001", "e0000000000000ff", "e000000000000003"]
    );
    let summary = search(&mut admin, wide).await;
    assert!(summary.contains(&x));
}

const BLOCK_FLAGS: &[&str] = &[
    "--trace-retention=1h",
    "--trace-max-spans=45",
    "--trace-sweep-interval=100ms",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_on_sqlite() {
    let db = SqliteTestDb::create();
    let server = TestServer::start_with(None, db.dir.path(), BLOCK_FLAGS).await;
    blocks(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_on_postgres() {
    let db = PgTestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(Some(&db.url), dir.path(), BLOCK_FLAGS).await;
    blocks(&server).await;
    server.stop().await;
}
