//! Retention of the trace store: deletes spans older than `--trace-retention` or beyond the
//! newest `--trace-max-spans`, and edge intervals older than the retention.
//!
//! Every replica runs one. That is safe: each delete is a small batch chosen by a predicate
//! (never a remembered row), so two replicas deleting at once remove each row once and find
//! nothing left; batches keep locks and WAL growth short so ingest is not stalled.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Rows per delete statement.
const BATCH: i64 = 5_000;

/// What the sweeper keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_spans: u64,
    pub every: Duration,
}

/// Sweep forever (the caller aborts the task on shutdown).
pub async fn run(store: Arc<dyn Store>, retention: Retention, metrics: Metrics) {
    let mut tick = tokio::time::interval(retention.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep(store.as_ref(), retention, super::now_ns()).await {
            Ok(0) => {}
            Ok(n) => {
                metrics.spans_swept(n);
                tracing::debug!(spans = n, "trace retention removed spans");
            }
            Err(e) => tracing::warn!(error = %e, "trace retention sweep failed; retrying"),
        }
    }
}

/// One pass at time `now_ns`. Returns how many spans were deleted.
pub async fn sweep(
    store: &dyn Store,
    retention: Retention,
    now_ns: i64,
) -> Result<u64, StoreError> {
    let age = i64::try_from(retention.max_age.as_nanos()).unwrap_or(i64::MAX);
    let cutoff = now_ns.saturating_sub(age);
    let mut deleted = 0;
    loop {
        let n = store.delete_spans_before(cutoff, BATCH).await?;
        deleted += n;
        if n < BATCH as u64 {
            break;
        }
        // Let ingest and queries in between batches.
        tokio::task::yield_now().await;
    }
    while store.delete_edge_stats_before(cutoff, BATCH).await? == BATCH as u64 {
        tokio::task::yield_now().await;
    }
    let max = i64::try_from(retention.max_spans).unwrap_or(i64::MAX);
    if let Some(oldest_kept) = store.span_start_after_newest(max).await? {
        // Everything at or before the (max+1)-th newest start goes.
        let cutoff = oldest_kept.saturating_add(1);
        loop {
            let n = store.delete_spans_before(cutoff, BATCH).await?;
            deleted += n;
            if n < BATCH as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    Ok(deleted)
}
