//! Bearer-token authentication for the admin API: token minting, hashing, expiry, revocation,
//! role checks, and the in-memory check that keeps a flood of bogus tokens off the store.
//!
//! Tokens are 256 random bits, shown once and stored only as their SHA-256 (a fast hash is
//! enough for secrets this long: there is nothing to brute-force). Roles: `admin` may call
//! everything; `viewer` may only read. A token is refused once its stored expiry has passed,
//! and at once after it is revoked on this replica ([`Tokens::revoked`]); a revocation on
//! another replica sharing the store is seen here within [`KNOWN_FOR`].
//!
//! [`Tokens`] answers every check it can from memory, so that bad tokens cannot make the API
//! hammer the store (and starve the KeepAlives that keep workloads registered): a token shorter
//! than [`MIN_TOKEN_LEN`] is refused without a lookup; a token the store did not know is
//! remembered as unknown for [`UNKNOWN_FOR`]; and lookups for tokens not in memory are
//! limited to [`LOOKUPS_PER_SECOND`] (a burst of as many) and to [`LOOKUPS_IN_FLIGHT`] at
//! once (so that, however slow the store gets, token lookups never hold more than that many
//! of its connections), past which the call is refused with RESOURCE_EXHAUSTED. Both
//! memories are bounded ([`MAX_REMEMBERED`] entries each).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::metrics::Metrics;
use crate::store::{ApiTokenGrant, ApiTokenRecord, NEVER, Store, StoreError, now_ms};

/// The shortest secret accepted as an API token: generated ones are 47 characters, and an
/// operator's `--admin-token` must be at least this long (checked at start).
pub const MIN_TOKEN_LEN: usize = 32;

/// How long a token read from the store is answered from memory (its expiry is still checked
/// on every call): the longest a revocation made on another replica takes to reach this one.
pub const KNOWN_FOR: Duration = Duration::from_secs(5);

/// How long a token the store did not know is refused from memory. A token created on another
/// replica meanwhile is refused here for at most this long after a failed attempt with it.
pub const UNKNOWN_FOR: Duration = Duration::from_secs(10);

/// Store lookups per second for tokens not in memory (the bucket also holds this many).
pub const LOOKUPS_PER_SECOND: f64 = 50.0;

/// Store lookups for tokens not in memory running at once, at most: the store's pool has 16
/// connections, and the KeepAlives that keep workloads registered need the rest.
pub const LOOKUPS_IN_FLIGHT: usize = 2;

