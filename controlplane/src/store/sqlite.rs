//! The SQLite engine: one database file, WAL, writers serialised by an in-process lock (SQLite
//! allows one writer; a lock in the process waits instead of failing with SQLITE_BUSY). The
//! change signal is in-process only: SQLite is for a single control-plane process.
//!
//! Spans go through a connection of their own (`span_pool`): a larger page cache,
//! fewer checkpoints, and `synchronous=NORMAL`, so a span commit does not wait for an
//! fsync. In WAL mode that cannot corrupt the database; a power cut (not a crash
//! of this process) can lose the span batches committed since the last fsync, which the next
//! configuration write (`synchronous=FULL` on the other connections) or checkpoint makes.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use tokio::sync::{Mutex, Notify};

use super::StoreError;
use super::engine::{Engine, SqlStore};

/// The store on SQLite.
pub type SqliteStore = SqlStore<Sqlite>;

/// Page cache of the span connection, KiB (SQLite's default is 2 MiB).
const SPAN_CACHE_KIB: u32 = 64 * 1024;
/// WAL pages after which a span commit checkpoints (SQLite's default is 1000).
const SPAN_CHECKPOINT_PAGES: u32 = 8192;

impl Engine for Sqlite {
    const ENGINE: &'static str = "sqlite";
    /// The in-process write lock orders writers (see [`SqlStore::write_guard`]).
    const LOCK_VERSION: &'static str = "SELECT version FROM quiver_version WHERE id = 1";
    /// One process: the change signal is in-process only.
    const NOTIFY: Option<&'static str> = None;
    /// A read transaction in WAL mode already sees one snapshot.
    const SNAPSHOT: Option<&'static str> = None;
    /// The span connection is `synchronous=NORMAL` already.
    const SPAN_COMMIT: Option<&'static str> = None;
    const HAS_LEGACY: &'static str =
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'spans_legacy'";
    /// Rewrite the file without free pages, then empty the WAL (which held the old pages).
    const SCRUB_DELETED: &'static [&'static str] = &["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"];

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl SqlStore<Sqlite> {
    /// Open (creating) `DIR/quiver.db`. A directory this creates gets mode 0700, and the
    /// database file is created with 0600: it holds the CA key and token hashes.
    pub async fn open_dir(dir: &Path) -> Result<Self, StoreError> {
        let data_dir_err = |source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        };
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(data_dir_err)?;
        let file = dir.join("quiver.db");
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            // Only a directory we created: an operator's existing directory keeps its mode.
            if created {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(data_dir_err)?;
            }
            // Created here, owner-only from the start, when it does not exist yet. An existing
            // file is not opened: closing a descriptor of it would drop every POSIX lock this
            // process's SQLite connections hold on it (another store open on the same file).
            if !file.exists() {
                match std::fs::OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .mode(0o600)
                    .open(&file)
                {
                    Ok(_) => {}
                    // Another process made it in between: theirs is as good.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(data_dir_err(e)),
                }
            }
        }
        let options = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true);
        Self::open(options).await
    }

    /// Open from a `sqlite:` URL.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
        Self::open(options).await
    }

    async fn open(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Statement journals (a multi-row INSERT inside a transaction needs one) and
            // temporary b-trees in memory rather than in temp files.
            .pragma("temp_store", "memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        let spans = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                options
                    .synchronous(SqliteSynchronous::Normal)
                    // Reads of blocks and their summaries (KiB, negative).
                    .pragma("cache_size", format!("-{SPAN_CACHE_KIB}"))
                    // Checkpoint after ~32 MiB of WAL rather than 4 MiB: fewer, larger
                    // checkpoints while blocks stream in.
                    .pragma("wal_autocheckpoint", SPAN_CHECKPOINT_PAGES.to_string()),
            )
            .await?;
        Ok(Self {
            pool,
            span_pool: spans,
            signal: Arc::new(Notify::new()),
            write_lock: Some(Mutex::new(())),
            listener: None,
        })
    }
}
