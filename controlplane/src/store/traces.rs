//! The trace store: span blocks and per-edge request statistics reported by proxies, the
//! reads behind SearchTraces, GetTrace and GetServiceGraph, and the batched deletes the
//! retention sweeper uses.
//!
//! Rows arrive already checked and encoded (`crate::telemetry`); this module only moves them
//! in and out of SQL. Spans are stored in blocks, one row per reported batch (table
//! `span_blocks`, migration 0005); what is inside a block, and the searches over blocks,
//! belong to the block codec in `crate::telemetry::blocks`, never to the store.

use sqlx::{ColumnIndex, Executor, IntoArguments, Type};

use super::StoreError;
use super::engine::{Engine, SqlStore, Value};

/// One stored span. Field meanings are those of `quiver.v1.Span`; `namespace` and `reporter`
/// come from the reporting proxy's certificate.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub kind: String,
    pub namespace: String,
    pub service: String,
    pub peer_service: String,
    pub peer_identity: String,
    pub name: String,
    pub route: String,
    pub start_ns: i64,
    pub duration_ns: i64,
    pub status_code: i32,
    pub error: String,
    pub is_error: bool,
    pub attempt: i32,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub quic_connection_id: String,
    pub endpoint: String,
    pub reporter: String,
}

/// One stored interval of requests from one service to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeRecord {
    pub namespace: String,
    pub source_service: String,
    pub destination_service: String,
    /// The subset of the destination the requests were routed to ("" for the whole service).
    pub destination_subset: String,
    pub interval_start_ns: i64,
    pub interval_end_ns: i64,
    pub requests: i64,
    pub errors: i64,
    /// One count per latency bucket (`LATENCY_BOUNDS_MS` in `crate::telemetry`, then +Inf).
    pub latency_buckets: Vec<u64>,
    pub reporter: String,
}

/// One reported batch as the store keeps it: its spans encoded into blocks, and its edge
/// intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedBatch {
    pub blocks: Vec<NewBlock>,
    pub edges: Vec<EdgeRecord>,
}

/// Spans and edge statistics.
#[async_trait::async_trait]
pub trait Traces: Send + Sync {
    /// Store encoded batches, all in one transaction. A block stored already (the same
    /// digest: the same reporter, trace and span ids, e.g. sent twice) is skipped. Returns
    /// how many spans of each batch were stored, in order.
    async fn insert_telemetry(&self, batches: Vec<EncodedBatch>) -> Result<Vec<u64>, StoreError>;

    /// Summaries of the blocks that may hold spans started in `[start_ns, end_ns)`, newest
    /// (latest start) first.
    async fn span_block_summaries(
        &self,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Vec<BlockSummary>, StoreError>;

    /// Every block's id and Bloom filter.
    async fn span_block_blooms(&self) -> Result<Vec<(i64, Vec<u8>)>, StoreError>;

    /// The bodies of these blocks (those that still exist).
    async fn span_block_bodies(&self, ids: &[i64]) -> Result<Vec<BlockBody>, StoreError>;

    /// Edge intervals that ended after `after_ns` (in `namespace`, or all).
    async fn edge_stats_since(
        &self,
        after_ns: i64,
        namespace: Option<&str>,
    ) -> Result<Vec<EdgeRecord>, StoreError>;

    /// Every block's id and span count, oldest (lowest id) first.
    async fn span_block_sizes(&self) -> Result<Vec<(i64, i64)>, StoreError>;

    /// Delete block `id` and every older (lower id) one; returns how many spans they held.
    async fn delete_span_blocks_through(&self, id: i64) -> Result<u64, StoreError>;

    /// Delete at most `batch` blocks whose every span started before `cutoff_ns`; returns
    /// how many blocks and how many spans they held.
    async fn delete_span_blocks_before(
        &self,
        cutoff_ns: i64,
        batch: i64,
    ) -> Result<(u64, u64), StoreError>;

    /// Delete at most `batch` edge intervals that ended before `cutoff_ns`.
    async fn delete_edge_stats_before(&self, cutoff_ns: i64, batch: i64)
    -> Result<u64, StoreError>;

    /// One page of the spans stored before migration 0005 (table `spans_legacy`), in key
    /// order after the key `after`, with the key of its last span; None when nothing is
    /// left (the table is then dropped) or there never was such a table. The caller moves
    /// the page into blocks ([`Traces::insert_telemetry`]); rereading a page and storing it
    /// again stores nothing twice (digests).
    async fn legacy_spans(
        &self,
        after: Option<LegacyKey>,
    ) -> Result<Option<(LegacyKey, Vec<SpanRecord>)>, StoreError>;
}

/// A block ready to be inserted: an encoded batch of spans and its summary (the codec is
/// `crate::telemetry::blocks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBlock {
    pub namespace: String,
    pub reporter: String,
    pub start_min: i64,
    pub start_max: i64,
    pub spans: i64,
    pub errors: i64,
    pub max_duration_ns: i64,
    /// The distinct services of its spans, sorted, one per line.
    pub services: String,
    /// Identifies the batch (reporter and every trace and span id, in order): a batch sent
    /// twice has the same digest and is stored once.
    pub digest: Vec<u8>,
    pub bloom: Vec<u8>,
    pub body: Vec<u8>,
}

