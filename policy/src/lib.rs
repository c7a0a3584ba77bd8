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
//! mirror), [`authz`] (inbound allow/deny), [`plan`] (one request's combined decision).
//! Field names follow `quiver.v1` (resources.proto) so the control plane's messages convert
//! one-to-one; YAML uses the same camelCase spelling as `quiverctl` documents.

pub mod authz;
pub mod balance;
pub mod breaker;
pub mod fault;
pub mod outlier;
pub mod plan;
pub mod retry;
pub mod route;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Workload labels, and label selectors (a selector matches labels that contain all of it).
pub type Labels = BTreeMap<String, String>;

/// A named group of a service's workloads (`quiver.v1.Subset`), e.g. `v2` = `version: v2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    pub labels: Labels,
}

/// Whether `labels` carry every pair of `selector` (an empty selector matches everything).
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The methods a route or authorization rule may name (as the control plane validates them).
pub const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Report each entry of `methods` (at `at[i]`) that is not one of [`METHODS`].
pub(crate) fn check_methods(
    methods: &[String],
    at: &str,
    errors: &mut Vec<quiver_api::validate::FieldError>,
) {
    for (i, m) in methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            errors.push(quiver_api::validate::FieldError {
                path: format!("{at}[{i}]"),
                reason: format!(
                    "{m:?} is not an HTTP method (one of {})",
                    METHODS.join(", ")
                ),
            });
        }
    }
}

/// Whether a roll in `[0, 1)` falls within `percent` (0..100) of requests. `percent` 0 never
/// hits; 100 always does.
pub fn hits(percent: f64, roll: f64) -> bool {
    roll * 100.0 < percent
}

/// `Option<Duration>` as a human duration string (`250ms`, `5s`), absent when `None`.
pub(crate) mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&quiver_api::duration::format(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| quiver_api::duration::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
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
