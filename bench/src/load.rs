//! The load generators: lean clients (one hyper connection per worker, raw TCP where hyper
//! would only add cost), each recording latencies of requests that complete inside the
//! measured window. They run on the caller's runtime (a current-thread one by default: the
//! load generator shares 2 cores with the proxies and the backends).

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stats::Outcome;
use quiver_tests::echo_proto::EchoRequest;
use quiver_tests::echo_proto::echo_client::EchoClient;

/// One request that takes longer than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed connect, so a dead listener does not turn into a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// Requests completing in `[from, until)` are measured; workers stop sending at `until`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: Instant,
    pub until: Instant,
}

impl Window {
    /// A window that opens after `warmup` and lasts `duration`.
    pub fn after(warmup: Duration, duration: Duration) -> Self {
        let from = Instant::now() + warmup;
        Self {
            from,
            until: from + duration,
        }
    }

    pub(crate) fn counts(&self, t: Instant) -> bool {
        t >= self.from && t < self.until
    }

    pub fn seconds(&self) -> f64 {
        (self.until - self.from).as_secs_f64()
    }
}

/// Reads the proxies' CPU time (clock ticks); `None` on the direct path.
pub type CpuProbe<'a> = Option<&'a (dyn Fn() -> anyhow::Result<u64> + 'a)>;

/// What a load run measured.
#[derive(Debug)]
pub struct Measured {
    pub outcome: Outcome,
    pub seconds: f64,
    /// Proxy CPU ticks spent inside the window.
    pub cpu_ticks: Option<u64>,
}

/// Run `workers` closed-loop workers over `window`, reading the CPU probe at its edges.
async fn drive<F, Fut>(
    workers: usize,
    window: Window,
    cpu: CpuProbe<'_>,
    worker: F,
) -> anyhow::Result<Measured>
where
    F: Fn(Window) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let handles: Vec<_> = (0..workers).map(|_| tokio::spawn(worker(window))).collect();
    tokio::time::sleep_until(window.from.into()).await;
    let cpu0 = cpu.map(|f| f()).transpose()?;
    tokio::time::sleep_until(window.until.into()).await;
    let cpu1 = cpu.map(|f| f()).transpose()?;
    let mut outcome = Outcome::default();
    for h in handles {
        outcome.merge(h.await.context("load worker panicked")?);
    }
    Ok(Measured {
        outcome,
        seconds: window.seconds(),
        cpu_ticks: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a)),
    })
}

// ---- HTTP/1.1 keep-alive ----

/// Closed loop: `conns` keep-alive connections, each sending `GET /` as soon as the previous
/// response has been read.
pub async fn h1_closed(
    addr: SocketAddr,
    conns: usize,
    window: Window,
    cpu: CpuProbe<'_>,
) -> anyhow::Result<Measured> {
    drive(conns, window, cpu, move |w| async move {
        let mut out = Outcome::default();
        let mut conn = None;
        while Instant::now() < w.until {
            let start = Instant::now();
            let result = h1_request(addr, &mut conn).await;
            let end = Instant::now();
            record(&mut out, &w, start, end, &result);
            if let Err(Fail::Transport(_)) = result {
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
        out
    })
    .await
}

/// Why one request failed.
#[derive(Debug)]
enum Fail {
    /// The server answered, but not 2xx: the connection is still good. The text is the
    /// proxy's `quiver-error` reason, if it gave one.
    Status(u16, String),
    /// Connect, I/O, protocol error or timeout: the connection is dropped.
    Transport(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Status(s, reason) if reason.is_empty() => write!(f, "status {s}"),
            Fail::Status(s, reason) => write!(f, "status {s} ({reason})"),
            Fail::Transport(e) => f.write_str(e),
        }
    }
}

fn record(out: &mut Outcome, w: &Window, start: Instant, end: Instant, r: &Result<(), Fail>) {
    if w.counts(end) {
        match r {
            Ok(()) => out.ok(end - start),
            Err(e) => out.error(e),
        }
    }
}

type H1Conn = SendRequest<Empty<Bytes>>;

async fn h1_connect(addr: SocketAddr) -> Result<H1Conn, Fail> {
    let t = |e: &dyn std::fmt::Display| Fail::Transport(format!("connect {addr}: {e}"));
    let stream = TcpStream::connect(addr).await.map_err(|e| t(&e))?;
    stream.set_nodelay(true).map_err(|e| t(&e))?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| t(&e))?;
    tokio::spawn(conn);
    Ok(send)
}

