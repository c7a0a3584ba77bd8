//! Resources with optimistic concurrency, and the change feed's table: every write takes the
//! next value of one global version counter inside its transaction and appends to `changes`
//! in the same transaction, so versions order all writes and `changes` read in version order
//! is the feed ([`super::feed`]). Bodies are protobuf bytes this module does not look into.

use std::collections::BTreeMap;
use std::sync::Arc;

use quiver_api::resource::Kind;
use sqlx::{ColumnIndex, Executor, IntoArguments, Transaction, Type};
use tokio::sync::Notify;

use super::StoreError;
use super::engine::{Engine, SqlStore, Value, sql_version, version};

/// How many changes the feed keeps; older ones are pruned on write. A watcher resuming from
/// an older version is told to re-list.
pub const CHANGE_RETENTION: i64 = 10_000;

/// A stored object: its identity, version and protobuf body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub resource_version: u64,
    /// Protobuf encoding of the resource as applied (metadata timestamps and version are
    /// filled from the columns on read, not taken from here).
    pub body: Vec<u8>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated,
    /// The stored body was identical: nothing was written, the version did not move.
    Unchanged,
}

/// What a put of `body` does to the object stored now (`existing`: its version and body),
/// or the conflict it is refused with: the one rule both [`Resources::put`] and the API's
/// dry run follow. `expect` as in `put` (`Some(0)` is `None`).
pub fn put_outcome(
    kind: Kind,
    namespace: &str,
    name: &str,
    existing: Option<(u64, &[u8])>,
    body: &[u8],
    expect: Option<u64>,
) -> Result<PutOutcome, StoreError> {
    if let Some(expected) = expect.filter(|v| *v != 0) {
        let at = existing.map(|(v, _)| v);
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
    Ok(match existing {
        Some((_, stored)) if stored == body => PutOutcome::Unchanged,
        Some(_) => PutOutcome::Updated,
        None => PutOutcome::Created,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Create,
    Update,
    Delete,
}

/// One entry of the change feed. For a delete, `object` is the object as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub resource_version: u64,
    pub op: ChangeOp,
    pub object: StoredObject,
}

/// Resources and the change feed.
#[async_trait::async_trait]
pub trait Resources: Send + Sync {
    /// Woken after every committed write, on this replica or (Postgres) any other.
    fn change_signal(&self) -> Arc<Notify>;

    /// Create or replace an object. With `expect = Some(v)`, only if it is at version `v`
    /// (`Some(0)` is treated like `None`).
    async fn put(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        body: Vec<u8>,
        expect: Option<u64>,
    ) -> Result<(StoredObject, PutOutcome), StoreError>;

    async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, StoreError>;

    /// Objects of `kind` (in `namespace`, or all), ordered by namespace and name, with the
    /// store version they are a consistent snapshot of.
    async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<StoredObject>, u64), StoreError>;

    /// Delete an object, with the same precondition as [`Resources::put`]. Returns the
    /// change.
    async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        expect: Option<u64>,
    ) -> Result<Change, StoreError>;

    /// Changes with a version above `after`, oldest first, at most `limit`.
    async fn changes_since(&self, after: u64, limit: i64) -> Result<Vec<Change>, StoreError>;

    /// The oldest version still in the change feed (older ones are pruned), if any.
    async fn oldest_change(&self) -> Result<Option<u64>, StoreError>;

    /// The latest version.
    async fn current_version(&self) -> Result<u64, StoreError>;

    /// Objects per kind.
    async fn counts(&self) -> Result<BTreeMap<String, u64>, StoreError>;
}

const CURRENT_VERSION: &str = "SELECT version FROM quiver_version WHERE id = 1";
const SET_VERSION: &str = "UPDATE quiver_version SET version = $1 WHERE id = 1";
const GET: &str = "SELECT kind, namespace, name, resource_version, body, created_at, updated_at \
     FROM resources WHERE kind = $1 AND namespace = $2 AND name = $3";
const LIST_ALL: &str = "SELECT kind, namespace, name, resource_version, body, created_at, updated_at \
     FROM resources WHERE kind = $1 ORDER BY namespace, name";
