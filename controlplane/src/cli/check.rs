//! `quiverctl check`: the mesh's health as a list of findings, `linkerd check` style. It
//! reads everything through the admin API (a viewer token is enough), decides with
//! [`analyze`] (pure, over what it read) and exits non-zero when any finding is a failure.
//! Warnings (`‼`) are shown and do not fail the check.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use clap::Args;
use quiver_api::v1;

use super::Connection;
use super::client::{self, describe};
use super::proxies::{age, state_text};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A proxy STALE (a pushed snapshot not applied) for longer than this is a failure.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    stale_after: Duration,
    /// A CA certificate expiring within this is a warning.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    ca_warn_within: Duration,
    /// A proxy whose certificate expires within this is a failure (it should have renewed
    /// at two thirds of its lifetime).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    proxy_cert_within: Duration,
    /// A proxy not heard from for this long is a failure (its keep-alives stopped).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    silent_after: Duration,
    /// Output format.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json", "yaml"])]
    output: String,
    #[command(flatten)]
    conn: Connection,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    quiver_api::duration::parse(s)
}

/// How a finding counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Failure,
}

/// One line of the report, under a section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub section: &'static str,
    pub level: Level,
    pub message: String,
}

impl Finding {
    fn new(section: &'static str, level: Level, message: impl Into<String>) -> Self {
        Self {
            section,
            level,
            message: message.into(),
        }
    }
}

/// Limits of the checks.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub stale_after: Duration,
    pub ca_warn_within: Duration,
    pub proxy_cert_within: Duration,
    pub silent_after: Duration,
}

/// Everything the checks read.
#[derive(Debug, Default, Clone)]
pub struct Mesh {
    pub services: Vec<v1::Service>,
    pub routes: Vec<v1::Route>,
    pub canaries: Vec<v1::Canary>,
    pub policies: Vec<v1::AuthorizationPolicy>,
    pub workloads: Vec<v1::Workload>,
    pub proxies: Vec<v1::ProxyStatus>,
    pub ca: Option<v1::CaStatus>,
}

pub async fn run(a: CheckArgs) -> anyhow::Result<()> {
    let limits = Limits {
        stale_after: a.stale_after,
        ca_warn_within: a.ca_warn_within,
        proxy_cert_within: a.proxy_cert_within,
        silent_after: a.silent_after,
    };
    let mut findings = Vec::new();
    let target = super::profiles::resolve(&a.conn)?;
    let mesh = match client::connect_to(&target).await {
        Err(e) => {
            findings.push(Finding::new(
                "control plane",
                Level::Failure,
                format!("{e:#}"),
            ));
            None
        }
        Ok(mut c) => match c.status(v1::StatusRequest {}).await {
            Err(s) => {
                findings.push(Finding::new(
                    "control plane",
                    Level::Failure,
                    format!("Status at {} failed: {}", target.server, describe(&s)),
                ));
                None
            }
            Ok(status) => {
                let s = status.into_inner();
                findings.push(Finding::new(
                    "control plane",
                    Level::Ok,
                    format!(
                        "control plane reachable at {} (version {}, your role {})",
                        target.server, s.version, s.role
                    ),
                ));
                findings.push(Finding::new(
                    "control plane",
                    Level::Ok,
                    format!(
                        "store healthy ({}, resourceVersion {})",
                        s.store, s.resource_version
                    ),
                ));
                match read(&mut c).await {
                    Ok(mesh) => Some(mesh),
                    Err(e) => {
                        findings.push(Finding::new("control plane", Level::Failure, e));
                        None
                    }
                }
            }
        },
    };
    if let Some(mesh) = mesh {
        findings.extend(analyze(&mesh, &limits, SystemTime::now()));
    }
    match a.output.as_str() {
        "json" | "yaml" => super::print_doc(&findings, &a.output)?,
        _ => print!("{}", render(&findings)),
    }
    let failures = findings
        .iter()
        .filter(|f| f.level == Level::Failure)
        .count();
    if failures > 0 {
        anyhow::bail!("check: {failures} problem(s) found");
    }
    Ok(())
}

