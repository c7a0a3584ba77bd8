//! The canary controller through a real mesh: a `quiver-control` process and three
//! `quiver-proxy` processes (web calls reviews; reviews v1 and v2 are two workloads of one
//! Service, their apps on one port of two loopback hosts). The controller judges each step
//! from the proxies' real request counts: a healthy v2 is promoted step by step, a v2 that
//! fails 30% of its requests is rolled back and then gets nothing, and an operator's pause
//! and abort take effect at once.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use quiver_api::v1;
use quiver_tests::apps::{Behaviour, serve_http_echo_with};
use quiver_tests::eventually;
use quiver_tests::mesh::{ControlPlane, Db, MeshProxy, ProxySpec};
use quiver_tests::pki::temp_dir;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

const MESH: &str = r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http1, targetPort: 1}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  ports: [{name: http, port: 9080, protocol: http1, targetPort: PORT}]
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

/// Fast steps: 3 s each, judged from 1 s edge reports.
const CANARY: &str = r#"
apiVersion: quiver.dev/v1
kind: Canary
metadata: {name: reviews-v2, namespace: default}
spec:
  service: reviews
  stableSubset: v1
  canarySubset: v2
  steps: [20, 50, 100]
  interval: 3s
  threshold: 2
  minRequests: 10
  successCriteria: {minSuccessRate: 95}
"#;

