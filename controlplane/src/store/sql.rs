//! The SQL both engines share, and the one implementation of [`Store`] over either pool.
//!
//! Postgres and SQLite accept the same statements here (`$N` parameters, `ON CONFLICT`,
//! `RETURNING`); what differs (row locking, NOTIFY, snapshot isolation, a process-wide write
//! lock for SQLite) is supplied by each engine as associated constants and a write guard.
//! The implementation is a macro rather than generic code because sqlx's executor bounds
//! for "any database" are far harder to read than the duplication they would save.

use quiver_api::resource::Kind;

use super::{Change, ChangeOp, JoinTokenRecord, StoreError, StoredObject};

pub(super) const CURRENT_VERSION: &str = "SELECT version FROM quiver_version WHERE id = 1";
pub(super) const SET_VERSION: &str = "UPDATE quiver_version SET version = $1 WHERE id = 1";
pub(super) const GET: &str = "SELECT kind, namespace, name, resource_version, body, created_at, updated_at \
     FROM resources WHERE kind = $1 AND namespace = $2 AND name = $3";
pub(super) const LIST_ALL: &str = "SELECT kind, namespace, name, resource_version, body, created_at, updated_at \
     FROM resources WHERE kind = $1 ORDER BY namespace, name";
pub(super) const LIST_NAMESPACE: &str = "SELECT kind, namespace, name, resource_version, body, created_at, updated_at \
     FROM resources WHERE kind = $1 AND namespace = $2 ORDER BY namespace, name";
pub(super) const UPSERT: &str = "INSERT INTO resources \
     (kind, namespace, name, resource_version, body, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (kind, namespace, name) DO UPDATE SET \
     resource_version = excluded.resource_version, body = excluded.body, \
     updated_at = excluded.updated_at";
pub(super) const DELETE: &str =
    "DELETE FROM resources WHERE kind = $1 AND namespace = $2 AND name = $3";
pub(super) const INSERT_CHANGE: &str = "INSERT INTO changes \
     (resource_version, op, kind, namespace, name, body, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(super) const CHANGES_SINCE: &str = "SELECT resource_version, op, kind, namespace, name, body, created_at, updated_at \
     FROM changes WHERE resource_version > $1 ORDER BY resource_version LIMIT $2";
pub(super) const OLDEST_CHANGE: &str = "SELECT MIN(resource_version) FROM changes";
pub(super) const PRUNE_CHANGES: &str = "DELETE FROM changes WHERE resource_version <= $1";
pub(super) const COUNTS: &str = "SELECT kind, COUNT(*) FROM resources GROUP BY kind";
pub(super) const INSERT_API_TOKEN: &str = "INSERT INTO api_tokens \
     (id, token_hash, role, description, created_at) VALUES ($1, $2, $3, $4, $5)";
pub(super) const API_TOKEN_ROLE: &str = "SELECT role FROM api_tokens WHERE token_hash = $1";
pub(super) const COUNT_API_TOKENS: &str = "SELECT COUNT(*) FROM api_tokens";
pub(super) const INSERT_JOIN_TOKEN: &str = "INSERT INTO join_tokens \
     (id, token_hash, namespace, service_account, expires_at, max_uses, uses, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(super) const REDEEM_JOIN_TOKEN: &str = "UPDATE join_tokens SET uses = uses + 1 \
     WHERE token_hash = $1 AND uses < max_uses AND expires_at > $2 \
     RETURNING id, token_hash, namespace, service_account, expires_at, max_uses, uses, created_at";
pub(super) const JOIN_TOKEN: &str = "SELECT id, token_hash, namespace, service_account, expires_at, max_uses, uses, created_at \
     FROM join_tokens WHERE token_hash = $1";
pub(super) const GET_CA: &str = "SELECT cert_pem, key_pem FROM certificate_authority WHERE id = 1";
pub(super) const INSERT_CA: &str = "INSERT INTO certificate_authority (id, cert_pem, key_pem, created_at) \
     VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING";

pub(super) const PUT_LEASE: &str = "INSERT INTO workload_leases \
     (namespace, name, spiffe_id, expires_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (namespace, name) DO UPDATE SET \
     spiffe_id = excluded.spiffe_id, expires_at = excluded.expires_at";
pub(super) const RENEW_LEASE: &str = "UPDATE workload_leases SET expires_at = $1 \
     WHERE namespace = $2 AND name = $3 AND spiffe_id = $4 AND expires_at > $5";
