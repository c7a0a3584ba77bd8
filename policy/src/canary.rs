//! Progressive delivery, decided purely: when a canary's step is due for a check, how a
//! check is judged from what the proxies measured, and what the canary's status becomes.
//! The control plane's controller (`controlplane/src/canary.rs`) reads the measurements and
//! writes the status; nothing here reads a clock or the store (callers pass `now_ms`).
//!
//! The model (docs/canary.md): a canary walks `spec.steps` (canary weights). At each step it
//! waits `spec.interval`, then judges the canary subset's requests since the step began:
//! - fewer than `minRequests` requests: **inconclusive**: it stays at the step and says so,
//!   never promoting on no data (requests keep accumulating until there are enough);
//! - success rate below `minSuccessRate`, or p99 / p50 above their limits: **failed**; after
//!   `threshold` failed checks in a row it **rolls back** (canary weight 0) with the reason;
//!   a failed check below the threshold starts a fresh window at the same step;
//! - otherwise **passed**: the next step, or **promoted** (weight 100) after the last.
//!
//! A change of the spec or of the canary subset's workloads (`observed`, a hash the
//! controller computes) restarts the analysis at the first step, as Flagger does when a
//! canary changes mid-flight. Paused canaries hold their weight; the terminal phases
//! (Promoted, RolledBack, Aborted) hold theirs until the Canary is changed or deleted.

use std::time::Duration;

use quiver_api::v1;

use crate::latency::{LATENCY_BUCKETS, quantile_ms};

pub const PENDING: &str = "Pending";
pub const PROGRESSING: &str = "Progressing";
pub const PAUSED: &str = "Paused";
pub const PROMOTED: &str = "Promoted";
pub const ROLLED_BACK: &str = "RolledBack";
pub const ABORTED: &str = "Aborted";

/// Checks kept in the status (newest last).
pub const MAX_CHECKS: usize = 10;
/// Events kept in the status (newest last).
pub const MAX_EVENTS: usize = 50;
/// `minRequests` when the spec leaves it at 0.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
/// `minSuccessRate` when the spec leaves it at 0.
pub const DEFAULT_MIN_SUCCESS_RATE: f64 = 99.0;

/// What a canary's spec says about judging it, with the defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub steps: Vec<u32>,
    pub interval: Duration,
    pub min_success_rate: f64,
    pub max_p99_ms: Option<f64>,
    pub max_p50_ms: Option<f64>,
    pub min_requests: u64,
    pub threshold: u32,
    /// The share of requests copied to the canary subset in the mirror stage; 0: none.
    pub mirror_percent: f64,
}

impl Settings {
    /// The settings of a spec the API accepted (`crate::validate` checked it); `None` for
    /// one it would refuse (no steps, no interval).
    pub fn from_spec(spec: &v1::CanarySpec) -> Option<Self> {
        let interval = quiver_api::duration::parse(&spec.interval).ok()?;
        if spec.steps.is_empty() || interval.is_zero() {
            return None;
        }
        let criteria = spec.success_criteria.clone().unwrap_or_default();
        let ms = |s: &str| {
            (!s.is_empty())
                .then(|| quiver_api::duration::parse(s).ok())
                .flatten()
                .map(|d| d.as_secs_f64() * 1000.0)
        };
        Some(Self {
            steps: spec.steps.clone(),
            interval,
            min_success_rate: if criteria.min_success_rate > 0.0 {
                criteria.min_success_rate
            } else {
                DEFAULT_MIN_SUCCESS_RATE
            },
            max_p99_ms: ms(&criteria.max_p99_latency),
            max_p50_ms: ms(&criteria.max_p50_latency),
            min_requests: if spec.min_requests > 0 {
                u64::from(spec.min_requests)
            } else {
                DEFAULT_MIN_REQUESTS
            },
            threshold: spec.threshold.max(1),
            mirror_percent: spec.mirror_percent.clamp(0.0, 100.0),
        })
    }

    fn weight_at(&self, step: u32) -> u32 {
        self.steps.get(step as usize).copied().unwrap_or(100)
    }
}

/// Requests to one subset over a window, summed over every reporting proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            buckets: [0; LATENCY_BUCKETS],
        }
    }
}

impl Totals {
    /// Add one reported interval.
    pub fn add(&mut self, requests: u64, errors: u64, buckets: &[u64]) {
        self.requests = self.requests.saturating_add(requests);
        self.errors = self.errors.saturating_add(errors);
        for (sum, n) in self.buckets.iter_mut().zip(buckets) {
            *sum = sum.saturating_add(*n);
        }
    }

