use super::*;

fn meta(ns: &str, name: &str) -> Option<v1::ObjectMeta> {
    Some(v1::ObjectMeta {
        namespace: ns.into(),
        name: name.into(),
        ..Default::default()
    })
}

fn service(name: &str, subsets: &[&str]) -> v1::Service {
    v1::Service {
        status: None,
        metadata: meta("shop", name),
        spec: Some(v1::ServiceSpec {
            subsets: subsets
                .iter()
                .map(|s| v1::Subset {
                    name: (*s).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    }
}

fn workload(name: &str, service: &str) -> v1::Workload {
    v1::Workload {
        metadata: meta("shop", name),
        spec: Some(v1::WorkloadSpec {
            service: service.into(),
            ..Default::default()
        }),
        status: Some(v1::WorkloadStatus {
            ready: true,
            ..Default::default()
        }),
    }
}

fn route(name: &str, service: &str, backends: &[(&str, &str)]) -> v1::Route {
    v1::Route {
        metadata: meta("shop", name),
        spec: Some(v1::RouteSpec {
            service: service.into(),
            rules: vec![v1::RouteRule {
                backends: backends
                    .iter()
                    .map(|(s, sub)| v1::WeightedBackend {
                        service: (*s).into(),
                        subset: (*sub).into(),
                        weight: 50,
                    })
                    .collect(),
                ..Default::default()
            }],
        }),
    }
}

fn proxy(workload: &str, state: &str, stale: u64) -> v1::ProxyStatus {
    v1::ProxyStatus {
        namespace: "shop".into(),
        workload: workload.into(),
        service: "reviews".into(),
        state: state.into(),
        applied_version: 5,
        latest_version: if state == "SYNCED" { 5 } else { 7 },
        stale_seconds: stale,
        ..Default::default()
    }
}

const LIMITS: Limits = Limits {
    stale_after: Duration::from_secs(30),
    ca_warn_within: Duration::from_secs(30 * 86_400),
    proxy_cert_within: Duration::from_secs(300),
    silent_after: Duration::from_secs(60),
};

fn failures(findings: &[Finding]) -> Vec<String> {
    findings
        .iter()
        .filter(|f| f.level == Level::Failure)
        .map(|f| f.message.clone())
        .collect()
}

fn healthy() -> Mesh {
    Mesh {
        services: vec![service("reviews", &["v1", "v2"])],
        workloads: vec![workload("reviews-1", "reviews")],
        routes: vec![route(
            "reviews",
            "reviews",
            &[("", "v1"), ("reviews", "v2")],
        )],
        proxies: vec![proxy("reviews-1", "SYNCED", 0)],
        ..Default::default()
    }
}

#[test]
fn a_healthy_mesh_has_no_failures() {
    let findings = analyze(&healthy(), &LIMITS, SystemTime::now());
    assert!(failures(&findings).is_empty(), "{findings:?}");
    assert!(render(&findings).contains("Status check results are ✔"));
}

#[test]
fn missing_subsets_and_services_are_named() {
    let mut mesh = healthy();
    mesh.routes
        .push(route("split", "reviews", &[("", "v1"), ("", "v3")]));
    mesh.routes.push(route("ghost", "ratings", &[]));
    mesh.policies.push(v1::AuthorizationPolicy {
        metadata: meta("shop", "allow-frontend"),
        spec: Some(v1::AuthorizationPolicySpec {
            service: "catalog".into(),
            ..Default::default()
        }),
    });
    mesh.canaries.push(v1::Canary {
        metadata: meta("shop", "reviews"),
        spec: Some(v1::CanarySpec {
            service: "reviews".into(),
            stable_subset: "v1".into(),
            canary_subset: "v9".into(),
            ..Default::default()
        }),
        status: None,
    });
    let f = failures(&analyze(&mesh, &LIMITS, SystemTime::now()));
    assert!(
        f.contains(&"route shop/split spec.rules[0].backends[1]: subset \"v3\" is not defined on service shop/reviews".to_string()),
        "{f:?}"
    );
    assert!(
        f.contains(
            &"route shop/ghost spec.service: service shop/ratings does not exist".to_string()
        ),
        "{f:?}"
    );
    assert!(
        f.iter()
            .any(|m| m.starts_with("authorizationpolicy shop/allow-frontend")),
        "{f:?}"
    );
    assert!(
        f.iter()
            .any(|m| m.contains("canary shop/reviews spec.canarySubset: subset \"v9\"")),
        "{f:?}"
    );
    assert_eq!(f.len(), 4, "{f:?}");
}

#[test]
fn a_proxy_that_never_reported_is_a_warning() {
    let mut mesh = healthy();
    mesh.proxies.push(v1::ProxyStatus {
        namespace: "shop".into(),
        workload: "reviews-2".into(),
        service: "reviews".into(),
        state: "UNKNOWN".into(),
        ..Default::default()
    });
    let findings = analyze(&mesh, &LIMITS, SystemTime::now());
    assert!(failures(&findings).is_empty(), "{findings:?}");
    assert!(
        findings
            .iter()
            .any(|f| f.level == Level::Warning && f.message.contains("shop/reviews-2"))
    );
}

#[test]
fn stale_proxies_fail_after_the_grace() {
    let mut mesh = healthy();
    mesh.proxies.push(proxy("reviews-2", "STALE", 10));
    let findings = analyze(&mesh, &LIMITS, SystemTime::now());
    assert!(failures(&findings).is_empty(), "{findings:?}");
    assert!(findings.iter().any(|f| f.level == Level::Warning));
    mesh.proxies[1].stale_seconds = 31;
    let f = failures(&analyze(&mesh, &LIMITS, SystemTime::now()));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains("shop/reviews-2") && f[0].contains("STALE 31s"),
        "{f:?}"
    );
}

#[test]
fn services_without_endpoints_and_expiring_certificates() {
    let mut mesh = healthy();
    mesh.services.push(service("ratings", &[]));
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(60);
    mesh.proxies[0].certificate_expires_at = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    mesh.ca = Some(v1::CaStatus {
        phase: "single-root".into(),
        certificates: vec![v1::CaCertificate {
            role: "root".into(),
            subject: "CN=mesh".into(),
            not_after: soon
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let findings = analyze(&mesh, &LIMITS, SystemTime::now());
    let f = failures(&findings);
    assert!(
        f.iter()
            .any(|m| m.contains("service shop/ratings has no endpoints")),
        "{f:?}"
    );
    assert!(
        f.iter().any(|m| m.contains("certificate expires in")),
        "{f:?}"
    );
    // The CA root near expiry is a warning, not a failure.
    assert!(
        findings
            .iter()
            .any(|x| x.level == Level::Warning && x.message.starts_with("root CN=mesh expires in"))
    );
    assert_eq!(f.len(), 2, "{f:?}");
}
