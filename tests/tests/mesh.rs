//! The mesh as a mesh: a `quiver-control` process (Postgres unless said otherwise), proxies
//! that join it with tokens, get and renew certificates, register, and follow Watch; echo apps
//! behind them. Every request crosses real mTLS HTTP/3 between two proxy processes.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use quiver_tests::apps::{Behaviour, serve_http_echo_with};
use quiver_tests::eventually;
use quiver_tests::mesh::{ControlPlane, Db, MeshProxy, ProxySpec, metric};
use quiver_tests::pki::temp_dir;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

/// `web` calls `reviews` (subsets v1/v2 by the `version` label). Every reviews app listens on
/// `targetPort` `app_port` of its own loopback IP, like pods with their own addresses.
fn mesh_yaml(app_port: u16) -> String {
    format!(
        r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http1, targetPort: {app_port}}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, protocol: http1, targetPort: {app_port}}}]
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"#
    )
}

fn route_yaml(v1: u32) -> String {
    format!(
        r#"
apiVersion: quiver.dev/v1
kind: Route
metadata: {{name: reviews, namespace: default}}
spec:
  service: reviews
  rules:
  - name: split
    backends:
    - {{subset: v1, weight: {v1}}}
    - {{subset: v2, weight: {}}}
"#,
        100 - v1
    )
}

/// Echo apps tagged `tags[i]` on `hosts[i]`, all on one port (retried until one is free on
/// every host).
async fn apps_on_one_port(hosts: &[IpAddr], tags: &[String]) -> u16 {
    for _ in 0..20 {
        let first = serve_http_echo_with(
            SocketAddr::new(hosts[0], 0),
            Behaviour {
                tag: tags[0].clone(),
                ..Default::default()
            },
        )
        .await
        .expect("bind first app");
        let port = first.port();
        let mut ok = true;
        for (h, t) in hosts.iter().zip(tags).skip(1) {
            let b = Behaviour {
                tag: t.clone(),
                ..Default::default()
            };
            if serve_http_echo_with(SocketAddr::new(*h, port), b)
                .await
                .is_err()
            {
                ok = false;
                break;
            }
        }
        if ok {
            return port;
        }
    }
    panic!("no port free on every app host");
}

/// A mesh: control plane, the CA file, the `web` proxy (the test is its app, calling through
/// its outbound listener), and one reviews proxy per version.
struct Mesh {
    dir: std::path::PathBuf,
    cp: ControlPlane,
    ca: std::path::PathBuf,
    web: MeshProxy,
    reviews: Vec<MeshProxy>,
    /// Distinguishes this test's app tags from other tests' in the same process.
    test: String,
    app_port: u16,
}

impl Mesh {
    /// `net` picks this test's loopback block 127.0.net.x; `versions` the reviews proxies.
    async fn start(test: &str, db: &Db, net: u8, versions: &[&str], cp_flags: &[&str]) -> Self {
        quiver_tests::init_log();
        let dir = temp_dir(test);
        let cp = ControlPlane::start(db, &dir, cp_flags).await;
        let hosts: Vec<IpAddr> = (0..versions.len())
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, net, 2 + i as u8)))
            .collect();
        let tags: Vec<String> = versions.iter().map(|v| format!("{test}-{v}")).collect();
        let app_port = apps_on_one_port(&hosts, &tags).await;
        cp.apply(&mesh_yaml(app_port)).await;
        let ca = cp.write_ca(&dir).await;
        let web_token = cp.join_token("default", "web", 1, "10m").await;
        let web = MeshProxy::start(
            &cp,
            &ca,
            &dir,
            ProxySpec {
                service: "web",
                token: web_token,
                labels: &[],
                outbound: &[("reviews", "http1")],
                extra: &[],
            },
        )
        .await;
        let mut reviews = Vec::new();
        for (v, host) in versions.iter().zip(&hosts) {
            reviews.push(Self::join_reviews(&cp, &ca, &dir, v, *host).await);
        }
        let mesh = Self {
            dir,
            cp,
            ca,
            web,
            reviews,
            test: test.to_string(),
            app_port,
        };
        mesh.await_endpoints(versions.len()).await;
        mesh
    }

    async fn join_reviews(
        cp: &ControlPlane,
        ca: &Path,
        dir: &Path,
        version: &str,
        host: IpAddr,
    ) -> MeshProxy {
        let token = cp.join_token("default", "reviews", 1, "10m").await;
        let host = host.to_string();
        MeshProxy::start(
            cp,
            ca,
            dir,
            ProxySpec {
                service: "reviews",
                token,
                labels: &[("version", version)],
                outbound: &[],
                extra: &["--app-host", &host],
            },
        )
        .await
    }

    /// Wait until the web proxy's config lists `n` reviews endpoints.
    async fn await_endpoints(&self, n: usize) {
        let admin = self.web.admin;
        eventually(
            &format!("web sees {n} reviews endpoints"),
            Duration::from_secs(20),
            || async move {
                let (_, body) = quiver_tests::mesh::admin_get(admin, "/config").await.ok()?;
                let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
                let eps = doc["snapshot"]["services"]["reviews"]["endpoints"].as_array()?;
                (eps.len() == n).then_some(())
            },
        )
        .await;
    }

    /// The snapshot version the web proxy runs.
    async fn web_version(&self) -> f64 {
        metric(&self.web.metrics().await, "quiver_snapshot_version").unwrap_or(0.0)
    }

    /// Apply `yaml` and wait until the web proxy runs a newer snapshot.
    async fn apply_and_await(&self, yaml: &str) {
        let before = self.web_version().await;
        self.cp.apply(yaml).await;
        let web = &self.web;
        eventually(
            "the change reaches the web proxy",
            Duration::from_secs(10),
            || async move {
                let v = metric(&web.metrics().await, "quiver_snapshot_version").unwrap_or(0.0);
                (v > before).then_some(())
            },
        )
        .await;
    }

    fn tag(&self, version: &str) -> String {
        format!("{}-{version}", self.test)
    }
}

