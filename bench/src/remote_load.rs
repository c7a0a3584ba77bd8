//! `quiver-bench load`: HTTP/1.1 keep-alive load against a URL given on the command line, for
//! a listener this process did not start (the WAN benchmark runs it inside a network
//! namespace against a proxy's plaintext listener across an emulated lossy, slow link).
//!
//! Closed loop: `--connections` workers, each on its own connection, sending the next `GET`
//! as soon as the previous body has been read. A slow link must never make a stall vanish: a
//! request still in flight when the measured window closes is reported with its age then
//! (`in_flight_at_end`, `oldest_in_flight_ms`, and in `max_ms`) instead of being dropped.
//! `--bulk-url` adds workers downloading a large object over the same path, reported apart
//! (head-of-line blocking of the small requests behind it); `--once` times one download.
//!
//! This module owns those workers and the report; the window and the latency samples are
//! [`load`](super::load)'s and [`stats`](super::stats)'s. It never starts a server or a proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::load::Window;
use super::stats::Outcome;

/// Pause after a broken connection, so a dead listener does not turn into a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// Longest `--duration`, `--warmup` or `--timeout`: anything longer is a typo.
const LONGEST: Duration = Duration::from_secs(7 * 24 * 3600);
const MIB: f64 = (1u64 << 20) as f64;

/// HTTP/1.1 keep-alive load against a URL.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// What the workers GET: `http://HOST:PORT/PATH`, plaintext HTTP/1.1 (`Host` is the
    /// URL's HOST:PORT as written).
    #[arg(long, value_parser = Target::parse)]
    pub url: Target,
    /// Closed-loop workers, each on its own keep-alive connection.
    #[arg(long, default_value = "16", value_parser = parse_count)]
    pub connections: usize,
    /// Measured window (e.g. 15s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Load before the measured window (not counted).
    #[arg(long, default_value = "1s", value_parser = parse_warmup)]
    pub warmup: Duration,
    /// Body length every `--url` answer must have (e.g. 65536, 64KiB, 1GiB); any other
    /// length is an error.
    #[arg(long, value_parser = super::parse_bytes)]
    pub expect_bytes: Option<u64>,
    /// A request whose body has not fully arrived after this long is an error, and its
    /// connection is dropped and reopened.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub timeout: Duration,
    /// A large object that `--bulk-connections` more workers download over and over during
    /// the same window, on connections of their own; reported under `bulk`, apart from the
    /// `--url` latencies.
    #[arg(long, value_parser = Target::parse, conflicts_with = "once")]
    pub bulk_url: Option<Target>,
    /// Workers downloading `--bulk-url`.
    #[arg(long, default_value = "1", value_parser = parse_count)]
    pub bulk_connections: usize,
    /// One GET of `--url`, timed from sending the request to the last body byte (the body is
    /// counted as it streams, never buffered). --connections, --duration and --warmup are
    /// ignored.
    #[arg(long)]
    pub once: bool,
    /// Threads of the load generator: 1 = a current-thread runtime, more = a multi-thread
    /// runtime with that many workers.
    #[arg(long, default_value = "1", value_parser = parse_count)]
    pub client_threads: usize,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Run the load and print its report. Request errors are in the report (`errors`) for the
/// caller to read, so this is `Ok(true)` whenever the run happened; `Err` only when it could
/// not (the URL does not resolve, the runtime does not start, Ctrl-C).
pub fn main(args: Args) -> anyhow::Result<bool> {
    let runtime = super::client_runtime(args.client_threads)?;
    let report = runtime.block_on(async {
        tokio::select! {
            r = run(&args) => r,
            s = super::interrupted() => Err(anyhow!("interrupted by {s}")),
        }
    });
    // Outside any async context, as tokio requires; this also ends the connections of the
    // requests abandoned at the window's close.
    drop(runtime);
    let report = report?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    } else {
        print!("{report}");
    }
    Ok(true)
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    if args.once {
        once(args).await.map(Report::Once)
    } else {
        closed(args).await.map(Report::Closed)
    }
}

// ---- the target ----

/// An `http://` URL, split the way each request needs it.
#[derive(Debug, Clone)]
pub struct Target {
    /// As given, for the report.
    pub url: String,
    /// `host:port` to resolve (port 80 when the URL has none).
    connect_to: String,
    /// The `Host` header: the URL's authority as written.
    host: HeaderValue,
    /// The request target, in origin form (`/path?query`).
    path: Uri,
}

