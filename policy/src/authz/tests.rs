use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// The scope of these tables: callers of every namespace are judged alike (the
/// cross-namespace rule has its own tests below).
fn open_scope(default: DefaultPolicy) -> Scope {
    Scope {
        namespace: Some("shop".into()),
        default,
        cross_namespace: CrossNamespace::Allow,
    }
}

fn authorizer(yaml: &str, default: DefaultPolicy) -> Authorizer {
    scoped(yaml, open_scope(default))
}

fn scoped(yaml: &str, scope: Scope) -> Authorizer {
    let policies: Vec<NamedPolicy> = serde_yaml::from_str(yaml).unwrap();
    Authorizer::compile(&policies, scope, "authorization").unwrap()
}

const POLICIES: &str = r#"
- name: reviews-readers
  service: reviews
  deny:
    - sources: ["spiffe://mesh.local/ns/shop/sa/intruder"]
    - paths: ["/admin/*"]
      methods: [POST, DELETE]
  allow:
    - sources: ["spiffe://mesh.local/ns/shop/sa/*"]
      methods: [GET, HEAD]
    - sources: ["spiffe://mesh.local/ns/*/sa/ops"]
    - sources: ["spiffe://mesh.local/ns/billing/sa/payments"]
      paths: ["/refunds", "/api/v1/*"]
- name: ratings-deny-only
  service: ratings
  deny:
    - sources: ["spiffe://other.domain/ns/shop/sa/web"]
"#;

const WEB: &str = "spiffe://mesh.local/ns/shop/sa/web";
const INTRUDER: &str = "spiffe://mesh.local/ns/shop/sa/intruder";
const OPS: &str = "spiffe://mesh.local/ns/platform/sa/ops";
const PAYMENTS: &str = "spiffe://mesh.local/ns/billing/sa/payments";
const STRANGER: &str = "spiffe://mesh.local/ns/games/sa/bot";

#[test]
fn decision_table() {
    let a = authorizer(POLICIES, DefaultPolicy::Allow);
    let allowed = |r: &str| Verdict::Allowed(Reason::Rule(r.into()));
    let denied = |r: &str| Verdict::Denied(Reason::Rule(r.into()));
    let none = Verdict::Denied(Reason::NoAllowMatched);
    #[rustfmt::skip]
    let table: &[(&str, Option<&str>, &str, &str, Verdict)] = &[
        // Namespace wildcard (one whole segment): any service account in shop, GET/HEAD.
        ("reviews", Some(WEB), "GET", "/reviews/1", allowed("reviews-readers.allow[0]")),
        ("reviews", Some(WEB), "HEAD", "/", allowed("reviews-readers.allow[0]")),
        ("reviews", Some(WEB), "PUT", "/reviews/1", none.clone()),
        // Deny before allow: the intruder matches allow[0] too.
        ("reviews", Some(INTRUDER), "GET", "/", denied("reviews-readers.deny[0]")),
        // A deny rule without sources applies to everyone, ops included.
        ("reviews", Some(OPS), "DELETE", "/admin/x", denied("reviews-readers.deny[1]")),
        ("reviews", Some(OPS), "DELETE", "/admin", allowed("reviews-readers.allow[1]")),
        ("reviews", Some(OPS), "GET", "/admin/x", allowed("reviews-readers.allow[1]")),
        // Wildcard in the middle: any namespace, service account "ops" only.
        ("reviews", Some("spiffe://mesh.local/ns/shop/sa/ops"), "PUT", "/", allowed("reviews-readers.allow[1]")),
        ("reviews", Some("spiffe://mesh.local/ns/platform/sa/ops2"), "PUT", "/", none.clone()),
        // Exact source; exact path or prefix ending in '*'.
        ("reviews", Some(PAYMENTS), "POST", "/refunds", allowed("reviews-readers.allow[2]")),
        ("reviews", Some(PAYMENTS), "POST", "/refunds/1", none.clone()),
        ("reviews", Some(PAYMENTS), "POST", "/api/v1/x", allowed("reviews-readers.allow[2]")),
        ("reviews", Some(PAYMENTS), "POST", "/api/v1", none.clone()),
        // Not listed, or no identity at all.
        ("reviews", Some(STRANGER), "GET", "/", none.clone()),
        ("reviews", None, "GET", "/", none.clone()),
        // Another trust domain never matches a mesh.local pattern.
        ("reviews", Some("spiffe://evil.local/ns/shop/sa/web"), "GET", "/", none.clone()),
        // Segment counts must agree: "*" is one segment, not a prefix.
        ("reviews", Some("spiffe://mesh.local/ns/shop/sa/web/extra"), "GET", "/", none.clone()),
        // Deny-only policy: its deny rules, then the mesh default.
        ("ratings", Some("spiffe://other.domain/ns/shop/sa/web"), "GET", "/", denied("ratings-deny-only.deny[0]")),
        ("ratings", Some(STRANGER), "GET", "/", Verdict::Allowed(Reason::MeshDefault)),
        // No policy selects the service: the mesh default.
        ("details", Some(STRANGER), "GET", "/", Verdict::Allowed(Reason::MeshDefault)),
    ];
    for (service, source, method, path, want) in table {
        let src = source.map(id);
        assert_eq!(
            a.evaluate(service, src.as_ref(), method, path),
            *want,
            "{service} {source:?} {method} {path}"
        );
    }
}

