//! Traffic policy as pure logic: route matching, weighted backends, load balancing, retries,
//! circuit breaking, outlier detection, fault injection, mirroring and authorization.
//!
//! Everything here is a plain struct or function over values the caller passes in: the
//! request head, the time (`Instant` arguments, never `Instant::now()`), and random numbers
//! (rolls), so each decision is tested exactly without sockets or a clock we don't control.
//! This module must not do I/O, spawn tasks, sleep or read the environment; the data path
//! calls it, carries out what it decides and reports back what happened.
//!
//! Map: [`route`] (rules and weighted backends), [`balance`] (which endpoint: P2C over
//! peak-EWMA, round-robin, locality, reported load), [`breaker`] (concurrency limits),
//! [`outlier`] (ejection), [`retry`] (eligibility, backoff, budget), [`fault`] (delay, abort,
//! mirror), [`authz`] (inbound allow/deny), [`mesh`] (mesh-wide defaults), [`path`] (the one
//! normal form of a request path that routes and authorization match), [`plan`] (one
//! request's combined decision).
//!
//! The input is the `quiver.v1` specs themselves (`RouteSpec`, `AuthorizationPolicySpec`,
//! `MeshConfigSpec`, a Service's subsets): the control plane validates a resource by compiling
//! it ([`validate`]), the proxy compiles the same messages from a push or its static file, and
//! the console compiles them in the browser, so all three report the same errors with the same
//! field paths ([`quiver_api::validate::FieldError`]). [`services`] says what the compiler
//! does with a Service it does not know. ARCHITECTURE.md has the whole config flow.

pub mod authz;
pub mod balance;
pub mod breaker;
pub mod canary;
pub mod fault;
mod fields;
pub mod filters;
pub mod gateway;
pub mod latency;
pub mod mesh;
pub mod outlier;
pub mod path;
pub mod plan;
pub mod retry;
pub mod route;
pub mod services;
pub mod validate;

use std::collections::BTreeMap;

/// A named group of a service's workloads, e.g. `v2` = `version: v2`: the `quiver.v1` message
/// itself, re-exported because subsets are what route backends resolve to.
pub use quiver_api::v1::Subset;

/// Workload labels, and label selectors (a selector matches labels that contain all of it).
pub type Labels = BTreeMap<String, String>;

/// Whether `labels` carry every pair of `selector` (an empty selector matches everything).
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The methods a route or authorization rule may name.
pub const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Whether a roll in `[0, 1)` falls within `percent` (0..100) of requests. `percent` 0 never
/// hits; 100 always does.
pub fn hits(percent: f64, roll: f64) -> bool {
    roll * 100.0 < percent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_hits_are_exact_at_the_edges() {
        assert!(!hits(0.0, 0.0));
        assert!(hits(100.0, 0.999_999));
        assert!(hits(50.0, 0.499));
        assert!(!hits(50.0, 0.5));
    }

    #[test]
    fn selectors_need_every_pair() {
        let l = |p: &[(&str, &str)]| -> Labels {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let labels = l(&[("app", "reviews"), ("version", "v2")]);
        assert!(selects(&l(&[]), &labels));
        assert!(selects(&l(&[("version", "v2")]), &labels));
        assert!(!selects(&l(&[("version", "v1")]), &labels));
        assert!(!selects(&l(&[("version", "v2"), ("zone", "a")]), &labels));
    }
}
