use std::collections::BTreeMap;

use http::HeaderMap;
use quiver_api::v1;

use super::*;
use quiver_policy::authz::Verdict;
use quiver_policy::plan::Rolls;
use quiver_policy::route::RequestHead;

fn endpoint(addr: &str, version: &str, zone: &str) -> v1::SnapshotEndpoint {
    v1::SnapshotEndpoint {
        address: addr.into(),
        spiffe_id: "spiffe://mesh.local/ns/shop/sa/reviews".into(),
        labels: BTreeMap::from([("version".to_string(), version.to_string())]),
        zone: zone.into(),
        workload: format!("reviews-{version}"),
    }
}

fn backend(subset: &str, weight: u32) -> v1::WeightedBackend {
    v1::WeightedBackend {
        service: String::new(),
        subset: subset.into(),
        weight,
    }
}

fn pushed() -> v1::ProxySnapshot {
    let subset = |name: &str| v1::Subset {
        name: name.into(),
        labels: BTreeMap::from([("version".to_string(), name.to_string())]),
    };
    v1::ProxySnapshot {
        version: 42,
        spiffe_id: "spiffe://mesh.local/ns/shop/sa/web".into(),
        namespace: "shop".into(),
        services: vec![v1::SnapshotService {
            name: "reviews".into(),
            namespace: "shop".into(),
            subsets: vec![subset("v1"), subset("v2")],
            spiffe_id: "spiffe://mesh.local/ns/shop/sa/reviews".into(),
            endpoints: vec![
                endpoint("10.0.0.1:15443", "v1", "a"),
                endpoint("10.0.0.2:15443", "v2", "b"),
            ],
            ..Default::default()
        }],
        inbound: vec![v1::SnapshotLocalService {
            name: "web".into(),
            ports: vec![v1::ServicePort {
                name: "http".into(),
                port: 80,
                protocol: "http1".into(),
                target_port: 8080,
            }],
        }],
        routes: vec![v1::Route {
            metadata: Some(v1::ObjectMeta {
                name: "reviews".into(),
                namespace: "shop".into(),
                ..Default::default()
            }),
            spec: Some(v1::RouteSpec {
                service: "reviews".into(),
                rules: vec![
                    v1::RouteRule {
                        name: "testers".into(),
                        r#match: Some(v1::RouteMatch {
                            headers: vec![v1::HeaderMatch {
                                name: "x-user".into(),
                                exact: "tester".into(),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }),
                        // A zero weight (dropped as a proto3 default) must still read as 0.
                        backends: vec![backend("v2", 100), backend("v1", 0)],
                        ..Default::default()
                    },
                    v1::RouteRule {
                        name: "rest".into(),
                        backends: vec![backend("v1", 80), backend("v2", 20)],
                        timeout: "5s".into(),
                        retries: Some(v1::Retries {
                            attempts: 3,
                            per_try_timeout: "1s".into(),
                            retry_on: vec!["5xx".into()],
                            budget_percent: 0.0,
                        }),
                        ..Default::default()
                    },
                ],
            }),
        }],
        authorization_policies: vec![v1::AuthorizationPolicy {
            metadata: Some(v1::ObjectMeta {
                name: "web-callers".into(),
                ..Default::default()
            }),
            spec: Some(v1::AuthorizationPolicySpec {
                service: "web".into(),
                allow: vec![v1::AuthorizationRule {
                    sources: vec!["spiffe://mesh.local/ns/shop/sa/*".into()],
                    methods: vec!["GET".into()],
                    paths: vec![],
                    ignore_case: false,
                }],
                deny: vec![],
            }),
        }],
        mesh: Some(v1::MeshConfigSpec {
            default_policy: "DENY".into(),
            default_timeout: "15s".into(),
            svid_ttl: "24h".into(),
            tracing: None,
            cross_namespace_policy: String::new(),
        }),
        trust_domain: "mesh.local".into(),
        trust_bundle_pem: String::new(),
        revocations: Vec::new(),
    }
}

fn local() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

