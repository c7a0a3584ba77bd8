//! Gateway API routes attached to Services (the GAMMA mesh shape): `HTTPRoute` and
//! `GRPCRoute` of `gateway.networking.k8s.io/v1`, translated into the one `quiver.v1.RouteSpec`
//! per Service that proxies compile ([`crate::route::RouteTable`]).
//!
//! Owns three decisions, all pure:
//! - **what is accepted** ([`check`]): every field Quiver carries out is checked with the
//!   document's own field paths (`spec.rules[0].filters[1].requestRedirect.port`); what Quiver
//!   cannot honour (a Gateway parent, `hostnames`, a backend in another namespace, a second
//!   mirror, ...) is refused by name with the reason. The translation is then compiled by the
//!   route compiler and its errors are mapped back to the Gateway API paths.
//! - **the translation** of one rule: each match becomes a Quiver rule with the rule's
//!   backends and filters. A `PathPrefix` matches whole path segments (`/api` matches `/api`
//!   and `/api/x`, not `/apix`) where Quiver's prefixes are string prefixes, so it becomes two
//!   rules, exact `/api` and prefix `/api/`; `ReplacePrefixMatch` is rewritten for each.
//!   Weights are proportional in Gateway API and percentages in Quiver: they are turned into
//!   whole percentages by largest remainder (a weight that would get less than 1% is refused),
//!   and all-zero weights answer 500 as Gateway API prescribes.
//! - **the order**: Gateway API does not take the first matching rule but the most specific
//!   one, across every route attached to the Service ([`route_spec`] sorts by it): exact path,
//!   then regular expression (longest first), then the longest prefix; then a method match,
//!   the most header matches, the most query matches; then the oldest route, then
//!   `namespace/name`, then the order in the route. gRPC: the longest service, then the
//!   longest method, then the most header matches.
//!
//! docs/gateway-api.md is the user's account of all of this.

use std::cmp::Reverse;

use quiver_api::resource::DEFAULT_NAMESPACE;
use quiver_api::v1;
use quiver_api::validate::FieldError;

use crate::fields::err;
use crate::route::RouteTable;
use crate::services::{ServiceSpecs, Services, Unknown};

/// The group and kind of the Quiver subset backend convention: `{group: quiver.dev, kind:
/// Subset, name: reviews.v2}` is subset `v2` of Service `reviews`.
pub const SUBSET_GROUP: &str = "quiver.dev";
pub const SUBSET_KIND: &str = "Subset";

/// The largest weight Gateway API allows.
const MAX_WEIGHT: u32 = 1_000_000;

/// A Gateway API route of either kind.
#[derive(Debug, Clone, Copy)]
pub enum GatewayRoute<'a> {
    Http(&'a v1::HttpRoute),
    Grpc(&'a v1::GrpcRoute),
}

impl<'a> GatewayRoute<'a> {
    fn meta(&self) -> Option<&'a v1::ObjectMeta> {
        match self {
            Self::Http(r) => r.metadata.as_ref(),
            Self::Grpc(r) => r.metadata.as_ref(),
        }
    }

    fn name(&self) -> &'a str {
        self.meta().map_or("", |m| m.name.as_str())
    }

    /// Its namespace, `default` when the document names none.
    fn namespace(&self) -> &'a str {
        match self.meta().map(|m| m.namespace.as_str()) {
            Some(ns) if !ns.is_empty() => ns,
            _ => DEFAULT_NAMESPACE,
        }
    }

    /// `httproute` or `grpcroute`: the start of the names of the rules it becomes.
    fn label(&self) -> &'static str {
        match self {
            Self::Http(_) => "httproute",
            Self::Grpc(_) => "grpcroute",
        }
    }

    fn parent_refs(&self) -> &'a [v1::ParentReference] {
        match self {
            Self::Http(r) => r.spec.as_ref().map_or(&[], |s| s.parent_refs.as_slice()),
            Self::Grpc(r) => r.spec.as_ref().map_or(&[], |s| s.parent_refs.as_slice()),
        }
    }

    fn hostnames(&self) -> &'a [String] {
        match self {
            Self::Http(r) => r.spec.as_ref().map_or(&[], |s| s.hostnames.as_slice()),
            Self::Grpc(r) => r.spec.as_ref().map_or(&[], |s| s.hostnames.as_slice()),
        }
    }

    /// The Services this route attaches to: its parents that are Services of its own
    /// namespace (others are refused by [`check`]).
    pub fn parents(&self) -> Vec<&'a str> {
        let own = self.namespace();
        let mut out: Vec<&str> = self
            .parent_refs()
            .iter()
            .filter(|p| is_service_parent(p, own))
            .map(|p| p.name.as_str())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Every Service the route names (parents, backends, mirrors), for the caller to look up.
    pub fn referenced_services(&self) -> Vec<&'a str> {
        let mut out = self.parents();
        let mut add = |b: Option<(&'a str, &'a str)>| {
            if let Some((service, _)) = b {
                out.push(service);
            }
        };
        let mirrors = |filters: &mut dyn Iterator<Item = Option<&'a v1::RequestMirrorFilter>>| {
            filters
                .flatten()
                .filter_map(|m| m.backend_ref.as_ref())
                .filter_map(|b| backend_target(b.group.as_deref(), b.kind.as_deref(), &b.name))
                .collect::<Vec<_>>()
        };
        match self {
            Self::Http(r) => {
                for rule in r.spec.iter().flat_map(|s| &s.rules) {
                    for b in &rule.backend_refs {
                        add(backend_target(
                            b.group.as_deref(),
                            b.kind.as_deref(),
                            &b.name,
                        ));
                    }
                    for m in mirrors(&mut rule.filters.iter().map(|f| f.request_mirror.as_ref())) {
                        add(Some(m));
                    }
                }
            }
            Self::Grpc(r) => {
                for rule in r.spec.iter().flat_map(|s| &s.rules) {
                    for b in &rule.backend_refs {
                        add(backend_target(
                            b.group.as_deref(),
                            b.kind.as_deref(),
                            &b.name,
                        ));
                    }
                    for m in mirrors(&mut rule.filters.iter().map(|f| f.request_mirror.as_ref())) {
                        add(Some(m));
                    }
                }
            }
        }
        out.retain(|s| !s.is_empty());
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn is_service_parent(p: &v1::ParentReference, own_namespace: &str) -> bool {
    p.group.as_deref() == Some("")
        && p.kind.as_deref() == Some("Service")
        && p.namespace.as_deref().is_none_or(|n| n == own_namespace)
        && !p.name.is_empty()
}

/// `(service, subset)` of a backend reference of a supported group and kind.
fn backend_target<'a>(
    group: Option<&str>,
    kind: Option<&str>,
    name: &'a str,
) -> Option<(&'a str, &'a str)> {
    match (group.unwrap_or(""), kind.unwrap_or("Service")) {
        ("", "Service") => Some((name, "")),
        (SUBSET_GROUP, SUBSET_KIND) => name.split_once('.'),
        _ => None,
    }
}

