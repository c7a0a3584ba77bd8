//! Every `/metrics` endpoint passes `promtool check metrics` (Prometheus' own linter): the
//! proxy's admin port after real traffic, and the control plane's API port.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::io::Write;
use std::process::{Command, Stdio};

use quiver_tests::client::get_text;
use quiver_tests::harness::Pair;
use quiver_tests::mesh::{ControlPlane, Db, admin_get};
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