const LIST_NAMESPACE: &str = "SELECT kind, namespace, name, resource_version, body, created_at, updated_at \
     FROM resources WHERE kind = $1 AND namespace = $2 ORDER BY namespace, name";
const UPSERT: &str = "INSERT INTO resources \
     (kind, namespace, name, resource_version, body, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (kind, namespace, name) DO UPDATE SET \
     resource_version = excluded.resource_version, body = excluded.body, \
     updated_at = excluded.updated_at";
const DELETE: &str = "DELETE FROM resources WHERE kind = $1 AND namespace = $2 AND name = $3";
const INSERT_CHANGE: &str = "INSERT INTO changes \
     (resource_version, op, kind, namespace, name, body, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const CHANGES_SINCE: &str = "SELECT resource_version, op, kind, namespace, name, body, created_at, updated_at \
     FROM changes WHERE resource_version > $1 ORDER BY resource_version LIMIT $2";
const OLDEST_CHANGE: &str = "SELECT MIN(resource_version) FROM changes";
const PRUNE_CHANGES: &str = "DELETE FROM changes WHERE resource_version <= $1";
const COUNTS: &str = "SELECT kind, COUNT(*) FROM resources GROUP BY kind";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct ObjectRow {
    kind: String,
    namespace: String,
    name: String,
    resource_version: i64,
    body: Vec<u8>,
    created_at: i64,
    updated_at: i64,
}

impl ObjectRow {
    fn into_object(self) -> Result<StoredObject, StoreError> {
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
struct ChangeRow {
    resource_version: i64,
    op: String,
    kind: String,
    namespace: String,
    name: String,
    body: Vec<u8>,
    created_at: i64,
    updated_at: i64,
}

impl ChangeRow {
    fn into_change(self) -> Result<Change, StoreError> {
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

/// A row of the change table, as a writer records it.
struct NewChange<'a> {
    rv: i64,
    op: &'static str,
    kind: Kind,
    namespace: &'a str,
    name: &'a str,
    body: &'a [u8],
    created_at: i64,
    updated_at: i64,
}

#[async_trait::async_trait]
impl<DB: Engine> Resources for SqlStore<DB>
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
    fn change_signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }

    async fn put(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        body: Vec<u8>,
        expect: Option<u64>,
    ) -> Result<(StoredObject, PutOutcome), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let current: i64 = sqlx::query_scalar(DB::LOCK_VERSION)
            .fetch_one(&mut *tx)
            .await?;
        let existing: Option<ObjectRow> = sqlx::query_as(GET)
            .bind(kind.as_str())
            .bind(namespace)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let decided = put_outcome(
            kind,
            namespace,
            name,
            existing
                .as_ref()
                .map(|e| (version(e.resource_version), e.body.as_slice())),
            &body,
            expect,
        )?;
        let existing = match existing {
            Some(e) if decided == PutOutcome::Unchanged => {
                tx.rollback().await?;
                return Ok((e.into_object()?, PutOutcome::Unchanged));
            }
            other => other,
        };
        let rv = current + 1;
        let now = super::now_ms();
        let created_at = existing.as_ref().map_or(now, |e| e.created_at);
        sqlx::query(SET_VERSION).bind(rv).execute(&mut *tx).await?;
        sqlx::query(UPSERT)
            .bind(kind.as_str())
            .bind(namespace)
            .bind(name)
            .bind(rv)
            .bind(body.as_slice())
            .bind(created_at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let (op, outcome) = match existing {
            Some(_) => ("UPDATE", PutOutcome::Updated),
            None => ("CREATE", PutOutcome::Created),
        };
        let change = NewChange {
            rv,
            op,
            kind,
            namespace,
            name,
            body: &body,
            created_at,
            updated_at: now,
        };
        record_change(&mut tx, change).await?;
        tx.commit().await?;
        self.signal.notify_one();
        let object = StoredObject {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            resource_version: version(rv),
            body,
            created_at,
            updated_at: now,
        };
        Ok((object, outcome))
    }

    async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
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
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<StoredObject>, u64), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(snapshot) = DB::SNAPSHOT {
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
        kind: Kind,
        namespace: &str,
        name: &str,
        expect: Option<u64>,
    ) -> Result<Change, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let current: i64 = sqlx::query_scalar(DB::LOCK_VERSION)
            .fetch_one(&mut *tx)
            .await?;
        let existing: Option<ObjectRow> = sqlx::query_as(GET)
            .bind(kind.as_str())
            .bind(namespace)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let expect = expect.filter(|v| *v != 0);
        let Some(existing) = existing else {
            return Err(match expect {
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
        if let Some(expected) = expect
            && version(existing.resource_version) != expected
        {
            return Err(StoreError::Conflict {
                kind,
                namespace: namespace.into(),
                name: name.into(),
                expected,
                current: Some(version(existing.resource_version)),
            });
        }
        self.delete_in(tx, current, existing).await
    }

    async fn changes_since(&self, after: u64, limit: i64) -> Result<Vec<Change>, StoreError> {
        let rows: Vec<ChangeRow> = sqlx::query_as(CHANGES_SINCE)
            .bind(sql_version(after))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(ChangeRow::into_change).collect()
    }

    async fn oldest_change(&self) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = sqlx::query_scalar(OLDEST_CHANGE)
            .fetch_one(&self.pool)
            .await?;
        Ok(v.map(version))
    }

    async fn current_version(&self) -> Result<u64, StoreError> {
        let v: i64 = sqlx::query_scalar(CURRENT_VERSION)
            .fetch_one(&self.pool)
            .await?;
        Ok(version(v))
    }

    async fn counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(COUNTS).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(k, n)| (k, version(n))).collect())
    }
}

