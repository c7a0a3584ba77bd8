//! What this proxy runs, as it reports it to the control plane with every KeepAlive
//! (`quiver.v1.ProxyReport`, shown by `quiverctl proxy-status`): the snapshot version it
//! applied, the last one it refused and why. A change wakes the keep-alive loop so the
//! report goes out at once rather than a keep-alive later.

use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use quiver_api::v1;

#[derive(Debug, Default, Clone)]
struct Versions {
    applied: u64,
    refused: u64,
    refused_reason: String,
}

/// The outcome of the pushed snapshots so far.
#[derive(Debug, Default)]
pub struct ConfigStatus {
    versions: Mutex<Versions>,
    changed: tokio::sync::Notify,
}

impl ConfigStatus {
    /// Snapshot `version` was applied (`refused` None) or refused for the reason given.
    pub fn note(&self, version: u64, refused: Option<String>) {
        {
            let mut v = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
            match refused {
                None => v.applied = version,
                Some(reason) => {
                    v.refused = version;
                    v.refused_reason = reason;
                }
            }
        }
        // A stored permit if nobody waits yet: the first report goes out once registered.
        self.changed.notify_one();
    }

    /// Resolves after the next [`ConfigStatus::note`] (or at once if one came since the last
    /// wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The report, with the certificate's expiry `not_after`.
    pub fn report(&self, not_after: SystemTime) -> v1::ProxyReport {
        let v = self
            .versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let expires = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        v1::ProxyReport {
            applied_version: v.applied,
            refused_version: v.refused,
            refused_reason: v.refused_reason,
            proxy_version: env!("CARGO_PKG_VERSION").into(),
            certificate_expires_unix: expires,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_the_last_applied_and_refused_and_wakes_the_reporter() {
        let status = ConfigStatus::default();
        status.note(3, None);
        status.note(4, Some("routes[0]: bad".into()));
        // The permit stored by note() lets this return at once.
        status.changed().await;
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000);
        let r = status.report(at);
        assert_eq!(
            (
                r.applied_version,
                r.refused_version,
                r.refused_reason.as_str()
            ),
            (3, 4, "routes[0]: bad")
        );
        assert_eq!(r.certificate_expires_unix, 1_900_000_000);
        assert_eq!(r.proxy_version, env!("CARGO_PKG_VERSION"));
    }
}
