//! Sample apps that report what reached them, so tests assert on exactly what crossed the mesh.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_stream::Stream;

use crate::echo_proto::echo_server::{Echo, EchoServer};
use crate::echo_proto::{Collected, EchoReply, EchoRequest};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// The byte at offset `i` of a `/download/N` body: a pattern that catches reordering and loss.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(i >> 13) % 251) as u8
}

/// An HTTP/1.1 + h2c echo app. Routes:
/// - any path: 200, body = request body (streamed); headers `x-echo-method`, `x-echo-path`,
///   `x-echo-host`, `x-echo-version`, `x-echo-peer-identity`, `x-echo-headers` (sorted
///   request header names), `x-echo-values` (sorted `name=value` pairs, `; `-separated) and
///   `x-echo-chunked` (whether the request arrived chunked);
/// - `/status/N`: that status; `/sleep/MS`: wait, then echo; `/download/N`: N pattern bytes;
/// - `/trailers`: body "hello" then trailer `x-trailer: yes`.
pub async fn start_http_echo() -> SocketAddr {
    serve_http_echo("127.0.0.1:0".parse().expect("literal address"))
        .await
        .expect("bind")
}

/// [`start_http_echo`] on a chosen address.
pub async fn serve_http_echo(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    serve_http_echo_with(addr, Behaviour::default()).await
}

/// The HTTP echo ([`start_http_echo`]'s routes) over TLS with `tls`'s certificate: an app
/// that serves HTTPS itself (the sidecar's HTTPS probes, `tests/tests/capture.rs`).
pub async fn serve_https_echo(
    addr: SocketAddr,
    tls: std::sync::Arc<rustls::ServerConfig>,
) -> std::io::Result<SocketAddr> {
    serve_echo(
        addr,
        Behaviour::default(),
        Some(tokio_rustls::TlsAcceptor::from(tls)),
    )
    .await
}

/// How a tagged echo app behaves (for traffic-policy tests: which version answered, a slow
/// or a flaky instance).
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Sent back in `x-echo-tag`, and the key of [`served`].
    pub tag: String,
    /// Wait this long before answering every request.
    pub delay: Duration,
    /// Answer this share of requests (0-100) with 503 instead.
    pub fail_percent: u32,
}

static SERVED: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

/// How many requests echo apps tagged `tag` have received.
pub fn served(tag: &str) -> u64 {
    SERVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .find(|(t, _)| t == tag)
        .map_or(0, |(_, n)| *n)
}

fn count_served(tag: &str) -> u64 {
    let mut v = SERVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match v.iter_mut().find(|(t, _)| t == tag) {
        Some((_, n)) => {
            *n += 1;
            *n
        }
        None => {
            v.push((tag.to_string(), 1));
            1
        }
    }
}

/// A tagged echo app on 127.0.0.1 (see [`Behaviour`]).
pub async fn start_tagged_echo(b: Behaviour) -> SocketAddr {
    serve_http_echo_with("127.0.0.1:0".parse().expect("literal address"), b)
        .await
        .expect("bind")
}

/// The echo app on `addr` with behaviour `b`.
pub async fn serve_http_echo_with(addr: SocketAddr, b: Behaviour) -> std::io::Result<SocketAddr> {
    serve_echo(addr, b, None).await
}

