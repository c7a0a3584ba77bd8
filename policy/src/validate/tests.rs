//! One test per error class: each asserts the field path and the reason the user would read.

use std::collections::BTreeMap;

use super::*;
use quiver_api::document::parse_documents;

fn services() -> ServiceSpecs {
    let svc = &parse_documents(
        r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {name: reviews}
spec:
  ports: [{name: http, port: 9080, protocol: http1}]
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
"#,
    )
    .unwrap()[0];
    let AnyResource::Service(s) = svc else {
        panic!("not a service")
    };
    BTreeMap::from([("reviews".to_string(), s.spec.clone().unwrap())])
}

fn errors(doc: &str) -> Vec<FieldError> {
    let docs = parse_documents(doc).unwrap();
    match validate(&docs[0], &services()) {
        Ok(()) => vec![],
        Err(e) => e.errors,
    }
}

/// The error at `path`; fails the test, listing what was found, when there is none.
fn at(errors: &[FieldError], path: &str) -> String {
    errors
        .iter()
        .find(|e| e.path == path)
        .map(|e| e.reason.clone())
        .unwrap_or_else(|| panic!("no error at {path}; got {errors:?}"))
}

fn route(rules: &str) -> String {
    format!(
        "apiVersion: quiver.dev/v1\nkind: Route\nmetadata: {{name: r}}\nspec:\n  service: reviews\n  rules:\n{rules}"
    )
}

const GOOD_RULE: &str =
    "  - name: all\n    backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]\n";

#[test]
fn a_good_route_passes() {
    assert_eq!(errors(&route(GOOD_RULE)), vec![]);
}

#[test]
fn weights_must_sum_to_100() {
    let e = errors(&route(
        "  - name: a\n    backends: [{subset: v1, weight: 80}, {subset: v2, weight: 10}]\n",
    ));
    assert_eq!(
        at(&e, "spec.rules[0].backends"),
        "weights sum to 90, must sum to 100"
    );
}

#[test]
fn regex_must_compile() {
    let e = errors(&route(
        "  - name: a\n    match: {path: {regex: '/api/(v1'}, headers: [{name: x-user, regex: '[a-'}]}\n    backends: [{weight: 100}]\n",
    ));
    assert!(at(&e, "spec.rules[0].match.path.regex").contains("regex does not compile"));
    assert!(at(&e, "spec.rules[0].match.headers[0].regex").contains("regex does not compile"));
}

#[test]
fn subsets_must_exist() {
    let e = errors(&route(
        "  - name: a\n    backends: [{subset: v1, weight: 50}, {subset: v3, weight: 50}]\n",
    ));
    assert_eq!(
        at(&e, "spec.rules[0].backends[1].subset"),
        "unknown subset \"v3\" of service \"reviews\" (it has: v1, v2)"
    );
    assert_eq!(e.len(), 1, "{e:?}");
}

#[test]
fn services_must_exist() {
    let e = errors(
        "apiVersion: quiver.dev/v1\nkind: Route\nmetadata: {name: r}\nspec:\n  service: ratings\n  rules:\n  - name: a\n    backends: [{service: details, weight: 100}]\n",
    );
    assert!(at(&e, "spec.service").contains("unknown service \"ratings\""));
    assert!(at(&e, "spec.rules[0].backends[0].service").contains("unknown service \"details\""));
    let e = errors(
        "apiVersion: quiver.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {service: nope}\n",
    );
    assert!(at(&e, "spec.service").contains("unknown service \"nope\""));
}

#[test]
fn rule_names_must_be_unique() {
    let e = errors(&route(&format!("{GOOD_RULE}{GOOD_RULE}")));
    assert_eq!(at(&e, "spec.rules[1].name"), "duplicate name \"all\"");
}

#[test]
fn durations_must_not_be_negative_or_malformed() {
    let e = errors(&route(
        "  - name: a\n    timeout: -5s\n    retries: {attempts: 3, perTryTimeout: 2 seconds}\n    backends: [{weight: 100}]\n",
    ));
    assert!(at(&e, "spec.rules[0].timeout").contains("negative"));
    assert!(at(&e, "spec.rules[0].retries.perTryTimeout").contains("not a duration"));
}

