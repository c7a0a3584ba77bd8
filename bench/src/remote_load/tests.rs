use std::convert::Infallible;

use clap::Parser;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use super::*;
use crate::{Cli, Command};

fn parse(flags: &[&str]) -> Result<Args, String> {
    let argv = ["quiver-bench", "load"].iter().chain(flags);
    match Cli::try_parse_from(argv)
        .map_err(|e| e.to_string())?
        .command
    {
        Some(Command::Load(args)) => Ok(*args),
        other => panic!("not the load command: {other:?}"),
    }
}

#[test]
fn the_wan_script_flags_parse() {
    let a = parse(&[
        "--url",
        "http://10.99.0.2:18100/64k",
        "--connections",
        "100",
        "--duration",
        "15s",
        "--warmup",
        "2s",
        "--expect-bytes",
        "65536",
        "--bulk-url",
        "http://10.99.0.2:18100/1g",
        "--json",
    ])
    .unwrap();
    assert_eq!(a.url.connect_to, "10.99.0.2:18100");
    assert_eq!(a.url.host, "10.99.0.2:18100");
    assert_eq!(a.url.path, "/64k");
    assert_eq!(
        (a.connections, a.duration, a.warmup),
        (100, Duration::from_secs(15), Duration::from_secs(2))
    );
    assert_eq!(a.expect_bytes, Some(65536));
    assert_eq!(a.timeout, Duration::from_secs(30));
    assert_eq!(a.bulk_connections, 1);
    assert_eq!(a.client_threads, 1);
    assert!(a.json && !a.once);

    let t = Target::parse("http://[::1]:8080/x?y=1").unwrap();
    assert_eq!(
        (t.connect_to.as_str(), t.path.to_string()),
        ("[::1]:8080", "/x?y=1".into())
    );
    let t = Target::parse("http://backend.test").unwrap();
    assert_eq!(
        (t.connect_to.as_str(), t.path.to_string()),
        ("backend.test:80", "/".into())
    );
}

#[test]
fn bad_flags_are_refused_naming_the_flag() {
    let refused = |flags: &[&str], flag: &str, why: &str| {
        let e = parse(flags).expect_err(why);
        assert!(e.contains(flag) && e.contains(why), "{flags:?}: {e}");
    };
    let url = |u: &'static str| ["--url", u];
    refused(
        &url("https://10.0.0.1:443/"),
        "--url",
        "https is not supported",
    );
    refused(
        &url("not a url"),
        "--url",
        "is not an http://HOST:PORT/PATH URL",
    );
    refused(
        &url("10.0.0.1:80/x"),
        "--url",
        "is not an http://HOST:PORT/PATH URL",
    );
    refused(&url("ftp://10.0.0.1:21/"), "--url", "only http://");
    refused(&url("http://user@10.0.0.1:80/"), "--url", "needs HOST:PORT");
    let ok = "http://10.0.0.1:80/";
    refused(
        &["--url", ok, "--connections", "0"],
        "--connections",
        "at least 1",
    );
    refused(
        &["--url", ok, "--bulk-connections", "0"],
        "--bulk-connections",
        "at least 1",
    );
    refused(
        &["--url", ok, "--duration", "0s"],
        "--duration",
        "longer than zero",
    );
    refused(
        &["--url", ok, "--timeout", "30"],
        "--timeout",
        "missing unit",
    );
    refused(
        &["--url", ok, "--expect-bytes", "lots"],
        "--expect-bytes",
        "not a byte count",
    );
    refused(
        &["--url", ok, "--once", "--bulk-url", ok],
        "--bulk-url",
        "cannot be used",
    );
    refused(&["--connections", "4"], "--url", "required");
}

fn worker(latencies_ms: &[u64], errors: &[&str], bytes: u64, in_flight_ms: Option<u64>) -> Seen {
    let mut seen = Seen {
        bytes,
        window_bytes: bytes,
        in_flight: in_flight_ms.map(Duration::from_millis),
        ..Seen::default()
    };
    latencies_ms
        .iter()
        .for_each(|&ms| seen.outcome.ok(Duration::from_millis(ms)));
    errors.iter().for_each(|e| seen.outcome.error(e));
    seen
}

#[test]
fn requests_in_flight_at_the_close_show_in_the_report() {
    let done: Vec<u64> = (1..=100).collect();
    let main = vec![
        worker(&done, &[], 100 << 20, None),
        worker(&[], &[], 0, Some(250)),
        worker(&[], &["status 502"], 0, Some(40)),
    ];
    let r = closed_report("http://x/", 2.0, main, None);
    assert_eq!((r.connections, r.requests, r.errors), (3, 100, 1));
    assert_eq!((r.rps, r.mib_per_s), (50.0, 50.0));
    assert_eq!((r.p50_ms, r.p99_ms), (Some(50.0), Some(99.0)));
    assert_eq!(r.in_flight_at_end, 2);
    assert_eq!(r.oldest_in_flight_ms, Some(250.0));
    assert_eq!(r.max_ms, Some(250.0), "the stall is the maximum");
    assert!(r.bulk.is_none());

    // Nothing completed at all: the percentiles are empty but the stall is still there.
    let r = closed_report("http://x/", 1.0, vec![worker(&[], &[], 0, Some(900))], None);
    assert_eq!((r.requests, r.p50_ms, r.p999_ms), (0, None, None));
    assert_eq!((r.in_flight_at_end, r.max_ms), (1, Some(900.0)));

    // Nothing in flight: the maximum is the slowest completed request.
    let main = vec![worker(&[3, 7], &[], 0, None)];
    let bulk = vec![worker(&[900], &["status 503"], 3 << 20, Some(10))];
    let r = closed_report("http://x/", 2.0, main, Some(bulk));
    assert_eq!(
        (r.max_ms, r.oldest_in_flight_ms, r.in_flight_at_end),
        (Some(7.0), None, 0)
    );
    let b = r.bulk.unwrap();
    assert_eq!(
        (b.connections, b.requests, b.errors, b.bytes),
        (1, 1, 1, 3 << 20)
    );
    assert_eq!(b.mib_per_s, 1.5);
    assert_eq!(
        r.max_ms,
        Some(7.0),
        "bulk latencies stay out of the main stats"
    );
}

