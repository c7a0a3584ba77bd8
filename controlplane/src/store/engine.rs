//! The one store type, [`SqlStore`], generic over the two sqlx drivers, and what differs
//! between them ([`Engine`]): how a writer locks the version counter, Postgres's NOTIFY, a
//! read snapshot, the span commit mode and where the catalogue lists tables. Everything
//! else (`$N` parameters, `ON CONFLICT`, `RETURNING`) both engines accept as written.
//!
//! Why generic rather than `sqlx::Any` or an enum of pools: `Any` cannot carry the SQLite
//! connection options the store sets (WAL, pragmas, the span connection's own settings) and
//! re-encodes every value; an enum of pools would spell every query twice. The price is the
//! `where` clause each impl repeats: the engines' sqlx capabilities the code uses, spelled
//! out because Rust does not carry such bounds from a trait to its users.

use std::sync::Arc;

use sqlx::database::HasStatementCache;
use sqlx::{Database, Decode, Encode, Pool, Type};
use tokio::sync::{Mutex, MutexGuard, Notify};

/// What differs between the engines, as plain data matched in ordinary code.
pub trait Engine: Database + HasStatementCache {
    /// "postgres" or "sqlite".
    const ENGINE: &'static str;
    /// Reads the version counter in a writing transaction, locking it where the engine can:
    /// the lock orders writers, so versions are handed out in commit order.
    const LOCK_VERSION: &'static str;
    /// Run in a writing transaction with the new version as `$1`, to wake other replicas.
    const NOTIFY: Option<&'static str>;
    /// Run first in a read transaction that must see one snapshot.
    const SNAPSHOT: Option<&'static str>;
    /// Run first in a span batch's transaction.
    const SPAN_COMMIT: Option<&'static str>;
    /// Counts tables named `spans_legacy` (spans from before migration 0005).
    const HAS_LEGACY: &'static str;
    /// Run after the plaintext CA row is deleted, and after a root key is taken offline
    /// (`quiver-control ca export-root --remove-key`), so the key's bytes do not linger in
    /// free pages of the database file.
    const SCRUB_DELETED: &'static [&'static str];

    /// Rows a statement changed (each driver has its own result type).
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// A Rust type the store writes and reads on engine `DB` (with [`Engine`]'s `where` clause).
pub trait Value<DB: Database>:
    for<'a> Encode<'a, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send
{
}

impl<DB: Database, T> Value<DB> for T where
    T: for<'a> Encode<'a, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send
{
}

/// The store on one engine: [`super::PgStore`] or [`super::SqliteStore`]. The concerns
/// ([`super::Resources`], [`super::Credentials`], [`super::Leases`], [`super::Traces`]) are
/// implemented for it in their own files, once for both engines.
pub struct SqlStore<DB: Database> {
    pub(super) pool: Pool<DB>,
    /// The pool span writes and retention deletes use: SQLite gives spans a connection of
    /// their own (see `sqlite.rs`); on Postgres it is `pool`.
    pub(super) span_pool: Pool<DB>,
    /// Woken after every committed write (and, on Postgres, by other replicas' NOTIFYs).
    pub(super) signal: Arc<Notify>,
    /// SQLite allows one writer: an in-process lock waits instead of failing with
    /// SQLITE_BUSY. Postgres has none (the version row lock orders writers).
    pub(super) write_lock: Option<Mutex<()>>,
    /// Postgres's LISTEN task, stopped with the store.
    pub(super) listener: Option<tokio::task::JoinHandle<()>>,
}

impl<DB: Database> SqlStore<DB> {
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Close both pools and wait until every connection is closed (dropping a store closes
    /// them in the background, a little later). With SQLite, what must not run beside open
    /// connections (`quiver-control ca export-root --remove-key`'s scrub) runs after this.
    pub async fn close(&self) {
        self.pool.close().await;
        self.span_pool.close().await;
    }

    /// Held by every writer on SQLite (see [`SqlStore::write_lock`]).
    pub(super) async fn write_guard(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }
}

impl<DB: Database> Drop for SqlStore<DB> {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
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
