use http::HeaderMap;
use quiver_api::document::parse_documents;
use quiver_api::resource::AnyResource;

use super::*;
use crate::route::RequestHead;

/// Services `reviews` (one http port 9080, subsets v1 and v2), `reviews-v1`, `reviews-v2`,
/// `multi` (two ports) and `ratings` (grpc).
fn services() -> ServiceSpecs {
    let spec = |ports: &[(&str, u32)], subsets: &[&str]| v1::ServiceSpec {
        ports: ports
            .iter()
            .map(|(name, port)| v1::ServicePort {
                name: (*name).into(),
                port: *port,
                protocol: "http1".into(),
                target_port: 0,
            })
            .collect(),
        subsets: subsets
            .iter()
            .map(|s| v1::Subset {
                name: (*s).into(),
                labels: [("version".to_string(), (*s).to_string())].into(),
            })
            .collect(),
        service_account: String::new(),
    };
    [
        ("reviews", spec(&[("http", 9080)], &["v1", "v2"])),
        ("reviews-v1", spec(&[("http", 9080)], &[])),
        ("reviews-v2", spec(&[("http", 9080)], &[])),
        ("multi", spec(&[("http", 80), ("admin", 81)], &[])),
        ("ratings", spec(&[("grpc", 50051)], &[])),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect()
}

fn doc(yaml: &str) -> AnyResource {
    parse_documents(yaml).unwrap().remove(0)
}

fn route(r: &AnyResource) -> GatewayRoute<'_> {
    match r {
        AnyResource::HttpRoute(h) => GatewayRoute::Http(h),
        AnyResource::GrpcRoute(g) => GatewayRoute::Grpc(g),
        other => panic!("not a Gateway API route: {other:?}"),
    }
}

fn errors(yaml: &str) -> Vec<(String, String)> {
    let r = doc(yaml);
    check(route(&r), &services())
        .into_iter()
        .map(|e| (e.path, e.reason))
        .collect()
}

/// The one error of `yaml`, at `path`, whose reason contains `says`.
fn refused(yaml: &str, path: &str, says: &str) {
    let e = errors(yaml);
    assert!(
        e.iter().any(|(p, r)| p == path && r.contains(says)),
        "expected {path}: ...{says}...; got {e:#?}"
    );
}

fn http(spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: reviews, port: 9080}}]\n{spec}"
    )
}

fn table(yaml: &str, service: &str) -> RouteTable {
    let r = doc(yaml);
    assert_eq!(check(route(&r), &services()), vec![], "{yaml}");
    let spec = route_spec(service, &[route(&r)]);
    let specs = services();
    RouteTable::compile(&spec, "x", &Services::from_specs(&specs, Unknown::Refuse)).unwrap()
}

fn find<'a>(
    t: &'a RouteTable,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<&'a str> {
    find_q(t, method, path, None, headers)
}

fn find_q<'a>(
    t: &'a RouteTable,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &[(&str, &str)],
) -> Option<&'a str> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    t.find(&RequestHead {
        method,
        path,
        query,
        headers: &h,
    })
    .map(|r| r.name())
}

const CANARY: &str = "  rules:
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
";

#[test]
fn a_weighted_split_between_services_becomes_percentages() {
    let r = doc(&http(CANARY));
    let spec = route_spec("reviews", &[route(&r)]);
    assert_eq!(spec.service, "reviews");
    assert_eq!(spec.rules.len(), 1, "{spec:#?}");
    let b = &spec.rules[0].backends;
    assert_eq!(
        b.iter()
            .map(|b| (b.service.as_str(), b.subset.as_str(), b.weight))
            .collect::<Vec<_>>(),
        [("reviews-v1", "", 90), ("reviews-v2", "", 10)]
    );
    assert_eq!(spec.rules[0].name, "httproute/r/0");
    // Another service is not governed by it.
    assert!(route_spec("ratings", &[route(&r)]).rules.is_empty());
}

