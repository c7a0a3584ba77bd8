//! The trace store: spans and per-edge request statistics reported by proxies, the queries
//! behind SearchTraces, GetTrace and GetServiceGraph, and the batched deletes the retention
//! sweeper uses.
//!
//! Rows arrive already validated (see [`crate::telemetry`]); this module only moves them in
//! and out of SQL.
//!
//! Spans are grouped by start time into segments (table `span_segments`, migration 0004):
//! the key that finds a trace's spans and skips a re-sent span is `(segment, trace_id,
//! span_id)`, so a commit's inserts land in the newest segment's part of that index rather
//! than all over an index as large as the store, and retention deletes the oldest segment
//! as one range. Reading a trace probes each segment (there are about nine).
//!
//! Like [`super::sql`], one macro body implements both engines; what differs
//! (the physical row id used for batched deletes) is an associated constant.

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

/// A segment of the span store: the spans that started in `[start_ns, the next segment's
/// start_ns)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct SpanSegment {
    pub id: i64,
    pub start_ns: i64,
    /// For the writer: spans stored into it since it opened. For the sweeper
    /// ([`TelemetryStore::span_segments`]): spans it holds now.
    pub spans: i64,
}

/// The segment that holds a span that started at `start_ns`, given segments ordered by start:
/// the last one starting at or before it, or the oldest when the span is older than every
/// segment (its own was swept). 0 when there are none (the writer always opens one first).
pub fn segment_of(segments: &[SpanSegment], start_ns: i64) -> i64 {
    let after = segments.partition_point(|s| s.start_ns <= start_ns);
    segments.get(after.saturating_sub(1)).map_or(0, |s| s.id)
}

/// The writer's view of the segments, oldest first.
pub(super) const SEGMENTS: &str =
    "SELECT id, start_ns, inserted AS spans FROM span_segments ORDER BY start_ns";
/// The sweeper's view: how many spans each segment holds now.
pub(super) const SEGMENT_SIZES: &str = "SELECT g.id, g.start_ns, \
     (SELECT count(*) FROM spans s WHERE s.segment = g.id) AS spans \
     FROM span_segments g ORDER BY g.start_ns";
/// The latest start stored (the `spans_start` index answers it).
pub(super) const LATEST_START: &str = "SELECT max(start_ns) FROM spans";
/// Open a segment (a second writer racing to open the same one changes nothing).
pub(super) const OPEN_SEGMENT: &str = "INSERT INTO span_segments (id, start_ns, inserted) \
     VALUES ($1, $2, 0) ON CONFLICT DO NOTHING";
pub(super) const COUNT_INSERTED: &str =
    "UPDATE span_segments SET inserted = inserted + $1 WHERE id = $2";
/// Restricts a span lookup by trace id to segments that exist, so that the primary key
/// `(segment, trace_id, span_id)` is probed once per segment.
pub(super) const IN_SEGMENTS: &str = "segment IN (SELECT id FROM span_segments)";

/// One proxy's checked batch, as ReportTelemetry received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedBatch {
    pub spans: Vec<SpanRecord>,
    pub edges: Vec<EdgeRecord>,
}

/// Rows per edge INSERT statement: far below both engines' limit on bound parameters
/// (SQLite 32766, Postgres 65535).
pub(super) const INSERT_CHUNK: usize = 500;

pub(super) const SPAN_COLUMNS: &str = "trace_id, span_id, parent_span_id, kind, namespace, \
     service, peer_service, peer_identity, name, route, start_ns, duration_ns, status_code, \
     error, is_error, attempt, request_bytes, response_bytes, quic_connection_id, endpoint, \
     reporter";
/// Columns an INSERT binds: [`SPAN_COLUMNS`] and the segment.
const SPAN_COLUMN_COUNT: usize = 22;

/// Rows per span INSERT statement. Spans go in with statements of these sizes only (a batch
/// of 300 is 4 x 64 + 2 x 16 + 3 x 4), so each engine parses and plans at most four span
/// INSERTs per connection and keeps them prepared; a statement with as many rows as the batch
/// would be parsed anew for almost every batch. 256, a proxy's full batch, is 4 x 64.
pub(super) const SPAN_ROWS: [usize; 5] = [256, 64, 16, 4, 1];