/// Check one route (in namespace `namespace`, already defaulted) against the Services it
/// names: every error with the document's field path.
pub fn check(route: GatewayRoute<'_>, services: &ServiceSpecs) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let ns = route.namespace();
    parent_refs(&mut errors, route, services);
    if !route.hostnames().is_empty() {
        errors.push(err(
            "spec.hostnames",
            "not supported for routes attached to a Service: the Service is what they match \
             (GAMMA); leave hostnames out",
        ));
    }
    let derived = translate(route, ns, Some(services), &mut errors);
    if !errors.is_empty() {
        return errors;
    }
    // The translation compiles as the proxies will compile it; its errors name the
    // document's fields.
    let known = Services::from_specs(services, Unknown::Refuse);
    let mut seen = std::collections::BTreeSet::new();
    for parent in route.parents() {
        let spec = v1::RouteSpec {
            service: parent.to_string(),
            rules: derived.iter().map(|d| d.rule.clone()).collect(),
        };
        if spec.rules.is_empty() {
            continue;
        }
        if let Err(e) = RouteTable::compile(&spec, "", &known) {
            for e in e {
                let mapped = map_path(&e.path, &derived);
                if seen.insert((mapped.clone(), e.reason.clone())) {
                    errors.push(err(mapped, e.reason));
                }
            }
        }
    }
    errors
}

/// One RouteSpec for `service` from the Gateway API routes attached to it, in the order of
/// Gateway API's precedence (module docs): gRPC routes' rules first, then HTTP routes'. A
/// rule that does not translate (the store holds only checked routes, so this is a route
/// checked against an older state) is left out.
pub fn route_spec(service: &str, routes: &[GatewayRoute<'_>]) -> v1::RouteSpec {
    let mut all: Vec<(Derived, Order<'_>)> = Vec::new();
    for (at, route) in routes.iter().enumerate() {
        if !route.parents().contains(&service) {
            continue;
        }
        let mut errors = Vec::new();
        let derived = translate(*route, route.namespace(), None, &mut errors);
        let created = route.meta().map_or("", |m| m.created_at.as_str());
        for (i, d) in derived.into_iter().enumerate() {
            all.push((
                d,
                Order {
                    grpc_first: !matches!(route, GatewayRoute::Grpc(_)),
                    created: if created.is_empty() { "~" } else { created },
                    key: (route.namespace(), route.name()),
                    at,
                    i,
                },
            ));
        }
    }
    all.sort_by(|(a, ao), (b, bo)| {
        (
            ao.grpc_first,
            &a.precedence,
            ao.created,
            ao.key,
            ao.at,
            ao.i,
        )
            .cmp(&(
                bo.grpc_first,
                &b.precedence,
                bo.created,
                bo.key,
                bo.at,
                bo.i,
            ))
    });
    v1::RouteSpec {
        service: service.to_string(),
        rules: all.into_iter().map(|(d, _)| d.rule).collect(),
    }
}

/// The Routes that govern a namespace's services, as proxies are sent them: one per Service.
/// A Quiver Route wins over Gateway API routes for its service, and the oldest of two Quiver
/// Routes for one service wins (the API refuses both conflicts; this settles writes that
/// raced past that check on two replicas). The Gateway API routes attached to a Service
/// become one Route named `gateway/<service>`, whose annotation
/// [`TRANSLATED_FROM`] lists them. Last, each canary that has taken over its service's
/// split puts its weight in ([`canary_split`]).
pub fn governing_routes(
    namespace: &str,
    routes: &[&v1::Route],
    http: &[&v1::HttpRoute],
    grpc: &[&v1::GrpcRoute],
    canaries: &[&v1::Canary],
) -> Vec<v1::Route> {
    let mut routes: Vec<&v1::Route> = routes.to_vec();
    let meta_key = |r: &v1::Route| {
        r.metadata
            .as_ref()
            .map(|m| {
                (
                    if m.created_at.is_empty() {
                        "~".to_string()
                    } else {
                        m.created_at.clone()
                    },
                    m.name.clone(),
                )
            })
            .unwrap_or_default()
    };
    routes.sort_by_key(|r| meta_key(r));
    let mut claimed = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for r in routes {
        let service = r.spec.as_ref().map_or("", |s| s.service.as_str());
        if claimed.insert(service.to_string()) {
            out.push(r.clone());
        }
    }
    let gateway: Vec<GatewayRoute<'_>> = grpc
        .iter()
        .map(|g| GatewayRoute::Grpc(g))
        .chain(http.iter().map(|h| GatewayRoute::Http(h)))
        .collect();
    let mut attached: std::collections::BTreeMap<&str, Vec<GatewayRoute<'_>>> =
        std::collections::BTreeMap::new();
    for g in &gateway {
        for parent in g.parents() {
            if !claimed.contains(parent) {
                attached.entry(parent).or_default().push(*g);
            }
        }
    }
    for (service, routes) in attached {
        let spec = route_spec(service, &routes);
        if spec.rules.is_empty() {
            continue;
        }
        let from: Vec<String> = routes
            .iter()
            .map(|r| {
                let kind = match r {
                    GatewayRoute::Http(_) => "HTTPRoute",
                    GatewayRoute::Grpc(_) => "GRPCRoute",
                };
                format!("{kind}/{}", r.name())
            })
            .collect();
        out.push(v1::Route {
            metadata: Some(v1::ObjectMeta {
                name: format!("gateway/{service}"),
                namespace: namespace.to_string(),
                annotations: [(TRANSLATED_FROM.to_string(), from.join(","))].into(),
                ..Default::default()
            }),
            spec: Some(spec),
        });
    }
    for c in canaries {
        canary_split(namespace, &mut out, c);
    }
    out
}

/// Put a running canary's weight into its service's route: every rule that sends to the
/// whole service (no backends), or only to the canary's stable and canary subsets with the
/// stable one among them, sends `100 - w` to the stable subset and `w` to the canary subset;
/// other rules (testers pinned to the canary subset, another service) are left as written. A service without a route gets one,
/// `canary/<name>`, with that one rule. A canary that has not started (or is not valid)
/// changes nothing. docs/canary.md, "Who owns the split".
pub fn canary_split(namespace: &str, routes: &mut Vec<v1::Route>, c: &v1::Canary) {
    let Some(weight) = crate::canary::weight_in_effect(c.status.as_ref()) else {
        return;
    };
    let Some(spec) = c.spec.as_ref() else {
        return;
    };
    // In the mirror stage the split rules also copy requests to the canary subset.
    let mirror =
        crate::canary::mirror_in_effect(spec, c.status.as_ref()).map(|percent| v1::Mirror {
            service: String::new(),
            subset: spec.canary_subset.clone(),
            percent,
        });
    let split = vec![
        v1::WeightedBackend {
            service: String::new(),
            subset: spec.stable_subset.clone(),
            weight: 100 - weight.min(100),
        },
        v1::WeightedBackend {
            service: String::new(),
            subset: spec.canary_subset.clone(),
            weight: weight.min(100),
        },
    ];
    let ours = |b: &v1::WeightedBackend| {
        (b.service.is_empty() || b.service == spec.service)
            && (b.subset == spec.stable_subset || b.subset == spec.canary_subset)
    };
    let route = routes
        .iter_mut()
        .find(|r| r.spec.as_ref().is_some_and(|s| s.service == spec.service));
    match route.and_then(|r| r.spec.as_mut()) {
        Some(route) => {
            for rule in &mut route.rules {
                // Rules pinned to the canary subset alone (testers) stay as written.
                let splits = rule.redirect.is_none()
                    && (rule.backends.is_empty()
                        || (rule.backends.iter().all(ours)
                            && rule.backends.iter().any(|b| b.subset == spec.stable_subset)));
                if splits {
                    rule.backends.clone_from(&split);
                    if mirror.is_some() {
                        rule.mirror.clone_from(&mirror);
                    }
                }
            }
        }
        None => routes.push(v1::Route {
            metadata: Some(v1::ObjectMeta {
                name: format!(
                    "canary/{}",
                    c.metadata.as_ref().map_or("", |m| m.name.as_str())
                ),
                namespace: namespace.to_string(),
                ..Default::default()
            }),
            spec: Some(v1::RouteSpec {
                service: spec.service.clone(),
                rules: vec![v1::RouteRule {
                    name: "canary".into(),
                    backends: split,
                    mirror,
                    ..Default::default()
                }],
            }),
        }),
    }
}

/// The annotation on a Route translated from Gateway API routes: which ones
/// (`HTTPRoute/reviews-split,GRPCRoute/ratings`).
pub const TRANSLATED_FROM: &str = "quiver.dev/translated-from";

/// The tie-breakers after precedence.
struct Order<'a> {
    grpc_first: bool,
    created: &'a str,
    key: (&'a str, &'a str),
    at: usize,
    i: usize,
}

/// One Quiver rule made from one match of a Gateway API rule.
#[derive(Debug, Clone)]
struct Derived {
    rule: v1::RouteRule,
    /// Smaller sorts first.
    precedence: Precedence,
    /// Quiver field prefixes of `rule` and the document paths they came from, for errors.
    map: Vec<(String, String)>,
}

/// Gateway API's specificity, as a key that sorts the most specific first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Precedence {
    Http {
        /// 0 exact, 1 regular expression, 2 prefix.
        class: u8,
        len: Reverse<usize>,
        no_method: bool,
        headers: Reverse<usize>,
        query: Reverse<usize>,
    },
    Grpc {
        service: Reverse<usize>,
        method: Reverse<usize>,
        headers: Reverse<usize>,
    },
}

