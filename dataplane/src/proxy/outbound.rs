//! App -> proxy -> mesh. Accepts plain HTTP/1.1, h2c, gRPC and TCP from the local app on
//! explicit upstream listeners or the HTTP proxy listener, decides where each request goes,
//! and carries it to the peer proxy over HTTP/3.
//!
//! Per request: accept -> decide (snapshot) -> connect (pooled QUIC) -> copy -> record.
//! A caller that is slow to send its request head or body is cut (`tuning.limits`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use crate::Inputs;
use crate::errors::{Direction, ProxyError};
use crate::limits::{self, Limit};
use crate::mesh::body::{self, ProxyBody};
use crate::mesh::stream::{ClientRecv, ClientSend, ClientStream};
use crate::mesh::transport::PeerConn;
use crate::proxy::http::{
    authority_of, check_header_size, content_length, error_kind, error_response,
};
use crate::snapshot::{Protocol, Target};
use crate::telemetry::metrics::{Metrics, TcpConnLabels};
use crate::telemetry::record::{RequestRecord, UNKNOWN_SERVICE};
use crate::telemetry::trace::SpanKind;

/// How an app-facing listener picks the destination.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Explicit upstream listener: everything goes to one service.
    Fixed(Target),
    /// HTTP proxy listener: the Host (or CONNECT target) names the service.
    HttpProxy,
}

/// Serve an app-facing listener until drain.
pub async fn serve(inputs: Arc<Inputs>, listener: TcpListener, entry: Entry, protocol: Protocol) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = inputs.drain.signaled() => return,
        };
        let _ = stream.set_nodelay(true);
        let inputs = inputs.clone();
        let entry = entry.clone();
        tokio::spawn(async move {
            match (protocol, entry) {
                (Protocol::Tcp, Entry::Fixed(target)) => tcp(inputs, stream, target).await,
                (_, entry) => http_conn(inputs, stream, entry).await,
            }
        });
    }
}

/// How an app connection's bytes are read: HTTP/1.1 or h2c (from the preface), with the
/// head-size, header-count, stream and head-timeout limits of `tuning`. Shared with the fuzz
/// target `outbound_http1`, which feeds it a malicious app's bytes.
pub fn app_connection_builder(
    tuning: &crate::config::Tuning,
) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let limit = tuning.max_header_bytes;
    builder
        .http1()
        .max_buf_size((limit + 64 * 1024).max(8192))
        .max_headers(512)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Some(tuning.limits.request_header_timeout));
    builder
        .http2()
        .max_header_list_size(limit as u32)
        .max_concurrent_streams(Some(tuning.max_concurrent_streams));
    builder
}

/// One app connection speaking HTTP/1.1 or h2c (detected from the preface).
///
/// A caller that connects and never completes a request head (silence, or a head dribbled a
/// byte at a time) is cut after `tuning.limits.request_header_timeout`: counted from the
/// accept to the first complete head here (hyper's protocol detection has no timer of its
/// own), and for each later HTTP/1.1 head by hyper's header timer, set to the same value.
pub(crate) async fn http_conn(inputs: Arc<Inputs>, stream: TcpStream, entry: Entry) {
    let limits = &inputs.tuning.limits;
    let first_head = Arc::new(AtomicBool::new(false));
    let svc_inputs = inputs.clone();
    let seen = first_head.clone();
    let svc = hyper::service::service_fn(move |req| {
        seen.store(true, Ordering::Relaxed);
        let inputs = svc_inputs.clone();
        let entry = entry.clone();
        async move { Ok::<_, Infallible>(handle(inputs, entry, req).await) }
    });
    let builder = app_connection_builder(&inputs.tuning);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let head_deadline = tokio::time::sleep(limits.request_header_timeout);
    tokio::pin!(head_deadline);
    let mut awaiting_head = true;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    // hyper's own header timer (a later HTTP/1.1 head) ends here.
                    if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
                        limits::count(&inputs.metrics.limit_refusals, Limit::RequestHeaderTimeout);
                    }
                    tracing::debug!(error = %e, "app connection ended with an error");
                }
                return;
            }
            () = &mut head_deadline, if awaiting_head => {
                awaiting_head = false;
                if !first_head.load(Ordering::Relaxed) {
                    limits::count(&inputs.metrics.limit_refusals, Limit::RequestHeaderTimeout);
                    tracing::debug!("app connection sent no complete request head in time");
                    // Dropping the connection closes the socket.
                    return;
                }
            }
            () = inputs.drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
        }
    }
}

