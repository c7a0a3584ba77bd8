//! The console's Traces and Topology pages in a real headless Chromium against the real demo:
//! `quiver-demo` on free ports (control plane on SQLite, four sidecars joined over
//! mTLS, four sample apps, 15 requests a second, the console served), so every span and edge
//! count the browser shows was recorded by a real proxy for a real request.
//!
//! Before the browser starts, the test asks the API itself (native gRPC) for the ground truth:
//! a complete frontend -> catalog -> ratings trace (GetTrace: its spans, parent links and
//! depths) and a service graph in which both calls have a nonzero rate. Then it runs
//! `console/e2e/traces.test.mjs` (playwright-core), which must find that trace by searching
//! for catalog, open it, and show exactly those spans in that tree; and must draw the three
//! services and both calls on the Topology page.
//!
//! Needs node, Debian's chromium and `npm ci` in console/e2e; when any is missing the test
//! fails and says what to install (it never skips). `QUIVER_CONSOLE_SCREENSHOTS=DIR` also
//! writes the Traces and Topology screenshots used in docs/console.md.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::demo::Demo;
use quiver_api::v1;
use quiver_tests::browser::{check_prerequisites, repo, run_e2e, show};

/// Four sidecars joining on a busy 2-core machine (debug build) takes a while.
const START: Duration = Duration::from_secs(180);
/// Proxies ship spans every second and edge counts every 10 s.
const DATA: Duration = Duration::from_secs(90);

/// `  console + API   http://127.0.0.1:34567/` and `  admin token     qvr_...`.
fn banner_value(line: &str, label: &str) -> Option<String> {
    let rest = line.trim().strip_prefix(label)?;
    Some(
        rest.split_whitespace()
            .next()?
            .trim_end_matches('/')
            .to_string(),
    )
}

/// Adds the demo's admin token to every call.
#[derive(Clone)]
struct AdminToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AdminToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Admin = v1::mesh_admin_client::MeshAdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AdminToken>,
>;

async fn admin_client(url: &str, token: &str) -> Admin {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("API URL")
        .connect()
        .await
        .expect("connect to the demo's API");
    let bearer = AdminToken(format!("Bearer {token}").parse().expect("token"));
    v1::mesh_admin_client::MeshAdminClient::with_interceptor(channel, bearer)
}

/// Each span's depth in the parent/child tree (0 for a span without a parent in the trace).
fn depths(spans: &[v1::Span]) -> BTreeMap<String, usize> {
    let parent: BTreeMap<&str, &str> = spans
        .iter()
        .map(|s| (s.span_id.as_str(), s.parent_span_id.as_str()))
        .collect();
    spans
        .iter()
        .map(|s| {
            let mut depth = 0;
            let mut at = s.parent_span_id.as_str();
            while let Some(p) = parent.get(at) {
                depth += 1;
                at = p;
                assert!(depth <= spans.len(), "a cycle of parent ids: {spans:#?}");
            }
            (s.span_id.clone(), depth)
        })
        .collect()
}

