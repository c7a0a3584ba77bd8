//! Outlier detection: consecutive failures eject an endpoint for an exponentially growing
//! time, never ejecting more than a set share of a service's endpoints.
//!
//! Owns one endpoint's ejection state machine and the max-share rule. It must not look at
//! the clock (the caller passes `now`) nor decide what a failure is beyond the
//! `success: bool` it is told ([`super::retry::Outcome::is_success`] is the usual source).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Outlier detection settings (proxy tuning; the Route resource carries none).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Consecutive failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection; the n-th lasts `base_ejection * 2^(n-1)`.
    #[serde(with = "quiver_api::duration::serde_human")]
    pub base_ejection: Duration,
    /// Longest ejection. An endpoint that stays in for this long after an ejection starts
    /// over at `base_ejection`.
    #[serde(with = "quiver_api::duration::serde_human")]
    pub max_ejection: Duration,
    /// Largest share of a service's endpoints ejected at once, percent.
    pub max_ejection_percent: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50.0,
        }
    }
}

impl OutlierConfig {
    /// How long the `times`-th ejection (1-based) lasts.
    pub fn ejection_time(&self, times: u32) -> Duration {
        let exp = times.saturating_sub(1).min(20);
        self.base_ejection
            .saturating_mul(1u32 << exp)
            .min(self.max_ejection)
    }

    /// Whether one more endpoint may be ejected while `ejected` of `total` already are.
    pub fn room_to_eject(&self, ejected: usize, total: usize) -> bool {
        ((ejected + 1) as f64) * 100.0 <= self.max_ejection_percent * total as f64
    }
}

/// One endpoint's ejection state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutlierState {
    consecutive: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
    /// The last ejection has ended and was noticed.
    back: bool,
}

/// What recording an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Nothing changed beyond the counters.
    Counted,
    /// The endpoint is now ejected for this long (the `n`-th time).
    Ejected { duration: Duration, times: u32 },
    /// It reached the failure threshold, but ejecting it would pass the max share.
    EjectionRefused,
}

impl OutlierState {
    /// Whether the endpoint is out of the rotation at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// Times this endpoint has been ejected (since it last stayed healthy for `max_ejection`).
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected
    }

    /// Record an outcome. `room` says whether the service may lose one more endpoint
    /// ([`OutlierConfig::room_to_eject`], computed by the caller over all endpoints).
    pub fn record(
        &mut self,
        cfg: &OutlierConfig,
        success: bool,
        now: Instant,
        room: bool,
    ) -> Recorded {
        if self.is_ejected(now) {
            // Requests started before the ejection still finish; they say nothing new.
            return Recorded::Counted;
        }
        if let Some(until) = self.ejected_until {
            // Back in rotation: count afresh (once), and forget old ejections once it has
            // stayed in for the longest ejection time.
            if !self.back {
                self.back = true;
                self.consecutive = 0;
            }
            if now.saturating_duration_since(until) >= cfg.max_ejection {
                self.times_ejected = 0;
                self.ejected_until = None;
            }
        }
        if success {
            self.consecutive = 0;
            return Recorded::Counted;
        }
        self.consecutive += 1;
        if self.consecutive < cfg.consecutive_failures {
            return Recorded::Counted;
        }
        if !room {
            return Recorded::EjectionRefused;
        }
        self.times_ejected += 1;
        self.consecutive = 0;
        let duration = cfg.ejection_time(self.times_ejected);
        self.ejected_until = Some(now + duration);
        self.back = false;
        Recorded::Ejected {
            duration,
            times: self.times_ejected,
        }
    }
}

#[cfg(test)]
mod tests;
