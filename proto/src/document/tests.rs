use super::*;

const ROUTE: &str = r#"
apiVersion: quiver.dev/v1
kind: Route
metadata:
  name: reviews
  namespace: shop
spec:
  service: reviews
  rules:
  - name: beta-users
    match:
      path: {prefix: /api/}
      headers: [{name: x-beta, exact: "1"}]
    backends: [{subset: v2, weight: 100}]
    timeout: 2s
  - name: default
    backends:
    - {subset: v1, weight: 90}
    - {subset: v2, weight: 10}
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: [5xx, reset]}
"#;

#[test]
fn parses_multi_document_yaml() {
    let text = format!(
        "{ROUTE}\n---\n---\napiVersion: quiver.dev/v1\nkind: Service\nmetadata: {{name: reviews}}\n"
    );
    let docs = parse_documents(&text).unwrap();
    assert_eq!(docs.len(), 2);
    let AnyResource::Route(r) = &docs[0] else {
        panic!("{docs:?}")
    };
    let spec = r.spec.as_ref().unwrap();
    assert_eq!(spec.rules[1].backends[0].weight, 90);
    assert_eq!(
        spec.rules[1].retries.as_ref().unwrap().retry_on,
        ["5xx", "reset"]
    );
    assert_eq!(docs[1].kind(), Kind::Service);
}

#[test]
fn render_then_parse_round_trips() {
    let docs = parse_documents(ROUTE).unwrap();
    let yaml = to_yaml(&docs).unwrap();
    assert!(
        yaml.starts_with("apiVersion: quiver.dev/v1\nkind: Route\nmetadata:"),
        "{yaml}"
    );
    assert!(!yaml.contains("regex"), "defaults are left out: {yaml}");
    assert_eq!(parse_documents(&yaml).unwrap(), docs);
    let json = to_json(&docs).unwrap();
    assert_eq!(parse_documents(&json).unwrap(), docs);
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let text = ROUTE.replace("timeout: 2s", "timout: 2s");
    let err = parse_documents(&text).unwrap_err().to_string();
    assert!(err.contains("spec.rules[0]"), "{err}");
    assert!(err.contains("unknown field `timout`"), "{err}");
}

#[test]
fn wrong_types_name_the_field() {
    let text = ROUTE.replace("weight: 90", "weight: ninety");
    let err = parse_documents(&text).unwrap_err().to_string();
    assert!(err.contains("spec.rules[1].backends[0].weight"), "{err}");
}

#[test]
fn api_version_and_kind_are_checked() {
    let err = parse_documents("apiVersion: v2\nkind: Route\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("apiVersion: must be \"quiver.dev/v1\""),
        "{err}"
    );
    let err = parse_documents("apiVersion: quiver.dev/v1\nkind: Gateway\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("kind: unknown kind \"Gateway\""), "{err}");
    let err = parse_documents("- a\n").unwrap_err().to_string();
    assert!(err.contains("must be a mapping"), "{err}");
}

#[test]
fn canonical_form_drops_empty_messages() {
    let mut docs = parse_documents(ROUTE).unwrap();
    let AnyResource::Route(r) = &mut docs[0] else {
        panic!()
    };
    r.spec.as_mut().unwrap().rules[0].fault = Some(Default::default());
    let c = canonicalize(r).unwrap();
    assert_eq!(c.spec.as_ref().unwrap().rules[0].fault, None);
}

#[test]
fn pruned_value_drops_proto3_defaults_for_the_proxy_config_shape() {
    let spec = v1::RouteSpec {
        service: "reviews".into(),
        rules: vec![v1::RouteRule {
            name: "default".into(),
            backends: vec![v1::WeightedBackend {
                subset: "v1".into(),
                weight: 100,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let v = pruned_value(&spec).unwrap();
    let text = serde_yaml::to_string(&v).unwrap();
    assert!(!text.contains("timeout"), "{text}");
    assert!(!text.contains("match"), "{text}");
    assert_eq!(v["rules"][0]["backends"][0]["weight"].as_u64(), Some(100));
}

#[test]
fn canonical_form_keeps_an_explicit_zero_sampling_percent() {
    let parse = |percent: &str| {
        let text = format!(
            "apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {{name: mesh}}\n\
             spec:\n  tracing: {{{percent}}}\n"
        );
        let docs = parse_documents(&text).unwrap();
        let m: v1::MeshConfig = serde_yaml::from_value(docs[0].to_yaml_value().unwrap()).unwrap();
        canonicalize(&m)
            .unwrap()
            .spec
            .unwrap_or_default()
            .tracing
            .unwrap_or_default()
            .sampling_percent
    };
    assert_eq!(
        parse("samplingPercent: 0"),
        Some(0.0),
        "0 is off, not unset"
    );
    assert_eq!(parse("samplingPercent: 30"), Some(30.0));
    assert_eq!(parse("slowThreshold: 2s"), None);
}

#[test]
fn an_error_at_an_odd_key_still_names_where_it_is() {
    // Found by the fuzz target yaml_documents: an empty (or dotted) key was reported with an
    // empty path ("document 1 (Route): : unknown field ``").
    let err = |text: &str| parse_documents(text).unwrap_err().to_string();
    let empty_top = err("apiVersion: quiver.dev/v1\nkind: Route\n? >4\n");
    assert!(
        empty_top.contains("(Route): [\"\"]: unknown field"),
        "{empty_top}"
    );
    let nested = err("apiVersion: quiver.dev/v1\nkind: Route\nspec:\n  \"a.b\": 1\n");
    assert!(
        nested.contains("(Route): spec[\"a.b\"]: unknown field"),
        "{nested}"
    );
    let whole = err("apiVersion: quiver.dev/v1\nkind: Route\nspec: 3\n");
    assert!(whole.contains("(Route): spec: invalid type"), "{whole}");
}
