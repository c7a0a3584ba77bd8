//! One request's decision: the compiled [`Policy`] (routes, authorization, mesh defaults)
//! and the [`Plan`] it yields for an outbound request.
//!
//! Owns the `routes:` / `authorization:` / `mesh:` config blocks ([`PolicyConfig`]), their
//! one-pass compilation with field paths, and the step from a request head plus random
//! rolls to a plan the data path carries out: rule, backend, timeouts, retries, faults,
//! mirror, and (per attempt) the endpoint. It must not perform any of it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_api::v1;
use quiver_api::validate::FieldError;

use crate::authz::{Authorizer, NamedPolicy, Scope};
use crate::balance::Tier;
use crate::fault::FaultDecision;
use crate::fields::err;
use crate::mesh::Mesh;
use crate::retry::{Retries, RetryBudget, RetryTuning};
use crate::route::{CompiledRule, RequestHead, RouteTable};
use crate::services::{Backend, Services};

/// The policy a proxy runs on, as `quiver.v1` specs: from a control-plane push or the
/// `routes:` / `authorization:` / `mesh:` blocks of its static file.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub routes: Vec<v1::RouteSpec>,
    pub authorization: Vec<NamedPolicy>,
    pub mesh: v1::MeshConfigSpec,
    /// The namespace of the services this proxy serves (its SPIFFE id's), which
    /// authorization scopes callers by; `None` when the id has none.
    pub namespace: Option<String>,
}

/// Compiled, immutable policy. A config change compiles a new one and swaps the `Arc`;
/// plans already made keep the rules they hold.
#[derive(Debug)]
pub struct Policy {
    routes: HashMap<String, Arc<RouteTable>>,
    /// The implicit rule of services without a Route (its backend is filled in per plan).
    default_rule: Arc<CompiledRule>,
    /// Inbound authorization.
    pub authz: Authorizer,
    pub mesh: Mesh,
}

/// The random numbers one plan needs, drawn by the caller (tests pass exact values).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rolls {
    /// Weighted backend choice, taken modulo 100.
    pub backend: u32,
    /// Fault delay, in `[0, 1)`.
    pub delay: f64,
    /// Fault abort, in `[0, 1)`.
    pub abort: f64,
    /// Mirroring, in `[0, 1)`.
    pub mirror: f64,
}

impl Rolls {
    /// Draw every roll from `rng`.
    pub fn draw(rng: &mut impl rand::Rng) -> Self {
        Self {
            backend: rng.random_range(0..100),
            delay: rng.random(),
            abort: rng.random(),
            mirror: rng.random(),
        }
    }
}

/// No rule of the service's Route matches: answer `no-route` (404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRule {
    pub service: String,
}

/// What the data path does with one outbound request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The service called.
    pub service: String,
    /// The matched rule (held, so a config swap mid-request changes nothing for it).
    pub rule: Arc<CompiledRule>,
    /// The weighted backend chosen.
    pub backend: Arc<Backend>,
    /// Whole-request timeout (all attempts and backoffs); `None` means the proxy's
    /// response timeout.
    pub timeout: Option<Duration>,
    /// Faults to inject.
    pub fault: FaultDecision,
    /// Where to send a copy, if this request is mirrored.
    pub mirror: Option<Arc<Backend>>,
    /// The endpoint of the latest attempt and how it was found (set by the data path from
    /// the endpoint lease of that attempt).
    pub endpoint: Option<(SocketAddr, Tier)>,
    /// Attempts made so far (the data path increments it per attempt).
    pub attempts: u32,
}

