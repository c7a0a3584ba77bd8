//! `quiver-demo demo`, the README's first command, run as a user would: the real binary
//! on free ports. Through the mesh it starts (four sidecars joined to the in-process control
//! plane, four sample apps), frontend's answers must come from both catalog versions in the
//! Route's 90/10 split, carry a rating fetched from ratings over gRPC, and name the SPIFFE ids
//! the sidecars proved with mTLS; then Ctrl-C (SIGINT) must stop everything with status 0
//! and leave no child process behind.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::demo::Demo;
use http_body_util::{BodyExt, Empty};
use quiver_demo::apps::FrontendReply;

/// Debug builds on a busy 2-core CI machine: four sidecars joining takes a while.
const START: Duration = Duration::from_secs(180);

/// `  catalog-v1  sidecar pid 1234    /tmp/.../logs/catalog-v1-sidecar.log`
fn child_pid(line: &str) -> Option<(String, u32)> {
    let t: Vec<&str> = line.split_whitespace().collect();
    match t.as_slice() {
        [name, "app" | "sidecar", "pid", pid, _log] => {
            Some((format!("{name} {}", t[1]), pid.parse().ok()?))
        }
        _ => None,
    }
}

/// Whether `pid` is still a process running our binary (not a reused pid).
fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("quiver-demo"))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_meshes_splits_90_10_and_stops_cleanly() {
    let mut demo =
        tokio::task::block_in_place(|| Demo::start(&["--rate", "20", "--report-every", "1s"]));

    // Startup: the banner lists every child, then names frontend's address.
    let frontend = tokio::task::block_in_place(|| {
        demo.until("banner naming frontend", START, |line| {
            let rest = line.trim().strip_prefix("frontend ")?;
            let url = rest.split_whitespace().next()?;
            url.starts_with("http://").then(|| url.to_string())
        })
    });
    let pids: Vec<(String, u32)> = demo.output().lines().filter_map(child_pid).collect();
    assert_eq!(
        pids.len(),
        8,
        "4 apps and 4 sidecars expected:\n{}",
        demo.output()
    );

    // 200 requests straight to frontend: each crossed two sidecar hops to catalog and two
    // more to ratings.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let (mut v1, mut v2) = (0u32, 0u32);
    for i in 0..200 {
        let resp = client
            .get(frontend.parse().unwrap())
            .await
            .unwrap_or_else(|e| panic!("request {i} to {frontend}: {e}"));
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            status.is_success(),
            "request {i}: frontend answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let reply: FrontendReply = serde_json::from_slice(&body).expect("frontend's JSON");
        let c = &reply.catalog;
        match c.version.as_str() {
            "v1" => v1 += 1,
            "v2" => v2 += 1,
            other => panic!("unknown catalog version {other:?}"),
        }
        // What the receiving sidecars proved with mTLS, as the apps saw it.
        assert_eq!(c.caller, "spiffe://mesh.local/ns/demo/sa/frontend");
        let rating = c
            .rating
            .as_ref()
            .unwrap_or_else(|| panic!("no rating from ratings: {:?}", c.rating_error));
        assert_eq!(rating.served_by, "ratings");
        assert_eq!(rating.caller, "spiffe://mesh.local/ns/demo/sa/catalog");
        assert!((3.0..=5.0).contains(&rating.stars));
    }
    // 90/10 over 200: v2 expects 20 (sd ~4.2); allow about 3.5 sd either way.
    assert!(
        (5..=35).contains(&v2),
        "v1 {v1} / v2 {v2} of 200 is not a 90/10 split"
    );

    // The demo's own generator sees both versions too.
    tokio::task::block_in_place(|| {
        demo.until(
            "tally line with both versions",
            Duration::from_secs(30),
            |line| {
                let t: Vec<&str> = line.split_whitespace().collect();
                let pos = t.iter().position(|w| *w == "catalog")?;
                let share = |v: &str| -> Option<f64> {
                    let i = t[pos..].iter().position(|w| *w == v)? + pos;
                    t.get(i + 1)?.trim_end_matches('%').parse().ok()
                };
                (share("v1")? > 50.0 && share("v2")? > 0.0).then_some(())
            },
        );
    });

    // Ctrl-C: status 0, every child gone.
    demo.stop().await;
    for (name, pid) in &pids {
        assert!(
            !alive(*pid),
            "{name} (pid {pid}) outlived the demo:\n{}",
            demo.output()
        );
    }
    let out = demo.output();
    assert_eq!(
        out.matches("  stopped ").count(),
        8,
        "every child reported stopped:\n{out}"
    );
}
