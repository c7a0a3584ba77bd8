//! What each registered proxy runs: its last report (KeepAlive) and the newest snapshot a
//! Watch stream pushed to its identity, one row per workload. Not resources: writing a row
//! moves no version and wakes no watcher. In the store rather than in a replica's memory so
//! that `quiverctl proxy-status` on any replica sees proxies connected to every replica.

use sqlx::{ColumnIndex, Executor, IntoArguments, Type};

use super::StoreError;
use super::engine::{Engine, SqlStore, Value};

/// One proxy's row, without the snapshot bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct ProxyStatusRecord {
    pub namespace: String,
    pub workload: String,
    pub spiffe_id: String,
    pub service: String,
    pub proxy_version: String,
    pub applied_version: i64,
    /// Unix ms: when `applied_version` was first reported.
    pub applied_at: i64,
    pub refused_version: i64,
    pub refused_reason: String,
    /// Unix seconds (0: not reported).
    pub cert_expires_at: i64,
    /// Unix ms of the last report.
    pub last_seen: i64,
    /// The newest snapshot version pushed to this proxy's identity and service, and since
    /// when (Unix ms).
    pub latest_version: i64,
    pub latest_since: i64,
    /// The version of the kept snapshot (0: none).
    pub snapshot_version: i64,
}

/// Proxy status rows.
#[async_trait::async_trait]
pub trait ProxyStatuses: Send + Sync {
    /// Write a proxy's report (its `snapshot_version` is ignored). `latest_version` and
    /// `latest_since` only move forward; `applied_at` is kept while `applied_version` stays.
    /// Returns the version of the snapshot kept for it (0: none).
    async fn put_proxy_report(&self, record: &ProxyStatusRecord) -> Result<i64, StoreError>;
    /// Keep `snapshot` (encoded, at `version`) as the one this proxy runs.
    async fn put_proxy_snapshot(
        &self,
        namespace: &str,
        workload: &str,
        version: i64,
        snapshot: &[u8],
    ) -> Result<(), StoreError>;
    /// A Watch stream pushed `version` to `spiffe_id` fronting `service` at `now_ms`: move
    /// the latest version of its proxies' rows forward.
    async fn note_pushed(
        &self,
        spiffe_id: &str,
        service: &str,
        version: i64,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Rows (in `namespace`, or all), ordered by namespace and workload.
    async fn proxy_statuses(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<ProxyStatusRecord>, StoreError>;
    /// One row and its kept snapshot bytes (empty when none).
    async fn proxy_status(
        &self,
        namespace: &str,
        workload: &str,
    ) -> Result<Option<(ProxyStatusRecord, Vec<u8>)>, StoreError>;
    /// The workload is gone (deregistered, lease lapsed).
    async fn delete_proxy_status(&self, namespace: &str, workload: &str) -> Result<(), StoreError>;
}

const LIST_ALL: &str = "SELECT namespace, workload, spiffe_id, service, proxy_version, applied_version, \
     applied_at, refused_version, refused_reason, cert_expires_at, last_seen, latest_version, \
     latest_since, snapshot_version \
     FROM proxy_status ORDER BY namespace, workload";
const LIST_NAMESPACE: &str = "SELECT namespace, workload, spiffe_id, service, proxy_version, applied_version, \
     applied_at, refused_version, refused_reason, cert_expires_at, last_seen, latest_version, \
     latest_since, snapshot_version \
     FROM proxy_status WHERE namespace = $1 ORDER BY namespace, workload";
const GET: &str = "SELECT namespace, workload, spiffe_id, service, proxy_version, applied_version, \
     applied_at, refused_version, refused_reason, cert_expires_at, last_seen, latest_version, \
     latest_since, snapshot_version \
     FROM proxy_status WHERE namespace = $1 AND workload = $2";
const GET_SNAPSHOT: &str =
    "SELECT snapshot FROM proxy_status WHERE namespace = $1 AND workload = $2";
const PUT: &str = "INSERT INTO proxy_status (namespace, workload, spiffe_id, service, \
     proxy_version, applied_version, applied_at, refused_version, refused_reason, \
     cert_expires_at, last_seen, latest_version, latest_since) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (namespace, workload) DO UPDATE SET spiffe_id = excluded.spiffe_id, \
     service = excluded.service, proxy_version = excluded.proxy_version, \
     applied_at = CASE WHEN proxy_status.applied_version = excluded.applied_version \
       THEN proxy_status.applied_at ELSE excluded.applied_at END, \
     applied_version = excluded.applied_version, \
     refused_version = excluded.refused_version, refused_reason = excluded.refused_reason, \
     cert_expires_at = excluded.cert_expires_at, last_seen = excluded.last_seen, \
     latest_since = CASE WHEN excluded.latest_version > proxy_status.latest_version \
       THEN excluded.latest_since ELSE proxy_status.latest_since END, \
     latest_version = CASE WHEN excluded.latest_version > proxy_status.latest_version \
       THEN excluded.latest_version ELSE proxy_status.latest_version END \
     RETURNING snapshot_version";
const PUT_SNAPSHOT: &str = "UPDATE proxy_status SET snapshot_version = $1, snapshot = $2 \
     WHERE namespace = $3 AND workload = $4";
const NOTE_PUSHED: &str = "UPDATE proxy_status SET latest_version = $1, latest_since = $2 \
     WHERE spiffe_id = $3 AND service = $4 AND latest_version < $1";
const DELETE: &str = "DELETE FROM proxy_status WHERE namespace = $1 AND workload = $2";

impl<DB: Engine> SqlStore<DB>
where
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// A transaction for status writes. They are as frequent as keep-alives and pushes and
    /// worth less than configuration, so like span writes they go through the span
    /// connection and do not wait for an fsync (SQLite `synchronous=NORMAL`, Postgres
    /// `synchronous_commit = off`): a power cut may lose the last reports, which the next
    /// keep-alive writes again, and a slow disk does not hold the writer lock that
    /// registrations, leases and applies wait for.
    async fn status_tx(&self) -> Result<sqlx::Transaction<'static, DB>, StoreError> {
        let mut tx = self.span_pool.begin().await?;
        if let Some(stmt) = DB::SPAN_COMMIT {
            sqlx::query(stmt).execute(&mut *tx).await?;
        }
        Ok(tx)
    }
}

