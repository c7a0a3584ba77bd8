//! The control plane's store: resources with optimistic concurrency and the ordered change
//! feed ([`resources`], [`feed`]), API and join tokens (hashed) and the mesh CA
//! ([`credentials`]), workload leases ([`leases`]), what each proxy runs ([`proxies`]), revoked identities
//! ([`revocations`]), and
//! span blocks and edge statistics ([`traces`]), Services' virtual IPs ([`addresses`]).
//!
//! Two engines, one implementation: Postgres (production; several replicas may share one
//! database, and a write on any of them reaches watchers on all through LISTEN/NOTIFY) and
//! SQLite (embedded default, one process). [`SqlStore`] is generic over the sqlx driver
//! (`engine.rs` says why generic rather than `sqlx::Any` or an enum of pools); each
//! concern is a trait implemented for it once, in its own file, and [`Store`] is all of
//! them, the handle the rest of the control plane holds (`Arc<dyn Store>`).
//!
//! Bodies are stored as bytes: protobuf resources, encoded span blocks. This module knows
//! nothing about what is inside them: validation, encoding and decoding happen above it. It
//! is a leaf of the crate: it imports `quiver_api` and nothing of the control plane.

use std::path::Path;
use std::sync::Arc;

use quiver_api::resource::Kind;

mod addresses;
mod credentials;
mod engine;
pub mod feed;
mod leases;
mod postgres;
mod proxies;
mod resources;
mod revocations;
mod sqlite;
mod traces;

pub use addresses::Addresses;
pub use credentials::{
    ApiTokenGrant, ApiTokenRecord, CaRole, Credentials, JoinTokenRecord, NEVER, RedeemError,
    SealedCa, SvidRecord,
};
pub use engine::{Engine, SqlStore};
pub use feed::Feed;
pub use leases::{Lease, Leases};
pub use postgres::PgStore;
pub use proxies::{ProxyStatusRecord, ProxyStatuses};
pub use resources::{
    CHANGE_RETENTION, Change, ChangeOp, PutOutcome, Resources, StoredObject, put_outcome,
};
pub use revocations::{RevocationRecord, Revocations};
pub use sqlite::SqliteStore;
pub use traces::{
    BlockBody, BlockSummary, EdgeRecord, EncodedBatch, LegacyKey, NewBlock, SpanRecord, Traces,
};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The caller's resourceVersion is not the stored one.
    #[error(
        "{kind} {namespace}/{name} changed since you read it (you sent resourceVersion {expected}, it is now {})",
        current.map(|v| v.to_string()).unwrap_or_else(|| "deleted".into())
    )]
    Conflict {
        kind: Kind,
        namespace: String,
        name: String,
        expected: u64,
        current: Option<u64>,
    },
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: Kind,
        namespace: String,
        name: String,
    },
    #[error("store has a row of unknown kind {0:?}")]
    UnknownKind(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// The store, for every engine: every concern, and which engine it runs on.
pub trait Store:
    Resources
    + Credentials
    + Leases
    + Revocations
    + Traces
    + ProxyStatuses
    + Addresses
    + Send
    + Sync
    + 'static
{
    /// "postgres" or "sqlite".
    fn engine(&self) -> &'static str;
}

impl<DB: Engine> Store for SqlStore<DB>
where
    Self: Resources + Credentials + Leases + Revocations + Traces + ProxyStatuses + Addresses,
{
    fn engine(&self) -> &'static str {
        DB::ENGINE
    }
}

/// Open the store: Postgres when `database_url` is given, else SQLite in `data_dir`.
/// Migrations are applied (idempotently) before this returns.
pub async fn open(
    database_url: Option<&str>,
    data_dir: &Path,
) -> Result<Arc<dyn Store>, StoreError> {
    match database_url {
        Some(url) if url.starts_with("sqlite:") => Ok(Arc::new(SqliteStore::open_url(url).await?)),
        Some(url) => Ok(Arc::new(PgStore::connect(url).await?)),
        None => Ok(Arc::new(SqliteStore::open_dir(data_dir).await?)),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