#[test]
fn subsets_are_named_by_the_quiver_convention() {
    let t = table(
        &http(
            "  rules:
  - backendRefs:
    - {group: quiver.dev, kind: Subset, name: reviews.v1, weight: 3}
    - {group: quiver.dev, kind: Subset, name: reviews.v2, weight: 1}
",
        ),
        "reviews",
    );
    let rule = &t.rules()[0];
    let picked = |roll| rule.pick_backend(roll).unwrap().label();
    assert_eq!(picked(0), "reviews/v1");
    assert_eq!(picked(74), "reviews/v1");
    assert_eq!(picked(75), "reviews/v2");
    assert_eq!(picked(99), "reviews/v2");
    refused(
        &http("  rules:\n  - backendRefs: [{group: quiver.dev, kind: Subset, name: reviews}]\n"),
        "spec.rules[0].backendRefs[0].name",
        "<service>.<subset>",
    );
    refused(
        &http("  rules:\n  - backendRefs: [{group: quiver.dev, kind: Subset, name: reviews.v9}]\n"),
        "spec.rules[0].backendRefs[0].name",
        "unknown subset \"v9\"",
    );
}

#[test]
fn weights_split_in_whole_percent_and_tiny_or_zero_shares_are_handled() {
    assert_eq!(percentages(&[1, 1, 1], 3), [34, 33, 33]);
    assert_eq!(percentages(&[0, 5], 5), [0, 100]);
    assert_eq!(percentages(&[1, 2, 2], 5), [20, 40, 40]);
    assert_eq!(percentages(&[999_999, 1], 1_000_000), [100, 0]);
    refused(
        &http(
            "  rules:\n  - backendRefs: [{name: reviews-v1, weight: 999}, {name: reviews-v2, weight: 1}]\n",
        ),
        "spec.rules[0].backendRefs[1].weight",
        "less than 1%",
    );
    // Every weight 0: Gateway API answers 500.
    let r = doc(&http(
        "  rules:\n  - backendRefs: [{name: reviews-v1, weight: 0}, {name: reviews-v2, weight: 0}]\n",
    ));
    let spec = route_spec("reviews", &[route(&r)]);
    let abort = spec.rules[0]
        .fault
        .as_ref()
        .unwrap()
        .abort
        .as_ref()
        .unwrap();
    assert_eq!((abort.http_status, abort.percent), (500, 100.0));
    assert!(spec.rules[0].backends.is_empty());
    // A weight left out is 1.
    let r = doc(&http(
        "  rules:\n  - backendRefs: [{name: reviews-v1}, {name: reviews-v2, weight: 3}]\n",
    ));
    let w: Vec<u32> = route_spec("reviews", &[route(&r)]).rules[0]
        .backends
        .iter()
        .map(|b| b.weight)
        .collect();
    assert_eq!(w, [25, 75]);
}

#[test]
fn a_path_prefix_matches_whole_segments() {
    let t = table(
        &http(
            "  rules:
  - matches: [{path: {type: PathPrefix, value: /api/}}]
    backendRefs: [{name: reviews-v2}]
  - backendRefs: [{name: reviews-v1}]
",
        ),
        "reviews",
    );
    assert_eq!(find(&t, "GET", "/api", &[]), Some("httproute/r/0.0"));
    assert_eq!(find(&t, "GET", "/api/", &[]), Some("httproute/r/0.1"));
    assert_eq!(find(&t, "GET", "/api/items", &[]), Some("httproute/r/0.1"));
    assert_eq!(find(&t, "GET", "/apix", &[]), Some("httproute/r/1"));
    assert_eq!(find(&t, "GET", "/", &[]), Some("httproute/r/1"));
}

#[test]
fn the_most_specific_match_wins_whatever_the_order_written() {
    let yaml = http(
        "  rules:
  - name: catch-all
    backendRefs: [{name: reviews-v1}]
  - name: api
    matches: [{path: {type: PathPrefix, value: /api}}]
  - name: api-v2
    matches: [{path: {type: PathPrefix, value: /api/v2}}]
  - name: login
    matches: [{path: {type: Exact, value: /api/v2/login}}]
  - name: items
    matches: [{path: {type: RegularExpression, value: '/api/v2/items/[0-9]+'}}]
  - name: beta
    matches: [{path: {type: PathPrefix, value: /api/v2}, headers: [{name: x-beta, value: '1'}]}]
  - name: post
    matches: [{path: {type: PathPrefix, value: /api/v2}, method: POST}]
  - name: query
    matches: [{path: {type: PathPrefix, value: /api/v2}, queryParams: [{name: tier, value: gold}]}]
",
    );
    let t = table(&yaml, "reviews");
    let f = |m, p, h: &[(&str, &str)]| {
        find(&t, m, p, h).map(|n| n.split('.').next().unwrap().to_string())
    };
    assert_eq!(
        f("GET", "/api/v2/login", &[]).as_deref(),
        Some("httproute/r/login")
    );
    assert_eq!(
        f("GET", "/api/v2/items/7", &[]).as_deref(),
        Some("httproute/r/items")
    );
    // Method beats headers, headers beat nothing, at the same prefix.
    assert_eq!(
        f("POST", "/api/v2/x", &[("x-beta", "1")]).as_deref(),
        Some("httproute/r/post")
    );
    assert_eq!(
        f("GET", "/api/v2/x", &[("x-beta", "1")]).as_deref(),
        Some("httproute/r/beta")
    );
    assert_eq!(
        find_q(&t, "GET", "/api/v2/x", Some("tier=gold"), &[])
            .map(|n| n.split('.').next().unwrap()),
        Some("httproute/r/query")
    );
    assert_eq!(
        f("GET", "/api/v2/x", &[]).as_deref(),
        Some("httproute/r/api-v2")
    );
    assert_eq!(f("GET", "/api/v1", &[]).as_deref(), Some("httproute/r/api"));
    assert_eq!(
        f("GET", "/other", &[]).as_deref(),
        Some("httproute/r/catch-all")
    );
}

