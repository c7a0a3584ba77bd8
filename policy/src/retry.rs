//! Retries: whether a failed attempt may be tried again, how long to wait first, and the
//! budget that keeps retries from turning an outage into a storm.
//!
//! Owns the compiled form of `quiver.v1.Retries`, the retry-on conditions, the replay-safety
//! rule, exponential backoff with injected jitter and the sliding-window retry budget. It
//! must not send anything, sleep or read the clock: the data path reports each attempt's
//! [`Outcome`] and the time, and carries out the [`RetryDecision`].

use std::time::{Duration, Instant};

use quiver_api::v1;
use quiver_api::validate::FieldError;
use serde::{Deserialize, Serialize};

use crate::fields::{self, err};

/// A route rule's retry settings, compiled from `quiver.v1.Retries`.
#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    /// Total attempts including the first, 1..10.
    pub attempts: u32,
    /// Timeout of each attempt; absent means only the rule's overall timeout applies.
    pub per_try_timeout: Option<Duration>,
    /// Conditions that make an attempt worth repeating.
    pub retry_on: Vec<RetryOn>,
    /// Extra load retries may add, percent of requests (0..100; 0 means the default 20).
    pub budget_percent: f64,
}

impl Retries {
    /// Compile `spec` (at `at`, e.g. `spec.rules[1].retries`), appending every problem to
    /// `errors`.
    pub fn compile(spec: &v1::Retries, at: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let before = errors.len();
        if !(1..=10).contains(&spec.attempts) {
            errors.push(err(
                format!("{at}.attempts"),
                format!("{} is outside 1..10", spec.attempts),
            ));
        }
        let per_try_timeout = fields::duration(
            errors,
            &format!("{at}.perTryTimeout"),
            &spec.per_try_timeout,
            false,
        );
        let mut retry_on = Vec::new();
        for (k, on) in spec.retry_on.iter().enumerate() {
            match RetryOn::parse(on) {
                Some(c) => retry_on.push(c),
                None => errors.push(err(
                    format!("{at}.retryOn[{k}]"),
                    format!(
                        "{on:?} is not one of {}",
                        RetryOn::ALL.map(RetryOn::as_str).join(", ")
                    ),
                )),
            }
        }
        fields::percent(errors, &format!("{at}.budgetPercent"), spec.budget_percent);
        (errors.len() == before).then_some(Self {
            attempts: spec.attempts,
            per_try_timeout,
            retry_on,
            budget_percent: spec.budget_percent,
        })
    }

    /// The budget ratio: `budget_percent / 100`, or the default 0.2.
    pub fn budget_ratio(&self) -> f64 {
        if self.budget_percent > 0.0 {
            self.budget_percent / 100.0
        } else {
            DEFAULT_BUDGET_RATIO
        }
    }
}

/// Default share of extra load retries may add.
pub const DEFAULT_BUDGET_RATIO: f64 = 0.2;

/// A retry-on condition (`retryOn` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// `5xx`: any 5xx status, a reset, a connect failure or a per-try timeout.
    FiveXx,
    /// `gateway-error`: 502, 503 or 504, a connect failure or a per-try timeout.
    GatewayError,
    /// `reset`: the stream or connection broke before a response head arrived.
    Reset,
    /// `connect-failure`: the peer proxy or the app could not be reached; the request never
    /// left.
    ConnectFailure,
    /// `retriable-4xx`: 409 Conflict.
    Retriable4xx,
    /// `unavailable`: grpc-status 14.
    Unavailable,
    /// `cancelled`: grpc-status 1.
    Cancelled,
    /// `deadline-exceeded`: grpc-status 4.
    DeadlineExceeded,
    /// `resource-exhausted`: grpc-status 8.
    ResourceExhausted,
}

impl RetryOn {
    /// Every condition, in the order the docs list them.
    pub const ALL: [RetryOn; 9] = [
        RetryOn::FiveXx,
        RetryOn::GatewayError,
        RetryOn::Reset,
        RetryOn::ConnectFailure,
        RetryOn::Retriable4xx,
        RetryOn::Unavailable,
        RetryOn::Cancelled,
        RetryOn::DeadlineExceeded,
        RetryOn::ResourceExhausted,
    ];

    /// The name as written in `retryOn`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::FiveXx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Reset => "reset",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::Retriable4xx => "retriable-4xx",
            RetryOn::Unavailable => "unavailable",
            RetryOn::Cancelled => "cancelled",
            RetryOn::DeadlineExceeded => "deadline-exceeded",
            RetryOn::ResourceExhausted => "resource-exhausted",
        }
    }

    /// The condition named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// What one attempt came to, as the data path saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived. `grpc_status` is read from the head (a trailers-only gRPC
    /// response), since a response whose body already went to the client cannot be retried.
    Response {
        status: u16,
        grpc_status: Option<u32>,
    },
    /// Reset or broken before a response head.
    Reset,
    /// Could not connect; nothing was sent.
    ConnectFailure,
    /// No response head within the per-try timeout.
    Timeout,
}