#[test]
fn deny_all_default_blocks_unlisted_services_only() {
    let a = authorizer(POLICIES, DefaultPolicy::Deny);
    let web = id(WEB);
    assert_eq!(
        a.evaluate("details", Some(&web), "GET", "/"),
        Verdict::Denied(Reason::MeshDefault)
    );
    assert_eq!(
        a.evaluate("ratings", Some(&web), "GET", "/"),
        Verdict::Denied(Reason::MeshDefault)
    );
    assert!(a.evaluate("reviews", Some(&web), "GET", "/").is_allowed());
    let empty = Authorizer::compile(&[], Scope::default(), "authorization").unwrap();
    assert!(
        empty.evaluate("x", None, "GET", "/").is_allowed(),
        "ALLOW is the default (without a namespace to scope by)"
    );
}

#[test]
fn several_policies_on_one_service_combine() {
    let a = authorizer(
        r#"
- name: a
  service: reviews
  allow: [{sources: ["spiffe://mesh.local/ns/shop/sa/web"]}]
- name: b
  service: reviews
  allow: [{sources: ["spiffe://mesh.local/ns/shop/sa/mobile"]}]
  deny: [{paths: ["/internal/*"]}]
"#,
        DefaultPolicy::Allow,
    );
    let mobile = id("spiffe://mesh.local/ns/shop/sa/mobile");
    assert_eq!(
        a.evaluate("reviews", Some(&mobile), "GET", "/"),
        Verdict::Allowed(Reason::Rule("b.allow[0]".into()))
    );
    assert_eq!(
        a.evaluate("reviews", Some(&id(WEB)), "GET", "/internal/x"),
        Verdict::Denied(Reason::Rule("b.deny[0]".into()))
    );
}