    pub fn measure(&self) -> v1::CanaryMeasure {
        let success_rate = if self.requests == 0 {
            0.0
        } else {
            100.0 * (self.requests - self.errors.min(self.requests)) as f64 / self.requests as f64
        };
        v1::CanaryMeasure {
            requests: self.requests,
            errors: self.errors,
            success_rate,
            p50_ms: quantile_ms(&self.buckets, 0.5),
            p99_ms: quantile_ms(&self.buckets, 0.99),
        }
    }
}

/// The judgement of one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Passed,
    Failed(String),
    Inconclusive(String),
}

impl Verdict {
    fn word(&self) -> &'static str {
        match self {
            Verdict::Passed => "Passed",
            Verdict::Failed(_) => "Failed",
            Verdict::Inconclusive(_) => "Inconclusive",
        }
    }

    fn reason(&self) -> String {
        match self {
            Verdict::Passed => String::new(),
            Verdict::Failed(r) | Verdict::Inconclusive(r) => r.clone(),
        }
    }
}

/// Judge the canary subset's measurements against the settings.
pub fn judge(settings: &Settings, canary: &v1::CanaryMeasure) -> Verdict {
    if canary.requests < settings.min_requests {
        return Verdict::Inconclusive(format!(
            "{} requests to the canary, fewer than minRequests {}: waiting for traffic",
            canary.requests, settings.min_requests
        ));
    }
    let mut failed = Vec::new();
    if canary.success_rate < settings.min_success_rate {
        failed.push(format!(
            "success rate {}% < {}%",
            round1(canary.success_rate),
            round1(settings.min_success_rate)
        ));
    }
    if let Some(max) = settings.max_p99_ms
        && canary.p99_ms > max
    {
        failed.push(format!(
            "p99 {}ms > {}ms",
            round1(canary.p99_ms),
            round1(max)
        ));
    }
    if let Some(max) = settings.max_p50_ms
        && canary.p50_ms > max
    {
        failed.push(format!(
            "p50 {}ms > {}ms",
            round1(canary.p50_ms),
            round1(max)
        ));
    }
    if failed.is_empty() {
        Verdict::Passed
    } else {
        Verdict::Failed(failed.join(", "))
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// What the controller should do for a canary now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Begin (or restart) the analysis at the first step; the reason is for the event list.
    Start(String),
    /// Judge the step: measure the subsets over `[since_ms, now]`.
    Check {
        since_ms: i64,
    },
    Nothing,
}

/// Whether a canary needs the controller now. `observed` is the controller's hash of the
/// spec and the canary subset's workloads.
pub fn due(settings: &Settings, status: &v1::CanaryStatus, observed: &str, now_ms: i64) -> Due {
    let phase = status.phase.as_str();
    let interval = i64::try_from(settings.interval.as_millis()).unwrap_or(i64::MAX);
    if phase.is_empty() || phase == PENDING {
        // A pre-rollout gate that failed is asked again an interval later.
        if phase == PENDING
            && status.observed == observed
            && let Some(last) = status.checks.last()
            && now_ms.saturating_sub(last.at_unix_ms) < interval
        {
            return Due::Nothing;
        }
        return Due::Start("analysis started".into());
    }
    if status.observed != observed {
        // A terminal canary restarts too: a new version in the canary subset is a new rollout.
        return Due::Start(
            "the canary changed (spec or the canary subset's workloads): analysis restarted \
             at the first step"
                .into(),
        );
    }
    if phase != PROGRESSING {
        return Due::Nothing;
    }
    let window_start = status.step_started_unix_ms;
    let last_check = status
        .checks
        .last()
        .filter(|c| c.step == status.current_step && c.at_unix_ms >= window_start)
        .map_or(window_start, |c| c.at_unix_ms);
    if now_ms.saturating_sub(last_check) >= interval {
        Due::Check {
            since_ms: window_start,
        }
    } else {
        Due::Nothing
    }
}

/// The status of a canary starting (again) at its first step.
pub fn start(
    settings: &Settings,
    status: &v1::CanaryStatus,
    observed: &str,
    reason: &str,
    now_ms: i64,
) -> v1::CanaryStatus {
    let mut next = status.clone();
    next.observed = observed.to_string();
    next.current_step = 0;
    next.failed_checks = 0;
    next.step_started_unix_ms = now_ms;
    next.step_started_at = rfc3339(now_ms);
    if settings.mirror_percent > 0.0 {
        next.mirroring = true;
        transition(
            &mut next,
            PROGRESSING,
            0,
            format!(
                "{reason}; mirror stage: {}% of requests copied to the canary subset, \
                 which serves no user",
                round1(settings.mirror_percent)
            ),
            now_ms,
        );
        return next;
    }
    next.mirroring = false;
    let weight = settings.weight_at(0);
    transition(
        &mut next,
        PROGRESSING,
        weight,
        format!("{reason}; step 1 of {} ({weight}%)", settings.steps.len()),
        now_ms,
    );
    next
}

/// What the canary's webhooks answered for a check: why the `rollout` hooks failed it, and
/// (asked only when the check would promote) why `confirm-promotion` holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gates {
    pub rollout: Option<String>,
    pub confirm_promotion: Option<String>,
}