/// Every rule of `route` translated, with structural errors (by document path) in `errors`.
/// `services` (at check time) checks backend ports; the snapshot builder passes none.
fn translate(
    route: GatewayRoute<'_>,
    ns: &str,
    services: Option<&ServiceSpecs>,
    errors: &mut Vec<FieldError>,
) -> Vec<Derived> {
    let mut out = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    let ctx = Ctx {
        label: route.label(),
        route: route.name(),
        ns,
        services,
    };
    match route {
        GatewayRoute::Http(r) => {
            let rules = r.spec.as_ref().map_or(&[][..], |s| s.rules.as_slice());
            if rules.is_empty() {
                out.extend(ctx.http_rule(0, &v1::HttpRouteRule::default(), errors));
            }
            for (i, rule) in rules.iter().enumerate() {
                unique_rule_name(errors, &mut names, i, &rule.name);
                out.extend(ctx.http_rule(i, rule, errors));
            }
        }
        GatewayRoute::Grpc(r) => {
            let rules = r.spec.as_ref().map_or(&[][..], |s| s.rules.as_slice());
            if rules.is_empty() {
                out.extend(ctx.grpc_rule(0, &v1::GrpcRouteRule::default(), errors));
            }
            for (i, rule) in rules.iter().enumerate() {
                unique_rule_name(errors, &mut names, i, &rule.name);
                out.extend(ctx.grpc_rule(i, rule, errors));
            }
        }
    }
    out
}

fn unique_rule_name<'a>(
    errors: &mut Vec<FieldError>,
    names: &mut std::collections::BTreeSet<&'a str>,
    i: usize,
    name: &'a str,
) {
    if !name.is_empty() && !names.insert(name) {
        errors.push(err(
            format!("spec.rules[{i}].name"),
            format!("duplicate name {name:?}"),
        ));
    }
}