/// Apps tagged `{tag}-v1` and `{tag}-v2` on one port of two loopback hosts; v2 behaves as
/// `v2`. Returns the port.
async fn apps(hosts: [IpAddr; 2], tag: &str, v2: Behaviour) -> u16 {
    for _ in 0..20 {
        let first = serve_http_echo_with(
            SocketAddr::new(hosts[0], 0),
            Behaviour {
                tag: format!("{tag}-v1"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let b = Behaviour {
            tag: format!("{tag}-v2"),
            ..v2.clone()
        };
        if serve_http_echo_with(SocketAddr::new(hosts[1], first.port()), b)
            .await
            .is_ok()
        {
            return first.port();
        }
    }
    panic!("no port free on both app hosts");
}

struct Mesh {
    cp: ControlPlane,
    web: MeshProxy,
    _reviews: Vec<MeshProxy>,
}

async fn mesh(name: &str, hosts: [IpAddr; 2], v2: Behaviour) -> Mesh {
    quiver_tests::init_log();
    let dir = temp_dir(name);
    let db = Db::sqlite(&dir);
    let cp = ControlPlane::start(&db, &dir, &[]).await;
    let port = apps(hosts, name, v2).await;
    cp.apply(&MESH.replace("PORT", &port.to_string())).await;
    let ca = cp.write_ca(&dir).await;
    let mut reviews = Vec::new();
    for (host, version) in hosts.iter().zip(["v1", "v2"]) {
        let host = host.to_string();
        reviews.push(
            MeshProxy::start(
                &cp,
                &ca,
                &dir,
                ProxySpec {
                    service: "reviews",
                    token: cp.join_token("default", "reviews", 1, "10m").await,
                    labels: &[("version", version)],
                    outbound: &[],
                    extra: &["--app-host", &host],
                },
            )
            .await,
        );
    }
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
    Mesh {
        cp,
        web,
        _reviews: reviews,
    }
}

/// Requests from web to reviews until stopped: answers counted by the app that gave them
/// (`x-echo-tag`, or the status when none did).
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BTreeMap<String, u64>>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let client: Client = quiver_tests::client::client(false);
            let mut seen = BTreeMap::new();
            while !flag.load(Ordering::Relaxed) {
                let key = match client
                    .get(format!("http://{addr}/reviews").parse().unwrap())
                    .await
                {
                    Ok(r) => r
                        .headers()
                        .get("x-echo-tag")
                        .and_then(|v| v.to_str().ok())
                        .filter(|_| r.status().is_success())
                        .map_or_else(|| format!("status {}", r.status()), String::from),
                    Err(e) => format!("error {e}"),
                };
                *seen.entry(key).or_insert(0) += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        });
        Self { stop, task }
    }

    async fn stop(self) -> BTreeMap<String, u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

async fn canary(cp: &ControlPlane) -> v1::Canary {
    cp.admin()
        .await
        .get_canary(v1::GetRequest {
            namespace: "default".into(),
            name: "reviews-v2".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_phase(cp: &ControlPlane, phase: &str, within: Duration) -> v1::Canary {
    let last = std::sync::Mutex::new(String::new());
    let found = tokio::time::timeout(within, async {
        loop {
            let c = canary(cp).await;
            let status = c.status.clone().unwrap_or_default();
            *last.lock().unwrap() = format!("{status:#?}");
            if status.phase == phase {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "the canary did not reach {phase} within {within:?}; last status:\n{}",
            last.lock().unwrap()
        )
    })
}

/// Of `n` requests to reviews, how many each app answered.
async fn split(addr: SocketAddr, n: usize) -> BTreeMap<String, u64> {
    let client: Client = quiver_tests::client::client(false);
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = client
            .get(format!("http://{addr}/after").parse().unwrap())
            .await
            .unwrap();
        let tag = r.headers().get("x-echo-tag").map_or_else(
            || format!("status {}", r.status()),
            |v| v.to_str().unwrap().to_string(),
        );
        *seen.entry(tag).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_is_promoted_step_by_step_from_real_traffic() {
    let hosts = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 31, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 31, 2)),
    ];
    let m = mesh("canary-ok", hosts, Behaviour::default()).await;
    let traffic = Traffic::start(m.web.outbound[0]);
    let applied = Instant::now();
    m.cp.apply(CANARY).await;
    // 3 steps of 3 s; the bound leaves room for edge reports (1 s) and a loaded machine.
    let c = wait_phase(&m.cp, "Promoted", Duration::from_secs(60)).await;
    let took = applied.elapsed();
    let seen = traffic.stop().await;
    println!("promoted {took:?} after the apply; traffic: {seen:?}");
    let status = c.status.unwrap();
    assert_eq!(status.canary_weight, 100);
    // Every step was judged on real requests and passed.
    let passed: Vec<u32> = status
        .checks
        .iter()
        .filter(|c| c.result == "Passed")
        .map(|c| c.weight)
        .collect();
    assert_eq!(passed, [20, 50, 100], "{:#?}", status.checks);
    for check in status.checks.iter().filter(|c| c.result == "Passed") {
        let canary = check.canary.unwrap();
        assert!(canary.requests >= 10, "{check:?}");
        assert_eq!(canary.success_rate, 100.0);
        // The split observed over the step follows its weight (a report interval that
        // straddles the step's start carries a little of the step before: up to ~17% of a
        // step's requests on a 2-core machine with other builds running, seen in CI).
        // Wrong weights would miss by 30 points or more (the steps are 20, 50, 100).
        let stable = check.stable.unwrap();
        let share = 100.0 * canary.requests as f64 / (canary.requests + stable.requests) as f64;
        assert!(
            (share - f64::from(check.weight)).abs() <= 20.0,
            "step at {}%: the canary got {share:.1}% of {} requests",
            check.weight,
            canary.requests + stable.requests
        );
    }
    let phases: Vec<&str> = status.events.iter().map(|e| e.phase.as_str()).collect();
    assert_eq!(
        phases,
        ["Progressing", "Progressing", "Progressing", "Promoted"]
    );
    assert!(
        !seen
            .keys()
            .any(|k| k.starts_with("status") || k.starts_with("error")),
        "{seen:?}"
    );
    // Promoted: everything goes to v2.
    let after = split(m.web.outbound[0], 100).await;
    assert_eq!(after.get("canary-ok-v2"), Some(&100), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_is_rolled_back_and_then_gets_nothing() {
    let hosts = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 32, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 32, 2)),
    ];
    let failing = Behaviour {
        fail_percent: 30,
        ..Default::default()
    };
    let m = mesh("canary-bad", hosts, failing).await;
    let traffic = Traffic::start(m.web.outbound[0]);
    m.cp.apply(CANARY).await;
    let c = wait_phase(&m.cp, "RolledBack", Duration::from_secs(60)).await;
    let seen = traffic.stop().await;
    let status = c.status.unwrap();
    println!("rolled back: {}; traffic: {seen:?}", status.message);
    assert_eq!(status.canary_weight, 0);
    assert!(
        status.message.contains("success rate") && status.message.contains("< 95%"),
        "{}",
        status.message
    );
    assert!(
        status.message.contains("2 checks in a row"),
        "{}",
        status.message
    );
    // It never got past the first step: the failed requests are bounded by 20% of traffic.
    assert!(
        status.checks.iter().all(|c| c.weight == 20),
        "{:#?}",
        status.checks
    );
    let failed = seen
        .get("status 503 Service Unavailable")
        .copied()
        .unwrap_or(0);
    let total: u64 = seen.values().sum();
    assert!(
        failed * 100 <= total * 20,
        "{failed} of {total} requests failed: more than the first step's share"
    );
    // After the rollback nothing reaches v2.
    let after = split(m.web.outbound[0], 100).await;
    assert_eq!(after.get("canary-bad-v1"), Some(&100), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_pauses_and_aborts_a_running_canary() {
    let hosts = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 33, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 33, 2)),
    ];
    let m = mesh("canary-ops", hosts, Behaviour::default()).await;
    // Slow steps: nothing moves on its own during the test.
    m.cp.apply(&CANARY.replace("interval: 3s", "interval: 10m"))
        .await;
    wait_phase(&m.cp, "Progressing", Duration::from_secs(20)).await;
    let mut admin = m.cp.admin().await;
    let req = |reason: &str| v1::CanaryActionRequest {
        namespace: "default".into(),
        name: "reviews-v2".into(),
        reason: reason.into(),
    };
    let paused = admin
        .pause_canary(req("holiday freeze"))
        .await
        .unwrap()
        .into_inner();
    let status = paused.status.unwrap();
    assert_eq!(
        (status.phase.as_str(), status.canary_weight),
        ("Paused", 20)
    );
    // Pausing twice says why not.
    let err = admin.pause_canary(req("")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("Paused"), "{}", err.message());
    // The paused weight is what the caller's proxy runs: about 20% to v2.
    let out = m.web.outbound[0];
    eventually(
        "the 20% split is in effect",
        Duration::from_secs(20),
        || async move {
            let s = split(out, 200).await;
            let v2 = s.get("canary-ops-v2").copied().unwrap_or(0);
            (20..=70).contains(&v2).then_some(())
        },
    )
    .await;
    let aborted = admin
        .abort_canary(req("bad release"))
        .await
        .unwrap()
        .into_inner();
    let status = aborted.status.unwrap();
    assert_eq!(
        (status.phase.as_str(), status.canary_weight),
        ("Aborted", 0)
    );
    assert!(
        status.message.ends_with(": bad release"),
        "{}",
        status.message
    );
    eventually(
        "all traffic back to v1",
        Duration::from_secs(20),
        || async move {
            let s = split(out, 100).await;
            (s.get("canary-ops-v1") == Some(&100)).then_some(())
        },
    )
    .await;
    let events: Vec<&str> = status.events.iter().map(|e| e.phase.as_str()).collect();
    assert_eq!(events, ["Progressing", "Paused", "Aborted"]);
    // An unknown canary is NOT_FOUND; a viewer cannot act (the API's roles).
    let err = admin
        .abort_canary(v1::CanaryActionRequest {
            namespace: "default".into(),
            name: "nope".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_drive_a_canary_once_and_a_killed_one_is_taken_over() {
    quiver_tests::init_log();
    let dir = temp_dir("canary-replicas");
    let db = Db::postgres().await;
    let mut a = ControlPlane::start(&db, &dir, &[]).await;
    let b = ControlPlane::start(&db, &dir, &[]).await;
    let hosts = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 34, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 34, 2)),
    ];
    let port = apps(hosts, "canary-ha", Behaviour::default()).await;
    a.apply(&MESH.replace("PORT", &port.to_string())).await;
    let ca = a.write_ca(&dir).await;
    // The reviews proxies follow replica B, web follows A (killed below).
    let mut reviews = Vec::new();
    for (host, version) in hosts.iter().zip(["v1", "v2"]) {
        let host = host.to_string();
        reviews.push(
            MeshProxy::start(
                &b,
                &ca,
                &dir,
                ProxySpec {
                    service: "reviews",
                    token: b.join_token("default", "reviews", 1, "10m").await,
                    labels: &[("version", version)],
                    outbound: &[],
                    extra: &["--app-host", &host],
                },
            )
            .await,
        );
    }
    let web = MeshProxy::start(
        &a,
        &ca,
        &dir,
        ProxySpec {
            service: "web",
            token: a.join_token("default", "web", 1, "10m").await,
            labels: &[],
            outbound: &[("reviews", "http1")],
            extra: &["--edge-interval", "1s"],
        },
    )
    .await;
    let traffic = Traffic::start(web.outbound[0]);
    a.apply(&CANARY.replace("steps: [20, 50, 100]", "steps: [20, 40, 60, 80, 100]"))
        .await;
    // Past the first step, then the control plane web reports to dies and comes back.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = canary(&b).await.status.unwrap_or_default();
        if status.current_step >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "stuck at step 1: {status:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.restart().await;
    let c = wait_phase(&b, "Promoted", Duration::from_secs(120)).await;
    traffic.stop().await;
    let status = c.status.unwrap();
    // Every step judged and passed exactly once, in order: no step was taken twice by two
    // drivers, none was skipped across the kill.
    let passed: Vec<u32> = status
        .checks
        .iter()
        .filter(|c| c.result == "Passed")
        .map(|c| c.weight)
        .collect();
    assert_eq!(passed, [20, 40, 60, 80, 100], "{:#?}", status.checks);
    let steps: Vec<&str> = status.events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        steps,
        [
            "analysis started; step 1 of 5 (20%)",
            "step 1 passed; step 2 of 5 (40%)",
            "step 2 passed; step 3 of 5 (60%)",
            "step 3 passed; step 4 of 5 (80%)",
            "step 4 passed; step 5 of 5 (100%)",
            "all 5 steps passed: all traffic to the canary subset",
        ],
        "one event per step and the promotion"
    );
    assert!(status.driver.starts_with("replica-"), "{}", status.driver);
}

