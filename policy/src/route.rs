//! Route tables: which rule of a service's Route handles a request, and which weighted
//! backend (service + subset) it goes to.
//!
//! Owns the `Route` shape (one-to-one with `quiver.v1.Route`'s spec), its compilation into a
//! [`RouteTable`] (regexes compiled once, every problem reported with its field path) and the
//! first-match-wins lookup. It must not pick endpoints (that is [`super::balance`]) nor know
//! about sockets or the clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::fault::{Fault, Mirror};
use super::retry::Retries;
use super::{Labels, Subset, opt_duration};
use quiver_api::validate::FieldError;

// ---- the shape (as written in YAML and sent by the control plane) ----

/// How requests to one service are routed: ordered rules, the first match wins
/// (`quiver.v1.RouteSpec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    /// The service whose traffic this route governs.
    pub service: String,
    /// Ordered rules.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

/// One rule: conditions and what to do with the requests that meet them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    /// Unique within the route; names the rule in metrics and access logs.
    pub name: String,
    /// Conditions, all of which must hold; absent means every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<RouteMatch>,
    /// Weighted backends; weights sum to 100. Empty means the route's service, all workloads.
    #[serde(default)]
    pub backends: Vec<WeightedBackend>,
    /// Overall request timeout (all attempts); absent means the mesh default.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// Conditions on a request (`quiver.v1.RouteMatch`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// HTTP methods, any of (case-sensitive, as HTTP says).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// Exactly one of `exact`, `prefix`, `regex` (`quiver.v1.PathMatch`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Plain string prefix: `/api` matches `/api`, `/api/x` and `/apix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Regular expression matched against the whole path (implicitly anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A header condition: `name` and exactly one of `exact`, `regex`, `present`
/// (`quiver.v1.HeaderMatch`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name, case-insensitive.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Matched against the whole value (implicitly anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub present: bool,
}

/// A share of a rule's traffic (`quiver.v1.WeightedBackend`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeightedBackend {
    /// Target service; empty means the route's service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// Subset of that service; empty means all its workloads.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subset: String,
    /// 0..100.
    #[serde(default)]
    pub weight: u32,
}

// ---- the compiled form ----

/// Where a request goes: a service and the labels its endpoints must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub service: String,
    /// Subset name; empty means every workload of the service.
    pub subset: String,
    /// The subset's label selector (empty for "every workload").
    pub selector: Labels,
}

impl Backend {
    /// `service` or `service/subset`, as written in access logs.
    pub fn label(&self) -> String {
        if self.subset.is_empty() {
            self.service.clone()
        } else {
            format!("{}/{}", self.service, self.subset)
        }
    }
}

#[derive(Debug)]
enum PathCond {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum HeaderCond {
    Exact(String),
    Regex(Regex),
    Present,
}

/// A rule ready to match: the original rule (for its actions) plus compiled conditions.
#[derive(Debug)]
pub struct CompiledRule {
    /// The rule as configured (timeout, retries, fault, mirror are read from here).
    pub rule: RouteRule,
    path: Option<PathCond>,
    headers: Vec<(http::HeaderName, HeaderCond)>,
    /// Backends with their cumulative weight bound: a roll `r` in 0..100 takes the first
    /// backend whose bound is greater than `r`.
    backends: Vec<(u32, Arc<Backend>)>,
    mirror: Option<Arc<Backend>>,
}

/// What the matcher needs of a request: nothing it could mutate, nothing from I/O.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The URI path, without the query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// One service's compiled Route. Immutable: a config change builds a new table and swaps the
/// `Arc`; a request that already holds a [`CompiledRule`] keeps it until it ends.
#[derive(Debug)]
pub struct RouteTable {
    pub service: String,
    rules: Vec<Arc<CompiledRule>>,
}

/// The subsets of every service a route may name, by service name.
pub type SubsetIndex = BTreeMap<String, Vec<Subset>>;

impl RouteTable {
    /// Compile `route`; `at` is its field path (e.g. `routes[0]`), prefixed to every error.
    /// `subsets` resolves backend and mirror subset names to label selectors.
    pub fn compile(
        route: &Route,
        at: &str,
        subsets: &SubsetIndex,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, rule) in route.rules.iter().enumerate() {
            let path = format!("{at}.rules[{i}]");
            if rule.name.is_empty() {
                errors.push(err(format!("{path}.name"), "required"));
            } else if !names.insert(rule.name.as_str()) {
                errors.push(err(
                    format!("{path}.name"),
                    format!("duplicate name {:?}", rule.name),
                ));
            }
            if let Some(rule) = compile_rule(rule, &route.service, &path, subsets, &mut errors) {
                rules.push(Arc::new(rule));
            }
        }
        if errors.is_empty() {
            Ok(Self {
                service: route.service.clone(),
                rules,
            })
        } else {
            Err(errors)
        }
    }