/// Whether a passing check of the current step would promote the canary (its last step):
/// when the controller must ask the `confirm-promotion` hooks.
pub fn would_promote(
    settings: &Settings,
    status: &v1::CanaryStatus,
    canary: &v1::CanaryMeasure,
) -> bool {
    !status.mirroring
        && status.current_step as usize + 1 >= settings.steps.len()
        && judge(settings, canary) == Verdict::Passed
}

/// The status after a `pre-rollout` hook refused to start the canary: a failed check (the
/// canary stays Pending and asks again an interval later), and after `threshold` of them in a
/// row, a rollback.
pub fn pre_rollout_failed(
    settings: &Settings,
    status: &v1::CanaryStatus,
    observed: &str,
    reason: &str,
    now_ms: i64,
) -> v1::CanaryStatus {
    let mut next = status.clone();
    if next.observed != observed {
        next.observed = observed.to_string();
        next.failed_checks = 0;
    }
    next.checks.push(v1::CanaryCheck {
        at: rfc3339(now_ms),
        at_unix_ms: now_ms,
        step: 0,
        weight: 0,
        result: "Failed".into(),
        reason: reason.to_string(),
        canary: None,
        stable: None,
    });
    let excess = next.checks.len().saturating_sub(MAX_CHECKS);
    next.checks.drain(..excess);
    next.failed_checks += 1;
    let n = next.failed_checks;
    if n >= settings.threshold {
        transition(
            &mut next,
            ROLLED_BACK,
            0,
            format!("{reason} before the first step, {n} time(s): not started"),
            now_ms,
        );
    } else {
        transition(
            &mut next,
            PENDING,
            0,
            format!(
                "{reason}: not started (failed check {n} of {} before a rollback)",
                settings.threshold
            ),
            now_ms,
        );
    }
    next
}

/// The status after judging a check of the current step.
pub fn after_check(
    settings: &Settings,
    status: &v1::CanaryStatus,
    canary: v1::CanaryMeasure,
    stable: v1::CanaryMeasure,
    gates: &Gates,
    now_ms: i64,
) -> v1::CanaryStatus {
    let mut verdict = judge(settings, &canary);
    if let Some(hook) = &gates.rollout {
        verdict = Verdict::Failed(match verdict {
            Verdict::Failed(r) => format!("{r}, {hook}"),
            _ => hook.clone(),
        });
    }
    let mut next = status.clone();
    let step = status.current_step;
    let weight = status.canary_weight;
    next.checks.push(v1::CanaryCheck {
        at: rfc3339(now_ms),
        at_unix_ms: now_ms,
        step,
        weight,
        result: verdict.word().into(),
        reason: verdict.reason(),
        canary: Some(canary),
        stable: Some(stable),
    });
    let excess = next.checks.len().saturating_sub(MAX_CHECKS);
    next.checks.drain(..excess);
    let of = settings.steps.len();
    let at = if status.mirroring {
        "in the mirror stage".to_string()
    } else {
        format!("at step {} ({weight}%)", step + 1)
    };
    match verdict {
        Verdict::Passed if status.mirroring => {
            next.failed_checks = 0;
            next.mirroring = false;
            next.step_started_unix_ms = now_ms;
            next.step_started_at = rfc3339(now_ms);
            let w = settings.weight_at(0);
            transition(
                &mut next,
                PROGRESSING,
                w,
                format!("mirror stage passed; step 1 of {of} ({w}%)"),
                now_ms,
            );
        }
        Verdict::Passed => {
            next.failed_checks = 0;
            if step as usize + 1 >= of
                && let Some(hold) = &gates.confirm_promotion
            {
                next.message = format!("step {} passed; promotion waits: {hold}", step + 1);
            } else if step as usize + 1 >= of {
                transition(
                    &mut next,
                    PROMOTED,
                    100,
                    format!("all {of} steps passed: all traffic to the canary subset"),
                    now_ms,
                );
            } else {
                next.current_step = step + 1;
                next.step_started_unix_ms = now_ms;
                next.step_started_at = rfc3339(now_ms);
                let w = settings.weight_at(step + 1);
                transition(
                    &mut next,
                    PROGRESSING,
                    w,
                    format!("step {} passed; step {} of {of} ({w}%)", step + 1, step + 2),
                    now_ms,
                );
            }
        }
        Verdict::Failed(reason) => {
            next.failed_checks = status.failed_checks + 1;
            let n = next.failed_checks;
            if n >= settings.threshold {
                let checks = if n == 1 {
                    "1 check".to_string()
                } else {
                    format!("{n} checks in a row")
                };
                next.mirroring = false;
                transition(
                    &mut next,
                    ROLLED_BACK,
                    0,
                    format!("{reason} {at}, {checks}: all traffic back to the stable subset"),
                    now_ms,
                );
            } else {
                // A fresh window at the same step.
                next.step_started_unix_ms = now_ms;
                next.step_started_at = rfc3339(now_ms);
                next.message = format!(
                    "{reason} {at}: failed check {n} of {} before a rollback",
                    settings.threshold
                );
            }
        }
        Verdict::Inconclusive(reason) => {
            next.message = format!("{reason} {at}");
        }
    }
    next
}