/// Which engine a span INSERT is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    /// `INSERT ... VALUES ($1, $2, ...) ON CONFLICT (segment, trace_id, span_id) DO NOTHING`.
    Postgres,
    /// `INSERT OR IGNORE ... VALUES (?, ?, ...)`. Anonymous placeholders: the SQLite driver
    /// resolves every named parameter by a linear search of the statement's names, which is
    /// quadratic in a 5,632-parameter INSERT. `OR IGNORE` rather than `ON CONFLICT DO
    /// NOTHING`: with no constraint left that can abort the statement, SQLite keeps no
    /// statement journal (a copy of every page the INSERT touches) for it. Every column is
    /// bound to a non-NULL value, so NOT NULL never ignores a row.
    Sqlite,
}

/// The span INSERT for the next statement of a batch with `left` (> 0) spans still to go:
/// the largest [`SPAN_ROWS`] size that fits, and its SQL (`INSERT INTO spans ... VALUES
/// (...), ...`, skipping spans already stored).
pub(super) fn span_insert(left: usize, dialect: Dialect) -> (usize, &'static str) {
    fn sql(rows: usize, dialect: Dialect) -> String {
        let values: Vec<String> = (0..rows)
            .map(|r| {
                let cols: Vec<String> = (1..=SPAN_COLUMN_COUNT)
                    .map(|c| match dialect {
                        Dialect::Postgres => format!("${}", r * SPAN_COLUMN_COUNT + c),
                        Dialect::Sqlite => "?".to_string(),
                    })
                    .collect();
                format!("({})", cols.join(", "))
            })
            .collect();
        match dialect {
            Dialect::Postgres => format!(
                "INSERT INTO spans ({SPAN_COLUMNS}, segment) VALUES {} \
                 ON CONFLICT (segment, trace_id, span_id) DO NOTHING",
                values.join(", ")
            ),
            Dialect::Sqlite => format!(
                "INSERT OR IGNORE INTO spans ({SPAN_COLUMNS}, segment) VALUES {}",
                values.join(", ")
            ),
        }
    }
    static SQL: std::sync::LazyLock<Vec<[String; 2]>> = std::sync::LazyLock::new(|| {
        SPAN_ROWS
            .iter()
            .map(|&rows| [sql(rows, Dialect::Postgres), sql(rows, Dialect::Sqlite)])
            .collect()
    });
    // The last size is 1, so some size fits whenever left > 0.
    let i = SPAN_ROWS
        .iter()
        .position(|&n| n <= left)
        .unwrap_or(SPAN_ROWS.len() - 1);
    let [postgres, sqlite] = &SQL[i];
    let text = match dialect {
        Dialect::Postgres => postgres,
        Dialect::Sqlite => sqlite,
    };
    (SPAN_ROWS[i], text)
}

pub(super) const EDGES_SINCE: &str = "SELECT namespace, source_service, destination_service, \
     interval_start_ns, interval_end_ns, requests, errors, latency_buckets, reporter \
     FROM edge_stats WHERE interval_end_ns > $1";
pub(super) const NTH_NEWEST_SPAN: &str =
    "SELECT start_ns FROM spans ORDER BY start_ns DESC LIMIT 1 OFFSET $1";

/// The trait the engines implement; [`super::Store`] requires it, so every store handle
/// reaches these calls too.
#[async_trait::async_trait]
pub trait TelemetryStore: Send + Sync {
    /// Store reported batches, all in one transaction. A span already stored (same trace
    /// and span id, e.g. a batch sent twice) is skipped. Returns how many spans of each batch
    /// were new, in order. A new segment opens when the newest one has had `segment_spans`
    /// spans stored into it; it starts now, or just after the latest start stored if that is
    /// later.
    async fn insert_telemetry(
        &self,
        batches: Vec<ReportedBatch>,
        segment_spans: u64,
    ) -> Result<Vec<u64>, super::StoreError>;

    /// Ids of traces matching `q`, the one with the newest matching span first.
    async fn search_traces(&self, q: &TraceQuery) -> Result<Vec<String>, super::StoreError>;