/// Entries in each of the known and unknown memories, at most.
pub const MAX_REMEMBERED: usize = 10_000;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A new random secret with a recognisable prefix (`qvr_` for API tokens, `qvj_` for join
/// tokens), so that a leaked one is easy to grep for.
pub fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Hex SHA-256 of a secret: what the store keeps.
pub fn hash_secret(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Store a new token with `role`, expiring at `expires_at` (ms, [`NEVER`] for never);
/// returns (id, secret). The secret is not kept.
pub async fn create_token(
    store: &dyn Store,
    role: Role,
    description: &str,
    expires_at: i64,
) -> Result<(String, String), StoreError> {
    let secret = new_secret("qvr_");
    let hash = hash_secret(&secret);
    let id = token_id(&hash);
    store
        .insert_api_token(&ApiTokenRecord {
            id: id.clone(),
            token_hash: hash,
            role: role.as_str().into(),
            description: description.into(),
            created_at: now_ms(),
            expires_at,
        })
        .await?;
    Ok((id, secret))
}

/// A token's public id: the first 12 hex digits of its hash (not enough to find the secret).
pub fn token_id(hash: &str) -> String {
    hash[..12].to_string()
}

/// Make sure `secret` is an admin token (for `QUIVER_ADMIN_TOKEN`); idempotent. A revoked
/// operator token comes back at the next start while the flag still names it.
pub async fn ensure_admin_token(store: &dyn Store, secret: &str) -> Result<(), StoreError> {
    let hash = hash_secret(secret);
    if store.api_token(&hash).await?.is_some() {
        return Ok(());
    }
    store
        .insert_api_token(&ApiTokenRecord {
            id: token_id(&hash),
            token_hash: hash,
            role: Role::Admin.as_str().into(),
            description: "QUIVER_ADMIN_TOKEN".into(),
            created_at: now_ms(),
            expires_at: NEVER,
        })
        .await
}

/// Checks bearer tokens for the admin API; shared by every handler of one replica.
pub struct Tokens {
    store: Arc<dyn Store>,
    metrics: Metrics,
    memory: Mutex<Memory>,
    /// Permits for store lookups in flight ([`LOOKUPS_IN_FLIGHT`]).
    lookups: Arc<tokio::sync::Semaphore>,
}

struct Memory {
    /// Token hash -> what the store said, and when.
    known: HashMap<String, (ApiTokenGrant, Instant)>,
    /// Token hash -> when the store said it did not know it.
    unknown: HashMap<String, Instant>,
    /// Lookups that may be made now (refilled at [`LOOKUPS_PER_SECOND`]).
    lookups: f64,
    refilled: Instant,
}

/// What memory says about a token.
enum Remembered {
    Known(ApiTokenGrant),
    Unknown,
}

impl Memory {
    /// What memory says about `hash`, if anything.
    fn recall(&mut self, hash: &str, now: Instant) -> Option<Remembered> {
        if let Some((grant, at)) = self.known.get(hash) {
            if now.duration_since(*at) < KNOWN_FOR {
                return Some(Remembered::Known(grant.clone()));
            }
            self.known.remove(hash);
        }
        if let Some(at) = self.unknown.get(hash) {
            if now.duration_since(*at) < UNKNOWN_FOR {
                return Some(Remembered::Unknown);
            }
            self.unknown.remove(hash);
        }
        None
    }

    /// Take one lookup from the bucket (refilled at [`LOOKUPS_PER_SECOND`]); false when empty.
    fn charge(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.lookups = (self.lookups + elapsed * LOOKUPS_PER_SECOND).min(LOOKUPS_PER_SECOND);
        if self.lookups >= 1.0 {
            self.lookups -= 1.0;
            true
        } else {
            false
        }
    }

    fn learn(&mut self, hash: String, grant: Option<ApiTokenGrant>, now: Instant) {
        match grant {
            Some(grant) => {
                bound(&mut self.known, now, |(_, at)| *at, KNOWN_FOR);
                self.unknown.remove(&hash);
                self.known.insert(hash, (grant, now));
            }
            None => {
                bound(&mut self.unknown, now, |at| *at, UNKNOWN_FOR);
                self.unknown.insert(hash, now);
            }
        }
    }
}

/// Make room for one more entry: drop stale ones, and when all are fresh (a flood of distinct
/// tokens) drop them all; the lookup limit still holds for whatever comes next.
fn bound<V>(map: &mut HashMap<String, V>, now: Instant, at: impl Fn(&V) -> Instant, ttl: Duration) {
    if map.len() < MAX_REMEMBERED {
        return;
    }
    map.retain(|_, v| now.duration_since(at(v)) < ttl);
    if map.len() >= MAX_REMEMBERED {
        map.clear();
    }
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>, metrics: Metrics) -> Self {
        Self {
            store,
            metrics,
            memory: Mutex::new(Memory {
                known: HashMap::new(),
                unknown: HashMap::new(),
                lookups: LOOKUPS_PER_SECOND,
                refilled: Instant::now(),
            }),
            lookups: Arc::new(tokio::sync::Semaphore::new(LOOKUPS_IN_FLIGHT)),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        // Nothing in Memory can be left half-updated by a panic that matters: a stale entry
        // only costs a lookup.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forget a revoked token's hash on this replica: refused from the next call on.
    pub fn revoked(&self, hash: &str) {
        let mut memory = self.memory();
        memory.known.remove(hash);
        memory.learn(hash.to_string(), None, Instant::now());
    }

    /// The caller's role, from `authorization: Bearer <token>`, if it is at least `needed`.
    pub async fn authorize(
        &self,
        metadata: &MetadataMap,
        needed: Role,
        method: &str,
    ) -> Result<Role, Status> {
        let header = metadata.get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be `Bearer <token>`")
            })?;
        let grant = self.grant(token).await?;
        if grant.expires_at <= now_ms() {
            return Err(Status::unauthenticated(format!(
                "token expired at {}",
                crate::stored::rfc3339(grant.expires_at)
            )));
        }
        let role = Role::parse(&grant.role)
            .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))?;
        if role < needed {
            return Err(Status::permission_denied(format!(
                "role {role} may not call {method} (needs {needed})"
            )));
        }
        Ok(role)
    }

    /// The stored grant of `token`, from memory when possible.
    async fn grant(&self, token: &str) -> Result<ApiTokenGrant, Status> {
        let unknown = || Status::unauthenticated("unknown or revoked token");
        if token.len() < MIN_TOKEN_LEN {
            self.metrics.token_check("malformed");
            return Err(unknown());
        }
        let hash = hash_secret(token);
        let remembered = self.memory().recall(&hash, Instant::now());
        match remembered {
            Some(Remembered::Known(grant)) => {
                self.metrics.token_check("cached");
                return Ok(grant);
            }
            Some(Remembered::Unknown) => {
                self.metrics.token_check("unknown_cached");
                return Err(unknown());
            }
            None => {}
        }
        // A lookup needs a permit (few in flight, however slow the store is) and budget
        // (few a second); the permit first, so a refused call costs no budget.
        let permit = self.lookups.clone().try_acquire_owned();
        let charged = permit.is_ok() && self.memory().charge(Instant::now());
        if !charged {
            self.metrics.token_check("throttled");
            return Err(Status::resource_exhausted(
                "too many calls with tokens this server has not seen; try again shortly",
            ));
        }
        self.metrics.token_check("looked_up");
        let grant = self.store.api_token(&hash).await.map_err(|e| {
            tracing::error!(error = %e, "token lookup failed");
            Status::unavailable("token lookup failed; try again")
        })?;
        self.memory().learn(hash, grant.clone(), Instant::now());
        grant.ok_or_else(unknown)
    }
}