    /// The implicit table of a service without a Route: one rule named `default` sending
    /// everything to all its workloads.
    pub fn default_for(service: &str) -> Self {
        Self {
            service: service.to_string(),
            rules: vec![Arc::new(CompiledRule::default_for(service))],
        }
    }

    /// The first rule whose conditions all hold, or `None` (the caller answers `no-route`).
    pub fn find(&self, req: &RequestHead<'_>) -> Option<&Arc<CompiledRule>> {
        self.rules.iter().find(|r| r.matches(req))
    }

    /// The rules in order.
    pub fn rules(&self) -> &[Arc<CompiledRule>] {
        &self.rules
    }
}

impl CompiledRule {
    /// The implicit rule `default`: every request, all of `service`'s workloads, no retries,
    /// faults or mirror.
    pub fn default_for(service: &str) -> Self {
        let rule = RouteRule {
            name: "default".into(),
            r#match: None,
            backends: Vec::new(),
            timeout: None,
            retries: None,
            fault: None,
            mirror: None,
        };
        Self {
            rule,
            path: None,
            headers: Vec::new(),
            backends: vec![(100, Arc::new(whole_service(service)))],
            mirror: None,
        }
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.rule.name
    }

    /// Whether every condition of this rule holds for `req`.
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        let Some(m) = &self.rule.r#match else {
            return true;
        };
        if !m.methods.is_empty() && !m.methods.iter().any(|x| x == req.method) {
            return false;
        }
        let path_ok = match &self.path {
            None => true,
            Some(PathCond::Exact(p)) => req.path == p,
            Some(PathCond::Prefix(p)) => req.path.starts_with(p.as_str()),
            Some(PathCond::Regex(re)) => re.is_match(req.path),
        };
        path_ok
            && self.headers.iter().all(|(name, cond)| {
                let mut values = req.headers.get_all(name).iter();
                match cond {
                    HeaderCond::Present => values.next().is_some(),
                    HeaderCond::Exact(want) => values.any(|v| v.as_bytes() == want.as_bytes()),
                    HeaderCond::Regex(re) => {
                        values.any(|v| v.to_str().is_ok_and(|v| re.is_match(v)))
                    }
                }
            })
    }

    /// The backend for a roll in `0..100` (taken modulo 100): exact and deterministic, so
    /// the caller supplies the randomness. `None` only for a rule without backends, which
    /// compilation never produces.
    pub fn pick_backend(&self, roll: u32) -> Option<&Arc<Backend>> {
        let r = roll % 100;
        self.backends
            .iter()
            .find(|(bound, _)| r < *bound)
            .or(self.backends.last())
            .map(|(_, b)| b)
    }

    /// The mirror target, if the rule mirrors.
    pub fn mirror_backend(&self) -> Option<&Arc<Backend>> {
        self.mirror.as_ref()
    }
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        path: field.into(),
        reason: reason.into(),
    }
}

fn whole_service(service: &str) -> Backend {
    Backend {
        service: service.to_string(),
        subset: String::new(),
        selector: Labels::new(),
    }
}

/// `^(?:re)$`: regexes in routes match the whole path or value, never a substring.
fn anchored(re: &str, field: String, errors: &mut Vec<FieldError>) -> Option<Regex> {
    match Regex::new(&format!("^(?:{re})$")) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(err(field, format!("regex does not compile: {e}")));
            None
        }
    }
}

