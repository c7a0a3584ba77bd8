//! Small real clients for tests: HTTP/1.1 and h2c over hyper, raw TCP.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A pooled client for `http://` URIs (HTTP/1.1, or h2c prior knowledge when `http2`).
pub fn client<B>(
    http2: bool,
) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http()
}

/// Send one request on a fresh HTTP/1.1 connection and return the response head and body.
pub async fn send_h1(addr: SocketAddr, req: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = send.send_request(req).await.expect("response");
    collect(resp).await
}

/// Read a whole response.
pub async fn collect(resp: Response<Incoming>) -> (Response<()>, Bytes) {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (Response::from_parts(parts, ()), body)
}

/// GET `path` from `addr` over HTTP/1.1: (status, body as text).
pub async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (head, body) = send_h1(addr, req).await;
    (
        head.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}