/// A manual action on a canary (pause, resume, promote now, abort): the new status, or why
/// it does not apply in the current phase.
pub fn act(
    settings: &Settings,
    status: &v1::CanaryStatus,
    action: Action,
    reason: &str,
    now_ms: i64,
) -> Result<v1::CanaryStatus, String> {
    let phase = if status.phase.is_empty() {
        PENDING
    } else {
        status.phase.as_str()
    };
    let by = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    let mut next = status.clone();
    match (action, phase) {
        (Action::Pause, PROGRESSING | PENDING) => {
            let w = status.canary_weight;
            transition(&mut next, PAUSED, w, format!("paused at {w}%{by}"), now_ms);
        }
        (Action::Resume, PAUSED) => {
            // The step's window starts again: what happened while paused is not judged.
            next.step_started_unix_ms = now_ms;
            next.step_started_at = rfc3339(now_ms);
            let w = if status.mirroring {
                0
            } else {
                settings.weight_at(status.current_step)
            };
            transition(
                &mut next,
                PROGRESSING,
                w,
                format!("resumed at {w}%{by}"),
                now_ms,
            );
        }
        (Action::Promote, PROGRESSING | PAUSED | PENDING | ROLLED_BACK | ABORTED) => {
            next.mirroring = false;
            transition(
                &mut next,
                PROMOTED,
                100,
                format!("promoted by hand: all traffic to the canary subset{by}"),
                now_ms,
            );
        }
        (Action::Abort, PROGRESSING | PAUSED | PENDING | PROMOTED) => {
            next.mirroring = false;
            transition(
                &mut next,
                ABORTED,
                0,
                format!("aborted by hand: all traffic back to the stable subset{by}"),
                now_ms,
            );
        }
        (action, phase) => {
            return Err(format!("cannot {} a canary that is {phase}", action.verb()));
        }
    }
    Ok(next)
}

/// A manual action on a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Abort => "abort",
        }
    }
}

/// Enter `phase` at `weight` (an event when the phase or the weight changes).
fn transition(
    status: &mut v1::CanaryStatus,
    phase: &str,
    weight: u32,
    message: String,
    now_ms: i64,
) {
    if status.phase != phase || status.canary_weight != weight {
        status.last_transition_time = rfc3339(now_ms);
        status.events.push(v1::CanaryEvent {
            at: rfc3339(now_ms),
            phase: phase.into(),
            message: message.clone(),
        });
        let excess = status.events.len().saturating_sub(MAX_EVENTS);
        status.events.drain(..excess);
    }
    status.phase = phase.into();
    status.canary_weight = weight;
    status.message = message;
}

/// The canary weight a canary in `status` puts in effect, if it has taken over the split:
/// `None` before it started (the Route as written applies).
pub fn weight_in_effect(status: Option<&v1::CanaryStatus>) -> Option<u32> {
    let status = status?;
    match status.phase.as_str() {
        PROGRESSING | PAUSED | PROMOTED | ROLLED_BACK | ABORTED => Some(status.canary_weight),
        _ => None,
    }
}

/// The share of requests a canary in `status` has copied to its canary subset: in its mirror
/// stage (running or paused), the spec's `mirrorPercent`.
pub fn mirror_in_effect(spec: &v1::CanarySpec, status: Option<&v1::CanaryStatus>) -> Option<f64> {
    let status = status?;
    (status.mirroring && matches!(status.phase.as_str(), PROGRESSING | PAUSED))
        .then_some(spec.mirror_percent.clamp(0.0, 100.0))
        .filter(|p| *p > 0.0)
}

/// `ms` (Unix milliseconds, UTC) as RFC 3339 with milliseconds, e.g.
/// `2026-12-06T23:40:00.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

#[cfg(test)]
mod tests;