impl Outcome {
    /// Whether the attempt succeeded as far as outlier detection is concerned (no 5xx, no
    /// transport failure).
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Response { status, .. } if *status < 500)
    }
}

/// The first condition in `retry_on` that `outcome` meets.
pub fn condition(outcome: Outcome, retry_on: &[RetryOn]) -> Option<RetryOn> {
    retry_on.iter().copied().find(|on| meets(outcome, *on))
}

fn meets(outcome: Outcome, on: RetryOn) -> bool {
    use Outcome as O;
    use RetryOn as R;
    match (on, outcome) {
        (R::FiveXx, O::Response { status, .. }) => (500..600).contains(&status),
        (R::FiveXx, O::Reset | O::ConnectFailure | O::Timeout) => true,
        (R::GatewayError, O::Response { status, .. }) => matches!(status, 502..=504),
        (R::GatewayError, O::ConnectFailure | O::Timeout) => true,
        (R::Reset, O::Reset) => true,
        (R::ConnectFailure, O::ConnectFailure) => true,
        (R::Retriable4xx, O::Response { status, .. }) => status == 409,
        (R::Unavailable, O::Response { grpc_status, .. }) => grpc_status == Some(14),
        (R::Cancelled, O::Response { grpc_status, .. }) => grpc_status == Some(1),
        (R::DeadlineExceeded, O::Response { grpc_status, .. }) => grpc_status == Some(4),
        (R::ResourceExhausted, O::Response { grpc_status, .. }) => grpc_status == Some(8),
        _ => false,
    }
}

/// How much of the request body the proxy still holds for a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    /// No body at all.
    Empty,
    /// The whole body, this many bytes, kept in memory.
    Buffered(usize),
    /// Streamed through (too large or not yet complete): it cannot be sent again.
    NotHeld,
}

/// Methods whose repetition has the same effect as one call (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Proxy-wide retry knobs that the `Retries` resource does not carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryTuning {
    /// Largest request body held for replay, bytes.
    pub max_buffered_body: usize,
    /// First backoff ceiling; doubles on each retry.
    #[serde(with = "quiver_api::duration::serde_human")]
    pub backoff_base: Duration,
    /// Largest backoff ceiling.
    #[serde(with = "quiver_api::duration::serde_human")]
    pub backoff_max: Duration,
    /// Budget window (whole seconds; at least 1 s).
    #[serde(with = "quiver_api::duration::serde_human")]
    pub budget_window: Duration,
    /// Retries always allowed per second of window, whatever the ratio says.
    pub min_retries_per_second: u32,
}

impl Default for RetryTuning {
    fn default() -> Self {
        Self {
            max_buffered_body: 64 * 1024,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget_window: Duration::from_secs(10),
            min_retries_per_second: 10,
        }
    }
}

/// Why an attempt is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    /// The outcome meets no configured condition (success, or a failure not asked for).
    NotRetriable,
    /// Every configured attempt was used.
    AttemptsExhausted,
    /// The body was streamed and cannot be sent again.
    BodyNotHeld,
    /// The held body exceeds `max_buffered_body`.
    BodyTooLarge,
    /// A non-idempotent request whose fate at the app is unknown (reset or timeout).
    NotIdempotent,
    /// CONNECT tunnels are never replayed.
    Tunnel,
    /// The retry budget is spent.
    BudgetExhausted,
    /// The request's overall timeout would pass before the retry could start.
    Deadline,
}

impl Final {
    /// Label for metrics and access logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Final::NotRetriable => "not-retriable",
            Final::AttemptsExhausted => "attempts-exhausted",
            Final::BodyNotHeld => "body-not-held",
            Final::BodyTooLarge => "body-too-large",
            Final::NotIdempotent => "not-idempotent",
            Final::Tunnel => "tunnel",
            Final::BudgetExhausted => "budget-exhausted",
            Final::Deadline => "deadline",
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after `backoff`, because of `condition`.
    Retry {
        condition: RetryOn,
        backoff: Duration,
    },
    /// Answer with this attempt's outcome.
    Final(Final),
}

/// One finished attempt, as the data path reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt<'a> {
    /// Attempts made so far, this one included (1 after the first).
    pub made: u32,
    pub outcome: Outcome,
    pub method: &'a str,
    pub body: BodyState,
}