fn parent_refs(errors: &mut Vec<FieldError>, route: GatewayRoute<'_>, services: &ServiceSpecs) {
    let refs = route.parent_refs();
    let ns = route.namespace();
    if refs.is_empty() {
        errors.push(err(
            "spec.parentRefs",
            "at least one Service is required: attach the route to the Service whose traffic \
             it routes ({group: \"\", kind: Service, name: ...})",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in refs.iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        match p.group.as_deref() {
            Some("") => {}
            None => errors.push(err(
                format!("{at}.group"),
                "absent means a Gateway (gateway.networking.k8s.io), which Quiver does not \
                 have: attach the route to a Service with group: \"\" and kind: Service",
            )),
            Some(g) => errors.push(err(
                format!("{at}.group"),
                format!("{g:?} is not supported: a parent is a Service (group \"\")"),
            )),
        }
        match p.kind.as_deref() {
            Some("Service") => {}
            None => errors.push(err(
                format!("{at}.kind"),
                "absent means Gateway, which Quiver does not have: set kind: Service",
            )),
            Some(k) => errors.push(err(
                format!("{at}.kind"),
                format!("{k:?} is not supported: a parent is a Service"),
            )),
        }
        if let Some(n) = p.namespace.as_deref()
            && n != ns
        {
            errors.push(err(
                format!("{at}.namespace"),
                format!(
                    "{n:?} is not the route's namespace {ns:?}: routes for another namespace's \
                     Service (consumer routes) are not supported; apply the route in the \
                     Service's namespace"
                ),
            ));
        }
        if p.name.is_empty() {
            errors.push(err(format!("{at}.name"), "required"));
            continue;
        }
        if !seen.insert(p.name.as_str()) {
            errors.push(err(
                format!("{at}.name"),
                format!("Service {:?} is named twice", p.name),
            ));
        }
        let Some(spec) = services.get(&p.name) else {
            errors.push(err(
                format!("{at}.name"),
                format!("unknown service {:?} (apply the Service first)", p.name),
            ));
            continue;
        };
        let scope = |field: &str, given: String, named: bool| {
            let one = spec.ports.len() == 1;
            if one && named {
                None
            } else if !named {
                Some(err(
                    format!("{at}.{field}"),
                    format!("Service {:?} has no port {given}", p.name),
                ))
            } else {
                Some(err(
                    format!("{at}.{field}"),
                    format!(
                        "Quiver routes a Service as a whole, and {:?} has {} ports: leave \
                         {field} out to route all of them",
                        p.name,
                        spec.ports.len()
                    ),
                ))
            }
        };
        if let Some(port) = p.port
            && let Some(e) = scope(
                "port",
                port.to_string(),
                spec.ports.iter().any(|sp| sp.port == port),
            )
        {
            errors.push(e);
        }
        if let Some(section) = p.section_name.as_deref()
            && let Some(e) = scope(
                "sectionName",
                format!("named {section:?}"),
                spec.ports.iter().any(|sp| sp.name == section),
            )
        {
            errors.push(e);
        }
    }
}

/// What one route's rules are translated with.
struct Ctx<'a> {
    label: &'static str,
    route: &'a str,
    ns: &'a str,
    services: Option<&'a ServiceSpecs>,
}

/// The actions of one Gateway API rule (what every match of it does), translated.
#[derive(Default)]
struct Actions {
    rule: v1::RouteRule,
    map: Vec<(String, String)>,
    /// The rule's RequestRedirect or URLRewrite path modifier, with where it is: specialised
    /// per match (a `ReplacePrefixMatch` depends on the match's prefix).
    path_modifier: Option<(Target, PathModifier, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Redirect,
    Rewrite,
}

#[derive(Clone)]
enum PathModifier {
    Full(String),
    Prefix(String),
}

/// A path condition of one translated rule.
#[derive(Clone)]
enum PathCond {
    Any,
    Exact(String),
    Prefix(String),
    Regex(String),
}

impl Ctx<'_> {
    fn rule_name(&self, r: usize, name: &str, k: usize, of: usize) -> String {
        let base = if name.is_empty() {
            r.to_string()
        } else {
            name.to_string()
        };
        if of > 1 {
            format!("{}/{}/{base}.{k}", self.label, self.route)
        } else {
            format!("{}/{}/{base}", self.label, self.route)
        }
    }

    fn http_rule(
        &self,
        r: usize,
        rule: &v1::HttpRouteRule,
        errors: &mut Vec<FieldError>,
    ) -> Vec<Derived> {
        let at = format!("spec.rules[{r}]");
        let before = errors.len();
        let mut actions = Actions::default();
        self.backends(&mut actions, &at, &rule.backend_refs, errors);
        let mut seen = std::collections::BTreeMap::new();
        for (f, filter) in rule.filters.iter().enumerate() {
            let fat = format!("{at}.filters[{f}]");
            self.filter(&mut actions, &fat, filter, &mut seen, errors);
        }
        if seen.contains_key("RequestRedirect") && !rule.backend_refs.is_empty() {
            errors.push(err(
                format!("{at}.backendRefs"),
                "a rule with a RequestRedirect filter answers the request itself: remove its \
                 backendRefs",
            ));
        }
        if let (Some(a), Some(b)) = (seen.get("RequestRedirect"), seen.get("URLRewrite")) {
            errors.push(err(
                format!("{at}.filters[{}]", a.max(b)),
                "RequestRedirect and URLRewrite cannot be in one rule",
            ));
        }
        if let Some(t) = &rule.timeouts {
            timeouts(&mut actions, &at, t, errors);
        }
        let default_match = [v1::HttpRouteMatch::default()];
        let matches: &[v1::HttpRouteMatch] = if rule.matches.is_empty() {
            &default_match
        } else {
            &rule.matches
        };
        // Each match: its conditions, the path variants it expands to, its precedence.
        let mut shaped = Vec::new();
        for (m, mat) in matches.iter().enumerate() {
            let mat_at = format!("{at}.matches[{m}]");
            if let Some(s) = http_match(&mat_at, mat, errors) {
                shaped.push((mat_at, s));
            }
        }
        if errors.len() != before {
            return Vec::new();
        }
        let count: usize = shaped.iter().map(|(_, s)| s.paths.len()).sum();
        let mut out = Vec::new();
        let mut k = 0;
        for (mat_at, s) in shaped {
            for path in &s.paths {
                let mut d = actions.derive(self.rule_name(r, &rule.name, k, count), &at);
                k += 1;
                let m = d.rule.r#match.get_or_insert_with(Default::default);
                m.path = path.to_proto();
                m.methods.clone_from(&s.methods);
                m.headers.clone_from(&s.headers);
                m.query_params.clone_from(&s.query);
                d.map.push(("match.path".into(), format!("{mat_at}.path")));
                d.map
                    .push(("match.methods[0]".into(), format!("{mat_at}.method")));
                d.map
                    .push(("match.headers".into(), format!("{mat_at}.headers")));
                d.map
                    .push(("match.queryParams".into(), format!("{mat_at}.queryParams")));
                if !self.specialise(&mut d, &actions, path, &s.gateway_type, errors) {
                    continue;
                }
                d.precedence = s.precedence.clone();
                out.push(d);
            }
        }
        out
    }

    fn grpc_rule(
        &self,
        r: usize,
        rule: &v1::GrpcRouteRule,
        errors: &mut Vec<FieldError>,
    ) -> Vec<Derived> {
        let at = format!("spec.rules[{r}]");
        let before = errors.len();
        let mut actions = Actions::default();
        self.backends(&mut actions, &at, &rule.backend_refs, errors);
        let mut seen = std::collections::BTreeMap::new();
        for (f, filter) in rule.filters.iter().enumerate() {
            let fat = format!("{at}.filters[{f}]");
            let as_http = v1::HttpRouteFilter {
                r#type: filter.r#type.clone(),
                request_header_modifier: filter.request_header_modifier.clone(),
                response_header_modifier: filter.response_header_modifier.clone(),
                request_mirror: filter.request_mirror.clone(),
                ..Default::default()
            };
            if matches!(filter.r#type.as_str(), "RequestRedirect" | "URLRewrite") {
                errors.push(err(
                    format!("{fat}.type"),
                    format!("{:?} is not a GRPCRoute filter", filter.r#type),
                ));
                continue;
            }
            self.filter(&mut actions, &fat, &as_http, &mut seen, errors);
        }
        let default_match = [v1::GrpcRouteMatch::default()];
        let matches: &[v1::GrpcRouteMatch] = if rule.matches.is_empty() {
            &default_match
        } else {
            &rule.matches
        };
        let mut shaped = Vec::new();
        for (m, mat) in matches.iter().enumerate() {
            let mat_at = format!("{at}.matches[{m}]");
            if let Some(s) = grpc_match(&mat_at, mat, errors) {
                shaped.push((mat_at, s));
            }
        }
        if errors.len() != before {
            return Vec::new();
        }
        let count = shaped.len();
        shaped
            .into_iter()
            .enumerate()
            .map(|(k, (mat_at, (path, headers, precedence)))| {
                let mut d = actions.derive(self.rule_name(r, &rule.name, k, count), &at);
                let m = d.rule.r#match.get_or_insert_with(Default::default);
                m.path = path.to_proto();
                m.headers = headers;
                for leaf in [
                    "match.path",
                    "match.path.exact",
                    "match.path.prefix",
                    "match.path.regex",
                ] {
                    d.map.push((leaf.into(), format!("{mat_at}.method")));
                }
                d.map
                    .push(("match.headers".into(), format!("{mat_at}.headers")));
                d.precedence = precedence;
                d
            })
            .collect()
    }

    /// Backends of a rule: Services, or subsets by the Quiver convention; weights made into
    /// whole percentages.
    fn backends(
        &self,
        actions: &mut Actions,
        at: &str,
        refs: &[v1::HttpBackendRef],
        errors: &mut Vec<FieldError>,
    ) {
        if refs.is_empty() {
            return;
        }
        let before = errors.len();
        let mut weights = Vec::new();
        for (k, b) in refs.iter().enumerate() {
            let bat = format!("{at}.backendRefs[{k}]");
            let target = self.backend_ref(
                &bat,
                b.group.as_deref(),
                b.kind.as_deref(),
                &b.name,
                b.namespace.as_deref(),
                b.port,
                errors,
            );
            let weight = b.weight.unwrap_or(1);
            if weight > MAX_WEIGHT {
                errors.push(err(
                    format!("{bat}.weight"),
                    format!("{weight} is outside 0..{MAX_WEIGHT}"),
                ));
            }
            weights.push(weight);
            if let Some((service, subset)) = target {
                actions.rule.backends.push(v1::WeightedBackend {
                    service: service.to_string(),
                    subset: subset.to_string(),
                    weight: 0,
                });
            }
            actions.map.push((format!("backends[{k}]"), bat));
        }
        actions
            .map
            .push(("backends".into(), format!("{at}.backendRefs")));
        if errors.len() != before {
            return;
        }
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if total == 0 {
            // Gateway API: no backend to send to answers 500.
            actions.rule.backends.clear();
            actions.rule.fault = Some(v1::Fault {
                delay: None,
                abort: Some(v1::FaultAbort {
                    http_status: 500,
                    percent: 100.0,
                }),
            });
            return;
        }
        let shares = percentages(&weights, total);
        for (k, (&w, share)) in weights.iter().zip(shares).enumerate() {
            if w > 0 && share == 0 {
                errors.push(err(
                    format!("{at}.backendRefs[{k}].weight"),
                    format!(
                        "{w} of {total} is less than 1%, the finest share Quiver splits traffic \
                         in"
                    ),
                ));
            }
            actions.rule.backends[k].weight = share;
        }
    }

    /// A backend or mirror reference: `(service, subset)`, or errors at `at`.
    #[allow(clippy::too_many_arguments)]
    fn backend_ref<'b>(
        &self,
        at: &str,
        group: Option<&str>,
        kind: Option<&str>,
        name: &'b str,
        namespace: Option<&str>,
        port: Option<u32>,
        errors: &mut Vec<FieldError>,
    ) -> Option<(&'b str, &'b str)> {
        let before = errors.len();
        if let Some(n) = namespace
            && n != self.ns
        {
            errors.push(err(
                format!("{at}.namespace"),
                format!(
                    "{n:?} is not the route's namespace {:?}: backends in another namespace \
                     (ReferenceGrant) are not supported",
                    self.ns
                ),
            ));
        }
        if name.is_empty() {
            errors.push(err(format!("{at}.name"), "required"));
            return None;
        }
        let target = backend_target(group, kind, name);
        match (group.unwrap_or(""), kind.unwrap_or("Service"), target) {
            (_, _, Some(_)) => {}
            (SUBSET_GROUP, SUBSET_KIND, None) => errors.push(err(
                format!("{at}.name"),
                format!("{name:?}: a Subset backend is named <service>.<subset>, e.g. reviews.v2"),
            )),
            (g, k, None) => errors.push(err(
                format!("{at}.kind"),
                format!(
                    "{g:?}/{k:?} is not supported: a backend is a Service (group \"\", kind \
                     Service) or a subset (group {SUBSET_GROUP}, kind {SUBSET_KIND})"
                ),
            )),
        }
        if let (Some(port), Some((service, _)), Some(services)) = (port, target, self.services)
            && let Some(spec) = services.get(service)
            && !spec.ports.iter().any(|p| p.port == port)
        {
            errors.push(err(
                format!("{at}.port"),
                format!("Service {service:?} has no port {port}"),
            ));
        }
        (errors.len() == before).then_some(target).flatten()
    }

    /// One filter into `actions`; `seen` holds the index of each filter type so far.
    fn filter(
        &self,
        actions: &mut Actions,
        at: &str,
        f: &v1::HttpRouteFilter,
        seen: &mut std::collections::BTreeMap<String, usize>,
        errors: &mut Vec<FieldError>,
    ) {
        let index: usize = at
            .rsplit_once('[')
            .and_then(|(_, i)| i.trim_end_matches(']').parse().ok())
            .unwrap_or(0);
        let set = [
            (
                "RequestHeaderModifier",
                "requestHeaderModifier",
                f.request_header_modifier.is_some(),
            ),
            (
                "ResponseHeaderModifier",
                "responseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            (
                "RequestRedirect",
                "requestRedirect",
                f.request_redirect.is_some(),
            ),
            ("URLRewrite", "urlRewrite", f.url_rewrite.is_some()),
            ("RequestMirror", "requestMirror", f.request_mirror.is_some()),
        ];
        let Some(&(ty, field, _)) = set.iter().find(|(t, _, _)| *t == f.r#type) else {
            let reason = if f.r#type.is_empty() {
                "required".to_string()
            } else {
                format!(
                    "{:?} is not supported (one of {})",
                    f.r#type,
                    set.map(|(t, _, _)| t).join(", ")
                )
            };
            errors.push(err(format!("{at}.type"), reason));
            return;
        };
        for (t, other, present) in set {
            if present && t != ty {
                errors.push(err(
                    format!("{at}.{other}"),
                    format!("set only the field of the filter's type ({field})"),
                ));
            }
        }
        if let Some(first) = seen.insert(ty.to_string(), index) {
            let reason = if ty == "RequestMirror" {
                format!(
                    "a second RequestMirror (the first is filters[{first}]): Quiver mirrors to one backend per rule"
                )
            } else {
                format!("{ty} is already filters[{first}]; each filter type may appear once")
            };
            errors.push(err(format!("{at}.type"), reason));
            return;
        }
        let fat = format!("{at}.{field}");
        match ty {
            "RequestHeaderModifier" | "ResponseHeaderModifier" => {
                let given = if ty == "RequestHeaderModifier" {
                    f.request_header_modifier.as_ref()
                } else {
                    f.response_header_modifier.as_ref()
                };
                let Some(m) = given else {
                    errors.push(err(fat, "required for this filter type"));
                    return;
                };
                let quiver = if ty == "RequestHeaderModifier" {
                    actions.rule.request_headers = Some(m.clone());
                    "requestHeaders"
                } else {
                    actions.rule.response_headers = Some(m.clone());
                    "responseHeaders"
                };
                actions.map.push((quiver.into(), fat));
            }
            "RequestRedirect" => {
                let Some(r) = &f.request_redirect else {
                    errors.push(err(fat, "required for this filter type"));
                    return;
                };
                let port = match (r.port, r.scheme.as_str()) {
                    (Some(p), _) => p,
                    // Gateway API: a scheme without a port means that scheme's port.
                    (None, "http") => 80,
                    (None, "https") => 443,
                    (None, _) => 0,
                };
                if r.status_code == Some(0) {
                    errors.push(err(
                        format!("{fat}.statusCode"),
                        "0 is not a redirect status",
                    ));
                }
                actions.rule.redirect = Some(v1::Redirect {
                    scheme: r.scheme.clone(),
                    hostname: r.hostname.clone(),
                    port,
                    path: None,
                    status_code: r.status_code.unwrap_or(302),
                });
                if let Some(p) = &r.path {
                    self.path_modifier(
                        actions,
                        Target::Redirect,
                        &format!("{fat}.path"),
                        p,
                        errors,
                    );
                }
                actions.map.push(("redirect".into(), fat));
            }
            "URLRewrite" => {
                let Some(r) = &f.url_rewrite else {
                    errors.push(err(fat, "required for this filter type"));
                    return;
                };
                actions.rule.rewrite = Some(v1::Rewrite {
                    hostname: r.hostname.clone(),
                    path: None,
                });
                if let Some(p) = &r.path {
                    self.path_modifier(actions, Target::Rewrite, &format!("{fat}.path"), p, errors);
                }
                actions.map.push(("rewrite".into(), fat));
            }
            _ => {
                let Some(m) = &f.request_mirror else {
                    errors.push(err(fat, "required for this filter type"));
                    return;
                };
                let Some(b) = &m.backend_ref else {
                    errors.push(err(format!("{fat}.backendRef"), "required"));
                    return;
                };
                let target = self.backend_ref(
                    &format!("{fat}.backendRef"),
                    b.group.as_deref(),
                    b.kind.as_deref(),
                    &b.name,
                    b.namespace.as_deref(),
                    b.port,
                    errors,
                );
                let percent = mirror_percent(&fat, m, errors);
                if let (Some((service, subset)), Some(percent)) = (target, percent) {
                    actions.rule.mirror = Some(v1::Mirror {
                        service: service.to_string(),
                        subset: subset.to_string(),
                        percent,
                    });
                }
                actions
                    .map
                    .push(("mirror.percent".into(), format!("{fat}.percent")));
                actions
                    .map
                    .push(("mirror".into(), format!("{fat}.backendRef")));
            }
        }
    }

    fn path_modifier(
        &self,
        actions: &mut Actions,
        target: Target,
        at: &str,
        p: &v1::HttpPathModifier,
        errors: &mut Vec<FieldError>,
    ) {
        let modifier = match p.r#type.as_str() {
            "ReplaceFullPath" => p
                .replace_full_path
                .clone()
                .map(PathModifier::Full)
                .ok_or("replaceFullPath"),
            "ReplacePrefixMatch" => p
                .replace_prefix_match
                .clone()
                .map(PathModifier::Prefix)
                .ok_or("replacePrefixMatch"),
            "" => {
                errors.push(err(format!("{at}.type"), "required"));
                return;
            }
            other => {
                errors.push(err(
                    format!("{at}.type"),
                    format!("{other:?} is not one of ReplaceFullPath, ReplacePrefixMatch"),
                ));
                return;
            }
        };
        let other = match modifier {
            Ok(PathModifier::Full(_)) => ("replacePrefixMatch", p.replace_prefix_match.is_some()),
            Ok(PathModifier::Prefix(_)) => ("replaceFullPath", p.replace_full_path.is_some()),
            Err(_) => ("", false),
        };
        if other.1 {
            errors.push(err(
                format!("{at}.{}", other.0),
                format!("set only the field of the modifier's type ({})", p.r#type),
            ));
        }
        match modifier {
            Ok(m) => actions.path_modifier = Some((target, m, at.to_string())),
            Err(field) => errors.push(err(
                format!("{at}.{field}"),
                format!("required with type {}", p.r#type),
            )),
        }
    }

    /// Put the rule's path modifier into `d` for the path condition `path` of its match
    /// (whose Gateway API type is `gateway_type`). False (with an error) when it cannot be.
    fn specialise(
        &self,
        d: &mut Derived,
        actions: &Actions,
        path: &PathCond,
        gateway_type: &str,
        errors: &mut Vec<FieldError>,
    ) -> bool {
        let Some((target, modifier, at)) = &actions.path_modifier else {
            return true;
        };
        let modifier = match (modifier, path) {
            (PathModifier::Full(p), _) => v1::PathModifier {
                replace_full_path: p.clone(),
                replace_prefix_match: String::new(),
            },
            // The exact half of a PathPrefix: the whole path is the prefix.
            (PathModifier::Prefix(p), PathCond::Exact(_)) if gateway_type == "PathPrefix" => {
                v1::PathModifier {
                    replace_full_path: if p.is_empty() { "/".into() } else { p.clone() },
                    replace_prefix_match: String::new(),
                }
            }
            // The prefix half (`/api/`, or `/`): what follows the matched segments is kept.
            (PathModifier::Prefix(p), PathCond::Prefix(_) | PathCond::Any) => v1::PathModifier {
                replace_full_path: String::new(),
                replace_prefix_match: if p.ends_with('/') {
                    p.clone()
                } else {
                    format!("{p}/")
                },
            },
            (PathModifier::Prefix(_), _) => {
                errors.push(err(
                    format!("{at}.replacePrefixMatch"),
                    "needs the rule's matches to be PathPrefix matches",
                ));
                return false;
            }
        };
        let path_field = match target {
            Target::Redirect => "redirect.path",
            Target::Rewrite => "rewrite.path",
        };
        match target {
            Target::Redirect => {
                if let Some(r) = d.rule.redirect.as_mut() {
                    r.path = Some(modifier);
                }
            }
            Target::Rewrite => {
                if let Some(r) = d.rule.rewrite.as_mut() {
                    r.path = Some(modifier);
                }
            }
        }
        if matches!(path, PathCond::Any) {
            // A prefix modifier needs the prefix spelt out.
            d.rule.r#match.get_or_insert_with(Default::default).path =
                PathCond::Prefix("/".into()).to_proto();
        }
        d.map.insert(0, (path_field.into(), at.clone()));
        true
    }
}

impl Actions {
    /// A Quiver rule named `name` carrying these actions (conditions filled in by the caller).
    fn derive(&self, name: String, at: &str) -> Derived {
        let mut rule = self.rule.clone();
        rule.name = name;
        let mut map = self.map.clone();
        map.push(("name".into(), format!("{at}.name")));
        Derived {
            rule,
            precedence: Precedence::Http {
                class: 2,
                len: Reverse(0),
                no_method: true,
                headers: Reverse(0),
                query: Reverse(0),
            },
            map,
        }
    }
}

impl PathCond {
    fn to_proto(&self) -> Option<v1::PathMatch> {
        let mut p = v1::PathMatch::default();
        match self {
            Self::Any => return None,
            Self::Exact(s) => p.exact.clone_from(s),
            Self::Prefix(s) => p.prefix.clone_from(s),
            Self::Regex(s) => p.regex.clone_from(s),
        }
        Some(p)
    }
}

fn timeouts(
    actions: &mut Actions,
    at: &str,
    t: &v1::HttpRouteTimeouts,
    errors: &mut Vec<FieldError>,
) {
    let mut parsed = [None, None];
    for (i, (field, value)) in [
        ("request", &t.request),
        ("backendRequest", &t.backend_request),
    ]
    .into_iter()
    .enumerate()
    {
        if value.is_empty() {
            continue;
        }
        match quiver_api::duration::parse(value) {
            Ok(d) if d.is_zero() => errors.push(err(
                format!("{at}.timeouts.{field}"),
                "0s (no timeout) is not supported: Quiver bounds every request; give a \
                 duration (at most 1h)",
            )),
            Ok(d) => parsed[i] = Some(d),
            // The route compiler names the reason.
            Err(_) => {}
        }
    }
    if let [Some(request), Some(backend)] = parsed
        && backend > request
    {
        errors.push(err(
            format!("{at}.timeouts.backendRequest"),
            format!(
                "{} is longer than timeouts.request ({})",
                t.backend_request, t.request
            ),
        ));
    }
    if !t.request.is_empty() {
        actions.rule.timeout.clone_from(&t.request);
        actions
            .map
            .push(("timeout".into(), format!("{at}.timeouts.request")));
    }
    if !t.backend_request.is_empty() {
        actions.rule.retries = Some(v1::Retries {
            attempts: 1,
            per_try_timeout: t.backend_request.clone(),
            retry_on: Vec::new(),
            budget_percent: 0.0,
        });
        actions.map.push((
            "retries.perTryTimeout".into(),
            format!("{at}.timeouts.backendRequest"),
        ));
    }
}

fn mirror_percent(
    at: &str,
    m: &v1::RequestMirrorFilter,
    errors: &mut Vec<FieldError>,
) -> Option<f64> {
    match (m.percent, &m.fraction) {
        (Some(_), Some(_)) => {
            errors.push(err(
                format!("{at}.fraction"),
                "set percent or fraction, not both",
            ));
            None
        }
        (Some(0), None) => {
            errors.push(err(
                format!("{at}.percent"),
                "0 mirrors nothing: remove the filter",
            ));
            None
        }
        (Some(p), None) if p > 100 => {
            errors.push(err(
                format!("{at}.percent"),
                format!("{p} is outside 0..100"),
            ));
            None
        }
        (Some(p), None) => Some(f64::from(p)),
        (None, Some(f)) => {
            let d = f.denominator.unwrap_or(100);
            if d <= 0 {
                errors.push(err(
                    format!("{at}.fraction.denominator"),
                    "must be at least 1",
                ));
                None
            } else if f.numerator <= 0 || f.numerator > d {
                errors.push(err(
                    format!("{at}.fraction.numerator"),
                    format!("{} is outside 1..{d} (the denominator)", f.numerator),
                ));
                None
            } else {
                Some(f64::from(f.numerator) * 100.0 / f64::from(d))
            }
        }
        (None, None) => Some(100.0),
    }
}

/// Whole percentages proportional to `weights` (summing to `total` > 0), by largest
/// remainder: they sum to exactly 100.
fn percentages(weights: &[u32], total: u64) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::with_capacity(weights.len());
    let mut rest: Vec<(u64, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let scaled = u64::from(w) * 100;
        out.push(u32::try_from(scaled / total).unwrap_or(100));
        rest.push((scaled % total, i));
    }
    let given: u32 = out.iter().sum();
    // Larger remainders first; among equal ones, the earlier backend.
    rest.sort_by_key(|&(r, i)| (Reverse(r), i));
    for &(_, i) in rest.iter().take(100usize.saturating_sub(given as usize)) {
        out[i] += 1;
    }
    out
}

