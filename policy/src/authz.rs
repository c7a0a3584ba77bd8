//! Inbound authorization: may this caller (its SPIFFE id) call this method and path of
//! this service?
//!
//! Owns the `AuthorizationPolicy` and `MeshConfig` shapes (`quiver.v1`), their compilation
//! (patterns checked once, errors with field paths) and the evaluation: deny rules first,
//! then allow rules, then the mesh default. It must not read certificates or answer
//! requests: the data path passes the peer's verified SPIFFE id and answers a
//! [`Verdict::Denied`] with 403 and `quiver-error: denied` (or refuses a CONNECT).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use quiver_api::SpiffeId;
use serde::{Deserialize, Serialize};

use super::opt_duration;
use quiver_api::validate::FieldError;

/// Who may call a service (`quiver.v1.AuthorizationPolicy`: `metadata.name` + spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// The policy's name, quoted in verdicts and access logs.
    pub name: String,
    /// The service this policy protects.
    pub service: String,
    #[serde(default)]
    pub allow: Vec<AuthorizationRule>,
    #[serde(default)]
    pub deny: Vec<AuthorizationRule>,
}

/// Conditions on a caller; every non-empty list must have a match (`quiver.v1.AuthorizationRule`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// SPIFFE id patterns, any of; a path segment may be `*` (any one segment), e.g.
    /// `spiffe://mesh.local/ns/shop/sa/*`. Empty: any caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// HTTP methods, any of. Empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Paths, any of: exact, or a prefix ending in `*` (`/api/*`). Empty: any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// The decision for requests no policy speaks about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DefaultPolicy {
    #[default]
    Allow,
    Deny,
}

/// Mesh-wide settings the data path uses (`quiver.v1.MeshConfigSpec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfig {
    #[serde(default)]
    pub default_policy: DefaultPolicy,
    /// Request timeout for rules that set none.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_timeout: Option<Duration>,
    /// Certificate lifetime; read by the control plane only, accepted here so a MeshConfig
    /// spec can be pasted whole.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub svid_ttl: Option<Duration>,
    /// Distributed tracing: head sampling and the tail rule.
    #[serde(default, skip_serializing_if = "TracingConfig::is_default")]
    pub tracing: TracingConfig,
}

/// `mesh.tracing` (`quiver.v1.TracingConfig`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingConfig {
    /// Share of traces kept by head sampling, percent (0-100); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_percent: Option<f64>,
    /// Requests at least this slow are kept whatever the sampling said; default 1s.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub slow_threshold: Option<Duration>,
}

// The percent is checked to be a finite number when the config is compiled.
impl Eq for TracingConfig {}

impl TracingConfig {
    pub const DEFAULT_PERCENT: f64 = 1.0;
    pub const DEFAULT_SLOW: Duration = Duration::from_secs(1);

    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The head-sampling rate, 0-1.
    pub fn rate(&self) -> f64 {
        self.sampling_percent.unwrap_or(Self::DEFAULT_PERCENT) / 100.0
    }

    pub fn slow(&self) -> Duration {
        self.slow_threshold.unwrap_or(Self::DEFAULT_SLOW)
    }

    /// Problems, with `at` as the field prefix (e.g. `mesh.tracing`).
    pub fn check(&self, at: &str) -> Vec<quiver_api::validate::FieldError> {
        match self.sampling_percent {
            Some(p) if !(0.0..=100.0).contains(&p) || !p.is_finite() => {
                vec![quiver_api::validate::FieldError {
                    path: format!("{at}.samplingPercent"),
                    reason: format!("{p} is not a percentage (0-100)"),
                }]
            }
            _ => Vec::new(),
        }
    }
}

/// Why a request was allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A rule matched: `policy.allow[i]` or `policy.deny[i]`.
    Rule(Arc<str>),
    /// The service has allow rules and none matched.
    NoAllowMatched,
    /// No policy's rules decided; the mesh default did.
    MeshDefault,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule(r) => f.write_str(r),
            Reason::NoAllowMatched => f.write_str("no allow rule matched"),
            Reason::MeshDefault => f.write_str("mesh default"),
        }
    }
}

