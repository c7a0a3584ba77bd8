//! Workload registration for `MeshDiscovery`: Register, KeepAlive and Deregister.
//!
//! A registration is stored as a `Workload` resource (so it reaches watchers through the
//! change feed) plus a lease row (renewed without a new version, so keep-alives wake nobody).
//! Its namespace and SPIFFE id come from the caller's certificate; the service must exist in
//! that namespace and run as the caller's service account, so that no proxy can become an
//! endpoint of a service it cannot prove to be.
//!
//! What a proxy asserts about itself is bounded too: the address it registers must be on the
//! source IP of its own connection (unless the operator granted its identity a network with
//! `--registration-exception`), one identity holds at most `--max-endpoints-per-identity`
//! live workloads, and no port served may target one of the sidecar's own listeners.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
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

/// An operator's grant (`--registration-exception SPIFFE_ID=CIDR`): this identity may
/// register QUIC addresses in this network whatever the source address of its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressException {
    pub spiffe_id: String,
    pub network: IpAddr,
    pub prefix: u8,
}

impl AddressException {
    /// `SPIFFE_ID=CIDR`, e.g. `spiffe://mesh.local/ns/edge/sa/gateway=10.20.0.0/16`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (id, cidr) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?}: expected SPIFFE_ID=CIDR"))?;
        let id = quiver_api::SpiffeId::parse(id).map_err(|e| format!("{id:?}: {e}"))?;
        if id.workload_parts().is_none() {
            return Err(format!(
                "{id}: not a workload identity (spiffe://<td>/ns/<namespace>/sa/<account>)"
            ));
        }
        let (ip, prefix) = cidr.split_once('/').unwrap_or((cidr, ""));
        let network =
            IpAddr::from_str(ip).map_err(|_| format!("{cidr:?}: not an IP network (a.b.c.d/n)"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{cidr:?}: the prefix length must be 0..{max}"))?
        };
        Ok(Self {
            spiffe_id: id.to_string(),
            network: network.to_canonical(),
            prefix,
        })
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
            let keep = u32::from(prefix).min(width);
            if keep == 0 { 0 } else { bits >> (width - keep) }
        }
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u128::from(u32::from(n)), 32, self.prefix)
                    == masked(u128::from(u32::from(a)), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), 128, self.prefix) == masked(u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

impl fmt::Display for AddressException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}/{}", self.spiffe_id, self.network, self.prefix)
    }
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

/// The address must be on the caller's own source IP, or in a network the operator granted
/// its identity.
fn check_source(
    inputs: &Inputs,
    caller: &Caller,
    address: SocketAddr,
    source: Option<SocketAddr>,
) -> Result<(), Status> {
    let ip = address.ip().to_canonical();
    let from_source = source.is_some_and(|s| s.ip().to_canonical() == ip);
    let granted = inputs
        .limits
        .address_exceptions
        .iter()
        .any(|e| e.spiffe_id == caller.spiffe_id && e.contains(ip));
    if from_source || granted {
        return Ok(());
    }
    inputs.metrics.registration_refused("address");
    let from = source.map_or_else(|| "an unknown address".to_string(), |s| s.ip().to_string());
    Err(Status::permission_denied(format!(
        "address: {address} is not on this connection's source address ({from}); a proxy \
         registers its own address (an operator may grant {} a network with \
         --registration-exception)",
        caller.spiffe_id
    )))
}

/// No port served here may target one of the sidecar's own listeners: inbound requests for
/// it would reach the sidecar (its admin port, or its outbound proxy with this workload's
/// identity) instead of the app.
fn check_sidecar_ports(
    inputs: &Inputs,
    reg: &v1::WorkloadRegistration,
    svc: &v1::Service,
) -> Result<(), Status> {
    let (ports, at) = if reg.ports.is_empty() {
        let ports = svc.spec.as_ref().map(|s| s.ports.as_slice()).unwrap_or(&[]);
        (ports, "service spec.ports")
    } else {
        (reg.ports.as_slice(), "ports")
    };
    let mut errors = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let target = if p.target_port == 0 {
            p.port
        } else {
            p.target_port
        };
        if reg.sidecar_ports.contains(&target) {
            errors.push(format!(
                "{at}[{i}].targetPort: {target} is one of the sidecar's own listeners ({:?}); \
                 inbound requests would reach the sidecar, not the app",
                reg.sidecar_ports
            ));
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    inputs.metrics.registration_refused("sidecar_port");
    Err(Status::invalid_argument(errors.join("; ")))
}

/// One identity holds at most `--max-endpoints-per-identity` live workloads (re-registering
/// one it holds does not count twice).
async fn check_endpoint_limit(inputs: &Inputs, caller: &Caller, name: &str) -> Result<(), Status> {
    let limit = inputs.limits.endpoints_per_identity;
    let now = now_ms();
    let held = inputs
        .store
        .leases(Some(&caller.namespace))
        .await
        .map_err(store_status)?
        .iter()
        .filter(|l| l.spiffe_id == caller.spiffe_id && l.expires_at > now && l.name != name)
        .count();
    if held < limit {
        return Ok(());
    }
    inputs.metrics.registration_refused("limit");
    Err(Status::resource_exhausted(format!(
        "address: {} already holds {held} live endpoints, the limit \
         (--max-endpoints-per-identity {limit}); deregister one or let its lease lapse",
        caller.spiffe_id
    )))
}

/// Serializes the endpoint count and the lease write of registrations on this replica, so
/// that concurrent registrations of one identity cannot all pass the limit together.
static REGISTERING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn register(
    inputs: &Inputs,
    caller: &Caller,
    cert_not_before: i64,
    source: Option<SocketAddr>,
    reg: v1::WorkloadRegistration,
) -> Result<v1::RegisterResponse, Status> {
    let address = check(&reg)?;
    check_source(inputs, caller, address, source)?;
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
    check_sidecar_ports(inputs, &reg, &svc)?;
    let address = address.to_string();
    let name = workload_name(&reg.service, &address);
    let _registering = REGISTERING.lock().await;
    check_endpoint_limit(inputs, caller, &name).await?;
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
    // A revocation stored while this registration was under way (after the caller was
    // checked against this replica's view) may have deleted the workload before it was
    // written: read it back from the store now that the write is done, and take the
    // endpoint down again if it covers the caller. Revoke stores the revocation before it
    // deletes, so one of the two always sees the other.
    if let Err(refused) =
        super::revocations::check_stored(inputs, caller, cert_not_before, "Register").await
    {
        let _ = store
            .delete(Kind::Workload, ns, &name, Some(stored.resource_version))
            .await;
        store.delete_lease(ns, &name).await.map_err(store_status)?;
        return Err(refused);
    }
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
    store
        .delete_proxy_status(ns, &req.name)
        .await
        .map_err(store_status)?;
    Ok(v1::DeregisterResponse {})
}