#[test]
fn bad_patterns_are_named() {
    let policies: Vec<NamedPolicy> = serde_yaml::from_str(
        r#"
- name: p
  service: reviews
  allow:
    - sources: ["spiffe://mesh.local/ns/shop/sa/*", "spiffe://mesh.local/ns/shop/sa/web*", "http://x"]
  deny:
    - sources: ["spiffe://*/ns/a", "spiffe://mesh.local//a"]
      paths: ["/admin/*/x", "admin", "/ok*"]
      methods: ["GE T"]
- name: ""
  service: ""
"#,
    )
    .unwrap();
    let e = Authorizer::compile(&policies, Scope::default(), "authorization").unwrap_err();
    let got: Vec<(&str, &str)> = e
        .iter()
        .map(|e| (e.path.as_str(), e.reason.as_str()))
        .collect();
    let fields: Vec<&str> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        fields,
        [
            "authorization[0].allow[0].sources[1]",
            "authorization[0].allow[0].sources[2]",
            "authorization[0].deny[0].sources[0]",
            "authorization[0].deny[0].sources[1]",
            "authorization[0].deny[0].methods[0]",
            "authorization[0].deny[0].paths[0]",
            "authorization[0].deny[0].paths[1]",
            "authorization[1].name",
            "authorization[1].service",
        ]
    );
    assert!(got[0].1.contains("whole path segment"));
    assert!(got[1].1.contains("must start with \"spiffe://\""));
    assert!(got[2].1.contains("trust domain cannot be a wildcard"));
    assert!(got[5].1.contains("only allowed at the end"));
}

#[test]
fn tcp_connections_read_http_fields_the_safe_way() {
    let a = authorizer(POLICIES, DefaultPolicy::Allow);
    let tcp = |service: &str, source: &str| a.evaluate_tcp(service, Some(&id(source)));
    // deny[1] names only paths and methods: for TCP it denies on its (empty = any) sources.
    assert_eq!(
        tcp("reviews", WEB),
        Verdict::Denied(Reason::Rule("reviews-readers.deny[1]".into()))
    );
    assert_eq!(
        tcp("reviews", INTRUDER),
        Verdict::Denied(Reason::Rule("reviews-readers.deny[0]".into()))
    );
    let b = authorizer(
        r#"
- name: db
  service: postgres
  allow:
    - sources: ["spiffe://mesh.local/ns/shop/sa/*"]
      methods: [GET]
    - sources: ["spiffe://mesh.local/ns/billing/sa/payments"]
"#,
        DefaultPolicy::Deny,
    );
    // allow[0] names a method, so it never admits a TCP connection.
    assert_eq!(
        b.evaluate_tcp("postgres", Some(&id(WEB))),
        Verdict::Denied(Reason::NoAllowMatched)
    );
    assert_eq!(
        b.evaluate_tcp("postgres", Some(&id(PAYMENTS))),
        Verdict::Allowed(Reason::Rule("db.allow[1]".into()))
    );
    assert_eq!(
        b.evaluate_tcp("redis", Some(&id(PAYMENTS))),
        Verdict::Denied(Reason::MeshDefault)
    );
}