impl Target {
    /// Accepts `http://HOST[:PORT][/PATH]` only: the load is plaintext HTTP/1.1.
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: Uri = s
            .parse()
            .map_err(|e| format!("{s:?} is not an http://HOST:PORT/PATH URL ({e})"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{s:?}: https is not supported; give the plaintext http:// listener"
                ));
            }
            _ => return Err(format!("{s:?}: only http://HOST:PORT/PATH URLs")),
        }
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty() && !a.as_str().contains('@'))
            .ok_or_else(|| format!("{s:?}: needs HOST:PORT after http://"))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("{s:?}: {e} in the host"))?;
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(Self {
            url: s.to_string(),
            connect_to: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
            host,
            path: Uri::from(path),
        })
    }
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a count")),
    }
}

fn parse_warmup(s: &str) -> Result<Duration, String> {
    let d = super::parse_duration(s)?;
    if d > LONGEST {
        return Err(format!("{s:?}: longer than {LONGEST:?}"));
    }
    Ok(d)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_warmup(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    Ok(d)
}

// ---- one request ----

/// What every request of one group of workers sends and checks.
#[derive(Debug)]
struct Job {
    addr: SocketAddr,
    path: Uri,
    host: HeaderValue,
    expect_bytes: Option<u64>,
    timeout: Duration,
}

impl Job {
    /// Resolves the target once, before any load: every connection goes to that address.
    async fn resolve(
        target: &Target,
        expect_bytes: Option<u64>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let addr = tokio::net::lookup_host(&target.connect_to)
            .await
            .with_context(|| format!("resolving {}", target.connect_to))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", target.connect_to))?;
        Ok(Self {
            addr,
            path: target.path.clone(),
            host: target.host.clone(),
            expect_bytes,
            timeout,
        })
    }
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
enum Fail {
    /// Answered, but not 2xx. `reason` is the proxy's `quiver-error`, as " (reason)", or "".
    #[error("status {status}{reason}")]
    Status { status: u16, reason: String },
    #[error("body {got} bytes, expected {want}")]
    Length { got: u64, want: u64 },
    #[error("connect {addr}: {error}")]
    Connect { addr: SocketAddr, error: String },
    /// I/O or protocol error on an open connection.
    #[error("{0}")]
    Transport(String),
    #[error("no answer in {0:?}")]
    Timeout(Duration),
}

impl Fail {
    fn transport(e: hyper::Error) -> Self {
        Fail::Transport(with_causes(&e))
    }

    /// Whether the connection is unusable afterwards (a status or a length error leaves it
    /// at a clean message boundary: the body was read to its end).
    fn breaks_connection(&self) -> bool {
        matches!(
            self,
            Fail::Connect { .. } | Fail::Transport(_) | Fail::Timeout(_)
        )
    }
}

/// `e` and its sources: hyper's own text alone says "connection error", not which.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

type H1Conn = SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<H1Conn, Fail> {
    let fail = |e: &dyn std::error::Error| Fail::Connect {
        addr,
        error: with_causes(e),
    };
    let stream = TcpStream::connect(addr).await.map_err(|e| fail(&e))?;
    stream.set_nodelay(true).map_err(|e| fail(&e))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(&e))?;
    // Ends by itself once the sender is dropped (or with the runtime).
    tokio::spawn(conn);
    Ok(sender)
}

/// One `GET` on `sender`, reading the whole body and handing each frame's length to
/// `on_data` as it arrives (nothing is buffered). Ok: the body's length.
async fn exchange(
    sender: &mut H1Conn,
    job: &Job,
    on_data: &mut impl FnMut(u64),
) -> Result<u64, Fail> {
    sender.ready().await.map_err(Fail::transport)?;
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = job.path.clone();
    req.headers_mut().insert(header::HOST, job.host.clone());
    let resp = sender.send_request(req).await.map_err(Fail::transport)?;
    let status = resp.status();
    let reason = if status.is_success() {
        String::new()
    } else {
        resp.headers()
            .get("quiver-error")
            .and_then(|v| v.to_str().ok())
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    };
    let mut body = resp.into_body();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Fail::transport)?;
        if let Some(data) = frame.data_ref() {
            let n = data.len() as u64;
            len += n;
            on_data(n);
        }
    }
    if !status.is_success() {
        return Err(Fail::Status {
            status: status.as_u16(),
            reason,
        });
    }
    match job.expect_bytes {
        Some(want) if want != len => Err(Fail::Length { got: len, want }),
        _ => Ok(len),
    }
}

// ---- closed loop ----

/// What one closed-loop worker saw.
#[derive(Debug, Default)]
struct Seen {
    /// Requests that completed inside the window.
    outcome: Outcome,
    /// Body bytes of the successful requests in `outcome`.
    bytes: u64,
    /// Body bytes that arrived inside the window, whichever request carried them (a bulk
    /// object can take longer than the window).
    window_bytes: u64,
    /// Age, when the window closed, of the request then still in flight.
    in_flight: Option<Duration>,
}

