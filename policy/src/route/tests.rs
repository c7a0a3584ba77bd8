use http::HeaderValue;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::services::Unknown;

fn subsets() -> Vec<crate::Subset> {
    let s = |name: &str, version: &str| crate::Subset {
        name: name.into(),
        labels: [("version".to_string(), version.to_string())].into(),
    };
    vec![s("v1", "v1"), s("v2", "v2")]
}

fn compile(yaml: &str) -> Result<RouteTable, Vec<FieldError>> {
    let route: v1::RouteSpec = serde_yaml::from_str(yaml).unwrap();
    let subsets = subsets();
    let services = Services::new([("reviews", subsets.as_slice())], Unknown::Refuse);
    RouteTable::compile(&route, "routes[0]", &services)
}

fn table(yaml: &str) -> RouteTable {
    compile(yaml).unwrap()
}

fn errors(yaml: &str) -> Vec<(String, String)> {
    compile(yaml)
        .unwrap_err()
        .into_iter()
        .map(|e| (e.path, e.reason))
        .collect()
}

fn find<'a>(
    t: &'a RouteTable,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<&'a str> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    t.find(&RequestHead {
        method,
        path,
        query: None,
        headers: &h,
    })
    .map(|r| r.name())
}

const ORDERED: &str = r#"
service: reviews
rules:
  - name: tester
    match:
      headers: [{name: x-user, exact: tester}]
    backends: [{subset: v2, weight: 100}]
  - name: api-exact
    match: {path: {exact: /api}}
  - name: api-prefix
    match: {path: {prefix: /api/}, methods: [GET, HEAD]}
  - name: items
    match: {path: {regex: "/items/[0-9]+"}}
  - name: canary-header
    match:
      headers:
        - {name: x-canary, regex: "yes|true"}
        - {name: x-trace, present: true}
  - name: rest
"#;

#[test]
fn first_match_wins_in_order() {
    let t = table(ORDERED);
    // Matches both `tester` and `api-exact`: the earlier rule wins.
    assert_eq!(
        find(&t, "GET", "/api", &[("x-user", "tester")]),
        Some("tester")
    );
    assert_eq!(find(&t, "GET", "/api", &[]), Some("api-exact"));
    assert_eq!(find(&t, "GET", "/api/x", &[]), Some("api-prefix"));
    assert_eq!(find(&t, "HEAD", "/api/x", &[]), Some("api-prefix"));
    // Method not listed: falls through to the catch-all.
    assert_eq!(find(&t, "POST", "/api/x", &[]), Some("rest"));
    assert_eq!(find(&t, "get", "/api/x", &[]), Some("rest"));
}

#[test]
fn path_kinds() {
    let t = table(ORDERED);
    assert_eq!(find(&t, "GET", "/api/", &[]), Some("api-prefix"));
    assert_eq!(find(&t, "GET", "/apix", &[]), Some("rest"));
    assert_eq!(
        find(&t, "GET", "/api?x", &[]),
        Some("rest"),
        "exact is exact"
    );
    assert_eq!(find(&t, "GET", "/items/42", &[]), Some("items"));
}

#[test]
fn regexes_are_anchored_to_the_whole_value() {
    let t = table(ORDERED);
    assert_eq!(find(&t, "GET", "/items/42/x", &[]), Some("rest"));
    assert_eq!(find(&t, "GET", "/v1/items/42", &[]), Some("rest"));
    assert_eq!(find(&t, "GET", "/items/", &[]), Some("rest"));
    // The alternation is anchored as a whole, not just its first branch.
    let both = [("x-canary", "true"), ("x-trace", "")];
    assert_eq!(find(&t, "GET", "/", &both), Some("canary-header"));
    let sub = [("x-canary", "notrue"), ("x-trace", "1")];
    assert_eq!(find(&t, "GET", "/", &sub), Some("rest"));
    let yes_ = [("x-canary", "yes!"), ("x-trace", "1")];
    assert_eq!(find(&t, "GET", "/", &yes_), Some("rest"));
}

#[test]
fn header_conditions_all_hold_and_names_are_case_insensitive() {
    let t = table(ORDERED);
    assert_eq!(
        find(&t, "GET", "/", &[("x-canary", "yes")]),
        Some("rest"),
        "x-trace missing"
    );
    assert_eq!(
        find(&t, "GET", "/", &[("X-Canary", "yes"), ("X-TRACE", "a")]),
        Some("canary-header")
    );
    // Exact values are case-sensitive.
    assert_eq!(find(&t, "GET", "/", &[("x-user", "Tester")]), Some("rest"));
    // Any one of several values may match.
    assert_eq!(
        find(&t, "GET", "/", &[("x-user", "alice"), ("x-user", "tester")]),
        Some("tester")
    );
}

