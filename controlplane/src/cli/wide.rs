//! `quiverctl get KIND -o wide`: the table's columns and what an operator looks up next
//! (who a Service runs as, where a Route sends traffic, a Workload's labels, zone, identity
//! and lease, when each object last changed).

use quiver_api::resource::{AnyResource, Kind};

/// The wide table for `items` of `kind`.
pub fn render(kind: Kind, items: &[AnyResource]) -> String {
    if items.is_empty() {
        return format!("No {kind} resources found.\n");
    }
    let extra: &[&str] = match kind {
        Kind::Service => &["SERVICE-ACCOUNT"],
        Kind::Route => &["BACKENDS"],
        Kind::Canary => &["STABLE", "CANARY", "STEP", "LAST-CHECK", "MESSAGE"],
        Kind::AuthorizationPolicy => &["SOURCES"],
        Kind::MeshConfig => &[],
        Kind::Workload => &["IDENTITY", "ZONE", "LABELS", "LEASE-EXPIRES"],
        Kind::HttpRoute | Kind::GrpcRoute => &["BACKENDS"],
    };
    let mut header: Vec<String> = ["NAMESPACE", "NAME", "VERSION"]
        .iter()
        .map(ToString::to_string)
        .collect();
    header.extend(
        super::resources::column_names(kind)
            .iter()
            .map(ToString::to_string),
    );
    header.extend(extra.iter().map(ToString::to_string));
    header.push("UPDATED".into());
    let mut rows = vec![header];
    for item in items {
        let meta = item.metadata().cloned().unwrap_or_default();
        let mut row = vec![meta.namespace, meta.name, meta.resource_version.to_string()];
        row.extend(super::resources::columns(item));
        row.extend(more(item));
        row.push(or_dash(meta.updated_at));
        rows.push(row);
    }
    super::table::render(&rows)
}

fn more(item: &AnyResource) -> Vec<String> {
    match item {
        AnyResource::Service(s) => {
            let spec = s.spec.clone().unwrap_or_default();
            vec![or_dash(spec.service_account)]
        }
        AnyResource::Route(r) => {
            let spec = r.spec.clone().unwrap_or_default();
            let backends: Vec<String> = spec
                .rules
                .iter()
                .flat_map(|rule| rule.backends.iter())
                .map(|b| {
                    let service = if b.service.is_empty() {
                        spec.service.as_str()
                    } else {
                        b.service.as_str()
                    };
                    if b.subset.is_empty() {
                        format!("{service}={}", b.weight)
                    } else {
                        format!("{service}/{}={}", b.subset, b.weight)
                    }
                })
                .collect();
            vec![or_dash(backends.join(","))]
        }
        AnyResource::Canary(c) => {
            let spec = c.spec.clone().unwrap_or_default();
            let status = c.status.clone().unwrap_or_default();
            let step = if spec.steps.is_empty() {
                "-".to_string()
            } else {
                format!("{}/{}", status.current_step + 1, spec.steps.len())
            };
            vec![
                or_dash(spec.stable_subset),
                or_dash(spec.canary_subset),
                step,
                status.checks.last().map_or_else(|| "-".into(), last_check),
                or_dash(status.message),
            ]
        }
        AnyResource::AuthorizationPolicy(p) => {
            let spec = p.spec.clone().unwrap_or_default();
            let sources: Vec<String> = spec
                .allow
                .iter()
                .flat_map(|r| r.sources.iter().cloned())
                .collect();
            vec![or_dash(sources.join(","))]
        }
        AnyResource::MeshConfig(_) => Vec::new(),
        AnyResource::HttpRoute(r) => vec![gateway_backends(
            r.spec
                .iter()
                .flat_map(|s| &s.rules)
                .flat_map(|rule| &rule.backend_refs),
        )],
        AnyResource::GrpcRoute(r) => vec![gateway_backends(
            r.spec
                .iter()
                .flat_map(|s| &s.rules)
                .flat_map(|rule| &rule.backend_refs),
        )],
        AnyResource::Workload(w) => {
            let spec = w.spec.clone().unwrap_or_default();
            let status = w.status.clone().unwrap_or_default();
            let labels: Vec<String> = spec
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            vec![
                or_dash(spec.spiffe_id),
                or_dash(spec.zone),
                or_dash(labels.join(",")),
                or_dash(status.lease_expires_at),
            ]
        }
    }
}

/// A Gateway API route's backendRefs as `name=weight` (a weight left out is 1).
fn gateway_backends<'a>(refs: impl Iterator<Item = &'a quiver_api::v1::HttpBackendRef>) -> String {
    let all: Vec<String> = refs
        .map(|b| format!("{}={}", b.name, b.weight.unwrap_or(1)))
        .collect();
    or_dash(all.join(","))
}

/// A canary's check as one cell: `Passed 99.7% p99 24ms n=341 (stable 99.9%)`.
fn last_check(c: &quiver_api::v1::CanaryCheck) -> String {
    let m = c.canary.unwrap_or_default();
    let stable = c.stable.unwrap_or_default();
    format!(
        "{} {:.1}% p99 {:.0}ms n={} (stable {:.1}% n={})",
        c.result, m.success_rate, m.p99_ms, m.requests, stable.success_rate, stable.requests
    )
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

#[cfg(test)]
mod tests {
    use quiver_api::v1;

    use super::*;

    #[test]
    fn a_route_shows_where_it_sends_traffic() {
        let route = v1::Route {
            metadata: Some(v1::ObjectMeta {
                namespace: "shop".into(),
                name: "reviews".into(),
                resource_version: 7,
                ..Default::default()
            }),
            spec: Some(v1::RouteSpec {
                service: "reviews".into(),
                rules: vec![v1::RouteRule {
                    backends: vec![
                        v1::WeightedBackend {
                            subset: "v1".into(),
                            weight: 90,
                            ..Default::default()
                        },
                        v1::WeightedBackend {
                            service: "reviews-next".into(),
                            weight: 10,
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
            }),
        };
        let out = render(Kind::Route, &[AnyResource::Route(route)]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE") && lines[0].contains("BACKENDS"),
            "{out}"
        );
        assert!(lines[1].contains("reviews/v1=90,reviews-next=10"), "{out}");
        assert!(lines[1].trim_end().ends_with('-'), "no updatedAt: {out}");
    }
}
