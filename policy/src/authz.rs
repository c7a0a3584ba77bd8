//! Inbound authorization: may this caller (its SPIFFE id) call this method and path of
//! this service?
//!
//! Owns the compilation of `quiver.v1.AuthorizationPolicySpec` (patterns checked once, errors
//! with field paths) and the evaluation: deny rules first, then the namespace scope (a caller
//! from another namespace needs an allow rule that names it, unless MeshConfig
//! `crossNamespacePolicy: ALLOW`), then allow rules, then the mesh default. It must not read
//! certificates or answer
//! requests: the data path passes the peer's verified SPIFFE id and answers a
//! [`Verdict::Denied`] with 403 and `quiver-error: denied` (or refuses a CONNECT).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use quiver_api::validate::FieldError;
use quiver_api::{SpiffeId, v1};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fields::{self, err};
use crate::mesh::{CrossNamespace, DefaultPolicy};

/// An AuthorizationPolicy's spec with its name (`metadata.name`), quoted in verdicts and
/// access logs. A proxy's static file writes it flat: `name` beside the spec's fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamedPolicy {
    pub name: String,
    pub spec: v1::AuthorizationPolicySpec,
}

impl<'de> Deserialize<'de> for NamedPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut map = serde_yaml::Mapping::deserialize(d)?;
        let name = match map.remove("name") {
            None => String::new(),
            Some(serde_yaml::Value::String(s)) => s,
            Some(_) => return Err(D::Error::custom("name: must be a string")),
        };
        let spec = v1::AuthorizationPolicySpec::deserialize(serde_yaml::Value::Mapping(map))
            .map_err(D::Error::custom)?;
        Ok(Self { name, spec })
    }
}

impl Serialize for NamedPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Flat<'a> {
            name: &'a str,
            #[serde(flatten)]
            spec: &'a v1::AuthorizationPolicySpec,
        }
        Flat {
            name: &self.name,
            spec: &self.spec,
        }
        .serialize(s)
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
    /// The caller is from another namespace and no allow rule names it
    /// (`crossNamespacePolicy: DENY`).
    OtherNamespace,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule(r) => f.write_str(r),
            Reason::NoAllowMatched => f.write_str("no allow rule matched"),
            Reason::MeshDefault => f.write_str("mesh default"),
            Reason::OtherNamespace => {
                f.write_str("caller from another namespace, and no allow rule names it")
            }
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
        // The pattern with each `*` made concrete must be a SPIFFE id (characters, lengths).
        let concrete = segments
            .iter()
            .fold(format!("spiffe://{td}"), |mut id, seg| {
                id.push('/');
                id.push_str(seg.as_deref().unwrap_or("x"));
                id
            });
        SpiffeId::parse(&concrete).map_err(|e| format!("{p:?} is not a SPIFFE id pattern: {e}"))?;
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

impl PathPattern {
    fn matches(&self, path: &str, ignore_case: bool) -> bool {
        let same = |a: &[u8], b: &[u8]| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        let path = path.as_bytes();
        match self {
            // `/admin` and `/admin/` are one resource to most apps: an exact pattern covers
            // both, so a trailing slash cannot slip past a deny.
            PathPattern::Exact(e) => {
                same(path, e.as_bytes())
                    || path
                        .strip_suffix(b"/")
                        .is_some_and(|p| same(p, e.as_bytes()))
            }
            PathPattern::Prefix(pre) => path
                .get(..pre.len())
                .is_some_and(|head| same(head, pre.as_bytes())),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    label: Arc<str>,
    sources: Vec<SourcePattern>,
    methods: Vec<String>,
    paths: Vec<PathPattern>,
    /// `ignoreCase`: paths compare without regard to ASCII case.
    ignore_case: bool,
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
                || self.paths.iter().any(|p| p.matches(path, self.ignore_case)))
    }
}

#[derive(Debug, Clone, Default)]
struct ServiceRules {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

/// What decides a request no rule speaks about: where the guarded services live and the
/// mesh's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    /// The namespace of the services this authorizer guards: the serving proxy's own (the
    /// namespace of its SPIFFE id). `None` when its id has none: callers are then not told
    /// apart by namespace.
    pub namespace: Option<String>,
    /// MeshConfig `defaultPolicy`.
    pub default: DefaultPolicy,
    /// MeshConfig `crossNamespacePolicy`.
    pub cross_namespace: CrossNamespace,
}

impl Scope {
    /// Whether `source` must pass the cross-namespace rule: scoping is on and the caller is
    /// not a workload of the guarded namespace (no id, or an id of another shape, counts as
    /// foreign).
    fn is_foreign(&self, source: Option<&SpiffeId>) -> bool {
        match (&self.namespace, self.cross_namespace) {
            (Some(home), CrossNamespace::Deny) => source
                .and_then(SpiffeId::workload_parts)
                .is_none_or(|(ns, _)| ns != home),
            _ => false,
        }
    }
}