/// The authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(Reason),
    Denied(Reason),
}

impl Verdict {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SourcePattern {
    trust_domain: String,
    /// `None` is `*`: any one segment.
    segments: Vec<Option<String>>,
}

impl SourcePattern {
    fn parse(p: &str) -> Result<Self, String> {
        let rest = p.strip_prefix("spiffe://").ok_or_else(|| {
            format!("{p:?} is not a SPIFFE id pattern: must start with \"spiffe://\"")
        })?;
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if td.is_empty() {
            return Err(format!("{p:?}: the trust domain is empty"));
        }
        if td.contains('*') {
            return Err(format!("{p:?}: the trust domain cannot be a wildcard"));
        }
        let mut segments = Vec::new();
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() {
                    return Err(format!("{p:?}: empty path segment"));
                } else if seg == "*" {
                    segments.push(None);
                } else if seg.contains('*') {
                    return Err(format!(
                        "{p:?}: '*' must be a whole path segment (e.g. /sa/*)"
                    ));
                } else {
                    segments.push(Some(seg.to_string()));
                }
            }
        }
        Ok(Self {
            trust_domain: td.to_string(),
            segments,
        })
    }

    fn matches(&self, id: &SpiffeId) -> bool {
        if id.trust_domain() != self.trust_domain {
            return false;
        }
        let path = id.path();
        let segs: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.trim_start_matches('/').split('/').collect()
        };
        segs.len() == self.segments.len()
            && segs
                .iter()
                .zip(&self.segments)
                .all(|(s, p)| p.as_deref().is_none_or(|p| p == *s))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathPattern {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone)]
struct Rule {
    label: Arc<str>,
    sources: Vec<SourcePattern>,
    methods: Vec<String>,
    paths: Vec<PathPattern>,
}

impl Rule {
    fn source_matches(&self, source: Option<&SpiffeId>) -> bool {
        self.sources.is_empty()
            || source.is_some_and(|id| self.sources.iter().any(|p| p.matches(id)))
    }

    fn is_http_only(&self) -> bool {
        !self.methods.is_empty() || !self.paths.is_empty()
    }

    fn matches(&self, source: Option<&SpiffeId>, method: &str, path: &str) -> bool {
        self.source_matches(source)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && (self.paths.is_empty()
                || self.paths.iter().any(|p| match p {
                    PathPattern::Exact(e) => path == e,
                    PathPattern::Prefix(pre) => path.starts_with(pre.as_str()),
                }))
    }
}

#[derive(Debug, Clone, Default)]
struct ServiceRules {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

/// Every policy compiled and grouped by service, with the mesh default.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    services: HashMap<String, ServiceRules>,
    default: DefaultPolicy,
}