/// GET through `proxy`'s outbound listener: (status, tag of the app that answered, the
/// caller identity the app saw).
async fn call(
    client: &Client,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, String, String), String> {
    let uri = format!("http://{addr}{path}");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri.parse().unwrap()))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (tag, peer, error) = (
        header("x-echo-tag"),
        header("x-echo-peer-identity"),
        header("quiver-error"),
    );
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != 200 {
        return Err(format!(
            "status {status} quiver-error {error:?}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok((status, tag, peer))
}

/// `n` requests over `c` concurrent callers; returns how many each tag answered, and failures.
async fn split(
    addr: SocketAddr,
    n: usize,
    c: usize,
) -> (std::collections::BTreeMap<String, usize>, Vec<String>) {
    split_on(addr, n, c, "/hello").await
}

/// [`split`] with requests for `path`.
async fn split_on(
    addr: SocketAddr,
    n: usize,
    c: usize,
    path: &str,
) -> (std::collections::BTreeMap<String, usize>, Vec<String>) {
    let client: Client = quiver_tests::client::client(false);
    let path: Arc<str> = path.into();
    let mut tasks = Vec::new();
    for w in 0..c {
        let (client, path) = (client.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in (w..n).step_by(c) {
                out.push(call(&client, addr, &path).await.map(|(_, tag, _)| tag));
            }
            out
        }));
    }
    let mut tally = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for t in tasks {
        for r in t.await.expect("caller task") {
            match r {
                Ok(tag) => *tally.entry(tag).or_insert(0) += 1,
                Err(e) => failures.push(e),
            }
        }
    }
    (tally, failures)
}