/// `GET /` on the worker's connection (opened first if there is none); reads the whole body.
async fn h1_request(addr: SocketAddr, conn: &mut Option<H1Conn>) -> Result<(), Fail> {
    let result = async {
        let sender = match conn {
            Some(s) => s,
            None => conn.insert(h1_connect(addr).await?),
        };
        let t = |e: hyper::Error| Fail::Transport(e.to_string());
        sender.ready().await.map_err(t)?;
        let req = Request::get("/")
            .header(header::HOST, "bench")
            .body(Empty::new())
            .map_err(|e| Fail::Transport(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(t)?;
        let status = resp.status();
        let reason = resp
            .headers()
            .get("quiver-error")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        resp.into_body().collect().await.map_err(t)?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Fail::Status(status.as_u16(), reason))
        }
    };
    let r = match tokio::time::timeout(REQUEST_TIMEOUT, result).await {
        Ok(r) => r,
        Err(_) => Err(Fail::Transport(format!("no answer in {REQUEST_TIMEOUT:?}"))),
    };
    if matches!(r, Err(Fail::Transport(_))) {
        *conn = None;
    }
    r
}

// ---- open loop at a fixed rate ----

/// Open loop: `rate` requests per second spread round-robin over `conns` keep-alive
/// connections (wrk2's shape). Latency runs from each request's *scheduled* send time, so a
/// stall delays the requests queued behind it and shows in the percentiles instead of
/// silently lowering the offered load (coordinated omission).
///
/// The schedule comes from a plain thread sleeping with the kernel's high-resolution timers:
/// tokio's timer wheel has 1 ms granularity, which would add up to 1 ms to every sample.
pub async fn h1_open(
    addr: SocketAddr,
    conns: usize,
    rate: f64,
    window: Window,
    cpu: CpuProbe<'_>,
) -> anyhow::Result<Measured> {
    if rate <= 0.0 || conns == 0 {
        bail!("rate and connections must be positive");
    }
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = ((window.until - start).as_secs_f64() * rate) as u64;
    let mut senders = Vec::with_capacity(conns);
    let mut handles = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        senders.push(tx);
        handles.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            let mut conn = None;
            while let Some(scheduled) = rx.recv().await {
                let result = h1_request(addr, &mut conn).await;
                let end = Instant::now();
                // Measured by when it was due, not when it completed: the window is the
                // schedule's, whatever the backlog.
                if window.counts(scheduled) {
                    match result {
                        Ok(()) => out.ok(end - scheduled),
                        Err(e) => out.error(e),
                    }
                }
            }
            out
        }));
    }
    std::thread::Builder::new()
        .name("bench-schedule".into())
        .spawn(move || {
            for i in 0..total {
                let at = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                // A closed channel means the run was abandoned (error or Ctrl-C): stop.
                if senders[(i as usize) % senders.len()].send(at).is_err() {
                    return;
                }
            }
        })
        .context("starting the schedule thread")?;
    tokio::time::sleep_until(window.from.into()).await;
    let cpu0 = cpu.map(|f| f()).transpose()?;
    tokio::time::sleep_until(window.until.into()).await;
    let cpu1 = cpu.map(|f| f()).transpose()?;
    let mut outcome = Outcome::default();
    for h in handles {
        outcome.merge(h.await.context("load worker panicked")?);
    }
    Ok(Measured {
        outcome,
        seconds: window.seconds(),
        cpu_ticks: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a)),
    })
}

// ---- a new connection per request ----

/// Closed loop, `workers` at a time: connect, send one `Connection: close` request, read to
/// EOF. Raw TCP on purpose: the server closes first, so TIME_WAIT lands on its side and the
/// client's ephemeral ports stay reusable through a long run.
pub async fn close_closed(
    addr: SocketAddr,
    workers: usize,
    window: Window,
    cpu: CpuProbe<'_>,
) -> anyhow::Result<Measured> {
    drive(workers, window, cpu, move |w| async move {
        let mut out = Outcome::default();
        while Instant::now() < w.until {
            let start = Instant::now();
            let result = match tokio::time::timeout(REQUEST_TIMEOUT, close_request(addr)).await {
                Ok(r) => r,
                Err(_) => Err(Fail::Transport(format!("no answer in {REQUEST_TIMEOUT:?}"))),
            };
            let end = Instant::now();
            record(&mut out, &w, start, end, &result);
            if let Err(Fail::Transport(_)) = result {
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
        out
    })
    .await
}

async fn close_request(addr: SocketAddr) -> Result<(), Fail> {
    const REQ: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    let t = |e: std::io::Error| Fail::Transport(e.to_string());
    let mut s = TcpStream::connect(addr).await.map_err(t)?;
    s.set_nodelay(true).map_err(t)?;
    s.write_all(REQ).await.map_err(t)?;
    let mut buf = Vec::with_capacity(512);
    s.read_to_end(&mut buf).await.map_err(t)?;
    let status = buf
        .get(9..12)
        .filter(|_| buf.starts_with(b"HTTP/1."))
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| Fail::Transport(format!("not an HTTP response ({} bytes)", buf.len())))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(Fail::Status(status, quiver_error(&buf)))
    }
}

