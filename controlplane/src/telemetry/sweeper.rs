//! Retention of the trace store: deletes spans older than `--trace-retention` or beyond the
//! newest `--trace-max-spans`, and edge intervals older than the retention.
//!
//! Whole segments go first (see [`crate::store::telemetry`]): the oldest segment is deleted
//! as one range when every span in it is past the retention, when it is empty, or while the
//! store holds more than the limit (so between 7/8 of `--trace-max-spans` and all of it stay).
//! The newest segment never goes whole; what is left over the age or count limit after that
//! (a store of one segment, spans that arrived late) goes row by row, oldest first.
//!
//! Every replica runs one. That is safe: each delete is chosen by a predicate (never a
//! remembered row), so two replicas deleting at once remove each row once and find nothing
//! left; row-by-row deletes go in small batches so locks and WAL growth stay short.

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
    let max = i64::try_from(retention.max_spans).unwrap_or(i64::MAX);
    let mut deleted = 0;
    let segments = store.span_segments().await?;
    let mut total: i64 = segments.iter().map(|s| s.spans).sum();
    for pair in segments.windows(2) {
        let (oldest, next) = (&pair[0], &pair[1]);
        // Spans in `oldest` started before `next` did.
        let expired = next.start_ns <= cutoff;
        if !(expired || oldest.spans == 0 || total > max) {
            break;
        }
        deleted += store.delete_span_segments_through(oldest.id).await?;
        total -= oldest.spans;
        tokio::task::yield_now().await;
    }
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
    // Row by row only when whole segments were not enough (`total` leaves out the rows just
    // deleted by age, so this may look once more than needed).
    if total <= max {
        return Ok(deleted);
    }
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