// ---- against a real server ----

static THOUSAND: [u8; 1000] = [b'q'; 1000];

/// A tiny HTTP/1.1 server: `/thousand` answers 1000 bytes, `/stall` never answers, anything
/// else is a 404.
async fn serve() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                match req.uri().path() {
                    "/thousand" => {}
                    "/stall" => std::future::pending::<()>().await,
                    _ => {
                        let mut missing = Response::new(Full::new(Bytes::new()));
                        *missing.status_mut() = StatusCode::NOT_FOUND;
                        return Ok::<_, Infallible>(missing);
                    }
                }
                Ok(Response::new(Full::new(Bytes::from_static(&THOUSAND))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

fn args_for(addr: SocketAddr, path: &str, extra: &[&str]) -> Args {
    let url = format!("http://{addr}{path}");
    let base = [
        "--url",
        url.as_str(),
        "--connections",
        "4",
        "--warmup",
        "0s",
    ];
    let flags: Vec<&str> = base.iter().chain(extra).copied().collect();
    parse(&flags).unwrap()
}

#[tokio::test]
async fn closed_loop_counts_requests_and_checks_the_body_length() {
    let addr = serve().await;
    let bulk_url = format!("http://{addr}/thousand");
    let flags = [
        "--duration",
        "500ms",
        "--expect-bytes",
        "1000",
        "--bulk-url",
        &bulk_url,
    ];
    let r = closed(&args_for(addr, "/thousand", &flags)).await.unwrap();
    assert!(r.requests > 0, "{r:?}");
    assert_eq!((r.errors, r.bytes), (0, r.requests * 1000), "{r:?}");
    assert!(r.p50_ms.is_some() && r.max_ms >= r.p999_ms, "{r:?}");
    let bulk = r.bulk.unwrap();
    assert!(bulk.requests > 0 && bulk.errors == 0 && bulk.mib_per_s > 0.0);

    let r = closed(&args_for(
        addr,
        "/thousand",
        &["--duration", "500ms", "--expect-bytes", "999"],
    ))
    .await
    .unwrap();
    assert_eq!(r.requests, 0, "{r:?}");
    assert!(r.errors > 0, "{r:?}");
    assert_eq!(r.error_samples, ["body 1000 bytes, expected 999"]);

    let r = closed(&args_for(addr, "/elsewhere", &["--duration", "200ms"]))
        .await
        .unwrap();
    assert!(r.requests == 0 && r.errors > 0);
    assert_eq!(r.error_samples, ["status 404"]);
}

#[tokio::test]
async fn a_stalled_request_is_reported_not_dropped() {
    let addr = serve().await;
    let r = closed(&args_for(addr, "/stall", &["--duration", "300ms"]))
        .await
        .unwrap();
    assert_eq!(
        (r.requests, r.errors, r.in_flight_at_end),
        (0, 0, 4),
        "{r:?}"
    );
    let oldest = r.oldest_in_flight_ms.unwrap();
    assert!((290.0..1000.0).contains(&oldest), "{r:?}");
    assert_eq!(r.max_ms, Some(oldest));

    // Past --timeout it is an error, and the worker goes on with a new connection.
    let flags = ["--duration", "500ms", "--timeout", "100ms"];
    let r = closed(&args_for(addr, "/stall", &flags)).await.unwrap();
    assert!(r.errors >= 4, "{r:?}");
    assert_eq!(r.error_samples, ["no answer in 100ms"]);
}

#[tokio::test]
async fn once_counts_the_streamed_body() {
    let addr = serve().await;
    let r = once(&args_for(
        addr,
        "/thousand",
        &["--once", "--expect-bytes", "1000"],
    ))
    .await
    .unwrap();
    assert_eq!((r.bytes, r.errors), (1000, 0), "{r:?}");
    assert!(r.seconds > 0.0 && r.mib_per_s > 0.0);

    let r = once(&args_for(
        addr,
        "/thousand",
        &["--once", "--expect-bytes", "999"],
    ))
    .await
    .unwrap();
    assert_eq!((r.bytes, r.errors), (1000, 1));
    assert_eq!(r.error_samples, ["body 1000 bytes, expected 999"]);

    let r = once(&args_for(addr, "/stall", &["--once", "--timeout", "100ms"]))
        .await
        .unwrap();
    assert_eq!((r.bytes, r.errors), (0, 1));
    assert_eq!(r.error_samples, ["no answer in 100ms"]);
}

#[test]
fn the_json_has_the_fields_the_script_reads() {
    let r = closed_report("http://x/", 1.0, vec![worker(&[], &[], 0, None)], None);
    let json = serde_json::to_value(Report::Closed(r)).unwrap();
    for field in [
        "mode",
        "url",
        "connections",
        "seconds",
        "requests",
        "errors",
        "error_samples",
        "rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
        "in_flight_at_end",
        "oldest_in_flight_ms",
        "mib_per_s",
        "bytes",
        "bulk",
    ] {
        assert!(json.get(field).is_some(), "no {field} in {json}");
    }
    assert_eq!(json["mode"], "closed");
    assert!(json["p50_ms"].is_null() && json["bulk"].is_null());
}
