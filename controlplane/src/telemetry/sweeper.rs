//! Retention of the trace store: deletes spans older than `--trace-retention` or beyond the
//! newest `--trace-max-spans`, and edge intervals older than the retention. Spans go a block
//! (one reported batch, see [`super::blocks`]) at a time: a block goes once every span
//! in it is past the age limit, and the oldest blocks go while the store holds more than the
//! span limit.
//!
//! The first pass also moves spans stored before the block store (migration 0005) into
//! blocks.
//!
//! Every replica runs one. That is safe: each delete is chosen by a predicate or an id bound
//! (never a remembered row), so two replicas deleting at once remove each block once and find
//! nothing left; deletes go in small batches so locks and WAL growth stay short.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Blocks (or edge rows) per delete statement.
const BATCH: i64 = 500;

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
    let mut converted = false;
    loop {
        tick.tick().await;
        if !converted {
            match convert_legacy(store.as_ref()).await {
                Ok(0) => converted = true,
                Ok(n) => {
                    converted = true;
                    tracing::info!(
                        spans = n,
                        "moved spans stored before migration 0005 into span blocks"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "moving old spans into blocks failed; retrying");
                }
            }
        }
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

/// Move every span stored before migration 0005 into blocks, a page at a time (the table is
/// dropped when empty). Returns how many spans were read; 0 when there were none (or another
/// replica moved them).
pub async fn convert_legacy(store: &dyn Store) -> Result<u64, StoreError> {
    let mut after = None;
    let mut moved = 0;
    while let Some((last, spans)) = store.legacy_spans(after.take()).await? {
        moved += spans.len() as u64;
        store
            .insert_telemetry(super::blocks::legacy_batches(&spans))
            .await?;
        after = Some(last);
        // Let ingest and queries in between pages.
        tokio::task::yield_now().await;
    }
    Ok(moved)
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
        let (blocks, spans) = store.delete_span_blocks_before(cutoff, BATCH).await?;
        deleted += spans;
        if blocks < BATCH as u64 {
            break;
        }
        tokio::task::yield_now().await;
    }
    while store.delete_edge_stats_before(cutoff, BATCH).await? == BATCH as u64 {
        tokio::task::yield_now().await;
    }
    // The newest blocks that together hold at most max_spans stay; the first that does not
    // fit and everything older go.
    let sizes = store.span_block_sizes().await?;
    let mut kept: u64 = 0;
    let over = sizes.iter().rev().find(|(_, spans)| {
        kept += u64::try_from(*spans).unwrap_or(0);
        kept > retention.max_spans
    });
    if let Some((id, _)) = over {
        deleted += store.delete_span_blocks_through(*id).await?;
    }
    Ok(deleted)
}
