//! Gateway API documents as users already write them (GAMMA: HTTPRoutes attached to a
//! Service, per-version Services as backends), applied to a real `quiver-control` process
//! and carried out by real `quiver-proxy` processes: the weighted split holds over many
//! requests, the most specific match wins whatever order the rules are written in, a
//! header match pins a user to the new version, the redirect is answered by the caller's
//! proxy, the rewrite and header modifiers reach the app, and a second HTTPRoute on the
//! same Service merges with the first.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use quiver_tests::apps::{Behaviour, serve_http_echo_with};
use quiver_tests::client::{client, collect};
use quiver_tests::eventually;
use quiver_tests::mesh::{ControlPlane, Db, MeshProxy, ProxySpec, admin_get};
use quiver_tests::pki::temp_dir;

fn services(v1_port: u16, v2_port: u16) -> String {
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
  ports: [{{name: http, port: 9080, protocol: http1, targetPort: 1}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: reviews-v1, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, protocol: http1, targetPort: {v1_port}}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: reviews-v2, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, protocol: http1, targetPort: {v2_port}}}]
"#
    )
}

/// The canary split as the GAMMA docs shape it; the rules are written least specific first.
const CANARY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews-canary
  namespace: default
  annotations: {team: reviews}
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 80
    - name: reviews-v2
      port: 9080
      weight: 20
  - matches:
    - headers:
      - name: x-user
        value: jason
    backendRefs:
    - name: reviews-v2
      port: 9080
  - matches:
    - path:
        type: PathPrefix
        value: /old
    filters:
    - type: RequestRedirect
      requestRedirect:
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /new
        statusCode: 301
"#;

/// A second HTTPRoute on the same Service: an API prefix rewritten for v1, with header
/// modifiers and a timeout.
const API: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews-api
  namespace: default
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews}
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api/v2}
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-env, value: mesh}]
        remove: [x-debug]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: x-routed-by, value: reviews-api}]
    backendRefs:
    - {name: reviews-v1, port: 9080}
    timeouts: {request: 5s, backendRequest: 2s}
"#;

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response<()> {
    let mut req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client::<Full<Bytes>>(false).request(req),
    )
    .await
    .expect("answered within 10 s")
    .unwrap();
    collect(resp).await.0
}