impl<DB: Engine> SqlStore<DB>
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
    /// The stored object `kind/namespace/name`, read inside `tx`.
    pub(super) async fn get_in(
        tx: &mut Transaction<'static, DB>,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ObjectRow>, StoreError> {
        Ok(sqlx::query_as(GET)
            .bind(kind.as_str())
            .bind(namespace)
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?)
    }

    /// Delete `existing` inside `tx` (whose version lock read `current`): bump the version,
    /// remove the row, record the change, commit and wake watchers. Shared by an explicit
    /// delete and a lapsed lease.
    pub(super) async fn delete_in(
        &self,
        mut tx: Transaction<'static, DB>,
        current: i64,
        existing: ObjectRow,
    ) -> Result<Change, StoreError> {
        let rv = current + 1;
        let now = super::now_ms();
        sqlx::query(SET_VERSION).bind(rv).execute(&mut *tx).await?;
        sqlx::query(DELETE)
            .bind(existing.kind.as_str())
            .bind(existing.namespace.as_str())
            .bind(existing.name.as_str())
            .execute(&mut *tx)
            .await?;
        let mut object = existing.into_object()?;
        let change = NewChange {
            rv,
            op: "DELETE",
            kind: object.kind,
            namespace: &object.namespace,
            name: &object.name,
            body: &object.body,
            created_at: object.created_at,
            updated_at: now,
        };
        record_change(&mut tx, change).await?;
        tx.commit().await?;
        self.signal.notify_one();
        object.updated_at = now;
        Ok(Change {
            resource_version: version(rv),
            op: ChangeOp::Delete,
            object,
        })
    }
}

/// Append to the change feed, wake other replicas (Postgres) and prune old changes, all
/// inside the writing transaction.
async fn record_change<DB: Engine>(
    tx: &mut Transaction<'static, DB>,
    change: NewChange<'_>,
) -> Result<(), StoreError>
where
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + Type<DB>,
    for<'a> &'a [u8]: sqlx::Encode<'a, DB> + Type<DB>,
    i64: Value<DB>,
    String: Value<DB>,
{
    sqlx::query(INSERT_CHANGE)
        .bind(change.rv)
        .bind(change.op)
        .bind(change.kind.as_str())
        .bind(change.namespace)
        .bind(change.name)
        .bind(change.body)
        .bind(change.created_at)
        .bind(change.updated_at)
        .execute(&mut **tx)
        .await?;
    if let Some(notify) = DB::NOTIFY {
        sqlx::query(notify)
            .bind(change.rv.to_string())
            .execute(&mut **tx)
            .await?;
    }
    if change.rv % 256 == 0 {
        sqlx::query(PRUNE_CHANGES)
            .bind(change.rv - CHANGE_RETENTION)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