    /// Every stored span of these traces, ordered by start.
    async fn spans_of_traces(
        &self,
        trace_ids: &[String],
    ) -> Result<Vec<SpanRecord>, super::StoreError>;

    /// Edge intervals that ended after `after_ns` (in `namespace`, or all).
    async fn edge_stats_since(
        &self,
        after_ns: i64,
        namespace: Option<&str>,
    ) -> Result<Vec<EdgeRecord>, super::StoreError>;

    /// Every segment with the number of spans it holds, oldest first.
    async fn span_segments(&self) -> Result<Vec<SpanSegment>, super::StoreError>;

    /// Delete segment `id` and every older one, with their spans; returns how many spans.
    async fn delete_span_segments_through(&self, id: i64) -> Result<u64, super::StoreError>;

    /// Delete at most `batch` spans that started before `cutoff_ns`; returns how many.
    async fn delete_spans_before(
        &self,
        cutoff_ns: i64,
        batch: i64,
    ) -> Result<u64, super::StoreError>;

    /// Delete at most `batch` edge intervals that ended before `cutoff_ns`.
    async fn delete_edge_stats_before(
        &self,
        cutoff_ns: i64,
        batch: i64,
    ) -> Result<u64, super::StoreError>;

    /// The start of the `(n+1)`-th newest span: deleting everything at or before it leaves at
    /// most `n` spans. None when there are at most `n`.
    async fn span_start_after_newest(&self, n: i64) -> Result<Option<i64>, super::StoreError>;
}