impl Authorizer {
    /// Compile `policies`; `at` is their list's field path (e.g. `authorization`).
    pub fn compile(
        policies: &[AuthorizationPolicy],
        mesh: &MeshConfig,
        at: &str,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut services: HashMap<String, ServiceRules> = HashMap::new();
        for (i, p) in policies.iter().enumerate() {
            let ppath = format!("{at}[{i}]");
            if p.name.is_empty() {
                errors.push(err(format!("{ppath}.name"), "required"));
            }
            if p.service.is_empty() {
                errors.push(err(format!("{ppath}.service"), "required"));
            }
            let entry = services.entry(p.service.clone()).or_default();
            for (list, rules, out) in [
                ("allow", &p.allow, &mut entry.allow),
                ("deny", &p.deny, &mut entry.deny),
            ] {
                for (j, r) in rules.iter().enumerate() {
                    let rpath = format!("{ppath}.{list}[{j}]");
                    let label = Arc::from(format!("{}.{list}[{j}]", p.name));
                    if let Some(rule) = compile_rule(r, label, &rpath, &mut errors) {
                        out.push(rule);
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(Self {
                services,
                default: mesh.default_policy,
            })
        } else {
            Err(errors)
        }
    }

    fn mesh_default(&self) -> Verdict {
        match self.default {
            DefaultPolicy::Allow => Verdict::Allowed(Reason::MeshDefault),
            DefaultPolicy::Deny => Verdict::Denied(Reason::MeshDefault),
        }
    }

    /// Decide an HTTP request to `service` from `source` (the caller's verified SPIFFE id;
    /// `None` if it has none, which only rules without `sources` match) for `method` and
    /// `path` (without the query). Deny rules of every policy on the service come first;
    /// then, if the service has any allow rule, one must match; otherwise the mesh default
    /// decides.
    pub fn evaluate(
        &self,
        service: &str,
        source: Option<&SpiffeId>,
        method: &str,
        path: &str,
    ) -> Verdict {
        let Some(rules) = self.services.get(service) else {
            return self.mesh_default();
        };
        if let Some(r) = rules.deny.iter().find(|r| r.matches(source, method, path)) {
            return Verdict::Denied(Reason::Rule(r.label.clone()));
        }
        if rules.allow.is_empty() {
            return self.mesh_default();
        }
        match rules.allow.iter().find(|r| r.matches(source, method, path)) {
            Some(r) => Verdict::Allowed(Reason::Rule(r.label.clone())),
            None => Verdict::Denied(Reason::NoAllowMatched),
        }
    }

    /// Decide an opaque TCP connection (a CONNECT stream) to `service` from `source`. It has
    /// no method or path, so rules naming methods or paths are read the safe way (as Istio
    /// does): a deny rule ignores them and denies on its sources alone; an allow rule with
    /// them never matches.
    pub fn evaluate_tcp(&self, service: &str, source: Option<&SpiffeId>) -> Verdict {
        let Some(rules) = self.services.get(service) else {
            return self.mesh_default();
        };
        if let Some(r) = rules.deny.iter().find(|r| r.source_matches(source)) {
            return Verdict::Denied(Reason::Rule(r.label.clone()));
        }
        if rules.allow.is_empty() {
            return self.mesh_default();
        }
        let allow = rules
            .allow
            .iter()
            .find(|r| !r.is_http_only() && r.source_matches(source));
        match allow {
            Some(r) => Verdict::Allowed(Reason::Rule(r.label.clone())),
            None => Verdict::Denied(Reason::NoAllowMatched),
        }
    }
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        path: field.into(),
        reason: reason.into(),
    }
}

fn compile_rule(
    r: &AuthorizationRule,
    label: Arc<str>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Rule> {
    let before = errors.len();
    let mut sources = Vec::new();
    for (k, s) in r.sources.iter().enumerate() {
        match SourcePattern::parse(s) {
            Ok(p) => sources.push(p),
            Err(e) => errors.push(err(format!("{at}.sources[{k}]"), e)),
        }
    }
    super::check_methods(&r.methods, &format!("{at}.methods"), errors);
    let mut paths = Vec::new();
    for (k, p) in r.paths.iter().enumerate() {
        let field = format!("{at}.paths[{k}]");
        if !p.starts_with('/') {
            errors.push(err(field, "must start with '/'"));
        } else if let Some(pre) = p.strip_suffix('*') {
            if pre.contains('*') {
                errors.push(err(field, "'*' is only allowed at the end (prefix match)"));
            } else {
                paths.push(PathPattern::Prefix(pre.to_string()));
            }
        } else if p.contains('*') {
            errors.push(err(field, "'*' is only allowed at the end (prefix match)"));
        } else {
            paths.push(PathPattern::Exact(p.clone()));
        }
    }
    (errors.len() == before).then(|| Rule {
        label,
        sources,
        methods: r.methods.clone(),
        paths,
    })
}

#[cfg(test)]
mod tests;
