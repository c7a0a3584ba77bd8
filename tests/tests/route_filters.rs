//! A Route's Gateway API features through real proxies: query parameter matches, header
//! modifiers on the request and the response, redirects answered by the caller's proxy, and
//! URL rewrites (with the callee authorizing the rewritten path).
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use quiver_tests::apps::{Behaviour, served, start_tagged_echo};
use quiver_tests::client::{client, collect};
use quiver_tests::harness::{RunningProxy, identity_yaml};
use quiver_tests::pki::Pki;

/// A server-side proxy for `reviews` in front of `app`, with `extra` config appended.
async fn server(pki: &Pki, app: SocketAddr, extra: &str) -> RunningProxy {
    let yaml = format!(
        "{}listen: {{quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}\ninbound:\n  - {{service: reviews, port: 8080, protocol: http1, app: \"{app}\"}}\n{extra}",
        identity_yaml(&pki.issue("reviews"))
    );
    RunningProxy::start(&yaml, &pki.dir)
        .await
        .expect("start server proxy")
}

/// Two tagged versions of `reviews` (`{tag}-v1`, `{tag}-v2`) behind their own proxies
/// (`server_extra` appended to each), and a caller whose outbound listener 0 leads to
/// `reviews`, with `routes` appended.
async fn mesh(
    tag: &str,
    v1: Behaviour,
    routes: &str,
    server_extra: &str,
) -> (Pki, RunningProxy, Vec<RunningProxy>) {
    let pki = Pki::new();
    let a1 = start_tagged_echo(Behaviour {
        tag: format!("{tag}-v1"),
        ..v1
    })
    .await;
    let a2 = start_tagged_echo(Behaviour {
        tag: format!("{tag}-v2"),
        ..Behaviour::default()
    })
    .await;
    let b1 = server(&pki, a1, server_extra).await;
    let b2 = server(&pki, a2, server_extra).await;
    let mut y = identity_yaml(&pki.issue("frontend"));
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
    for (b, version) in [(&b1, "v1"), (&b2, "v2")] {
        y.push_str(&format!(
            "      - {{address: \"{}\", identity: \"{}\", labels: {{version: {version}}}}}\n",
            b.bound.quic,
            pki.id("reviews")
        ));
    }
    y.push_str(routes);
    let c = RunningProxy::start(&y, &pki.dir)
        .await
        .expect("start caller proxy");
    (pki, c, vec![b1, b2])
}