async fn read(c: &mut client::Client) -> Result<Mesh, String> {
    let all = || v1::ListRequest {
        namespace: String::new(),
    };
    let fail = |what: &str, s: tonic::Status| format!("{what}: {}", describe(&s));
    Ok(Mesh {
        services: c
            .list_services(all())
            .await
            .map_err(|s| fail("ListServices", s))?
            .into_inner()
            .items,
        routes: c
            .list_routes(all())
            .await
            .map_err(|s| fail("ListRoutes", s))?
            .into_inner()
            .items,
        canaries: c
            .list_canaries(all())
            .await
            .map_err(|s| fail("ListCanaries", s))?
            .into_inner()
            .items,
        policies: c
            .list_authorization_policies(all())
            .await
            .map_err(|s| fail("ListAuthorizationPolicies", s))?
            .into_inner()
            .items,
        workloads: c
            .list_workloads(all())
            .await
            .map_err(|s| fail("ListWorkloads", s))?
            .into_inner()
            .items,
        proxies: c
            .list_proxy_status(all())
            .await
            .map_err(|s| fail("ListProxyStatus", s))?
            .into_inner()
            .items,
        ca: Some(
            c.get_ca_status(v1::GetCaStatusRequest {})
                .await
                .map_err(|s| fail("GetCaStatus", s))?
                .into_inner(),
        ),
    })
}

/// The lines of the report, sections in order of first appearance.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    let mut section = "";
    for f in findings {
        if f.section != section {
            if !section.is_empty() {
                out.push('\n');
            }
            section = f.section;
            out.push_str(section);
            out.push('\n');
            out.push_str(&"-".repeat(section.chars().count()));
            out.push('\n');
        }
        let mark = match f.level {
            Level::Ok => "✔",
            Level::Warning => "‼",
            Level::Failure => "✘",
        };
        out.push_str(&format!("{mark} {}\n", f.message));
    }
    let failures = findings
        .iter()
        .filter(|f| f.level == Level::Failure)
        .count();
    let warnings = findings
        .iter()
        .filter(|f| f.level == Level::Warning)
        .count();
    out.push('\n');
    out.push_str(&match (failures, warnings) {
        (0, 0) => "Status check results are ✔\n".to_string(),
        (0, w) => format!("Status check results are ✔ ({w} warning(s))\n"),
        (f, w) => format!("Status check results are ✘: {f} problem(s), {w} warning(s)\n"),
    });
    out
}

/// Every check over what was read, at `now`.
pub fn analyze(mesh: &Mesh, limits: &Limits, now: SystemTime) -> Vec<Finding> {
    let mut out = Vec::new();
    check_ca(mesh, limits, now, &mut out);
    check_proxies(mesh, limits, now, &mut out);
    check_services(mesh, &mut out);
    check_references(mesh, &mut out);
    out
}

fn check_ca(mesh: &Mesh, limits: &Limits, now: SystemTime, out: &mut Vec<Finding>) {
    const S: &str = "certificate authority";
    let Some(ca) = &mesh.ca else { return };
    if ca.certificates.is_empty() {
        out.push(Finding::new(
            S,
            Level::Failure,
            "the CA has no certificates",
        ));
    }
    for cert in &ca.certificates {
        let what = format!("{} {}", cert.role, cert.subject);
        match parse_time(&cert.not_after) {
            None => out.push(Finding::new(
                S,
                Level::Warning,
                format!("{what}: expiry {:?} unreadable", cert.not_after),
            )),
            Some(t) => match t.duration_since(now) {
                Err(_) => out.push(Finding::new(
                    S,
                    Level::Failure,
                    format!("{what} expired at {}", cert.not_after),
                )),
                Ok(left) if left < limits.ca_warn_within => out.push(Finding::new(
                    S,
                    Level::Warning,
                    format!(
                        "{what} expires in {} ({}): rotate it (quiverctl ca rotate)",
                        age(left.as_secs()),
                        cert.not_after
                    ),
                )),
                Ok(left) => out.push(Finding::new(
                    S,
                    Level::Ok,
                    format!("{what} valid for {}", age(left.as_secs())),
                )),
            },
        }
    }
    if ca.phase == "overlap" {
        out.push(Finding::new(
            S,
            Level::Warning,
            format!(
                "root rotation under way: {} identities still hold old-root certificates",
                ca.old_root_holders.len()
            ),
        ));
    }
}

