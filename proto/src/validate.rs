//! Resource validation: pure functions over a resource and the services it refers to.
//!
//! A document is refused whole: validation collects every error, each naming the field path
//! (`spec.rules[1].backends`) and the reason, instead of stopping at the first. References to
//! other resources (services, their subsets) are checked against a [`Services`] lookup the
//! caller fills from its store, so this module stays free of I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::resource::AnyResource;
use crate::spiffe::SpiffeId;
use crate::{duration, v1};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path from the document root, e.g. `spec.rules[0].match.path.regex`.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// The one DNS-label rule (RFC 1123 label: 1-63 lowercase letters, digits and '-', starting
/// and ending with a letter or digit). Names of namespaces, services, service accounts and
/// subsets follow it: they travel as HTTP authorities, TLS server names and SPIFFE path parts.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a DNS label (1-63 lowercase letters, digits or '-', starting and \
             ending with a letter or digit)"
        ))
    }
}

/// Every problem with a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    pub kind: &'static str,
    pub key: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} is invalid:", self.kind, self.key)?;
        for e in &self.errors {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// The services a document may refer to, by name, in the document's namespace.
pub type Services = BTreeMap<String, v1::ServiceSpec>;

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
        AnyResource::Canary(c) => add(c.spec.as_ref().map(|s| s.service.as_str()).unwrap_or("")),
        AnyResource::AuthorizationPolicy(p) => {
            add(p.spec.as_ref().map(|s| s.service.as_str()).unwrap_or(""));
        }
        AnyResource::MeshConfig(_) | AnyResource::Service(_) | AnyResource::Workload(_) => {}
    }
    out
}

/// Validate any resource against the services it refers to.
pub fn validate(resource: &AnyResource, services: &Services) -> Result<(), Invalid> {
    let mut v = Validator::default();
    v.metadata(resource);
    match resource {
        AnyResource::MeshConfig(r) => v.mesh_config(r),
        AnyResource::Service(r) => v.service(r),
        AnyResource::AuthorizationPolicy(r) => v.authorization_policy(r, services),
        AnyResource::Route(r) => v.route(r, services),
        AnyResource::Canary(r) => v.canary(r, services),
        AnyResource::Workload(_) => v.err("kind", "Workload is registered by proxies, not applied"),
    }
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid {
            kind: resource.kind().as_str(),
            key: resource.key(),
            errors: v.errors,
        })
    }
}

