//! The demo's canary story, as the banner tells a user to try it, end to end: `quiver-demo`
//! on free ports (its sidecars report edge counts every 2 s), its own `canary.yaml` applied
//! (catalog v1 -> v2, 10 s steps) must walk its steps on the real traffic and reach
//! Promoted; then, deleted, with catalog v2 told to fail 30% of its requests
//! (`POST /demo/misbehave` on its own port) and applied again, it must roll back
//! (RolledBack, weight 0, the success rate named).
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::{self, Admin, banner_value};
use common::demo::Demo;
use http_body_util::{BodyExt, Full};
use quiver_api::v1;

/// Four sidecars joining on a busy 2-core machine (debug build) takes a while.
const START: Duration = Duration::from_secs(180);
/// Four 10 s steps, plus the first step's wait for enough traffic.
const PROMOTE: Duration = Duration::from_secs(120);
/// Two failed 10 s checks.
const ROLL_BACK: Duration = Duration::from_secs(90);

async fn status(admin: &mut Admin) -> Option<v1::CanaryStatus> {
    let c = admin
        .get_canary(v1::GetRequest {
            namespace: "demo".into(),
            name: "catalog-v2".into(),
        })
        .await
        .ok()?
        .into_inner();
    Some(c.status.unwrap_or_default())
}

/// Poll the canary until its phase is `want`; fails at once on `never`. The weights it went
/// through, in order.
async fn until_phase(
    admin: &mut Admin,
    demo: &Demo,
    want: &str,
    never: &str,
    timeout: Duration,
) -> (v1::CanaryStatus, Vec<u32>) {
    let deadline = Instant::now() + timeout;
    let mut weights = Vec::new();
    let mut last = String::new();
    loop {
        if let Some(s) = status(admin).await {
            let line = format!("{} {}% {}", s.phase, s.canary_weight, s.message);
            if line != last {
                eprintln!("canary: {line}");
                last = line;
            }
            if weights.last() != Some(&s.canary_weight) && !s.phase.is_empty() {
                weights.push(s.canary_weight);
            }
            if s.phase == want {
                return (s, weights);
            }
            assert_ne!(s.phase, never, "{s:#?}\n{}", demo.output());
        }
        assert!(
            Instant::now() < deadline,
            "the canary is not {want} within {timeout:?} (last: {last}); demo output:\n{}",
            demo.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn misbehave(v2: &str, body: &'static str) {
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("{v2}/demo/misbehave"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = http.request(req).await.expect("POST /demo/misbehave");
    let status = resp.status();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&text)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_canary_promotes_and_a_misbehaving_v2_rolls_back() {
    let mut demo = tokio::task::block_in_place(|| Demo::start(&[]));
    let pick = |label: &'static str| move |line: &str| banner_value(line, label);
    let (api, token, v2, canary) = tokio::task::block_in_place(|| {
        let api = demo.until("the API's URL", START, pick("console + API"));
        let token = demo.until("the admin token", START, pick("admin token"));
        let v2 = demo.until("catalog v2's port", START, pick("catalog v2 app"));
        let canary = demo.until("canary.yaml", START, pick("canary"));
        (api, token, v2, PathBuf::from(canary))
    });
    assert!(v2.starts_with("http://127.0.0.2:"), "{v2}");
    let conn = quiver_control::cli::Connection {
        server: Some(api.clone()),
        token: Some(token.clone()),
        ca_file: None,
        context: None,
    };
    let mut admin = admin::connect(&api, &token).await;

    // Healthy v2: every step passes.
    let started = Instant::now();
    quiver_control::cli::resources::apply(&conn, std::slice::from_ref(&canary))
        .await
        .expect("apply canary.yaml");
    let (promoted, weights) =
        until_phase(&mut admin, &demo, "Promoted", "RolledBack", PROMOTE).await;
    eprintln!("promoted after {:?}", started.elapsed());
    assert_eq!(promoted.canary_weight, 100);
    assert!(
        weights.iter().any(|w| (1..100).contains(w)),
        "no step between 0 and 100: {weights:?}"
    );
    assert!(
        promoted.checks.iter().any(|c| c.result == "Passed"),
        "{promoted:#?}"
    );

    // Start over with v2 failing 30% of its requests: rolled back.
    admin
        .delete_canary(v1::DeleteRequest {
            namespace: "demo".into(),
            name: "catalog-v2".into(),
            resource_version: 0,
        })
        .await
        .expect("delete the canary");
    misbehave(&v2, r#"{"errorPercent": 30, "extraLatency": "200ms"}"#).await;
    let started = Instant::now();
    quiver_control::cli::resources::apply(&conn, std::slice::from_ref(&canary))
        .await
        .expect("apply canary.yaml again");
    let (rolled_back, _) =
        until_phase(&mut admin, &demo, "RolledBack", "Promoted", ROLL_BACK).await;
    let failed: u64 = rolled_back
        .checks
        .iter()
        .filter_map(|c| c.canary)
        .map(|m| m.errors)
        .sum();
    eprintln!(
        "rolled back after {:?}; the canary failed {failed} requests in its checks",
        started.elapsed()
    );
    assert_eq!(rolled_back.canary_weight, 0);
    assert!(
        rolled_back.message.contains("success rate"),
        "{}",
        rolled_back.message
    );

    misbehave(&v2, r#"{"errorPercent": 0}"#).await;
    demo.stop().await;
}
