//! The trace store: spans and per-edge request statistics reported by proxies, the queries
//! behind SearchTraces, GetTrace and GetServiceGraph, and the batched deletes the retention
//! sweeper uses.
//!
//! Rows arrive already validated (see [`crate::telemetry`]); this module only moves them in
//! and out of SQL. Spans are stored in blocks, one row per reported batch (table
//! `span_blocks`, migration 0005; encoding, summaries and the reads over them are in
//! [`super::blocks`]).
//!
//! Like [`super::sql`], one macro body implements both engines; what differs is a few
//! associated constants.

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
    pub interval_start_ns: i64,
    pub interval_end_ns: i64,
    pub requests: i64,
    pub errors: i64,
    /// One count per [`crate::telemetry::LATENCY_BOUNDS_MS`] bucket.
    pub latency_buckets: Vec<u64>,
    pub reporter: String,
}

/// What SearchTraces asks the store for (already parsed and checked).
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    pub namespace: Option<String>,
    pub service: Option<String>,
    pub errors_only: bool,
    pub min_duration_ns: Option<i64>,
    /// Span start times in `[start_ns, end_ns)`.
    pub start_ns: i64,
    pub end_ns: i64,
    pub limit: i64,
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct EdgeRow {
    pub namespace: String,
    pub source_service: String,
    pub destination_service: String,
    pub interval_start_ns: i64,
    pub interval_end_ns: i64,
    pub requests: i64,
    pub errors: i64,
    pub latency_buckets: String,
    pub reporter: String,
}

