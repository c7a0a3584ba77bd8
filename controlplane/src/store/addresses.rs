//! Service virtual IPs as claims: one address per Service, held from its creation until its
//! deletion (table `service_addresses`, migration 0012). Which address to try is decided
//! above (`crate::addresses`); the table's primary key decides races between replicas.

use sqlx::{ColumnIndex, Executor, IntoArguments, Type};

use super::StoreError;
use super::engine::{Engine, SqlStore, Value};

/// Service address claims.
#[async_trait::async_trait]
pub trait Addresses: Send + Sync {
    /// The address Service `namespace/name` holds, if any.
    async fn service_address(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError>;
    /// Claim `address` for Service `namespace/name`. False when another Service holds it (or
    /// this one already holds another address: read [`Addresses::service_address`] first).
    async fn claim_service_address(
        &self,
        namespace: &str,
        name: &str,
        address: &str,
    ) -> Result<bool, StoreError>;
    /// Give up the address of Service `namespace/name` (nothing when it holds none).
    async fn release_service_address(&self, namespace: &str, name: &str) -> Result<(), StoreError>;
    /// Every claim as (namespace, name, address), ordered by namespace and name.
    async fn service_addresses(&self) -> Result<Vec<(String, String, String)>, StoreError>;
}

const GET: &str = "SELECT address FROM service_addresses WHERE namespace = $1 AND name = $2";
const CLAIM: &str = "INSERT INTO service_addresses (address, namespace, name) \
     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
const RELEASE: &str = "DELETE FROM service_addresses WHERE namespace = $1 AND name = $2";
const ALL: &str = "SELECT namespace, name, address FROM service_addresses ORDER BY namespace, name";

#[async_trait::async_trait]
impl<DB: Engine> Addresses for SqlStore<DB>
where
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    String: Value<DB>,
{
    async fn service_address(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(GET)
            .bind(namespace)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn claim_service_address(
        &self,
        namespace: &str,
        name: &str,
        address: &str,
    ) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let done = sqlx::query(CLAIM)
            .bind(address)
            .bind(namespace)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    async fn release_service_address(&self, namespace: &str, name: &str) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        sqlx::query(RELEASE)
            .bind(namespace)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn service_addresses(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        Ok(sqlx::query_as(ALL).fetch_all(&self.pool).await?)
    }
}
