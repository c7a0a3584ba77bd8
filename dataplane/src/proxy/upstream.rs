//! The runtime state of the services this proxy calls, and the one way to choose an endpoint
//! for anything sent to them.
//!
//! When a snapshot is installed, [`Routing::install`] builds one [`Upstream`] per service the
//! snapshot names (with endpoints, or with a Route), carrying each one's state over from the
//! previous snapshot **by service name**: the balancer (latency, outstanding requests,
//! reported load, outlier ejections) and the retry budgets of its rules. The state of
//! services, endpoints and rules that are gone is dropped in that same step. Nothing else
//! owns or prunes this state.
//!
//! [`Routing::lease`] is the one endpoint picker. HTTP attempts, TCP tunnels and mirrored
//! copies all take a [`Lease`]: its methods report the attempt back (connected, finished
//! with an outcome), and its `Drop` gives the endpoint's circuit-breaker slot back when the
//! holder went away first (a cancelled request, an early error).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::errors::ProxyError;
use crate::snapshot::{Endpoint, Snapshot};
use quiver_policy::Labels;
use quiver_policy::balance::{BalanceConfig, Balancer, Pick, Tier};
use quiver_policy::breaker::Stage;
use quiver_policy::outlier::Recorded;
use quiver_policy::plan::{Budgets, Plan};
use quiver_policy::retry::{RetryBudget, RetryTuning};

/// A snapshot as the data path runs it: the config plus the state of every service it names.
/// Immutable once installed; requests hold the `Arc` they started with.
#[derive(Debug)]
pub struct Routing {
    pub snapshot: Arc<Snapshot>,
    upstreams: HashMap<String, Arc<Upstream>>,
}

/// One called service's state, shared by every snapshot that names the service.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    balancer: Balancer,
    /// The retry budgets of the rules of this service's Route (by rule name).
    budgets: Budgets,
}

