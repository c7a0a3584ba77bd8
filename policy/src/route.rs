//! Route tables: which rule of a service's Route handles a request, and which weighted
//! backend (service + subset) it goes to.
//!
//! Owns the compilation of a `quiver.v1.RouteSpec` into a [`RouteTable`] (regexes compiled
//! once, durations parsed, backends resolved to label selectors, every problem reported with
//! its field path) and the first-match-wins lookup. It must not pick endpoints (that is [`super::balance`]) nor know
//! about sockets or the clock.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use quiver_api::v1;
use quiver_api::validate::FieldError;
use regex::Regex;

use crate::Labels;
use crate::fault::{Fault, Mirror};
use crate::fields::{self, err};
use crate::filters::{HeaderEdits, Redirect, Rewrite};
use crate::retry::Retries;
use crate::services::{Backend, Services};

mod query;
use query::QueryCond;

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

/// A rule ready to match and act on: its conditions compiled, its actions parsed.
#[derive(Debug)]
pub struct CompiledRule {
    name: String,
    /// HTTP methods, any of; empty: any method.
    methods: Vec<String>,
    path: Option<PathCond>,
    headers: Vec<(http::HeaderName, HeaderCond)>,
    /// Query parameters (decoded name) and their conditions, all of which must hold.
    query: Vec<(String, QueryCond)>,
    /// Backends with their cumulative weight bound: a roll `r` in 0..100 takes the first
    /// backend whose bound is greater than `r`.
    backends: Vec<(u32, Arc<Backend>)>,
    /// Overall request timeout (all attempts); `None` means the mesh default.
    pub timeout: Option<Duration>,
    pub retries: Option<Retries>,
    pub fault: Option<Fault>,
    pub mirror: Option<Mirror>,
    /// Header edits on the request sent upstream (every attempt alike).
    pub request_headers: Option<HeaderEdits>,
    /// Header edits on the response going back to the caller.
    pub response_headers: Option<HeaderEdits>,
    /// Answer with this redirect instead of forwarding.
    pub redirect: Option<Redirect>,
    /// Host and path changes before sending.
    pub rewrite: Option<Rewrite>,
}

/// What the matcher needs of a request: nothing it could mutate, nothing from I/O.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The URI path, without the query.
    pub path: &'a str,
    /// The URI query, without the `?` (as sent: percent-encoded).
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// One service's compiled Route. Immutable: a config change builds a new table and swaps the
/// `Arc`; a request that already holds a [`CompiledRule`] keeps it until it ends.
#[derive(Debug)]
pub struct RouteTable {
    pub service: String,
    rules: Vec<Arc<CompiledRule>>,
}

impl RouteTable {
    /// Compile `route`; `at` is its field path (`spec` in the API, `routes[0]` in a proxy),
    /// prefixed to every error. `services` resolves backend and mirror references.
    pub fn compile(
        route: &v1::RouteSpec,
        at: &str,
        services: &Services<'_>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        if route.service.is_empty() {
            errors.push(err(format!("{at}.service"), "required"));
        } else {
            services.check(&mut errors, at, &route.service);
        }
        if route.rules.is_empty() {
            errors.push(err(format!("{at}.rules"), "at least one rule is required"));
        }
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
            if let Some(rule) = compile_rule(rule, &route.service, &path, services, &mut errors) {
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
        Self {
            name: "default".into(),
            methods: Vec::new(),
            path: None,
            headers: Vec::new(),
            query: Vec::new(),
            backends: vec![(100, Arc::new(whole_service(service)))],
            timeout: None,
            retries: None,
            fault: None,
            mirror: None,
            request_headers: None,
            response_headers: None,
            redirect: None,
            rewrite: None,
        }
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether every condition of this rule holds for `req`.
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|x| x == req.method) {
            return false;
        }
        let path_ok = match &self.path {
            None => true,
            Some(PathCond::Exact(p)) => req.path == p,
            Some(PathCond::Prefix(p)) => req.path.starts_with(p.as_str()),
            Some(PathCond::Regex(re)) => re.is_match(req.path),
        };
        path_ok
            && self
                .query
                .iter()
                .all(|(name, cond)| cond.holds(query::first_value(req.query, name)))
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
}

fn whole_service(service: &str) -> Backend {
    Backend {
        service: service.to_string(),
        subset: String::new(),
        selector: Labels::new(),
    }
}

/// The path condition: exactly one of `exact`, `prefix` (both starting with '/'), `regex`.
fn path_cond(p: &v1::PathMatch, at: &str, errors: &mut Vec<FieldError>) -> Option<PathCond> {
    let set = [&p.exact, &p.prefix, &p.regex]
        .iter()
        .filter(|s| !s.is_empty())
        .count();
    if set != 1 {
        errors.push(err(at, "set exactly one of exact, prefix, regex"));
    }
    for (field, value) in [("exact", &p.exact), ("prefix", &p.prefix)] {
        if !value.is_empty() && !value.starts_with('/') {
            errors.push(err(format!("{at}.{field}"), "must start with '/'"));
        }
    }
    if !p.regex.is_empty() {
        fields::anchored_regex(errors, &format!("{at}.regex"), &p.regex).map(PathCond::Regex)
    } else if !p.exact.is_empty() {
        Some(PathCond::Exact(p.exact.clone()))
    } else if !p.prefix.is_empty() {
        Some(PathCond::Prefix(p.prefix.clone()))
    } else {
        None
    }
}

