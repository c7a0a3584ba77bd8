//! Load balancing: which endpoint of a backend serves one request.
//!
//! Owns the per-endpoint state of one service — peak-EWMA latency, outstanding-request
//! counters ([`super::breaker`]), the load the endpoint last reported, its outlier state
//! ([`super::outlier`]) — and the choice: power of two choices over
//! `cost = ewma_rtt * (outstanding + 1) * load_factor` (Linkerd's balancer, plus
//! endpoint-reported load), or round-robin; endpoints in the caller's zone first, other
//! zones when none there is available. It must not read the clock or draw random numbers:
//! the caller passes `now` and the rolls, and reports every outcome back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Labels;
use super::breaker::{CircuitLimits, Counters, Overloaded, Stage};
use super::outlier::{OutlierConfig, OutlierState, Recorded};

/// Response header (or trailer) in which an endpoint reports its load, e.g.
/// `quiver-load: 0.73` (utilisation, 0 = idle, 1 = saturated), in the spirit of ORCA.
pub const LOAD_HEADER: &str = "quiver-load";

/// An endpoint as the balancer sees it (`quiver.v1.WorkloadSpec`: address, labels, zone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    pub address: SocketAddr,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub zone: String,
}

/// How to choose among available endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Power of two choices over peak-EWMA cost (the default).
    #[default]
    P2cPeakEwma,
    /// Each available endpoint in turn.
    RoundRobin,
}

/// Balancer settings (proxy tuning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceConfig {
    pub algorithm: Algorithm,
    /// Time constant of the EWMA decay.
    #[serde(with = "quiver_api::duration::serde_human")]
    pub decay: Duration,
    /// The estimate of an endpoint nothing has been observed from yet.
    #[serde(with = "quiver_api::duration::serde_human")]
    pub default_rtt: Duration,
    /// Reported load at or above which an endpoint counts as overloaded for locality.
    pub overload_load: f64,
    /// A reported load older than this is ignored.
    #[serde(with = "quiver_api::duration::serde_human")]
    pub load_ttl: Duration,
    pub limits: CircuitLimits,
    pub outlier: OutlierConfig,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::P2cPeakEwma,
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            overload_load: 0.9,
            load_ttl: Duration::from_secs(10),
            limits: CircuitLimits::default(),
            outlier: OutlierConfig::default(),
        }
    }
}

/// A peak-sensitive EWMA of latency: a sample above the estimate replaces it at once; lower
/// samples (and idle time, as samples of 0) pull it down with time constant `decay`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    estimate_ns: f64,
    at: Instant,
}

impl PeakEwma {
    /// Start at `initial`.
    pub fn new(initial: Duration, now: Instant) -> Self {
        Self {
            estimate_ns: initial.as_nanos() as f64,
            at: now,
        }
    }

    /// The estimate at `now`, in nanoseconds, decayed toward 0 since the last sample.
    pub fn estimate(&self, now: Instant, decay: Duration) -> f64 {
        self.estimate_ns * weight(now.saturating_duration_since(self.at), decay)
    }

    /// Fold in a latency sample taken at `now`.
    pub fn observe(&mut self, rtt: Duration, now: Instant, decay: Duration) {
        let rtt = rtt.as_nanos() as f64;
        if rtt > self.estimate_ns {
            self.estimate_ns = rtt;
        } else {
            let w = weight(now.saturating_duration_since(self.at), decay);
            self.estimate_ns = self.estimate_ns * w + rtt * (1.0 - w);
        }
        self.at = self.at.max(now);
    }
}

/// `e^(-elapsed/decay)`: how much of the old estimate survives `elapsed`.
fn weight(elapsed: Duration, decay: Duration) -> f64 {
    let tau = decay.as_nanos().max(1) as f64;
    (-(elapsed.as_nanos() as f64) / tau).exp()
}

/// Everything the balancer keeps about one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointState {
    pub ewma: PeakEwma,
    pub counters: Counters,
    /// Last reported load and when it arrived.
    pub load: Option<(f64, Instant)>,
    pub outlier: OutlierState,
}