/// An HTTPRoute match, checked: the path variants it becomes and what it carries.
struct HttpShape {
    gateway_type: String,
    paths: Vec<PathCond>,
    methods: Vec<String>,
    headers: Vec<v1::HeaderMatch>,
    query: Vec<v1::QueryParamMatch>,
    precedence: Precedence,
}

fn http_match(at: &str, m: &v1::HttpRouteMatch, errors: &mut Vec<FieldError>) -> Option<HttpShape> {
    let before = errors.len();
    let (ty, value) = match &m.path {
        Some(p) => (
            if p.r#type.is_empty() {
                "PathPrefix"
            } else {
                p.r#type.as_str()
            },
            p.value.clone().unwrap_or_else(|| "/".into()),
        ),
        None => ("PathPrefix", "/".to_string()),
    };
    let (paths, class, len) = match ty {
        "PathPrefix" => {
            let trimmed = value.trim_end_matches('/');
            if !value.starts_with('/') {
                errors.push(err(format!("{at}.path.value"), "must start with '/'"));
            }
            if trimmed.is_empty() {
                (vec![PathCond::Any], 2, 1)
            } else {
                (
                    vec![
                        PathCond::Exact(trimmed.to_string()),
                        PathCond::Prefix(format!("{trimmed}/")),
                    ],
                    2,
                    trimmed.len(),
                )
            }
        }
        "Exact" => (vec![PathCond::Exact(value.clone())], 0, value.len()),
        "RegularExpression" => (vec![PathCond::Regex(value.clone())], 1, value.len()),
        other => {
            errors.push(err(
                format!("{at}.path.type"),
                format!("{other:?} is not one of Exact, PathPrefix, RegularExpression"),
            ));
            (Vec::new(), 2, 0)
        }
    };
    let methods = if m.method.is_empty() {
        Vec::new()
    } else {
        vec![m.method.clone()]
    };
    let headers = header_matches(&format!("{at}.headers"), &m.headers, errors);
    let mut query = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, q) in m.query_params.iter().enumerate() {
        let qat = format!("{at}.queryParams[{i}]");
        if !names.insert(q.name.as_str()) {
            errors.push(err(
                format!("{qat}.name"),
                format!("{:?} is matched twice", q.name),
            ));
        }
        let mut out = v1::QueryParamMatch {
            name: q.name.clone(),
            ..Default::default()
        };
        match value_type(&format!("{qat}.type"), &q.r#type, errors) {
            Some(true) => out.regex.clone_from(&q.value),
            Some(false) => out.exact.clone_from(&q.value),
            None => {}
        }
        if q.value.is_empty() {
            errors.push(err(format!("{qat}.value"), "required"));
        }
        query.push(out);
    }
    (errors.len() == before).then(|| HttpShape {
        gateway_type: ty.to_string(),
        paths,
        precedence: Precedence::Http {
            class,
            len: Reverse(len),
            no_method: methods.is_empty(),
            headers: Reverse(headers.len()),
            query: Reverse(query.len()),
        },
        methods,
        headers,
        query,
    })
}