#[test]
fn across_routes_the_older_wins_a_tie_and_grpc_rules_come_first() {
    let mk = |name: &str, created: &str| {
        let mut r = doc(&http(
            "  rules:\n  - matches: [{path: {type: Exact, value: /x}}]\n",
        ));
        if let AnyResource::HttpRoute(h) = &mut r {
            let m = h.metadata.as_mut().unwrap();
            m.name = name.into();
            m.created_at = created.into();
        }
        r
    };
    let a = mk("zeta", "2026-01-01T00:00:00Z");
    let b = mk("alpha", "2026-06-01T00:00:00Z");
    let c = mk("beta", "2026-06-01T00:00:00Z");
    let spec = route_spec("reviews", &[route(&b), route(&c), route(&a)]);
    let names: Vec<&str> = spec.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["httproute/zeta/0", "httproute/alpha/0", "httproute/beta/0"]
    );

    let g = doc("apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g}
spec:
  parentRefs: [{group: '', kind: Service, name: reviews}]
  rules:
  - matches: [{method: {service: pkg.Reviews}}]
");
    let spec = route_spec("reviews", &[route(&a), route(&g)]);
    assert_eq!(spec.rules[0].name, "grpcroute/g/0");
}

#[test]
fn a_prefix_rewrite_keeps_what_follows_the_matched_segments() {
    let t = table(
        &http(
            "  rules:
  - matches: [{path: {value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: backend.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
  - matches: [{path: {value: /}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /root}}
",
        ),
        "reviews",
    );
    let rewrite = |path: &str| {
        let name = find(&t, "GET", path, &[]).unwrap();
        let rule = t.rules().iter().find(|r| r.name() == name).unwrap();
        rule.rewrite.as_ref().unwrap().path(path).unwrap()
    };
    assert_eq!(rewrite("/api"), "/v2");
    assert_eq!(rewrite("/api/"), "/v2/");
    assert_eq!(rewrite("/api/items/7"), "/v2/items/7");
    assert_eq!(rewrite("/x/y"), "/root/x/y");
    refused(
        &http(
            "  rules:
  - matches: [{path: {type: Exact, value: /a}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]
",
        ),
        "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch",
        "PathPrefix",
    );
}

#[test]
fn filters_carry_over_and_a_scheme_redirect_takes_the_schemes_port() {
    let r = doc(&http(
        "  rules:
  - matches: [{path: {value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 301}
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-env, value: mesh}], remove: [x-debug]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: quiver}]}
    - type: RequestMirror
      requestMirror: {backendRef: {name: reviews-v2, port: 9080}, percent: 25}
    timeouts: {request: 3s, backendRequest: 1s}
    backendRefs: [{name: reviews-v1, port: 9080}]
",
    ));
    assert_eq!(check(route(&r), &services()), vec![]);
    let spec = route_spec("reviews", &[route(&r)]);
    let redirect = spec.rules[0].redirect.as_ref().unwrap();
    assert_eq!(
        (
            redirect.scheme.as_str(),
            redirect.port,
            redirect.status_code
        ),
        ("https", 443, 301)
    );
    let last = spec.rules.last().unwrap();
    assert_eq!(last.request_headers.as_ref().unwrap().remove, ["x-debug"]);
    assert_eq!(
        last.response_headers.as_ref().unwrap().add[0].value,
        "quiver"
    );
    let mirror = last.mirror.as_ref().unwrap();
    assert_eq!(
        (mirror.service.as_str(), mirror.percent),
        ("reviews-v2", 25.0)
    );
    assert_eq!(last.timeout, "3s");
    let retries = last.retries.as_ref().unwrap();
    assert_eq!(
        (retries.attempts, retries.per_try_timeout.as_str()),
        (1, "1s")
    );
}

#[test]
fn grpc_methods_become_paths() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g}
spec:
  parentRefs: [{group: '', kind: Service, name: ratings}]
  rules:
  - name: any
    backendRefs: [{name: ratings}]
  - name: service
    matches: [{method: {service: demo.Ratings}}]
  - name: exact
    matches: [{method: {service: demo.Ratings, method: Rate}}]
  - name: method
    matches: [{method: {method: Health}}]
  - name: regex
    matches: [{method: {type: RegularExpression, service: 'demo\\.Rat.*', method: 'Get.*'}}]
  - name: header
    matches: [{method: {service: demo.Ratings}, headers: [{name: x-tier, value: gold}]}]