async fn closed(args: &Args) -> anyhow::Result<ClosedReport> {
    let job = Arc::new(Job::resolve(&args.url, args.expect_bytes, args.timeout).await?);
    let bulk_job = match &args.bulk_url {
        Some(target) => Some(Arc::new(Job::resolve(target, None, args.timeout).await?)),
        None => None,
    };
    let window = Window::after(args.warmup, args.duration);
    let spawn = |job: &Arc<Job>, workers: usize| -> Vec<JoinHandle<Seen>> {
        (0..workers)
            .map(|_| tokio::spawn(closed_loop(Arc::clone(job), window)))
            .collect()
    };
    let main = spawn(&job, args.connections);
    let bulk = bulk_job.map(|job| spawn(&job, args.bulk_connections));
    let main = join(main).await?;
    let bulk = match bulk {
        Some(handles) => Some(join(handles).await?),
        None => None,
    };
    Ok(closed_report(&args.url.url, window.seconds(), main, bulk))
}

async fn join(handles: Vec<JoinHandle<Seen>>) -> anyhow::Result<Vec<Seen>> {
    let mut seen = Vec::with_capacity(handles.len());
    for handle in handles {
        seen.push(handle.await.context("load worker panicked")?);
    }
    Ok(seen)
}

/// One worker: request after request on one keep-alive connection until the window closes.
/// A request cut off by the close is not waited for; its age then is recorded instead.
async fn closed_loop(job: Arc<Job>, window: Window) -> Seen {
    let mut seen = Seen::default();
    let mut conn: Option<H1Conn> = None;
    loop {
        let start = Instant::now();
        if start >= window.until {
            break;
        }
        // One timer per request: the request's own timeout or the window's close.
        let deadline = start
            .checked_add(job.timeout)
            .map_or(window.until, |t| t.min(window.until));
        let window_bytes = &mut seen.window_bytes;
        let request = async {
            if conn.as_ref().is_some_and(SendRequest::is_closed) {
                conn = None;
            }
            let sender = match conn {
                Some(ref mut sender) => sender,
                None => conn.insert(connect(job.addr).await?),
            };
            exchange(sender, &job, &mut |n| {
                if window.counts(Instant::now()) {
                    *window_bytes += n;
                }
            })
            .await
        };
        let result = tokio::time::timeout_at(deadline.into(), request).await;
        let end = Instant::now();
        if end >= window.until {
            // In flight when the window closed, however it ended a moment later.
            seen.in_flight = Some(window.until - start);
            break;
        }
        let result = result.unwrap_or(Err(Fail::Timeout(job.timeout)));
        let broken = matches!(&result, Err(fail) if fail.breaks_connection());
        if window.counts(end) {
            match result {
                Ok(len) => {
                    seen.outcome.ok(end - start);
                    seen.bytes += len;
                }
                Err(fail) => seen.outcome.error(fail),
            }
        }
        if broken {
            conn = None;
            let resume = (end + RECONNECT_PAUSE).min(window.until);
            tokio::time::sleep_until(resume.into()).await;
        }
    }
    seen
}

/// The report of a closed-loop run; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct ClosedReport {
    /// "closed".
    pub mode: &'static str,
    pub url: String,
    pub connections: usize,
    /// Length of the measured window.
    pub seconds: f64,
    /// `--url` requests that succeeded inside the window.
    pub requests: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// The slowest completed request or the oldest one in flight at the close, if older.
    pub max_ms: Option<f64>,
    pub in_flight_at_end: usize,
    pub oldest_in_flight_ms: Option<f64>,
    /// Body bytes of the successful `--url` requests, per second of window.
    pub mib_per_s: f64,
    pub bytes: u64,
    pub bulk: Option<BulkReport>,
}

/// The `--bulk-url` workers' share of a closed-loop run.
#[derive(Debug, Serialize)]
pub struct BulkReport {
    pub connections: usize,
    /// Downloads that completed successfully inside the window.
    pub requests: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Body bytes that arrived inside the window, finished downloads or not.
    pub bytes: u64,
    pub mib_per_s: f64,
}

