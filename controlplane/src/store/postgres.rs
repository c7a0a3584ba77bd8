//! The Postgres engine: a `PgPool`, writers serialised by a row lock on the version counter,
//! and a LISTEN task that wakes this replica's feed when any replica commits a write.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions, PgQueryResult};
use sqlx::{PgPool, Postgres};
use tokio::sync::Notify;

use super::StoreError;
use super::engine::{Engine, SqlStore};

/// The store on Postgres.
pub type PgStore = SqlStore<Postgres>;

/// The NOTIFY channel every replica listens on; the payload is the new version.
pub const CHANNEL: &str = "quiver_changes";

impl Engine for Postgres {
    const ENGINE: &'static str = "postgres";
    /// The row lock orders writers: versions are handed out in commit order.
    const LOCK_VERSION: &'static str = "SELECT version FROM quiver_version WHERE id = 1 FOR UPDATE";
    /// Delivered to every listener when the transaction commits (never if it rolls back).
    const NOTIFY: Option<&'static str> = Some("SELECT pg_notify('quiver_changes', $1)");
    const SNAPSHOT: Option<&'static str> = Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ");
    /// A span batch's commit does not wait for the WAL flush: a crash of the database server
    /// can lose the last moments of spans (never configuration, never consistency).
    const SPAN_COMMIT: Option<&'static str> = Some("SET LOCAL synchronous_commit = off");
    const HAS_LEGACY: &'static str = "SELECT count(*) FROM pg_catalog.pg_tables \
         WHERE schemaname = current_schema() AND tablename = 'spans_legacy'";
    /// A new file for the table; the server's WAL and older backups are beyond reach
    /// (docs/control-plane.md says so).
    const SCRUB_DELETED: &'static [&'static str] =
        &["VACUUM FULL certificate_authority", "VACUUM FULL ca_keys"];

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl SqlStore<Postgres> {
    /// Connect, apply migrations and start listening for changes.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Self::from_pool(pool).await
    }

    /// Use an existing pool (tests), applying migrations first.
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        let signal = Arc::new(Notify::new());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        let listener = tokio::spawn(listen(listener, signal.clone()));
        Ok(Self {
            span_pool: pool.clone(),
            pool,
            signal,
            // Postgres serialises writers itself (the version row lock).
            write_lock: None,
            listener: Some(listener),
        })
    }
}

/// Forward notifications to the feed. The payload is not trusted: the feed re-reads the
/// change table, so a notification lost while the listener reconnects only delays delivery
/// until the next one or the feed's periodic poll.
async fn listen(mut listener: PgListener, signal: Arc<Notify>) {
    loop {
        match listener.recv().await {
            Ok(_) => signal.notify_one(),
            Err(e) => {
                tracing::warn!(error = %e, "change listener lost its connection; reconnecting");
                signal.notify_one();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