";
    let t = table(yaml, "ratings");
    assert_eq!(
        find(&t, "POST", "/demo.Ratings/Rate", &[]),
        Some("grpcroute/g/exact")
    );
    assert_eq!(
        find(&t, "POST", "/demo.Ratings/List", &[("x-tier", "gold")]),
        Some("grpcroute/g/header")
    );
    assert_eq!(
        find(&t, "POST", "/demo.Ratings/List", &[]),
        Some("grpcroute/g/service")
    );
    assert_eq!(
        find(&t, "POST", "/other.Svc/Health", &[]),
        Some("grpcroute/g/method")
    );
    assert_eq!(
        find(&t, "POST", "/other.Svc/Other", &[]),
        Some("grpcroute/g/any")
    );
    refused(
        &yaml.replace("method: {method: Health}", "method: {method: 'Bad/Name'}"),
        "spec.rules[3].matches[0].method.method",
        "not a gRPC method name",
    );
    refused(
        &yaml.replace("method: {method: Health}", "method: {}"),
        "spec.rules[3].matches[0].method",
        "set service, method or both",
    );
}

#[test]
fn what_quiver_cannot_honour_is_refused_by_name() {
    let base = http(CANARY);
    refused(
        &base.replace(
            "{group: \"\", kind: Service, name: reviews, port: 9080}",
            "{name: my-gateway}",
        ),
        "spec.parentRefs[0].group",
        "Gateway",
    );
    refused(
        &base.replace(
            "kind: Service, name: reviews",
            "kind: Service, namespace: other, name: reviews",
        ),
        "spec.parentRefs[0].namespace",
        "consumer routes",
    );
    refused(
        &base.replace("name: reviews, port: 9080", "name: nope"),
        "spec.parentRefs[0].name",
        "unknown service \"nope\"",
    );
    refused(
        &base.replace("name: reviews, port: 9080", "name: multi, port: 80"),
        "spec.parentRefs[0].port",
        "has 2 ports",
    );
    refused(
        &base.replace("name: reviews, port: 9080", "name: reviews, port: 81"),
        "spec.parentRefs[0].port",
        "no port 81",
    );
    refused(
        &base.replace("  rules:", "  hostnames: [reviews.example.com]\n  rules:"),
        "spec.hostnames",
        "not supported",
    );
    refused(
        &base.replace(
            "{name: reviews-v2, port: 9080, weight: 10}",
            "{name: reviews-v2, namespace: prod, weight: 10}",
        ),
        "spec.rules[0].backendRefs[1].namespace",
        "ReferenceGrant",
    );
    refused(
        &base.replace(
            "{name: reviews-v2, port: 9080, weight: 10}",
            "{name: reviews-v2, port: 9999, weight: 10}",
        ),
        "spec.rules[0].backendRefs[1].port",
        "no port 9999",
    );
    refused(
        &base.replace(
            "{name: reviews-v2, port: 9080, weight: 10}",
            "{group: example.com, kind: Bucket, name: b, weight: 10}",
        ),
        "spec.rules[0].backendRefs[1].kind",
        "not supported",
    );
    let filters = |f: &str| http(&format!("  rules:\n  - filters: {f}\n"));
    refused(
        &filters(
            "[{type: RequestMirror, requestMirror: {backendRef: {name: reviews-v1}}}, {type: RequestMirror, requestMirror: {backendRef: {name: reviews-v2}}}]",
        ),
        "spec.rules[0].filters[1].type",
        "one backend per rule",
    );
    refused(
        &filters("[{type: CORS}]"),
        "spec.rules[0].filters[0].type",
        "\"CORS\" is not supported",
    );
    refused(
        &filters("[{type: RequestHeaderModifier}]"),
        "spec.rules[0].filters[0].requestHeaderModifier",
        "required",
    );
    refused(
        &filters(
            "[{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: y}]}, responseHeaderModifier: {}}]",
        ),
        "spec.rules[0].filters[0].responseHeaderModifier",
        "set only the field",
    );
    refused(
        &filters(
            "[{type: RequestMirror, requestMirror: {backendRef: {name: reviews-v1}, percent: 0}}]",
        ),
        "spec.rules[0].filters[0].requestMirror.percent",
        "mirrors nothing",
    );
    refused(
        &http("  rules:\n  - timeouts: {request: 0s}\n"),
        "spec.rules[0].timeouts.request",
        "no timeout",
    );
    refused(
        &http("  rules:\n  - timeouts: {request: 1s, backendRequest: 2s}\n"),
        "spec.rules[0].timeouts.backendRequest",
        "longer than timeouts.request",
    );
    refused(
        &http("  rules:\n  - timeouts: {request: soon}\n"),
        "spec.rules[0].timeouts.request",
        "not a duration",
    );
    refused(
        &http(
            "  rules:\n  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]\n    backendRefs: [{name: reviews-v1}]\n",
        ),
        "spec.rules[0].backendRefs",
        "answers the request itself",
    );
    // The route compiler's errors come back with the document's paths.
    refused(
        &http("  rules:\n  - matches: [{path: {type: RegularExpression, value: '/items/[0-9'}}]\n"),
        "spec.rules[0].matches[0].path.value",
        "regex does not compile",
    );
    refused(
        &http("  rules:\n  - matches: [{headers: [{name: 'bad header', value: x}]}]\n"),
        "spec.rules[0].matches[0].headers[0].name",
        "not a valid header name",
    );
    refused(
        &http("  rules:\n  - matches: [{method: FETCH}]\n"),
        "spec.rules[0].matches[0].method",
        "not an HTTP method",
    );
    refused(
        &http("  rules:\n  - matches: [{path: {type: Exact, value: items}}]\n"),
        "spec.rules[0].matches[0].path.value",
        "must start with '/'",
    );
    refused(
        &http("  rules:\n  - backendRefs: [{name: ghost}]\n"),
        "spec.rules[0].backendRefs[0].name",
        "unknown service \"ghost\"",
    );
    refused(
        &filters(
            "[{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: \"a\\nb\"}]}}]",
        ),
        "spec.rules[0].filters[0].requestHeaderModifier.set[0].value",
        "not a valid header value",
    );
}

