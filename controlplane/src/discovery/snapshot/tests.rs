use std::collections::BTreeMap;
use std::sync::Arc;

use quiver_api::v1;

use super::*;
use crate::discovery::view::{MeshState, Raw, build_namespace};

fn meta(ns: &str, name: &str) -> Option<v1::ObjectMeta> {
    Some(v1::ObjectMeta {
        name: name.into(),
        namespace: ns.into(),
        ..Default::default()
    })
}

fn service(name: &str, sa: &str, port: u32) -> v1::Service {
    v1::Service {
        status: None,
        metadata: meta("shop", name),
        spec: Some(v1::ServiceSpec {
            ports: vec![v1::ServicePort {
                name: "http".into(),
                port,
                protocol: "http1".into(),
                target_port: 0,
            }],
            subsets: vec![v1::Subset {
                name: "v2".into(),
                labels: BTreeMap::from([("version".into(), "v2".into())]),
            }],
            service_account: sa.into(),
        }),
    }
}

fn workload(name: &str, svc: &str, addr: &str, version: &str) -> v1::Workload {
    v1::Workload {
        metadata: meta("shop", name),
        spec: Some(v1::WorkloadSpec {
            service: svc.into(),
            address: addr.into(),
            labels: BTreeMap::from([("version".into(), version.into())]),
            zone: "z1".into(),
            spiffe_id: format!("spiffe://mesh.local/ns/shop/sa/{svc}"),
            ports: vec![],
        }),
        status: None,
    }
}

fn policy(name: &str, svc: &str) -> v1::AuthorizationPolicy {
    v1::AuthorizationPolicy {
        metadata: meta("shop", name),
        spec: Some(v1::AuthorizationPolicySpec {
            service: svc.into(),
            ..Default::default()
        }),
    }
}

fn state() -> MeshState {
    let mut raw = Raw::default();
    raw.services
        .insert("reviews".into(), service("reviews", "", 9080));
    raw.services
        .insert("web".into(), service("web", "web", 8080));
    // Out of address order on purpose.
    for w in [
        workload("reviews-b", "reviews", "10.0.0.2:15443", "v2"),
        workload("reviews-a", "reviews", "10.0.0.1:15443", "v1"),
        workload("web-a", "web", "10.0.0.9:15443", "v1"),
    ] {
        raw.workloads
            .insert(w.metadata.as_ref().unwrap().name.clone(), w);
    }
    raw.policies
        .insert("reviews".into(), policy("reviews", "reviews"));
    raw.policies.insert("web".into(), policy("web", "web"));
    raw.routes.insert(
        "reviews".into(),
        v1::Route {
            metadata: meta("shop", "reviews"),
            spec: Some(v1::RouteSpec {
                service: "reviews".into(),
                rules: vec![],
            }),
        },
    );
    MeshState {
        version: 7,
        trust_domain: "mesh.local".into(),
        mesh: Arc::new(v1::MeshConfigSpec {
            default_policy: "DENY".into(),
            ..Default::default()
        }),
        namespaces: BTreeMap::from([(
            "shop".into(),
            Arc::new(build_namespace("mesh.local", "shop", raw)),
        )]),
    }
}

fn caller(ns: &str, sa: &str) -> Caller {
    Caller {
        spiffe_id: format!("spiffe://mesh.local/ns/{ns}/sa/{sa}"),
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

#[test]
fn a_proxy_gets_its_namespace_services_with_endpoints_and_its_own_policies() {
    let snap = build(&state(), &caller("shop", "web"), &["web".into()], "PEM");
    assert_eq!(snap.version, 7);
    assert_eq!(snap.spiffe_id, "spiffe://mesh.local/ns/shop/sa/web");
    let names: Vec<&str> = snap.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["reviews", "web"]);
    let reviews = &snap.services[0];
    assert_eq!(reviews.spiffe_id, "spiffe://mesh.local/ns/shop/sa/reviews");
    let eps: Vec<(&str, &str)> = reviews
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.labels["version"].as_str()))
        .collect();
    assert_eq!(
        eps,
        [("10.0.0.1:15443", "v1"), ("10.0.0.2:15443", "v2")],
        "endpoints ordered by address, labels carried"
    );
    assert_eq!(reviews.endpoints[0].zone, "z1");
    assert_eq!(reviews.subsets[0].name, "v2");
    assert_eq!(snap.routes.len(), 1);
    let policies: Vec<&str> = snap
        .authorization_policies
        .iter()
        .map(|p| p.spec.as_ref().unwrap().service.as_str())
        .collect();
    assert_eq!(policies, ["web"], "only the policies of what it fronts");
    assert_eq!(snap.inbound.len(), 1);
    assert_eq!(snap.inbound[0].ports[0].port, 8080);
    assert_eq!(snap.mesh.as_ref().unwrap().default_policy, "DENY");
    assert_eq!(snap.trust_bundle_pem, "PEM");
}

#[test]
fn fronting_a_service_of_another_account_yields_nothing_inbound() {
    let snap = build(&state(), &caller("shop", "web"), &["reviews".into()], "PEM");
    assert!(snap.inbound.is_empty());
    assert!(snap.authorization_policies.is_empty());
}

#[test]
fn another_namespace_sees_no_services() {
    let snap = build(&state(), &caller("bank", "web"), &["web".into()], "PEM");
    assert!(snap.services.is_empty() && snap.routes.is_empty() && snap.inbound.is_empty());
    assert_eq!(snap.namespace, "bank");
}

#[test]
fn same_content_ignores_only_the_version() {
    let s = state();
    let a = build(&s, &caller("shop", "web"), &["web".into()], "PEM");
    let mut b = a.clone();
    b.version += 1;
    assert!(same_content(&a, &b));
    b.services[0].endpoints.pop();
    assert!(!same_content(&a, &b));
}
