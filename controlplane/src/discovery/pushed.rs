//! What this replica's Watch streams pushed, per identity and fronted service: the newest
//! version and since when, and the last few snapshots, so that a proxy's report ("I run
//! version V") can be matched with the snapshot it runs (`quiverctl proxy-config`) without
//! the proxy sending it back. Snapshots are the same for every proxy of one identity fronting
//! one service (they are built from the mesh state, the identity and the services it fronts),
//! so one entry serves them all. Memory only; the store keeps what any replica must answer
//! ([`crate::store::ProxyStatuses`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use quiver_api::v1;

/// Snapshots kept per identity and service: a proxy reports within a keep-alive of applying,
/// and a few pushes rarely happen in that time.
const KEPT: usize = 4;

#[derive(Debug, Default)]
struct Entry {
    latest: u64,
    /// Unix ms when `latest` was first pushed.
    since_ms: i64,
    recent: VecDeque<Arc<v1::ProxySnapshot>>,
}

/// This replica's pushes, keyed by (SPIFFE id, fronted service).
#[derive(Debug, Default)]
pub struct PushLog {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

/// The newest push to an identity and service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    pub version: u64,
    pub since_ms: i64,
}

impl PushLog {
    /// A Watch stream of `spiffe_id` fronting `services` pushed `snap` at `now_ms`.
    pub fn record(
        &self,
        spiffe_id: &str,
        services: &[String],
        snap: &v1::ProxySnapshot,
        now_ms: i64,
    ) {
        let snap = Arc::new(snap.clone());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        for service in services {
            let e = entries
                .entry((spiffe_id.to_string(), service.clone()))
                .or_default();
            if snap.version > e.latest {
                e.latest = snap.version;
                e.since_ms = now_ms;
            }
            if e.recent.iter().any(|s| s.version == snap.version) {
                continue;
            }
            e.recent.push_back(snap.clone());
            while e.recent.len() > KEPT {
                e.recent.pop_front();
            }
        }
    }

    /// The newest push to `spiffe_id` fronting `service`, if this replica made one.
    pub fn latest(&self, spiffe_id: &str, service: &str) -> Option<Latest> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&(spiffe_id.to_string(), service.to_string()))
            .map(|e| Latest {
                version: e.latest,
                since_ms: e.since_ms,
            })
    }

    /// The snapshot pushed to `spiffe_id` fronting `service` at `version`, if still kept.
    pub fn snapshot(
        &self,
        spiffe_id: &str,
        service: &str,
        version: u64,
    ) -> Option<Arc<v1::ProxySnapshot>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&(spiffe_id.to_string(), service.to_string()))
            .and_then(|e| e.recent.iter().find(|s| s.version == version).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(version: u64) -> v1::ProxySnapshot {
        v1::ProxySnapshot {
            version,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_newest_and_a_few_snapshots() {
        let log = PushLog::default();
        let fronts = vec!["reviews".to_string()];
        for v in 1..=6 {
            log.record("spiffe://td/ns/a/sa/b", &fronts, &snap(v), 1000 + v as i64);
        }
        // An older version pushed later (another stream of the same identity) does not move
        // the latest back.
        log.record("spiffe://td/ns/a/sa/b", &fronts, &snap(5), 9999);
        let latest = log.latest("spiffe://td/ns/a/sa/b", "reviews").unwrap();
        assert_eq!(
            latest,
            Latest {
                version: 6,
                since_ms: 1006
            }
        );
        assert!(
            log.snapshot("spiffe://td/ns/a/sa/b", "reviews", 6)
                .is_some()
        );
        assert!(
            log.snapshot("spiffe://td/ns/a/sa/b", "reviews", 3)
                .is_some()
        );
        assert!(
            log.snapshot("spiffe://td/ns/a/sa/b", "reviews", 2)
                .is_none()
        );
        assert!(log.latest("spiffe://td/ns/a/sa/b", "ratings").is_none());
    }
}