impl From<EdgeRow> for EdgeRecord {
    fn from(r: EdgeRow) -> Self {
        EdgeRecord {
            namespace: r.namespace,
            source_service: r.source_service,
            destination_service: r.destination_service,
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

pub(super) fn buckets_text(buckets: &[u64]) -> String {
    buckets
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One proxy's checked batch, as ReportTelemetry received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedBatch {
    pub spans: Vec<SpanRecord>,
    pub edges: Vec<EdgeRecord>,
}

/// Rows per edge INSERT statement: far below both engines' limit on bound parameters
/// (SQLite 32766, Postgres 65535).
pub(super) const INSERT_CHUNK: usize = 500;

/// Store a block's summary unless the same batch is stored already (its digest); returns the
/// new block's id (no row for a batch stored already).
pub(super) const INSERT_BLOCK: &str = "INSERT INTO span_blocks (namespace, reporter, \
     start_min, start_max, spans, errors, max_duration_ns, services, digest, bloom) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (digest) DO NOTHING \
     RETURNING id";
/// Bodies per INSERT statement. A commit's bodies go in a few large statements rather than
/// one per block: sqlx 0.9 does not set TCP_NODELAY, so on Postgres over TCP every statement
/// larger than one write (a TLS record is 16 KiB) waited ~40 ms for the server's delayed ACK
/// on its last segment; per commit that is paid once per 64 blocks instead of per block.
pub(super) const BODIES_PER_INSERT: usize = 64;
/// Blocks that may hold spans started in `[$1, $2)`, newest first.
pub(super) const BLOCK_SUMMARIES: &str = "SELECT id, namespace, start_min, start_max, errors, \
     max_duration_ns, services, bloom FROM span_blocks WHERE start_max >= $1 AND start_min < $2 \
     ORDER BY start_max DESC, id DESC";
pub(super) const BLOCK_BLOOMS: &str = "SELECT id, bloom FROM span_blocks";
pub(super) const BLOCK_SIZES: &str = "SELECT id, spans FROM span_blocks ORDER BY id";
/// Spans stored before migration 0005, a page at a time in start order (so each block
/// covers a short time range, as a reported batch does), after the last key moved. The
/// `start_ns >= $1` part lets the engine walk the `spans_start` index.
pub(super) const LEGACY_PAGE: &str = "SELECT trace_id, span_id, parent_span_id, kind, \
     namespace, service, peer_service, peer_identity, name, route, start_ns, duration_ns, \
     status_code, error, is_error, attempt, request_bytes, response_bytes, quic_connection_id, \
     endpoint, reporter, segment FROM spans_legacy \
     WHERE start_ns >= $1 AND (start_ns, segment, trace_id, span_id) > ($1, $2, $3, $4) \
     ORDER BY start_ns, segment, trace_id, span_id LIMIT $5";
/// Spans per page of the legacy conversion.
pub(super) const LEGACY_PAGE_ROWS: i64 = 4096;

/// A row of `spans_legacy`: a span and its old segment (part of the key the conversion
/// pages by).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct LegacyRow {
    #[sqlx(flatten)]
    pub span: SpanRecord,
    pub segment: i64,
}

pub(super) const EDGES_SINCE: &str = "SELECT namespace, source_service, destination_service, \
     interval_start_ns, interval_end_ns, requests, errors, latency_buckets, reporter \
     FROM edge_stats WHERE interval_end_ns > $1";

/// The trait the engines implement; [`super::Store`] requires it, so every store handle
/// reaches these calls too.
#[async_trait::async_trait]
pub trait TelemetryStore: Send + Sync {
    /// Store reported batches, all in one transaction, each batch's spans as one block. A
    /// batch stored already (the same reporter, trace and span ids, e.g. sent twice) is
    /// skipped. Returns how many spans of each batch were stored, in order.
    async fn insert_telemetry(
        &self,
        batches: Vec<ReportedBatch>,
    ) -> Result<Vec<u64>, super::StoreError>;

    /// Ids of traces matching `q`, the one with the newest key span first. Conditions apply
    /// to spans that started in `[q.start_ns, q.end_ns)`: with `errors_only` a trace needs an
    /// errored span (its key spans) and, when a service or namespace is given, a span of it;
    /// without, a span of the service and namespace asked for (key spans; any span when none
    /// is given); with `min_duration_ns`, also a span at least that long.
    async fn search_traces(&self, q: &TraceQuery) -> Result<Vec<String>, super::StoreError> {
        super::blocks::search_traces(self, q).await
    }

    /// Every stored span of these traces (each once), ordered by start.
    async fn spans_of_traces(
        &self,
        trace_ids: &[String],
    ) -> Result<Vec<SpanRecord>, super::StoreError> {
        super::blocks::spans_of_traces(self, trace_ids).await
    }

    /// Summaries of the blocks that may hold spans started in `[start_ns, end_ns)`, newest
    /// (latest start) first.
    async fn span_block_summaries(
        &self,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Vec<super::blocks::BlockSummary>, super::StoreError>;

    /// Every block's id and Bloom filter.
    async fn span_block_blooms(&self) -> Result<Vec<(i64, Vec<u8>)>, super::StoreError>;

    /// The bodies of these blocks (those that still exist).
    async fn span_block_bodies(
        &self,
        ids: &[i64],
    ) -> Result<Vec<super::blocks::BlockBody>, super::StoreError>;

    /// Edge intervals that ended after `after_ns` (in `namespace`, or all).
    async fn edge_stats_since(
        &self,
        after_ns: i64,
        namespace: Option<&str>,
    ) -> Result<Vec<EdgeRecord>, super::StoreError>;

    /// Every block's id and span count, oldest (lowest id) first.
    async fn span_block_sizes(&self) -> Result<Vec<(i64, i64)>, super::StoreError>;

    /// Delete block `id` and every older (lower id) one; returns how many spans they held.
    async fn delete_span_blocks_through(&self, id: i64) -> Result<u64, super::StoreError>;

    /// Delete at most `batch` blocks whose every span started before `cutoff_ns`; returns
    /// how many blocks and how many spans they held.
    async fn delete_span_blocks_before(
        &self,
        cutoff_ns: i64,
        batch: i64,
    ) -> Result<(u64, u64), super::StoreError>;

    /// Delete at most `batch` edge intervals that ended before `cutoff_ns`.
    async fn delete_edge_stats_before(
        &self,
        cutoff_ns: i64,
        batch: i64,
    ) -> Result<u64, super::StoreError>;

    /// Move one page of spans stored before migration 0005 (table `spans_legacy`) into
    /// blocks, after the key `after`; returns the last key moved and how many spans the page
    /// held, or None when nothing was left (the table is then dropped). Rerunning a page
    /// stores nothing twice (digests).
    async fn convert_legacy_spans(
        &self,
        after: Option<LegacyKey>,
    ) -> Result<Option<(LegacyKey, u64)>, super::StoreError>;
}

/// Where the legacy conversion is: the key of the last span moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyKey {
    pub start_ns: i64,
    pub segment: i64,
    pub trace_id: String,
    pub span_id: String,
}

/// Implements [`TelemetryStore`] for an engine struct with a field `pool`, a method
/// `span_pool()` (the pool span writes and retention deletes use), inherent consts
/// `SPAN_COMMIT` (a statement run first in a span batch's transaction) and `HAS_LEGACY` (a
/// query counting tables named `spans_legacy`), and an async `write_guard()`.
macro_rules! impl_telemetry_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::telemetry::TelemetryStore for $store {
            async fn insert_telemetry(
                &self,
                batches: Vec<$crate::store::telemetry::ReportedBatch>,
            ) -> Result<Vec<u64>, $crate::store::StoreError> {
                use $crate::store::telemetry::*;
                if batches
                    .iter()
                    .all(|b| b.spans.is_empty() && b.edges.is_empty())
                {
                    return Ok(vec![0; batches.len()]);
                }
                // Encoding happens before the write lock is taken.
                let encoded: Vec<_> = batches
                    .into_iter()
                    .map(|b| ($crate::store::blocks::blocks_of(b.spans), b.edges))
                    .collect();
                let _guard = self.write_guard().await;
                let mut tx = self.span_pool().begin().await?;
                if let Some(stmt) = <$store>::SPAN_COMMIT {
                    sqlx::query(stmt).execute(&mut *tx).await?;
                }
                let mut new = Vec::with_capacity(encoded.len());
                let mut bodies: Vec<(i64, Vec<u8>)> = Vec::new();
                for (blocks, edges) in encoded {
                    let mut stored = 0;
                    for b in blocks {
                        let id: Option<i64> = sqlx::query_scalar(INSERT_BLOCK)
                            .bind(b.namespace)
                            .bind(b.reporter)
                            .bind(b.start_min)
                            .bind(b.start_max)
                            .bind(b.spans)
                            .bind(b.errors)
                            .bind(b.max_duration_ns)
                            .bind(b.services)
                            .bind(b.digest)
                            .bind(b.bloom)
                            .fetch_optional(&mut *tx)
                            .await?;
                        if let Some(id) = id {
                            bodies.push((id, b.body));
                            stored += u64::try_from(b.spans).unwrap_or(0);
                        }
                    }
                    for chunk in edges.chunks(INSERT_CHUNK) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO edge_stats (namespace, source_service, \
                             destination_service, interval_start_ns, interval_end_ns, \
                             requests, errors, latency_buckets, reporter) ",
                        );
                        q.push_values(chunk, |mut row, e| {
                            row.push_bind(e.namespace.as_str())
                                .push_bind(e.source_service.as_str())
                                .push_bind(e.destination_service.as_str())
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
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO span_block_bodies (block_id, body) ",
                    );
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
            ) -> Result<Vec<$crate::store::blocks::BlockSummary>, $crate::store::StoreError> {
                use $crate::store::telemetry::*;
                Ok(sqlx::query_as(BLOCK_SUMMARIES)
                    .bind(start_ns)
                    .bind(end_ns)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn span_block_blooms(
                &self,
            ) -> Result<Vec<(i64, Vec<u8>)>, $crate::store::StoreError> {
                use $crate::store::telemetry::*;
                Ok(sqlx::query_as(BLOCK_BLOOMS).fetch_all(&self.pool).await?)
            }

            async fn span_block_bodies(
                &self,
                ids: &[i64],
            ) -> Result<Vec<$crate::store::blocks::BlockBody>, $crate::store::StoreError> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut q = sqlx::QueryBuilder::<$db>::new(
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
            ) -> Result<Vec<$crate::store::telemetry::EdgeRecord>, $crate::store::StoreError> {
                use $crate::store::telemetry::*;
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

            async fn span_block_sizes(&self) -> Result<Vec<(i64, i64)>, $crate::store::StoreError> {
                use $crate::store::telemetry::*;
                Ok(sqlx::query_as(BLOCK_SIZES).fetch_all(&self.pool).await?)
            }

            async fn delete_span_blocks_through(
                &self,
                id: i64,
            ) -> Result<u64, $crate::store::StoreError> {
                let _guard = self.write_guard().await;
                let spans: Vec<i64> =
                    sqlx::query_scalar("DELETE FROM span_blocks WHERE id <= $1 RETURNING spans")
                        .bind(id)
                        .fetch_all(self.span_pool())
                        .await?;
                Ok(spans.iter().map(|n| u64::try_from(*n).unwrap_or(0)).sum())
            }

            async fn delete_span_blocks_before(
                &self,
                cutoff_ns: i64,
                batch: i64,
            ) -> Result<(u64, u64), $crate::store::StoreError> {
                let _guard = self.write_guard().await;
                let spans: Vec<i64> = sqlx::query_scalar(
                    "DELETE FROM span_blocks WHERE id IN \
                     (SELECT id FROM span_blocks WHERE start_max < $1 LIMIT $2) RETURNING spans",
                )
                .bind(cutoff_ns)
                .bind(batch)
                .fetch_all(self.span_pool())
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
            ) -> Result<u64, $crate::store::StoreError> {
                let _guard = self.write_guard().await;
                let done = sqlx::query(
                    "DELETE FROM edge_stats WHERE id IN \
                     (SELECT id FROM edge_stats WHERE interval_end_ns < $1 LIMIT $2)",
                )
                .bind(cutoff_ns)
                .bind(batch)
                .execute(self.span_pool())
                .await?;
                Ok(done.rows_affected())
            }

            async fn convert_legacy_spans(
                &self,
                after: Option<$crate::store::telemetry::LegacyKey>,
            ) -> Result<
                Option<($crate::store::telemetry::LegacyKey, u64)>,
                $crate::store::StoreError,
            > {
                use $crate::store::telemetry::*;
                let tables: i64 = sqlx::query_scalar(<$store>::HAS_LEGACY)
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
                    .bind(after.trace_id)
                    .bind(after.span_id)
                    .bind(LEGACY_PAGE_ROWS)
                    .fetch_all(&self.pool)
                    .await?;
                let Some(last) = rows.last() else {
                    let _guard = self.write_guard().await;
                    sqlx::query("DROP TABLE IF EXISTS spans_legacy")
                        .execute(self.span_pool())
                        .await?;
                    return Ok(None);
                };
                let last = LegacyKey {
                    start_ns: last.span.start_ns,
                    segment: last.segment,
                    trace_id: last.span.trace_id.clone(),
                    span_id: last.span.span_id.clone(),
                };
                // Blocks of at most a proxy batch's size, so reads decode no more per hit.
                let spans: Vec<SpanRecord> = rows.into_iter().map(|r| r.span).collect();
                let n = spans.len() as u64;
                let batches = spans
                    .chunks($crate::store::blocks::LEGACY_BLOCK_SPANS)
                    .map(|c| ReportedBatch {
                        spans: c.to_vec(),
                        edges: Vec::new(),
                    })
                    .collect();
                self.insert_telemetry(batches).await?;
                Ok(Some((last, n)))
            }
        }
    };
}

pub(super) use impl_telemetry_store;
