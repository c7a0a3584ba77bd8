//! Workload registration for `MeshDiscovery`: Register, KeepAlive and Deregister.
//!
//! A registration is stored as a `Workload` resource (so it reaches watchers through the
//! change feed) plus a lease row (renewed without a new version, so keep-alives wake nobody).
//! Its namespace and SPIFFE id come from the caller's certificate; the service must exist in
//! that namespace and run as the caller's service account, so that no proxy can become an
//! endpoint of a service it cannot prove to be.

use std::net::SocketAddr;
use std::time::Duration;

use quiver_api::resource::Kind;
use quiver_api::v1;
use tonic::Status;

use super::{Inputs, decode, is_dns_label, rfc3339, store_status};
use crate::discovery::Caller;
use crate::discovery::view::service_account;
use crate::store::{Lease, now_ms};

/// The name of the workload `service` registers at `address`: stable, so that a proxy that
/// restarts at the same address updates its record instead of adding one.
pub fn workload_name(service: &str, address: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, address.as_bytes());
    let hex: String = digest.as_ref()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{service}-{hex}")
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Every problem with a registration, each naming its field.
fn check(reg: &v1::WorkloadRegistration) -> Result<SocketAddr, Status> {
    let mut errors = Vec::new();
    if !is_dns_label(&reg.service) {
        errors.push(format!("service: {:?} is not a DNS label", reg.service));
    }
    let address = match reg.address.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() || a.port() == 0 => {
            errors.push(format!(
                "address: {:?} must be the ip:port peers reach (not unspecified, not port 0)",
                reg.address
            ));
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(format!("address: {:?} is not ip:port", reg.address));
            None
        }
    };
    for (i, p) in reg.ports.iter().enumerate() {
        if p.port == 0 || p.port > 65535 {
            errors.push(format!("ports[{i}].port: {} is not 1..65535", p.port));
        }
        if !matches!(p.protocol.as_str(), "http1" | "http2" | "grpc" | "tcp") {
            errors.push(format!(
                "ports[{i}].protocol: {:?} is not http1, http2, grpc or tcp",
                p.protocol
            ));
        }
    }
    for key in reg.labels.keys() {
        if key.is_empty() || key.len() > 63 {
            errors.push(format!("labels: key {key:?} must be 1..63 characters"));
        }
    }
    if reg.zone.len() > 63 {
        errors.push("zone: longer than 63 characters".into());
    }
    match (errors.is_empty(), address) {
        (true, Some(a)) => Ok(a),
        _ => Err(Status::invalid_argument(errors.join("; "))),
    }
}

pub async fn register(
    inputs: &Inputs,
    caller: &Caller,
    reg: v1::WorkloadRegistration,
) -> Result<v1::RegisterResponse, Status> {
    let address = check(&reg)?;
    let ns = caller.namespace.as_str();
    if let Some(reason) = quiver_api::spiffe::reserved_namespace(ns) {
        return Err(Status::permission_denied(format!(
            "{}: namespace {reason}",
            caller.spiffe_id
        )));
    }
    let store = inputs.store.as_ref();
    let svc = store
        .get(Kind::Service, ns, &reg.service)
        .await
        .map_err(store_status)?
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "service: {ns}/{} does not exist; apply the Service first",
                reg.service
            ))
        })?;
    let svc: v1::Service = decode(&svc)?;
    let sa = service_account(&svc);
    if sa != caller.service_account {
        return Err(Status::permission_denied(format!(
            "service: {ns}/{} runs as service account {sa:?}; the caller is {}",
            reg.service, caller.spiffe_id
        )));
    }
    let address = address.to_string();
    let name = workload_name(&reg.service, &address);
    let expires_at = now_ms().saturating_add(ms(inputs.lease_ttl));
    // The lease first: a workload without a live lease would be swept straight away.
    store
        .put_lease(&Lease {
            namespace: ns.into(),
            name: name.clone(),
            spiffe_id: caller.spiffe_id.clone(),
            expires_at,
        })
        .await
        .map_err(store_status)?;
    let workload = v1::Workload {
        metadata: Some(v1::ObjectMeta {
            name: name.clone(),
            namespace: ns.into(),
            ..Default::default()
        }),
        spec: Some(v1::WorkloadSpec {
            service: reg.service,
            address,
            labels: reg.labels,
            zone: reg.zone,
            spiffe_id: caller.spiffe_id.clone(),
            ports: reg.ports,
        }),
        status: Some(v1::WorkloadStatus {
            lease_expires_at: String::new(),
            ready: true,
        }),
    };
    let body = prost::Message::encode_to_vec(&workload);
    let (stored, _) = store
        .put(Kind::Workload, ns, &name, body, None)
        .await
        .map_err(store_status)?;
    let mut workload: v1::Workload = decode(&stored)?;
    if let Some(status) = workload.status.as_mut() {
        status.lease_expires_at = rfc3339(expires_at);
    }
    tracing::info!(
        workload = %format!("{ns}/{name}"),
        spiffe.id = %caller.spiffe_id,
        "workload registered"
    );
    Ok(v1::RegisterResponse {
        workload: Some(workload),
        lease_ttl: quiver_api::duration::format(inputs.lease_ttl),
        lease_expires_at: rfc3339(expires_at),
    })
}

pub async fn keep_alive(
    inputs: &Inputs,
    caller: &Caller,
    req: v1::KeepAliveRequest,
) -> Result<v1::KeepAliveResponse, Status> {
    if req.name.is_empty() {
        return Err(Status::invalid_argument("name: required"));
    }
    let now = now_ms();
    let expires_at = now.saturating_add(ms(inputs.lease_ttl));
    let renewed = inputs
        .store
        .renew_lease(
            &caller.namespace,
            &req.name,
            &caller.spiffe_id,
            expires_at,
            now,
        )
        .await
        .map_err(store_status)?;
    if !renewed {
        return Err(Status::not_found(format!(
            "workload {}/{} has no live lease held by {}; register again",
            caller.namespace, req.name, caller.spiffe_id
        )));
    }
    Ok(v1::KeepAliveResponse {
        lease_expires_at: rfc3339(expires_at),
    })
}

pub async fn deregister(
    inputs: &Inputs,
    caller: &Caller,
    req: v1::DeregisterRequest,
) -> Result<v1::DeregisterResponse, Status> {
    if req.name.is_empty() {
        return Err(Status::invalid_argument("name: required"));
    }
    let store = inputs.store.as_ref();
    let ns = caller.namespace.as_str();
    let stored = store
        .get(Kind::Workload, ns, &req.name)
        .await
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("workload {ns}/{} not found", req.name)))?;
    let workload: v1::Workload = decode(&stored)?;
    let owner = workload.spec.map(|s| s.spiffe_id).unwrap_or_default();
    if owner != caller.spiffe_id {
        return Err(Status::permission_denied(format!(
            "workload {ns}/{} was registered by {owner}, not {}",
            req.name, caller.spiffe_id
        )));
    }
    store
        .delete(Kind::Workload, ns, &req.name, Some(stored.resource_version))
        .await
        .map_err(store_status)?;
    store
        .delete_lease(ns, &req.name)
        .await
        .map_err(store_status)?;
    Ok(v1::DeregisterResponse {})
}
