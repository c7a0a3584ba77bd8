//! The OTLP mapping and the flag parsers, without sockets.

use super::*;

fn record() -> SpanRecord {
    SpanRecord {
        trace_id: "4bf92f3577b34da6a3ce929000000001".into(),
        span_id: "a000000000000002".into(),
        parent_span_id: "a000000000000001".into(),
        kind: "CLIENT".into(),
        namespace: "shop".into(),
        service: "catalog".into(),
        peer_service: "ratings".into(),
        peer_identity: "spiffe://mesh.local/ns/shop/sa/ratings".into(),
        name: "GET /items".into(),
        route: "default".into(),
        start_ns: 1_700_000_000_123_456_789,
        duration_ns: 5_000_001,
        status_code: 503,
        error: String::new(),
        is_error: true,
        attempt: 2,
        request_bytes: 0,
        response_bytes: 20,
        quic_connection_id: "0a0b".into(),
        endpoint: "[::1]:15443".into(),
        reporter: "spiffe://mesh.local/ns/shop/sa/catalog".into(),
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

#[test]
fn maps_ids_times_kind_status_and_attributes() {
    let span = to_otlp(&record()).unwrap();
    assert_eq!(span.trace_id.len(), 16);
    assert_eq!(span.trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
    assert_eq!(span.parent_span_id, [0xa0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(span.kind, span::SpanKind::Client as i32);
    assert_eq!(span.start_time_unix_nano, 1_700_000_000_123_456_789);
    assert_eq!(span.end_time_unix_nano, 1_700_000_000_128_456_790);
    let status = span.status.as_ref().unwrap();
    assert_eq!(status.code, status::StatusCode::Error as i32);
    let s = |v: &str| any_value::Value::StringValue(v.into());
    assert_eq!(attr(&span, "http.request.method"), Some(&s("GET")));
    assert_eq!(attr(&span, "url.path"), Some(&s("/items")));
    assert_eq!(attr(&span, "server.address"), Some(&s("::1")));
    assert_eq!(
        attr(&span, "server.port"),
        Some(&any_value::Value::IntValue(15443))
    );
    assert_eq!(attr(&span, "error.type"), Some(&s("503")));
    assert_eq!(
        attr(&span, "quiver.attempt"),
        Some(&any_value::Value::IntValue(2))
    );
    assert_eq!(attr(&span, "http.request.body.size"), None);
}

#[test]
fn groups_by_service_into_resources() {
    let mut other = record();
    other.service = "frontend".into();
    other.span_id = "a000000000000009".into();
    let out = resource_spans(vec![record(), other, record()]);
    assert_eq!(out.len(), 2);
    let names: Vec<_> = out
        .iter()
        .map(|r| r.resource.as_ref().unwrap().attributes[0].clone())
        .map(|kv| kv.value.unwrap().value.unwrap())
        .collect();
    assert_eq!(
        names,
        [
            any_value::Value::StringValue("catalog".into()),
            any_value::Value::StringValue("frontend".into())
        ]
    );
    assert_eq!(out[0].scope_spans[0].spans.len(), 2);
}

#[test]
fn endpoint_and_header_flags() {
    assert!("http://127.0.0.1:4317".parse::<OtlpEndpoint>().is_ok());
    assert!(
        "https://tempo.example.com"
            .parse::<OtlpEndpoint>()
            .unwrap()
            .is_tls()
    );
    for bad in [
        "127.0.0.1:4317",
        "ftp://x:4317",
        "http://collector",
        "http://c:4317/v1/traces",
        "http://u:p@c:4317",
    ] {
        assert!(bad.parse::<OtlpEndpoint>().is_err(), "{bad}");
    }
    assert_eq!(
        "X-Tenant=shop".parse::<OtlpHeader>().unwrap().name(),
        "x-tenant"
    );
    assert!("novalue".parse::<OtlpHeader>().is_err());
    assert!("a b=c".parse::<OtlpHeader>().is_err());
    assert!(retryable(tonic::Code::Unavailable));
    assert!(!retryable(tonic::Code::InvalidArgument));
}
