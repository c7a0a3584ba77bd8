//! Traffic policy through real proxies: weighted subsets, header routing, load-aware
//! balancing, retries under a budget, outlier ejection, faults, mirroring, authorization.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use quiver_tests::apps::{Behaviour, served, start_tagged_echo};
use quiver_tests::client::{client, collect};
use quiver_tests::harness::{RunningProxy, identity_yaml};
use quiver_tests::pki::{IdentityFiles, Pki};

/// What one request came back with: status, which app answered, the proxy's reason.
#[derive(Debug)]
struct Answer {
    status: u16,
    tag: String,
    error: String,
}

/// Send `n` GETs to `addr`, `concurrency` at a time, with `headers`.
async fn run(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    headers: &[(&str, &str)],
) -> Vec<Answer> {
    let c = client::<Full<Bytes>>(false);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let per = n / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let c = c.clone();
        let headers = headers.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..per {
                let mut req = Request::get(format!("http://{addr}/"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                for (k, v) in &headers {
                    req.headers_mut().insert(
                        http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        v.parse().unwrap(),
                    );
                }
                let (head, _) = collect(c.request(req).await.unwrap()).await;
                let get = |h: &str| {
                    head.headers()
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                out.push(Answer {
                    status: head.status().as_u16(),
                    tag: get("x-echo-tag"),
                    error: get("quiver-error"),
                });
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn share(answers: &[Answer], pred: impl Fn(&Answer) -> bool) -> f64 {
    answers.iter().filter(|a| pred(a)).count() as f64 / answers.len() as f64
}

/// A server-side proxy for service `reviews` (sa `sa`) in front of `app`; `extra` is
/// appended to its config (authorization, mesh defaults).
async fn server(pki: &Pki, sa: &str, app: SocketAddr, extra: &str) -> RunningProxy {
    let yaml = format!(
        "{}listen: {{quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}\ninbound:\n  - {{service: reviews, port: 8080, protocol: http1, app: \"{app}\"}}\n{extra}",
        identity_yaml(&pki.issue(sa))
    );
    RunningProxy::start(&yaml, &pki.dir)
        .await
        .expect("start server proxy")
}

/// A client-side proxy (sa `sa`) whose outbound listener 0 leads to `reviews`, with the
/// given endpoints (address, server sa, version label) and policy YAML appended.
async fn caller(
    pki: &Pki,
    sa: &str,
    endpoints: &[(SocketAddr, &str, &str)],
    extra: &str,
) -> RunningProxy {
    caller_as(pki, &pki.issue(sa), endpoints, extra).await
}

/// [`caller`] with the given identity files.
async fn caller_as(
    pki: &Pki,
    identity: &IdentityFiles,
    endpoints: &[(SocketAddr, &str, &str)],
    extra: &str,
) -> RunningProxy {
    let mut y = identity_yaml(identity);
    y.push_str(
        "listen: {quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}
outbound:
  - {listen: \"127.0.0.1:0\", service: reviews, protocol: http1}
services:
  - name: reviews
    subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
    endpoints:
",
    );
    for (addr, server_sa, version) in endpoints {
        y.push_str(&format!(
            "      - {{address: \"{addr}\", identity: \"{}\", labels: {{version: {version}}}}}\n",
            pki.id(server_sa)
        ));
    }
    y.push_str(extra);
    RunningProxy::start(&y, &pki.dir)
        .await
        .expect("start caller proxy")
}

/// Two versions of `reviews` behind their own proxies, and a caller.
async fn two_versions(
    tag: &str,
    v1: Behaviour,
    v2: Behaviour,
    extra: &str,
) -> (Pki, RunningProxy, Vec<RunningProxy>) {
    let pki = Pki::new();
    let a1 = start_tagged_echo(Behaviour {
        tag: format!("{tag}-v1"),
        ..v1
    })
    .await;
    let a2 = start_tagged_echo(Behaviour {
        tag: format!("{tag}-v2"),
        ..v2
    })
    .await;
    let b1 = server(&pki, "reviews", a1, "").await;
    let b2 = server(&pki, "reviews", a2, "").await;
    let c = caller(
        &pki,
        "frontend",
        &[
            (b1.bound.quic, "reviews", "v1"),
            (b2.bound.quic, "reviews", "v2"),
        ],
        extra,
    )
    .await;
    (pki, c, vec![b1, b2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_80_20_hold_over_5000_requests() {
    let routes = "routes:
  - service: reviews
    rules:
      - name: split
        backends: [{subset: v1, weight: 80}, {subset: v2, weight: 20}]
";
    let (_pki, c, _b) = two_versions("w", Behaviour::default(), Behaviour::default(), routes).await;
    let answers = run(c.bound.outbound[0], 5000, 8, &[]).await;
    assert!(
        answers.iter().all(|a| a.status == 200),
        "{:?}",
        answers.iter().find(|a| a.status != 200)
    );
    let v2 = share(&answers, |a| a.tag == "w-v2");
    assert!(
        (0.17..=0.23).contains(&v2),
        "v2 got {:.1}% (want 20 ± 3)",
        v2 * 100.0
    );
    let (_, m) = c.admin_get("/metrics").await;
    let outbound = [
        r#"direction="outbound""#,
        r#"service="reviews""#,
        r#"source="frontend""#,
        r#"route="split""#,
        r#"code="200""#,
    ];
    assert_eq!(
        quiver_tests::metric_sum(&m, "quiver_requests_total", &outbound),
        5000.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_match_sends_testers_to_v2_only() {
    let routes = "routes:
  - service: reviews
    rules:
      - name: testers
        match: {headers: [{name: x-user, exact: tester}]}
        backends: [{subset: v2, weight: 100}]
      - name: everyone
        backends: [{subset: v1, weight: 100}]
";
    let (_pki, c, _b) = two_versions("h", Behaviour::default(), Behaviour::default(), routes).await;
    let testers = run(c.bound.outbound[0], 200, 4, &[("x-user", "tester")]).await;
    assert!(
        testers.iter().all(|a| a.tag == "h-v2"),
        "a tester reached v1"
    );
    let others = run(c.bound.outbound[0], 200, 4, &[("x-user", "someone")]).await;
    assert!(
        others.iter().all(|a| a.tag == "h-v1"),
        "a non-tester reached v2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_less_traffic_under_p2c_ewma() {
    // 100 ms: far above what a loaded CI box adds to the fast endpoint, so the assertion is
    // about the balancer, not about the machine's load.
    let slow = Behaviour {
        delay: Duration::from_millis(100),
        ..Default::default()
    };
    let (_pki, c, _b) = two_versions("p", slow, Behaviour::default(), "").await;
    let answers = run(c.bound.outbound[0], 600, 6, &[]).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let fast = share(&answers, |a| a.tag == "p-v2");
    assert!(
        fast > 0.75,
        "the fast endpoint got only {:.1}%",
        fast * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_mask_a_flaky_backend_and_the_budget_caps_a_storm() {
    let routes = "routes:
  - service: reviews
    rules:
      - name: retry
        backends: [{subset: v1, weight: 100}]
        retries: {attempts: 3, retryOn: [5xx]}
";
    let flaky = Behaviour {
        fail_percent: 30,
        ..Default::default()
    };
    let (_pki, c, _b) = two_versions("r", flaky, Behaviour::default(), routes).await;
    let answers = run(c.bound.outbound[0], 400, 4, &[]).await;
    let ok = share(&answers, |a| a.status == 200);
    // 30% failures, three attempts: about 0.3^3 = 2.7% would remain without a budget.
    assert!(ok >= 0.95, "only {:.1}% succeeded", ok * 100.0);
    let extra = served("r-v1") - 400;
    assert!(extra > 60, "retries did not happen: {extra} extra attempts");
    let (_, m) = c.admin_get("/metrics").await;
    assert!(
        m.contains("quiver_retries_total{service=\"reviews\"}"),
        "{m}"
    );

    // A backend that always fails: retries stay within ratio (20%) of requests plus the floor
    // (10/s over the 10 s window = 100), far below the 2 extra attempts each would take.
    let dead = Behaviour {
        fail_percent: 100,
        ..Default::default()
    };
    let (_pki, c, _b) = two_versions("s", dead, Behaviour::default(), routes).await;
    let answers = run(c.bound.outbound[0], 400, 4, &[]).await;
    assert!(answers.iter().all(|a| a.status == 503));
    let extra = served("s-v1") - 400;
    assert!(
        extra <= 400 / 5 + 100 + 5,
        "the budget let {extra} retries through"
    );
    assert!(extra >= 50, "no retries at all: {extra}");
    let (_, m) = c.admin_get("/metrics").await;
    assert!(
        m.contains("quiver_retry_stops_total{service=\"reviews\",reason=\"budget-exhausted\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_ejected_and_traffic_moves() {
    let pki = Pki::new();
    let app = start_tagged_echo(Behaviour {
        tag: "e-live".into(),
        ..Default::default()
    })
    .await;
    let live = server(&pki, "reviews", app, "").await;
    let dead = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let c = caller(
        &pki,
        "frontend",
        &[(live.bound.quic, "reviews", "v1"), (dead, "reviews", "v1")],
        "tuning: {connect_timeout: 200ms}\n",
    )
    .await;
    // P2C shies away from the slow dead endpoint, so how many requests it takes to try it the
    // 5 times that eject it depends on timing: send batches until it has failed 5 times.
    let (mut failed, mut sent) = (0, 0);
    while failed < 5 && sent < 2000 {
        let batch = run(c.bound.outbound[0], 100, 2, &[]).await;
        let failures: Vec<_> = batch.iter().filter(|a| a.status != 200).collect();
        assert!(failures.iter().all(|a| a.error == "peer-connect"));
        failed += failures.len();
        sent += batch.len();
    }
    assert!(
        failed >= 5,
        "the dead endpoint was tried {failed} times in {sent} requests"
    );
    let later = run(c.bound.outbound[0], 200, 4, &[]).await;
    assert!(
        later.iter().all(|a| a.status == 200),
        "traffic still reaches the dead endpoint"
    );
    let (_, m) = c.admin_get("/metrics").await;
    assert!(
        m.contains("quiver_outlier_ejections_total{service=\"reviews\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_abort_hits_about_half_and_says_so() {
    let routes = "routes:
  - service: reviews
    rules:
      - name: chaos
        backends: [{subset: v1, weight: 100}]
        fault: {abort: {httpStatus: 503, percent: 50}}
";
    let (_pki, c, _b) = two_versions("f", Behaviour::default(), Behaviour::default(), routes).await;
    let answers = run(c.bound.outbound[0], 1000, 4, &[]).await;
    let aborted = share(&answers, |a| a.status == 503 && a.error == "fault");
    assert!(
        (0.45..=0.55).contains(&aborted),
        "aborted {:.1}%",
        aborted * 100.0
    );
    assert!(
        answers
            .iter()
            .all(|a| (a.status == 200 && a.tag == "f-v1") || a.error == "fault")
    );
    assert_eq!(
        served("f-v1") as usize,
        answers.iter().filter(|a| a.status == 200).count()
    );
    // Each injected abort is counted, once.
    let (_, m) = c.admin_get("/metrics").await;
    let faults = quiver_tests::metric_sum(
        &m,
        "quiver_faults_injected_total",
        &[r#"service="reviews""#, r#"reason="abort""#],
    );
    let aborted = answers.iter().filter(|a| a.error == "fault").count();
    assert_eq!(faults, aborted as f64, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_receives_a_copy_and_its_answers_are_discarded() {
    let routes = "routes:
  - service: reviews
    rules:
      - name: shadow
        backends: [{subset: v1, weight: 100}]
        mirror: {subset: v2, percent: 100}
";
    let (_pki, c, _b) = two_versions("m", Behaviour::default(), Behaviour::default(), routes).await;
    let answers = run(c.bound.outbound[0], 100, 2, &[]).await;
    assert!(answers.iter().all(|a| a.status == 200 && a.tag == "m-v1"));
    quiver_tests::eventually("mirror copies", Duration::from_secs(5), || async {
        (served("m-v2") == 100).then_some(())
    })
    .await;
    let (_, m) = c.admin_get("/metrics").await;
    assert_eq!(
        quiver_tests::metric_sum(
            &m,
            "quiver_mirrored_requests_total",
            &[r#"service="reviews""#]
        ),
        100.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_allows_listed_callers_and_denies_the_rest() {
    let pki = Pki::new();
    let app = start_tagged_echo(Behaviour {
        tag: "z".into(),
        ..Default::default()
    })
    .await;
    let policy = "authorization:
  - name: frontend-only
    service: reviews
    allow:
      - sources: [\"spiffe://mesh.local/ns/default/sa/frontend\"]
        methods: [GET]
";
    let b = server(&pki, "reviews", app, policy).await;
    let allowed = caller(&pki, "frontend", &[(b.bound.quic, "reviews", "v1")], "").await;
    let stranger = caller(&pki, "batch-job", &[(b.bound.quic, "reviews", "v1")], "").await;
    let ok = run(allowed.bound.outbound[0], 20, 1, &[]).await;
    assert!(ok.iter().all(|a| a.status == 200 && a.tag == "z"));
    let denied = run(stranger.bound.outbound[0], 20, 1, &[]).await;
    assert!(
        denied
            .iter()
            .all(|a| a.status == 403 && a.error == "denied"),
        "{:?}",
        denied.first()
    );
    assert_eq!(served("z"), 20, "a denied request reached the app");
    let (_, m) = b.admin_get("/metrics").await;
    assert!(
        m.contains("quiver_authz_denied_total{service=\"reviews\"} 20"),
        "{m}"
    );
    // The caller learns that it was denied, not which policy or rule decided.
    let (status, body) = quiver_tests::client::get_text(stranger.bound.outbound[0], "/").await;
    assert_eq!(status, 403);
    assert_eq!(body.trim(), "denied by an authorization policy");

    // Deny-all by default: a service no policy speaks about refuses everyone.
    let app = start_tagged_echo(Behaviour {
        tag: "z2".into(),
        ..Default::default()
    })
    .await;
    let b = server(&pki, "reviews", app, "mesh: {defaultPolicy: DENY}\n").await;
    let c = caller(&pki, "frontend", &[(b.bound.quic, "reviews", "v1")], "").await;
    let denied = run(c.bound.outbound[0], 10, 1, &[]).await;
    assert!(
        denied
            .iter()
            .all(|a| a.status == 403 && a.error == "denied")
    );
    assert_eq!(served("z2"), 0);
}

/// A workload of another namespace dials the serving proxy directly (the control plane
/// would never have told it about `reviews`): the serving proxy refuses it unless an allow
/// rule names it, whatever the mesh default, and `crossNamespacePolicy: ALLOW` lifts that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_from_another_namespace_needs_a_rule_that_names_it() {
    let pki = Pki::new();
    let bot = pki.issue_in("games", "bot");
    let other = pki.issue_in("games", "other");
    let app = start_tagged_echo(Behaviour {
        tag: "xns".into(),
        ..Default::default()
    })
    .await;
    // No policy at all, mesh default ALLOW: the same namespace gets in, games does not.
    let b = server(&pki, "reviews", app, "").await;
    let eps = [(b.bound.quic, "reviews", "v1")];
    let neighbour = caller(&pki, "frontend", &eps, "").await;
    assert!(
        run(neighbour.bound.outbound[0], 5, 1, &[])
            .await
            .iter()
            .all(|a| a.status == 200 && a.tag == "xns")
    );
    let foreign = caller_as(&pki, &bot, &eps, "").await;
    let denied = run(foreign.bound.outbound[0], 10, 1, &[]).await;
    assert!(
        denied
            .iter()
            .all(|a| a.status == 403 && a.error == "denied"),
        "{:?}",
        denied.first()
    );
    assert_eq!(served("xns"), 5, "a foreign caller reached the app");

    // A rule without sources does not open the service to other namespaces; one naming bot does.
    let policy = "authorization:
  - name: open-reads
    service: reviews
    allow:
      - methods: [GET]
      - sources: [\"spiffe://mesh.local/ns/games/sa/bot\"]
";
    let b = server(&pki, "reviews", app, policy).await;
    let eps = [(b.bound.quic, "reviews", "v1")];
    let bot_caller = caller_as(&pki, &bot, &eps, "").await;
    let other_caller = caller_as(&pki, &other, &eps, "").await;
    assert!(
        run(bot_caller.bound.outbound[0], 5, 1, &[])
            .await
            .iter()
            .all(|a| a.status == 200)
    );
    assert!(
        run(other_caller.bound.outbound[0], 5, 1, &[])
            .await
            .iter()
            .all(|a| a.status == 403 && a.error == "denied")
    );
    assert_eq!(served("xns"), 10);

    // The mesh may choose to judge other namespaces like its own.
    let b = server(
        &pki,
        "reviews",
        app,
        "mesh: {crossNamespacePolicy: ALLOW}\n",
    )
    .await;
    let c = caller_as(&pki, &other, &[(b.bound.quic, "reviews", "v1")], "").await;
    assert!(
        run(c.bound.outbound[0], 5, 1, &[])
            .await
            .iter()
            .all(|a| a.status == 200)
    );
    assert_eq!(served("xns"), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_change_live_from_the_config_file_without_dropping_requests_in_flight() {
    let pki = Pki::new();
    let a1 = start_tagged_echo(Behaviour {
        tag: "l-v1".into(),
        ..Default::default()
    })
    .await;
    let a2 = start_tagged_echo(Behaviour {
        tag: "l-v2".into(),
        ..Default::default()
    })
    .await;
    let b1 = server(&pki, "reviews", a1, "").await;
    let b2 = server(&pki, "reviews", a2, "").await;
    // The caller's config as a file, so it can be edited while the proxy runs.
    let mut y = identity_yaml(&pki.issue("frontend"));
    y.push_str(&format!(
        "listen: {{quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}
outbound:
  - {{listen: \"127.0.0.1:0\", service: reviews, protocol: http1}}
services:
  - name: reviews
    subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
    endpoints:
      - {{address: \"{}\", identity: \"{}\", labels: {{version: v1}}}}
      - {{address: \"{}\", identity: \"{}\", labels: {{version: v2}}}}
routes:
  - service: reviews
    rules:
      - name: split
        backends: [{{subset: v1, weight: 100}}, {{subset: v2, weight: 0}}]
",
        b1.bound.quic,
        pki.id("reviews"),
        b2.bound.quic,
        pki.id("reviews")
    ));
    let file = pki.dir.join("caller-live.yaml");
    std::fs::write(&file, &y).unwrap();
    let c = RunningProxy::start_file(&file, Duration::from_millis(100))
        .await
        .unwrap();
    let addr = c.bound.outbound[0];
    let before = run(addr, 100, 2, &[]).await;
    assert!(before.iter().all(|a| a.tag == "l-v1"));

    // A request in flight on v1 while the weights flip.
    let slow = tokio::spawn(async move {
        let c = client::<Full<Bytes>>(false);
        let req = Request::get(format!("http://{addr}/sleep/800?live-test"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        collect(c.request(req).await.unwrap()).await
    });
    quiver_tests::eventually("request in flight", Duration::from_secs(5), || async {
        (quiver_tests::apps::sleeping("live-test") == 1).then_some(())
    })
    .await;
    std::fs::write(
        &file,
        y.replace(
            "weight: 100}, {subset: v2, weight: 0}",
            "weight: 0}, {subset: v2, weight: 100}",
        ),
    )
    .unwrap();
    quiver_tests::eventually("new weights applied", Duration::from_secs(5), || async {
        let a = run(addr, 2, 1, &[]).await;
        a.iter().all(|a| a.tag == "l-v2").then_some(())
    })
    .await;
    let after = run(addr, 100, 2, &[]).await;
    assert!(
        after.iter().all(|a| a.tag == "l-v2"),
        "old weights still in use"
    );
    let (head, _) = slow.await.unwrap();
    assert_eq!(
        head.status(),
        200,
        "the in-flight request was dropped by the reload"
    );
    assert_eq!(head.headers()["x-echo-tag"], "l-v1");

    // An invalid edit is refused whole; the running config stays.
    std::fs::write(&file, y.replace("weight: 0}", "weight: 10}")).unwrap();
    quiver_tests::eventually("failed reload counted", Duration::from_secs(5), || async {
        let (_, m) = c.admin_get("/metrics").await;
        m.contains("quiver_config_reloads_total{result=\"failed\"} 1")
            .then_some(())
    })
    .await;
    let still = run(addr, 20, 1, &[]).await;
    assert!(still.iter().all(|a| a.tag == "l-v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_limits_refuse_fast_with_overloaded() {
    let pki = Pki::new();
    let slow = Behaviour {
        tag: "o".into(),
        delay: Duration::from_millis(300),
        ..Default::default()
    };
    let app = start_tagged_echo(slow).await;
    let b = server(&pki, "reviews", app, "").await;
    let c = caller(
        &pki,
        "frontend",
        &[(b.bound.quic, "reviews", "v1")],
        "tuning: {balancing: {limits: {max_requests: 2, max_pending: 2}}}\n",
    )
    .await;
    // Six at once against a limit of two outstanding: four are refused at once.
    let answers = run(c.bound.outbound[0], 6, 6, &[]).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers
        .iter()
        .filter(|a| a.status == 503 && a.error == "overloaded")
        .count();
    assert_eq!((ok, refused), (2, 4), "{answers:?}");
    assert_eq!(served("o"), 2, "refused requests reached the app");
    let (_, m) = c.admin_get("/metrics").await;
    assert!(
        m.contains("quiver_overload_refusals_total{service=\"reviews\",reason=\"max-requests\"} 4"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_refuses_a_tcp_tunnel_at_connect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let echo = quiver_tests::apps::start_tcp_echo().await;
    let policy = "authorization:
  - name: only-frontend
    service: db
    allow: [{sources: [\"spiffe://mesh.local/ns/default/sa/frontend\"]}]
";
    let yaml = format!(
        "{}listen: {{quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}\ninbound:\n  - {{service: db, port: 5432, protocol: tcp, app: \"{echo}\"}}\n{policy}",
        identity_yaml(&pki.issue("db"))
    );
    let b = RunningProxy::start(&yaml, &pki.dir).await.unwrap();
    let client_for = |sa: &str| {
        let mut y = identity_yaml(&pki.issue(sa));
        y.push_str(&format!(
            "listen: {{quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}
outbound:
  - {{listen: \"127.0.0.1:0\", service: db, protocol: tcp}}
services:
  - {{name: db, endpoints: [{{address: \"{}\", identity: \"{}\"}}]}}
",
            b.bound.quic,
            pki.id("db")
        ));
        y
    };
    let good = RunningProxy::start(&client_for("frontend"), &pki.dir)
        .await
        .unwrap();
    let bad = RunningProxy::start(&client_for("intruder"), &pki.dir)
        .await
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(good.bound.outbound[0])
        .await
        .unwrap();
    s.write_all(b"select 1").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"select 1\nEOF total=8\n");
    // The intruder's tunnel is refused at CONNECT: its connection closes with nothing echoed.
    let mut s = tokio::net::TcpStream::connect(bad.bound.outbound[0])
        .await
        .unwrap();
    let _ = s.write_all(b"select 1").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(out.is_empty(), "a denied tunnel carried bytes: {out:?}");
    let (_, m) = b.admin_get("/metrics").await;
    assert!(
        m.contains("quiver_authz_denied_total{service=\"db\"} 1"),
        "{m}"
    );
}