/// Whether a request may be replayed after `attempt`, before the budget is asked.
///
/// A replay must be possible (no body, or the whole body held within the limit; never a
/// CONNECT) and harmless: idempotent methods are replayed on every configured condition;
/// others (POST, PATCH) only when the failure says the app did not act or said so itself —
/// a connect failure or an explicit response status — never after a silent reset or a
/// timeout, where the app may have done the work.
pub fn eligible(
    retries: &Retries,
    tuning: &RetryTuning,
    attempt: &Attempt<'_>,
) -> Result<RetryOn, Final> {
    let on = condition(attempt.outcome, &retries.retry_on).ok_or(Final::NotRetriable)?;
    if attempt.made >= retries.attempts {
        return Err(Final::AttemptsExhausted);
    }
    if attempt.method == "CONNECT" {
        return Err(Final::Tunnel);
    }
    match attempt.body {
        BodyState::NotHeld => return Err(Final::BodyNotHeld),
        BodyState::Buffered(n) if n > tuning.max_buffered_body => {
            return Err(Final::BodyTooLarge);
        }
        _ => {}
    }
    if !is_idempotent(attempt.method)
        && matches!(attempt.outcome, Outcome::Reset | Outcome::Timeout)
    {
        return Err(Final::NotIdempotent);
    }
    Ok(on)
}

/// Backoff before retry number `retry` (1 for the first retry): the ceiling
/// `min(base * 2^(retry-1), max)`, of which half is fixed and half scaled by `jitter` in
/// `[0, 1)` — so the wait lies in `[ceiling/2, ceiling)`.
pub fn backoff(tuning: &RetryTuning, retry: u32, jitter: f64) -> Duration {
    let exp = retry.saturating_sub(1).min(20);
    let ceiling = tuning
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(tuning.backoff_max);
    let half = ceiling / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// The whole retry decision after an attempt: eligibility, then the overall deadline (a
/// retry that could not start before it is pointless), then the budget (withdrawn only for
/// a retry that will happen), then backoff. `jitter` is a random number in `[0, 1)`.
pub fn decide(
    retries: &Retries,
    tuning: &RetryTuning,
    budget: &mut RetryBudget,
    attempt: &Attempt<'_>,
    now: Instant,
    deadline: Option<Instant>,
    jitter: f64,
) -> RetryDecision {
    let condition = match eligible(retries, tuning, attempt) {
        Ok(c) => c,
        Err(f) => return RetryDecision::Final(f),
    };
    let backoff = backoff(tuning, attempt.made, jitter);
    if deadline.is_some_and(|d| now + backoff >= d) {
        return RetryDecision::Final(Final::Deadline);
    }
    if !budget.try_withdraw(now) {
        return RetryDecision::Final(Final::BudgetExhausted);
    }
    RetryDecision::Retry { condition, backoff }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    requests: u64,
    retries: u64,
}

/// A retry budget over a sliding window of one-second buckets (Linkerd / Envoy style):
/// a retry is allowed while `retries + 1 <= ratio * requests + min_per_second * window`,
/// counting original requests and retries in the last `window`.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    floor: f64,
    origin: Instant,
    buckets: Vec<Bucket>,
}

impl RetryBudget {
    /// A budget with `ratio` of extra load, created at `now`.
    pub fn new(ratio: f64, tuning: &RetryTuning, now: Instant) -> Self {
        let secs = tuning.budget_window.as_secs().max(1);
        Self {
            ratio,
            floor: f64::from(tuning.min_retries_per_second) * secs as f64,
            origin: now,
            buckets: vec![Bucket::default(); secs as usize],
        }
    }

    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        // Bucket 0 stands for second 0 at creation: offset by one so "second 0" is never
        // mistaken for an empty bucket.
        let second = now.saturating_duration_since(self.origin).as_secs() + 1;
        let len = self.buckets.len();
        let b = &mut self.buckets[(second % len as u64) as usize];
        if b.second != second {
            *b = Bucket {
                second,
                requests: 0,
                retries: 0,
            };
        }
        b
    }

    fn totals(&self, now: Instant) -> (u64, u64) {
        let second = now.saturating_duration_since(self.origin).as_secs() + 1;
        let oldest = second.saturating_sub(self.buckets.len() as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| b.second >= oldest && b.second <= second)
            .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries))
    }

    /// Count an original request (call once per request, not per attempt).
    pub fn deposit(&mut self, now: Instant) {
        self.bucket(now).requests += 1;
    }

    /// Take one retry from the budget if there is room; counts it when it succeeds.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.totals(now);
        if (retries + 1) as f64 <= self.ratio * requests as f64 + self.floor {
            self.bucket(now).retries += 1;
            true
        } else {
            false
        }
    }

    /// Change the ratio (a route's `budgetPercent` was edited); counts are kept.
    pub fn set_ratio(&mut self, ratio: f64) {
        self.ratio = ratio;
    }

    /// Requests and retries counted in the window ending at `now`.
    pub fn window(&self, now: Instant) -> (u64, u64) {
        self.totals(now)
    }
}

#[cfg(test)]
mod tests;