/// A header condition: a valid name and exactly one of `exact`, `regex`, `present`.
fn header_cond(
    h: &v1::HeaderMatch,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<(http::HeaderName, HeaderCond)> {
    let name = http::HeaderName::from_bytes(h.name.as_bytes());
    if name.is_err() {
        errors.push(err(format!("{at}.name"), "not a valid header name"));
    }
    let set = usize::from(!h.exact.is_empty())
        + usize::from(!h.regex.is_empty())
        + usize::from(h.present);
    if set != 1 {
        errors.push(err(at, "set exactly one of exact, regex, present"));
    }
    let cond = if !h.regex.is_empty() {
        fields::anchored_regex(errors, &format!("{at}.regex"), &h.regex).map(HeaderCond::Regex)
    } else if !h.exact.is_empty() {
        Some(HeaderCond::Exact(h.exact.clone()))
    } else {
        Some(HeaderCond::Present)
    };
    Some((name.ok()?, cond?))
}

/// Weighted backends, each 0..100, summing to exactly 100; none means the route's service.
fn backends(
    rule: &v1::RouteRule,
    own: &str,
    at: &str,
    services: &Services<'_>,
    errors: &mut Vec<FieldError>,
) -> Vec<(u32, Arc<Backend>)> {
    if rule.backends.is_empty() {
        return vec![(100, Arc::new(whole_service(own)))];
    }
    let mut out = Vec::new();
    let mut bound = 0u32;
    for (j, b) in rule.backends.iter().enumerate() {
        let path = format!("{at}.backends[{j}]");
        if b.weight > 100 {
            errors.push(err(
                format!("{path}.weight"),
                format!("{} is outside 0..100", b.weight),
            ));
        }
        let service = if b.service.is_empty() {
            own
        } else {
            &b.service
        };
        bound = bound.saturating_add(b.weight);
        if let Some(backend) = services.resolve(errors, &path, service, &b.subset) {
            out.push((bound, Arc::new(backend)));
        }
    }
    if bound != 100 {
        errors.push(err(
            format!("{at}.backends"),
            format!("weights sum to {bound}, must sum to 100"),
        ));
    }
    out
}

fn compile_rule(
    rule: &v1::RouteRule,
    own: &str,
    at: &str,
    services: &Services<'_>,
    errors: &mut Vec<FieldError>,
) -> Option<CompiledRule> {
    let before = errors.len();
    let mut path = None;
    let mut headers = Vec::new();
    let mut methods = Vec::new();
    let mut query = Vec::new();
    if let Some(m) = &rule.r#match {
        let at = format!("{at}.match");
        if let Some(p) = &m.path {
            path = path_cond(p, &format!("{at}.path"), errors);
        }
        fields::methods(errors, &format!("{at}.methods"), &m.methods);
        methods.clone_from(&m.methods);
        for (i, h) in m.headers.iter().enumerate() {
            headers.extend(header_cond(h, &format!("{at}.headers[{i}]"), errors));
        }
        for (i, q) in m.query_params.iter().enumerate() {
            query.extend(query::compile(q, &format!("{at}.queryParams[{i}]"), errors));
        }
    }
    let prefix = rule
        .r#match
        .as_ref()
        .and_then(|m| m.path.as_ref())
        .filter(|p| !p.prefix.is_empty() && p.exact.is_empty() && p.regex.is_empty())
        .map(|p| p.prefix.as_str());
    let redirect = rule
        .redirect
        .as_ref()
        .and_then(|r| Redirect::compile(r, &format!("{at}.redirect"), prefix, errors));
    if rule.redirect.is_some() {
        redirect_alone(rule, at, errors);
    }
    let rewrite = rule
        .rewrite
        .as_ref()
        .and_then(|r| Rewrite::compile(r, &format!("{at}.rewrite"), prefix, errors));
    let request_headers = rule
        .request_headers
        .as_ref()
        .and_then(|m| HeaderEdits::compile(m, &format!("{at}.requestHeaders"), errors));
    let response_headers = rule
        .response_headers
        .as_ref()
        .and_then(|m| HeaderEdits::compile(m, &format!("{at}.responseHeaders"), errors));
    let backends = backends(rule, own, at, services, errors);
    let timeout = fields::duration(errors, &format!("{at}.timeout"), &rule.timeout, false);
    let retries = rule
        .retries
        .as_ref()
        .and_then(|r| Retries::compile(r, &format!("{at}.retries"), errors));
    let fault = rule
        .fault
        .as_ref()
        .and_then(|f| Fault::compile(f, &format!("{at}.fault"), errors));
    let mirror = rule
        .mirror
        .as_ref()
        .and_then(|m| Mirror::compile(m, own, &format!("{at}.mirror"), services, errors));
    (errors.len() == before).then(|| CompiledRule {
        name: rule.name.clone(),
        methods,
        path,
        headers,
        query,
        backends,
        timeout,
        retries,
        fault,
        mirror,
        request_headers,
        response_headers,
        redirect,
        rewrite,
    })
}

/// A redirect is answered by the proxy itself: nothing goes upstream, so the fields about
/// sending are refused next to it, each by name.
fn redirect_alone(rule: &v1::RouteRule, at: &str, errors: &mut Vec<FieldError>) {
    let set = [
        ("backends", !rule.backends.is_empty()),
        ("rewrite", rule.rewrite.is_some()),
        ("requestHeaders", rule.request_headers.is_some()),
        ("mirror", rule.mirror.is_some()),
        ("retries", rule.retries.is_some()),
        ("fault", rule.fault.is_some()),
        ("timeout", !rule.timeout.is_empty()),
    ];
    for (field, present) in set {
        if present {
            errors.push(err(
                format!("{at}.{field}"),
                format!(
                    "{field} and redirect cannot both be set: a redirect is answered by the \
                     proxy and nothing is sent upstream"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests;