#[test]
fn documents_refuse_unsupported_fields_by_name_and_round_trip() {
    let e = parse_documents(&http("  rules:\n  - retry: {codes: [503], attempts: 2}\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec.rules[0].retry: not supported"), "{e}");
    let e = parse_documents(&http(
        "  rules:\n  - backendRefs: [{name: a, filters: [{type: RequestHeaderModifier}]}]\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("spec.rules[0].backendRefs[0].filters: not supported"),
        "{e}"
    );
    let e = parse_documents(&http(CANARY).replace("gateway.networking.k8s.io/v1", "quiver.dev/v1"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("apiVersion: must be \"gateway.networking.k8s.io/v1\""),
        "{e}"
    );
    // v1beta1 is the same shape; rendering says v1.
    let beta = doc(&http(CANARY).replace("/v1\n", "/v1beta1\n"));
    assert_eq!(beta, doc(&http(CANARY)));

    // `group: ""` and `weight: 0` survive canonicalizing and rendering (absent would mean
    // a Gateway parent and weight 1).
    let r = doc(&http(
        "  rules:\n  - backendRefs: [{name: reviews-v1, weight: 0}, {name: reviews-v2}]\n",
    ));
    let AnyResource::HttpRoute(h) = &r else {
        panic!()
    };
    let canonical = quiver_api::document::canonicalize(h).unwrap();
    assert_eq!(&canonical, h);
    let yaml = quiver_api::document::to_yaml(std::slice::from_ref(&r)).unwrap();
    assert!(
        yaml.starts_with("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"),
        "{yaml}"
    );
    assert!(yaml.contains("group: ''"), "{yaml}");
    assert!(yaml.contains("weight: 0"), "{yaml}");
    assert_eq!(parse_documents(&yaml).unwrap(), vec![r]);
}

#[test]
fn a_catch_all_written_first_serves_what_nothing_more_specific_matches() {
    let t = table(
        &http(
            "  rules:
  - backendRefs: [{name: reviews-v1, weight: 80}, {name: reviews-v2, weight: 20}]
  - matches: [{headers: [{name: x-user, value: jason}]}]
    backendRefs: [{name: reviews-v2}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}}]
",
        ),
        "reviews",
    );
    assert_eq!(find(&t, "GET", "/items/0", &[]), Some("httproute/r/0"));
    assert_eq!(
        find(&t, "GET", "/items/0", &[("x-user", "jason")]),
        Some("httproute/r/1")
    );
    assert_eq!(
        find(&t, "GET", "/old/x", &[("x-user", "jason")]),
        Some("httproute/r/2.1")
    );
}

