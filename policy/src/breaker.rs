//! Circuit breaking: per-endpoint limits on outstanding and pending requests, refused fast.
//!
//! Owns the counters of one endpoint and the admission rule. It must not queue or wait:
//! a request over a limit is refused at once with [`Overloaded`], which the data path answers
//! as `503` with `quiver-error: overloaded` (a `ProxyError` variant the integration adds).

use serde::{Deserialize, Serialize};

/// Limits per endpoint (proxy tuning; the Route resource carries none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitLimits {
    /// Requests outstanding on one endpoint (pending + active).
    pub max_requests: u32,
    /// Requests waiting for a connection to one endpoint (handshake in progress).
    pub max_pending: u32,
}

impl Default for CircuitLimits {
    fn default() -> Self {
        Self {
            max_requests: 1024,
            max_pending: 1024,
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overloaded {
    /// `max_requests` outstanding already.
    MaxRequests,
    /// `max_pending` waiting for a connection already.
    MaxPending,
}

impl Overloaded {
    /// Label for metrics and access logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Overloaded::MaxRequests => "max-requests",
            Overloaded::MaxPending => "max-pending",
        }
    }
}

/// One endpoint's outstanding requests. Every successful admission must be matched by one
/// [`Counters::finish`] (the data path holds a guard that calls it on drop).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Waiting for a connection.
    pub pending: u32,
    /// Sent (or being sent) on an established connection.
    pub active: u32,
}

/// Whether a request is admitted as waiting for a connection or straight onto one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The endpoint has no ready connection; the request counts as pending.
    Pending,
    /// A connection is ready; the request counts as active.
    Active,
}

impl Counters {
    /// Requests outstanding (pending + active): the "pending" of the load balancer's cost.
    pub fn outstanding(&self) -> u32 {
        self.pending + self.active
    }

    /// Whether a new request would be refused right now.
    pub fn is_full(&self, limits: &CircuitLimits) -> bool {
        self.outstanding() >= limits.max_requests
    }

    /// Admit a request at `stage`, or refuse it.
    pub fn admit(&mut self, limits: &CircuitLimits, stage: Stage) -> Result<(), Overloaded> {
        if self.outstanding() >= limits.max_requests {
            return Err(Overloaded::MaxRequests);
        }
        match stage {
            Stage::Pending if self.pending >= limits.max_pending => Err(Overloaded::MaxPending),
            Stage::Pending => {
                self.pending += 1;
                Ok(())
            }
            Stage::Active => {
                self.active += 1;
                Ok(())
            }
        }
    }

    /// A pending request got its connection.
    pub fn connected(&mut self) {
        if self.pending > 0 {
            self.pending -= 1;
            self.active += 1;
        }
    }

    /// A request admitted at `stage` (or moved to active by [`Counters::connected`]) ended.
    pub fn finish(&mut self, stage: Stage) {
        match stage {
            Stage::Pending => self.pending = self.pending.saturating_sub(1),
            Stage::Active => self.active = self.active.saturating_sub(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_requests_counts_pending_and_active() {
        let limits = CircuitLimits {
            max_requests: 3,
            max_pending: 2,
        };
        let mut c = Counters::default();
        assert_eq!(c.admit(&limits, Stage::Pending), Ok(()));
        assert_eq!(c.admit(&limits, Stage::Pending), Ok(()));
        assert_eq!(
            c.admit(&limits, Stage::Pending),
            Err(Overloaded::MaxPending)
        );
        assert_eq!(c.admit(&limits, Stage::Active), Ok(()));
        assert!(c.is_full(&limits));
        assert_eq!(
            c.admit(&limits, Stage::Active),
            Err(Overloaded::MaxRequests)
        );
        c.connected();
        assert_eq!(
            c,
            Counters {
                pending: 1,
                active: 2
            }
        );
        c.finish(Stage::Active);
        assert!(!c.is_full(&limits));
        assert_eq!(c.admit(&limits, Stage::Pending), Ok(()));
        assert_eq!(c.outstanding(), 3);
        c.finish(Stage::Pending);
        c.finish(Stage::Pending);
        c.finish(Stage::Active);
        c.finish(Stage::Active);
        assert_eq!(c, Counters::default());
    }

    #[test]
    fn refusal_leaves_counters_unchanged() {
        let limits = CircuitLimits {
            max_requests: 1,
            max_pending: 1,
        };
        let mut c = Counters::default();
        c.admit(&limits, Stage::Active).unwrap();
        let before = c;
        assert!(c.admit(&limits, Stage::Pending).is_err());
        assert_eq!(c, before);
    }
}
