//! The control plane's pushed config (`quiver.v1.ProxySnapshot`, from `MeshDiscovery.Watch`)
//! turned into the proxy's [`Snapshot`]: the same type the static file produces, so the data
//! path cannot tell the two sources apart. Pure conversion: no I/O, and every problem is
//! reported with its field path so a bad push is refused whole and the proxy keeps the
//! snapshot it runs.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use quiver_api::SpiffeId;
use quiver_api::v1;

use crate::config::FieldError;
use crate::snapshot::{Endpoint, LocalPort, Protocol, RemoteService, Snapshot};
use quiver_api::validate::check_dns_label;
use quiver_policy::Subset;
use quiver_policy::plan::PolicyConfig;

/// Convert a pushed snapshot. `zone` is where this proxy runs (it knows, the control plane
/// need not); `app_host` is where its local apps listen (usually 127.0.0.1).
pub fn snapshot(
    pushed: &v1::ProxySnapshot,
    zone: &str,
    app_host: IpAddr,
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
        let subsets = s
            .subsets
            .iter()
            .map(|x| Subset {
                name: x.name.clone(),
                labels: x
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect();
        services.insert(
            s.name.clone(),
            RemoteService::new(s.name.clone(), endpoints, subsets),
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
            let protocol = match p.protocol.as_str() {
                "http1" => Protocol::Http1,
                "http2" => Protocol::Http2,
                "grpc" => Protocol::Grpc,
                "tcp" => Protocol::Tcp,
                other => {
                    err(
                        format!("{at}.protocol"),
                        format!("{other:?} is not http1, http2, grpc or tcp"),
                    );
                    continue;
                }
            };
            inbound.push(LocalPort {
                service: l.name.clone(),
                port,
                protocol,
                app: SocketAddr::new(app_host, app_port),
            });
        }
    }

    let policy = policy_config(pushed, &mut errs);
    if !errs.is_empty() {
        return Err(errs);
    }
    Snapshot::build(
        pushed.version.to_string(),
        zone.to_string(),
        inbound,
        services,
        policy,
    )
}

/// Routes, authorization policies and mesh settings, read through the same serde shapes as
/// the static file (proto3 defaults dropped first, so "unset" reads as absent).
fn policy_config(pushed: &v1::ProxySnapshot, errs: &mut Vec<FieldError>) -> PolicyConfig {
    let mut config = PolicyConfig::default();
    for (i, r) in pushed.routes.iter().enumerate() {
        if let Some(route) = read(r.spec.as_ref(), None, &format!("routes[{i}]"), errs) {
            config.routes.push(route);
        }
    }
    for (i, p) in pushed.authorization_policies.iter().enumerate() {
        // The policy's name lives in its metadata; the proxy's shape carries it inline.
        let name = p
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let at = format!("authorizationPolicies[{i}]");
        if let Some(policy) = read(p.spec.as_ref(), Some(name), &at, errs) {
            config.authorization.push(policy);
        }
    }
    if let Some(mesh) = &pushed.mesh
        && let Some(m) = read(Some(mesh), None, "mesh", errs)
    {
        config.mesh = m;
        // Pruning drops proto3 zeros, also from `optional` fields where 0 was set on
        // purpose: `samplingPercent: 0` (head sampling off) must not read as unset (1%).
        if let Some(percent) = mesh.tracing.as_ref().and_then(|t| t.sampling_percent) {
            config.mesh.tracing.sampling_percent = Some(percent);
        }
    }
    config
}

/// Read a pushed message into the proxy's serde shape (proto3 defaults dropped first, so
/// "unset" reads as absent; an all-default message reads as an empty mapping), with `name`
/// inserted when given. A missing message or one that does not fit is reported at `at`.
fn read<T: serde::de::DeserializeOwned>(
    message: Option<&impl serde::Serialize>,
    name: Option<String>,
    at: &str,
    errs: &mut Vec<FieldError>,
) -> Option<T> {
    let Some(message) = message else {
        errs.push(FieldError {
            path: format!("{at}.spec"),
            reason: "missing".into(),
        });
        return None;
    };
    let converted = quiver_api::document::pruned_value(message)
        .map_err(|e| e.to_string())
        .and_then(|mut v| {
            if v.is_null() {
                v = serde_yaml::Value::Mapping(Default::default());
            }
            if let (Some(name), serde_yaml::Value::Mapping(m)) = (name, &mut v) {
                m.insert("name".into(), name.into());
            }
            serde_yaml::from_value(v).map_err(|e| e.to_string())
        });
    match converted {
        Ok(t) => Some(t),
        Err(reason) => {
            errs.push(FieldError {
                path: at.to_string(),
                reason,
            });
            None
        }
    }
}

#[cfg(test)]
mod tests;
