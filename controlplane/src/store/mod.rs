//! The control plane's store: resources with optimistic concurrency, an ordered change feed,
//! API and join tokens (hashed), the mesh CA, and the trace store ([`telemetry`]).
//!
//! Two engines behind one trait: Postgres (production; several replicas may share one
//! database, and a write on any of them reaches watchers on all through LISTEN/NOTIFY) and
//! SQLite (embedded default, one process). Bodies are stored as protobuf bytes; this module
//! knows nothing about what is inside them: validation and decoding happen above it.
//!
//! Every write takes the next value of one global version counter inside its transaction,
//! so versions order all writes, and the `changes` table read in version order is the feed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use quiver_api::resource::Kind;
use tokio::sync::Notify;

pub mod blocks;
pub mod feed;
mod postgres;
mod sql;
mod sqlite;
pub mod telemetry;

pub use feed::Feed;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use telemetry::{EdgeRecord, ReportedBatch, SpanRecord, TelemetryStore, TraceQuery};

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

/// An API token's stored form: only the SHA-256 of the secret is kept.
#[derive(Debug, Clone)]
pub struct ApiTokenRecord {
    pub id: String,
    pub token_hash: String,
    pub role: String,
    pub description: String,
    pub created_at: i64,
}

/// A join token's stored form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub id: String,
    pub token_hash: String,
    pub namespace: String,
    pub service_account: String,
    pub expires_at: i64,
    pub max_uses: i32,
    pub uses: i32,
    pub created_at: i64,
}

/// Why a join token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error("join token is not known")]
    Unknown,
    #[error("join token expired")]
    Expired,
    #[error("join token has been used {0} times, its limit")]
    UsedUp(i32),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A registered workload's lease: the workload is live until `expires_at` (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub namespace: String,
    pub name: String,
    /// The identity that registered it; only it may renew the lease.
    pub spiffe_id: String,
    pub expires_at: i64,
}

/// The store, for every engine.
#[async_trait::async_trait]
pub trait Store: TelemetryStore + Send + Sync + 'static {
    /// "postgres" or "sqlite".
    fn engine(&self) -> &'static str;

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

    /// Delete an object, with the same precondition as [`Store::put`]. Returns the change.
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

    async fn insert_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError>;
    /// The role of the token with this hash.
    async fn api_token_role(&self, token_hash: &str) -> Result<Option<String>, StoreError>;
    async fn count_api_tokens(&self) -> Result<u64, StoreError>;

    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError>;
    /// Use a join token once, atomically: refused when unknown, expired or used up.
    async fn redeem_join_token(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<JoinTokenRecord, RedeemError>;

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

    /// The mesh CA (cert PEM, key PEM), if one was stored.
    async fn certificate_authority(&self) -> Result<Option<(String, String)>, StoreError>;
    /// Store a CA unless one exists; returns whichever is stored (so replicas that start
    /// together agree on one CA).
    async fn init_certificate_authority(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(String, String), StoreError>;
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

/// How many changes the feed keeps; older ones are pruned on write. A watcher resuming from
/// an older version is told to re-list.
pub const CHANGE_RETENTION: i64 = 10_000;