#[test]
fn no_match_is_none() {
    let t = table("service: reviews\nrules:\n  - name: only\n    match: {path: {exact: /x}}\n");
    assert_eq!(find(&t, "GET", "/y", &[]), None);
    // A route without rules would match nothing: refused, as the API refuses it.
    assert_eq!(
        errors("service: reviews\n"),
        [(
            "routes[0].rules".to_string(),
            "at least one rule is required".to_string()
        )]
    );
    let default = RouteTable::default_for("reviews");
    assert_eq!(find(&default, "GET", "/anything", &[]), Some("default"));
}

const SPLIT: &str = r#"
service: reviews
rules:
  - name: split
    backends:
      - {subset: v1, weight: 80}
      - {subset: v2, weight: 20}
"#;

#[test]
fn weighted_pick_is_exact_per_roll() {
    let t = table(SPLIT);
    let rule = &t.rules()[0];
    let subset = |roll| rule.pick_backend(roll).unwrap().subset.clone();
    assert_eq!(subset(0), "v1");
    assert_eq!(subset(79), "v1");
    assert_eq!(subset(80), "v2");
    assert_eq!(subset(99), "v2");
    assert_eq!(subset(100), "v1", "rolls are taken modulo 100");
    let b = rule.pick_backend(85).unwrap();
    assert_eq!(b.service, "reviews");
    assert_eq!(b.selector.get("version").map(String::as_str), Some("v2"));
    assert_eq!(b.label(), "reviews/v2");
}

#[test]
fn eighty_twenty_holds_within_one_point_over_ten_thousand() {
    let t = table(SPLIT);
    let rule = &t.rules()[0];
    let mut rng = StdRng::seed_from_u64(42);
    let n = 10_000;
    let v2 = (0..n)
        .filter(|_| rule.pick_backend(rng.random_range(0..100)).unwrap().subset == "v2")
        .count();
    let share = v2 as f64 * 100.0 / n as f64;
    assert!((share - 20.0).abs() < 1.0, "v2 got {share}%");
}

#[test]
fn zero_weight_is_never_picked_and_default_backend_is_the_service() {
    let t = table(
        "service: reviews\nrules:\n  - name: r\n    backends: [{subset: v1, weight: 0}, {subset: v2, weight: 100}]\n  - name: d\n",
    );
    assert!((0..100).all(|r| t.rules()[0].pick_backend(r).unwrap().subset == "v2"));
    let d = t.rules()[1].pick_backend(3).unwrap();
    assert_eq!(
        (d.service.as_str(), d.subset.as_str(), d.selector.len()),
        ("reviews", "", 0)
    );
}

#[test]
fn compile_errors_name_their_fields() {
    let e = errors(
        r#"
service: reviews
rules:
  - name: a
    match:
      path: {regex: "(unclosed"}
      methods: ["GE T"]
      headers: [{name: "bad name", exact: x}, {name: x-a}, {name: x-b, regex: "[", present: true}]
    backends: [{subset: v9, weight: 50}, {weight: 40}]
  - name: a
    match: {path: {exact: nope, prefix: /x}}
    retries: {attempts: 0, budgetPercent: 120}
    mirror: {subset: v7, percent: 10}
"#,
    );
    let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "routes[0].rules[0].match.path.regex",
            "routes[0].rules[0].match.methods[0]",
            "routes[0].rules[0].match.headers[0].name",
            "routes[0].rules[0].match.headers[1]",
            "routes[0].rules[0].match.headers[2]",
            "routes[0].rules[0].match.headers[2].regex",
            "routes[0].rules[0].backends[0].subset",
            "routes[0].rules[0].backends",
            "routes[0].rules[1].name",
            "routes[0].rules[1].match.path",
            "routes[0].rules[1].match.path.exact",
            "routes[0].rules[1].retries.attempts",
            "routes[0].rules[1].retries.budgetPercent",
            "routes[0].rules[1].mirror.subset",
        ]
    );
    assert!(e[0].1.contains("regex does not compile"), "{:?}", e[0]);
    assert_eq!(e[7].1, "weights sum to 90, must sum to 100");
    assert_eq!(e[8].1, "duplicate name \"a\"");
    assert_eq!(
        e[6].1,
        "unknown subset \"v9\" of service \"reviews\" (it has: v1, v2)"
    );
}