/// Implements [`TelemetryStore`] for an engine struct with a field `pool`, a method
/// `span_pool()` (the pool span writes and retention deletes use), inherent consts `ROW_ID`
/// (the physical row id: `ctid` or `rowid`), `SPAN_COMMIT` (a statement run first in a
/// span batch's transaction) and `DIALECT`, and an async `write_guard()`.
macro_rules! impl_telemetry_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::telemetry::TelemetryStore for $store {
            async fn insert_telemetry(
                &self,
                batches: Vec<$crate::store::telemetry::ReportedBatch>,
                segment_spans: u64,
            ) -> Result<Vec<u64>, $crate::store::StoreError> {
                use $crate::store::telemetry::*;
                if batches
                    .iter()
                    .all(|b| b.spans.is_empty() && b.edges.is_empty())
                {
                    return Ok(vec![0; batches.len()]);
                }
                let _guard = self.write_guard().await;
                let mut tx = self.span_pool().begin().await?;
                if let Some(stmt) = <$store>::SPAN_COMMIT {
                    sqlx::query(stmt).execute(&mut *tx).await?;
                }
                let mut segments: Vec<SpanSegment> = Vec::new();
                if batches.iter().any(|b| !b.spans.is_empty()) {
                    segments = sqlx::query_as(SEGMENTS).fetch_all(&mut *tx).await?;
                    let full = match segments.last() {
                        Some(newest) => {
                            u64::try_from(newest.spans).unwrap_or(0) >= segment_spans.max(1)
                        }
                        None => true,
                    };
                    if full {
                        // Starts now, or after the latest start stored (a proxy's clock may
                        // run ahead), so that every span already stored keeps mapping to the
                        // segment it is in and a re-sent one is still found there.
                        let latest: Option<i64> =
                            sqlx::query_scalar(LATEST_START).fetch_one(&mut *tx).await?;
                        let (id, start) = match segments.last() {
                            Some(newest) => (
                                newest.id + 1,
                                $crate::telemetry::now_ns()
                                    .max(latest.unwrap_or(i64::MIN).saturating_add(1))
                                    .max(newest.start_ns.saturating_add(1)),
                            ),
                            None => (0, i64::MIN),
                        };
                        sqlx::query(OPEN_SEGMENT)
                            .bind(id)
                            .bind(start)
                            .execute(&mut *tx)
                            .await?;
                        segments = sqlx::query_as(SEGMENTS).fetch_all(&mut *tx).await?;
                    }
                }
                let mut new = Vec::with_capacity(batches.len());
                for batch in batches {
                    let mut inserted = 0;
                    let mut left = batch.spans.len();
                    let mut spans = batch.spans.into_iter();
                    while left > 0 {
                        let (rows, sql) = span_insert(left, <$store>::DIALECT);
                        let mut q = sqlx::query(sql);
                        // Owned values: the driver keeps them without another copy.
                        for s in spans.by_ref().take(rows) {
                            q = q
                                .bind(s.trace_id)
                                .bind(s.span_id)
                                .bind(s.parent_span_id)
                                .bind(s.kind)
                                .bind(s.namespace)
                                .bind(s.service)
                                .bind(s.peer_service)
                                .bind(s.peer_identity)
                                .bind(s.name)
                                .bind(s.route)
                                .bind(s.start_ns)
                                .bind(s.duration_ns)
                                .bind(s.status_code)
                                .bind(s.error)
                                .bind(s.is_error)
                                .bind(s.attempt)
                                .bind(s.request_bytes)
                                .bind(s.response_bytes)
                                .bind(s.quic_connection_id)
                                .bind(s.endpoint)
                                .bind(s.reporter)
                                .bind(segment_of(&segments, s.start_ns));
                        }
                        inserted += q.execute(&mut *tx).await?.rows_affected();
                        left -= rows;
                    }
                    for chunk in batch.edges.chunks(INSERT_CHUNK) {
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
                    new.push(inserted);
                }
                if let Some(newest) = segments.last() {
                    // Spans that went into older segments (started before the newest opened)
                    // count towards the newest too: this only decides when the next opens.
                    let total = new.iter().sum::<u64>();
                    sqlx::query(COUNT_INSERTED)
                        .bind(i64::try_from(total).unwrap_or(i64::MAX))
                        .bind(newest.id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(new)
            }

            async fn search_traces(
                &self,
                tq: &$crate::store::telemetry::TraceQuery,
            ) -> Result<Vec<String>, $crate::store::StoreError> {
                use $crate::store::telemetry::IN_SEGMENTS;
                // Only placeholders are pushed as SQL text below; every value is bound.
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT trace_id FROM spans s WHERE start_ns >= ",
                );
                q.push_bind(tq.start_ns)
                    .push(" AND start_ns < ")
                    .push_bind(tq.end_ns);
                if tq.errors_only {
                    // Errored spans are few: start from them (partial index) and check the
                    // service on the trace.
                    q.push(" AND is_error");
                    if tq.service.is_some() || tq.namespace.is_some() {
                        q.push(" AND EXISTS (SELECT 1 FROM spans x WHERE x.");
                        q.push(IN_SEGMENTS).push(" AND x.trace_id = s.trace_id");
                        if let Some(svc) = &tq.service {
                            // `|| ''` keeps SQLite (no statistics) from walking every span of
                            // the service through (service, start_ns) instead of probing the
                            // trace's key once per segment.
                            q.push(" AND x.service || '' = ").push_bind(svc.as_str());
                        }
                        if let Some(ns) = &tq.namespace {
                            q.push(" AND x.namespace = ").push_bind(ns.as_str());
                        }
                        q.push(")");
                    }
                } else {
                    if let Some(svc) = &tq.service {
                        q.push(" AND service = ").push_bind(svc.as_str());
                    }
                    if let Some(ns) = &tq.namespace {
                        q.push(" AND namespace = ").push_bind(ns.as_str());
                    }
                }
                if let Some(min) = tq.min_duration_ns {
                    q.push(" AND EXISTS (SELECT 1 FROM spans d WHERE d.")
                        .push(IN_SEGMENTS)
                        .push(" AND d.trace_id = s.trace_id AND d.duration_ns >= ")
                        .push_bind(min)
                        .push(")");
                }
                q.push(" GROUP BY trace_id ORDER BY MAX(start_ns) DESC LIMIT ")
                    .push_bind(tq.limit);
                let ids: Vec<(String,)> = q.build_query_as().fetch_all(&self.pool).await?;
                Ok(ids.into_iter().map(|(id,)| id).collect())
            }

            async fn spans_of_traces(
                &self,
                trace_ids: &[String],
            ) -> Result<Vec<$crate::store::telemetry::SpanRecord>, $crate::store::StoreError> {
                use $crate::store::telemetry::*;
                if trace_ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {SPAN_COLUMNS} FROM spans WHERE {IN_SEGMENTS} AND trace_id IN ("
                ));
                let mut ids = q.separated(", ");
                for id in trace_ids {
                    ids.push_bind(id.as_str());
                }
                q.push(") ORDER BY start_ns, span_id");
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

            async fn span_segments(
                &self,
            ) -> Result<Vec<$crate::store::telemetry::SpanSegment>, $crate::store::StoreError> {
                use $crate::store::telemetry::*;
                Ok(sqlx::query_as(SEGMENT_SIZES).fetch_all(&self.pool).await?)
            }

            async fn delete_span_segments_through(
                &self,
                id: i64,
            ) -> Result<u64, $crate::store::StoreError> {
                let _guard = self.write_guard().await;
                let mut tx = self.span_pool().begin().await?;
                // `<=`: also spans a writer put into an older segment while it was being
                // deleted (Postgres replicas write concurrently).
                let done = sqlx::query("DELETE FROM spans WHERE segment <= $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM span_segments WHERE id <= $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            }

            async fn delete_spans_before(
                &self,
                cutoff_ns: i64,
                batch: i64,
            ) -> Result<u64, $crate::store::StoreError> {
                let _guard = self.write_guard().await;
                let id = <$store>::ROW_ID;
                let done = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM spans WHERE {id} IN \
                     (SELECT {id} FROM spans WHERE start_ns < $1 LIMIT $2)"
                )))
                .bind(cutoff_ns)
                .bind(batch)
                .execute(self.span_pool())
                .await?;
                Ok(done.rows_affected())
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

            async fn span_start_after_newest(
                &self,
                n: i64,
            ) -> Result<Option<i64>, $crate::store::StoreError> {
                use $crate::store::telemetry::*;
                Ok(sqlx::query_scalar(NTH_NEWEST_SPAN)
                    .bind(n)
                    .fetch_optional(&self.pool)
                    .await?)
            }
        }
    };
}

