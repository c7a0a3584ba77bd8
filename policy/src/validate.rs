//! Resource validation, as the API applies it: a Route, AuthorizationPolicy or MeshConfig is
//! valid when it compiles ([`RouteTable::compile`], [`Authorizer::add`], [`Mesh::compile`]),
//! so the control plane refuses exactly what a proxy would refuse, with the same field paths.
//! Services and Canaries, which no proxy compiles, are checked here; so is every resource's
//! metadata.
//!
//! A document is refused whole: validation collects every error, each naming the field path
//! (`spec.rules[1].backends`) and the reason. References to other resources are checked
//! against the Services the caller looked up (see [`referenced_services`]): a Route or
//! AuthorizationPolicy naming a Service that does not exist is refused (apply the Service
//! first).

use std::collections::BTreeSet;

use quiver_api::resource::AnyResource;
use quiver_api::v1;
use quiver_api::validate::{FieldError, Invalid, check_dns_label};

use crate::authz::{Authorizer, NamedPolicy};
use crate::fields::{self, err};
use crate::gateway::{self, GatewayRoute};
use crate::mesh::Mesh;
use crate::route::RouteTable;
use crate::services::{Services, Unknown};

pub use crate::services::ServiceSpecs;

/// Names of the services `resource` refers to (in its own namespace), for the caller to look up.
pub fn referenced_services(resource: &AnyResource) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut add = |s: &str| {
        if !s.is_empty() {
            out.insert(s.to_string());
        }
    };
    match resource {
        AnyResource::Route(r) => {
            if let Some(spec) = &r.spec {
                add(&spec.service);
                for rule in &spec.rules {
                    for b in &rule.backends {
                        add(&b.service);
                    }
                    if let Some(m) = &rule.mirror {
                        add(&m.service);
                    }
                }
            }
        }
        AnyResource::Canary(c) => add(c.spec.as_ref().map_or("", |s| s.service.as_str())),
        AnyResource::AuthorizationPolicy(p) => {
            add(p.spec.as_ref().map_or("", |s| s.service.as_str()));
        }
        AnyResource::HttpRoute(r) => {
            for s in GatewayRoute::Http(r).referenced_services() {
                add(s);
            }
        }
        AnyResource::GrpcRoute(r) => {
            for s in GatewayRoute::Grpc(r).referenced_services() {
                add(s);
            }
        }
        AnyResource::MeshConfig(_) | AnyResource::Service(_) | AnyResource::Workload(_) => {}
    }
    out
}