/// The echo app on `addr`, in plaintext or, with `tls`, over TLS.
async fn serve_echo(
    addr: SocketAddr,
    b: Behaviour,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<SocketAddr> {
    let b = std::sync::Arc::new(b);
    let l = TcpListener::bind(addr).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let (b, tls) = (b.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => echo_connection(s, b).await,
                    Some(tls) => {
                        if let Ok(s) = tls.accept(s).await {
                            echo_connection(s, b).await;
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// One connection of the echo app, HTTP/1.1 or h2c (or either over TLS).
async fn echo_connection<IO>(io: IO, b: std::sync::Arc<Behaviour>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let b = b.clone();
        async move { Ok::<_, Infallible>(behave(&b, req).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

async fn behave(b: &Behaviour, req: Request<Incoming>) -> Response<Body> {
    if b.tag.is_empty() {
        return echo(req).await;
    }
    let n = count_served(&b.tag);
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    // Deterministic spread: every request whose number falls in the failing share fails.
    let fail = (n * 7919 % 100) < u64::from(b.fail_percent);
    let mut resp = if fail {
        let mut r = Response::new(full(format!("{} failed\n", b.tag)));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r
    } else {
        echo(req).await
    };
    if let Ok(v) = HeaderValue::from_str(&b.tag) {
        resp.headers_mut().insert("x-echo-tag", v);
    }
    resp
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut names: Vec<String> = req
        .headers()
        .keys()
        .map(std::string::ToString::to_string)
        .collect();
    names.sort();
    names.dedup();
    let mut h = HeaderMap::new();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set("x-echo-method", req.method().to_string());
    set(
        "x-echo-path",
        req.uri()
            .path_and_query()
            .map(std::string::ToString::to_string)
            .unwrap_or_default(),
    );
    set(
        "x-echo-host",
        req.headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(std::string::ToString::to_string))
            .unwrap_or_default(),
    );
    set("x-echo-version", format!("{:?}", req.version()));
    set(
        "x-echo-peer-identity",
        req.headers()
            .get("x-quiver-peer-identity")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    );
    set("x-echo-headers", names.join(","));
    // Every request header with its values, in order: `name=value; name=value`.
    let mut values: Vec<String> = req
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    values.sort();
    set("x-echo-values", values.join("; "));
    set(
        "x-echo-traceparent",
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    );
    set(
        "x-echo-chunked",
        req.headers()
            .get("transfer-encoding")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"))
            .to_string(),
    );
    let mut resp = if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = Response::new(full(format!("status {}", status.as_u16())));
        *r.status_mut() = status;
        r
    } else if let Some(n) = path.strip_prefix("/download/") {
        let n: u64 = n.parse().unwrap_or(0);
        Response::new(download(n))
    } else if path == "/trailers" {
        let frames: Vec<Result<Frame<Bytes>, hyper::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::trailers({
                let mut t = HeaderMap::new();
                t.insert("x-trailer", HeaderValue::from_static("yes"));
                t
            })),
        ];
        Response::new(UnsyncBoxBody::new(StreamBody::new(tokio_stream::iter(
            frames,
        ))))
    } else {
        if let Some(ms) = path.strip_prefix("/sleep/") {
            let ms: u64 = ms.parse().unwrap_or(0);
            let tag = req.uri().query().unwrap_or("").to_string();
            let _busy = Sleeping::enter(&tag);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Response::new(req.into_body().boxed_unsync())
    };
    resp.headers_mut().extend(h);
    resp
}

static SLEEPING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Marks a `/sleep/MS?TAG` request as in progress inside the app, so a test can wait until a
/// request has really reached the app (see [`sleeping`]).
struct Sleeping(String);

impl Sleeping {
    fn enter(tag: &str) -> Self {
        SLEEPING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tag.to_string());
        Sleeping(tag.to_string())
    }
}

impl Drop for Sleeping {
    fn drop(&mut self) {
        let mut v = SLEEPING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = v.iter().position(|t| *t == self.0) {
            v.remove(i);
        }
    }
}

/// How many `/sleep/MS?TAG` requests with this tag are inside an echo app right now.
pub fn sleeping(tag: &str) -> usize {
    SLEEPING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|t| *t == tag)
        .count()
}

fn full(s: String) -> Body {
    Full::new(Bytes::from(s))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn download(n: u64) -> Body {
    let chunks = (0..n.div_ceil(65536)).map(move |c| {
        let start = c * 65536;
        let end = (start + 65536).min(n);
        let v: Vec<u8> = (start..end).map(pattern_byte).collect();
        Ok(Frame::data(Bytes::from(v)))
    });
    UnsyncBoxBody::new(StreamBody::new(tokio_stream::iter(chunks)))
}

/// A TCP echo app that honours half-close: it echoes every byte as it arrives; once the
/// client shuts down its write side it sends `\nEOF total=<n>\n` and closes.
pub async fn start_tcp_echo() -> SocketAddr {
    serve_tcp_echo("127.0.0.1:0".parse().expect("literal address"))
        .await
        .expect("bind")
}

/// [`start_tcp_echo`] on a chosen address.
pub async fn serve_tcp_echo(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            total += n as u64;
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = s
                    .write_all(format!("\nEOF total={total}\n").as_bytes())
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// A TCP sink: reads everything, then replies with the byte count and closes (bulk tests).
pub async fn start_tcp_sink() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(format!("{total}\n").as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// The gRPC echo service.
#[derive(Default)]
pub struct EchoService;

fn peer_of<T>(req: &tonic::Request<T>) -> String {
    req.metadata()
        .get("x-quiver-peer-identity")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(
        &self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        let peer = peer_of(&req);
        let r = req.into_inner();
        if r.fail_with != 0 {
            return Err(tonic::Status::new(
                tonic::Code::from(r.fail_with),
                format!("asked to fail: {}", r.message),
            ));
        }
        Ok(tonic::Response::new(EchoReply {
            message: r.message,
            peer_identity: peer,
            seq: 0,
        }))
    }

    type StreamStream = Pin<Box<dyn Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

    async fn stream(
        &self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        let peer = peer_of(&req);
        let r = req.into_inner();
        let mut items: Vec<Result<EchoReply, tonic::Status>> = (0..r.count)
            .map(|seq| {
                Ok(EchoReply {
                    message: r.message.clone(),
                    peer_identity: peer.clone(),
                    seq,
                })
            })
            .collect();
        if r.fail_with != 0 {
            items.push(Err(tonic::Status::new(
                tonic::Code::from(r.fail_with),
                "stream ended with an error",
            )));
        }
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn collect(
        &self,
        req: tonic::Request<tonic::Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<Collected>, tonic::Status> {
        let peer_identity = peer_of(&req);
        let mut incoming = req.into_inner();
        let mut messages = Vec::new();
        while let Some(m) = incoming.message().await? {
            messages.push(m.message);
        }
        Ok(tonic::Response::new(Collected {
            messages,
            peer_identity,
        }))
    }

    type ChatStream = Pin<Box<dyn Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

    async fn chat(
        &self,
        req: tonic::Request<tonic::Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<Self::ChatStream>, tonic::Status> {
        let peer = peer_of(&req);
        let mut incoming = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut seq = 0;
            loop {
                let reply = match incoming.message().await {
                    Ok(Some(m)) => Ok(EchoReply {
                        message: m.message,
                        peer_identity: peer.clone(),
                        seq,
                    }),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
                seq += 1;
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Start the gRPC echo app (h2c).
pub async fn start_grpc_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoService))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await;
    });
    addr
}

/// A middle-tier app: every request is answered by calling `downstream` (its sidecar's
/// outbound listener) with the same path, passing `traceparent`/`tracestate` on as a
/// well-behaved app does. Records the `traceparent` it received, in arrival order.
pub async fn start_relay(addr: SocketAddr, downstream: SocketAddr) -> (SocketAddr, RelaySeen) {
    let l = TcpListener::bind(addr).await.expect("bind relay");
    let addr = l.local_addr().expect("relay addr");
    let seen = RelaySeen::default();
    let seen2 = seen.clone();
    let client = crate::client::client::<Full<Bytes>>(false);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let (client, seen) = (client.clone(), seen2.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (client, seen) = (client.clone(), seen.clone());
                    async move {
                        let mut out =
                            Request::get(format!("http://{downstream}{}", req.uri().path()));
                        for name in ["traceparent", "tracestate"] {
                            if let Some(v) = req.headers().get(name) {
                                out = out.header(name, v.clone());
                            }
                        }
                        seen.0
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(
                                req.headers()
                                    .get("traceparent")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string(),
                            );
                        let out = out.body(Full::new(Bytes::new())).expect("request");
                        let resp = match client.request(out).await {
                            Ok(r) => {
                                let status = r.status();
                                // What the downstream echo saw travels back up.
                                let echoed: Vec<_> = r
                                    .headers()
                                    .iter()
                                    .filter(|(k, _)| k.as_str().starts_with("x-echo-"))
                                    .map(|(k, v)| (k.clone(), v.clone()))
                                    .collect();
                                let body = r
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(http_body_util::Collected::to_bytes);
                                let text =
                                    String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
                                let mut resp = Response::new(full(text));
                                *resp.status_mut() = status;
                                resp.headers_mut().extend(echoed);
                                resp
                            }
                            Err(e) => {
                                let mut r = Response::new(full(format!("relay: {e}")));
                                *r.status_mut() = StatusCode::BAD_GATEWAY;
                                r
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// The `traceparent` values a relay received.
#[derive(Clone, Default)]
pub struct RelaySeen(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl RelaySeen {
    pub fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
