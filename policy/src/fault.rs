//! Fault injection (delay, abort) and mirroring: the per-request "does this one get it?"
//! decisions, given random rolls.
//!
//! Owns the compiled forms of `quiver.v1.Fault` and `quiver.v1.Mirror` and their percentage
//! decisions. It must not sleep, answer or copy anything: the data path waits the
//! delay, answers the abort (marked `quiver-error: fault`) and sends the mirror copy without
//! waiting for it.

use std::sync::Arc;
use std::time::Duration;

use quiver_api::v1;
use quiver_api::validate::FieldError;

use crate::fields::{self, err};
use crate::hits;
use crate::services::{Backend, Services};

/// Faults a rule injects, compiled from `quiver.v1.Fault`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

/// Added latency for a share of requests.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultDelay {
    pub fixed_delay: Duration,
    /// 0..100.
    pub percent: f64,
}

/// A proxy-made response for a share of requests.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultAbort {
    /// 200..599.
    pub http_status: u16,
    /// 0..100.
    pub percent: f64,
}

/// A copy of a share of a rule's requests to another backend, compiled from
/// `quiver.v1.Mirror`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub backend: Arc<Backend>,
    /// 0..100.
    pub percent: f64,
}

impl Fault {
    /// Compile `spec` (at `at`, e.g. `spec.rules[0].fault`), appending every problem to
    /// `errors`.
    pub fn compile(spec: &v1::Fault, at: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let before = errors.len();
        let delay = spec.delay.as_ref().and_then(|d| {
            let path = format!("{at}.delay");
            fields::percent(errors, &format!("{path}.percent"), d.percent);
            let fixed_delay =
                fields::duration(errors, &format!("{path}.fixedDelay"), &d.fixed_delay, true)?;
            Some(FaultDelay {
                fixed_delay,
                percent: d.percent,
            })
        });
        let abort = spec.abort.as_ref().and_then(|a| {
            let path = format!("{at}.abort");
            let status = u16::try_from(a.http_status)
                .ok()
                .filter(|s| (200..=599).contains(s));
            if status.is_none() {
                errors.push(err(
                    format!("{path}.httpStatus"),
                    format!("{} is outside 200..599", a.http_status),
                ));
            }
            fields::percent(errors, &format!("{path}.percent"), a.percent);
            Some(FaultAbort {
                http_status: status?,
                percent: a.percent,
            })
        });
        (errors.len() == before).then_some(Self { delay, abort })
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

impl Mirror {
    /// Compile `spec` (at `at`); an empty `service` means `own`, the route's service.
    pub fn compile(
        spec: &v1::Mirror,
        own: &str,
        at: &str,
        services: &Services<'_>,
        errors: &mut Vec<FieldError>,
    ) -> Option<Self> {
        let service = if spec.service.is_empty() {
            own
        } else {
            &spec.service
        };
        let before = errors.len();
        let backend = services.resolve(errors, at, service, &spec.subset);
        fields::percent(errors, &format!("{at}.percent"), spec.percent);
        (errors.len() == before).then_some(Self {
            backend: Arc::new(backend?),
            percent: spec.percent,
        })
    }

    /// Whether this request is copied, for a roll in `[0, 1)`.
    pub fn decide(&self, roll: f64) -> bool {
        hits(self.percent, roll)
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
            backend: Arc::new(Backend {
                service: "reviews".into(),
                subset: String::new(),
                selector: Default::default(),
            }),
            percent: 25.0,
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
        let spec = v1::Fault {
            delay: Some(v1::FaultDelay {
                fixed_delay: String::new(),
                percent: 101.0,
            }),
            abort: Some(v1::FaultAbort {
                http_status: 99,
                percent: -1.0,
            }),
        };
        assert_eq!(Fault::compile(&spec, "r", &mut e), None);
        let fields: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            fields,
            [
                "r.delay.percent",
                "r.delay.fixedDelay",
                "r.abort.httpStatus",
                "r.abort.percent"
            ]
        );
    }

    #[test]
    fn a_compiled_fault_keeps_its_values() {
        let spec = v1::Fault {
            delay: Some(v1::FaultDelay {
                fixed_delay: "250ms".into(),
                percent: 10.0,
            }),
            abort: None,
        };
        let f = Fault::compile(&spec, "r", &mut Vec::new()).unwrap();
        assert_eq!(f.decide(0.0, 0.0).delay, Some(Duration::from_millis(250)));
        assert_eq!(f.decide(0.0, 0.0).abort, None);
    }
}