/// Validate any resource against the services it refers to.
pub fn validate(resource: &AnyResource, services: &ServiceSpecs) -> Result<(), Invalid> {
    let mut errors = Vec::new();
    metadata(&mut errors, resource);
    let specs = services;
    let services = Services::from_specs(services, Unknown::Refuse);
    match resource {
        AnyResource::MeshConfig(r) => mesh_config(&mut errors, r),
        AnyResource::Service(r) => service(&mut errors, r),
        AnyResource::AuthorizationPolicy(r) => authorization_policy(&mut errors, r, &services),
        AnyResource::Route(r) => match &r.spec {
            Some(spec) => {
                if let Err(e) = RouteTable::compile(spec, "spec", &services) {
                    errors.extend(e);
                }
            }
            None => errors.push(err("spec", "required")),
        },
        AnyResource::Canary(r) => canary(&mut errors, r, &services),
        AnyResource::HttpRoute(r) => errors.extend(gateway::check(GatewayRoute::Http(r), specs)),
        AnyResource::GrpcRoute(r) => errors.extend(gateway::check(GatewayRoute::Grpc(r), specs)),
        AnyResource::Workload(_) => {
            errors.push(err(
                "kind",
                "Workload is registered by proxies, not applied",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid {
            kind: resource.kind().as_str(),
            key: resource.key(),
            errors,
        })
    }
}

const PROTOCOLS: &[&str] = &["http1", "http2", "grpc", "tcp"];

/// The longest interval between a canary's checks.
const LONGEST_CANARY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(86_400);

fn dns_label(errors: &mut Vec<FieldError>, path: &str, s: &str) {
    if let Err(reason) = check_dns_label(s) {
        errors.push(err(path, reason));
    }
}

fn metadata(errors: &mut Vec<FieldError>, resource: &AnyResource) {
    let Some(meta) = resource.metadata() else {
        errors.push(err("metadata", "required"));
        return;
    };
    if meta.name.is_empty() {
        errors.push(err("metadata.name", "required"));
    } else if matches!(resource, AnyResource::Service(_)) {
        // Service names become host names and SPIFFE path segments.
        dns_label(errors, "metadata.name", &meta.name);
    } else {
        object_name(errors, "metadata.name", &meta.name);
    }
    if !meta.namespace.is_empty() {
        dns_label(errors, "metadata.namespace", &meta.namespace);
    }
    if let Some(reason) = quiver_api::spiffe::reserved_namespace(&meta.namespace) {
        errors.push(err("metadata.namespace", reason));
    }
    for key in meta.labels.keys() {
        if key.is_empty() || key.len() > 253 || key.chars().any(char::is_control) {
            errors.push(err(
                format!("metadata.labels[{key:?}]"),
                "label keys are 1-253 characters without control characters",
            ));
        }
    }
}

/// Names of routes, policies and canaries are free text, stored verbatim: anything printable
/// except '/', which separates namespace and name on the command line.
fn object_name(errors: &mut Vec<FieldError>, path: &str, name: &str) {
    if name.len() > 253 {
        errors.push(err(path, "longer than 253 bytes"));
    }
    if name.contains('/') {
        errors.push(err(path, "may not contain '/'"));
    }
    if name.chars().any(char::is_control) {
        errors.push(err(path, "may not contain control characters"));
    }
    if name.trim() != name {
        errors.push(err(path, "may not start or end with white space"));
    }
}

fn mesh_config(errors: &mut Vec<FieldError>, r: &v1::MeshConfig) {
    if let Some(meta) = &r.metadata {
        if !meta.name.is_empty() && meta.name != "mesh" {
            errors.push(err("metadata.name", "the MeshConfig is named \"mesh\""));
        }
        if !matches!(meta.namespace.as_str(), "" | "default") {
            errors.push(err(
                "metadata.namespace",
                "the MeshConfig lives in namespace \"default\"",
            ));
        }
    }
    if let Some(spec) = &r.spec {
        Mesh::compile(spec, "spec", errors);
    }
}

fn service(errors: &mut Vec<FieldError>, r: &v1::Service) {
    let Some(spec) = &r.spec else { return };
    fields::unique_names(
        errors,
        "spec.ports",
        spec.ports.iter().map(|p| p.name.as_str()),
    );
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        if p.port == 0 || p.port > 65535 {
            errors.push(err(
                format!("{path}.port"),
                format!("{} is outside 1..65535", p.port),
            ));
        }
        if p.target_port > 65535 {
            errors.push(err(
                format!("{path}.targetPort"),
                format!("{} is outside 1..65535", p.target_port),
            ));
        }
        if !PROTOCOLS.contains(&p.protocol.as_str()) {
            errors.push(err(
                format!("{path}.protocol"),
                format!("{:?} is not one of {}", p.protocol, PROTOCOLS.join(", ")),
            ));
        }
    }
    fields::unique_names(
        errors,
        "spec.subsets",
        spec.subsets.iter().map(|s| s.name.as_str()),
    );
    for (i, s) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            errors.push(err(format!("{path}.name"), "required"));
        } else {
            dns_label(errors, &format!("{path}.name"), &s.name);
        }
        if s.labels.is_empty() {
            errors.push(err(
                format!("{path}.labels"),
                "a subset selects by at least one label",
            ));
        }
    }
    if !spec.service_account.is_empty() {
        dns_label(errors, "spec.serviceAccount", &spec.service_account);
    }
}

fn authorization_policy(
    errors: &mut Vec<FieldError>,
    r: &v1::AuthorizationPolicy,
    services: &Services<'_>,
) {
    let Some(spec) = &r.spec else {
        errors.push(err("spec", "required"));
        return;
    };
    if !spec.service.is_empty() {
        services.check(errors, "spec", &spec.service);
    }
    let policy = NamedPolicy {
        name: r
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        spec: spec.clone(),
    };
    Authorizer::default().add(&policy, "spec", errors);
}