pub(super) const LEASES_ALL: &str =
    "SELECT namespace, name, spiffe_id, expires_at FROM workload_leases ORDER BY namespace, name";
pub(super) const LEASES_NAMESPACE: &str = "SELECT namespace, name, spiffe_id, expires_at \
     FROM workload_leases WHERE namespace = $1 ORDER BY namespace, name";
pub(super) const LAPSED_LEASES: &str = "SELECT namespace, name, spiffe_id, expires_at \
     FROM workload_leases WHERE expires_at <= $1 ORDER BY expires_at";
pub(super) const TAKE_LAPSED_LEASE: &str = "DELETE FROM workload_leases \
     WHERE namespace = $1 AND name = $2 AND expires_at <= $3 RETURNING spiffe_id";
pub(super) const DELETE_LEASE: &str =
    "DELETE FROM workload_leases WHERE namespace = $1 AND name = $2";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct LeaseRow {
    pub namespace: String,
    pub name: String,
    pub spiffe_id: String,
    pub expires_at: i64,
}

impl From<LeaseRow> for super::Lease {
    fn from(r: LeaseRow) -> Self {
        super::Lease {
            namespace: r.namespace,
            name: r.name,
            spiffe_id: r.spiffe_id,
            expires_at: r.expires_at,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct ObjectRow {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub resource_version: i64,
    pub body: Vec<u8>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ObjectRow {
    pub fn into_object(self) -> Result<StoredObject, StoreError> {
        Ok(StoredObject {
            kind: Kind::from_document(&self.kind).ok_or(StoreError::UnknownKind(self.kind))?,
            namespace: self.namespace,
            name: self.name,
            resource_version: version(self.resource_version),
            body: self.body,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct ChangeRow {
    pub resource_version: i64,
    pub op: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub body: Vec<u8>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ChangeRow {
    pub fn into_change(self) -> Result<Change, StoreError> {
        let op = match self.op.as_str() {
            "DELETE" => ChangeOp::Delete,
            "CREATE" => ChangeOp::Create,
            _ => ChangeOp::Update,
        };
        Ok(Change {
            resource_version: version(self.resource_version),
            op,
            object: ObjectRow {
                kind: self.kind,
                namespace: self.namespace,
                name: self.name,
                resource_version: self.resource_version,
                body: self.body,
                created_at: self.created_at,
                updated_at: self.updated_at,
            }
            .into_object()?,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct JoinTokenRow {
    pub id: String,
    pub token_hash: String,
    pub namespace: String,
    pub service_account: String,
    pub expires_at: i64,
    pub max_uses: i32,
    pub uses: i32,
    pub created_at: i64,
}

impl From<JoinTokenRow> for JoinTokenRecord {
    fn from(r: JoinTokenRow) -> Self {
        JoinTokenRecord {
            id: r.id,
            token_hash: r.token_hash,
            namespace: r.namespace,
            service_account: r.service_account,
            expires_at: r.expires_at,
            max_uses: r.max_uses,
            uses: r.uses,
            created_at: r.created_at,
        }
    }
}

/// Versions are BIGINT in SQL and never negative (they start at 0 and only grow).
pub(super) fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// SQL wants i64; versions never reach 2^63.
pub(super) fn sql_version(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Implements [`super::Store`] for an engine struct with fields `pool` and `signal`, inherent
/// associated consts `ENGINE`, `LOCK_VERSION`, `NOTIFY: Option<&str>`,
/// `SNAPSHOT: Option<&str>`, and an async `write_guard()`.
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn engine(&self) -> &'static str {
                <$store>::ENGINE
            }

            fn change_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
                self.signal.clone()
            }

            async fn put(
                &self,
                kind: quiver_api::resource::Kind,
                namespace: &str,
                name: &str,
                body: Vec<u8>,
                expect: Option<u64>,
            ) -> Result<
                ($crate::store::StoredObject, $crate::store::PutOutcome),
                $crate::store::StoreError,
            > {
                use $crate::store::sql::*;
                use $crate::store::{PutOutcome, StoreError};
                let _guard = self.write_guard().await;
                let mut tx = self.pool.begin().await?;
                let current: i64 = sqlx::query_scalar(<$store>::LOCK_VERSION)
                    .fetch_one(&mut *tx)
                    .await?;
                let existing: Option<ObjectRow> = sqlx::query_as(GET)
                    .bind(kind.as_str())
                    .bind(namespace)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
                let expect = expect.filter(|v| *v != 0);
                if let Some(expected) = expect {
                    let at = existing.as_ref().map(|e| version(e.resource_version));
                    if at != Some(expected) {
                        return Err(StoreError::Conflict {
                            kind,
                            namespace: namespace.into(),
                            name: name.into(),
                            expected,
                            current: at,
                        });
                    }
                }
                let existing = match existing {
                    Some(e) if e.body == body => {
                        tx.rollback().await?;
                        return Ok((e.into_object()?, PutOutcome::Unchanged));
                    }
                    other => other,
                };
                let rv = current + 1;
                let now = $crate::store::now_ms();
                let created_at = existing.as_ref().map(|e| e.created_at).unwrap_or(now);
                sqlx::query(SET_VERSION).bind(rv).execute(&mut *tx).await?;
                sqlx::query(UPSERT)
                    .bind(kind.as_str())
                    .bind(namespace)
                    .bind(name)
                    .bind(rv)
                    .bind(&body)
                    .bind(created_at)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                self.record_change(
                    &mut tx,
                    rv,
                    if existing.is_some() {
                        "UPDATE"
                    } else {
                        "CREATE"
                    },
                    kind,
                    namespace,
                    name,
                    &body,
                    created_at,
                    now,
                )
                .await?;
                tx.commit().await?;
                self.signal.notify_one();
                let outcome = if existing.is_some() {
                    PutOutcome::Updated
                } else {
                    PutOutcome::Created
                };
                Ok((
                    $crate::store::StoredObject {
                        kind,
                        namespace: namespace.into(),
                        name: name.into(),
                        resource_version: version(rv),
                        body,
                        created_at,
                        updated_at: now,
                    },
                    outcome,
                ))
            }

            async fn get(
                &self,
                kind: quiver_api::resource::Kind,
                namespace: &str,
                name: &str,
            ) -> Result<Option<$crate::store::StoredObject>, $crate::store::StoreError> {
                use $crate::store::sql::*;
                let row: Option<ObjectRow> = sqlx::query_as(GET)
                    .bind(kind.as_str())
                    .bind(namespace)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(ObjectRow::into_object).transpose()
            }

            async fn list(
                &self,
                kind: quiver_api::resource::Kind,
                namespace: Option<&str>,
            ) -> Result<(Vec<$crate::store::StoredObject>, u64), $crate::store::StoreError> {
                use $crate::store::sql::*;
                let mut tx = self.pool.begin().await?;
                if let Some(snapshot) = <$store>::SNAPSHOT {
                    sqlx::query(snapshot).execute(&mut *tx).await?;
                }
                let current: i64 = sqlx::query_scalar(CURRENT_VERSION)
                    .fetch_one(&mut *tx)
                    .await?;
                let rows: Vec<ObjectRow> = match namespace {
                    Some(ns) => {
                        sqlx::query_as(LIST_NAMESPACE)
                            .bind(kind.as_str())
                            .bind(ns)
                            .fetch_all(&mut *tx)
                            .await?
                    }
                    None => {
                        sqlx::query_as(LIST_ALL)
                            .bind(kind.as_str())
                            .fetch_all(&mut *tx)
                            .await?
                    }
                };
                tx.commit().await?;
                let objects = rows
                    .into_iter()
                    .map(ObjectRow::into_object)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((objects, version(current)))
            }

            async fn delete(
                &self,
                kind: quiver_api::resource::Kind,
                namespace: &str,
                name: &str,
                expect: Option<u64>,
            ) -> Result<$crate::store::Change, $crate::store::StoreError> {
                use $crate::store::StoreError;
                use $crate::store::sql::*;
                let _guard = self.write_guard().await;
                let mut tx = self.pool.begin().await?;
                let current: i64 = sqlx::query_scalar(<$store>::LOCK_VERSION)
                    .fetch_one(&mut *tx)
                    .await?;
                let existing: Option<ObjectRow> = sqlx::query_as(GET)
                    .bind(kind.as_str())
                    .bind(namespace)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(existing) = existing else {
                    return Err(match expect.filter(|v| *v != 0) {
                        Some(expected) => StoreError::Conflict {
                            kind,
                            namespace: namespace.into(),
                            name: name.into(),
                            expected,
                            current: None,
                        },
                        None => StoreError::NotFound {
                            kind,
                            namespace: namespace.into(),
                            name: name.into(),
                        },
                    });
                };
                if let Some(expected) = expect.filter(|v| *v != 0) {
                    if version(existing.resource_version) != expected {
                        return Err(StoreError::Conflict {
                            kind,
                            namespace: namespace.into(),
                            name: name.into(),
                            expected,
                            current: Some(version(existing.resource_version)),
                        });
                    }
                }
                self.delete_in(tx, current, kind, namespace, name, existing)
                    .await
            }

            async fn changes_since(
                &self,
                after: u64,
                limit: i64,
            ) -> Result<Vec<$crate::store::Change>, $crate::store::StoreError> {
                use $crate::store::sql::*;
                let rows: Vec<ChangeRow> = sqlx::query_as(CHANGES_SINCE)
                    .bind(sql_version(after))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(ChangeRow::into_change).collect()
            }

            async fn oldest_change(&self) -> Result<Option<u64>, $crate::store::StoreError> {
                use $crate::store::sql::*;
                let v: Option<i64> = sqlx::query_scalar(OLDEST_CHANGE)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(v.map(version))
            }

            async fn current_version(&self) -> Result<u64, $crate::store::StoreError> {
                use $crate::store::sql::*;
                let v: i64 = sqlx::query_scalar(CURRENT_VERSION)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(version(v))
            }

            async fn counts(
                &self,
            ) -> Result<std::collections::BTreeMap<String, u64>, $crate::store::StoreError> {
                use $crate::store::sql::*;
                let rows: Vec<(String, i64)> = sqlx::query_as(COUNTS).fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map(|(k, n)| (k, version(n))).collect())
            }

            async fn insert_api_token(
                &self,
                t: &$crate::store::ApiTokenRecord,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::sql::*;
                sqlx::query(INSERT_API_TOKEN)
                    .bind(&t.id)
                    .bind(&t.token_hash)
                    .bind(&t.role)
                    .bind(&t.description)
                    .bind(t.created_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn api_token_role(
                &self,
                token_hash: &str,
            ) -> Result<Option<String>, $crate::store::StoreError> {
                use $crate::store::sql::*;
                Ok(sqlx::query_scalar(API_TOKEN_ROLE)
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn count_api_tokens(&self) -> Result<u64, $crate::store::StoreError> {
                use $crate::store::sql::*;
                let n: i64 = sqlx::query_scalar(COUNT_API_TOKENS)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(version(n))
            }

            async fn insert_join_token(
                &self,
                t: &$crate::store::JoinTokenRecord,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::sql::*;
                sqlx::query(INSERT_JOIN_TOKEN)
                    .bind(&t.id)
                    .bind(&t.token_hash)
                    .bind(&t.namespace)
                    .bind(&t.service_account)
                    .bind(t.expires_at)
                    .bind(t.max_uses)
                    .bind(t.uses)
                    .bind(t.created_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn redeem_join_token(
                &self,
                token_hash: &str,
                now_ms: i64,
            ) -> Result<$crate::store::JoinTokenRecord, $crate::store::RedeemError> {
                use $crate::store::sql::*;
                use $crate::store::{RedeemError, StoreError};
                let redeemed: Option<JoinTokenRow> = sqlx::query_as(REDEEM_JOIN_TOKEN)
                    .bind(token_hash)
                    .bind(now_ms)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::from)?;
                if let Some(row) = redeemed {
                    return Ok(row.into());
                }
                // Say why, from the row as it is now.
                let row: Option<JoinTokenRow> = sqlx::query_as(JOIN_TOKEN)
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::from)?;
                Err(match row {
                    None => RedeemError::Unknown,
                    Some(r) if r.expires_at <= now_ms => RedeemError::Expired,
                    Some(r) => RedeemError::UsedUp(r.uses),
                })
            }

            async fn certificate_authority(
                &self,
            ) -> Result<Option<(String, String)>, $crate::store::StoreError> {
                use $crate::store::sql::*;
                Ok(sqlx::query_as(GET_CA).fetch_optional(&self.pool).await?)
            }

            async fn init_certificate_authority(
                &self,
                cert_pem: &str,
                key_pem: &str,
            ) -> Result<(String, String), $crate::store::StoreError> {
                use $crate::store::sql::*;
                sqlx::query(INSERT_CA)
                    .bind(cert_pem)
                    .bind(key_pem)
                    .bind($crate::store::now_ms())
                    .execute(&self.pool)
                    .await?;
                Ok(sqlx::query_as(GET_CA).fetch_one(&self.pool).await?)
            }
            async fn put_lease(
                &self,
                lease: &$crate::store::Lease,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::sql::*;
                sqlx::query(PUT_LEASE)
                    .bind(&lease.namespace)
                    .bind(&lease.name)
                    .bind(&lease.spiffe_id)
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
            ) -> Result<bool, $crate::store::StoreError> {
                use $crate::store::sql::*;
                let done = sqlx::query(RENEW_LEASE)
                    .bind(expires_at)
                    .bind(namespace)
                    .bind(name)
                    .bind(spiffe_id)
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn leases(
                &self,
                namespace: Option<&str>,
            ) -> Result<Vec<$crate::store::Lease>, $crate::store::StoreError> {
                use $crate::store::sql::*;
                let rows: Vec<LeaseRow> = match namespace {
                    Some(ns) => {
                        sqlx::query_as(LEASES_NAMESPACE)
                            .bind(ns)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    None => sqlx::query_as(LEASES_ALL).fetch_all(&self.pool).await?,
                };
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn lapsed_leases(
                &self,
                now_ms: i64,
            ) -> Result<Vec<$crate::store::Lease>, $crate::store::StoreError> {
                use $crate::store::sql::*;
                let rows: Vec<LeaseRow> = sqlx::query_as(LAPSED_LEASES)
                    .bind(now_ms)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn delete_lease(
                &self,
                namespace: &str,
                name: &str,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::sql::*;
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
            ) -> Result<Option<$crate::store::Change>, $crate::store::StoreError> {
                use $crate::store::sql::*;
                let kind = quiver_api::resource::Kind::Workload;
                let _guard = self.write_guard().await;
                let mut tx = self.pool.begin().await?;
                let current: i64 = sqlx::query_scalar(<$store>::LOCK_VERSION)
                    .fetch_one(&mut *tx)
                    .await?;
                // Taking the lease row decides the race with a keep-alive: whichever commits
                // first wins, the other finds nothing to do.
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
                let existing: Option<ObjectRow> = sqlx::query_as(GET)
                    .bind(kind.as_str())
                    .bind(namespace)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(existing) = existing else {
                    // A lease without its workload (a register that failed half-way).
                    tx.commit().await?;
                    return Ok(None);
                };
                self.delete_in(tx, current, kind, namespace, name, existing)
                    .await
                    .map(Some)
            }
        }

        impl $store {
            /// Delete `existing` inside `tx` (whose version lock read `current`): bump the
            /// version, remove the row, record the change, commit and wake watchers. Shared by
            /// an explicit delete and a lapsed lease.
            async fn delete_in(
                &self,
                mut tx: sqlx::Transaction<'_, $db>,
                current: i64,
                kind: quiver_api::resource::Kind,
                namespace: &str,
                name: &str,
                existing: $crate::store::sql::ObjectRow,
            ) -> Result<$crate::store::Change, $crate::store::StoreError> {
                use $crate::store::sql::*;
                use $crate::store::{Change, ChangeOp};
                let rv = current + 1;
                let now = $crate::store::now_ms();
                sqlx::query(SET_VERSION).bind(rv).execute(&mut *tx).await?;
                sqlx::query(DELETE)
                    .bind(kind.as_str())
                    .bind(namespace)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                self.record_change(
                    &mut tx,
                    rv,
                    "DELETE",
                    kind,
                    namespace,
                    name,
                    &existing.body,
                    existing.created_at,
                    now,
                )
                .await?;
                tx.commit().await?;
                self.signal.notify_one();
                let mut object = existing.into_object()?;
                object.updated_at = now;
                Ok(Change {
                    resource_version: version(rv),
                    op: ChangeOp::Delete,
                    object,
                })
            }

            /// Append to the change feed, wake other replicas (Postgres) and prune old changes,
            /// all inside the writing transaction.
            #[allow(clippy::too_many_arguments)]
            async fn record_change(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                rv: i64,
                op: &str,
                kind: quiver_api::resource::Kind,
                namespace: &str,
                name: &str,
                body: &[u8],
                created_at: i64,
                updated_at: i64,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::sql::*;
                sqlx::query(INSERT_CHANGE)
                    .bind(rv)
                    .bind(op)
                    .bind(kind.as_str())
                    .bind(namespace)
                    .bind(name)
                    .bind(body)
                    .bind(created_at)
                    .bind(updated_at)
                    .execute(&mut **tx)
                    .await?;
                if let Some(notify) = <$store>::NOTIFY {
                    sqlx::query(notify)
                        .bind(rv.to_string())
                        .execute(&mut **tx)
                        .await?;
                }
                if rv % 256 == 0 {
                    sqlx::query(PRUNE_CHANGES)
                        .bind(rv - $crate::store::CHANGE_RETENTION)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(())
            }
        }
    };
}

pub(super) use impl_store;