#[test]
fn a_running_canary_owns_the_split_of_its_services_route() {
    let mut c = v1::Canary {
        metadata: Some(v1::ObjectMeta {
            name: "reviews-v2".into(),
            ..Default::default()
        }),
        spec: Some(v1::CanarySpec {
            service: "reviews".into(),
            stable_subset: "v1".into(),
            canary_subset: "v2".into(),
            steps: vec![25, 100],
            interval: "1m".into(),
            ..Default::default()
        }),
        status: None,
    };
    let route: v1::Route = match doc("apiVersion: quiver.dev/v1
kind: Route
metadata: {name: reviews}
spec:
  service: reviews
  rules:
  - name: testers
    match: {headers: [{name: x-user, exact: jason}]}
    backends: [{subset: v2, weight: 100}]
  - name: other-service
    match: {path: {prefix: /legacy/}}
    backends: [{service: reviews-v1, weight: 100}]
  - name: split
    backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
  - name: all
")
    {
        AnyResource::Route(r) => r,
        _ => unreachable!(),
    };
    let weights = |routes: &[v1::Route]| -> Vec<Vec<(String, u32)>> {
        routes[0]
            .spec
            .as_ref()
            .unwrap()
            .rules
            .iter()
            .map(|r| {
                r.backends
                    .iter()
                    .map(|b| (format!("{}/{}", b.service, b.subset), b.weight))
                    .collect()
            })
            .collect()
    };
    // Not started: the Route as written.
    let out = governing_routes("default", &[&route], &[], &[], &[&c]);
    assert_eq!(out, vec![route.clone()]);
    c.status = Some(v1::CanaryStatus {
        phase: "Progressing".into(),
        canary_weight: 25,
        ..Default::default()
    });
    let out = governing_routes("default", &[&route], &[], &[], &[&c]);
    let split = vec![("/v1".to_string(), 75), ("/v2".to_string(), 25)];
    assert_eq!(
        weights(&out),
        vec![
            vec![("/v2".to_string(), 100)],
            vec![("reviews-v1/".to_string(), 100)],
            split.clone(),
            split.clone(),
        ],
        "the tester rule sends only to v2 and is the canary's split; only rules that send to the \
         service as a whole or to the stable/canary subsets take the canary's weights"
    );
    // Without a Route, the canary brings one.
    let out = governing_routes("default", &[], &[], &[], &[&c]);
    assert_eq!(out[0].metadata.as_ref().unwrap().name, "canary/reviews-v2");
    assert_eq!(weights(&out), vec![split]);
    // Rolled back: all to stable.
    c.status.as_mut().unwrap().phase = "RolledBack".into();
    c.status.as_mut().unwrap().canary_weight = 0;
    let out = governing_routes("default", &[], &[], &[], &[&c]);
    assert_eq!(
        weights(&out),
        vec![vec![("/v1".to_string(), 100), ("/v2".to_string(), 0)]]
    );
    // And the result compiles as a proxy compiles it.
    let specs = services();
    let spec = out[0].spec.clone().unwrap();
    RouteTable::compile(&spec, "x", &Services::from_specs(&specs, Unknown::Refuse)).unwrap();
}