/// What a search reads of a block before deciding to decode it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BlockSummary {
    pub id: i64,
    pub namespace: String,
    pub start_min: i64,
    pub start_max: i64,
    pub errors: i64,
    pub max_duration_ns: i64,
    pub services: String,
    pub bloom: Vec<u8>,
}

/// A block's body as read back, with the row fields a span needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BlockBody {
    pub id: i64,
    pub namespace: String,
    pub reporter: String,
    pub body: Vec<u8>,
}

/// Where the legacy conversion is: the key of the last span moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyKey {
    pub start_ns: i64,
    pub segment: i64,
    pub trace_id: String,
    pub span_id: String,
}

/// Rows per edge INSERT statement: far below both engines' limit on bound parameters
/// (SQLite 32766, Postgres 65535).
const INSERT_CHUNK: usize = 500;

/// Store a block's summary unless the same batch is stored already (its digest); returns the
/// new block's id (no row for a batch stored already).
const INSERT_BLOCK: &str = "INSERT INTO span_blocks (namespace, reporter, \
     start_min, start_max, spans, errors, max_duration_ns, services, digest, bloom) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (digest) DO NOTHING \
     RETURNING id";
/// Bodies per INSERT statement. A commit's bodies go in a few large statements rather than
/// one per block: sqlx 0.9 does not set TCP_NODELAY, so on Postgres over TCP every statement
/// larger than one write (a TLS record is 16 KiB) waited ~40 ms for the server's delayed ACK
/// on its last segment; per commit that is paid once per 64 blocks instead of per block.
const BODIES_PER_INSERT: usize = 64;
/// Blocks that may hold spans started in `[$1, $2)`, newest first.
const BLOCK_SUMMARIES: &str = "SELECT id, namespace, start_min, start_max, errors, \
     max_duration_ns, services, bloom FROM span_blocks WHERE start_max >= $1 AND start_min < $2 \
     ORDER BY start_max DESC, id DESC";
const BLOCK_BLOOMS: &str = "SELECT id, bloom FROM span_blocks";
const BLOCK_SIZES: &str = "SELECT id, spans FROM span_blocks ORDER BY id";
/// Spans stored before migration 0005, a page at a time in start order (so each block
/// covers a short time range, as a reported batch does), after the last key moved. The
/// `start_ns >= $1` part lets the engine walk the `spans_start` index.
const LEGACY_PAGE: &str = "SELECT trace_id, span_id, parent_span_id, kind, \
     namespace, service, peer_service, peer_identity, name, route, start_ns, duration_ns, \
     status_code, error, is_error, attempt, request_bytes, response_bytes, quic_connection_id, \
     endpoint, reporter, segment FROM spans_legacy \
     WHERE start_ns >= $1 AND (start_ns, segment, trace_id, span_id) > ($1, $2, $3, $4) \
     ORDER BY start_ns, segment, trace_id, span_id LIMIT $5";
/// Spans per page of the legacy conversion.
const LEGACY_PAGE_ROWS: i64 = 4096;

/// A row of `spans_legacy`: a span and its old segment (part of the key the conversion
/// pages by).
#[derive(Debug, sqlx::FromRow)]
struct LegacyRow {
    #[sqlx(flatten)]
    span: SpanRecord,
    segment: i64,
}

const EDGES_SINCE: &str = "SELECT namespace, source_service, destination_service, \
     destination_subset, interval_start_ns, interval_end_ns, requests, errors, latency_buckets, reporter \
     FROM edge_stats WHERE interval_end_ns > $1";