/// A webhook endpoint: `/confirm` answers 403 until `approve` is set, then 200; every body
/// posted to `/events` is kept.
struct Hooks {
    addr: SocketAddr,
    approve: Arc<AtomicBool>,
    events: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

async fn hooks() -> Hooks {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let approve = Arc::new(AtomicBool::new(false));
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (a, e) = (approve.clone(), events.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (a, e) = (a.clone(), e.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (a, e) = (a.clone(), e.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let status = match path.as_str() {
                                "/confirm" if a.load(Ordering::Relaxed) => 200,
                                "/confirm" => 403,
                                "/events" => {
                                    e.lock()
                                        .unwrap()
                                        .push(serde_json::from_slice(&body).unwrap());
                                    204
                                }
                                _ => 404,
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Empty::<Bytes>::new())
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Hooks {
        addr,
        approve,
        events,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusing_confirm_promotion_hook_holds_the_last_step_until_it_agrees() {
    let hosts = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 35, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 35, 2)),
    ];
    let m = mesh("canary-hooks", hosts, Behaviour::default()).await;
    let h = hooks().await;
    let traffic = Traffic::start(m.web.outbound[0]);
    let spec = format!(
        "{CANARY}  webhooks:\n  - {{name: approve, type: confirm-promotion, url: 'http://{a}/confirm', timeout: 2s}}\n  - {{name: chat, type: event, url: 'http://{a}/events', metadata: {{channel: releases}}}}\n",
        a = h.addr
    );
    m.cp.apply(&spec).await;
    // The last step passes its checks but promotion waits for the hook.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let status = canary(&m.cp).await.status.unwrap_or_default();
        if status.message.contains("promotion waits") {
            break status;
        }
        assert_ne!(
            status.phase, "Promoted",
            "promoted without the hook: {status:#?}"
        );
        assert!(
            Instant::now() < deadline,
            "never reached the hold: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (held.phase.as_str(), held.canary_weight),
        ("Progressing", 100)
    );
    assert!(
        held.message
            .contains("confirm-promotion webhook approve: HTTP 403"),
        "{}",
        held.message
    );
    // Held a while longer: still not promoted.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(canary(&m.cp).await.status.unwrap().phase, "Progressing");
    h.approve.store(true, Ordering::Relaxed);
    wait_phase(&m.cp, "Promoted", Duration::from_secs(30)).await;
    traffic.stop().await;
    // The event hook heard every transition, with the metadata it was given.
    let events = h.events.lock().unwrap().clone();
    let phases: Vec<&str> = events.iter().filter_map(|e| e["phase"].as_str()).collect();
    assert_eq!(
        phases,
        ["Progressing", "Progressing", "Progressing", "Promoted"],
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["metadata"]["channel"] == "releases" && e["name"] == "reviews-v2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_canary_is_rolled_back_on_latency() {
    let hosts = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 36, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 36, 2)),
    ];
    let slow = Behaviour {
        delay: Duration::from_millis(300),
        ..Default::default()
    };
    let m = mesh("canary-slow", hosts, slow).await;
    let traffic = Traffic::start(m.web.outbound[0]);
    m.cp.apply(&CANARY.replace(
        "successCriteria: {minSuccessRate: 95}",
        "successCriteria: {minSuccessRate: 95, maxP99Latency: 100ms}",
    ))
    .await;
    let c = wait_phase(&m.cp, "RolledBack", Duration::from_secs(60)).await;
    traffic.stop().await;
    let status = c.status.unwrap();
    assert!(
        status.message.starts_with("p99 ") && status.message.contains("> 100ms"),
        "{}",
        status.message
    );
    // Every answer succeeded: it is the latency that failed it, and the stable subset's
    // numbers beside it show the difference.
    let check = status.checks.last().unwrap();
    let (canary, stable) = (check.canary.unwrap(), check.stable.unwrap());
    assert_eq!(canary.success_rate, 100.0);
    assert!(canary.p99_ms > 250.0 && stable.p99_ms < 100.0, "{check:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_traffic_is_inconclusive_and_the_canary_moves_on_when_traffic_returns() {
    let hosts = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 37, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 37, 2)),
    ];
    let m = mesh("canary-quiet", hosts, Behaviour::default()).await;
    m.cp.apply(CANARY).await;
    // Three intervals without a request: still at the first step, saying why.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let status = canary(&m.cp).await.status.unwrap();
    assert_eq!(
        (status.phase.as_str(), status.current_step),
        ("Progressing", 0)
    );
    assert!(!status.checks.is_empty(), "no check was made");
    assert!(
        status.checks.iter().all(|c| c.result == "Inconclusive"),
        "{:#?}",
        status.checks
    );
    assert!(
        status.message.contains("waiting for traffic"),
        "{}",
        status.message
    );
    let traffic = Traffic::start(m.web.outbound[0]);
    wait_phase(&m.cp, "Promoted", Duration::from_secs(60)).await;
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_killed_mid_canary_resumes_it_at_its_step() {
    let hosts = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 38, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 38, 2)),
    ];
    let mut m = mesh("canary-restart", hosts, Behaviour::default()).await;
    let traffic = Traffic::start(m.web.outbound[0]);
    m.cp.apply(&CANARY.replace("steps: [20, 50, 100]", "steps: [20, 40, 60, 80, 100]"))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let status = canary(&m.cp).await.status.unwrap_or_default();
        if status.current_step == 2 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "never reached step 3: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    m.cp.kill();
    m.cp.restart().await;
    // Right after the restart it is where it was (the state is in the store) ...
    let after = canary(&m.cp).await.status.unwrap();
    assert!(after.current_step >= 2, "went back: {after:#?}");
    assert_eq!(after.events[..3], before.events[..3]);
    // ... and it goes on from there (its old lease lapses first) to promotion.
    let c = wait_phase(&m.cp, "Promoted", Duration::from_secs(90)).await;
    traffic.stop().await;
    let passed: Vec<u32> = c
        .status
        .unwrap()
        .checks
        .iter()
        .filter(|c| c.result == "Passed")
        .map(|c| c.weight)
        .collect();
    assert_eq!(
        passed,
        [20, 40, 60, 80, 100],
        "every step once, none repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_is_caught_in_the_mirror_stage_before_any_user_reaches_it() {
    let hosts = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 39, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 39, 2)),
    ];
    let failing = Behaviour {
        fail_percent: 30,
        ..Default::default()
    };
    let m = mesh("canary-dark", hosts, failing).await;
    // Users on the stable version before the canary, as in any real rollout.
    m.cp.apply(
        "apiVersion: quiver.dev/v1
kind: Route
metadata: {name: reviews, namespace: default}
spec:
  service: reviews
  rules: [{name: stable, backends: [{subset: v1, weight: 100}]}]
",
    )
    .await;
    let out = m.web.outbound[0];
    eventually(
        "users are on v1 only",
        Duration::from_secs(20),
        || async move {
            let s = split(out, 50).await;
            (s.get("canary-dark-v1") == Some(&50)).then_some(())
        },
    )
    .await;
    let traffic = Traffic::start(out);
    m.cp.apply(&CANARY.replace("  interval: 3s", "  interval: 3s\n  mirrorPercent: 100"))
        .await;
    let c = wait_phase(&m.cp, "RolledBack", Duration::from_secs(60)).await;
    let seen = traffic.stop().await;
    let status = c.status.unwrap();
    assert!(
        status.message.contains("in the mirror stage"),
        "{}",
        status.message
    );
    // Judged on the copies: the canary answered them (with its 30% of errors) ...
    let check = status.checks.last().unwrap();
    let canary = check.canary.unwrap();
    assert!(
        canary.requests >= 10 && canary.success_rate < 95.0,
        "{check:?}"
    );
    // ... while every user request was answered by the stable version.
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["canary-dark-v1"],
        "{seen:?}"
    );
    assert!(
        quiver_tests::apps::served("canary-dark-v2") >= 10,
        "the canary app saw the copies"
    );
}