/// HTTP methods a route or policy may name.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
const PROTOCOLS: &[&str] = &["http1", "http2", "grpc", "tcp"];
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "unavailable",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
];

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            reason: reason.into(),
        });
    }

    fn metadata(&mut self, resource: &AnyResource) {
        let Some(meta) = resource.metadata() else {
            self.err("metadata", "required");
            return;
        };
        if meta.name.is_empty() {
            self.err("metadata.name", "required");
        } else if matches!(resource, AnyResource::Service(_)) {
            // Service names become host names and SPIFFE path segments.
            self.dns_label("metadata.name", &meta.name);
        } else {
            self.object_name("metadata.name", &meta.name);
        }
        if !meta.namespace.is_empty() {
            self.dns_label("metadata.namespace", &meta.namespace);
        }
        for key in meta.labels.keys() {
            if key.is_empty() || key.len() > 253 || key.chars().any(char::is_control) {
                self.err(
                    format!("metadata.labels[{key:?}]"),
                    "label keys are 1-253 characters without control characters",
                );
            }
        }
    }

    /// Names of routes, policies and canaries are free text, stored verbatim: anything printable
    /// except '/', which separates namespace and name on the command line.
    fn object_name(&mut self, path: &str, name: &str) {
        if name.len() > 253 {
            self.err(path, "longer than 253 bytes");
        }
        if name.contains('/') {
            self.err(path, "may not contain '/'");
        }
        if name.chars().any(char::is_control) {
            self.err(path, "may not contain control characters");
        }
        if name.trim() != name {
            self.err(path, "may not start or end with white space");
        }
    }

    fn dns_label(&mut self, path: &str, s: &str) {
        if let Err(reason) = check_dns_label(s) {
            self.err(path, reason);
        }
    }

    fn duration(&mut self, path: &str, s: &str, required: bool) -> Option<std::time::Duration> {
        if s.is_empty() {
            if required {
                self.err(path, "required");
            }
            return None;
        }
        if s.trim_start().starts_with('-') {
            self.err(path, format!("{s:?} is negative; durations must be >= 0"));
            return None;
        }
        match duration::parse(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(path, format!("not a duration: {e}"));
                None
            }
        }
    }

    fn percent(&mut self, path: &str, p: f64) {
        if !(0.0..=100.0).contains(&p) {
            self.err(path, format!("{p} is outside 0..100"));
        }
    }

    fn regex(&mut self, path: &str, re: &str) {
        if let Err(e) = regex::Regex::new(re) {
            self.err(path, format!("regex does not compile: {e}"));
        }
    }

    fn methods(&mut self, path: &str, methods: &[String]) {
        for (i, m) in methods.iter().enumerate() {
            if !METHODS.contains(&m.as_str()) {
                self.err(
                    format!("{path}[{i}]"),
                    format!(
                        "{m:?} is not an HTTP method (one of {})",
                        METHODS.join(", ")
                    ),
                );
            }
        }
    }

    fn unique<'a>(&mut self, path: &str, names: impl Iterator<Item = &'a str>) {
        let mut seen = BTreeSet::new();
        for (i, n) in names.enumerate() {
            if !n.is_empty() && !seen.insert(n) {
                self.err(format!("{path}[{i}].name"), format!("duplicate name {n:?}"));
            }
        }
    }

    /// A service reference (empty meaning `default_service`) and optional subset.
    fn service_ref(
        &mut self,
        path: &str,
        service: &str,
        subset: Option<(&str, &str)>,
        services: &Services,
    ) {
        let Some(spec) = services.get(service) else {
            self.err(
                format!("{path}.service"),
                format!("unknown service {service:?} (apply the Service first)"),
            );
            return;
        };
        if let Some((subset_path, subset)) = subset
            && !subset.is_empty()
            && !spec.subsets.iter().any(|s| s.name == subset)
        {
            let known: Vec<&str> = spec.subsets.iter().map(|s| s.name.as_str()).collect();
            self.err(
                subset_path,
                format!(
                    "unknown subset {subset:?} of service {service:?} (it has: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
    }

    fn mesh_config(&mut self, r: &v1::MeshConfig) {
        if let Some(meta) = &r.metadata
            && !meta.name.is_empty()
            && meta.name != "mesh"
        {
            self.err("metadata.name", "the MeshConfig is named \"mesh\"");
        }
        if let Some(meta) = &r.metadata
            && !matches!(meta.namespace.as_str(), "" | "default")
        {
            self.err(
                "metadata.namespace",
                "the MeshConfig lives in namespace \"default\"",
            );
        }
        let Some(spec) = &r.spec else { return };
        if !matches!(spec.default_policy.as_str(), "" | "ALLOW" | "DENY") {
            self.err("spec.defaultPolicy", "must be ALLOW or DENY");
        }
        self.duration("spec.defaultTimeout", &spec.default_timeout, false);
        if let Some(ttl) = self.duration("spec.svidTtl", &spec.svid_ttl, false)
            && ttl < std::time::Duration::from_secs(300)
        {
            self.err("spec.svidTtl", "must be at least 5m");
        }
        if let Some(tracing) = &spec.tracing {
            if let Some(p) = tracing.sampling_percent {
                // NaN is outside every range; say so rather than print "NaN is outside".
                if p.is_nan() {
                    self.err("spec.tracing.samplingPercent", "is not a number");
                } else {
                    self.percent("spec.tracing.samplingPercent", p);
                }
            }
            self.duration("spec.tracing.slowThreshold", &tracing.slow_threshold, false);
        }
    }

    fn service(&mut self, r: &v1::Service) {
        let Some(spec) = &r.spec else { return };
        self.unique("spec.ports", spec.ports.iter().map(|p| p.name.as_str()));
        for (i, p) in spec.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            if p.port == 0 || p.port > 65535 {
                self.err(
                    format!("{path}.port"),
                    format!("{} is outside 1..65535", p.port),
                );
            }
            if p.target_port > 65535 {
                self.err(
                    format!("{path}.targetPort"),
                    format!("{} is outside 1..65535", p.target_port),
                );
            }
            if !PROTOCOLS.contains(&p.protocol.as_str()) {
                self.err(
                    format!("{path}.protocol"),
                    format!("{:?} is not one of {}", p.protocol, PROTOCOLS.join(", ")),
                );
            }
        }
        self.unique("spec.subsets", spec.subsets.iter().map(|s| s.name.as_str()));
        for (i, s) in spec.subsets.iter().enumerate() {
            let path = format!("spec.subsets[{i}]");
            if s.name.is_empty() {
                self.err(format!("{path}.name"), "required");
            } else {
                self.dns_label(&format!("{path}.name"), &s.name);
            }
            if s.labels.is_empty() {
                self.err(
                    format!("{path}.labels"),
                    "a subset selects by at least one label",
                );
            }
        }
        if !spec.service_account.is_empty() {
            self.dns_label("spec.serviceAccount", &spec.service_account);
        }
    }

    /// `spec.service`: required, and an existing Service.
    fn target_service(&mut self, service: &str, services: &Services) {
        if service.is_empty() {
            self.err("spec.service", "required");
        } else {
            self.service_ref("spec", service, None, services);
        }
    }

    fn route(&mut self, r: &v1::Route, services: &Services) {
        let Some(spec) = &r.spec else {
            self.err("spec", "required");
            return;
        };
        self.target_service(&spec.service, services);
        if spec.rules.is_empty() {
            self.err("spec.rules", "at least one rule is required");
        }
        self.unique("spec.rules", spec.rules.iter().map(|r| r.name.as_str()));
        for (i, rule) in spec.rules.iter().enumerate() {
            self.rule(&format!("spec.rules[{i}]"), rule, &spec.service, services);
        }
    }

    fn rule(&mut self, path: &str, rule: &v1::RouteRule, own: &str, services: &Services) {
        if rule.name.is_empty() {
            self.err(format!("{path}.name"), "required");
        }
        if let Some(m) = &rule.r#match {
            self.route_match(&format!("{path}.match"), m);
        }
        if rule.backends.is_empty() {
            self.err(
                format!("{path}.backends"),
                "at least one backend is required",
            );
        } else {
            let sum: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
            if sum != 100 {
                self.err(
                    format!("{path}.backends"),
                    format!("weights sum to {sum}, must sum to 100"),
                );
            }
        }
        for (j, b) in rule.backends.iter().enumerate() {
            let bpath = format!("{path}.backends[{j}]");
            let service = if b.service.is_empty() {
                own
            } else {
                &b.service
            };
            let subset_path = format!("{bpath}.subset");
            if !service.is_empty() {
                self.service_ref(&bpath, service, Some((&subset_path, &b.subset)), services);
            }
        }
        self.duration(&format!("{path}.timeout"), &rule.timeout, false);
        if let Some(r) = &rule.retries {
            let rpath = format!("{path}.retries");
            if !(1..=10).contains(&r.attempts) {
                self.err(
                    format!("{rpath}.attempts"),
                    format!("{} is outside 1..10", r.attempts),
                );
            }
            self.duration(&format!("{rpath}.perTryTimeout"), &r.per_try_timeout, false);
            for (k, on) in r.retry_on.iter().enumerate() {
                if !RETRY_ON.contains(&on.as_str()) {
                    self.err(
                        format!("{rpath}.retryOn[{k}]"),
                        format!("{on:?} is not one of {}", RETRY_ON.join(", ")),
                    );
                }
            }
            self.percent(&format!("{rpath}.budgetPercent"), r.budget_percent);
        }
        if let Some(f) = &rule.fault {
            if let Some(d) = &f.delay {
                let dpath = format!("{path}.fault.delay");
                self.duration(&format!("{dpath}.fixedDelay"), &d.fixed_delay, true);
                self.percent(&format!("{dpath}.percent"), d.percent);
            }
            if let Some(a) = &f.abort {
                let apath = format!("{path}.fault.abort");
                if !(200..=599).contains(&a.http_status) {
                    self.err(
                        format!("{apath}.httpStatus"),
                        format!("{} is outside 200..599", a.http_status),
                    );
                }
                self.percent(&format!("{apath}.percent"), a.percent);
            }
        }
        if let Some(m) = &rule.mirror {
            let mpath = format!("{path}.mirror");
            let service = if m.service.is_empty() {
                own
            } else {
                &m.service
            };
            let subset_path = format!("{mpath}.subset");
            self.service_ref(&mpath, service, Some((&subset_path, &m.subset)), services);
            self.percent(&format!("{mpath}.percent"), m.percent);
        }
    }

    fn route_match(&mut self, path: &str, m: &v1::RouteMatch) {
        if let Some(p) = &m.path {
            let ppath = format!("{path}.path");
            let set = [&p.exact, &p.prefix, &p.regex]
                .iter()
                .filter(|s| !s.is_empty())
                .count();
            if set != 1 {
                self.err(&ppath, "set exactly one of exact, prefix, regex");
            }
            for (field, value) in [("exact", &p.exact), ("prefix", &p.prefix)] {
                if !value.is_empty() && !value.starts_with('/') {
                    self.err(format!("{ppath}.{field}"), "must start with '/'");
                }
            }
            if !p.regex.is_empty() {
                self.regex(&format!("{ppath}.regex"), &p.regex);
            }
        }
        self.methods(&format!("{path}.methods"), &m.methods);
        for (i, h) in m.headers.iter().enumerate() {
            let hpath = format!("{path}.headers[{i}]");
            let token = !h.name.is_empty()
                && h.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                self.err(format!("{hpath}.name"), "not a valid header name");
            }
            let set = usize::from(!h.exact.is_empty())
                + usize::from(!h.regex.is_empty())
                + usize::from(h.present);
            if set != 1 {
                self.err(&hpath, "set exactly one of exact, regex, present");
            }
            if !h.regex.is_empty() {
                self.regex(&format!("{hpath}.regex"), &h.regex);
            }
        }
    }

    fn canary(&mut self, r: &v1::Canary, services: &Services) {
        let Some(spec) = &r.spec else {
            self.err("spec", "required");
            return;
        };
        if spec.service.is_empty() {
            self.err("spec.service", "required");
        } else {
            for (field, subset) in [
                ("stableSubset", &spec.stable_subset),
                ("canarySubset", &spec.canary_subset),
            ] {
                if subset.is_empty() {
                    self.err(format!("spec.{field}"), "required");
                } else {
                    let p = format!("spec.{field}");
                    self.service_ref("spec", &spec.service, Some((&p, subset)), services);
                }
            }
        }
        if !spec.stable_subset.is_empty() && spec.stable_subset == spec.canary_subset {
            self.err("spec.canarySubset", "must differ from stableSubset");
        }
        if spec.steps.is_empty() {
            self.err("spec.steps", "at least one step is required");
        }
        let mut last = 0;
        for (i, &s) in spec.steps.iter().enumerate() {
            if !(1..=100).contains(&s) {
                self.err(format!("spec.steps[{i}]"), format!("{s} is outside 1..100"));
            } else if s <= last {
                self.err(
                    format!("spec.steps[{i}]"),
                    format!("{s} does not increase on the step before ({last})"),
                );
            }
            last = s;
        }
        if let Some(d) = self.duration("spec.interval", &spec.interval, true)
            && d.is_zero()
        {
            self.err("spec.interval", "must be longer than 0s");
        }
        if let Some(c) = &spec.success_criteria {
            self.percent("spec.successCriteria.minSuccessRate", c.min_success_rate);
            self.duration(
                "spec.successCriteria.maxP99Latency",
                &c.max_p99_latency,
                false,
            );
        }
    }

    fn authorization_policy(&mut self, r: &v1::AuthorizationPolicy, services: &Services) {
        let Some(spec) = &r.spec else {
            self.err("spec", "required");
            return;
        };
        self.target_service(&spec.service, services);
        for (list, rules) in [("allow", &spec.allow), ("deny", &spec.deny)] {
            for (i, rule) in rules.iter().enumerate() {
                let path = format!("spec.{list}[{i}]");
                for (j, s) in rule.sources.iter().enumerate() {
                    if let Err(reason) = check_spiffe_pattern(s) {
                        self.err(format!("{path}.sources[{j}]"), reason);
                    }
                }
                self.methods(&format!("{path}.methods"), &rule.methods);
                for (j, p) in rule.paths.iter().enumerate() {
                    let star = p.find('*');
                    if !p.starts_with('/') {
                        self.err(format!("{path}.paths[{j}]"), "must start with '/'");
                    } else if star.is_some_and(|at| at != p.len() - 1) {
                        self.err(
                            format!("{path}.paths[{j}]"),
                            "'*' is only allowed at the end (prefix match)",
                        );
                    }
                }
            }
        }
    }
}

/// A SPIFFE id pattern: a SPIFFE id whose path segments may each be `*` (any one segment).
pub fn check_spiffe_pattern(pattern: &str) -> Result<(), String> {
    let Some(rest) = pattern.strip_prefix("spiffe://") else {
        return Err(format!(
            "{pattern:?} is not a SPIFFE id pattern: must start with \"spiffe://\""
        ));
    };
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if td.contains('*') {
        return Err(format!(
            "{pattern:?}: the trust domain cannot be a wildcard"
        ));
    }
    let mut concrete = format!("spiffe://{td}");
    if !path.is_empty() {
        for seg in path[1..].split('/') {
            concrete.push('/');
            if seg == "*" {
                concrete.push('x');
            } else if seg.contains('*') {
                return Err(format!(
                    "{pattern:?}: '*' must be a whole path segment (e.g. /sa/*)"
                ));
            } else {
                concrete.push_str(seg);
            }
        }
    }
    SpiffeId::parse(&concrete)
        .map(|_| ())
        .map_err(|e| format!("{pattern:?} is not a SPIFFE id pattern: {e}"))
}

#[cfg(test)]
mod tests;