/// Every policy compiled and grouped by service, with the scope they are judged in.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    services: HashMap<String, ServiceRules>,
    scope: Scope,
}

impl Authorizer {
    /// Compile `policies`; `at` is their list's field path (e.g. `authorization`).
    pub fn compile(
        policies: &[NamedPolicy],
        scope: Scope,
        at: &str,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut authorizer = Self {
            services: HashMap::new(),
            scope,
        };
        for (i, p) in policies.iter().enumerate() {
            let path = format!("{at}[{i}]");
            if p.name.is_empty() {
                errors.push(err(format!("{path}.name"), "required"));
            }
            authorizer.add(p, &path, &mut errors);
        }
        if errors.is_empty() {
            Ok(authorizer)
        } else {
            Err(errors)
        }
    }

    /// Compile one policy (its spec's fields at `at`, e.g. `spec`) and add its rules.
    pub fn add(&mut self, policy: &NamedPolicy, at: &str, errors: &mut Vec<FieldError>) {
        let spec = &policy.spec;
        if spec.service.is_empty() {
            errors.push(err(format!("{at}.service"), "required"));
        }
        let entry = self.services.entry(spec.service.clone()).or_default();
        for (list, rules, out) in [
            ("allow", &spec.allow, &mut entry.allow),
            ("deny", &spec.deny, &mut entry.deny),
        ] {
            for (j, r) in rules.iter().enumerate() {
                let label = Arc::from(format!("{}.{list}[{j}]", policy.name));
                if let Some(rule) = compile_rule(r, label, &format!("{at}.{list}[{j}]"), errors) {
                    out.push(rule);
                }
            }
        }
    }

    /// The scope requests are judged in.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    fn mesh_default(&self) -> Verdict {
        match self.scope.default {
            DefaultPolicy::Allow => Verdict::Allowed(Reason::MeshDefault),
            DefaultPolicy::Deny => Verdict::Denied(Reason::MeshDefault),
        }
    }

    /// After the deny rules: the first allow rule `admits` (all of them when the caller is
    /// of the guarded namespace; only those naming their sources when it is foreign), else
    /// the mesh default for a service without allow rules.
    fn allow_or_default(
        &self,
        rules: Option<&ServiceRules>,
        source: Option<&SpiffeId>,
        admits: impl Fn(&Rule) -> bool,
    ) -> Verdict {
        let allow = rules.map_or(&[][..], |r| &r.allow[..]);
        if self.scope.is_foreign(source) {
            return match allow.iter().find(|r| !r.sources.is_empty() && admits(r)) {
                Some(r) => Verdict::Allowed(Reason::Rule(r.label.clone())),
                None => Verdict::Denied(Reason::OtherNamespace),
            };
        }
        if allow.is_empty() {
            return self.mesh_default();
        }
        match allow.iter().find(|r| admits(r)) {
            Some(r) => Verdict::Allowed(Reason::Rule(r.label.clone())),
            None => Verdict::Denied(Reason::NoAllowMatched),
        }
    }

    /// Decide an HTTP request to `service` from `source` (the caller's verified SPIFFE id;
    /// `None` if it has none, which only rules without `sources` match) for `method` and
    /// `path` (without the query). Deny rules of every policy on the service come first;
    /// a caller from another namespace then needs an allow rule that names it (unless the
    /// mesh allows cross-namespace calls); otherwise, if the service has any allow rule, one
    /// must match, and without allow rules the mesh default decides.
    pub fn evaluate(
        &self,
        service: &str,
        source: Option<&SpiffeId>,
        method: &str,
        path: &str,
    ) -> Verdict {
        let rules = self.services.get(service);
        if let Some(r) =
            rules.and_then(|rs| rs.deny.iter().find(|r| r.matches(source, method, path)))
        {
            return Verdict::Denied(Reason::Rule(r.label.clone()));
        }
        self.allow_or_default(rules, source, |r| r.matches(source, method, path))
    }

    /// Decide an opaque TCP connection (a CONNECT stream) to `service` from `source`. It has
    /// no method or path, so rules naming methods or paths are read the safe way (as Istio
    /// does): a deny rule ignores them and denies on its sources alone; an allow rule with
    /// them never matches.
    pub fn evaluate_tcp(&self, service: &str, source: Option<&SpiffeId>) -> Verdict {
        let rules = self.services.get(service);
        if let Some(r) = rules.and_then(|rs| rs.deny.iter().find(|r| r.source_matches(source))) {
            return Verdict::Denied(Reason::Rule(r.label.clone()));
        }
        self.allow_or_default(rules, source, |r| {
            !r.is_http_only() && r.source_matches(source)
        })
    }
}

fn compile_rule(
    r: &v1::AuthorizationRule,
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
    fields::methods(errors, &format!("{at}.methods"), &r.methods);
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
        ignore_case: r.ignore_case,
    })
}

#[cfg(test)]
mod tests;
