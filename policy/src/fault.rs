//! Fault injection (delay, abort) and mirroring: the per-request "does this one get it?"
//! decisions, given random rolls.
//!
//! Owns the `Fault` and `Mirror` shapes (`quiver.v1.Fault`, `quiver.v1.Mirror`) and their
//! percentage decisions. It must not sleep, answer or copy anything: the data path waits the
//! delay, answers the abort (marked `quiver-error: fault`) and sends the mirror copy without
//! waiting for it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::hits;
use quiver_api::validate::FieldError;

/// Faults a rule injects (`quiver.v1.Fault`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// Added latency for a share of requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    #[serde(with = "quiver_api::duration::serde_human")]
    pub fixed_delay: Duration,
    /// 0..100.
    pub percent: f64,
}

/// A proxy-made response for a share of requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    /// 200..599.
    pub http_status: u16,
    /// 0..100.
    pub percent: f64,
}

/// A copy of a share of requests to another backend (`quiver.v1.Mirror`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mirror {
    /// Empty means the route's service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// Empty means all its workloads.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subset: String,
    /// 0..100.
    pub percent: f64,
}

fn check_percent(field: String, p: f64, errors: &mut Vec<FieldError>) {
    if !(0.0..=100.0).contains(&p) {
        errors.push(FieldError {
            path: field,
            reason: format!("{p} is outside 0..100"),
        });
    }
}

impl Fault {
    /// Append every problem to `errors`, each under `at`.
    pub fn check(&self, at: &str, errors: &mut Vec<FieldError>) {
        if let Some(d) = &self.delay {
            check_percent(format!("{at}.delay.percent"), d.percent, errors);
        }
        if let Some(a) = &self.abort {
            if !(200..=599).contains(&a.http_status) {
                errors.push(FieldError {
                    path: format!("{at}.abort.httpStatus"),
                    reason: format!("{} is outside 200..599", a.http_status),
                });
            }
            check_percent(format!("{at}.abort.percent"), a.percent, errors);
        }
    }

    /// The faults for one request. `delay_roll` and `abort_roll` are independent random
    /// numbers in `[0, 1)`: a request may be both delayed and then aborted.
    pub fn decide(&self, delay_roll: f64, abort_roll: f64) -> FaultDecision {
        FaultDecision {
            delay: self
                .delay
                .as_ref()
                .filter(|d| hits(d.percent, delay_roll))
                .map(|d| d.fixed_delay),
            abort: self
                .abort
                .as_ref()
                .filter(|a| hits(a.percent, abort_roll))
                .map(|a| a.http_status),
        }
    }
}

/// The faults injected into one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultDecision {
    /// Wait this long before anything else.
    pub delay: Option<Duration>,
    /// Then answer with this status (and `quiver-error: fault`) instead of forwarding.
    pub abort: Option<u16>,
}

impl FaultDecision {
    /// Whether any fault applies.
    pub fn any(&self) -> bool {
        self.delay.is_some() || self.abort.is_some()
    }
}

impl Mirror {
    /// Append every problem to `errors`, each under `at`.
    pub fn check(&self, at: &str, errors: &mut Vec<FieldError>) {
        check_percent(format!("{at}.percent"), self.percent, errors);
    }

    /// Whether this request is copied, for a roll in `[0, 1)`.
    pub fn decide(&self, roll: f64) -> bool {
        hits(self.percent, roll)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn fault(delay: f64, abort: f64) -> Fault {
        Fault {
            delay: Some(FaultDelay {
                fixed_delay: Duration::from_millis(100),
                percent: delay,
            }),
            abort: Some(FaultAbort {
                http_status: 503,
                percent: abort,
            }),
        }
    }

    #[test]
    fn rolls_decide_exactly() {
        let f = fault(10.0, 50.0);
        assert_eq!(
            f.decide(0.05, 0.2),
            FaultDecision {
                delay: Some(Duration::from_millis(100)),
                abort: Some(503)
            }
        );
        assert_eq!(f.decide(0.10, 0.5), FaultDecision::default());
        assert!(!Fault::default().decide(0.0, 0.0).any());
        assert!(!fault(0.0, 0.0).decide(0.0, 0.0).any());
    }

    #[test]
    fn percentages_hold_over_many_requests() {
        let f = fault(10.0, 50.0);
        let m = Mirror {
            percent: 25.0,
            ..Mirror::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        let (mut delayed, mut aborted, mut mirrored) = (0, 0, 0);
        let n = 10_000;
        for _ in 0..n {
            let d = f.decide(rng.random(), rng.random());
            delayed += usize::from(d.delay.is_some());
            aborted += usize::from(d.abort.is_some());
            mirrored += usize::from(m.decide(rng.random()));
        }
        let pct = |c: usize| c as f64 * 100.0 / n as f64;
        assert!(
            (pct(delayed) - 10.0).abs() < 1.0,
            "delayed {}",
            pct(delayed)
        );
        assert!(
            (pct(aborted) - 50.0).abs() < 1.5,
            "aborted {}",
            pct(aborted)
        );
        assert!(
            (pct(mirrored) - 25.0).abs() < 1.5,
            "mirrored {}",
            pct(mirrored)
        );
    }

    #[test]
    fn bad_values_are_named() {
        let mut e = Vec::new();
        Fault {
            delay: Some(FaultDelay {
                fixed_delay: Duration::ZERO,
                percent: 101.0,
            }),
            abort: Some(FaultAbort {
                http_status: 99,
                percent: -1.0,
            }),
        }
        .check("r", &mut e);
        let fields: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            fields,
            ["r.delay.percent", "r.abort.httpStatus", "r.abort.percent"]
        );
    }
}