fn check_proxies(mesh: &Mesh, limits: &Limits, now: SystemTime, out: &mut Vec<Finding>) {
    const S: &str = "proxies";
    if mesh.proxies.is_empty() {
        out.push(Finding::new(S, Level::Ok, "no proxies have reported"));
        return;
    }
    let mut in_sync = 0;
    for p in &mesh.proxies {
        let who = format!("proxy {}/{} ({})", p.namespace, p.workload, p.service);
        let mut fine = true;
        match p.state.as_str() {
            "SYNCED" => {}
            "STALE" if Duration::from_secs(p.stale_seconds) <= limits.stale_after => {
                out.push(Finding::new(
                    S,
                    Level::Warning,
                    format!(
                        "{who} is {} behind (applied v{}, latest v{}); within --stale-after",
                        age(p.stale_seconds),
                        p.applied_version,
                        p.latest_version
                    ),
                ));
                fine = false;
            }
            "UNKNOWN" => {
                out.push(Finding::new(
                    S,
                    Level::Warning,
                    format!(
                        "{who} has not reported what it runs (just started, or a proxy older \
                         than this control plane)"
                    ),
                ));
                fine = false;
            }
            "REFUSED" => {
                out.push(Finding::new(
                    S,
                    Level::Failure,
                    format!(
                        "{who} REFUSED v{} and runs v{}: {}",
                        p.refused_version, p.applied_version, p.refused_reason
                    ),
                ));
                fine = false;
            }
            _ => {
                out.push(Finding::new(
                    S,
                    Level::Failure,
                    format!(
                        "{who} is {} (applied v{}, latest v{}, last seen {} ago)",
                        state_text(p),
                        p.applied_version,
                        p.latest_version,
                        age(p.last_seen_seconds)
                    ),
                ));
                fine = false;
            }
        }
        if p.state != "UNKNOWN" && Duration::from_secs(p.last_seen_seconds) > limits.silent_after {
            out.push(Finding::new(
                S,
                Level::Failure,
                format!(
                    "{who} has not reported for {} (keep-alives stopped?)",
                    age(p.last_seen_seconds)
                ),
            ));
            fine = false;
        }
        if let Some(t) = parse_time(&p.certificate_expires_at) {
            match t.duration_since(now) {
                Err(_) => {
                    out.push(Finding::new(
                        S,
                        Level::Failure,
                        format!("{who}: certificate expired at {}", p.certificate_expires_at),
                    ));
                    fine = false;
                }
                Ok(left) if left < limits.proxy_cert_within => {
                    out.push(Finding::new(
                        S,
                        Level::Failure,
                        format!(
                            "{who}: certificate expires in {} and was not renewed",
                            age(left.as_secs())
                        ),
                    ));
                    fine = false;
                }
                Ok(_) => {}
            }
        }
        if fine {
            in_sync += 1;
        }
    }
    if in_sync > 0 {
        out.push(Finding::new(
            S,
            Level::Ok,
            format!(
                "{in_sync} of {} proxies in sync with certificates in date",
                mesh.proxies.len()
            ),
        ));
    }
}

type Key = (String, String);

fn key(meta: Option<&v1::ObjectMeta>) -> Key {
    meta.map(|m| (m.namespace.clone(), m.name.clone()))
        .unwrap_or_default()
}

/// Services by (namespace, name), with their subsets.
fn services(mesh: &Mesh) -> BTreeMap<Key, BTreeSet<String>> {
    mesh.services
        .iter()
        .map(|s| {
            let subsets = s
                .spec
                .as_ref()
                .map(|sp| sp.subsets.iter().map(|x| x.name.clone()).collect())
                .unwrap_or_default();
            (key(s.metadata.as_ref()), subsets)
        })
        .collect()
}

