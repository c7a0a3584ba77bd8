//! Every `/metrics` endpoint passes `promtool check metrics` (Prometheus' own linter): the
//! proxy's admin port after real traffic, and the control plane's API port. Label cardinality
//! stays bounded whatever Hosts an app names: on the proxy's `/metrics`, and in the edge
//! statistics a joined proxy ships to the control plane.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::io::Write;
use std::process::{Command, Stdio};

use std::collections::BTreeMap;
use std::time::Duration;

use quiver_api::v1;
use quiver_tests::client::get_text;
use quiver_tests::eventually;
use quiver_tests::harness::Pair;
use quiver_tests::mesh::{ControlPlane, Db, MeshProxy, ProxySpec, admin_get};
use quiver_tests::pki::temp_dir;

const INSTALL: &str =
    "promtool is required: `apt-get install -y --no-install-recommends prometheus`";

/// Run `promtool check metrics` on `text`: (passed, what it said).
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}\n{INSTALL}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_metrics_pass_promtool_after_traffic() {
    let pair = Pair::start().await;
    for path in ["/hello", "/status/503", "/status/404"] {
        let (code, _) = get_text(pair.http1(), path).await;
        assert!(code > 0);
    }
    for p in [&pair.a, &pair.b] {
        let (status, text) = admin_get(p.bound.admin, "/metrics").await.expect("metrics");
        assert_eq!(status, 200);
        assert!(text.contains("quiver_requests_total"), "{text}");
        let (ok, said) = promtool(&text);
        assert!(
            ok,
            "promtool refused the proxy's metrics:\n{said}\n---\n{text}"
        );
    }
    // The linter itself refuses bad exposition (so a pass above means something).
    let (ok, _) = promtool("# TYPE bad_counter counter\nbad_counter 1\n");
    assert!(!ok, "promtool accepted a counter without _total");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_metrics_pass_promtool() {
    let dir = temp_dir("cp-metrics");
    let db = Db::sqlite(&dir);
    let cp = ControlPlane::start(&db, &dir, &[]).await;
    // Some API calls first, so per-method families have samples.
    cp.write_ca(&dir).await;
    cp.join_token("default", "web", 1, "1h").await;
    let (status, text) = admin_get(cp.api, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE"), "{text}");
    let (ok, said) = promtool(&text);
    assert!(
        ok,
        "promtool refused the control plane's metrics:\n{said}\n---\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_unknown_hosts_make_one_series() {
    let pair = Pair::start().await;
    let proxy = pair.http_proxy();
    let client = quiver_tests::client::client::<http_body_util::Empty<bytes::Bytes>>(false);
    let hosts = 10_000;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let client = client.clone();
        tasks.spawn(async move {
            for i in (worker..hosts).step_by(8) {
                let req = http::Request::get(format!("http://{proxy}/"))
                    .header("host", format!("nosuch{i}"))
                    .body(http_body_util::Empty::new())
                    .unwrap();
                let resp = client.request(req).await.unwrap();
                assert_eq!(resp.status(), 404);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let (_, text) = admin_get(pair.a.bound.admin, "/metrics")
        .await
        .expect("metrics");
    let leaked: Vec<_> = text
        .lines()
        .filter(|l| l.contains("nosuch"))
        .take(3)
        .collect();
    assert!(leaked.is_empty(), "a Host became a label: {leaked:?}");
    let unknown = text
        .lines()
        .filter(|l| l.starts_with("quiver_requests_total{") && l.contains("service=\"(unknown)\""))
        .collect::<Vec<_>>();
    let all: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("quiver_requests_total"))
        .collect();
    assert_eq!(unknown.len(), 1, "{all:?}");
    assert!(unknown[0].ends_with(&format!(" {hosts}")), "{unknown:?}");
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series < 500, "{series} series after {hosts} hosts");
}

/// The edge statistics a joined proxy ships to the control plane (what canaries judge and the
/// service graph draws) name only Services of the mesh: 2,000 distinct unknown Hosts from one
/// app reach the store as one destination, `(unknown)`, counted in full, and no Host appears
/// in the store, the service graph or the control plane's `/metrics`; a known destination is
/// still counted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_unknown_hosts_reach_the_control_plane_as_one_edge() {
    quiver_tests::init_log();
    let dir = temp_dir("edge-cardinality");
    let db = Db::postgres().await;
    let Db::Postgres(scratch) = &db else {
        unreachable!("Db::postgres makes a Postgres database")
    };
    let cp = ControlPlane::start(&db, &dir, &[]).await;
    let app = quiver_tests::apps::start_http_echo().await;
    cp.apply(&format!(
        r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http1, targetPort: 1}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, protocol: http1, targetPort: {}}}]
"#,
        app.port()
    ))
    .await;
    let ca = cp.write_ca(&dir).await;
    let _reviews = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        ProxySpec {
            service: "reviews",
            token: cp.join_token("default", "reviews", 1, "10m").await,
            labels: &[],
            outbound: &[],
            extra: &[],
        },
    )
    .await;
    let web = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        ProxySpec {
            service: "web",
            token: cp.join_token("default", "web", 1, "10m").await,
            labels: &[],
            outbound: &[("reviews", "http1")],
            extra: &["--edge-interval", "1s"],
        },
    )
    .await;
    let admin = web.admin;
    eventually(
        "web sees the reviews endpoint",
        Duration::from_secs(20),
        || async move {
            let (_, body) = admin_get(admin, "/config").await.ok()?;
            let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
            let eps = doc["snapshot"]["services"]["reviews"]["endpoints"].as_array()?;
            (eps.len() == 1).then_some(())
        },
    )
    .await;

    // The known destination, through the outbound listener.
    let known: i64 = 40;
    for _ in 0..known {
        let (code, _) = get_text(web.outbound[0], "/known").await;
        assert_eq!(code, 200);
    }
    // An SSRF-like app: every request names another Host, through the HTTP proxy listener.
    // Each is a DNS label, so it could be a Service name: the proxy looks it up and counts it.
    let hosts: i64 = 2_000;
    let proxy = web.http_proxy;
    let client = quiver_tests::client::client::<http_body_util::Empty<bytes::Bytes>>(false);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let client = client.clone();
        tasks.spawn(async move {
            for i in (worker..hosts).step_by(8) {
                let req = http::Request::get(format!("http://{proxy}/"))
                    .header("host", format!("nosuch{i}"))
                    .body(http_body_util::Empty::new())
                    .unwrap();
                let resp = client.request(req).await.unwrap();
                assert_eq!(resp.status(), 404);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }

    // The store: requests per edge web reported, summed over its 1 s intervals.
    let pool = sqlx::PgPool::connect(&scratch.url).await.unwrap();
    let stored = eventually(
        "every request in the stored edge statistics",
        Duration::from_secs(30),
        || {
            let pool = pool.clone();
            async move {
                let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
                    "SELECT source_service, destination_service, \
                     CAST(SUM(requests) AS BIGINT), CAST(SUM(errors) AS BIGINT) \
                     FROM edge_stats GROUP BY source_service, destination_service",
                )
                .fetch_all(&pool)
                .await
                .ok()?;
                let total: i64 = rows.iter().map(|r| r.2).sum();
                (total >= known + hosts).then(|| {
                    rows.into_iter()
                        .map(|(s, d, n, e)| ((s, d), (n, e)))
                        .collect::<BTreeMap<_, _>>()
                })
            }
        },
    )
    .await;
    let destinations: Vec<_> = stored.keys().map(|(_, d)| d.as_str()).collect();
    assert!(
        destinations.len() <= 2,
        "{} destinations stored, e.g. {:?}",
        destinations.len(),
        &destinations[..5]
    );
    let edge = |d: &str| ("web".to_string(), d.to_string());
    let expected = BTreeMap::from([
        (edge("(unknown)"), (hosts, hosts)),
        (edge("reviews"), (known, 0)),
    ]);
    assert_eq!(
        stored, expected,
        "stored edges (source, destination) -> (requests, errors)"
    );
    let (leaked,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM edge_stats \
         WHERE destination_service LIKE '%nosuch%' OR destination_subset LIKE '%nosuch%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0, "a Host was stored as an edge");
    pool.close().await;

    // The API's view of the same edges: one node for every unknown destination.
    let graph = cp
        .admin()
        .await
        .get_service_graph(v1::GetServiceGraphRequest {
            window: "5m".into(),
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut edges: Vec<_> = graph
        .edges
        .iter()
        .map(|e| (e.source_service.as_str(), e.destination_service.as_str()))
        .collect();
    edges.sort_unstable();
    assert_eq!(
        edges,
        [("web", "(unknown)"), ("web", "reviews")],
        "{graph:?}"
    );
    assert!(
        graph.nodes.iter().all(|n| !n.service.contains("nosuch")),
        "{graph:?}"
    );
    let (_, text) = admin_get(cp.api, "/metrics").await.expect("metrics");
    let leaked: Vec<_> = text
        .lines()
        .filter(|l| l.contains("nosuch"))
        .take(3)
        .collect();
    assert!(
        leaked.is_empty(),
        "a Host reached the control plane's metrics: {leaked:?}"
    );
}
