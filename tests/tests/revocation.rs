//! Revocation under traffic, through a real mesh: a `quiver-control` process on Postgres and
//! three `quiver-proxy` processes (web calls reviews and ratings; ratings calls reviews).
//! Revoking the ratings workload closes its live connections on both sides (reviews serving
//! it, web calling it) and refuses its renewal within 10 s, while web -> reviews loses no
//! request; a ratings proxy that joins afterwards with a fresh token is served again.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use quiver_api::v1;
use quiver_tests::apps::{Behaviour, serve_http_echo_with};
use quiver_tests::eventually;
use quiver_tests::mesh::{ControlPlane, Db, MeshProxy, ProxySpec, admin_get};
use quiver_tests::pki::temp_dir;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

fn mesh_yaml(reviews_port: u16, ratings_port: u16) -> String {
    format!(
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
  ports: [{{name: http, port: 9080, protocol: http1, targetPort: {reviews_port}}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: ratings, namespace: default}}
spec:
  ports: [{{name: http, port: 9090, protocol: http1, targetPort: {ratings_port}}}]
"#
    )
}

/// GET `path` through an outbound listener: Ok(tag of the app that answered) or why not.
async fn call(client: &Client, addr: SocketAddr, path: &str) -> Result<String, String> {
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
    let (tag, error) = (header("x-echo-tag"), header("quiver-error"));
    let _ = resp.into_body().collect().await;
    if status == 200 {
        Ok(tag)
    } else {
        Err(format!("status {status} quiver-error {error:?}"))
    }
}