fn check_services(mesh: &Mesh, out: &mut Vec<Finding>) {
    const S: &str = "services";
    let mut live: BTreeSet<Key> = BTreeSet::new();
    for w in &mesh.workloads {
        let ready = w.status.as_ref().is_none_or(|s| s.ready);
        if let (Some(m), Some(spec), true) = (&w.metadata, &w.spec, ready) {
            live.insert((m.namespace.clone(), spec.service.clone()));
        }
    }
    let mut fine = 0;
    for (ns, name) in services(mesh).keys() {
        if live.contains(&(ns.clone(), name.clone())) {
            fine += 1;
        } else {
            out.push(Finding::new(
                S,
                Level::Failure,
                format!("service {ns}/{name} has no endpoints (no registered workload)"),
            ));
        }
    }
    if fine > 0 || mesh.services.is_empty() {
        out.push(Finding::new(
            S,
            Level::Ok,
            format!("{fine} of {} services have endpoints", mesh.services.len()),
        ));
    }
}

fn check_references(mesh: &Mesh, out: &mut Vec<Finding>) {
    const S: &str = "references";
    let known = services(mesh);
    let mut problems = Vec::new();
    // `what` names the referring object and field; `ns` is its namespace.
    let mut refer = |what: String, ns: &str, service: &str, subset: &str| match known
        .get(&(ns.to_string(), service.to_string()))
    {
        None => problems.push(format!("{what}: service {ns}/{service} does not exist")),
        Some(subsets) if !subset.is_empty() && !subsets.contains(subset) => problems.push(format!(
            "{what}: subset {subset:?} is not defined on service {ns}/{service}"
        )),
        Some(_) => {}
    };
    for r in &mesh.routes {
        let (ns, name) = key(r.metadata.as_ref());
        let Some(spec) = &r.spec else { continue };
        let obj = format!("route {ns}/{name}");
        refer(format!("{obj} spec.service"), &ns, &spec.service, "");
        for (i, rule) in spec.rules.iter().enumerate() {
            for (j, b) in rule.backends.iter().enumerate() {
                let service = if b.service.is_empty() {
                    &spec.service
                } else {
                    &b.service
                };
                refer(
                    format!("{obj} spec.rules[{i}].backends[{j}]"),
                    &ns,
                    service,
                    &b.subset,
                );
            }
            if let Some(m) = &rule.mirror {
                let service = if m.service.is_empty() {
                    &spec.service
                } else {
                    &m.service
                };
                refer(
                    format!("{obj} spec.rules[{i}].mirror"),
                    &ns,
                    service,
                    &m.subset,
                );
            }
        }
    }
    for c in &mesh.canaries {
        let (ns, name) = key(c.metadata.as_ref());
        let Some(spec) = &c.spec else { continue };
        let obj = format!("canary {ns}/{name}");
        refer(
            format!("{obj} spec.stableSubset"),
            &ns,
            &spec.service,
            &spec.stable_subset,
        );
        refer(
            format!("{obj} spec.canarySubset"),
            &ns,
            &spec.service,
            &spec.canary_subset,
        );
    }
    for p in &mesh.policies {
        let (ns, name) = key(p.metadata.as_ref());
        let Some(spec) = &p.spec else { continue };
        refer(
            format!("authorizationpolicy {ns}/{name} spec.service"),
            &ns,
            &spec.service,
            "",
        );
    }
    problems.sort();
    problems.dedup();
    let checked = mesh.routes.len() + mesh.canaries.len() + mesh.policies.len();
    if problems.is_empty() {
        out.push(Finding::new(
            S,
            Level::Ok,
            format!("{checked} routes, canaries and authorization policies refer to existing services and subsets"),
        ));
    }
    out.extend(
        problems
            .into_iter()
            .map(|p| Finding::new(S, Level::Failure, p)),
    );
}

fn parse_time(s: &str) -> Option<SystemTime> {
    if s.is_empty() {
        return None;
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = u64::try_from(t.unix_timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests;
