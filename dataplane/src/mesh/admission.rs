//! Which peers' connection attempts the proxy takes on (`tuning.limits`): a bound on
//! connections in total and per source address, a bound on handshakes in progress, and QUIC
//! address validation (Retry) once handshakes pile up.
//!
//! The decision is made before any handshake work, from counters alone: an attempt is
//! accepted with a [`Permit`] that counts it until its connection ends, answered with a
//! Retry, or refused. Per-address counts include only addresses a peer has proven (by a
//! Retry token or a completed handshake), so spoofed Initials cannot use up a real peer's
//! share. The counters are touched once per connection, never per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::limits::{self, Limit, Limits, Refusals};

/// What to do with one connection attempt.
pub enum Decision {
    /// Take it on; the permit counts it until dropped.
    Accept(Permit),
    /// Ask the peer to prove its address first (stateless).
    Retry,
    /// Refuse it (CONNECTION_REFUSED), counted under the limit that decided.
    Refuse(Limit),
}

/// The counters every attempt is judged against.
pub struct Admission {
    state: Arc<State>,
    refusals: Refusals,
    retries: Counter,
}

struct State {
    max_connections: u32,
    max_per_peer: u32,
    max_handshakes: u32,
    retry_above: u32,
    /// Attempts accepted and not yet ended (handshaking or open).
    connections: AtomicU32,
    handshakes: AtomicU32,
    /// Open or handshaking connections per proven source address.
    per_peer: Mutex<HashMap<IpAddr, u32>>,
    /// Mirrors `handshakes` for `/metrics`.
    handshaking: Gauge,
}

impl Admission {
    pub fn new(limits: &Limits, refusals: Refusals, retries: Counter, handshaking: Gauge) -> Self {
        Self {
            state: Arc::new(State {
                max_connections: limits.max_connections,
                max_per_peer: limits.max_connections_per_peer,
                max_handshakes: limits.max_handshakes,
                retry_above: limits.retry_above_handshakes,
                connections: AtomicU32::new(0),
                handshakes: AtomicU32::new(0),
                per_peer: Mutex::new(HashMap::new()),
                handshaking,
            }),
            refusals,
            retries,
        }
    }

    /// Judge an attempt from `peer`; `validated` when it carries a valid Retry token.
    pub fn decide(&self, peer: IpAddr, validated: bool) -> Decision {
        let s = &self.state;
        let decision = if s.connections.load(Ordering::Relaxed) >= s.max_connections {
            Decision::Refuse(Limit::Connections)
        } else if s.handshakes.load(Ordering::Relaxed) >= s.max_handshakes {
            Decision::Refuse(Limit::Handshakes)
        } else if !validated && s.handshakes.load(Ordering::Relaxed) >= s.retry_above {
            Decision::Retry
        } else {
            // Only the accept loop (one task) adds here: the checks above cannot be overtaken.
            s.connections.fetch_add(1, Ordering::Relaxed);
            s.handshakes.fetch_add(1, Ordering::Relaxed);
            s.handshaking.inc();
            let mut permit = Permit {
                state: s.clone(),
                peer,
                handshaking: true,
                proven: false,
            };
            if !validated || permit.try_prove() {
                Decision::Accept(permit)
            } else {
                Decision::Refuse(Limit::ConnectionsPerPeer)
            }
        };
        match &decision {
            Decision::Refuse(limit) => limits::count(&self.refusals, *limit),
            Decision::Retry => {
                self.retries.inc();
            }
            Decision::Accept(_) => {}
        }
        decision
    }

    /// A handshake just completed for `permit`: its address is proven now. `false` (counted)
    /// when that makes one connection too many for its address: the caller closes it.
    pub fn handshake_done(&self, permit: &mut Permit) -> bool {
        permit.end_handshake();
        if permit.proven || permit.try_prove() {
            return true;
        }
        limits::count(&self.refusals, Limit::ConnectionsPerPeer);
        false
    }
}

/// One accepted attempt, counted until it is dropped (its handshake failed or its
/// connection closed).
pub struct Permit {
    state: Arc<State>,
    peer: IpAddr,
    handshaking: bool,
    /// Counted under its address.
    proven: bool,
}

impl Permit {
    /// Count this connection under its address, unless the address is at its limit. Check
    /// and add under one lock: handshakes complete on many tasks at once.
    fn try_prove(&mut self) -> bool {
        let mut per_peer = lock(&self.state.per_peer);
        let n = per_peer.entry(self.peer).or_insert(0);
        if *n >= self.state.max_per_peer {
            return false;
        }
        *n += 1;
        self.proven = true;
        true
    }

    fn end_handshake(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.state.handshakes.fetch_sub(1, Ordering::Relaxed);
            self.state.handshaking.dec();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.end_handshake();
        self.state.connections.fetch_sub(1, Ordering::Relaxed);
        if self.proven {
            let mut per_peer = lock(&self.state.per_peer);
            if let Some(n) = per_peer.get_mut(&self.peer) {
                *n -= 1;
                if *n == 0 {
                    per_peer.remove(&self.peer);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one map update: a panic cannot leave it half-done.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(limits: Limits) -> (Admission, Refusals, Counter) {
        let refusals = Refusals::default();
        let retries = Counter::default();
        (
            Admission::new(&limits, refusals.clone(), retries.clone(), Gauge::default()),
            refusals,
            retries,
        )
    }

    fn accept(d: Decision) -> Permit {
        match d {
            Decision::Accept(p) => p,
            Decision::Retry => panic!("retry"),
            Decision::Refuse(l) => panic!("refused by {}", l.name()),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn retry_above_the_threshold_and_refuse_at_the_handshake_bound() {
        let (adm, refusals, retries) = admission(Limits {
            max_handshakes: 3,
            retry_above_handshakes: 1,
            ..Limits::default()
        });
        let _first = accept(adm.decide(A, false));
        assert!(matches!(adm.decide(B, false), Decision::Retry));
        assert_eq!(retries.get(), 1);
        let _second = accept(adm.decide(B, true));
        let _third = accept(adm.decide(B, true));
        assert!(matches!(
            adm.decide(B, true),
            Decision::Refuse(Limit::Handshakes)
        ));
        let counted = refusals
            .get_or_create(&limits::LimitLabels {
                limit: "max_handshakes",
            })
            .get();
        assert_eq!(counted, 1);
    }

    #[test]
    fn per_peer_counts_proven_addresses_and_frees_on_drop() {
        let (adm, _, _) = admission(Limits {
            max_connections_per_peer: 2,
            retry_above_handshakes: 100,
            ..Limits::default()
        });
        // Unproven attempts do not count toward the address until their handshake is done.
        let mut p1 = accept(adm.decide(A, false));
        let mut p2 = accept(adm.decide(A, false));
        let mut p3 = accept(adm.decide(A, false));
        assert!(adm.handshake_done(&mut p1));
        assert!(adm.handshake_done(&mut p2));
        assert!(!adm.handshake_done(&mut p3), "the third connection from A");
        drop(p3);
        assert!(matches!(
            adm.decide(A, true),
            Decision::Refuse(Limit::ConnectionsPerPeer)
        ));
        let _b = accept(adm.decide(B, true));
        drop(p1);
        let _again = accept(adm.decide(A, true));
        assert_eq!(adm.state.connections.load(Ordering::Relaxed), 3);
        assert_eq!(adm.state.handshakes.load(Ordering::Relaxed), 2);
    }
}
