//! The control plane's pushed config (`quiver.v1.ProxySnapshot`, from `MeshDiscovery.Watch`)
//! turned into the proxy's [`Snapshot`]: the same type the static file produces, so the data
//! path cannot tell the two sources apart. Pure conversion: no I/O, and every problem is
//! reported with its field path so a bad push is refused whole and the proxy keeps the
//! snapshot it runs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use quiver_api::SpiffeId;
use quiver_api::v1;

use crate::config::FieldError;
use crate::snapshot::{Endpoint, LocalPort, Protocol, RemoteService, Snapshot};
use quiver_api::validate::check_dns_label;
use quiver_policy::authz::NamedPolicy;
use quiver_policy::plan::PolicyConfig;
use quiver_policy::services::Unknown;

/// Convert a pushed snapshot. `zone` is where this proxy runs (it knows, the control plane
/// need not); `app_host` is where its local apps listen (usually 127.0.0.1); `own` are this
/// proxy's own TCP listeners, which no inbound port may target (a caller would reach the
/// sidecar's admin port, or its outbound proxy with this workload's identity, instead of the
/// app).
pub fn snapshot(
    pushed: &v1::ProxySnapshot,
    zone: &str,
    app_host: IpAddr,
    own: &[SocketAddr],
) -> Result<Snapshot, Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut err = |field: String, reason: String| {
        errs.push(FieldError {
            path: field,
            reason,
        });
    };

    let mut services = BTreeMap::new();
    for (i, s) in pushed.services.iter().enumerate() {
        let at = format!("services[{i}]");
        if let Err(r) = check_dns_label(&s.name) {
            err(format!("{at}.name"), r);
        }
        let mut endpoints = Vec::new();
        for (j, e) in s.endpoints.iter().enumerate() {
            let eat = format!("{at}.endpoints[{j}]");
            let Ok(address) = e.address.parse::<SocketAddr>() else {
                err(
                    format!("{eat}.address"),
                    format!("{:?} is not ip:port", e.address),
                );
                continue;
            };
            let identity = match SpiffeId::parse(&e.spiffe_id) {
                Ok(id) => id,
                Err(r) => {
                    err(format!("{eat}.spiffeId"), format!("{:?}: {r}", e.spiffe_id));
                    continue;
                }
            };
            endpoints.push(Endpoint {
                address,
                identity,
                labels: e
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                zone: e.zone.clone(),
            });
        }
        let virtual_ip = match s.virtual_ip.as_str() {
            "" => None,
            ip => match ip.parse::<Ipv4Addr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    err(
                        format!("{at}.virtualIp"),
                        format!("{ip:?} is not an IPv4 address"),
                    );
                    None
                }
            },
        };
        let mut ports = BTreeMap::new();
        for (j, p) in s.ports.iter().enumerate() {
            let pat = format!("{at}.ports[{j}]");
            let Some(port) = u16::try_from(p.port).ok().filter(|p| *p > 0) else {
                err(format!("{pat}.port"), format!("{} is not 1-65535", p.port));
                continue;
            };
            match Protocol::from_name(&p.protocol) {
                Some(protocol) => {
                    ports.insert(port, protocol);
                }
                None => err(
                    format!("{pat}.protocol"),
                    format!("{:?} is not http1, http2, grpc or tcp", p.protocol),
                ),
            }
        }
        services.insert(
            s.name.clone(),
            RemoteService::new(s.name.clone(), endpoints, s.subsets.clone())
                .with_address(virtual_ip, ports),
        );
    }

    let mut inbound = Vec::new();
    for (i, l) in pushed.inbound.iter().enumerate() {
        for (j, p) in l.ports.iter().enumerate() {
            let at = format!("inbound[{i}].ports[{j}]");
            let port = match u16::try_from(p.port) {
                Ok(n) if n > 0 => n,
                _ => {
                    err(format!("{at}.port"), format!("{} is not 1-65535", p.port));
                    continue;
                }
            };
            let app_port = match p.target_port {
                0 => port,
                t => match u16::try_from(t) {
                    Ok(n) => n,
                    Err(_) => {
                        err(format!("{at}.targetPort"), format!("{t} is not 1-65535"));
                        continue;
                    }
                },
            };
            let app = SocketAddr::new(app_host, app_port);
            if own
                .iter()
                .any(|l| l.port() == app_port && (l.ip() == app_host || l.ip().is_unspecified()))
            {
                err(
                    format!("{at}.targetPort"),
                    format!("{app_port} is this sidecar's own listener ({app}), not an app"),
                );
                continue;
            }
            let Some(protocol) = Protocol::from_name(&p.protocol) else {
                err(
                    format!("{at}.protocol"),
                    format!("{:?} is not http1, http2, grpc or tcp", p.protocol),
                );
                continue;
            };
            inbound.push(LocalPort {
                service: l.name.clone(),
                port,
                protocol,
                app,
            });
        }
    }

    let policy = policy_config(pushed, &mut errs);
    if !errs.is_empty() {
        return Err(errs);
    }
    // A Service deleted while a Route still names it must not stop the rest of the push:
    // its backends get no endpoints.
    Snapshot::build(
        pushed.version.to_string(),
        zone.to_string(),
        inbound,
        services,
        policy,
        Unknown::NoEndpoints,
    )
}

/// Routes, authorization policies and mesh settings: the pushed specs themselves, compiled by
/// [`Snapshot::build`] (a missing spec is reported here).
fn policy_config(pushed: &v1::ProxySnapshot, errs: &mut Vec<FieldError>) -> PolicyConfig {
    let mut missing = |at: String| {
        errs.push(FieldError {
            path: format!("{at}.spec"),
            reason: "missing".into(),
        });
    };
    let mut config = PolicyConfig::default();
    for (i, r) in pushed.routes.iter().enumerate() {
        match &r.spec {
            Some(spec) => config.routes.push(spec.clone()),
            None => missing(format!("routes[{i}]")),
        }
    }
    for (i, p) in pushed.authorization_policies.iter().enumerate() {
        match &p.spec {
            Some(spec) => config.authorization.push(NamedPolicy {
                name: p
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default(),
                spec: spec.clone(),
            }),
            None => missing(format!("authorizationPolicies[{i}]")),
        }
    }
    config.mesh = pushed.mesh.clone().unwrap_or_default();
    // The namespace the control plane derived from this proxy's certificate.
    config.namespace = Some(pushed.namespace.clone()).filter(|ns| !ns.is_empty());
    config
}

#[cfg(test)]
mod tests;