impl Upstream {
    fn new(name: &str, balancing: &BalanceConfig) -> Self {
        Self {
            name: name.to_string(),
            state: Mutex::new(State {
                balancer: Balancer::new(balancing.clone()),
                budgets: Budgets::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run `f` on the retry budget of `plan`'s rule (created on first use).
    pub fn with_budget<T>(
        &self,
        plan: &Plan,
        tuning: &RetryTuning,
        now: Instant,
        f: impl FnOnce(&mut RetryBudget) -> T,
    ) -> T {
        f(self.lock().budgets.for_plan(plan, tuning, now))
    }

    /// Run `f` on this service's balancer (tests inspect its state through this).
    #[cfg(test)]
    pub fn with_balancer<T>(&self, f: impl FnOnce(&Balancer) -> T) -> T {
        f(&self.lock().balancer)
    }
}

impl Routing {
    /// Install `snapshot`, carrying each service's state over from `previous` by name.
    pub fn install(
        snapshot: Arc<Snapshot>,
        previous: Option<&Routing>,
        balancing: &BalanceConfig,
        now: Instant,
    ) -> Self {
        let names: BTreeSet<&str> = snapshot
            .services
            .keys()
            .map(String::as_str)
            .chain(snapshot.policy.routed_services())
            .collect();
        let mut upstreams = HashMap::with_capacity(names.len());
        for name in names {
            let upstream = previous
                .and_then(|p| p.upstreams.get(name))
                .cloned()
                .unwrap_or_else(|| Arc::new(Upstream::new(name, balancing)));
            {
                let mut state = upstream.lock();
                let addresses: Vec<SocketAddr> = snapshot
                    .services
                    .get(name)
                    .map(|s| s.endpoints.iter().map(|e| e.address).collect())
                    .unwrap_or_default();
                state.balancer.sync(&addresses, now);
                let table = snapshot.policy.table(name);
                state.budgets.retain_rules(|rule| {
                    table.is_some_and(|t| t.rules().iter().any(|r| r.name() == rule))
                });
            }
            upstreams.insert(name.to_string(), upstream);
        }
        Self {
            snapshot,
            upstreams,
        }
    }

    /// The state of `service`, if the snapshot names it.
    pub fn upstream(&self, service: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(service)
    }

    /// Choose an endpoint of `service` among those `selector` selects (empty: all), for a
    /// caller in this snapshot's zone, and admit one attempt to it (circuit breaking).
    /// `rolls` are two random numbers (the balancer's two choices).
    pub fn lease(
        &self,
        service: &str,
        selector: &Labels,
        now: Instant,
        rolls: [u32; 2],
    ) -> Result<Lease, ProxyError> {
        let unknown = || ProxyError::NoRoute(format!("service {service:?} is not known"));
        let svc = self.snapshot.services.get(service).ok_or_else(unknown)?;
        let upstream = self.upstreams.get(service).ok_or_else(unknown)?;
        let mut state = upstream.lock();
        let (address, tier) = match state.balancer.pick_selected(
            &svc.workloads,
            selector,
            &self.snapshot.zone,
            now,
            rolls,
        ) {
            Pick::Endpoint { address, tier } => (address, tier),
            Pick::NoEndpoint => return Err(ProxyError::NoEndpoint(service.to_string())),
            Pick::Overloaded => {
                return Err(ProxyError::Overloaded(
                    quiver_policy::breaker::Overloaded::MaxRequests.as_str(),
                ));
            }
        };
        let Some(endpoint) = svc.endpoint(address).cloned() else {
            // The balancer only picks among the service's endpoints.
            return Err(ProxyError::NoEndpoint(service.to_string()));
        };
        state
            .balancer
            .start(address, Stage::Pending, now)
            .map_err(|limit| ProxyError::Overloaded(limit.as_str()))?;
        drop(state);
        Ok(Lease {
            upstream: upstream.clone(),
            endpoint,
            tier,
            stage: Stage::Pending,
            open: true,
        })
    }
}

/// One attempt admitted to one endpoint. Report how it went with [`Lease::finish`]; dropped
/// unfinished, it only gives the circuit-breaker slot back.
#[derive(Debug)]
pub struct Lease {
    upstream: Arc<Upstream>,
    pub endpoint: Endpoint,
    /// How far from the caller's zone preference the pick had to go.
    pub tier: Tier,
    stage: Stage,
    open: bool,
}

/// What a finished attempt reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// As outlier detection judges it (no 5xx, no transport failure).
    pub success: bool,
    /// Request sent to response head, when a head came.
    pub latency: Option<Duration>,
    /// The load the endpoint reported with its answer.
    pub load: Option<f64>,
}

impl Report {
    /// No response head came (connect failure, reset, timeout): a failure, nothing measured.
    pub fn failed() -> Self {
        Self {
            success: false,
            latency: None,
            load: None,
        }
    }

    /// A response head came after `latency`.
    pub fn answered(success: bool, latency: Duration, load: Option<f64>) -> Self {
        Self {
            success,
            latency: Some(latency),
            load,
        }
    }
}

impl Lease {
    pub fn address(&self) -> SocketAddr {
        self.endpoint.address
    }

    pub fn service(&self) -> &str {
        &self.upstream.name
    }

    /// The attempt has its connection: it moves from pending (`maxPending`) to active.
    pub fn connected(&mut self) {
        if self.stage == Stage::Pending {
            self.upstream
                .lock()
                .balancer
                .connected(self.endpoint.address);
            self.stage = Stage::Active;
        }
    }

    /// The attempt ended: release the slot, fold in the latency and load, and feed outlier
    /// detection. Returns whether that ejected the endpoint.
    pub fn finish(mut self, report: Report, now: Instant) -> bool {
        self.open = false;
        let address = self.endpoint.address;
        let mut state = self.upstream.lock();
        let bal = &mut state.balancer;
        bal.end(address, self.stage);
        if let Some(latency) = report.latency {
            bal.observe(address, latency, now);
        }
        if let Some(load) = report.load {
            bal.report_load(address, load, now);
        }
        matches!(
            bal.record(address, report.success, now),
            Recorded::Ejected { .. }
        )
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.open {
            self.upstream
                .lock()
                .balancer
                .end(self.endpoint.address, self.stage);
        }
    }
}

#[cfg(test)]
mod tests;