#[derive(Debug, sqlx::FromRow)]
struct EdgeRow {
    namespace: String,
    source_service: String,
    destination_service: String,
    destination_subset: String,
    interval_start_ns: i64,
    interval_end_ns: i64,
    requests: i64,
    errors: i64,
    latency_buckets: String,
    reporter: String,
}

impl From<EdgeRow> for EdgeRecord {
    fn from(r: EdgeRow) -> Self {
        EdgeRecord {
            namespace: r.namespace,
            source_service: r.source_service,
            destination_service: r.destination_service,
            destination_subset: r.destination_subset,
            interval_start_ns: r.interval_start_ns,
            interval_end_ns: r.interval_end_ns,
            requests: r.requests,
            errors: r.errors,
            // Written by us as comma-separated integers; a damaged cell counts as zeros
            // rather than failing the whole graph.
            latency_buckets: r
                .latency_buckets
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap_or(0))
                .collect(),
            reporter: r.reporter,
        }
    }
}

fn buckets_text(buckets: &[u64]) -> String {
    buckets
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[async_trait::async_trait]
impl<DB: Engine> Traces for SqlStore<DB>
where
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'a> &'a [u8]: sqlx::Encode<'a, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Value<DB>,
    i32: Value<DB>,
    bool: Value<DB>,
    String: Value<DB>,
    Vec<u8>: Value<DB>,
{
    async fn insert_telemetry(&self, batches: Vec<EncodedBatch>) -> Result<Vec<u64>, StoreError> {
        if batches
            .iter()
            .all(|b| b.blocks.is_empty() && b.edges.is_empty())
        {
            return Ok(vec![0; batches.len()]);
        }
        let _guard = self.write_guard().await;
        let mut tx = self.span_pool.begin().await?;
        if let Some(stmt) = DB::SPAN_COMMIT {
            sqlx::query(stmt).execute(&mut *tx).await?;
        }
        let mut new = Vec::with_capacity(batches.len());
        let mut bodies: Vec<(i64, Vec<u8>)> = Vec::new();
        for EncodedBatch { blocks, edges } in batches {
            let mut stored = 0;
            for b in blocks {
                let id: Option<i64> = sqlx::query_scalar(INSERT_BLOCK)
                    .bind(b.namespace.as_str())
                    .bind(b.reporter.as_str())
                    .bind(b.start_min)
                    .bind(b.start_max)
                    .bind(b.spans)
                    .bind(b.errors)
                    .bind(b.max_duration_ns)
                    .bind(b.services.as_str())
                    .bind(b.digest.as_slice())
                    .bind(b.bloom.as_slice())
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(id) = id {
                    bodies.push((id, b.body));
                    stored += u64::try_from(b.spans).unwrap_or(0);
                }
            }
            for chunk in edges.chunks(INSERT_CHUNK) {
                let mut q = sqlx::QueryBuilder::<DB>::new(
                    "INSERT INTO edge_stats (namespace, source_service, \
                     destination_service, destination_subset, interval_start_ns, interval_end_ns, \
                     requests, errors, latency_buckets, reporter) ",
                );
                q.push_values(chunk, |mut row, e| {
                    row.push_bind(e.namespace.as_str())
                        .push_bind(e.source_service.as_str())
                        .push_bind(e.destination_service.as_str())
                        .push_bind(e.destination_subset.as_str())
                        .push_bind(e.interval_start_ns)
                        .push_bind(e.interval_end_ns)
                        .push_bind(e.requests)
                        .push_bind(e.errors)
                        .push_bind(buckets_text(&e.latency_buckets))
                        .push_bind(e.reporter.as_str());
                });
                // Row counts vary: do not fill the statement cache with them.
                q.build().persistent(false).execute(&mut *tx).await?;
            }
            new.push(stored);
        }
        for chunk in bodies.chunks(BODIES_PER_INSERT) {
            let mut q =
                sqlx::QueryBuilder::<DB>::new("INSERT INTO span_block_bodies (block_id, body) ");
            q.push_values(chunk, |mut row, (id, body)| {
                row.push_bind(*id).push_bind(body.as_slice());
            });
            // Row counts vary: do not fill the statement cache with them.
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    async fn span_block_summaries(
        &self,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Vec<BlockSummary>, StoreError> {
        Ok(sqlx::query_as(BLOCK_SUMMARIES)
            .bind(start_ns)
            .bind(end_ns)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn span_block_blooms(&self) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        Ok(sqlx::query_as(BLOCK_BLOOMS).fetch_all(&self.pool).await?)
    }

    async fn span_block_bodies(&self, ids: &[i64]) -> Result<Vec<BlockBody>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = sqlx::QueryBuilder::<DB>::new(
            "SELECT b.id, b.namespace, b.reporter, d.body FROM span_blocks b \
             JOIN span_block_bodies d ON d.block_id = b.id WHERE b.id IN (",
        );
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        q.push(")");
        Ok(q.build_query_as()
            .persistent(false)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn edge_stats_since(
        &self,
        after_ns: i64,
        namespace: Option<&str>,
    ) -> Result<Vec<EdgeRecord>, StoreError> {
        let rows: Vec<EdgeRow> = match namespace {
            Some(ns) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{EDGES_SINCE} AND namespace = $2"
                )))
                .bind(after_ns)
                .bind(ns)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(EDGES_SINCE)
                    .bind(after_ns)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn span_block_sizes(&self) -> Result<Vec<(i64, i64)>, StoreError> {
        Ok(sqlx::query_as(BLOCK_SIZES).fetch_all(&self.pool).await?)
    }

    async fn delete_span_blocks_through(&self, id: i64) -> Result<u64, StoreError> {
        let _guard = self.write_guard().await;
        let spans: Vec<i64> =
            sqlx::query_scalar("DELETE FROM span_blocks WHERE id <= $1 RETURNING spans")
                .bind(id)
                .fetch_all(&self.span_pool)
                .await?;
        Ok(spans.iter().map(|n| u64::try_from(*n).unwrap_or(0)).sum())
    }

    async fn delete_span_blocks_before(
        &self,
        cutoff_ns: i64,
        batch: i64,
    ) -> Result<(u64, u64), StoreError> {
        let _guard = self.write_guard().await;
        let spans: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM span_blocks WHERE id IN \
             (SELECT id FROM span_blocks WHERE start_max < $1 LIMIT $2) RETURNING spans",
        )
        .bind(cutoff_ns)
        .bind(batch)
        .fetch_all(&self.span_pool)
        .await?;
        Ok((
            spans.len() as u64,
            spans.iter().map(|n| u64::try_from(*n).unwrap_or(0)).sum(),
        ))
    }

    async fn delete_edge_stats_before(
        &self,
        cutoff_ns: i64,
        batch: i64,
    ) -> Result<u64, StoreError> {
        let _guard = self.write_guard().await;
        let done = sqlx::query(
            "DELETE FROM edge_stats WHERE id IN \
             (SELECT id FROM edge_stats WHERE interval_end_ns < $1 LIMIT $2)",
        )
        .bind(cutoff_ns)
        .bind(batch)
        .execute(&self.span_pool)
        .await?;
        Ok(DB::rows_affected(&done))
    }

    async fn legacy_spans(
        &self,
        after: Option<LegacyKey>,
    ) -> Result<Option<(LegacyKey, Vec<SpanRecord>)>, StoreError> {
        let tables: i64 = sqlx::query_scalar(DB::HAS_LEGACY)
            .fetch_one(&self.pool)
            .await?;
        if tables == 0 {
            return Ok(None);
        }
        // Before every real key: spans start after 1970, ids are non-empty hex.
        let after = after.unwrap_or(LegacyKey {
            start_ns: i64::MIN,
            segment: i64::MIN,
            trace_id: String::new(),
            span_id: String::new(),
        });
        let rows: Vec<LegacyRow> = sqlx::query_as(LEGACY_PAGE)
            .bind(after.start_ns)
            .bind(after.segment)
            .bind(after.trace_id.as_str())
            .bind(after.span_id.as_str())
            .bind(LEGACY_PAGE_ROWS)
            .fetch_all(&self.pool)
            .await?;
        let Some(last) = rows.last() else {
            let _guard = self.write_guard().await;
            sqlx::query("DROP TABLE IF EXISTS spans_legacy")
                .execute(&self.span_pool)
                .await?;
            return Ok(None);
        };
        let last = LegacyKey {
            start_ns: last.span.start_ns,
            segment: last.segment,
            trace_id: last.span.trace_id.clone(),
            span_id: last.span.span_id.clone(),
        };
        Ok(Some((last, rows.into_iter().map(|r| r.span).collect())))
    }
}