/// Steady traffic in the background until stopped: (ok, failed, first failures).
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(addr: SocketAddr, callers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let client: Client = quiver_tests::client::client(false);
        let tasks = (0..callers)
            .map(|_| {
                let (stop, ok, failed, client) =
                    (stop.clone(), ok.clone(), failed.clone(), client.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match call(&client, addr, "/steady").await {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failed.lock().unwrap().push(e),
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_crosses_the_joined_mesh_with_the_callers_identity() {
    let db = Db::postgres().await;
    let mesh = Mesh::start("full", &db, 11, &["v1"], &[]).await;
    let client: Client = quiver_tests::client::client(false);

    // Through the explicit outbound listener...
    let (_, tag, peer) = call(&client, mesh.web.outbound[0], "/hello?token=s3cret-42")
        .await
        .unwrap();
    assert_eq!(tag, mesh.tag("v1"));
    assert_eq!(
        peer, "spiffe://mesh.local/ns/default/sa/web",
        "the callee sees the caller's SPIFFE id"
    );
    // ...and through the HTTP proxy listener, routed by Host.
    let req = http::Request::get("http://reviews/via-proxy")
        .header("host", "reviews")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let (head, _) = quiver_tests::client::send_h1(mesh.web.http_proxy, req).await;
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["x-echo-peer-identity"],
        "spiffe://mesh.local/ns/default/sa/web"
    );

    // Each proxy got its identity from the control plane, follows Watch, and is registered.
    let (code, body) = mesh.web.readyz().await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let (_, config) = quiver_tests::mesh::admin_get(mesh.web.admin, "/config")
        .await
        .unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["identity"]["spiffe_id"],
        "spiffe://mesh.local/ns/default/sa/web"
    );
    assert_eq!(config["identity"]["source"], "control-plane");
    assert!(
        !config.to_string().contains("qjt_"),
        "the join token is not shown"
    );
    assert_eq!(
        metric(&mesh.web.metrics().await, "quiver_control_plane_connected"),
        Some(1.0)
    );
    let listed = mesh.cp.workloads("default", "reviews").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        listed[0].starts_with("127.0.0.1:"),
        "advertised QUIC address {listed:?}"
    );
    // Both access-log lines name the path, and neither carries the query string (secrets
    // travel there): tuning.access_log_query is off by default.
    for p in [&mesh.web, &mesh.reviews[0]] {
        eventually("the access line is written", Duration::from_secs(5), || {
            let logs = p.logs();
            async move { logs.contains("path=/hello ").then_some(()) }
        })
        .await;
        assert!(!p.logs().contains("s3cret-42"), "{}", p.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_weight_change_through_the_api_moves_live_traffic() {
    let db = Db::postgres().await;
    let mesh = Mesh::start("weights", &db, 12, &["v1", "v2"], &[]).await;
    let (v1, v2) = (mesh.tag("v1"), mesh.tag("v2"));

    mesh.apply_and_await(&route_yaml(80)).await;
    let (tally, failures) = split(mesh.web.outbound[0], 2000, 8).await;
    assert!(failures.is_empty(), "{failures:?}");
    let share = tally.get(&v1).copied().unwrap_or(0) as f64 / 2000.0;
    assert!(
        (0.77..=0.83).contains(&share),
        "80/20 gave v1 {share}: {tally:?}"
    );

    // Change the weights; nothing restarts.
    let pids = (mesh.web.pid(), mesh.reviews[0].pid());
    mesh.apply_and_await(&route_yaml(10)).await;
    let (tally, failures) = split(mesh.web.outbound[0], 2000, 8).await;
    assert!(failures.is_empty(), "{failures:?}");
    let share = tally.get(&v2).copied().unwrap_or(0) as f64 / 2000.0;
    assert!(
        (0.87..=0.93).contains(&share),
        "10/90 gave v2 {share}: {tally:?}"
    );
    assert_eq!(pids, (mesh.web.pid(), mesh.reviews[0].pid()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn query_matches_rewrites_header_edits_and_redirects_applied_through_the_api_take_effect() {
    let db = Db::postgres().await;
    let mesh = Mesh::start("filters", &db, 17, &["v1", "v2"], &[]).await;
    mesh.apply_and_await(
        r#"
apiVersion: quiver.dev/v1
kind: Route
metadata: {name: reviews, namespace: default}
spec:
  service: reviews
  rules:
  - name: moved
    match: {path: {prefix: /old/}}
    redirect: {scheme: https, hostname: shop.example.com, path: {replacePrefixMatch: /new/}, statusCode: 308}
  - name: gold
    match:
      path: {prefix: /api/}
      queryParams: [{name: tier, exact: gold}]
    rewrite: {path: {replacePrefixMatch: /v2/}}
    requestHeaders: {set: [{name: x-env, value: prod}]}
    responseHeaders: {add: [{name: x-served-by, value: quiver}]}
    backends: [{subset: v2, weight: 100}]
  - name: rest
    backends: [{subset: v1, weight: 100}]
"#,
    )
    .await;
    let client: Client = quiver_tests::client::client(false);
    let addr = mesh.web.outbound[0];
    let get = |path: &str| client.get(format!("http://{addr}{path}").parse().unwrap());
    let header = |r: &http::Response<hyper::body::Incoming>, n: &str| {
        r.headers()
            .get(n)
            .map_or(String::new(), |v| v.to_str().unwrap().to_string())
    };
    for _ in 0..20 {
        let r = get("/api/items?tier=gold").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-echo-tag"), mesh.tag("v2"));
        assert_eq!(header(&r, "x-echo-path"), "/v2/items?tier=gold");
        assert!(header(&r, "x-echo-values").contains("x-env=prod"));
        assert_eq!(header(&r, "x-served-by"), "quiver");
        let r = get("/api/items?tier=silver").await.unwrap();
        assert_eq!(header(&r, "x-echo-tag"), mesh.tag("v1"));
        assert_eq!(header(&r, "x-echo-path"), "/api/items?tier=silver");
        assert!(r.headers().get("x-served-by").is_none());
    }
    let r = get("/old/a?b=c").await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(header(&r, "location"), "https://shop.example.com/new/a?b=c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_rotate_under_traffic_without_losing_a_request() {
    let db = Db::postgres().await;
    let mesh = Mesh::start("rotation", &db, 13, &["v1"], &["--svid-ttl", "20s"]).await;
    let traffic = Traffic::start(mesh.web.outbound[0], 4);
    // Live connections keep the certificate they were made with; new ones must use the
    // renewed ones. So a second reviews proxy joins after the first renewals: web's requests
    // to it are fresh handshakes with renewed certificates on both sides.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let late_host = IpAddr::V4(Ipv4Addr::new(127, 0, 13, 9));
    serve_http_echo_with(
        SocketAddr::new(late_host, mesh.app_port),
        Behaviour {
            tag: mesh.tag("late"),
            ..Default::default()
        },
    )
    .await
    .expect("bind the late app");
    let late = Mesh::join_reviews(&mesh.cp, &mesh.ca, &mesh.dir, "v1", late_host).await;
    mesh.await_endpoints(2).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (ok, failed) = traffic.stop().await;
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 1000, "only {ok} requests in 60 s");
    assert!(
        quiver_tests::apps::served(&mesh.tag("late")) > 100,
        "the late proxy, reached with renewed certificates, answered"
    );
    for p in [&mesh.web, &mesh.reviews[0]] {
        let m = p.metrics().await;
        let renewed = m
            .lines()
            .find(|l| l.starts_with("quiver_identity_reloads_total{result=\"ok\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(
            renewed >= 2.0,
            "{} renewed {renewed} times in 60 s:\n{}",
            p.name,
            p.logs()
        );
    }
    drop(late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_survives_the_control_plane_dying_and_resyncs_after_restart() {
    let db = Db::postgres().await;
    let mut mesh = Mesh::start("outage", &db, 14, &["v1", "v2"], &[]).await;
    mesh.apply_and_await(&route_yaml(100)).await;
    let traffic = Traffic::start(mesh.web.outbound[0], 2);

    mesh.cp.kill();
    let web = &mesh.web;
    eventually(
        "the web proxy notices",
        Duration::from_secs(10),
        || async move {
            (metric(&web.metrics().await, "quiver_control_plane_connected") == Some(0.0))
                .then_some(())
        },
    )
    .await;
    let before = traffic.ok();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        traffic.ok() > before + 50,
        "requests kept flowing without a control plane"
    );
    assert_eq!(
        mesh.web.readyz().await.unwrap().0,
        200,
        "still ready on the last good config"
    );

    mesh.cp.restart().await;
    for p in [&mesh.web, &mesh.reviews[0], &mesh.reviews[1]] {
        eventually(
            "proxies reconnect",
            Duration::from_secs(30),
            || async move {
                (metric(&p.metrics().await, "quiver_control_plane_connected") == Some(1.0))
                    .then_some(())
            },
        )
        .await;
    }
    // A change made after the restart reaches them.
    mesh.apply_and_await(&route_yaml(0)).await;
    let (ok, failed) = traffic.stop().await;
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(5)]
    );
    let (tally, failures) = split(mesh.web.outbound[0], 200, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(tally.get(&mesh.tag("v2")), Some(&200), "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_postgres_serve_one_mesh() {
    let db = Db::postgres().await;
    let dir = temp_dir("replicas");
    let a = ControlPlane::start(&db, &dir, &[]).await;
    let b = ControlPlane::start(&db, &dir, &[]).await;
    let hosts = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 15, 2)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 15, 3)),
    ];
    let tags = ["replicas-v1".to_string(), "replicas-v2".to_string()];
    let port = apps_on_one_port(&hosts, &tags).await;
    a.apply(&mesh_yaml(port)).await;
    a.apply(&route_yaml(100)).await;
    // One CA in the store: both replicas hand out the same bundle.
    let ca = a.write_ca(&dir).await;
    let ca_b = std::fs::read_to_string(b.write_ca(&temp_dir("replicas-b")).await).unwrap();
    assert_eq!(std::fs::read_to_string(&ca).unwrap(), ca_b);

    // web on replica A, the reviews proxies on replica B, tokens minted on either.
    let web = MeshProxy::start(
        &a,
        &ca,
        &dir,
        ProxySpec {
            service: "web",
            token: b.join_token("default", "web", 1, "10m").await,
            labels: &[],
            outbound: &[("reviews", "http1")],
            extra: &[],
        },
    )
    .await;
    let mut reviews = Vec::new();
    for (v, h) in [("v1", hosts[0]), ("v2", hosts[1])] {
        let h = h.to_string();
        reviews.push(
            MeshProxy::start(
                &b,
                &ca,
                &dir,
                ProxySpec {
                    service: "reviews",
                    token: a.join_token("default", "reviews", 1, "10m").await,
                    labels: &[("version", v)],
                    outbound: &[],
                    extra: &["--app-host", &h],
                },
            )
            .await,
        );
    }
    let client: Client = quiver_tests::client::client(false);
    let addr = web.outbound[0];
    eventually(
        "web reaches reviews v1 registered on the other replica",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move {
                let (_, tag, _) = call(&client, addr, "/r").await.ok()?;
                (tag == "replicas-v1").then_some(())
            }
        },
    )
    .await;
    // A change through replica B reaches the proxy attached to replica A.
    b.apply(&route_yaml(0)).await;
    eventually(
        "the change through B reaches web on A",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            async move {
                let (_, tag, _) = call(&client, addr, "/r").await.ok()?;
                (tag == "replicas-v2").then_some(())
            }
        },
    )
    .await;
    let (tally, failures) = split(addr, 200, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(tally.get("replicas-v2"), Some(&200), "{tally:?}");
    drop(reviews);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_proxy_leaves_the_endpoints_within_its_lease() {
    let db = Db::postgres().await;
    let mut mesh = Mesh::start("lease", &db, 16, &["v1", "v2"], &["--lease-ttl", "3s"]).await;
    // No Route: the service's endpoints share the traffic.
    let (tally, _) = split(mesh.web.outbound[0], 100, 4).await;
    assert!(tally.len() == 2, "both versions answer first: {tally:?}");

    let killed = std::time::Instant::now();
    mesh.reviews[1].kill();
    mesh.await_endpoints(1).await;
    let gone = killed.elapsed();
    assert!(
        gone < Duration::from_secs(8),
        "endpoint left after {gone:?} (lease 3s)"
    );
    assert_eq!(mesh.cp.workloads("default", "reviews").await.len(), 1);
    // Callers stop sending to it: every request now lands on v1.
    let (tally, failures) = split(mesh.web.outbound[0], 200, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(tally.get(&mesh.tag("v1")), Some(&200), "{tally:?}");

    // A clean stop deregisters at once instead of waiting for the lease.
    mesh.reviews[0].terminate();
    let status = mesh.reviews[0].wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "SIGTERM exit {status}");
    assert!(mesh.cp.workloads("default", "reviews").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_join_tokens_are_refused_with_the_reason() {
    let db = Db::postgres().await;
    let dir = temp_dir("refusal");
    let cp = ControlPlane::start(&db, &dir, &[]).await;
    cp.apply(&mesh_yaml(9)).await;
    let ca = cp.write_ca(&dir).await;

    let refused = |token: String| {
        MeshProxy::spawn(
            &cp,
            &ca,
            &dir,
            ProxySpec {
                service: "web",
                token,
                labels: &[],
                outbound: &[],
                extra: &[],
            },
        )
    };
    // Wrong.
    let mut p = refused("qjt_not-a-token".into());
    let status = p.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(77), "{}", p.logs());
    assert!(p.logs().contains("join token is not known"), "{}", p.logs());

    // Used up: one use, and someone used it.
    let once = cp.join_token("default", "web", 1, "10m").await;
    let first = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        ProxySpec {
            service: "web",
            token: once.clone(),
            labels: &[],
            outbound: &[],
            extra: &[],
        },
    )
    .await;
    let mut p = refused(once);
    assert_eq!(p.wait_exit(Duration::from_secs(20)).await.code(), Some(77));
    assert!(
        p.logs().contains("has been used 1 times, its limit"),
        "{}",
        p.logs()
    );
    drop(first);

    // Expired.
    let brief = cp.join_token("default", "web", 1, "1s").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut p = refused(brief);
    assert_eq!(p.wait_exit(Duration::from_secs(20)).await.code(), Some(77));
    assert!(p.logs().contains("join token expired"), "{}", p.logs());

    // A token for another service account joins, but may not front `web`: the proxy stays
    // not ready and says why, instead of serving with no config.
    let other = cp.join_token("default", "reviews", 1, "10m").await;
    let p = refused(other);
    let admin = p.admin;
    let why = eventually("readyz explains", Duration::from_secs(20), || async move {
        match quiver_tests::mesh::admin_get(admin, "/readyz").await {
            Ok((503, body)) if body.contains("PermissionDenied") => Some(body),
            _ => None,
        }
    })
    .await;
    assert!(why.contains("runs as service account"), "{why}");
}

/// web -> reviews (a relay app) -> ratings, each behind a joined proxy: one request with a
/// sampled `traceparent` becomes one stored trace of four proxy spans, linked hop by hop; at
/// A control plane that stops answering (SIGSTOP: sockets open, nothing read) must not slow
/// the data path: span shipping backs up, the bounded queue fills, and further spans are
/// dropped and counted while every request still succeeds. When it wakes, shipping resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_control_plane_costs_spans_not_requests() {
    quiver_tests::init_log();
    let db = Db::sqlite(&temp_dir("stall-db"));
    let dir = temp_dir("stall");
    let cp = ControlPlane::start(&db, &dir, &[]).await;
    let host = IpAddr::V4(Ipv4Addr::new(127, 0, 22, 2));
    let port = apps_on_one_port(&[host], &["stall-v1".to_string()]).await;
    cp.apply(&format!(
        "{}---\napiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {{name: mesh, namespace: default}}\n\
         spec:\n  tracing: {{samplingPercent: 100}}\n",
        mesh_yaml(port)
    ))
    .await;
    let ca = cp.write_ca(&dir).await;
    // A small queue, so that the test needs few requests to fill it.
    let small_queue = ["--span-queue", "64"];
    let web = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        ProxySpec {
            service: "web",
            token: cp.join_token("default", "web", 1, "10m").await,
            labels: &[],
            outbound: &[("reviews", "http1")],
            extra: &small_queue,
        },
    )
    .await;
    let host_flag = host.to_string();
    let _reviews = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        ProxySpec {
            service: "reviews",
            token: cp.join_token("default", "reviews", 1, "10m").await,
            labels: &[("version", "v1")],
            outbound: &[],
            extra: &["--app-host", &host_flag, "--span-queue", "64"],
        },
    )
    .await;
    let addr = web.outbound[0];
    let client: Client = quiver_tests::client::client(false);
    eventually("web reaches reviews", Duration::from_secs(20), || {
        let client = client.clone();
        async move { call(&client, addr, "/warm-up").await.ok() }
    })
    .await;
    // Spans flow while the control plane is awake.
    let (_, failures) = split(addr, 200, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    let shipped = |m: &str| metric(m, "quiver_spans_shipped_total").unwrap_or(0.0);
    let dropped = |m: &str| metric(m, "quiver_spans_dropped_total").unwrap_or(0.0);
    eventually(
        "spans shipped before the stall",
        Duration::from_secs(10),
        || {
            let web = &web;
            async move { (shipped(&web.metrics().await) >= 200.0).then_some(()) }
        },
    )
    .await;
    let before = web.metrics().await;
    assert_eq!(dropped(&before), 0.0, "{before}");

    cp.signal("STOP");
    let started = std::time::Instant::now();
    // Far more spans than the queue and the stream's flow-control window (1 MiB, about 2,000
    // spans named after this path) can hold. Each call has a 10 s deadline: a data path
    // waiting on the control plane fails here.
    let long_path = format!("/{}", "x".repeat(400));
    let (tally, failures) = split_on(addr, 6000, 8, &long_path).await;
    let stalled_for = started.elapsed();
    let during = web.metrics().await;
    cp.signal("CONT");
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(tally.get("stall-v1"), Some(&6000), "{tally:?}");
    // Every span is accounted for: shipped (into the stream), held (the queue of 64 plus one
    // batch of at most 256 waiting to be sent), or dropped and counted.
    let lost = dropped(&during);
    let sent = shipped(&during) - shipped(&before);
    assert!(lost > 0.0, "{during}");
    assert!(
        lost + sent + 64.0 + 256.0 >= 6000.0,
        "6000 spans: dropped {lost}, shipped {sent}: some went missing uncounted"
    );
    println!(
        "6000 requests with the control plane stopped: {stalled_for:?}; web shipped {sent}, dropped {lost} spans"
    );

    // Awake again: the backlog drains and new spans are shipped. A stall longer than the
    // lease (a loaded machine makes the 6000 calls slow) lapses reviews' lease when the
    // control plane wakes, until its next keep-alive registers it again: wait for that.
    eventually(
        "web reaches reviews after the stall",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move { call(&client, addr, "/after-stall").await.ok() }
        },
    )
    .await;
    let (_, failures) = split(addr, 100, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    let was = shipped(&during);
    eventually(
        "shipping resumes after the stall",
        Duration::from_secs(20),
        || {
            let web = &web;
            async move { (shipped(&web.metrics().await) >= was + 100.0).then_some(()) }
        },
    )
    .await;
}

/// 10 % sampling about a tenth of new traces are kept, and every 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traces_cross_two_hops_and_are_stored_by_the_control_plane() {
    use quiver_api::v1;
    quiver_tests::init_log();
    let db = Db::postgres().await;
    let dir = temp_dir("traces");
    let cp = ControlPlane::start(&db, &dir, &[]).await;
    let (relay_host, ratings_host) = (
        IpAddr::V4(Ipv4Addr::new(127, 0, 21, 2)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 21, 3)),
    );
    // The ratings echo decides the port; the relay must share it (one targetPort per app).
    let port = apps_on_one_port(&[ratings_host], &["traces-ratings".to_string()]).await;
    let mesh = format!(
        "{}---\napiVersion: quiver.dev/v1\nkind: Service\nmetadata: {{name: ratings, namespace: default}}\n\
         spec:\n  ports: [{{name: http, port: 9090, protocol: http1, targetPort: {port}}}]\n---\n\
         apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {{name: mesh, namespace: default}}\n\
         spec:\n  tracing: {{samplingPercent: 10}}\n",
        mesh_yaml(port)
    );
    cp.apply(&mesh).await;
    let ca = cp.write_ca(&dir).await;
    let spec = |service, token, outbound, extra| ProxySpec {
        service,
        token,
        labels: &[],
        outbound,
        extra,
    };
    let web = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        spec(
            "web",
            cp.join_token("default", "web", 1, "10m").await,
            &[("reviews", "http1")],
            &[],
        ),
    )
    .await;
    let ratings_ip = ratings_host.to_string();
    let ratings_flags = ["--app-host", ratings_ip.as_str()];
    let _ratings = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        spec(
            "ratings",
            cp.join_token("default", "ratings", 1, "10m").await,
            &[],
            &ratings_flags,
        ),
    )
    .await;
    let relay_ip = relay_host.to_string();
    let relay_flags = ["--app-host", relay_ip.as_str()];
    let mut reviews = MeshProxy::spawn(
        &cp,
        &ca,
        &dir,
        spec(
            "reviews",
            cp.join_token("default", "reviews", 1, "10m").await,
            &[("ratings", "http1")],
            &relay_flags,
        ),
    );
    let (_, relay_seen) =
        quiver_tests::apps::start_relay(SocketAddr::new(relay_host, port), reviews.outbound[0])
            .await;
    reviews.ready(Duration::from_secs(30)).await;
    let client: Client = quiver_tests::client::client(false);
    let addr = web.outbound[0];
    eventually("the two hops answer", Duration::from_secs(20), || {
        let client = client.clone();
        async move { call(&client, addr, "/warm-up").await.ok() }
    })
    .await;

    // One request with a sampled traceparent.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = http::Request::get(format!("http://{addr}/rate/7"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let seen_by_ratings = headers
        .get("x-echo-traceparent")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_else(|| {
            panic!(
                "no x-echo-traceparent: {headers:?} relay saw {:?} ratings served {}",
                relay_seen.all(),
                quiver_tests::apps::served("traces-ratings")
            )
        });
    assert!(
        seen_by_ratings.contains(trace),
        "ratings app got {seen_by_ratings}"
    );
    assert!(
        relay_seen.all().iter().any(|t| t.contains(trace)),
        "{:?}",
        relay_seen.all()
    );

    let admin = cp.admin().await;
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = admin
            .clone()
            .get_trace(v1::GetTraceRequest {
                trace_id: trace.into(),
            })
            .await
            .map(|t| t.into_inner().spans)
            .unwrap_or_default();
        if spans.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut shipped = Vec::new();
    for p in [&web, &reviews, &_ratings] {
        let m = p.metrics().await;
        shipped.push(format!(
            "{}: shipped {:?} dropped {:?}",
            p.name,
            metric(&m, "quiver_spans_shipped_total"),
            metric(&m, "quiver_spans_dropped_total")
        ));
    }
    assert_eq!(spans.len(), 4, "{spans:#?} {shipped:?}");
    let find = |service: &str, kind: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} span of {service}: {spans:#?}"))
    };
    let web_client = find("web", "CLIENT");
    let reviews_server = find("reviews", "SERVER");
    let reviews_client = find("reviews", "CLIENT");
    let ratings_server = find("ratings", "SERVER");
    assert_eq!(
        web_client.parent_span_id, "00f067aa0ba902b7",
        "the app's span"
    );
    assert_eq!(web_client.peer_service, "reviews");
    assert_eq!(reviews_server.parent_span_id, web_client.span_id);
    assert_eq!(
        reviews_server.peer_identity,
        "spiffe://mesh.local/ns/default/sa/web"
    );
    assert_eq!(
        reviews_client.parent_span_id, reviews_server.span_id,
        "through the relay app"
    );
    assert_eq!(ratings_server.parent_span_id, reviews_client.span_id);
    assert!(
        spans
            .iter()
            .all(|s| s.status_code == 200 && s.name == "GET /rate/7"),
        "{spans:#?}"
    );
    assert!(!web_client.quic_connection_id.is_empty() && !web_client.endpoint.is_empty());
    // Both ends of a hop name the same QUIC connection; the two hops used different ones.
    assert_eq!(
        web_client.quic_connection_id,
        reviews_server.quic_connection_id
    );
    assert_eq!(
        reviews_client.quic_connection_id,
        ratings_server.quic_connection_id
    );
    assert_ne!(
        web_client.quic_connection_id,
        reviews_client.quic_connection_id
    );
    assert_eq!(web_client.quic_connection_id.len(), 16, "{web_client:?}");

    // 10 % head sampling over 1,000 new traces, and every 5xx kept.
    let since = std::time::SystemTime::now();
    let (tally, failures) = split(addr, 1000, 8).await;
    assert!(failures.is_empty(), "{failures:?} {tally:?}");
    for _ in 0..50 {
        let uri = format!("http://{addr}/status/503").parse().unwrap();
        assert_eq!(client.get(uri).await.unwrap().status(), 503);
    }
    let start = time_rfc3339(since);
    let count = |errors_only: bool| {
        let mut admin = admin.clone();
        let start = start.clone();
        async move {
            admin
                .search_traces(v1::SearchTracesRequest {
                    service: "web".into(),
                    errors_only,
                    start,
                    limit: 200,
                    ..Default::default()
                })
                .await
                .expect("search")
                .into_inner()
                .traces
                .len()
        }
    };
    let errored = eventually(
        "every 5xx trace is kept",
        Duration::from_secs(20),
        || async {
            let n = count(true).await;
            (n >= 50).then_some(n)
        },
    )
    .await;
    assert_eq!(errored, 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = count(false).await - errored;
    assert!(
        (60..=140).contains(&kept),
        "10% of 1000 new traces kept {kept}"
    );
    // The service graph counts every request (not only sampled ones) from the proxies'
    // per-destination counts, sent every 10 s.
    let edge = eventually("the web -> reviews edge", Duration::from_secs(30), || {
        let mut admin = admin.clone();
        async move {
            let g = admin
                .get_service_graph(v1::GetServiceGraphRequest {
                    window: "5m".into(),
                    namespace: "default".into(),
                })
                .await
                .ok()?
                .into_inner();
            g.edges
                .into_iter()
                .find(|e| e.source_service == "web" && e.destination_service == "reviews")
                .filter(|e| e.error_rate > 0.0)
        }
    })
    .await;
    assert!(edge.request_rate > 0.0 && edge.error_rate < 0.2, "{edge:?}");
}

fn time_rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format time")
}