#[test]
fn a_pushed_snapshot_becomes_the_same_snapshot_a_file_would_give() {
    let s = snapshot(&pushed(), "a", local(), &[]).unwrap();
    assert_eq!(s.version, "42");
    assert_eq!(s.zone, "a");
    let reviews = &s.services["reviews"];
    assert_eq!(reviews.endpoints.len(), 2);
    assert_eq!(reviews.endpoints[1].labels["version"], "v2");
    assert_eq!(reviews.endpoints[1].zone, "b");
    assert_eq!(
        reviews.endpoints[0].identity.as_str(),
        "spiffe://mesh.local/ns/shop/sa/reviews"
    );
    assert_eq!(reviews.subsets.len(), 2);
    assert_eq!(s.inbound[0].app.to_string(), "127.0.0.1:8080");
    assert_eq!(s.inbound[0].port, 80);
    assert_eq!(s.inbound[0].protocol, Protocol::Http1);

    // The routes compiled: testers go to v2 whatever the roll, others get the 5 s timeout.
    let mut tester = HeaderMap::new();
    tester.insert("x-user", "tester".parse().unwrap());
    for roll in [0, 50, 99] {
        let head = RequestHead {
            method: "GET",
            path: "/",
            query: None,
            headers: &tester,
        };
        let plan = s
            .policy
            .plan(
                "reviews",
                &head,
                Rolls {
                    backend: roll,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(plan.backend.subset, "v2", "roll {roll}");
    }
    let empty = HeaderMap::new();
    let head = RequestHead {
        method: "GET",
        path: "/",
        query: None,
        headers: &empty,
    };
    let plan = s.policy.plan("reviews", &head, Rolls::default()).unwrap();
    assert_eq!(plan.route(), "rest");
    assert_eq!(plan.timeout, Some(std::time::Duration::from_secs(5)));
    assert_eq!(plan.retries().map(|r| r.attempts), Some(3));

    // Authorization and the mesh default.
    let caller = SpiffeId::parse("spiffe://mesh.local/ns/shop/sa/cart").unwrap();
    let outsider = SpiffeId::parse("spiffe://mesh.local/ns/other/sa/cart").unwrap();
    assert!(matches!(
        s.policy.authz.evaluate("web", Some(&caller), "GET", "/"),
        Verdict::Allowed(_)
    ));
    assert!(matches!(
        s.policy.authz.evaluate("web", Some(&outsider), "GET", "/"),
        Verdict::Denied(_)
    ));
    assert!(matches!(
        s.policy
            .authz
            .evaluate("unlisted", Some(&caller), "GET", "/"),
        Verdict::Denied(_)
    ));
}

#[test]
fn a_bad_push_is_refused_whole_with_field_paths() {
    let mut p = pushed();
    p.services[0].endpoints[0].address = "reviews-0:15443".into();
    p.services[0].endpoints[1].spiffe_id = "reviews".into();
    p.inbound[0].ports[0].protocol = "quic".into();
    if let Some(spec) = p.routes[0].spec.as_mut() {
        spec.rules[1].r#match = Some(v1::RouteMatch {
            path: Some(v1::PathMatch {
                regex: "(".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let errs = snapshot(&p, "", local(), &[]).unwrap_err();
    let text: Vec<String> = errs.iter().map(std::string::ToString::to_string).collect();
    let has = |f: &str| text.iter().any(|t| t.starts_with(f));
    assert!(has("services[0].endpoints[0].address"), "{text:#?}");
    assert!(has("services[0].endpoints[1].spiffeId"), "{text:#?}");
    assert!(has("inbound[0].ports[0].protocol"), "{text:#?}");
    // The route regex is checked when the policy compiles, after the shapes are read.
    let mut p = pushed();
    if let Some(spec) = p.routes[0].spec.as_mut() {
        spec.rules[1].r#match = Some(v1::RouteMatch {
            path: Some(v1::PathMatch {
                regex: "(".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let errs = snapshot(&p, "", local(), &[]).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.path.contains("rules[1].match.path.regex")),
        "{errs:#?}"
    );
}

#[test]
fn an_empty_push_is_an_empty_snapshot_with_default_policy() {
    let s = snapshot(&v1::ProxySnapshot::default(), "", local(), &[]).unwrap();
    assert!(s.services.is_empty() && s.inbound.is_empty());
    let id = SpiffeId::parse("spiffe://mesh.local/ns/a/sa/b").unwrap();
    assert!(matches!(
        s.policy.authz.evaluate("any", Some(&id), "GET", "/"),
        Verdict::Allowed(_)
    ));
}

#[test]
fn sampling_zero_means_off_not_unset() {
    let with = |sampling_percent| {
        let mut p = pushed();
        p.mesh.as_mut().unwrap().tracing = Some(v1::TracingConfig {
            sampling_percent,
            slow_threshold: String::new(),
        });
        snapshot(&p, "a", local(), &[])
            .unwrap()
            .policy
            .mesh
            .tracing
            .rate()
    };
    assert_eq!(with(Some(0.0)), 0.0, "0% is off");
    assert_eq!(with(None), 0.01, "unset is the 1% default");
    assert_eq!(with(Some(25.0)), 0.25);
}

#[test]
fn an_inbound_port_onto_the_sidecars_own_listener_is_refused() {
    // pushed() maps reviews:80 to the app at 127.0.0.1:8080.
    for own in ["127.0.0.1:8080", "0.0.0.0:8080"] {
        let own: SocketAddr = own.parse().unwrap();
        let errs = snapshot(&pushed(), "a", local(), &[own]).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.path == "inbound[0].ports[0].targetPort"
                    && e.reason.contains("this sidecar's own listener")),
            "{own}: {errs:#?}"
        );
    }
    let elsewhere: SocketAddr = "127.0.0.1:15020".parse().unwrap();
    snapshot(&pushed(), "a", local(), &[elsewhere]).expect("an app port");
}