/// The service an app's request is for: the listener's, or on the HTTP proxy listener the
/// one its absolute-form URI or Host header names (the app's bytes: refused unless they are a
/// mesh service name). Pure, so the fuzz target `outbound_http1` runs it as the proxy does.
pub fn target_of(
    entry: &Entry,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Result<Target, ProxyError> {
    match entry {
        Entry::Fixed(t) => Ok(t.clone()),
        Entry::HttpProxy => Target::from_authority(
            &authority_of(uri, headers)
                .ok_or_else(|| ProxyError::BadRequest("request names no host".into()))?,
        ),
    }
}

async fn handle(
    inputs: Arc<Inputs>,
    entry: Entry,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let inflight = inputs.drain.track();
    let mut record = RequestRecord::new(
        &inputs.metrics,
        Direction::Outbound,
        req.method().clone(),
        req.uri(),
        inputs.tuning.access_log_query,
    );
    let result = async {
        if inputs.drain.is_draining() {
            return Err(ProxyError::Draining);
        }
        check_header_size(req.headers(), inputs.tuning.max_header_bytes)?;
        let target = target_of(&entry, req.uri(), req.headers())?;
        // Metric labels and edge stats name only services this proxy knows: a Host header is
        // the app's input, and 10,000 distinct ones must not make 10,000 series. A service it
        // does not know is answered here, before anything is counted under its name.
        let known = inputs.snapshot().services.contains_key(&target.service);
        record.set_service(if known {
            &target.service
        } else {
            UNKNOWN_SERVICE
        });
        record.set_source(&inputs.local_service);
        // The client span continues the app's trace (or starts one); the peer sees it as
        // the parent of its server span.
        let declared = content_length(req.headers()).unwrap_or(0);
        record.trace_request(&inputs, req.headers_mut(), SpanKind::Client, declared);
        if !known {
            return Err(ProxyError::NoRoute(format!(
                "{:?} is not a service of this mesh",
                target.service
            )));
        }
        if req.method() == Method::CONNECT {
            return match entry {
                Entry::HttpProxy => connect_tunnel(&inputs, target, req).await,
                Entry::Fixed(_) => Err(ProxyError::BadRequest(
                    "CONNECT is only served on the HTTP proxy listener".into(),
                )),
            };
        }
        let req = req.map(|b| {
            body::StartBy::new(
                b,
                inputs.tuning.limits.request_body_timeout,
                inputs.metrics.limit_refusals.clone(),
            )
        });
        let (result, decided) = crate::proxy::dispatch::forward(&inputs, &target, req).await;
        record.set_route(&decided.route);
        record.set_backend(decided.backend.clone());
        if let Some(span) = record.span_mut() {
            span.route = decided.route.clone();
            span.endpoint = decided.endpoint.map(|a| a.to_string()).unwrap_or_default();
            span.peer_identity = decided.identity.clone();
            span.attempts = decided.attempts;
            span.quic_connection_id = decided.connection.to_string();
        }
        record.set_detail(decided.explain);
        result
    }
    .await;
    match result {
        Ok(resp) => {
            if let Some(span) = record.span_mut() {
                span.response_bytes = content_length(resp.headers()).unwrap_or(0);
            }
            let counter = Metrics::bytes(
                &inputs.metrics.response_bytes,
                Direction::Outbound,
                record.service(),
            );
            record.finish(resp.status(), error_kind(resp.headers()));
            // The body still streams after this returns; drain waits for it to end.
            resp.map(|b| body::guarded(body::Counted::new(b, counter).boxed_unsync(), inflight))
        }
        Err(e) => {
            tracing::debug!(error = %e, "outbound request failed");
            record.fail(&e);
            error_response(&e)
        }
    }
}

/// Open an HTTP/3 CONNECT stream to `target` and wait for the peer's 2xx.
async fn open_tunnel(
    inputs: &Inputs,
    target: &Target,
) -> Result<(PeerConn, ClientStream), ProxyError> {
    let authority = target.authority();
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(authority.as_str())
        .body(())
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    // Tunnels are opaque: Routes (HTTP rules) do not apply; any endpoint of the service,
    // chosen by the same balancer as HTTP attempts. The lease covers the CONNECT (to the
    // peer's 2xx), like an HTTP attempt's covers the request to its response head.
    let rolls = [rand::random::<u32>(), rand::random::<u32>()];
    let mut lease = inputs.routing().lease(
        &target.service,
        &quiver_policy::Labels::default(),
        Instant::now(),
        rolls,
    )?;
    let sent_at = Instant::now();
    let result = connect_stream(inputs, &mut lease, req).await;
    let now = Instant::now();
    let report = match &result {
        Ok(_) => crate::proxy::upstream::Report::answered(true, now - sent_at, None),
        Err(_) => crate::proxy::upstream::Report::failed(),
    };
    if lease.finish(report, now) {
        Metrics::count(&inputs.metrics.ejections, &target.service);
    }
    result
}

async fn connect_stream(
    inputs: &Inputs,
    lease: &mut crate::proxy::upstream::Lease,
    req: Request<()>,
) -> Result<(PeerConn, ClientStream), ProxyError> {
    let (peer, mut stream) = inputs
        .transport
        .open_stream(&lease.endpoint, req, || inputs.snapshot().zone.clone())
        .await?;
    lease.connected();
    let resp = tokio::time::timeout(inputs.tuning.response_timeout, stream.recv_response())
        .await
        .map_err(|_| ProxyError::UpstreamTimeout(inputs.tuning.response_timeout))?
        .map_err(|e| peer.stream_error(&e))?;
    if !resp.status().is_success() {
        return Err(ProxyError::from_peer(
            error_kind(resp.headers()),
            resp.status(),
            "CONNECT",
        ));
    }
    Ok((peer, stream))
}

/// `CONNECT host:port` on the HTTP proxy listener: answer 200 once the mesh tunnel is up,
/// then pump the upgraded connection.
async fn connect_tunnel(
    inputs: &Arc<Inputs>,
    target: Target,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (peer, stream) = open_tunnel(inputs, &target).await?;
    let inputs = inputs.clone();
    tokio::spawn(async move {
        // Holding the request handle keeps the connection open for the tunnel's life.
        let _peer = peer;
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let (tx, rx) = stream.split();
                run_tunnel(&inputs, &target.service, TokioIo::new(upgraded), tx, rx).await;
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    Ok(Response::new(body::empty()))
}

/// A raw TCP connection on an explicit `tcp` listener.
pub(crate) async fn tcp(inputs: Arc<Inputs>, stream: TcpStream, target: Target) {
    let _inflight = inputs.drain.track();
    match open_tunnel(&inputs, &target).await {
        Ok((_peer, s)) => {
            let (tx, rx) = s.split();
            run_tunnel(&inputs, &target.service, stream, tx, rx).await;
        }
        Err(e) => {
            tracing::info!(target: "access", direction = Direction::Outbound.as_str(), dst.service = %target.service, error = e.reason(), detail = %e, "tcp tunnel refused");
            inputs
                .metrics
                .tcp_connections
                .get_or_create(&TcpConnLabels {
                    direction: Direction::Outbound.as_str(),
                    service: target.service.clone(),
                    error: e.reason(),
                })
                .inc();
            // Dropping the socket closes it: a raw TCP client has no other way to learn.
        }
    }
}

async fn run_tunnel<IO>(inputs: &Inputs, service: &str, io: IO, tx: ClientSend, rx: ClientRecv)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _inflight = inputs.drain.track();
    let idle = inputs.tuning.limits.tunnel_idle_timeout;
    let (bytes, err) = crate::proxy::tunnel::pump(io, tx, rx, idle).await;
    crate::proxy::tunnel::record(
        &inputs.metrics,
        Direction::Outbound,
        service,
        bytes,
        err.as_ref(),
    );
}
