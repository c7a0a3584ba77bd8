//! Deletes workloads whose lease lapsed, so that the deletion goes through the change feed
//! and every replica's watchers drop the endpoint. Every replica runs one; the store decides
//! races (with each other and with keep-alives) in one transaction per workload.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{Store, now_ms};

/// How often to look: a tenth of the lease, between 100 ms and 1 s.
pub fn interval(lease_ttl: Duration) -> Duration {
    (lease_ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Sweep forever (the caller aborts the task on shutdown).
pub async fn run(store: Arc<dyn Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sweep(store.as_ref()).await {
            tracing::warn!(error = %e, "sweeping lapsed workload leases failed; retrying");
        }
    }
}

/// One pass: expire every lapsed lease. Returns how many workloads were removed.
pub async fn sweep(store: &dyn Store) -> Result<usize, crate::store::StoreError> {
    let now = now_ms();
    let mut removed = 0;
    for lease in store.lapsed_leases(now).await? {
        if let Some(change) = store
            .expire_workload(&lease.namespace, &lease.name, now)
            .await?
        {
            // Its status row goes with it (`quiverctl proxy-status` lists live workloads).
            store
                .delete_proxy_status(&lease.namespace, &lease.name)
                .await?;
            tracing::info!(
                workload = %format!("{}/{}", lease.namespace, lease.name),
                spiffe.id = %lease.spiffe_id,
                version = change.resource_version,
                "workload lease lapsed; removed"
            );
            removed += 1;
        }
    }
    Ok(removed)
}
