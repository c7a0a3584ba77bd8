//! The web console in a real headless Chromium against a real control plane on Postgres:
//! starts quiver-control serving the bundle embedded in its binary (the committed
//! `console/dist`; nothing is built), registers two endpoints the way proxies do, and runs
//! `console/e2e/console.test.mjs` (playwright-core). Every gRPC-web call the browser makes is
//! a real network call to this server.
//!
//! Needs node, Debian's chromium and `npm ci` in console/e2e; when any is missing the test
//! fails and says what to install (it never skips). `QUIVER_CONSOLE_SCREENSHOTS=DIR` also
//! writes the screenshots used in docs/console.md.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use common::mesh::{join, registration};
use common::{PgTestDb, REVIEWS_SERVICE, TestServer, doc};
use quiver_api::v1;
use quiver_tests::browser::{check_prerequisites, repo, run_e2e, show};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_works_in_a_real_browser() {
    let repo = repo();
    let e2e = repo.join("console/e2e");
    check_prerequisites(&e2e, "the console browser test");
    // (a) A control plane on Postgres serving the embedded console.
    let db = PgTestDb::create().await;
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        Some(&db.url),
        data.path(),
        &[
            "--lease-ttl",
            "600s",
            // The two endpoints below are made-up addresses registered from loopback.
            "--registration-exception=spiffe://mesh.local/ns/shop/sa/reviews=10.0.0.0/24",
        ],
    )
    .await;
    let mut admin = server.admin().await;
    admin
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .expect("apply the reviews service");
    // Two endpoints, registered over mTLS exactly as proxies do.
    let mut proxies = Vec::new();
    for (address, version) in [("10.0.0.1:15443", "v1"), ("10.0.0.2:15443", "v2")] {
        let proxy = join(&server, "shop", "reviews").await;
        proxy
            .client()
            .await
            .register(registration("reviews", address, version))
            .await
            .expect("register a workload");
        proxies.push(proxy);
    }
    let viewer = admin
        .create_api_token(v1::CreateApiTokenRequest {
            role: "viewer".into(),
            description: "console browser test".into(),
            ttl: String::new(),
        })
        .await
        .expect("viewer token")
        .into_inner()
        .token;

    // (b) The browser scenarios.
    let out = run_e2e(
        &e2e,
        "console.test.mjs",
        &[
            ("QUIVER_URL", &server.url),
            ("QUIVER_ADMIN_TOKEN", &server.admin),
            ("QUIVER_VIEWER_TOKEN", &viewer),
            ("QUIVERCTL", env!("CARGO_BIN_EXE_quiverctl")),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        show("node console.test.mjs", &out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("all console browser checks passed"),
        "{}",
        show("node console.test.mjs", &out)
    );
    drop(proxies);
    server.stop().await;
}
