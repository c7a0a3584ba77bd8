//! A Service whose `targetPort` is moved onto a sidecar's own listener must not turn inbound
//! mesh traffic into calls to that sidecar (its admin port, or its outbound proxy acting with
//! the workload's identity) (issue 17, item 8): the proxy refuses such a push whole and keeps
//! serving the app. Real control plane, real proxies, a real echo app.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use quiver_tests::apps::{Behaviour, serve_http_echo_with};
use quiver_tests::mesh::{ControlPlane, Db, MeshProxy, ProxySpec, metric};
use quiver_tests::pki::temp_dir;

fn services(reviews_target: u16, app_port: u16) -> String {
    format!(
        "apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http1, targetPort: {app_port}}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, protocol: http1, targetPort: {reviews_target}}}]
"
    )
}

/// GET `path` through `outbound`: (status, the echo app's tag, body).
async fn get(outbound: SocketAddr, path: &str) -> (u16, String, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.get(format!("http://{outbound}{path}").parse().unwrap()),
    )
    .await
    .expect("an answer in time")
    .expect("an answer");
    let status = resp.status().as_u16();
    let tag = resp
        .headers()
        .get("x-echo-tag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, tag, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_port_moved_onto_the_sidecars_admin_port_is_refused_by_the_proxy() {
    quiver_tests::init_log();
    let db = Db::postgres().await;
    let dir = temp_dir("sidecar-ports");
    let cp = ControlPlane::start(&db, &dir, &[]).await;
    let app = serve_http_echo_with(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour {
            tag: "reviews-app".into(),
            ..Behaviour::default()
        },
    )
    .await
    .unwrap();
    cp.apply(&services(app.port(), app.port())).await;
    let ca = cp.write_ca(&dir).await;
    let token = cp.join_token("default", "web", 1, "10m").await;
    let web = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        ProxySpec {
            service: "web",
            token,
            labels: &[],
            outbound: &[("reviews", "http1")],
            extra: &[],
        },
    )
    .await;
    let token = cp.join_token("default", "reviews", 1, "10m").await;
    let reviews = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        ProxySpec {
            service: "reviews",
            token,
            labels: &[],
            outbound: &[],
            extra: &[],
        },
    )
    .await;
    quiver_tests::eventually(
        "reviews answers through the mesh",
        Duration::from_secs(30),
        || async {
            let (status, tag, _) = get(web.outbound[0], "/metrics").await;
            (status == 200 && tag == "reviews-app").then_some(())
        },
    )
    .await;

    // The operator (or an attacker with an admin token) points reviews at its sidecar's
    // admin listener.
    let failed = |text: &str| metric(text, "quiver_config_reloads_total{result=\"failed\"}");
    let before = failed(&reviews.metrics().await).unwrap_or(0.0);
    cp.apply(&services(reviews.admin.port(), app.port())).await;
    let after = quiver_tests::eventually(
        "the reviews proxy to refuse the push",
        Duration::from_secs(20),
        || async {
            let now = failed(&reviews.metrics().await).unwrap_or(0.0);
            (now > before).then_some(now)
        },
    )
    .await;
    assert!(after > before);
    assert!(
        reviews.logs().contains("this sidecar's own listener"),
        "the refusal names the reason:\n{}",
        reviews.logs()
    );

    // Inbound requests still reach the app, never the sidecar's admin port.
    for _ in 0..20 {
        let (status, tag, body) = get(web.outbound[0], "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            tag, "reviews-app",
            "answered by something else: {body:.200}"
        );
        assert!(!body.contains("quiver_config_reloads_total"), "{body:.200}");
    }
    drop((web, reviews));
}
