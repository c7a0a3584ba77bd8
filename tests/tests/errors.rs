//! Failures the app sees as explicit reasons (`quiver-error`), and bad input from the app that
//! is refused without disturbing the proxy.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use quiver_tests::client::send_h1;
use quiver_tests::harness::{Apps, Pair, RunningProxy, client_yaml, server_yaml};
use quiver_tests::metric_sum;
use quiver_tests::pki::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INBOUND: &str = r#"direction="inbound""#;
const ECHO: &str = r#"service="echo""#;
const NO_ERROR: &str = r#"error="""#;

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_lowercase()
}

#[tokio::test]
async fn app_down_behind_the_peer_is_upstream_connect() {
    let pki = Pki::new();
    let mut apps = Apps::start().await;
    // Nothing listens there: bind a port, then free it.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    apps.http = l.local_addr().unwrap();
    drop(l);
    let b = RunningProxy::start(&server_yaml(&pki.issue("b"), &apps, "1s"), &pki.dir)
        .await
        .unwrap();
    let a = RunningProxy::start(
        &client_yaml(&pki.issue("a"), b.bound.quic, pki.id("b").as_str()),
        &pki.dir,
    )
    .await
    .unwrap();
    let (head, body) = send_h1(a.bound.outbound[0], get("/")).await;
    assert_eq!(head.status(), 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(head.headers()["quiver-error"], "upstream-connect");
}

#[tokio::test]
async fn slow_app_is_upstream_timeout() {
    let pki = Pki::new();
    let apps = Apps::start().await;
    let b = RunningProxy::start(&server_yaml(&pki.issue("b"), &apps, "1s"), &pki.dir)
        .await
        .unwrap();
    let mut yaml = client_yaml(&pki.issue("a"), b.bound.quic, pki.id("b").as_str());
    yaml.push_str("tuning: {response_timeout: 300ms}\n");
    let a = RunningProxy::start(&yaml, &pki.dir).await.unwrap();
    let (head, _) = send_h1(a.bound.outbound[0], get("/sleep/3000")).await;
    assert_eq!(head.status(), 504);
    assert_eq!(head.headers()["quiver-error"], "upstream-timeout");
    // The connection to the peer is still good for the next request.
    let (head, _) = send_h1(a.bound.outbound[0], get("/")).await;
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn unreachable_peer_is_peer_connect() {
    let pki = Pki::new();
    // A UDP port with nobody behind it.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = sock.local_addr().unwrap();
    drop(sock);
    let mut yaml = client_yaml(&pki.issue("a"), dead, pki.id("b").as_str());
    yaml.push_str("tuning: {connect_timeout: 300ms}\n");
    let a = RunningProxy::start(&yaml, &pki.dir).await.unwrap();
    let (head, _) = send_h1(a.bound.outbound[0], get("/")).await;
    assert_eq!(head.status(), 503);
    assert_eq!(head.headers()["quiver-error"], "peer-connect");
}

#[tokio::test]
async fn oversize_headers_are_refused_and_the_proxy_keeps_serving() {
    let pair = Pair::start().await;
    // Above the 64 KiB header limit, below hyper's read buffer: our own 431 with a reason.
    let req = Request::get("/")
        .header("host", "echo")
        .header("x-big", "a".repeat(80 * 1024))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (head, body) = send_h1(pair.http1(), req).await;
    assert_eq!(head.status(), 431);
    assert_eq!(head.headers()["quiver-error"], "header-too-large");
    assert!(String::from_utf8_lossy(&body).contains("65536"));
    // Far above any buffer: refused by the HTTP parser, still a 431.
    let mut huge = b"GET / HTTP/1.1\r\nHost: echo\r\nX-Huge: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 400 * 1024));
    huge.extend(b"\r\n\r\n");
    let resp = raw(pair.http1(), &huge).await;
    assert!(resp.starts_with("http/1.1 431"), "{resp}");
    let (head, _) = send_h1(pair.http1(), get("/still-alive")).await;
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn malformed_http_from_the_app_is_a_400_and_the_proxy_keeps_serving() {
    let pair = Pair::start().await;
    for junk in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: echo\r\nBad Header Line\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let resp = raw(pair.http1(), junk).await;
        assert!(resp.starts_with("http/1.1 400"), "{junk:?} -> {resp}");
    }
    // A request line with a host that is not a mesh service, on the HTTP proxy listener.
    let resp = raw(
        pair.http_proxy(),
        b"GET / HTTP/1.1\r\nHost: not a host\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("http/1.1 404"), "{resp}");
    assert!(resp.contains("quiver-error: no-route"), "{resp}");
    let (head, _) = send_h1(pair.http1(), get("/still-alive")).await;
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn admin_endpoints_report_health_config_and_metrics() {
    let pair = Pair::start().await;
    let (head, _) = send_h1(pair.http1(), get("/status/503")).await;
    assert_eq!(head.status(), 503);
    let (head, _) = send_h1(pair.http1(), get("/")).await;
    assert_eq!(head.status(), 200);

    assert_eq!(pair.a.admin_get("/healthz").await.0, 200);
    assert_eq!(pair.a.admin_get("/readyz").await.0, 200);
    assert_eq!(pair.a.admin_get("/nope").await.0, 404);

    let (status, config) = pair.a.admin_get("/config").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        json["identity"]["spiffe_id"],
        "spiffe://mesh.local/ns/default/sa/a"
    );
    assert_eq!(json["identity"]["private_key"], "<redacted>");
    assert!(!config.contains("PRIVATE KEY"), "key material in /config");
    assert_eq!(
        json["snapshot"]["services"]["echo"]["endpoints"][0]["identity"],
        "spiffe://mesh.local/ns/default/sa/b"
    );

    let m = quiver_tests::eventually("inbound metrics on B", Duration::from_secs(5), || async {
        let (_, m) = pair.b.admin_get("/metrics").await;
        (metric_sum(
            &m,
            "quiver_requests_total",
            &[
                INBOUND,
                ECHO,
                r#"source="a""#,
                r#"code="503""#,
                r#"status_class="5xx""#,
                NO_ERROR,
            ],
        ) == 1.0)
            .then_some(m)
    })
    .await;
    assert_eq!(
        metric_sum(
            &m,
            "quiver_requests_total",
            &[INBOUND, ECHO, r#"source="a""#, r#"code="200""#, NO_ERROR]
        ),
        1.0,
        "{m}"
    );
    // Real body bytes, both ways: the app's answers went back to the caller.
    assert!(
        metric_sum(&m, "quiver_response_bytes_total", &[INBOUND, ECHO]) > 0.0,
        "{m}"
    );
    assert!(m.contains("quiver_request_duration_seconds_bucket{"), "{m}");
    assert!(
        m.contains("quiver_quic_connections{side=\"server\"} 1"),
        "{m}"
    );
    let (_, m) = pair.a.admin_get("/metrics").await;
    assert_eq!(
        metric_sum(
            &m,
            "quiver_requests_total",
            &[
                r#"direction="outbound""#,
                ECHO,
                r#"source="a""#,
                r#"code="200""#,
                NO_ERROR
            ]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "quiver_response_bytes_total",
            &[r#"direction="outbound""#, ECHO]
        ),
        metric_sum(
            &pair.b.admin_get("/metrics").await.1,
            "quiver_response_bytes_total",
            &[INBOUND, ECHO]
        ),
        "the bytes B sent are the bytes A passed on"
    );
    assert!(
        m.contains("quiver_quic_handshakes_total{side=\"client\",result=\"ok\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn drain_lets_requests_in_flight_finish_and_refuses_new_ones() {
    let mut pair = Pair::start_with_drain("10s").await;
    let addr = pair.http1();
    let slow = tokio::spawn(async move {
        let req = Request::post("/sleep/1500?drain-test")
            .header("host", "echo")
            .body(Full::new(Bytes::from(vec![b'd'; 256 * 1024])))
            .unwrap();
        send_h1(addr, req).await
    });
    // Stop B only once the request is really inside the app.
    quiver_tests::eventually("request in flight", Duration::from_secs(5), || async {
        (quiver_tests::apps::sleeping("drain-test") == 1).then_some(())
    })
    .await;
    pair.b.signal_stop();
    // B reports not-ready while draining.
    quiver_tests::eventually("readyz 503", Duration::from_secs(5), || async {
        (pair.b.admin_get("/readyz").await.0 == 503).then_some(())
    })
    .await;
    // A new request while B drains is refused explicitly, not left hanging.
    let (head, body) = send_h1(addr, get("/new-during-drain")).await;
    assert!(
        head.status() == 503 || head.status() == 502,
        "got {} {}",
        head.status(),
        String::from_utf8_lossy(&body)
    );
    assert!(head.headers().contains_key("quiver-error"));
    let (head, body) = slow.await.unwrap();
    assert_eq!(head.status(), 200, "in-flight request was cut by the drain");
    assert!(
        body == vec![b'd'; 256 * 1024],
        "response body cut by the drain"
    );
    pair.b.stopped().await;
    // After B is gone, A reports the peer as unreachable rather than hanging.
    let (head, _) = send_h1(addr, get("/")).await;
    assert!(
        head.status() == 503 || head.status() == 502,
        "got {}",
        head.status()
    );
    assert!(head.headers().contains_key("quiver-error"));
}
