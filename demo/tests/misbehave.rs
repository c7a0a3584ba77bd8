//! `POST /demo/misbehave` on the sample apps, as real processes (`quiver-demo demo-app ...`)
//! on real sockets: the settings asked take effect (errors at the share asked, latency
//! added), a bad body is refused 400 naming the field and leaves the settings alone, a
//! request that came through a sidecar is refused, and `{"errorPercent": 0}` heals.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use quiver_demo::apps::{CatalogReply, Misbehave};

type Http = Client<HttpConnector, Full<Bytes>>;

/// A sample app process, killed when the test ends.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `quiver-demo demo-app ARGS --listen 127.0.0.1:PORT` on a free port; its address once it
/// accepts connections.
async fn start(args: &[&str]) -> (App, SocketAddr) {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_quiver-demo"))
        .arg("demo-app")
        .args(args)
        .args(["--listen", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the demo app");
    let mut app = App(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = app.0.try_wait().unwrap() {
            panic!("the app {args:?} exited: {status}");
        }
        assert!(Instant::now() < deadline, "the app {args:?} never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (app, addr)
}

async fn send(
    http: &Http,
    method: Method,
    url: String,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Bytes) {
    let mut req = Request::builder().method(method).uri(&url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = http
        .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

async fn misbehave(http: &Http, app: SocketAddr, body: &str) -> (StatusCode, serde_json::Value) {
    let (status, bytes) = send(
        http,
        Method::POST,
        format!("http://{app}/demo/misbehave"),
        &[],
        body,
    )
    .await;
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, json)
}

async fn settings(http: &Http, app: SocketAddr) -> Misbehave {
    let (status, bytes) = send(
        http,
        Method::GET,
        format!("http://{app}/demo/misbehave"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&bytes).unwrap()
}

/// `n` requests to `path`, 8 at a time: how many were answered 5xx (each a deliberate 500),
/// and the slowest and fastest. Every other answer must be a 200.
async fn load(http: &Http, app: SocketAddr, path: &str, n: usize) -> (usize, Duration, Duration) {
    let url = format!("http://{app}{path}");
    let mut errors = 0;
    let (mut slowest, mut fastest) = (Duration::ZERO, Duration::MAX);
    for batch in 0..n.div_ceil(8) {
        let mut calls = tokio::task::JoinSet::new();
        for _ in batch * 8..n.min(batch * 8 + 8) {
            let (http, url) = (http.clone(), url.clone());
            calls.spawn(async move {
                let t = Instant::now();
                let (status, body) = send(&http, Method::GET, url, &[], "").await;
                (status, body, t.elapsed())
            });
        }
        while let Some(done) = calls.join_next().await {
            let (status, body, took) = done.unwrap();
            slowest = slowest.max(took);
            fastest = fastest.min(took);
            if status.is_server_error() {
                assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
                let text = String::from_utf8_lossy(&body);
                assert!(text.contains("on purpose"), "{text}");
                errors += 1;
            } else {
                assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            }
        }
    }
    (errors, slowest, fastest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_misbehaves_as_asked_refuses_bad_settings_and_heals() {
    // Ratings is not there: catalog still answers 200, with a rating error.
    let (_app, catalog) = start(&[
        "catalog",
        "--version",
        "v2",
        "--ratings",
        "http://127.0.0.1:1",
    ])
    .await;
    let http: Http =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let product = "/product/quiver-book";
    let (status, body) = send(
        &http,
        Method::GET,
        format!("http://{catalog}{product}"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let reply: CatalogReply = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply.version, "v2");
    assert_eq!(settings(&http, catalog).await, Misbehave::default());
    let (errors, _, _) = load(&http, catalog, product, 50).await;
    assert_eq!(errors, 0, "a healthy app fails nothing");

    // The issue's example: answered with the new settings.
    let (status, json) = misbehave(
        &http,
        catalog,
        r#"{"errorPercent": 30, "extraLatency": "200ms"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(
        json,
        serde_json::json!({"errorPercent": 30, "extraLatency": "200ms"})
    );
    let (errors, slowest, fastest) = load(&http, catalog, product, 40).await;
    assert!((8..=16).contains(&errors), "{errors} errors of 40 at 30%");
    assert!(fastest >= Duration::from_millis(200), "fastest {fastest:?}");
    assert!(slowest < Duration::from_secs(3), "slowest {slowest:?}");

    // Errors only: about 30 of 100, and no added latency.
    let (status, json) = misbehave(&http, catalog, r#"{"errorPercent": 30}"#).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["extraLatency"], "0s");
    let (errors, slowest, _) = load(&http, catalog, product, 200).await;
    assert!((50..=70).contains(&errors), "{errors} errors of 200 at 30%");
    assert!(slowest < Duration::from_millis(190), "slowest {slowest:?}");

    // Bad bodies: 400 naming the field; the settings stay as they were.
    for (body, field, says) in [
        ("errorPercent=50", "body", "not valid JSON"),
        ("", "body", "not valid JSON"),
        ("[50]", "body", "JSON object"),
        (r#"{"errorPercent": 150}"#, "errorPercent", "0 to 100"),
        (r#"{"errorPercent": "50"}"#, "errorPercent", "whole number"),
        (r#"{"extraLatency": "200"}"#, "extraLatency", "missing unit"),
        (
            r#"{"extraLatency": "fast"}"#,
            "extraLatency",
            "expected a number",
        ),
        (r#"{"errorRate": 50}"#, "errorRate", "unknown field"),
    ] {
        let (status, json) = misbehave(&http, catalog, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {json}");
        assert_eq!(json["field"], field, "{body}: {json}");
        let error = json["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("{field}: ")) && error.contains(says),
            "{body}: {error}"
        );
    }
    assert_eq!(
        settings(&http, catalog).await,
        Misbehave {
            error_percent: 30,
            extra_latency: Duration::ZERO
        }
    );

    // Through the mesh (the receiving sidecar sets the caller's identity): refused.
    let (status, _) = send(
        &http,
        Method::POST,
        format!("http://{catalog}/demo/misbehave"),
        &[(
            "x-quiver-peer-identity",
            "spiffe://mesh.local/ns/demo/sa/frontend",
        )],
        r#"{"errorPercent": 100}"#,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(settings(&http, catalog).await.error_percent, 30);

    // Healed: every request served, none slowed.
    let (status, json) = misbehave(&http, catalog, r#"{"errorPercent": 0}"#).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(
        json,
        serde_json::json!({"errorPercent": 0, "extraLatency": "0s"})
    );
    let (errors, slowest, _) = load(&http, catalog, product, 100).await;
    assert_eq!(errors, 0);
    assert!(slowest < Duration::from_millis(190), "slowest {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_misbehaves_too_and_its_health_check_does_not() {
    // No catalog behind it: a served request is a 502; a deliberate error is a 500.
    let (_app, frontend) = start(&["frontend", "--catalog", "http://127.0.0.1:1"]).await;
    let http: Http =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (status, json) = misbehave(&http, frontend, r#"{"errorPercent": 100}"#).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    for _ in 0..5 {
        let (status, body) = send(&http, Method::GET, format!("http://{frontend}/"), &[], "").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(String::from_utf8_lossy(&body).contains("frontend failed this request"));
    }
    let (status, _) = send(
        &http,
        Method::GET,
        format!("http://{frontend}/healthz"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = misbehave(&http, frontend, "{}").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(&http, Method::GET, format!("http://{frontend}/"), &[], "").await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = send(
        &http,
        Method::DELETE,
        format!("http://{frontend}/demo/misbehave"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