fn resolve(
    service: &str,
    subset: &str,
    field: &str,
    subsets: &SubsetIndex,
    errors: &mut Vec<FieldError>,
) -> Option<Backend> {
    if subset.is_empty() {
        return Some(whole_service(service));
    }
    let found = subsets
        .get(service)
        .and_then(|list| list.iter().find(|s| s.name == subset));
    match found {
        Some(s) => Some(Backend {
            service: service.to_string(),
            subset: subset.to_string(),
            selector: s.labels.clone(),
        }),
        None => {
            errors.push(err(
                format!("{field}.subset"),
                format!("service {service:?} has no subset {subset:?}"),
            ));
            None
        }
    }
}

fn compile_rule(
    rule: &RouteRule,
    own: &str,
    at: &str,
    subsets: &SubsetIndex,
    errors: &mut Vec<FieldError>,
) -> Option<CompiledRule> {
    let before = errors.len();
    let mut path = None;
    let mut headers = Vec::new();
    if let Some(m) = &rule.r#match {
        let mat = format!("{at}.match");
        if let Some(p) = &m.path {
            let ppath = format!("{mat}.path");
            let set = [&p.exact, &p.prefix, &p.regex]
                .iter()
                .filter(|s| s.is_some())
                .count();
            if set != 1 {
                errors.push(err(&ppath, "set exactly one of exact, prefix, regex"));
            }
            for (field, value) in [("exact", &p.exact), ("prefix", &p.prefix)] {
                if value.as_ref().is_some_and(|v| !v.starts_with('/')) {
                    errors.push(err(format!("{ppath}.{field}"), "must start with '/'"));
                }
            }
            path = if let Some(re) = &p.regex {
                anchored(re, format!("{ppath}.regex"), errors).map(PathCond::Regex)
            } else if let Some(e) = &p.exact {
                Some(PathCond::Exact(e.clone()))
            } else {
                p.prefix.clone().map(PathCond::Prefix)
            };
        }
        super::check_methods(&m.methods, &format!("{mat}.methods"), errors);
        for (i, h) in m.headers.iter().enumerate() {
            let hpath = format!("{mat}.headers[{i}]");
            let name = match http::HeaderName::from_bytes(h.name.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push(err(format!("{hpath}.name"), "not a valid header name"));
                    None
                }
            };
            let set = usize::from(h.exact.is_some())
                + usize::from(h.regex.is_some())
                + usize::from(h.present);
            if set != 1 {
                errors.push(err(&hpath, "set exactly one of exact, regex, present"));
            }
            let cond = if let Some(re) = &h.regex {
                anchored(re, format!("{hpath}.regex"), errors).map(HeaderCond::Regex)
            } else if let Some(v) = &h.exact {
                Some(HeaderCond::Exact(v.clone()))
            } else {
                Some(HeaderCond::Present)
            };
            if let (Some(n), Some(c)) = (name, cond) {
                headers.push((n, c));
            }
        }
    }
    let mut backends = Vec::new();
    if rule.backends.is_empty() {
        backends.push((100, Arc::new(whole_service(own))));
    } else {
        let mut bound = 0u32;
        for (j, b) in rule.backends.iter().enumerate() {
            let bpath = format!("{at}.backends[{j}]");
            if b.weight > 100 {
                errors.push(err(
                    format!("{bpath}.weight"),
                    format!("{} is outside 0..100", b.weight),
                ));
            }
            let service = if b.service.is_empty() {
                own
            } else {
                &b.service
            };
            bound = bound.saturating_add(b.weight);
            if let Some(backend) = resolve(service, &b.subset, &bpath, subsets, errors) {
                backends.push((bound, Arc::new(backend)));
            }
        }
        if bound != 100 {
            errors.push(err(
                format!("{at}.backends"),
                format!("weights sum to {bound}, must sum to 100"),
            ));
        }
    }
    if let Some(r) = &rule.retries {
        r.check(&format!("{at}.retries"), errors);
    }
    if let Some(f) = &rule.fault {
        f.check(&format!("{at}.fault"), errors);
    }
    let mut mirror = None;
    if let Some(m) = &rule.mirror {
        let mpath = format!("{at}.mirror");
        m.check(&mpath, errors);
        let service = if m.service.is_empty() {
            own
        } else {
            &m.service
        };
        mirror = resolve(service, &m.subset, &mpath, subsets, errors).map(Arc::new);
    }
    (errors.len() == before).then(|| CompiledRule {
        rule: rule.clone(),
        path,
        headers,
        backends,
        mirror,
    })
}

#[cfg(test)]
mod tests;
