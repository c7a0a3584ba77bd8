//! The span writer: one task that stores what every proxy's ReportTelemetry stream sends, in
//! group commits. Batches that arrive while a commit is under way go into the next
//! transaction together. While ingest is busy (the last commit held at least [`BUSY_SPANS`])
//! the writer also waits up to [`LINGER`] after the first batch of a commit for more, up to
//! [`MAX_SPANS`]; when it is quiet it commits what it has at once, so a trickle of spans is
//! searchable without delay.
//!
//! Why one writer: each batch becomes one block row (see [`super::blocks`]), and the
//! fixed cost of a commit (journal, sync, checkpoint) is paid a few times a second for all
//! proxies' batches together instead of once per batch. See docs/observability.md, "Cost on
//! the data path".
//!
//! The queue is bounded ([`QUEUE`] batches). When it is full, a stream's handler waits before
//! it reads that proxy's next batch: the proxy's own bounded span queue then fills and drops
//! (and counts) spans. Requests never wait for any of this.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::ReportedBatch;
use super::otlp::OtlpExport;
use crate::metrics::Metrics;
use crate::store::Store;

/// How long a busy writer waits for more batches after the first of a commit.
pub const LINGER: Duration = Duration::from_secs(1);
/// A commit of at least this many spans makes the next one linger.
pub const BUSY_SPANS: usize = 1024;
/// A commit holds at most about this many spans (whole batches: the batch that crosses it is
/// still in).
pub const MAX_SPANS: usize = 32_768;
/// Batches waiting for the writer, at most.
pub const QUEUE: usize = 64;

/// What a stream's handler learns of one batch: how many of its spans were new, or that the
/// store failed (the message is for logs; the caller answers UNAVAILABLE).
pub type Receipt = oneshot::Receiver<Result<u64, String>>;

struct Job {
    batch: ReportedBatch,
    done: oneshot::Sender<Result<u64, String>>,
}

/// The handle the API holds. Dropping every handle ends the writer once its queue is empty.
#[derive(Clone)]
pub struct SpanWriter {
    tx: mpsc::Sender<Job>,
}

/// The writer is gone (the server is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the span writer has stopped")]
pub struct Stopped;

impl SpanWriter {
    /// Start the writer task on `store`; committed spans are also offered to `otlp`.
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Metrics,
        otlp: Option<OtlpExport>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(store, metrics, otlp, rx));
        (Self { tx }, task)
    }

    /// Queue `batch` for the next commit; waits while the queue is full.
    pub async fn submit(&self, batch: ReportedBatch) -> Result<Receipt, Stopped> {
        let (done, receipt) = oneshot::channel();
        self.tx
            .send(Job { batch, done })
            .await
            .map_err(|_| Stopped)?;
        Ok(receipt)
    }
}

async fn run(
    store: Arc<dyn Store>,
    metrics: Metrics,
    otlp: Option<OtlpExport>,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut busy = false;
    while let Some(first) = rx.recv().await {
        let mut spans = first.batch.spans.len();
        let mut jobs = vec![first];
        let until = tokio::time::Instant::now() + if busy { LINGER } else { Duration::ZERO };
        while spans < MAX_SPANS {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::error::TryRecvError::Empty) if busy => {
                    tokio::time::timeout_at(until, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
            let Some(job) = next else { break };
            spans += job.batch.spans.len();
            jobs.push(job);
        }
        busy = spans >= BUSY_SPANS;
        commit(store.as_ref(), &metrics, otlp.as_ref(), jobs).await;
    }
}

/// Store `jobs` in one transaction and answer each.
async fn commit(store: &dyn Store, metrics: &Metrics, otlp: Option<&OtlpExport>, jobs: Vec<Job>) {
    let mut batches = Vec::with_capacity(jobs.len());
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        batches.push(job.batch);
        answers.push(job.done);
    }
    let edges: u64 = batches.iter().map(|b| b.edges.len() as u64).sum();
    // The store consumes the batches; the exporter wants the spans too.
    let exported: Vec<_> = match otlp {
        Some(_) => batches.iter().flat_map(|b| b.spans.clone()).collect(),
        None => Vec::new(),
    };
    let result = {
        let _timer = metrics.store_timer("insert_telemetry");
        store
            .insert_telemetry(super::blocks::encode_batches(batches))
            .await
    };
    match result {
        Ok(new) => {
            metrics.telemetry_stored(new.iter().sum(), edges);
            if let Some(otlp) = otlp {
                // Never waits: a full export queue drops (and counts) spans.
                otlp.offer(exported);
            }
            for (answer, n) in answers.into_iter().zip(new) {
                // The stream may have ended meanwhile; its spans are stored all the same.
                let _ = answer.send(Ok(n));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "storing reported spans failed");
            let message = e.to_string();
            for answer in answers {
                let _ = answer.send(Err(message.clone()));
            }
        }
    }
}
