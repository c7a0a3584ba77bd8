//! Revoked identities: one row per SPIFFE id, kept until no join token made before the
//! revocation can still be redeemed. Not resources: a revocation moves no version; each
//! replica re-reads this small table ([`crate::discovery::revocations`]).

use sqlx::{ColumnIndex, Executor, IntoArguments, Type};

use super::StoreError;
use super::engine::{Engine, SqlStore, Value};

/// A revocation as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RevocationRecord {
    pub spiffe_id: String,
    /// Unix seconds: certificates of the id with an earlier notBefore are denied.
    pub not_before: i64,
    /// Unix ms.
    pub revoked_at: i64,
    /// Unix ms: when every certificate it covers has expired (proxies are sent it until then).
    pub expires_at: i64,
    /// Unix ms: when every join token made before it has expired (the row goes then).
    pub forget_at: i64,
    pub reason: String,
    /// `namespace/name` of the Workload it was revoked through, or "".
    pub workload: String,
}

/// Revocations.
#[async_trait::async_trait]
pub trait Revocations: Send + Sync {
    /// Create or replace the revocation of `record.spiffe_id`.
    async fn put_revocation(&self, record: &RevocationRecord) -> Result<(), StoreError>;
    /// The revocation of one id, if it is still kept at `now_ms`.
    async fn revocation(
        &self,
        spiffe_id: &str,
        now_ms: i64,
    ) -> Result<Option<RevocationRecord>, StoreError>;
    /// Every revocation still kept at `now_ms`, ordered by SPIFFE id.
    async fn revocations(&self, now_ms: i64) -> Result<Vec<RevocationRecord>, StoreError>;
    /// Delete the rows no longer kept at `now_ms`; how many went.
    async fn forget_revocations(&self, now_ms: i64) -> Result<u64, StoreError>;
}

const PUT: &str = "INSERT INTO revocations \
     (spiffe_id, not_before, revoked_at, expires_at, forget_at, reason, workload) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (spiffe_id) DO UPDATE SET not_before = excluded.not_before, \
     revoked_at = excluded.revoked_at, expires_at = excluded.expires_at, \
     forget_at = excluded.forget_at, reason = excluded.reason, workload = excluded.workload";
const GET: &str = "SELECT spiffe_id, not_before, revoked_at, expires_at, forget_at, reason, workload \
     FROM revocations WHERE spiffe_id = $1 AND forget_at > $2";
const LIST: &str = "SELECT spiffe_id, not_before, revoked_at, expires_at, forget_at, reason, workload \
     FROM revocations WHERE forget_at > $1 ORDER BY spiffe_id";
const FORGET: &str = "DELETE FROM revocations WHERE forget_at <= $1";

#[async_trait::async_trait]
impl<DB: Engine> Revocations for SqlStore<DB>
where
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    i64: Value<DB>,
    String: Value<DB>,
{
    async fn put_revocation(&self, r: &RevocationRecord) -> Result<(), StoreError> {
        sqlx::query(PUT)
            .bind(r.spiffe_id.as_str())
            .bind(r.not_before)
            .bind(r.revoked_at)
            .bind(r.expires_at)
            .bind(r.forget_at)
            .bind(r.reason.as_str())
            .bind(r.workload.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn revocation(
        &self,
        spiffe_id: &str,
        now_ms: i64,
    ) -> Result<Option<RevocationRecord>, StoreError> {
        Ok(sqlx::query_as(GET)
            .bind(spiffe_id)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn revocations(&self, now_ms: i64) -> Result<Vec<RevocationRecord>, StoreError> {
        Ok(sqlx::query_as(LIST)
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn forget_revocations(&self, now_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(FORGET).bind(now_ms).execute(&self.pool).await?;
        Ok(DB::rows_affected(&done))
    }
}
