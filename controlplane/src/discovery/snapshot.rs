//! One proxy's [`v1::ProxySnapshot`], built from a [`MeshState`] without I/O.
//!
//! What a proxy "may call": every Service in its own namespace (the namespace of its SPIFFE
//! id). Route backends and mirrors are same-namespace references, so this set also covers
//! every service a route of theirs can send to. Cost: a snapshot grows with the namespace
//! (services + endpoints), and a change in a namespace is pushed to every proxy of that
//! namespace (not to other namespaces; a MeshConfig change goes to all). Cross-namespace
//! calls are not offered yet.

use quiver_api::v1;

use super::view::{MeshState, service_account};

/// Who is watching, from its client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub spiffe_id: String,
    pub namespace: String,
    pub service_account: String,
}

/// Build `caller`'s snapshot. `fronts` are the services it says it fronts; only those that
/// run as the caller's service account (and exist) contribute inbound ports and policies.
/// The deny-list (`revocations`) is not in the mesh state: the Watch stream adds it.
pub fn build(
    state: &MeshState,
    caller: &Caller,
    fronts: &[String],
    trust_bundle_pem: &str,
) -> v1::ProxySnapshot {
    let mut snap = v1::ProxySnapshot {
        version: state.version,
        spiffe_id: caller.spiffe_id.clone(),
        namespace: caller.namespace.clone(),
        mesh: Some((*state.mesh).clone()),
        trust_domain: state.trust_domain.clone(),
        trust_bundle_pem: trust_bundle_pem.into(),
        ..Default::default()
    };
    let Some(ns) = state.namespaces.get(&caller.namespace) else {
        return snap;
    };
    snap.services = ns.callable.clone();
    snap.routes = ns.routes.clone();
    let own: Vec<&str> = fronts
        .iter()
        .filter_map(|name| ns.services.get(name))
        .filter(|svc| service_account(svc) == caller.service_account)
        .filter_map(|svc| svc.metadata.as_ref().map(|m| m.name.as_str()))
        .collect();
    snap.inbound = own
        .iter()
        .filter_map(|name| ns.services.get(*name))
        .map(|svc| v1::SnapshotLocalService {
            name: svc
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            ports: svc
                .spec
                .as_ref()
                .map(|s| s.ports.clone())
                .unwrap_or_default(),
        })
        .collect();
    snap.authorization_policies = ns
        .policies
        .values()
        .filter(|p| {
            p.spec
                .as_ref()
                .is_some_and(|s| own.contains(&s.service.as_str()))
        })
        .cloned()
        .collect();
    snap
}

/// Whether two snapshots say the same thing (ignoring the version).
pub fn same_content(a: &v1::ProxySnapshot, b: &v1::ProxySnapshot) -> bool {
    a.spiffe_id == b.spiffe_id
        && a.services == b.services
        && a.inbound == b.inbound
        && a.routes == b.routes
        && a.authorization_policies == b.authorization_policies
        && a.mesh == b.mesh
        && a.trust_bundle_pem == b.trust_bundle_pem
        && a.revocations == b.revocations
}

#[cfg(test)]
mod tests;