/// Requests in a loop until stopped: how many succeeded, the failures, and when the last
/// success was.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(addr: SocketAddr, path: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let client: Client = quiver_tests::client::client(false);
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                match call(&client, addr, path).await {
                    Ok(_) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => f.lock().unwrap().push(e),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self {
            stop,
            ok,
            failed,
            task,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn failures(&self) -> usize {
        self.failed.lock().unwrap().len()
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

/// A labelled sample's value in Prometheus text (`name{labels}`), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Wait until `web`'s config lists `n` endpoints of `service`; on a timeout, say which it
/// listed last.
async fn await_endpoints(proxy: &MeshProxy, service: &str, n: usize) {
    let admin = proxy.admin;
    let seen = Arc::new(std::sync::Mutex::new(String::from("no /config read")));
    let last = seen.clone();
    let found = tokio::time::timeout(
        Duration::from_secs(20),
        eventually(
            &format!("{} sees {n} {service} endpoints", proxy.name),
            Duration::from_secs(25),
            || {
                let seen = seen.clone();
                async move {
                    let (_, body) = admin_get(admin, "/config").await.ok()?;
                    let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
                    let eps = doc["snapshot"]["services"][service]["endpoints"].as_array()?;
                    *seen.lock().unwrap() = format!(
                        "snapshot version {}: {}",
                        doc["snapshot"]["version"],
                        serde_json::Value::Array(eps.clone())
                    );
                    (eps.len() == n).then_some(())
                }
            },
        ),
    )
    .await;
    assert!(
        found.is_ok(),
        "{} did not see {n} {service} endpoints within 20 s; last seen: {}",
        proxy.name,
        last.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_workload_is_cut_off_within_seconds_while_other_pairs_lose_nothing() {
    quiver_tests::init_log();
    let dir = temp_dir("revocation");
    let db = Db::postgres().await;
    // Short SVIDs: every proxy renews every ~8 s, so the revoked one tries within the window.
    let cp = ControlPlane::start(&db, &dir, &["--svid-ttl", "12s"]).await;
    let reviews_app = serve_http_echo_with(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour {
            tag: "revocation-reviews".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ratings_app = serve_http_echo_with(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour {
            tag: "revocation-ratings".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    cp.apply(&mesh_yaml(reviews_app.port(), ratings_app.port()))
        .await;
    let ca = cp.write_ca(&dir).await;
    let spec = |service, token, outbound| ProxySpec {
        service,
        token,
        labels: &[],
        outbound,
        extra: &[],
    };
    let reviews = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        spec(
            "reviews",
            cp.join_token("default", "reviews", 1, "10m").await,
            &[],
        ),
    )
    .await;
    let ratings = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        spec(
            "ratings",
            cp.join_token("default", "ratings", 1, "10m").await,
            &[("reviews", "http1")],
        ),
    )
    .await;
    let web = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        spec(
            "web",
            cp.join_token("default", "web", 1, "10m").await,
            &[("reviews", "http1"), ("ratings", "http1")],
        ),
    )
    .await;
    await_endpoints(&web, "reviews", 1).await;
    await_endpoints(&web, "ratings", 1).await;
    await_endpoints(&ratings, "reviews", 1).await;

    // Every pair carries traffic on live pooled connections.
    let web_reviews = Traffic::start(web.outbound[0], "/web-reviews");
    let web_ratings = Traffic::start(web.outbound[1], "/web-ratings");
    let ratings_reviews = Traffic::start(ratings.outbound[0], "/ratings-reviews");
    eventually(
        "all three pairs answer",
        Duration::from_secs(10),
        || async {
            (web_reviews.ok() > 20 && web_ratings.ok() > 20 && ratings_reviews.ok() > 20)
                .then_some(())
        },
    )
    .await;
    assert_eq!(web_ratings.failures(), 0);
    assert_eq!(ratings_reviews.failures(), 0);

    let mut admin = cp.admin().await;
    let workload = admin
        .list_workloads(v1::ListRequest {
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .find(|w| w.spec.as_ref().is_some_and(|s| s.service == "ratings"))
        .unwrap()
        .metadata
        .unwrap()
        .name;
    let revoked_at = Instant::now();
    let revocation = admin
        .revoke(v1::RevokeRequest {
            target: Some(v1::revoke_request::Target::Workload(workload)),
            namespace: "default".into(),
            reason: "revocation test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        revocation.spiffe_id,
        "spiffe://mesh.local/ns/default/sa/ratings"
    );

    // Within 10 s: reviews closed the connection ratings called it on, web closed its pooled
    // connection to ratings, both pairs fail from then on, and the control plane refused
    // the revoked proxy's renewal.
    let within = Duration::from_secs(10);
    eventually(
        "reviews closes ratings' live connection and web its connection to ratings",
        within,
        || async {
            let r = reviews.metrics().await;
            let w = web.metrics().await;
            (sample(&r, "quiver_revoked_peer_connections_total{side=\"server\"}") >= 1.0
                && sample(&w, "quiver_revoked_peer_connections_total{side=\"client\"}") >= 1.0)
                .then_some(())
        },
    )
    .await;
    let client: Client = quiver_tests::client::client(false);
    eventually("ratings -> reviews is refused", within, || async {
        call(&client, ratings.outbound[0], "/after").await.err()
    })
    .await;
    eventually("web -> ratings is refused", within, || async {
        call(&client, web.outbound[1], "/after").await.err()
    })
    .await;
    eventually("the revoked proxy's renewal is refused", within, || async {
        let (_, m) = admin_get(cp.api, "/metrics").await.ok()?;
        (sample(&m, "quiver_revoked_refusals_total{method=\"Renew\"}") >= 1.0).then_some(())
    })
    .await;
    assert!(
        revoked_at.elapsed() < within + Duration::from_secs(1),
        "took {:?}",
        revoked_at.elapsed()
    );
    assert!(
        ratings
            .logs()
            .contains("spiffe://mesh.local/ns/default/sa/ratings is revoked"),
        "the revoked proxy is told why:\n{}",
        ratings.logs()
    );
    // Still refused seconds later (the pools dial again; those handshakes are refused).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, failed) = ratings_reviews.stop().await;
    assert!(!failed.is_empty());
    web_ratings.stop().await;
    let late = call(&client, ratings.outbound[0], "/late").await;
    assert!(late.is_err(), "ratings reached reviews: {late:?}");
    let late = call(&client, web.outbound[1], "/late").await;
    assert!(late.is_err(), "web reached the revoked ratings: {late:?}");

    // A fresh join token: a new ratings proxy with a certificate issued after the
    // revocation is an endpoint again and is served.
    let ratings2 = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        spec(
            "ratings",
            cp.join_token("default", "ratings", 1, "10m").await,
            &[("reviews", "http1")],
        ),
    )
    .await;
    await_endpoints(&web, "ratings", 1).await;
    eventually("web -> the rejoined ratings works", within, || async {
        call(&client, web.outbound[1], "/rejoined").await.ok()
    })
    .await;
    eventually("the rejoined ratings -> reviews works", within, || async {
        call(&client, ratings2.outbound[0], "/rejoined").await.ok()
    })
    .await;

    // web -> reviews never failed, through the revocation and the rejoin.
    let (ok, failed) = web_reviews.stop().await;
    assert!(ok > 100, "only {ok} requests");
    assert!(failed.is_empty(), "web -> reviews failed: {failed:?}");
}

fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Static mode: a deny-list in the config file (re-read live) closes the live connection of
/// the peer it revokes and refuses that peer's next handshake (mesh TLS never resumes a
/// session, so the verifier sees the revoked certificate); on the client side too; and
/// taking the entry out lets the peer back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_deny_list_closes_live_connections_and_refuses_handshakes_both_ways() {
    use quiver_tests::harness::{Apps, RunningProxy, client_yaml, server_yaml};
    use quiver_tests::pki::Pki;

    let pki = Pki::new();
    let apps = Apps::start().await;
    let b_yaml = server_yaml(&pki.issue("b"), &apps, "1s");
    let b_file = pki.dir.join("b-revocation.yaml");
    std::fs::write(&b_file, &b_yaml).unwrap();
    let b = RunningProxy::start_file(&b_file, Duration::from_millis(100))
        .await
        .unwrap();
    let a_yaml = client_yaml(&pki.issue("a"), b.bound.quic, pki.id("b").as_str());
    let a_file = pki.dir.join("a-revocation.yaml");
    std::fs::write(&a_file, &a_yaml).unwrap();
    let a = RunningProxy::start_file(&a_file, Duration::from_millis(100))
        .await
        .unwrap();
    let client: Client = quiver_tests::client::client(false);
    let echo = a.bound.outbound[0];
    call(&client, echo, "/first").await.unwrap();
    let metrics = |p: &RunningProxy| {
        let admin = p.bound.admin;
        async move { admin_get(admin, "/metrics").await.unwrap().1 }
    };
    let failed = "quiver_quic_handshakes_total{side=\"server\",result=\"failed\"}";
    let failed_before = sample(&metrics(&b).await, failed);

    // B revokes A: the live connection closes, and A's next handshakes are refused.
    let revoke = |yaml: &str, id: &str| {
        format!(
            "{yaml}revocations:\n  - {{spiffe_id: \"{id}\", not_before_unix: {}}}\n",
            unix_now()
        )
    };
    std::fs::write(&b_file, revoke(&b_yaml, pki.id("a").as_str())).unwrap();
    eventually(
        "B closes A's live connection",
        Duration::from_secs(10),
        || async {
            (sample(
                &metrics(&b).await,
                "quiver_revoked_peer_connections_total{side=\"server\"}",
            ) >= 1.0)
                .then_some(())
        },
    )
    .await;
    // A's new connection: B's verifier refuses A's certificate in the handshake.
    let refused = call(&client, echo, "/revoked").await.unwrap_err();
    assert!(refused.contains("quiver-error \"peer-"), "{refused}");
    let m = metrics(&b).await;
    assert!(
        sample(&m, failed) > failed_before,
        "A's handshake was not refused:\n{m}"
    );
    assert_eq!(sample(&m, "quiver_revocations"), 1.0);

    // Taken out of the file: A is served again.
    std::fs::write(&b_file, &b_yaml).unwrap();
    eventually("A is served again", Duration::from_secs(10), || async {
        call(&client, echo, "/back").await.ok()
    })
    .await;

    // A revokes B (the serving peer): A closes its pooled connection and refuses B's
    // certificate on the next handshake.
    std::fs::write(&a_file, revoke(&a_yaml, pki.id("b").as_str())).unwrap();
    eventually(
        "A closes its connection to B",
        Duration::from_secs(10),
        || async {
            (sample(
                &metrics(&a).await,
                "quiver_revoked_peer_connections_total{side=\"client\"}",
            ) >= 1.0)
                .then_some(())
        },
    )
    .await;
    let refused = call(&client, echo, "/revoked-server").await.unwrap_err();
    assert!(refused.contains("peer-handshake"), "{refused}");
}
