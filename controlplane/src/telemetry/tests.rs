use quiver_api::v1;

use super::*;

fn caller() -> Caller {
    Caller {
        namespace: "shop".into(),
        service_account: "web".into(),
        spiffe_id: "spiffe://mesh.local/ns/shop/sa/web".into(),
    }
}

const NOW: i64 = 1_800_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;

fn span() -> v1::Span {
    v1::Span {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        kind: "CLIENT".into(),
        namespace: "elsewhere".into(),
        service: "web".into(),
        name: "GET /".into(),
        start_unix_nanos: NOW - 1_000_000,
        duration_nanos: 500_000,
        status_code: 200,
        ..Default::default()
    }
}

#[test]
fn spans_are_checked_field_by_field() {
    let ok = check_span(span(), &caller(), NOW).unwrap();
    assert_eq!(ok.namespace, "shop", "namespace from the certificate");
    assert_eq!(ok.reporter, "spiffe://mesh.local/ns/shop/sa/web");
    assert!(!ok.is_error);
    type Spoil = Box<dyn Fn(&mut v1::Span)>;
    let cases: Vec<(Spoil, Refusal)> = vec![
        (
            Box::new(|s| s.trace_id = "4BF92F3577B34DA6A3CE929D0E0E4736".into()),
            Refusal::TraceId,
        ),
        (Box::new(|s| s.trace_id = "0".repeat(32)), Refusal::TraceId),
        (Box::new(|s| s.trace_id = "abc".into()), Refusal::TraceId),
        (
            Box::new(|s| s.span_id = "00f067aa0ba902b".into()),
            Refusal::SpanId,
        ),
        (
            Box::new(|s| s.parent_span_id = "xyz".into()),
            Refusal::ParentSpanId,
        ),
        (Box::new(|s| s.kind = "INTERNAL".into()), Refusal::Kind),
        (Box::new(|s| s.service = String::new()), Refusal::Service),
        (Box::new(|s| s.name = "x".repeat(2000)), Refusal::TooLong),
        (Box::new(|s| s.start_unix_nanos = 0), Refusal::Time),
        (
            Box::new(|s| s.start_unix_nanos = NOW + 3_600_000_000_000),
            Refusal::Time,
        ),
        (Box::new(|s| s.duration_nanos = -1), Refusal::Duration),
        (Box::new(|s| s.status_code = 1000), Refusal::StatusCode),
    ];
    for (i, (spoil, why)) in cases.iter().enumerate() {
        let mut s = span();
        spoil(&mut s);
        assert_eq!(check_span(s, &caller(), NOW), Err(*why), "case {i}");
    }
    let mut failed = span();
    failed.status_code = 503;
    assert!(check_span(failed, &caller(), NOW).unwrap().is_error);
    let mut proxy_made = span();
    proxy_made.error = "upstream_connect".into();
    assert!(check_span(proxy_made, &caller(), NOW).unwrap().is_error);
}

fn edge(requests: u64, errors: u64, buckets: Vec<u64>) -> v1::EdgeStats {
    v1::EdgeStats {
        source_namespace: "elsewhere".into(),
        source_service: "web".into(),
        destination_service: "reviews".into(),
        destination_subset: String::new(),
        requests,
        errors,
        latency_buckets: buckets,
        interval_start_unix_nanos: NOW - 10_000_000_000,
        interval_end_unix_nanos: NOW,
    }
}

fn buckets(pairs: &[(usize, u64)]) -> Vec<u64> {
    let mut b = vec![0; LATENCY_BUCKETS];
    for (i, n) in pairs {
        b[*i] = *n;
    }
    b
}

