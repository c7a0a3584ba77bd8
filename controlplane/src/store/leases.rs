//! Workload leases: a registered workload is live until its lease lapses. Leases are not
//! resources (writing one moves no version and wakes no watcher), except that a lapsed
//! lease takes its Workload with it, through the change feed ([`Leases::expire_workload`]).

use quiver_api::resource::Kind;
use sqlx::{ColumnIndex, Executor, IntoArguments, Type};

use super::engine::{Engine, SqlStore, Value};
use super::{Change, StoreError};

/// A registered workload's lease: the workload is live until `expires_at` (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Lease {
    pub namespace: String,
    pub name: String,
    /// The identity that registered it; only it may renew the lease.
    pub spiffe_id: String,
    pub expires_at: i64,
}

/// Workload leases.
#[async_trait::async_trait]
pub trait Leases: Send + Sync {
    /// Create or replace a workload's lease. Leases are not resources: writing one moves no
    /// version and wakes no watcher.
    async fn put_lease(&self, lease: &Lease) -> Result<(), StoreError>;
    /// Extend a lease that is still live at `now_ms` and held by `spiffe_id`. False when there
    /// is no such lease (unknown, lapsed or held by another identity).
    async fn renew_lease(
        &self,
        namespace: &str,
        name: &str,
        spiffe_id: &str,
        expires_at: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Leases (in `namespace`, or all), ordered by namespace and name.
    async fn leases(&self, namespace: Option<&str>) -> Result<Vec<Lease>, StoreError>;
    /// Leases that lapsed at or before `now_ms`, oldest first.
    async fn lapsed_leases(&self, now_ms: i64) -> Result<Vec<Lease>, StoreError>;
    async fn delete_lease(&self, namespace: &str, name: &str) -> Result<(), StoreError>;
    /// If the lease of workload `namespace/name` has lapsed at `now_ms`, delete the lease and
    /// the Workload in one transaction (the deletion goes through the change feed). Returns
    /// the change, or None when the lease was renewed, is gone or had no workload.
    async fn expire_workload(
        &self,
        namespace: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<Option<Change>, StoreError>;
    /// Take or keep the lease on driving `name` (e.g. `Canary/shop/reviews`) for `holder`
    /// until `expires_at`: granted when nobody holds it, `holder` does, or the holder's
    /// lease lapsed at `now_ms`. False when another holder's lease is live.
    async fn claim_controller_lease(
        &self,
        name: &str,
        holder: &str,
        expires_at: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Give up `holder`'s lease on `name` (nothing when another holds it).
    async fn release_controller_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}

const PUT_LEASE: &str = "INSERT INTO workload_leases \
     (namespace, name, spiffe_id, expires_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (namespace, name) DO UPDATE SET \
     spiffe_id = excluded.spiffe_id, expires_at = excluded.expires_at";
const RENEW_LEASE: &str = "UPDATE workload_leases SET expires_at = $1 \
     WHERE namespace = $2 AND name = $3 AND spiffe_id = $4 AND expires_at > $5";
const LEASES_ALL: &str =
    "SELECT namespace, name, spiffe_id, expires_at FROM workload_leases ORDER BY namespace, name";
const LEASES_NAMESPACE: &str = "SELECT namespace, name, spiffe_id, expires_at \
     FROM workload_leases WHERE namespace = $1 ORDER BY namespace, name";
const LAPSED_LEASES: &str = "SELECT namespace, name, spiffe_id, expires_at \
     FROM workload_leases WHERE expires_at <= $1 ORDER BY expires_at";
const TAKE_LAPSED_LEASE: &str = "DELETE FROM workload_leases \
     WHERE namespace = $1 AND name = $2 AND expires_at <= $3 RETURNING spiffe_id";
const DELETE_LEASE: &str = "DELETE FROM workload_leases WHERE namespace = $1 AND name = $2";
const CLAIM_CONTROLLER_LEASE: &str = "INSERT INTO controller_leases (name, holder, expires_at) \
     VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET \
     holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE controller_leases.holder = excluded.holder OR controller_leases.expires_at <= $4";
const RELEASE_CONTROLLER_LEASE: &str =
    "DELETE FROM controller_leases WHERE name = $1 AND holder = $2";

#[async_trait::async_trait]
impl<DB: Engine> Leases for SqlStore<DB>
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
    async fn put_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        // SQLite: one writer at a time, or a resource write's transaction that started
        // reading before this commit fails with BUSY instead of waiting.
        let _guard = self.write_guard().await;
        sqlx::query(PUT_LEASE)
            .bind(lease.namespace.as_str())
            .bind(lease.name.as_str())
            .bind(lease.spiffe_id.as_str())
            .bind(lease.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn renew_lease(
        &self,
        namespace: &str,
        name: &str,
        spiffe_id: &str,
        expires_at: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let done = sqlx::query(RENEW_LEASE)
            .bind(expires_at)
            .bind(namespace)
            .bind(name)
            .bind(spiffe_id)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    async fn leases(&self, namespace: Option<&str>) -> Result<Vec<Lease>, StoreError> {
        Ok(match namespace {
            Some(ns) => {
                sqlx::query_as(LEASES_NAMESPACE)
                    .bind(ns)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => sqlx::query_as(LEASES_ALL).fetch_all(&self.pool).await?,
        })
    }

    async fn lapsed_leases(&self, now_ms: i64) -> Result<Vec<Lease>, StoreError> {
        Ok(sqlx::query_as(LAPSED_LEASES)
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn claim_controller_lease(
        &self,
        name: &str,
        holder: &str,
        expires_at: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let done = sqlx::query(CLAIM_CONTROLLER_LEASE)
            .bind(name)
            .bind(holder)
            .bind(expires_at)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    async fn release_controller_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        sqlx::query(RELEASE_CONTROLLER_LEASE)
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_lease(&self, namespace: &str, name: &str) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        sqlx::query(DELETE_LEASE)
            .bind(namespace)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn expire_workload(
        &self,
        namespace: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<Option<Change>, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let current: i64 = sqlx::query_scalar(DB::LOCK_VERSION)
            .fetch_one(&mut *tx)
            .await?;
        // Taking the lease row decides the race with a keep-alive: whichever commits first
        // wins, the other finds nothing to do.
        let taken: Option<String> = sqlx::query_scalar(TAKE_LAPSED_LEASE)
            .bind(namespace)
            .bind(name)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_none() {
            tx.rollback().await?;
            return Ok(None);
        }
        let Some(existing) = Self::get_in(&mut tx, Kind::Workload, namespace, name).await? else {
            // A lease without its workload (a register that failed half-way).
            tx.commit().await?;
            return Ok(None);
        };
        self.delete_in(tx, current, existing).await.map(Some)
    }
}