/// The `quiver-error` header of a raw HTTP/1.1 response head, or "".
fn quiver_error(response: &[u8]) -> String {
    let head = String::from_utf8_lossy(response);
    head.split("\r\n\r\n")
        .next()
        .into_iter()
        .flat_map(|h| h.split("\r\n"))
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("quiver-error")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default()
}

// ---- gRPC unary ----

/// Closed loop: `streams` concurrent unary calls multiplexed over `conns` HTTP/2 connections
/// (tonic channels).
pub async fn grpc_closed(
    addr: SocketAddr,
    conns: usize,
    streams: usize,
    window: Window,
    cpu: CpuProbe<'_>,
) -> anyhow::Result<Measured> {
    let mut channels = Vec::new();
    for _ in 0..conns.max(1) {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("gRPC connect to {addr}"))?;
        channels.push(channel);
    }
    let next = std::cell::Cell::new(0usize);
    drive(streams, window, cpu, |w| {
        let i = next.get();
        next.set(i + 1);
        let mut client = EchoClient::new(channels[i % channels.len()].clone());
        async move {
            let mut out = Outcome::default();
            while Instant::now() < w.until {
                let start = Instant::now();
                let req = EchoRequest {
                    message: "ping".into(),
                    ..Default::default()
                };
                let result = match tokio::time::timeout(REQUEST_TIMEOUT, client.unary(req)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) => Err(Fail::Transport(format!(
                        "grpc {:?}: {}{}",
                        status.code(),
                        status.message(),
                        status
                            .metadata()
                            .get("quiver-error")
                            .and_then(|v| v.to_str().ok())
                            .map(|r| format!(" (quiver-error {r})"))
                            .unwrap_or_default()
                    ))),
                    Err(_) => Err(Fail::Transport(format!("no answer in {REQUEST_TIMEOUT:?}"))),
                };
                record(&mut out, &w, start, Instant::now(), &result);
            }
            out
        }
    })
    .await
}

// ---- bulk ----

/// What one bulk transfer measured.
#[derive(Debug)]
pub struct BulkResult {
    pub bytes: u64,
    pub seconds: f64,
    pub cpu_ticks: Option<u64>,
}

impl BulkResult {
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.seconds
    }
}

/// Send `bytes` on one TCP connection to a sink, half-close, and read its byte count. The
/// clock runs from the first byte written to the count's arrival; a count that differs from
/// what was sent is an error.
pub async fn bulk(
    addr: SocketAddr,
    bytes: u64,
    timeout: Duration,
    cpu: CpuProbe<'_>,
) -> anyhow::Result<BulkResult> {
    const CHUNK: usize = 256 * 1024;
    let buf = vec![0x5a_u8; CHUNK];
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("bulk: connect {addr}"))?;
    s.set_nodelay(true)?;
    let cpu0 = cpu.map(|f| f()).transpose()?;
    let start = Instant::now();
    let transfer = async {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            s.write_all(&buf[..n]).await.context("bulk: writing")?;
            left -= n as u64;
        }
        s.shutdown().await.context("bulk: half-closing")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .await
            .context("bulk: reading the sink's count")?;
        Ok::<_, anyhow::Error>(reply)
    };
    let reply = tokio::time::timeout(timeout, transfer)
        .await
        .with_context(|| format!("bulk: not done after {timeout:?}"))??;
    let seconds = start.elapsed().as_secs_f64();
    let cpu1 = cpu.map(|f| f()).transpose()?;
    let counted: u64 = reply
        .trim()
        .parse()
        .with_context(|| format!("bulk: the sink's reply {reply:?} is not a byte count"))?;
    if counted != bytes {
        bail!("bulk: the sink counted {counted} bytes but {bytes} were sent");
    }
    Ok(BulkResult {
        bytes,
        seconds,
        cpu_ticks: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_proxy_reason_from_a_raw_response() {
        let r = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 5\r\nQuiver-Error: upstream-reset\r\n\r\nquiver-error: body";
        assert_eq!(quiver_error(r), "upstream-reset");
        assert_eq!(quiver_error(b"HTTP/1.1 500 x\r\n\r\n"), "");
    }
}