/// A trace of one demo request, complete: the shape a frontend -> catalog -> ratings request
/// takes through four proxies. Returns None while spans are still missing.
fn complete_request(trace: &v1::Trace) -> Option<()> {
    // (service that recorded it, kind, peer service), parent before child.
    const CHAIN: [(&str, &str, &str); 4] = [
        ("frontend", "CLIENT", "catalog"),
        ("catalog", "SERVER", "frontend"),
        ("catalog", "CLIENT", "ratings"),
        ("ratings", "SERVER", "catalog"),
    ];
    if trace.spans.len() < CHAIN.len() {
        return None;
    }
    assert_eq!(
        trace.spans.len(),
        CHAIN.len(),
        "one demo request is one span per proxy hop side: {trace:#?}"
    );
    let d = depths(&trace.spans);
    for (depth, (service, kind, peer)) in CHAIN.iter().enumerate() {
        let s = trace
            .spans
            .iter()
            .find(|s| d[&s.span_id] == depth)
            .unwrap_or_else(|| panic!("no span at depth {depth}: {trace:#?}"));
        assert_eq!(
            (s.service.as_str(), s.kind.as_str(), s.peer_service.as_str()),
            (*service, *kind, *peer),
            "span at depth {depth}: {trace:#?}"
        );
    }
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_topology_of_the_demo_in_a_real_browser() {
    let repo = repo();
    let e2e = repo.join("console/e2e");
    check_prerequisites(&e2e, "the console traces test");
    // (a) The demo, and its API address and admin token from its banner. The console it
    // serves is the bundle embedded in the binary: nothing is built first.
    let mut demo = tokio::task::block_in_place(|| Demo::start(&["--rate", "15"]));
    let url = tokio::task::block_in_place(|| {
        demo.until("the console + API line", START, |l| {
            banner_value(l, "console + API")
        })
    });
    let token = tokio::task::block_in_place(|| {
        demo.until("the admin token line", Duration::from_secs(5), |l| {
            banner_value(l, "admin token")
        })
    });
    let mut admin = admin_client(&url, &token).await;

    // (b) Ground truth from the API: a complete trace through catalog, a few seconds old so
    // every proxy has shipped its span, and a graph with both calls.
    let deadline = Instant::now() + DATA;
    let trace = loop {
        let found = admin
            .search_traces(v1::SearchTracesRequest {
                service: "catalog".into(),
                limit: 50,
                ..Default::default()
            })
            .await
            .expect("SearchTraces")
            .into_inner()
            .traces;
        let mut complete = None;
        // Newest first: skip the ones younger than 3 s.
        for t in found.iter().skip(4) {
            let full = admin
                .get_trace(v1::GetTraceRequest {
                    trace_id: t.trace_id.clone(),
                })
                .await
                .expect("GetTrace")
                .into_inner();
            if complete_request(&full).is_some() {
                complete = Some(full);
                break;
            }
        }
        if let Some(t) = complete {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no complete frontend -> catalog -> ratings trace within {DATA:?} ({} catalog \
             traces found); demo output:\n{}",
            found.len(),
            demo.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let d = depths(&trace.spans);
    let expected: Vec<serde_json::Value> = trace
        .spans
        .iter()
        .map(|s| {
            serde_json::json!({
                "spanId": s.span_id, "parentSpanId": s.parent_span_id, "depth": d[&s.span_id],
                "service": s.service, "kind": s.kind, "peerService": s.peer_service,
                "peerIdentity": s.peer_identity, "statusCode": s.status_code, "error": s.error,
                "attempt": s.attempt, "quicConnectionId": s.quic_connection_id,
                "endpoint": s.endpoint,
            })
        })
        .collect();
    println!(
        "trace {} has {} spans: {}",
        trace.trace_id,
        trace.spans.len(),
        serde_json::to_string(&expected).unwrap()
    );
    loop {
        let graph = admin
            .get_service_graph(v1::GetServiceGraphRequest {
                window: "5m".into(),
                namespace: String::new(),
            })
            .await
            .expect("GetServiceGraph")
            .into_inner();
        let rate = |from: &str, to: &str| {
            graph
                .edges
                .iter()
                .find(|e| e.source_service == from && e.destination_service == to)
                .map_or(0.0, |e| e.request_rate)
        };
        if rate("frontend", "catalog") > 0.0 && rate("catalog", "ratings") > 0.0 {
            println!("service graph: {graph:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no frontend -> catalog and catalog -> ratings edges within {DATA:?}: {graph:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // (d) The browser.
    let spans = serde_json::to_string(&expected).expect("JSON");
    let out = run_e2e(
        &e2e,
        "traces.test.mjs",
        &[
            ("QUIVER_URL", &url),
            ("QUIVER_ADMIN_TOKEN", &token),
            ("TRACE_ID", &trace.trace_id),
            ("TRACE_SPANS", &spans),
        ],
    )
    .await;
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("all traces browser checks passed"),
        "{}\ndemo output:\n{}",
        show("node traces.test.mjs", &out),
        demo.output()
    );
    demo.stop().await;
}