#[test]
fn spiffe_patterns_must_be_well_formed() {
    let e = errors(
        r#"apiVersion: quiver.dev/v1
kind: AuthorizationPolicy
metadata: {name: p}
spec:
  service: reviews
  allow:
    - sources: ["spiffe://mesh.local/ns/shop/sa/*", "spiffe://mesh.local/ns/shop/sa/web*", "http://x"]
  deny:
    - sources: ["spiffe://*/ns/a"]
      paths: ["/admin/*/x"]
      methods: [FETCH]
"#,
    );
    assert!(at(&e, "spec.allow[0].sources[1]").contains("whole path segment"));
    assert!(at(&e, "spec.allow[0].sources[2]").contains("must start with \"spiffe://\""));
    assert!(at(&e, "spec.deny[0].sources[0]").contains("trust domain"));
    assert!(at(&e, "spec.deny[0].paths[0]").contains("only allowed at the end"));
    assert!(at(&e, "spec.deny[0].methods[0]").contains("not an HTTP method"));
    assert!(
        e.iter().all(|e| e.path != "spec.allow[0].sources[0]"),
        "{e:?}"
    );
}

#[test]
fn percentages_and_ranges_are_checked() {
    let e = errors(&route(
        "  - name: a\n    retries: {attempts: 0}\n    fault: {delay: {fixedDelay: 1s, percent: 150}, abort: {httpStatus: 99, percent: 10}}\n    mirror: {subset: v2, percent: -1}\n    backends: [{weight: 100}]\n",
    ));
    assert!(at(&e, "spec.rules[0].retries.attempts").contains("outside 1..10"));
    assert!(at(&e, "spec.rules[0].fault.delay.percent").contains("outside 0..100"));
    assert!(at(&e, "spec.rules[0].fault.abort.httpStatus").contains("outside 200..599"));
    assert!(at(&e, "spec.rules[0].mirror.percent").contains("outside 0..100"));
}

#[test]
fn every_error_is_reported_at_once() {
    let e = errors(
        "apiVersion: quiver.dev/v1\nkind: Route\nmetadata: {name: 'a/b', namespace: Shop}\nspec:\n  service: reviews\n  rules:\n  - backends: [{subset: v9, weight: 101}]\n",
    );
    at(&e, "metadata.name");
    at(&e, "metadata.namespace");
    at(&e, "spec.rules[0].name");
    at(&e, "spec.rules[0].backends");
    at(&e, "spec.rules[0].backends[0].subset");
    at(&e, "spec.rules[0].backends[0].weight");
    assert_eq!(e.len(), 6, "{e:?}");
}

#[test]
fn canary_steps_and_subsets() {
    let e = errors(
        "apiVersion: quiver.dev/v1\nkind: Canary\nmetadata: {name: c}\nspec: {service: reviews, stableSubset: v1, canarySubset: v7, steps: [10, 5, 200], interval: 0s}\n",
    );
    assert!(at(&e, "spec.canarySubset").contains("unknown subset \"v7\""));
    assert!(at(&e, "spec.steps[1]").contains("does not increase"));
    assert!(at(&e, "spec.steps[2]").contains("outside 1..100"));
    assert!(at(&e, "spec.interval").contains("longer than 0s"));
}

#[test]
fn service_fields() {
    let e = errors(
        "apiVersion: quiver.dev/v1\nkind: Service\nmetadata: {name: Reviews_1}\nspec:\n  ports: [{name: a, port: 70000, protocol: udp}, {name: a, port: 80, protocol: tcp}]\n  subsets: [{name: v1}]\n",
    );
    assert!(at(&e, "metadata.name").contains("not a DNS label"));
    assert!(at(&e, "spec.ports[0].port").contains("outside 1..65535"));
    assert!(at(&e, "spec.ports[0].protocol").contains("not one of"));
    assert!(at(&e, "spec.ports[1].name").contains("duplicate"));
    assert!(at(&e, "spec.subsets[0].labels").contains("at least one label"));
}

#[test]
fn sql_metacharacters_are_legal_route_names() {
    let e = errors(
        "apiVersion: quiver.dev/v1\nkind: Route\nmetadata: {name: \"x'; DROP TABLE resources; --\"}\nspec:\n  service: reviews\n  rules:\n  - {name: a, backends: [{weight: 100}]}\n",
    );
    assert_eq!(e, vec![]);
}