fn canary(errors: &mut Vec<FieldError>, r: &v1::Canary, services: &Services<'_>) {
    let Some(spec) = &r.spec else {
        errors.push(err("spec", "required"));
        return;
    };
    let known = if spec.service.is_empty() {
        errors.push(err("spec.service", "required"));
        false
    } else {
        services.check(errors, "spec", &spec.service)
    };
    for (field, subset) in [
        ("stableSubset", &spec.stable_subset),
        ("canarySubset", &spec.canary_subset),
    ] {
        let path = format!("spec.{field}");
        if subset.is_empty() {
            errors.push(err(path, "required"));
        } else if known {
            services.selector(errors, &path, &spec.service, subset);
        }
    }
    if !spec.stable_subset.is_empty() && spec.stable_subset == spec.canary_subset {
        errors.push(err("spec.canarySubset", "must differ from stableSubset"));
    }
    if spec.steps.is_empty() {
        errors.push(err("spec.steps", "at least one step is required"));
    }
    let mut last = 0;
    for (i, &s) in spec.steps.iter().enumerate() {
        if !(1..=100).contains(&s) {
            errors.push(err(
                format!("spec.steps[{i}]"),
                format!("{s} is outside 1..100"),
            ));
        } else if s <= last {
            errors.push(err(
                format!("spec.steps[{i}]"),
                format!("{s} does not increase on the step before ({last})"),
            ));
        }
        last = s;
    }
    if let Some(d) = fields::duration_up_to(
        errors,
        "spec.interval",
        &spec.interval,
        true,
        LONGEST_CANARY_INTERVAL,
    ) && d.is_zero()
    {
        errors.push(err("spec.interval", "must be longer than 0s"));
    }
    if let Some(c) = &spec.success_criteria {
        fields::percent(
            errors,
            "spec.successCriteria.minSuccessRate",
            c.min_success_rate,
        );
        fields::duration(
            errors,
            "spec.successCriteria.maxP99Latency",
            &c.max_p99_latency,
            false,
        );
        fields::duration(
            errors,
            "spec.successCriteria.maxP50Latency",
            &c.max_p50_latency,
            false,
        );
    }
    fields::percent(errors, "spec.mirrorPercent", spec.mirror_percent);
    fields::unique_names(
        errors,
        "spec.webhooks",
        spec.webhooks.iter().map(|w| w.name.as_str()),
    );
    for (i, w) in spec.webhooks.iter().enumerate() {
        webhook(errors, &format!("spec.webhooks[{i}]"), w);
    }
}

/// The webhook types a canary may have (docs/canary.md, "Webhooks").
pub const WEBHOOK_TYPES: [&str; 4] = ["pre-rollout", "rollout", "confirm-promotion", "event"];

/// The longest a canary webhook may be waited for.
const LONGEST_WEBHOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn webhook(errors: &mut Vec<FieldError>, at: &str, w: &v1::CanaryWebhook) {
    if w.name.is_empty() {
        errors.push(err(format!("{at}.name"), "required"));
    } else if w.name.len() > 63 || w.name.chars().any(|c| c.is_control() || c == '/') {
        errors.push(err(
            format!("{at}.name"),
            "1-63 characters without '/' or control characters",
        ));
    }
    if !WEBHOOK_TYPES.contains(&w.r#type.as_str()) {
        errors.push(err(
            format!("{at}.type"),
            format!("{:?} is not one of {}", w.r#type, WEBHOOK_TYPES.join(", ")),
        ));
    }
    match w.url.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("http") && u.host().is_some_and(|h| !h.is_empty()) => {}
        Ok(u) if u.scheme_str() == Some("https") => errors.push(err(
            format!("{at}.url"),
            "https:// is not supported yet: the control plane calls webhooks over http:// \
             (an in-mesh or local endpoint)",
        )),
        _ => errors.push(err(
            format!("{at}.url"),
            format!("{:?} is not an http:// URL with a host", w.url),
        )),
    }
    if let Some(d) = fields::duration_up_to(
        errors,
        &format!("{at}.timeout"),
        &w.timeout,
        false,
        LONGEST_WEBHOOK_TIMEOUT,
    ) && d.is_zero()
    {
        errors.push(err(format!("{at}.timeout"), "must be longer than 0s"));
    }
    for (k, v) in &w.metadata {
        if k.is_empty() || k.len() > 253 || k.chars().any(char::is_control) {
            errors.push(err(
                format!("{at}.metadata[{k:?}]"),
                "keys are 1-253 characters without control characters",
            ));
        }
        if v.len() > 4096 {
            errors.push(err(
                format!("{at}.metadata[{k:?}]"),
                "longer than 4096 bytes",
            ));
        }
    }
}

#[cfg(test)]
mod tests;