pub(super) use impl_telemetry_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_batches_go_in_statements_of_the_fixed_sizes() {
        let sizes = |mut left: usize| {
            let mut out = Vec::new();
            while left > 0 {
                let (rows, _) = span_insert(left, Dialect::Sqlite);
                out.push(rows);
                left -= rows;
            }
            out
        };
        assert_eq!(sizes(256), [256]);
        assert_eq!(sizes(300), [256, 16, 16, 4, 4, 4]);
        assert_eq!(sizes(77), [64, 4, 4, 4, 1]);
        assert_eq!(sizes(1), [1]);
    }

    #[test]
    fn span_inserts_have_one_placeholder_per_column_and_row() {
        for rows in SPAN_ROWS {
            let (got, sqlite) = span_insert(rows, Dialect::Sqlite);
            assert_eq!(got, rows);
            assert_eq!(sqlite.matches('?').count(), rows * SPAN_COLUMN_COUNT);
            assert!(sqlite.starts_with("INSERT OR IGNORE INTO spans ("));
            let (_, pg) = span_insert(rows, Dialect::Postgres);
            assert_eq!(pg.matches('$').count(), rows * SPAN_COLUMN_COUNT);
            let last = format!("${})", rows * SPAN_COLUMN_COUNT);
            assert!(pg.contains(&last), "{last} in {pg:.80}");
            assert!(pg.ends_with("ON CONFLICT (segment, trace_id, span_id) DO NOTHING"));
        }
    }

    #[test]
    fn a_span_belongs_to_the_last_segment_starting_at_or_before_it() {
        let seg = |id, start_ns| SpanSegment {
            id,
            start_ns,
            spans: 0,
        };
        let segments = [seg(3, 100), seg(4, 200), seg(7, 300)];
        // Older than every segment (its own was swept): the oldest.
        assert_eq!(segment_of(&segments, 5), 3);
        assert_eq!(segment_of(&segments, 100), 3);
        assert_eq!(segment_of(&segments, 199), 3);
        assert_eq!(segment_of(&segments, 200), 4);
        assert_eq!(segment_of(&segments, 299), 4);
        assert_eq!(segment_of(&segments, 300), 7);
        assert_eq!(segment_of(&segments, i64::MAX), 7);
        assert_eq!(segment_of(&[seg(0, i64::MIN)], i64::MIN), 0);
        assert_eq!(segment_of(&[], 42), 0);
    }
}