/// `Exact` (the default) is `Some(false)`, `RegularExpression` `Some(true)`.
fn value_type(at: &str, ty: &str, errors: &mut Vec<FieldError>) -> Option<bool> {
    match ty {
        "" | "Exact" => Some(false),
        "RegularExpression" => Some(true),
        other => {
            errors.push(err(
                at,
                format!("{other:?} is not one of Exact, RegularExpression"),
            ));
            None
        }
    }
}

fn header_matches(
    at: &str,
    given: &[v1::HttpHeaderMatch],
    errors: &mut Vec<FieldError>,
) -> Vec<v1::HeaderMatch> {
    let mut out = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, h) in given.iter().enumerate() {
        let hat = format!("{at}[{i}]");
        if !names.insert(h.name.to_ascii_lowercase()) {
            errors.push(err(
                format!("{hat}.name"),
                format!(
                    "{:?} is matched twice (header names are case-insensitive)",
                    h.name
                ),
            ));
        }
        if h.value.is_empty() {
            errors.push(err(format!("{hat}.value"), "required"));
        }
        let mut m = v1::HeaderMatch {
            name: h.name.clone(),
            ..Default::default()
        };
        match value_type(&format!("{hat}.type"), &h.r#type, errors) {
            Some(true) => m.regex.clone_from(&h.value),
            Some(false) => m.exact.clone_from(&h.value),
            None => {}
        }
        out.push(m);
    }
    out
}