impl Policy {
    /// Compile `config` in one pass, reporting every problem with its field path
    /// (`routes[i]...`, `authorization[i]...`, `mesh...`). `services` resolves backends.
    pub fn compile(
        config: &PolicyConfig,
        services: &Services<'_>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mesh = Mesh::compile(&config.mesh, "mesh", &mut errors).unwrap_or_default();
        let mut routes = HashMap::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, r) in config.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if let Some(first) = seen.insert(&r.service, i)
                && !r.service.is_empty()
            {
                errors.push(err(
                    format!("{at}.service"),
                    format!(
                        "service {:?} already has a route (routes[{first}])",
                        r.service
                    ),
                ));
            }
            match RouteTable::compile(r, &at, services) {
                Ok(t) => {
                    routes.insert(r.service.clone(), Arc::new(t));
                }
                Err(e) => errors.extend(e),
            }
        }
        let scope = Scope {
            namespace: config.namespace.clone(),
            default: mesh.default_policy,
            cross_namespace: mesh.cross_namespace,
        };
        let authz = Authorizer::compile(&config.authorization, scope, "authorization")
            .unwrap_or_else(|e| {
                errors.extend(e);
                Authorizer::default()
            });
        let default_rule = Arc::new(CompiledRule::default_for(""));
        if errors.is_empty() {
            Ok(Self {
                routes,
                default_rule,
                authz,
                mesh,
            })
        } else {
            Err(errors)
        }
    }

    /// The services that have a Route.
    pub fn routed_services(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// The route table of `service`'s Route, if it has one.
    pub fn table(&self, service: &str) -> Option<&Arc<RouteTable>> {
        self.routes.get(service)
    }

    /// Plan an outbound request to `service`. A service without a Route gets the implicit
    /// rule `default`: every request, all its workloads, no retries, faults or mirror.
    pub fn plan(&self, service: &str, req: &RequestHead<'_>, rolls: Rolls) -> Result<Plan, NoRule> {
        let no_rule = || NoRule {
            service: service.to_string(),
        };
        let (rule, backend) = match self.routes.get(service) {
            Some(table) => {
                let rule = table.find(req).ok_or_else(no_rule)?.clone();
                let backend = rule
                    .pick_backend(rolls.backend)
                    .ok_or_else(no_rule)?
                    .clone();
                (rule, backend)
            }
            None => (
                self.default_rule.clone(),
                Arc::new(Backend {
                    service: service.to_string(),
                    subset: String::new(),
                    selector: Default::default(),
                }),
            ),
        };
        let fault = rule
            .fault
            .as_ref()
            .map(|f| f.decide(rolls.delay, rolls.abort))
            .unwrap_or_default();
        let mirror = rule
            .mirror
            .as_ref()
            .filter(|m| m.decide(rolls.mirror))
            .map(|m| m.backend.clone());
        let timeout = rule.timeout.or(self.mesh.default_timeout);
        Ok(Plan {
            service: service.to_string(),
            backend,
            timeout,
            fault,
            mirror,
            endpoint: None,
            attempts: 0,
            rule,
        })
    }
}

impl Plan {
    /// The rule's name.
    pub fn route(&self) -> &str {
        self.rule.name()
    }

    /// The rule's retry settings, if it retries.
    pub fn retries(&self) -> Option<&Retries> {
        self.rule.retries.as_ref()
    }

    /// Timeout of each attempt, if set.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.retries().and_then(|r| r.per_try_timeout)
    }

    /// One line for the access log: what was decided and why.
    pub fn explain(&self) -> String {
        let mut s = format!(
            "route={}/{} backend={}",
            self.service,
            self.route(),
            self.backend.label()
        );
        if let Some((a, tier)) = self.endpoint {
            let _ = write!(s, " endpoint={a} locality={tier:?}");
        }
        if let Some(t) = self.timeout {
            let _ = write!(s, " timeout={}", quiver_api::duration::format(t));
        }
        if let Some(r) = self.retries() {
            let _ = write!(s, " attempts={}/{}", self.attempts, r.attempts);
        }
        if let Some(d) = self.fault.delay {
            let _ = write!(s, " fault.delay={}", quiver_api::duration::format(d));
        }
        if let Some(a) = self.fault.abort {
            let _ = write!(s, " fault.abort={a}");
        }
        if let Some(m) = &self.mirror {
            let _ = write!(s, " mirror={}", m.label());
        }
        s
    }
}

/// Retry budgets, one per (service, rule), kept across config swaps (a rule keeps its
/// budget while its name stays; a changed `budgetPercent` applies at once).
#[derive(Debug, Default)]
pub struct Budgets {
    budgets: HashMap<(String, String), RetryBudget>,
}

impl Budgets {
    /// The budget of `plan`'s rule, created on first use.
    pub fn for_plan(
        &mut self,
        plan: &Plan,
        tuning: &RetryTuning,
        now: Instant,
    ) -> &mut RetryBudget {
        let ratio = plan
            .retries()
            .map(Retries::budget_ratio)
            .unwrap_or(crate::retry::DEFAULT_BUDGET_RATIO);
        let b = self
            .budgets
            .entry((plan.service.clone(), plan.route().to_string()))
            .or_insert_with(|| RetryBudget::new(ratio, tuning, now));
        b.set_ratio(ratio);
        b
    }

    /// Keep only the budgets of rules `keep` names (the others' rules are gone).
    pub fn retain_rules(&mut self, keep: impl Fn(&str) -> bool) {
        self.budgets.retain(|(_, rule), _| keep(rule));
    }
}

#[cfg(test)]
mod tests;