fn header<'a>(resp: &'a Response<()>, name: &str) -> &'a str {
    resp.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gamma_httproutes_are_carried_out_by_real_proxies() {
    quiver_tests::init_log();
    let dir = temp_dir("gateway-api");
    let db = Db::sqlite(&dir);
    let cp = ControlPlane::start(&db, &dir, &[]).await;
    let app = |tag: &str| {
        serve_http_echo_with(
            "127.0.0.1:0".parse().unwrap(),
            Behaviour {
                tag: tag.into(),
                ..Default::default()
            },
        )
    };
    let v1_app = app("gw-v1").await.unwrap();
    let v2_app = app("gw-v2").await.unwrap();
    cp.apply(&services(v1_app.port(), v2_app.port())).await;
    cp.apply(CANARY).await;
    cp.apply(API).await;
    let ca = cp.write_ca(&dir).await;
    let spec = |service, token, outbound| ProxySpec {
        service,
        token,
        labels: &[],
        outbound,
        extra: &[],
    };
    let _v1 = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        spec(
            "reviews-v1",
            cp.join_token("default", "reviews-v1", 1, "10m").await,
            &[],
        ),
    )
    .await;
    let _v2 = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        spec(
            "reviews-v2",
            cp.join_token("default", "reviews-v2", 1, "10m").await,
            &[],
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
            &[("reviews", "http1")],
        ),
    )
    .await;
    let out = web.outbound[0];

    // The caller's proxy runs the one Route translated from both HTTPRoutes.
    let admin = web.admin;
    eventually(
        "web runs the translated route with both versions reachable",
        Duration::from_secs(20),
        || async move {
            let (_, body) = admin_get(admin, "/config").await.ok()?;
            let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
            let eps = |s: &str| {
                doc["snapshot"]["services"][s]["endpoints"]
                    .as_array()
                    .map_or(0, Vec::len)
            };
            (body.contains("httproute/reviews-api/")
                && body.contains("httproute/reviews-canary/")
                && eps("reviews-v1") == 1
                && eps("reviews-v2") == 1)
                .then_some(())
        },
    )
    .await;

    // The split holds over many requests: 80/20 within a few points.
    let n = 500;
    let mut v2 = 0;
    for i in 0..n {
        let r = get(out, &format!("/items/{i}"), &[]).await;
        assert_eq!(r.status(), 200, "request {i}: {:?}", r.headers());
        match header(&r, "x-echo-tag") {
            "gw-v2" => v2 += 1,
            "gw-v1" => {}
            other => panic!("answered by {other:?}"),
        }
        assert_eq!(header(&r, "x-echo-path"), format!("/items/{i}"));
    }
    let share = f64::from(v2) / f64::from(n);
    assert!(
        (0.14..=0.26).contains(&share),
        "{v2} of {n} went to v2 ({share:.3}); the route says 20%"
    );

    // A header match is more specific than the catch-all written before it: pinned to v2.
    for _ in 0..50 {
        let r = get(out, "/items/1", &[("x-user", "jason")]).await;
        assert_eq!(header(&r, "x-echo-tag"), "gw-v2");
    }

    // The redirect is answered by the caller's proxy: segment-wise prefix, the rest kept.
    let r = get(out, "/old/books?page=2", &[]).await;
    assert_eq!(r.status(), 301);
    let location = header(&r, "location");
    assert!(
        location.ends_with("/new/books?page=2"),
        "location {location:?}"
    );
    assert!(r.headers().get("x-echo-tag").is_none(), "no app answered");
    // `/older` is not under `/old` in Gateway API: the split serves it.
    let r = get(out, "/older", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-echo-path"), "/older");

    // The second HTTPRoute: rewritten, edited, and sent to v1 only.
    for _ in 0..30 {
        let r = get(
            out,
            "/api/v2/reviews/7",
            &[("x-env", "dev"), ("x-debug", "1")],
        )
        .await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-echo-tag"), "gw-v1");
        assert_eq!(header(&r, "x-echo-path"), "/v2/reviews/7");
        let seen = header(&r, "x-echo-values");
        assert!(seen.contains("x-env=mesh"), "{seen}");
        assert!(!seen.contains("x-debug"), "{seen}");
        assert_eq!(header(&r, "x-routed-by"), "reviews-api");
    }
    let r = get(out, "/api/v2", &[]).await;
    assert_eq!(header(&r, "x-echo-path"), "/v2");

    // A Quiver Route for the same Service is refused, naming the HTTPRoute that routes it.
    let mut admin = cp.admin().await;
    let route: quiver_api::v1::Route = match quiver_api::document::parse_documents(
        "apiVersion: quiver.dev/v1
kind: Route
metadata: {name: reviews}
spec:
  service: reviews
  rules: [{name: all, backends: [{service: reviews-v1, weight: 100}]}]
",
    )
    .unwrap()
    .remove(0)
    {
        quiver_api::resource::AnyResource::Route(r) => r,
        _ => unreachable!(),
    };
    let err = admin.apply_route(route).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("already routed by HTTPRoute default/reviews-"),
        "{}",
        err.message()
    );

    // Changing the split is an apply of the same document: all traffic to v2.
    cp.apply(&CANARY.replace("weight: 80", "weight: 0")).await;
    eventually(
        "the new split reaches the caller",
        Duration::from_secs(20),
        || async move {
            for _ in 0..20 {
                if header(&get(out, "/x", &[]).await, "x-echo-tag") != "gw-v2" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// A GRPCRoute as users write it, carried out on real gRPC calls through two real proxies:
/// the method match picks the rule (seen in the response header each rule adds), and the
/// order is Gateway API's for GRPCRoute (exact method, then header matches, then the bare
/// service), whatever order the rules are written in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grpcroute_routes_real_grpc_calls_by_method() {
    use quiver_tests::echo_proto::EchoRequest;
    use quiver_tests::echo_proto::echo_client::EchoClient;

    quiver_tests::init_log();
    let dir = temp_dir("gateway-grpc");
    let db = Db::sqlite(&dir);
    let cp = ControlPlane::start(&db, &dir, &[]).await;
    let app = quiver_tests::apps::start_grpc_echo().await;
    cp.apply(&format!(
        r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http1, targetPort: 1}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  ports: [{{name: grpc, port: 50051, protocol: grpc, targetPort: {}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo}}]
  rules:
  - matches: [{{method: {{service: quiver.testing.Echo}}}}]
    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-rule, value: service}}]}}}}]
  - matches: [{{method: {{service: quiver.testing.Echo, method: Unary}}}}]
    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-rule, value: unary}}]}}}}]
  - matches: [{{method: {{service: quiver.testing.Echo}}, headers: [{{name: x-tier, value: gold}}]}}]
    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-rule, value: gold}}]}}}}]
"#,
        app.port()
    ))
    .await;
    let ca = cp.write_ca(&dir).await;
    let spec = |service, token, outbound| ProxySpec {
        service,
        token,
        labels: &[],
        outbound,
        extra: &[],
    };
    let _echo = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        spec(
            "echo",
            cp.join_token("default", "echo", 1, "10m").await,
            &[],
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
            &[("echo", "grpc")],
        ),
    )
    .await;
    let out = web.outbound[0];
    let call = |method: &'static str, gold: bool| async move {
        let mut c = EchoClient::connect(format!("http://{out}")).await.ok()?;
        let mut req = tonic::Request::new(EchoRequest {
            message: "hi".into(),
            ..Default::default()
        });
        if gold {
            req.metadata_mut().insert("x-tier", "gold".parse().unwrap());
        }
        let rule = |m: &tonic::metadata::MetadataMap| {
            m.get("x-rule")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        match method {
            "Unary" => c.unary(req).await.ok().map(|r| rule(r.metadata())),
            _ => c.stream(req).await.ok().map(|r| rule(r.metadata())),
        }
    };
    eventually(
        "the GRPCRoute is in effect",
        Duration::from_secs(20),
        || async move { (call("Unary", false).await.as_deref() == Some("unary")).then_some(()) },
    )
    .await;
    // The exact method beats the service; the header match beats the bare service match.
    assert_eq!(call("Unary", false).await.as_deref(), Some("unary"));
    assert_eq!(call("Stream", false).await.as_deref(), Some("service"));
    assert_eq!(call("Stream", true).await.as_deref(), Some("gold"));
    // Exact method (longer method) still beats the header match, as Gateway API orders them.
    assert_eq!(call("Unary", true).await.as_deref(), Some("unary"));
}
