//! HTTP/1.1 upgrades across two proxies: a real WebSocket client through the caller's proxy (its
//! upstream listener and its HTTP proxy listener) to a real WebSocket server behind the callee's
//! proxy, with routing and authorization applied to the upgrade request as to any request.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::{WebSocketStream, client_async};

use quiver_tests::harness::{Pair, RunningProxy, identity_yaml};
use quiver_tests::pki::Pki;

/// A WebSocket echo server: every text and binary message is sent back as it came.
struct WsApp {
    addr: SocketAddr,
    /// TCP connections accepted, handshake or not.
    accepted: Arc<AtomicUsize>,
    /// Each handshake's request target and `x-quiver-peer-identity`.
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

async fn start_ws_app() -> WsApp {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (count, log) = (accepted.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let log = log.clone();
            tokio::spawn(async move {
                #[allow(
                    clippy::result_large_err,
                    reason = "the error type is the WebSocket library's callback signature"
                )]
                let record = |req: &Request, resp: Response| {
                    let peer = req
                        .headers()
                        .get("x-quiver-peer-identity")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    log.lock().unwrap().push((req.uri().to_string(), peer));
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, record).await else {
                    return;
                };
                // A Close is answered by the library; the stream ends after it.
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    WsApp {
        addr,
        accepted,
        seen,
    }
}

/// A callee-side proxy (sa `ws`) serving service `ws` (http1) from `app`; `extra` appended.
async fn callee(pki: &Pki, app: SocketAddr, extra: &str) -> RunningProxy {
    let yaml = format!(
        "{}listen: {{quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}\ninbound:\n  - {{service: ws, port: 8080, protocol: http1, app: \"{app}\"}}\n{extra}",
        identity_yaml(&pki.issue("ws"))
    );
    RunningProxy::start(&yaml, &pki.dir).await.unwrap()
}

/// A caller-side proxy (sa `frontend`): upstream listener 0 and the HTTP proxy listener lead
/// to service `ws`, whose endpoints are `(callee, version label)`; `extra` appended (routes).
async fn caller(pki: &Pki, endpoints: &[(SocketAddr, &str)], extra: &str) -> RunningProxy {
    let mut y = identity_yaml(&pki.issue("frontend"));
    y.push_str(
        "listen: {quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\", http_proxy: \"127.0.0.1:0\"}
outbound:
  - {listen: \"127.0.0.1:0\", service: ws, protocol: http1}
services:
  - name: ws
    subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
    endpoints:
",
    );
    for (addr, version) in endpoints {
        y.push_str(&format!(
            "      - {{address: \"{addr}\", identity: \"{}\", labels: {{version: {version}}}}}\n",
            pki.id("ws")
        ));
    }
    y.push_str(extra);
    RunningProxy::start(&y, &pki.dir).await.unwrap()
}

type Ws = WebSocketStream<TcpStream>;

/// Open a WebSocket to `url` through the proxy listener at `via`.
async fn open(via: SocketAddr, url: &str) -> Ws {
    let tcp = TcpStream::connect(via).await.unwrap();
    let (ws, resp) = client_async(url, tcp)
        .await
        .expect("the handshake succeeded");
    assert_eq!(resp.status(), 101);
    // The app's 101 headers came back (the client library has checked the accept key too).
    assert!(
        resp.headers().contains_key("sec-websocket-accept"),
        "{resp:?}"
    );
    ws
}

/// The next data message, skipping none: anything else fails the test.
async fn next_message(ws: &mut Ws) -> Message {
    ws.next().await.expect("a message").expect("no error")
}

/// Text, a 1.5 MiB binary message, a burst in order, then the close handshake.
async fn converse(mut ws: Ws) {
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hello"));

    let big: Vec<u8> = (0..1_572_864u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next_message(&mut ws).await {
        Message::Binary(b) => assert!(b[..] == big[..], "the binary message came back changed"),
        other => panic!("expected binary, got {other:?}"),
    }

    for i in 0..50 {
        ws.send(Message::text(format!("burst {i}"))).await.unwrap();
    }
    for i in 0..50 {
        assert_eq!(
            next_message(&mut ws).await,
            Message::text(format!("burst {i}"))
        );
    }

    ws.close(None).await.unwrap();
    // The app's Close answer arrives, then the stream ends: the handshake completed.
    match ws.next().await {
        Some(Ok(Message::Close(_))) => {}
        other => panic!("expected the app's close frame, got {other:?}"),
    }
    assert!(
        ws.next().await.is_none(),
        "the connection ended after the close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_both_listeners() {
    let pki = Pki::new();
    let app = start_ws_app().await;
    let b = callee(&pki, app.addr, "").await;
    let a = caller(&pki, &[(b.bound.quic, "v1")], "").await;

    // The upstream listener for `ws`, then the HTTP proxy listener routing by Host.
    converse(open(a.bound.outbound[0], "ws://ws:8080/chat?room=1").await).await;
    let proxy = a.bound.http_proxy.unwrap();
    converse(open(proxy, "ws://ws:8080/chat?room=2").await).await;

    let seen = app.seen.lock().unwrap().clone();
    let frontend = pki.id("frontend").to_string();
    assert_eq!(
        seen,
        vec![
            ("/chat?room=1".to_string(), frontend.clone()),
            ("/chat?room=2".to_string(), frontend),
        ]
    );

    // Both proxies record the upgrade as a request answered 101.
    for (proxy, direction) in [(&a, "outbound"), (&b, "inbound")] {
        let direction = format!("direction=\"{direction}\"");
        let labels = [direction.as_str(), "service=\"ws\"", "code=\"101\""];
        quiver_tests::eventually("101s counted", Duration::from_secs(5), || async {
            let (_, m) = proxy.admin_get("/metrics").await;
            (quiver_tests::metric_sum(&m, "quiver_requests_total", &labels) == 2.0).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_picks_the_backend_of_an_upgrade_by_its_path() {
    let pki = Pki::new();
    let (app1, app2) = (start_ws_app().await, start_ws_app().await);
    let b1 = callee(&pki, app1.addr, "").await;
    let b2 = callee(&pki, app2.addr, "").await;
    let routes = "routes:
  - service: ws
    rules:
      - name: beta
        match: {path: {prefix: /beta/}}
        backends: [{subset: v2, weight: 100}]
      - name: stable
        backends: [{subset: v1, weight: 100}]
";
    let a = caller(
        &pki,
        &[(b1.bound.quic, "v1"), (b2.bound.quic, "v2")],
        routes,
    )
    .await;
    for _ in 0..3 {
        converse(open(a.bound.outbound[0], "ws://ws:8080/beta/chat").await).await;
        converse(open(a.bound.outbound[0], "ws://ws:8080/chat").await).await;
    }
    let paths = |app: &WsApp| -> Vec<String> {
        app.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    };
    assert_eq!(paths(&app2), vec!["/beta/chat"; 3]);
    assert_eq!(paths(&app1), vec!["/chat"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_upgrade_gets_403_and_never_reaches_the_app() {
    let pki = Pki::new();
    let app = start_ws_app().await;
    let policy = "authorization:
  - name: no-admin-sockets
    service: ws
    allow:
      - sources: [\"spiffe://mesh.local/ns/default/sa/frontend\"]
    deny:
      - paths: [\"/admin/*\"]
";
    let b = callee(&pki, app.addr, policy).await;
    let a = caller(&pki, &[(b.bound.quic, "v1")], "").await;

    // Denied by path, including a path that only normalization turns into /admin/...
    for url in [
        "ws://ws:8080/admin/console",
        "ws://ws:8080/public/../%61dmin/console",
    ] {
        let tcp = TcpStream::connect(a.bound.outbound[0]).await.unwrap();
        match client_async(url, tcp).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "{url}");
                let error = resp.headers().get("quiver-error").unwrap();
                assert_eq!(error, "denied", "{url}");
            }
            Err(e) => panic!("{url}: expected a 403, got {e}"),
            Ok(_) => panic!("{url}: the upgrade went through"),
        }
    }
    assert_eq!(
        app.accepted.load(Ordering::SeqCst),
        0,
        "a denied upgrade reached the app"
    );
    let (_, m) = b.admin_get("/metrics").await;
    assert!(
        m.contains("quiver_authz_denied_total{service=\"ws\"} 2"),
        "{m}"
    );

    // The same caller on an allowed path gets its WebSocket.
    converse(open(a.bound.outbound[0], "ws://ws:8080/chat").await).await;
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
}

/// Send one request head on a new connection to `addr` and return the response head,
/// lower-cased.
async fn response_head(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    String::from_utf8_lossy(&buf[..head_end]).to_lowercase()
}

#[tokio::test]
async fn an_app_that_does_not_switch_answers_as_usual() {
    // The sample HTTP echo app ignores `Upgrade`: its ordinary answer comes back as it is,
    // with no tunnel. It did see the upgrade request (the header names it received).
    let pair = Pair::start().await;
    let head = response_head(
        pair.http1(),
        "GET /plain?x=1 HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: a2V5\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-echo-method: get"), "{head}");
    assert!(head.contains("x-echo-path: /plain?x=1"), "{head}");
    let names = head
        .lines()
        .find_map(|l| l.strip_prefix("x-echo-headers: "))
        .unwrap();
    assert!(names.split(',').any(|n| n == "upgrade"), "{names}");
    assert!(
        names.split(',').any(|n| n == "sec-websocket-key"),
        "{names}"
    );
    assert!(!head.contains("quiver-upgrade"), "{head}");

    // An h2c upgrade offer is not carried: an ordinary request, its upgrade headers dropped.
    let head = response_head(
        pair.http_proxy(),
        "GET /h2c HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-echo-path: /h2c"), "{head}");
    let names = head
        .lines()
        .find_map(|l| l.strip_prefix("x-echo-headers: "))
        .unwrap();
    assert!(
        !names
            .split(',')
            .any(|n| n == "upgrade" || n == "http2-settings"),
        "{names}"
    );
}
