//! Opaque TCP carried as HTTP/3 CONNECT streams, with half-close honoured both ways.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use quiver_tests::harness::Pair;

/// Write `payload`, half-close, then read until the app closes. The echo app only sends its
/// `EOF total=` line after it has seen our FIN, so seeing it proves the FIN crossed the mesh,
/// and reading it after our own shutdown proves the other direction stayed open.
async fn echo_with_half_close(mut s: TcpStream, payload: &[u8]) -> Vec<u8> {
    s.write_all(payload).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn tcp_listener_tunnels_bytes_and_half_close() {
    let pair = Pair::start().await;
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let s = TcpStream::connect(pair.tcp()).await.unwrap();
    let out = echo_with_half_close(s, &payload).await;
    let tail = format!("\nEOF total={}\n", payload.len());
    assert_eq!(out.len(), payload.len() + tail.len());
    assert!(out[..payload.len()] == payload[..], "echoed bytes differ");
    assert_eq!(&out[payload.len()..], tail.as_bytes());
}

#[tokio::test]
async fn tcp_interactive_exchange_before_close() {
    // Request/response turns on one tunnel: each write is echoed before the next is sent.
    let pair = Pair::start().await;
    let mut s = TcpStream::connect(pair.tcp()).await.unwrap();
    for i in 0..20 {
        let msg = format!("line {i}\n");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    let out = echo_with_half_close(s, b"").await;
    assert_eq!(out, b"\nEOF total=150\n");
}

#[tokio::test]
async fn http_proxy_connect_tunnels_tcp() {
    let pair = Pair::start().await;
    let mut s = TcpStream::connect(pair.http_proxy()).await.unwrap();
    s.write_all(b"CONNECT tcp-echo:9000 HTTP/1.1\r\nHost: tcp-echo:9000\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let out = echo_with_half_close(s, b"through the proxy").await;
    assert_eq!(out, b"through the proxy\nEOF total=17\n");

    // CONNECT to something that is not a mesh service is refused with the reason.
    let mut s = TcpStream::connect(pair.http_proxy()).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(resp.starts_with("http/1.1 404"), "{resp}");
    assert!(resp.contains("quiver-error: no-route"), "{resp}");
}

#[tokio::test]
async fn tcp_metrics_count_bytes_both_ways() {
    let pair = Pair::start().await;
    let s = TcpStream::connect(pair.tcp()).await.unwrap();
    let out = echo_with_half_close(s, &[7u8; 10_000]).await;
    assert_eq!(out.len(), 10_000 + "\nEOF total=10000\n".len());
    let metrics = quiver_tests::eventually("tcp byte metrics", std::time::Duration::from_secs(5), || async {
        let (_, m) = pair.a.admin_get("/metrics").await;
        m.contains("quiver_tcp_received_bytes_total{direction=\"outbound\",service=\"tcp-echo\"} 10000")
            .then_some(m)
    })
    .await;
    assert!(
        metrics.contains(&format!(
            "quiver_tcp_sent_bytes_total{{direction=\"outbound\",service=\"tcp-echo\"}} {}",
            out.len()
        )),
        "{metrics}"
    );
}
