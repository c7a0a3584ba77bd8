//! `quiverctl canary pause|resume|promote|abort` and `get canary -o wide` with the real binary
//! against a real server (SQLite) whose controller has started the canary.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::time::Duration;

use common::ctl::Ctl;
use common::{REVIEWS_SERVICE, SqliteTestDb, TestServer};

const CANARY: &str = "apiVersion: quiver.dev/v1
kind: Canary
metadata: {name: reviews-v2, namespace: shop}
spec:
  service: reviews
  stableSubset: v1
  canarySubset: v2
  steps: [10, 50, 100]
  interval: 10m
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_controls_a_canary_with_quiverctl() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let ctl = Ctl::new(&server);
    ctl.ok_stdin(
        &["apply", "-f", "-"],
        format!("{REVIEWS_SERVICE}---\n{CANARY}"),
    )
    .await;
    // The controller starts it within a tick or two.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let table = ctl.ok(&["get", "canary", "reviews-v2", "-n", "shop"]).await;
        if table.contains("Progressing") {
            assert!(table.contains("10%"), "{table}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never started:\n{table}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = ctl
        .ok(&[
            "canary",
            "pause",
            "reviews-v2",
            "-n",
            "shop",
            "--reason",
            "freeze",
        ])
        .await;
    assert!(
        out.contains("canary shop/reviews-v2 paused: Paused at 10%"),
        "{out}"
    );
    let wide = ctl
        .ok(&["get", "canary", "reviews-v2", "-n", "shop", "-o", "wide"])
        .await;
    for want in ["LAST-CHECK", "Paused", "1/3", "paused at 10%: freeze"] {
        assert!(wide.contains(want), "{want:?} not in:\n{wide}");
    }
    let out = ctl
        .ok(&["canary", "promote", "reviews-v2", "-n", "shop"])
        .await;
    assert!(out.contains("Promoted at 100%"), "{out}");
    let out = ctl
        .ok(&["canary", "abort", "reviews-v2", "-n", "shop"])
        .await;
    assert!(out.contains("Aborted at 0%"), "{out}");
    let err = ctl
        .fails(&["canary", "resume", "reviews-v2", "-n", "shop"])
        .await;
    assert!(
        err.contains("cannot resume a canary that is Aborted"),
        "{err}"
    );
    let err = ctl.fails(&["canary", "abort", "nope", "-n", "shop"]).await;
    assert!(err.contains("not found"), "{err}");
    // The history is in the document, for get -o yaml and the console.
    let yaml = ctl
        .ok(&["get", "canary", "reviews-v2", "-n", "shop", "-o", "yaml"])
        .await;
    for phase in [
        "phase: Progressing",
        "phase: Paused",
        "phase: Promoted",
        "phase: Aborted",
    ] {
        assert!(yaml.contains(phase), "{phase} not in:\n{yaml}");
    }
    // An apply of the same spec keeps the controller's status.
    ctl.ok_stdin(&["apply", "-f", "-"], CANARY.into()).await;
    let table = ctl.ok(&["get", "canary", "reviews-v2", "-n", "shop"]).await;
    assert!(table.contains("Aborted"), "{table}");
    server.stop().await;
}