/// A GRPCRoute match: its path condition (`/service/method`), header matches, precedence.
fn grpc_match(
    at: &str,
    m: &v1::GrpcRouteMatch,
    errors: &mut Vec<FieldError>,
) -> Option<(PathCond, Vec<v1::HeaderMatch>, Precedence)> {
    let before = errors.len();
    let headers = header_matches(&format!("{at}.headers"), &m.headers, errors);
    let (path, service_len, method_len) = match &m.method {
        None => (PathCond::Any, 0, 0),
        Some(mm) => {
            let mat = format!("{at}.method");
            if mm.service.is_empty() && mm.method.is_empty() {
                errors.push(err(
                    &mat,
                    "set service, method or both (or leave method out to match every call)",
                ));
            }
            let regex = value_type(&format!("{mat}.type"), &mm.r#type, errors).unwrap_or(false);
            if !regex {
                if !mm.service.is_empty() && !is_grpc_service(&mm.service) {
                    errors.push(err(
                        format!("{mat}.service"),
                        format!(
                            "{:?} is not a gRPC service name (package.Service)",
                            mm.service
                        ),
                    ));
                }
                if !mm.method.is_empty() && !is_grpc_ident(&mm.method) {
                    errors.push(err(
                        format!("{mat}.method"),
                        format!("{:?} is not a gRPC method name", mm.method),
                    ));
                }
            }
            let path = match (regex, mm.service.is_empty(), mm.method.is_empty()) {
                (false, false, false) => PathCond::Exact(format!("/{}/{}", mm.service, mm.method)),
                (false, false, true) => PathCond::Prefix(format!("/{}/", mm.service)),
                (false, true, false) => {
                    PathCond::Regex(format!("/[^/]+/{}", regex::escape(&mm.method)))
                }
                (true, _, _) => {
                    let part = |s: &str| {
                        if s.is_empty() {
                            "[^/]+".to_string()
                        } else {
                            format!("(?:{s})")
                        }
                    };
                    PathCond::Regex(format!("/{}/{}", part(&mm.service), part(&mm.method)))
                }
                (false, true, true) => PathCond::Any,
            };
            (path, mm.service.len(), mm.method.len())
        }
    };
    (errors.len() == before).then(|| {
        let precedence = Precedence::Grpc {
            service: Reverse(service_len),
            method: Reverse(method_len),
            headers: Reverse(headers.len()),
        };
        (path, headers, precedence)
    })
}

/// `package.Service`: dot-separated identifiers, optionally with a leading dot.
fn is_grpc_service(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty() && s.split('.').all(is_grpc_ident)
}

fn is_grpc_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A route compiler error path (`rules[3].match.headers[0].regex`) as the document's path,
/// by the field map of the translated rule it names.
fn map_path(path: &str, derived: &[Derived]) -> String {
    let path = path.trim_start_matches('.');
    let Some(rest) = path.strip_prefix("rules[") else {
        return match path {
            "service" => "spec.parentRefs".into(),
            "rules" => "spec.rules".into(),
            other => format!("spec.{other}"),
        };
    };
    let Some((index, field)) = rest.split_once(']') else {
        return "spec.rules".into();
    };
    let Some(d) = index.parse::<usize>().ok().and_then(|i| derived.get(i)) else {
        return "spec.rules".into();
    };
    let field = field.trim_start_matches('.');
    // The longest mapped prefix of `field` at a field boundary.
    let best = d
        .map
        .iter()
        .filter(|(q, _)| {
            field == q
                || field
                    .strip_prefix(q.as_str())
                    .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
        })
        .max_by_key(|(q, _)| q.len());
    let Some((q, gateway)) = best else {
        return d
            .map
            .iter()
            .find(|(q, _)| q == "name")
            .map(|(_, g)| g.trim_end_matches(".name").to_string())
            .unwrap_or_else(|| "spec.rules".into());
    };
    let rest = &field[q.len()..];
    // Leaf names that differ: Quiver's `exact`/`prefix`/`regex` are Gateway API's `value`;
    // a backend's `service`/`subset` is its `name`; `perTryTimeout` is already mapped.
    let rest = match rest {
        ".exact" | ".prefix" | ".regex" => ".value".to_string(),
        ".service" | ".subset" => ".name".to_string(),
        r => {
            let mut r = r.to_string();
            for leaf in [".exact", ".regex"] {
                if let Some(head) = r.strip_suffix(leaf) {
                    r = format!("{head}.value");
                }
            }
            r
        }
    };
    format!("{gateway}{rest}")
}

#[cfg(test)]
mod tests;