#[async_trait::async_trait]
impl<DB: Engine> ProxyStatuses for SqlStore<DB>
where
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'a> &'a [u8]: sqlx::Encode<'a, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Value<DB>,
    String: Value<DB>,
    Vec<u8>: Value<DB>,
{
    async fn put_proxy_report(&self, r: &ProxyStatusRecord) -> Result<i64, StoreError> {
        // SQLite: one writer at a time, or a resource write's transaction fails with BUSY.
        let _guard = self.write_guard().await;
        let mut tx = self.status_tx().await?;
        let kept = sqlx::query_scalar(PUT)
            .bind(r.namespace.as_str())
            .bind(r.workload.as_str())
            .bind(r.spiffe_id.as_str())
            .bind(r.service.as_str())
            .bind(r.proxy_version.as_str())
            .bind(r.applied_version)
            .bind(r.applied_at)
            .bind(r.refused_version)
            .bind(r.refused_reason.as_str())
            .bind(r.cert_expires_at)
            .bind(r.last_seen)
            .bind(r.latest_version)
            .bind(r.latest_since)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(kept)
    }

    async fn put_proxy_snapshot(
        &self,
        namespace: &str,
        workload: &str,
        version: i64,
        snapshot: &[u8],
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.status_tx().await?;
        sqlx::query(PUT_SNAPSHOT)
            .bind(version)
            .bind(snapshot)
            .bind(namespace)
            .bind(workload)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn note_pushed(
        &self,
        spiffe_id: &str,
        service: &str,
        version: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.status_tx().await?;
        sqlx::query(NOTE_PUSHED)
            .bind(version)
            .bind(now_ms)
            .bind(spiffe_id)
            .bind(service)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn proxy_statuses(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<ProxyStatusRecord>, StoreError> {
        Ok(match namespace {
            Some(ns) => {
                sqlx::query_as(LIST_NAMESPACE)
                    .bind(ns)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => sqlx::query_as(LIST_ALL).fetch_all(&self.pool).await?,
        })
    }

    async fn proxy_status(
        &self,
        namespace: &str,
        workload: &str,
    ) -> Result<Option<(ProxyStatusRecord, Vec<u8>)>, StoreError> {
        let record: Option<ProxyStatusRecord> = sqlx::query_as(GET)
            .bind(namespace)
            .bind(workload)
            .fetch_optional(&self.pool)
            .await?;
        let Some(record) = record else {
            return Ok(None);
        };
        let bytes: Option<Vec<u8>> = sqlx::query_scalar(GET_SNAPSHOT)
            .bind(namespace)
            .bind(workload)
            .fetch_optional(&self.pool)
            .await?;
        Ok(Some((record, bytes.unwrap_or_default())))
    }

    async fn delete_proxy_status(&self, namespace: &str, workload: &str) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        sqlx::query(DELETE)
            .bind(namespace)
            .bind(workload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