#[test]
fn callers_from_other_namespaces_need_an_allow_rule_that_names_them() {
    const SHOP_ONLY: &str = r#"
- name: open
  service: reviews
  allow:
    - paths: ["/public/*"]
    - sources: ["spiffe://mesh.local/ns/billing/sa/payments"]
      methods: [GET]
  deny:
    - sources: ["spiffe://mesh.local/ns/billing/sa/payments"]
      paths: ["/admin/*"]
"#;
    let scope = Scope {
        namespace: Some("shop".into()),
        default: DefaultPolicy::Allow,
        cross_namespace: CrossNamespace::Deny,
    };
    let a = scoped(SHOP_ONLY, scope.clone());
    let foreign = Verdict::Denied(Reason::OtherNamespace);
    #[rustfmt::skip]
    let table: &[(&str, &str, &str, &str, Verdict)] = &[
        // Same namespace: rules without sources and the mesh default apply as always.
        ("reviews", WEB, "GET", "/public/a", Verdict::Allowed(Reason::Rule("open.allow[0]".into()))),
        ("details", WEB, "GET", "/", Verdict::Allowed(Reason::MeshDefault)),
        // Another namespace: the mesh default (ALLOW) and a rule without sources do not admit it.
        ("details", STRANGER, "GET", "/", foreign.clone()),
        ("reviews", STRANGER, "GET", "/public/a", foreign.clone()),
        ("reviews", OPS, "GET", "/public/a", foreign.clone()),
        // A rule naming it does, within that rule's methods; deny rules still come first.
        ("reviews", PAYMENTS, "GET", "/x", Verdict::Allowed(Reason::Rule("open.allow[1]".into()))),
        ("reviews", PAYMENTS, "POST", "/x", foreign.clone()),
        ("reviews", PAYMENTS, "GET", "/admin/x", Verdict::Denied(Reason::Rule("open.deny[0]".into()))),
        // A namespace that only looks alike, another trust domain, or no workload shape.
        ("details", "spiffe://mesh.local/ns/shop2/sa/web", "GET", "/", foreign.clone()),
        ("details", "spiffe://mesh.local/ns/shop", "GET", "/", foreign.clone()),
        ("details", "spiffe://mesh.local/sa/web/ns/shop", "GET", "/", foreign.clone()),
    ];
    for (service, source, method, path, want) in table {
        assert_eq!(
            a.evaluate(service, Some(&id(source)), method, path),
            *want,
            "{service} {source} {method} {path}"
        );
    }
    assert_eq!(a.evaluate("details", None, "GET", "/"), foreign);
    // TCP: the same rule. deny[0] names payments (its paths do not narrow it for a tunnel);
    // allow[1] names a method, so it never admits a tunnel.
    assert_eq!(
        a.evaluate_tcp("reviews", Some(&id(PAYMENTS))),
        Verdict::Denied(Reason::Rule("open.deny[0]".into()))
    );
    assert_eq!(a.evaluate_tcp("reviews", Some(&id(STRANGER))), foreign);
    assert!(a.evaluate_tcp("details", Some(&id(WEB))).is_allowed());
    // crossNamespacePolicy: ALLOW judges them like everyone else.
    let open = scoped(
        SHOP_ONLY,
        Scope {
            cross_namespace: CrossNamespace::Allow,
            ..scope.clone()
        },
    );
    assert!(
        open.evaluate("details", Some(&id(STRANGER)), "GET", "/")
            .is_allowed()
    );
    assert!(
        open.evaluate("reviews", Some(&id(STRANGER)), "GET", "/public/a")
            .is_allowed()
    );
    // Without a namespace of its own, a proxy cannot tell callers apart by it.
    let unscoped = scoped(
        SHOP_ONLY,
        Scope {
            namespace: None,
            ..scope
        },
    );
    assert!(
        unscoped
            .evaluate("details", Some(&id(STRANGER)), "GET", "/")
            .is_allowed()
    );
}

#[test]
fn ignore_case_folds_ascii_case_of_paths_for_its_rule_only() {
    let a = authorizer(
        r#"
- name: p
  service: reviews
  deny:
    - paths: ["/admin", "/internal/*"]
      ignoreCase: true
    - paths: ["/Secret"]
"#,
        DefaultPolicy::Allow,
    );
    let web = id(WEB);
    for path in [
        "/admin",
        "/ADMIN",
        "/Admin/",
        "/internal/x",
        "/INTERNAL/x",
        "/Internal/",
    ] {
        assert_eq!(
            a.evaluate("reviews", Some(&web), "GET", path),
            Verdict::Denied(Reason::Rule("p.deny[0]".into())),
            "{path}"
        );
    }
    // Folding never makes a shorter path match, nor different letters.
    for path in ["/admi", "/adminx", "/internal", "/intern", "/\u{e9}dmin"] {
        assert!(
            a.evaluate("reviews", Some(&web), "GET", path).is_allowed(),
            "{path}"
        );
    }
    // The other rule stays case-sensitive.
    assert!(
        !a.evaluate("reviews", Some(&web), "GET", "/Secret")
            .is_allowed()
    );
    assert!(
        a.evaluate("reviews", Some(&web), "GET", "/secret")
            .is_allowed()
    );
}