#[test]
fn a_held_rule_survives_a_table_swap() {
    let mut current = Arc::new(table(SPLIT));
    let held = current.rules()[0].clone();
    current = Arc::new(table(
        "service: reviews\nrules:\n  - name: split\n    backends: [{subset: v2, weight: 100}]\n",
    ));
    // The in-flight request still sees the 80/20 rule it matched; new ones see 0/100.
    assert_eq!(held.pick_backend(0).unwrap().subset, "v1");
    assert_eq!(current.rules()[0].pick_backend(0).unwrap().subset, "v2");
}

#[test]
fn query_params_all_must_hold_on_the_first_decoded_value() {
    let t = table(
        r#"
service: reviews
rules:
  - name: gold
    match:
      queryParams:
        - {name: tier, exact: gold plus}
        - {name: debug, present: true}
  - name: numbered
    match: {queryParams: [{name: id, regex: "[0-9]+"}]}
  - name: rest
"#,
    );
    let h = HeaderMap::new();
    let q = |uri: &'static str| {
        let (path, query) = uri
            .split_once('?')
            .map_or((uri, None), |(p, q)| (p, Some(q)));
        t.find(&RequestHead {
            method: "GET",
            path,
            query,
            headers: &h,
        })
        .map(|r| r.name())
    };
    assert_eq!(q("/?tier=gold%20plus&debug"), Some("gold"));
    assert_eq!(
        q("/?debug=0&tier=gold+plus"),
        Some("rest"),
        "'+' is not a space"
    );
    assert_eq!(
        q("/?tier=gold%20plus"),
        Some("rest"),
        "debug must be present too"
    );
    assert_eq!(
        q("/?tier=silver&tier=gold%20plus&debug"),
        Some("rest"),
        "a repeated parameter is judged by its first value"
    );
    assert_eq!(
        q("/?Tier=gold%20plus&debug"),
        Some("rest"),
        "names are case-sensitive"
    );
    assert_eq!(q("/?id=42"), Some("numbered"));
    assert_eq!(q("/?id=42x"), Some("rest"), "regexes are anchored");
    assert_eq!(q("/"), Some("rest"));
}

#[test]
fn query_param_conditions_are_refused_by_field() {
    let e = errors(
        r#"
service: reviews
rules:
  - name: a
    match:
      queryParams:
        - {exact: x}
        - {name: "a&b", present: true}
        - {name: c, exact: x, present: true}
        - {name: d, regex: "("}
"#,
    );
    let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[0].rules[0].match.queryParams[0].name",
            "routes[0].rules[0].match.queryParams[1].name",
            "routes[0].rules[0].match.queryParams[2]",
            "routes[0].rules[0].match.queryParams[3].regex",
        ],
        "{e:#?}"
    );
    assert_eq!(e[0].1, "required");
    assert!(
        e[2].1.contains("exactly one of exact, regex, present"),
        "{e:?}"
    );
}

#[test]
fn a_redirect_stands_alone_and_its_prefix_needs_a_prefix_match() {
    let e = errors(
        r#"
service: reviews
rules:
  - name: moved
    match: {path: {exact: /old}}
    redirect: {path: {replacePrefixMatch: /new}}
    backends: [{subset: v1, weight: 100}]
    rewrite: {hostname: x}
    timeout: 1s
"#,
    );
    let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[0].rules[0].redirect.path.replacePrefixMatch",
            "routes[0].rules[0].backends",
            "routes[0].rules[0].rewrite",
            "routes[0].rules[0].timeout",
        ],
        "{e:#?}"
    );
    assert!(
        e[1].1
            .starts_with("backends and redirect cannot both be set"),
        "{e:?}"
    );
    let t = table(
        r#"
service: reviews
rules:
  - name: moved
    match: {path: {prefix: /old/}}
    redirect: {scheme: https, path: {replacePrefixMatch: /new/}, statusCode: 301}
    responseHeaders: {set: [{name: cache-control, value: no-store}]}
"#,
    );
    let rule = &t.rules()[0];
    let r = rule.redirect.as_ref().unwrap();
    assert_eq!(r.status, 301);
    let from = crate::filters::RedirectFrom {
        scheme: "http",
        authority: "reviews:9080",
        path: "/old/a",
        query: None,
    };
    assert_eq!(r.location(&from), "https://reviews/new/a");
    assert!(rule.response_headers.is_some());
}