#[test]
fn edges_must_account_for_every_request() {
    let ok = check_edge(edge(10, 1, buckets(&[(3, 10)])), &caller()).unwrap();
    assert_eq!(ok.namespace, "shop");
    assert_eq!(
        check_edge(edge(10, 11, buckets(&[(3, 10)])), &caller()),
        Err(Refusal::Counts)
    );
    assert_eq!(
        check_edge(edge(10, 0, buckets(&[(3, 9)])), &caller()),
        Err(Refusal::Buckets)
    );
    assert_eq!(
        check_edge(edge(10, 0, vec![10]), &caller()),
        Err(Refusal::Buckets)
    );
    assert_eq!(
        check_edge(
            edge(1, 0, vec![u64::MAX, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            &caller()
        ),
        Err(Refusal::Buckets),
        "an overflowing sum is refused, not wrapped"
    );
    let mut backwards = edge(0, 0, vec![]);
    backwards.interval_end_unix_nanos = backwards.interval_start_unix_nanos - 1;
    assert_eq!(check_edge(backwards, &caller()), Err(Refusal::Time));
    let empty = check_edge(edge(0, 0, vec![]), &caller()).unwrap();
    assert_eq!(empty.latency_buckets, vec![0; LATENCY_BUCKETS]);
}

#[test]
fn quantiles_interpolate_inside_the_bucket() {
    // 100 requests all in (10, 25] ms: p50 is halfway, p99 near the top.
    let b = buckets(&[(4, 100)]);
    assert!((quantile_ms(&b, 0.5) - 17.5).abs() < 1e-9);
    assert!((quantile_ms(&b, 0.99) - 24.85).abs() < 1e-9);
    // 90 in (0, 1] and 10 in (100, 250]: p50 = 0.5*100/90 ms; p99 = 100 + 150 * 9/10.
    let b = buckets(&[(0, 90), (7, 10)]);
    assert!((quantile_ms(&b, 0.5) - 50.0 / 90.0).abs() < 1e-9);
    assert!((quantile_ms(&b, 0.99) - 235.0).abs() < 1e-9);
    // A rank in +Inf answers the highest finite bound.
    assert_eq!(quantile_ms(&buckets(&[(13, 5)]), 0.5), 10_000.0);
    assert_eq!(quantile_ms(&[], 0.99), 0.0);
    assert_eq!(quantile_ms(&buckets(&[]), 0.5), 0.0);
}

#[test]
fn graph_sums_intervals_and_divides_by_the_window() {
    let c = caller();
    let e1 = check_edge(edge(100, 10, buckets(&[(4, 100)])), &c).unwrap();
    let e2 = check_edge(edge(200, 0, buckets(&[(4, 200)])), &c).unwrap();
    // Both intervals started before the window: seen throughout, divided by all 60 s.
    let (mut e1, mut e2) = (e1, e2);
    e1.interval_start_ns = NOW - 70 * SEC;
    e2.interval_start_ns = NOW - 65 * SEC;
    let window = Window {
        start_ns: NOW - 60 * SEC,
        end_ns: NOW,
    };
    let g = service_graph(&[e1, e2], window, "1m".into());
    assert_eq!(g.edges.len(), 1);
    let edge = &g.edges[0];
    assert!((edge.request_rate - 5.0).abs() < 1e-9);
    assert!((edge.error_rate - 10.0 / 300.0).abs() < 1e-9);
    assert!((edge.p50_ms - 17.5).abs() < 1e-9);
    let names: Vec<&str> = g.nodes.iter().map(|n| n.service.as_str()).collect();
    assert_eq!(names, ["reviews", "web"]);
    assert_eq!(g.nodes[1].request_rate, 0.0, "web is only a caller");
    assert!((g.nodes[0].request_rate - 5.0).abs() < 1e-9);
}

#[test]
fn a_young_edge_is_divided_by_the_time_it_was_seen_not_the_whole_window() {
    let c = caller();
    // Reported for the last 10 s only, in a 5 m window: 150 requests are 15/s, not 0.5/s.
    let e = check_edge(edge(150, 0, buckets(&[(4, 150)])), &c).unwrap();
    let window = Window {
        start_ns: NOW - 300 * SEC,
        end_ns: NOW,
    };
    let g = service_graph(&[e], window, "5m".into());
    assert!(
        (g.edges[0].request_rate - 15.0).abs() < 1e-9,
        "{:?}",
        g.edges[0]
    );
    assert!(
        (g.nodes[0].request_rate - 15.0).abs() < 1e-9,
        "{:?}",
        g.nodes[0]
    );
}