#[test]
fn mesh_config_is_one_per_mesh() {
    let e = errors(
        "apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {name: other, namespace: shop}\nspec: {defaultPolicy: deny, svidTtl: 1m}\n",
    );
    assert!(at(&e, "metadata.name").contains("named \"mesh\""));
    assert!(at(&e, "metadata.namespace").contains("\"default\""));
    assert_eq!(at(&e, "spec.defaultPolicy"), "must be ALLOW or DENY");
    assert_eq!(at(&e, "spec.svidTtl"), "must be at least 5m");
}

#[test]
fn mesh_config_tracing_is_checked() {
    let e = errors(
        "apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {tracing: {samplingPercent: 150, slowThreshold: fast}}\n",
    );
    assert_eq!(
        at(&e, "spec.tracing.samplingPercent"),
        "150 is outside 0..100"
    );
    assert!(
        at(&e, "spec.tracing.slowThreshold").starts_with("not a duration"),
        "{e:?}"
    );
    let ok = errors(
        "apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {tracing: {samplingPercent: 10, slowThreshold: 500ms}}\n",
    );
    assert_eq!(ok, vec![]);
    let negative = errors(
        "apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {tracing: {samplingPercent: -1}}\n",
    );
    assert_eq!(
        at(&negative, "spec.tracing.samplingPercent"),
        "-1 is outside 0..100"
    );
}

#[test]
fn durations_have_maximums() {
    let e = errors(
        "apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n  defaultTimeout: 9999999999999999999d\n  svidTtl: 31d\n  tracing: {slowThreshold: 2h}\n",
    );
    assert!(at(&e, "spec.defaultTimeout").contains("longer than the maximum, 1h"));
    assert!(at(&e, "spec.svidTtl").contains("longer than the maximum, 720h"));
    assert!(at(&e, "spec.tracing.slowThreshold").contains("maximum"));
    let e = errors(&route(
        "  - name: a\n    timeout: 61m\n    retries: {attempts: 2, perTryTimeout: 99999999999999d}\n    fault: {delay: {fixedDelay: 9999999999999999999d, percent: 1}}\n",
    ));
    for field in ["timeout", "retries.perTryTimeout", "fault.delay.fixedDelay"] {
        assert!(at(&e, &format!("spec.rules[0].{field}")).contains("maximum"));
    }
    // The maximums themselves are accepted.
    assert_eq!(
        errors(&route(
            "  - name: a\n    timeout: 1h\n    retries: {attempts: 2, perTryTimeout: 1h}\n"
        )),
        vec![]
    );
    assert_eq!(
        errors(
            "apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {svidTtl: 30d, defaultTimeout: 1h}\n"
        ),
        vec![]
    );
}

#[test]
fn canary_webhooks_are_checked_by_field() {
    let e = errors(
        "apiVersion: quiver.dev/v1
kind: Canary
metadata: {name: c, namespace: shop}
spec:
  service: reviews
  stableSubset: v1
  canarySubset: v2
  steps: [50, 100]
  interval: 1m
  webhooks:
  - {name: gate, type: pre-rollout, url: 'http://127.0.0.1:9/gate', timeout: 2s}
  - {name: gate, type: rollout, url: 'http://tests:8080/check'}
  - {name: secure, type: event, url: 'https://hooks.example.com/x'}
  - {name: typo, type: post-rollout, url: 'ftp://x'}
  - {name: slow, type: rollout, url: 'http://x/y', timeout: 5m}
  - {type: event, url: 'http://x/'}
",
    );
    for (path, says) in [
        ("spec.webhooks[1].name", "duplicate name"),
        ("spec.webhooks[2].url", "https:// is not supported yet"),
        ("spec.webhooks[3].type", "\"post-rollout\" is not one of"),
        ("spec.webhooks[3].url", "not an http:// URL"),
        ("spec.webhooks[4].timeout", "longer than the maximum"),
        ("spec.webhooks[5].name", "required"),
    ] {
        assert!(at(&e, path).contains(says), "{path}: {says}: {e:#?}");
    }
    assert_eq!(e.len(), 6, "{e:#?}");
}
