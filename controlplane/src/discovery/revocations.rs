//! This replica's revocations in force: the deny-list every Watch stream pushes, and what the
//! discovery handlers check callers against.
//!
//! Revocations are not resources (they move no version, so the change feed does not carry
//! them): one task per replica re-reads the small `revocations` table every [`POLL`] and at
//! once after a revocation made here ([`RevocationView::refresh`]), drops rows nothing needs
//! any more (`forget_at`), and publishes the result on a `watch` channel. A revocation made on
//! another replica reaches this replica's proxies within one poll.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use quiver_api::v1;
use tokio::sync::watch;

use crate::store::{RevocationRecord, Store, StoreError, now_ms};
use crate::stored::rfc3339;

/// How often each replica re-reads the table.
pub const POLL: Duration = Duration::from_secs(1);

/// The revocations kept at one instant.
#[derive(Debug, Default, PartialEq)]
pub struct Revoked {
    /// What proxies are sent: the revocations that may still cover an unexpired certificate,
    /// ordered by SPIFFE id.
    pub pushed: Vec<v1::Revocation>,
    /// Every kept revocation's instant (Unix seconds), by SPIFFE id: joins and calls are
    /// checked against these even after proxies stop being sent them.
    pub not_before: HashMap<String, i64>,
}

impl Revoked {
    fn from_records(records: &[RevocationRecord], now_ms: i64) -> Self {
        Self {
            pushed: records
                .iter()
                .filter(|r| r.expires_at > now_ms)
                .map(to_proto)
                .collect(),
            not_before: records
                .iter()
                .map(|r| (r.spiffe_id.clone(), r.not_before))
                .collect(),
        }
    }

    /// The instant from which `spiffe_id` is revoked, when a certificate of it with notBefore
    /// `cert_not_before` (Unix seconds) is covered.
    pub fn covering(&self, spiffe_id: &str, cert_not_before: i64) -> Option<i64> {
        self.not_before
            .get(spiffe_id)
            .copied()
            .filter(|&r| quiver_api::revocation::covers(r, cert_not_before))
    }
}

/// A stored revocation as the API and proxies see it.
pub fn to_proto(r: &RevocationRecord) -> v1::Revocation {
    v1::Revocation {
        spiffe_id: r.spiffe_id.clone(),
        not_before_unix: r.not_before,
        revoked_at: rfc3339(r.revoked_at),
        expires_at: rfc3339(r.expires_at),
        reason: r.reason.clone(),
        workload: r.workload.clone(),
    }
}

/// A running view. Dropping it stops the task.
pub struct RevocationView {
    store: Arc<dyn Store>,
    tx: Arc<watch::Sender<Arc<Revoked>>>,
    rx: watch::Receiver<Arc<Revoked>>,
    gauge: Gauge,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RevocationView {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RevocationView {
    /// Load the revocations and keep re-reading them; `gauge` shows how many are pushed.
    pub async fn start(store: Arc<dyn Store>, gauge: Gauge) -> Result<Self, StoreError> {
        let now = now_ms();
        let first = Revoked::from_records(&store.revocations(now).await?, now);
        gauge.set(i64::try_from(first.pushed.len()).unwrap_or(i64::MAX));
        let (tx, rx) = watch::channel(Arc::new(first));
        let tx = Arc::new(tx);
        let task = tokio::spawn(poll(store.clone(), tx.clone(), gauge.clone()));
        Ok(Self {
            store,
            tx,
            rx,
            gauge,
            task,
        })
    }

    /// Re-read now (after a revocation on this replica), so that this replica's Watch
    /// streams carry it before the Revoke call returns.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        reload(self.store.as_ref(), &self.tx, &self.gauge).await
    }

    /// The revocations in force, and a receiver told when they change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Revoked>> {
        self.rx.clone()
    }

    pub fn current(&self) -> Arc<Revoked> {
        self.rx.borrow().clone()
    }
}

async fn poll(store: Arc<dyn Store>, tx: Arc<watch::Sender<Arc<Revoked>>>, gauge: Gauge) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        // Rows are kept for months; deleting the forgotten ones once a minute is plenty, and
        // keeps the poll itself a read.
        if n % 60 == 0
            && let Err(e) = store.forget_revocations(now_ms()).await
        {
            tracing::warn!(error = %e, "dropping old revocations failed; retrying");
        }
        if let Err(e) = reload(store.as_ref(), &tx, &gauge).await {
            tracing::warn!(error = %e, "reading revocations failed; keeping the last ones");
        }
    }
}

async fn reload(
    store: &dyn Store,
    tx: &watch::Sender<Arc<Revoked>>,
    gauge: &Gauge,
) -> Result<(), StoreError> {
    let now = now_ms();
    let next = Revoked::from_records(&store.revocations(now).await?, now);
    gauge.set(i64::try_from(next.pushed.len()).unwrap_or(i64::MAX));
    // Publish only a change: every Watch stream wakes on a publish.
    tx.send_if_modified(|current| {
        if **current == next {
            return false;
        }
        *current = Arc::new(next);
        true
    });
    Ok(())
}