/// GET `path_and_query` through `addr` with `headers`; the response head.
async fn get(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> Response<()> {
    let mut req = Request::get(format!("http://{addr}{path_and_query}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (head, _) = collect(client::<Full<Bytes>>(false).request(req).await.unwrap()).await;
    head
}

fn header<'a>(resp: &'a Response<()>, name: &str) -> &'a str {
    resp.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_choose_the_backend_on_the_first_decoded_value() {
    let routes = "routes:
  - service: reviews
    rules:
      - name: gold
        match:
          queryParams: [{name: tier, exact: gold plus}, {name: beta, present: true}]
        backends: [{subset: v2, weight: 100}]
      - name: rest
        backends: [{subset: v1, weight: 100}]
";
    let (_pki, c, _b) = mesh("q", Behaviour::default(), routes, "").await;
    let addr = c.bound.outbound[0];
    let cases = [
        ("/?tier=gold%20plus&beta", "q-v2"),
        ("/items?beta=1&%74ier=gold%20plus", "q-v2"),
        ("/?tier=gold%20plus", "q-v1"),
        ("/?tier=silver&tier=gold%20plus&beta", "q-v1"),
        ("/?Tier=gold%20plus&beta", "q-v1"),
        ("/", "q-v1"),
    ];
    for (uri, want) in cases {
        for _ in 0..20 {
            let r = get(addr, uri, &[]).await;
            assert_eq!(r.status(), 200, "{uri}");
            assert_eq!(header(&r, "x-echo-tag"), want, "{uri}");
            assert_eq!(
                header(&r, "x-echo-path"),
                uri,
                "the query reaches the app as sent"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers_change_what_the_app_and_the_client_see_on_every_attempt() {
    // v1 fails half its requests: the retries must carry the same edited head.
    let routes = "routes:
  - service: reviews
    rules:
      - name: edited
        backends: [{subset: v1, weight: 100}]
        retries: {attempts: 10, retryOn: [5xx], budgetPercent: 100}
        requestHeaders:
          set: [{name: x-env, value: prod}]
          add: [{name: x-tag, value: mesh}]
          remove: [x-debug]
        responseHeaders:
          set: [{name: x-echo-tag, value: edited}]
          add: [{name: x-served-by, value: quiver}]
          remove: [x-echo-method]
";
    let flaky = Behaviour {
        fail_percent: 50,
        ..Behaviour::default()
    };
    let (_pki, c, _b) = mesh("hm", flaky, routes, "").await;
    let sent = [
        ("x-env", "dev"),
        ("x-env", "test"),
        ("x-tag", "app"),
        ("x-debug", "1"),
        ("x-kept", "yes"),
    ];
    for _ in 0..20 {
        let r = get(c.bound.outbound[0], "/", &sent).await;
        assert_eq!(r.status(), 200);
        let seen = header(&r, "x-echo-values");
        for want in ["x-env=prod", "x-tag=app; x-tag=mesh", "x-kept=yes"] {
            assert!(
                seen.contains(want),
                "{want:?} not in what the app saw: {seen}"
            );
        }
        for gone in ["x-env=dev", "x-env=test", "x-debug"] {
            assert!(!seen.contains(gone), "{gone:?} reached the app: {seen}");
        }
        assert_eq!(header(&r, "x-echo-tag"), "edited");
        assert_eq!(header(&r, "x-served-by"), "quiver");
        assert!(r.headers().get("x-echo-method").is_none());
        assert_eq!(
            header(&r, "x-echo-path"),
            "/",
            "other response headers are kept"
        );
    }
    assert!(
        served("hm-v1") > 20,
        "no attempt was retried ({} served)",
        served("hm-v1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_answered_by_the_callers_proxy_with_its_location() {
    let routes = "routes:
  - service: reviews
    rules:
      - name: moved
        match: {path: {prefix: /old/}}
        redirect:
          scheme: https
          hostname: shop.example.com
          path: {replacePrefixMatch: /new/}
          statusCode: 301
        responseHeaders: {set: [{name: cache-control, value: no-store}]}
      - name: login
        match: {path: {exact: /account}}
        redirect: {path: {replaceFullPath: /login}}
      - name: rest
";
    let (_pki, c, _b) = mesh("rd", Behaviour::default(), routes, "").await;
    let addr = c.bound.outbound[0];
    let r = get(addr, "/old/items/7?color=red", &[]).await;
    assert_eq!(r.status(), 301);
    assert_eq!(
        header(&r, "location"),
        "https://shop.example.com/new/items/7?color=red"
    );
    assert_eq!(header(&r, "cache-control"), "no-store");
    let r = get(addr, "/account", &[]).await;
    assert_eq!(r.status(), 302, "the default status");
    assert_eq!(
        header(&r, "location"),
        format!("http://{addr}/login"),
        "the request's own scheme, host and port"
    );
    assert_eq!(
        served("rd-v1") + served("rd-v2"),
        0,
        "a redirect reached an app"
    );
    let r = get(addr, "/other", &[]).await;
    assert_eq!(r.status(), 200, "other rules still forward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_changes_the_path_and_host_the_app_sees_and_the_callee_authorizes_it() {
    // The callee allows only /v2/*: the caller's rewrite of /api/* to /v2/* is what it judges.
    let authz = "authorization:
  - name: v2-only
    service: reviews
    allow:
      - paths: [\"/v2/*\"]
";
    let routes = "routes:
  - service: reviews
    rules:
      - name: api
        match: {path: {prefix: /api/}}
        rewrite:
          hostname: reviews.internal
          path: {replacePrefixMatch: /v2/}
        backends: [{subset: v1, weight: 100}]
      - name: whole
        match: {path: {exact: /home}}
        rewrite: {path: {replaceFullPath: /v2/index.html}}
        backends: [{subset: v1, weight: 100}]
      - name: rest
        backends: [{subset: v1, weight: 100}]
";
    let (_pki, c, _b) = mesh("rw", Behaviour::default(), routes, authz).await;
    let addr = c.bound.outbound[0];
    let r = get(addr, "/api/items?page=2", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-echo-path"), "/v2/items?page=2");
    assert_eq!(header(&r, "x-echo-host"), "reviews.internal");
    let r = get(addr, "/home", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-echo-path"), "/v2/index.html");
    assert_eq!(
        header(&r, "x-echo-host"),
        addr.to_string(),
        "without a hostname the Host is kept"
    );
    // Not rewritten: the callee judges /v1/items itself and denies it.
    let r = get(addr, "/v1/items", &[]).await;
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "quiver-error"), "denied");
}