/// How far from the caller's preference a pick had to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// An available endpoint in the caller's zone (or no zones in play).
    Local,
    /// None available in the caller's zone; another zone's.
    Failover,
    /// Every endpoint reports overload; the least costly one anyway.
    Overloaded,
    /// Every candidate is ejected; outlier detection is ignored rather than fail everything.
    Panic,
}

/// The result of a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Endpoint {
        address: SocketAddr,
        tier: Tier,
    },
    /// Every candidate in rotation is at its circuit-breaker limit: answer `overloaded` (503).
    Overloaded,
    /// No candidate at all: answer `no-endpoint` (503).
    NoEndpoint,
}

/// One service's balancer state. Not thread-safe by itself: the data path keeps one per
/// service behind a mutex held only for the duration of a call.
#[derive(Debug, Clone)]
pub struct Balancer {
    cfg: BalanceConfig,
    endpoints: HashMap<SocketAddr, EndpointState>,
    next: usize,
}

impl Balancer {
    /// A balancer with no endpoint state yet.
    pub fn new(cfg: BalanceConfig) -> Self {
        Self {
            cfg,
            endpoints: HashMap::new(),
            next: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &BalanceConfig {
        &self.cfg
    }

    /// Align with the service's current endpoints: keep the state of those that stay,
    /// start fresh ones, forget those gone. Call on every config change.
    pub fn sync(&mut self, addresses: &[SocketAddr], now: Instant) {
        self.endpoints.retain(|a, _| addresses.contains(a));
        for a in addresses {
            self.state(*a, now);
        }
    }

    fn state(&mut self, address: SocketAddr, now: Instant) -> &mut EndpointState {
        let initial = self.cfg.default_rtt;
        self.endpoints
            .entry(address)
            .or_insert_with(|| EndpointState {
                ewma: PeakEwma::new(initial, now),
                counters: Counters::default(),
                load: None,
                outlier: OutlierState::default(),
            })
    }

    /// The state of one endpoint, if known.
    pub fn endpoint(&self, address: &SocketAddr) -> Option<&EndpointState> {
        self.endpoints.get(address)
    }

    fn fresh_load(&self, s: &EndpointState, now: Instant) -> Option<f64> {
        s.load
            .filter(|(_, at)| now.saturating_duration_since(*at) <= self.cfg.load_ttl)
            .map(|(l, _)| l)
    }

    /// The cost P2C compares: `ewma_rtt_ns * (outstanding + 1) * 1 / (1 - load)`, the load
    /// clamped to 0..0.95 (so a saturated endpoint costs at most 20 times more).
    pub fn cost(&self, address: &SocketAddr, now: Instant) -> f64 {
        let Some(s) = self.endpoints.get(address) else {
            return self.cfg.default_rtt.as_nanos() as f64;
        };
        let load = self.fresh_load(s, now).unwrap_or(0.0).clamp(0.0, 0.95);
        s.ewma.estimate(now, self.cfg.decay) * f64::from(s.counters.outstanding() + 1)
            / (1.0 - load)
    }

    /// Choose an endpoint among the `workloads` that `selector` selects (a backend's subset;
    /// empty selects all) for a caller in `zone`: [`Balancer::pick`] over those.
    pub fn pick_selected(
        &mut self,
        workloads: &[Workload],
        selector: &Labels,
        zone: &str,
        now: Instant,
        rolls: [u32; 2],
    ) -> Pick {
        let candidates: Vec<&Workload> = workloads
            .iter()
            .filter(|w| super::selects(selector, &w.labels))
            .collect();
        self.pick(&candidates, zone, now, rolls)
    }

    /// Choose an endpoint among `candidates` (the backend's workloads) for a caller in
    /// `zone` (empty: no locality). `rolls` are two random numbers (P2C's two choices).
    pub fn pick(
        &mut self,
        candidates: &[&Workload],
        zone: &str,
        now: Instant,
        rolls: [u32; 2],
    ) -> Pick {
        if candidates.is_empty() {
            return Pick::NoEndpoint;
        }
        for c in candidates {
            self.state(c.address, now);
        }
        let limits = self.cfg.limits;
        let (mut local, mut any, mut loaded, mut ejected) = (vec![], vec![], vec![], vec![]);
        let mut all_ejected = true;
        for c in candidates {
            let Some(s) = self.endpoints.get(&c.address) else {
                continue;
            };
            let is_ejected = s.outlier.is_ejected(now);
            all_ejected &= is_ejected;
            if s.counters.is_full(&limits) {
                continue;
            }
            if is_ejected {
                ejected.push(c.address);
            } else if self
                .fresh_load(s, now)
                .is_some_and(|l| l >= self.cfg.overload_load)
            {
                loaded.push(c.address);
            } else {
                if zone.is_empty() || c.zone == zone {
                    local.push(c.address);
                }
                any.push(c.address);
            }
        }
        let (pool, tier) = if !local.is_empty() {
            (local, Tier::Local)
        } else if !any.is_empty() {
            (any, Tier::Failover)
        } else if !loaded.is_empty() {
            (loaded, Tier::Overloaded)
        } else if all_ejected && !ejected.is_empty() {
            (ejected, Tier::Panic)
        } else {
            return Pick::Overloaded;
        };
        let address = match self.cfg.algorithm {
            Algorithm::RoundRobin => {
                let a = pool[self.next % pool.len()];
                self.next = self.next.wrapping_add(1);
                a
            }
            Algorithm::P2cPeakEwma => self.p2c(&pool, now, rolls),
        };
        Pick::Endpoint { address, tier }
    }

    fn p2c(&self, pool: &[SocketAddr], now: Instant, rolls: [u32; 2]) -> SocketAddr {
        if pool.len() == 1 {
            return pool[0];
        }
        let n = pool.len();
        let i = rolls[0] as usize % n;
        let mut j = rolls[1] as usize % (n - 1);
        if j >= i {
            j += 1;
        }
        let (a, b) = (pool[i], pool[j]);
        if self.cost(&b, now) < self.cost(&a, now) {
            b
        } else {
            a
        }
    }

    /// Admit a request to `address` (circuit breaking), counting it as outstanding.
    pub fn start(
        &mut self,
        address: SocketAddr,
        stage: Stage,
        now: Instant,
    ) -> Result<(), Overloaded> {
        let limits = self.cfg.limits;
        self.state(address, now).counters.admit(&limits, stage)
    }

    /// A pending request to `address` got its connection.
    pub fn connected(&mut self, address: SocketAddr) {
        if let Some(s) = self.endpoints.get_mut(&address) {
            s.counters.connected();
        }
    }

    /// A request admitted by [`Balancer::start`] ended (in `stage`).
    pub fn end(&mut self, address: SocketAddr, stage: Stage) {
        if let Some(s) = self.endpoints.get_mut(&address) {
            s.counters.finish(stage);
        }
    }

    /// Fold in a latency (request sent to response head) measured at `now`.
    pub fn observe(&mut self, address: SocketAddr, latency: Duration, now: Instant) {
        let decay = self.cfg.decay;
        self.state(address, now).ewma.observe(latency, now, decay);
    }

    /// Remember a load the endpoint reported (the [`LOAD_HEADER`] value, parsed by
    /// [`parse_load`]).
    pub fn report_load(&mut self, address: SocketAddr, load: f64, now: Instant) {
        self.state(address, now).load = Some((load, now));
    }

    /// Feed an attempt's success or failure to outlier detection; may eject `address`
    /// (never past the max share of this service's endpoints).
    pub fn record(&mut self, address: SocketAddr, success: bool, now: Instant) -> Recorded {
        let total = self.endpoints.len().max(1);
        let ejected = self
            .endpoints
            .values()
            .filter(|s| s.outlier.is_ejected(now))
            .count();
        let cfg = self.cfg.outlier;
        let room = cfg.room_to_eject(ejected, total);
        self.state(address, now)
            .outlier
            .record(&cfg, success, now, room)
    }
}

/// Read a reported load: a finite number >= 0 (`0.73`). Anything else is ignored.
pub fn parse_load(value: &str) -> Option<f64> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|l| l.is_finite() && *l >= 0.0)
}

#[cfg(test)]
mod tests;
