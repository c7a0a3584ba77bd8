//! The benchmark's own backends, on a runtime of their own so the load generator's runtime
//! never runs server work: a lean HTTP/1.1 app (`200 ok`), the gRPC echo app and a TCP sink.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use quiver_tests::apps;

/// Running backends; dropping this stops them.
pub struct Backends {
    /// HTTP/1.1 keep-alive app answering every request with `200 ok`.
    pub http: SocketAddr,
    /// gRPC (h2c) echo app.
    pub grpc: SocketAddr,
    /// TCP sink: reads to EOF, replies with the byte count.
    pub sink: SocketAddr,
    // Dropped last: the runtime owns every backend task.
    _runtime: tokio::runtime::Runtime,
}

impl Backends {
    /// Start all three on a fresh runtime with `threads` workers. Must be called outside any
    /// async context (it blocks on the runtime it creates).
    pub fn start(threads: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("bench-backend")
            .enable_all()
            .build()
            .context("starting the backend runtime")?;
        let (http, grpc, sink) = runtime.block_on(async {
            let http = start_http_ok().await?;
            Ok::<_, anyhow::Error>((
                http,
                apps::start_grpc_echo().await,
                apps::start_tcp_sink().await,
            ))
        })?;
        Ok(Self {
            http,
            grpc,
            sink,
            _runtime: runtime,
        })
    }
}

/// The smallest useful HTTP/1.1 app: keep-alive, no routing, `200` with body `ok`, so the
/// backend costs as little as possible and the proxies' cost shows.
async fn start_http_ok() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the HTTP backend")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}