/// Fold the workers' results into the report. Pure: the tests feed it made-up workers.
fn closed_report(
    url: &str,
    seconds: f64,
    main: Vec<Seen>,
    bulk: Option<Vec<Seen>>,
) -> ClosedReport {
    let connections = main.len();
    let mut outcome = Outcome::default();
    let mut bytes = 0;
    let mut in_flight_at_end = 0;
    let mut oldest = Duration::ZERO;
    for seen in main {
        outcome.merge(seen.outcome);
        bytes += seen.bytes;
        if let Some(age) = seen.in_flight {
            in_flight_at_end += 1;
            oldest = oldest.max(age);
        }
    }
    outcome.sort();
    let oldest_in_flight_ms = (in_flight_at_end > 0).then(|| oldest.as_nanos() as f64 / 1e6);
    let max_ms = match (outcome.percentile_ms(1.0), oldest_in_flight_ms) {
        (Some(done), Some(waiting)) => Some(done.max(waiting)),
        (done, waiting) => done.or(waiting),
    };
    let bulk = bulk.map(|workers| {
        let connections = workers.len();
        let mut outcome = Outcome::default();
        let mut bytes = 0;
        for seen in workers {
            outcome.merge(seen.outcome);
            bytes += seen.window_bytes;
        }
        BulkReport {
            connections,
            requests: outcome.requests(),
            errors: outcome.errors,
            error_samples: outcome.error_samples,
            bytes,
            mib_per_s: per_second(bytes as f64 / MIB, seconds),
        }
    });
    ClosedReport {
        mode: "closed",
        url: url.to_string(),
        connections,
        seconds,
        requests: outcome.requests(),
        errors: outcome.errors,
        rps: per_second(outcome.requests() as f64, seconds),
        p50_ms: outcome.percentile_ms(0.5),
        p90_ms: outcome.percentile_ms(0.9),
        p99_ms: outcome.percentile_ms(0.99),
        p999_ms: outcome.percentile_ms(0.999),
        max_ms,
        in_flight_at_end,
        oldest_in_flight_ms,
        mib_per_s: per_second(bytes as f64 / MIB, seconds),
        bytes,
        bulk,
        error_samples: outcome.error_samples,
    }
}

fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { amount / seconds } else { 0.0 }
}

// ---- once ----

/// The report of `--once`; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct OnceReport {
    /// "once".
    pub mode: &'static str,
    pub url: String,
    /// Body bytes received (all of them, or as far as it got before an error).
    pub bytes: u64,
    /// From sending the request to the last body byte (or the error).
    pub seconds: f64,
    pub mib_per_s: f64,
    pub errors: u64,
    pub error_samples: Vec<String>,
}

async fn once(args: &Args) -> anyhow::Result<OnceReport> {
    let job = Job::resolve(&args.url, args.expect_bytes, args.timeout).await?;
    let began = Instant::now();
    let mut sent = None;
    let mut bytes = 0;
    let transfer = async {
        let mut sender = connect(job.addr).await?;
        // The clock starts once connected: this times the transfer, not the handshake.
        sent = Some(Instant::now());
        exchange(&mut sender, &job, &mut |n| bytes += n).await
    };
    let result = tokio::time::timeout(args.timeout, transfer)
        .await
        .unwrap_or(Err(Fail::Timeout(args.timeout)));
    let seconds = sent.unwrap_or(began).elapsed().as_secs_f64();
    let mut outcome = Outcome::default();
    if let Err(fail) = result {
        outcome.error(fail);
    }
    Ok(OnceReport {
        mode: "once",
        url: args.url.url.clone(),
        bytes,
        seconds,
        mib_per_s: per_second(bytes as f64 / MIB, seconds),
        errors: outcome.errors,
        error_samples: outcome.error_samples,
    })
}

// ---- output ----

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Report {
    Closed(ClosedReport),
    Once(OnceReport),
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Report::Closed(r) => {
                writeln!(
                    f,
                    "load {}: {} connections, {:.1} s measured",
                    r.url, r.connections, r.seconds
                )?;
                writeln!(
                    f,
                    "  requests  {} ({:.1}/s), errors {}",
                    r.requests, r.rps, r.errors
                )?;
                writeln!(
                    f,
                    "  latency   p50 {} p90 {} p99 {} p99.9 {} max {} ms",
                    ms(r.p50_ms),
                    ms(r.p90_ms),
                    ms(r.p99_ms),
                    ms(r.p999_ms),
                    ms(r.max_ms)
                )?;
                writeln!(
                    f,
                    "  in flight {} at the window's close, oldest {} ms",
                    r.in_flight_at_end,
                    ms(r.oldest_in_flight_ms)
                )?;
                writeln!(
                    f,
                    "  body      {:.2} MiB/s ({} bytes)",
                    r.mib_per_s, r.bytes
                )?;
                samples(f, &r.error_samples)?;
                if let Some(b) = &r.bulk {
                    writeln!(
                        f,
                        "  bulk      {} connections: {} downloads, errors {}, {:.2} MiB/s ({} bytes)",
                        b.connections, b.requests, b.errors, b.mib_per_s, b.bytes
                    )?;
                    samples(f, &b.error_samples)?;
                }
                Ok(())
            }
            Report::Once(r) => {
                writeln!(
                    f,
                    "once {}: {} bytes in {:.3} s, {:.2} MiB/s, errors {}",
                    r.url, r.bytes, r.seconds, r.mib_per_s, r.errors
                )?;
                samples(f, &r.error_samples)
            }
        }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn samples(f: &mut std::fmt::Formatter<'_>, samples: &[String]) -> std::fmt::Result {
    samples.iter().try_for_each(|s| writeln!(f, "  !! {s}"))
}

#[cfg(test)]
mod tests;
