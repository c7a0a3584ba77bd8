//! Trace context across the mesh: what the app behind the callee's proxy receives.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use quiver_tests::client::send_h1;
use quiver_tests::harness::Pair;

/// GET through the pair with extra headers; the `traceparent` the echo app received.
async fn traceparent_seen(pair: &Pair, headers: &[(&str, &str)]) -> String {
    let addr = pair.http1();
    let mut req = Request::get("/trace").header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (head, _) = send_h1(addr, req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(head.status(), 200);
    head.headers()["x-echo-traceparent"]
        .to_str()
        .unwrap()
        .to_string()
}

fn fields(tp: &str) -> (String, String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp:?}");
    assert_eq!(parts[0], "00", "{tp:?}");
    assert_eq!(parts[1].len(), 32, "{tp:?}");
    assert_eq!(parts[2].len(), 16, "{tp:?}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_continues_the_callers_trace_with_the_proxies_spans_in_between() {
    let pair = Pair::start().await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (trace, parent, flags) =
        fields(&traceparent_seen(&pair, &[("traceparent", incoming)]).await);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(
        parent, "00f067aa0ba902b7",
        "the parent is the callee proxy's server span"
    );
    assert_eq!(flags, "01", "the sampling decision travels");

    // Unsampled stays unsampled.
    let off = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let (_, _, flags) = fields(&traceparent_seen(&pair, &[("traceparent", off)]).await);
    assert_eq!(flags, "00");

    // B3 in, W3C out, same trace (a 64-bit B3 id is left-padded).
    let (trace, _, flags) = fields(
        &traceparent_seen(
            &pair,
            &[
                ("x-b3-traceid", "463ac35c9f6413ad"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-sampled", "1"),
            ],
        )
        .await,
    );
    assert_eq!(trace, "0000000000000000463ac35c9f6413ad");
    assert_eq!(flags, "01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_traceparent_each_request_starts_a_new_trace() {
    let pair = Pair::start().await;
    let (a, _, _) = fields(&traceparent_seen(&pair, &[]).await);
    let (b, _, _) = fields(&traceparent_seen(&pair, &[]).await);
    assert_ne!(a, b);
    assert_ne!(a, "0".repeat(32));
    // A malformed one is ignored (W3C: restart the trace), not passed on.
    let bad = "00-zzzz-00f067aa0ba902b7-01";
    let (c, _, _) = fields(&traceparent_seen(&pair, &[("traceparent", bad)]).await);
    assert_ne!(c, "zzzz");
}
