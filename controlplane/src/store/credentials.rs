//! Credentials: API tokens and join tokens (only the SHA-256 of a secret is stored; listing
//! never returns it), their expiry and revocation (a revoked token's row is deleted), and the
//! mesh CA: its root and intermediate with their keys sealed (`ca_keys`; the sealing is
//! `crate::ca`'s, the store keeps opaque text), and the plaintext single CA of stores from
//! before the intermediate (`certificate_authority`), read once to migrate it and deleted.

use sqlx::{ColumnIndex, Executor, IntoArguments, Type};

use super::StoreError;
use super::engine::{Engine, SqlStore, Value, version};

/// `expires_at` of a token that does not expire.
pub const NEVER: i64 = i64::MAX;

/// An API token's stored form: only the SHA-256 of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiTokenRecord {
    pub id: String,
    pub token_hash: String,
    pub role: String,
    pub description: String,
    pub created_at: i64,
    /// Milliseconds since the epoch; [`NEVER`] when it does not expire.
    pub expires_at: i64,
}

/// What a token check needs from the store: the role and until when.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiTokenGrant {
    pub role: String,
    pub expires_at: i64,
}

/// A join token's stored form.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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

/// Which key of the mesh CA a `ca_keys` row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaRole {
    Root,
    Intermediate,
}

impl CaRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Intermediate => "intermediate",
        }
    }
}

/// A CA certificate and its sealed private key, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SealedCa {
    pub cert_pem: String,
    /// Empty when the key was taken offline ([`Credentials::remove_ca_key`]).
    pub key_sealed: String,
}

impl SealedCa {
    /// Whether the private key was taken out of the store (`quiver-control ca export-root
    /// --remove-key`): the certificate stays, as the trust anchor.
    pub fn key_offline(&self) -> bool {
        self.key_sealed.is_empty()
    }
}

/// An SVID the control plane issued, as `svids` keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidRecord {
    /// SHA-256 of the leaf's DER, hex.
    pub fingerprint: String,
    pub spiffe_id: String,
    /// SHA-256 of the DER of the root it chains to, hex.
    pub root: String,
    /// Unix milliseconds.
    pub not_after: i64,
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

/// Tokens and the CA.
#[async_trait::async_trait]
pub trait Credentials: Send + Sync {
    async fn insert_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError>;
    /// The role and expiry of the token with this hash (expired ones too: the caller
    /// compares with its clock).
    async fn api_token(&self, token_hash: &str) -> Result<Option<ApiTokenGrant>, StoreError>;
    async fn count_api_tokens(&self) -> Result<u64, StoreError>;
    /// Every API token, oldest first.
    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError>;
    /// Delete the API token with this id; returns its hash when there was one.
    async fn revoke_api_token(&self, id: &str) -> Result<Option<String>, StoreError>;

    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError>;
    /// Use a join token once, atomically: refused when unknown, expired or used up.
    async fn redeem_join_token(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<JoinTokenRecord, RedeemError>;
    /// Every join token, oldest first.
    async fn list_join_tokens(&self) -> Result<Vec<JoinTokenRecord>, StoreError>;
    /// Delete the join token with this id; whether there was one.
    async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError>;

    /// The plaintext single CA of a store from before `ca_keys` (cert PEM, key PEM), if any.
    async fn certificate_authority(&self) -> Result<Option<(String, String)>, StoreError>;
    /// Store a plaintext single CA unless one exists (what older versions did; tests use it
    /// to make such a store). Returns whichever is stored.
    async fn init_certificate_authority(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(String, String), StoreError>;
    /// Delete the plaintext single CA once it has been sealed into `ca_keys`.
    async fn delete_certificate_authority(&self) -> Result<(), StoreError>;

    /// The stored root or intermediate, if any.
    async fn ca_key(&self, role: CaRole) -> Result<Option<SealedCa>, StoreError>;
    /// Store `ca` as `role` unless one is stored; returns whichever is stored (replicas that
    /// start together agree on one).
    async fn init_ca_key(&self, role: CaRole, ca: &SealedCa) -> Result<SealedCa, StoreError>;
    /// Replace the stored `role` with `next` if it is still `current` (a replica that
    /// replaced it first wins); returns whichever is stored.
    async fn replace_ca_key(
        &self,
        role: CaRole,
        current: &SealedCa,
        next: &SealedCa,
    ) -> Result<SealedCa, StoreError>;
    /// Delete the sealed private key of `role`, keeping its certificate (an offline root: it
    /// stays the trust anchor, signs nothing here), and scrub the freed pages; whether there
    /// was a key to delete.
    async fn remove_ca_key(&self, role: CaRole) -> Result<bool, StoreError>;
    /// Root rotation in one transaction: if the stored root is still `current`, store `root`
    /// and `intermediate` in place of the root and intermediate and keep `current`'s
    /// certificate as a retiring root. False when another caller rotated first.
    async fn rotate_ca(
        &self,
        current: &SealedCa,
        root: &SealedCa,
        intermediate: &SealedCa,
    ) -> Result<bool, StoreError>;
    /// The retiring roots' certificates (PEM), oldest first.
    async fn retiring_roots(&self) -> Result<Vec<String>, StoreError>;
    /// Delete every retiring root; how many there were.
    async fn retire_roots(&self) -> Result<u64, StoreError>;
    /// Record an issued SVID; `replaces` is the fingerprint of the certificate a Renew was
    /// called with (no longer held by that proxy). Rows past their notAfter are dropped.
    async fn record_svid(
        &self,
        svid: &SvidRecord,
        replaces: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Unexpired, unrenewed SVIDs chaining to the root with this fingerprint, counted per
    /// SPIFFE id (ordered by id).
    async fn svid_holders(&self, root: &str, now_ms: i64)
    -> Result<Vec<(String, i64)>, StoreError>;
}

const INSERT_API_TOKEN: &str = "INSERT INTO api_tokens \
     (id, token_hash, role, description, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)";
const API_TOKEN: &str = "SELECT role, expires_at FROM api_tokens WHERE token_hash = $1";
const COUNT_API_TOKENS: &str = "SELECT COUNT(*) FROM api_tokens";
const LIST_API_TOKENS: &str = "SELECT id, token_hash, role, description, created_at, expires_at \
     FROM api_tokens ORDER BY created_at, id";
const REVOKE_API_TOKEN: &str = "DELETE FROM api_tokens WHERE id = $1 RETURNING token_hash";
const LIST_JOIN_TOKENS: &str = "SELECT id, token_hash, namespace, service_account, expires_at, max_uses, uses, created_at \
     FROM join_tokens ORDER BY created_at, id";
const REVOKE_JOIN_TOKEN: &str = "DELETE FROM join_tokens WHERE id = $1";
const INSERT_JOIN_TOKEN: &str = "INSERT INTO join_tokens \
     (id, token_hash, namespace, service_account, expires_at, max_uses, uses, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const REDEEM_JOIN_TOKEN: &str = "UPDATE join_tokens SET uses = uses + 1 \
     WHERE token_hash = $1 AND uses < max_uses AND expires_at > $2 \
     RETURNING id, token_hash, namespace, service_account, expires_at, max_uses, uses, created_at";
const JOIN_TOKEN: &str = "SELECT id, token_hash, namespace, service_account, expires_at, max_uses, uses, created_at \
     FROM join_tokens WHERE token_hash = $1";
const GET_CA: &str = "SELECT cert_pem, key_pem FROM certificate_authority WHERE id = 1";
const INSERT_CA: &str = "INSERT INTO certificate_authority (id, cert_pem, key_pem, created_at) \
     VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING";
const DELETE_CA: &str = "DELETE FROM certificate_authority";
const GET_CA_KEY: &str = "SELECT cert_pem, key_sealed FROM ca_keys WHERE role = $1";
const INSERT_CA_KEY: &str = "INSERT INTO ca_keys (role, cert_pem, key_sealed, created_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (role) DO NOTHING";
const REPLACE_CA_KEY: &str = "UPDATE ca_keys SET cert_pem = $1, key_sealed = $2, created_at = $3 \
     WHERE role = $4 AND cert_pem = $5";
const REMOVE_CA_KEY: &str =
    "UPDATE ca_keys SET key_sealed = '' WHERE role = $1 AND key_sealed <> ''";
const INSERT_RETIRING_ROOT: &str =
    "INSERT INTO ca_retiring_roots (cert_pem, created_at) VALUES ($1, $2)";
const RETIRING_ROOTS: &str = "SELECT cert_pem FROM ca_retiring_roots ORDER BY created_at, cert_pem";
const DELETE_RETIRING_ROOTS: &str = "DELETE FROM ca_retiring_roots";
const INSERT_SVID: &str = "INSERT INTO svids (fingerprint, spiffe_id, root, not_after) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (fingerprint) DO NOTHING";
const DELETE_SVID: &str = "DELETE FROM svids WHERE fingerprint = $1";
const DELETE_EXPIRED_SVIDS: &str = "DELETE FROM svids WHERE not_after <= $1";
const SVID_HOLDERS: &str = "SELECT spiffe_id, COUNT(*) FROM svids \
     WHERE root = $1 AND not_after > $2 GROUP BY spiffe_id ORDER BY spiffe_id";

#[async_trait::async_trait]
impl<DB: Engine> Credentials for SqlStore<DB>
where
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    i64: Value<DB>,
    i32: Value<DB>,
    String: Value<DB>,
{
    async fn insert_api_token(&self, t: &ApiTokenRecord) -> Result<(), StoreError> {
        sqlx::query(INSERT_API_TOKEN)
            .bind(t.id.as_str())
            .bind(t.token_hash.as_str())
            .bind(t.role.as_str())
            .bind(t.description.as_str())
            .bind(t.created_at)
            .bind(t.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn api_token(&self, token_hash: &str) -> Result<Option<ApiTokenGrant>, StoreError> {
        Ok(sqlx::query_as(API_TOKEN)
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        Ok(sqlx::query_as(LIST_API_TOKENS)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn revoke_api_token(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(REVOKE_API_TOKEN)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn list_join_tokens(&self) -> Result<Vec<JoinTokenRecord>, StoreError> {
        Ok(sqlx::query_as(LIST_JOIN_TOKENS)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(REVOKE_JOIN_TOKEN)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done) > 0)
    }

    async fn count_api_tokens(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(COUNT_API_TOKENS)
            .fetch_one(&self.pool)
            .await?;
        Ok(version(n))
    }

    async fn insert_join_token(&self, t: &JoinTokenRecord) -> Result<(), StoreError> {
        sqlx::query(INSERT_JOIN_TOKEN)
            .bind(t.id.as_str())
            .bind(t.token_hash.as_str())
            .bind(t.namespace.as_str())
            .bind(t.service_account.as_str())
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
    ) -> Result<JoinTokenRecord, RedeemError> {
        let redeemed: Option<JoinTokenRecord> = sqlx::query_as(REDEEM_JOIN_TOKEN)
            .bind(token_hash)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)?;
        if let Some(token) = redeemed {
            return Ok(token);
        }
        // Say why, from the row as it is now.
        let row: Option<JoinTokenRecord> = sqlx::query_as(JOIN_TOKEN)
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

    async fn certificate_authority(&self) -> Result<Option<(String, String)>, StoreError> {
        Ok(sqlx::query_as(GET_CA).fetch_optional(&self.pool).await?)
    }

    async fn init_certificate_authority(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(String, String), StoreError> {
        sqlx::query(INSERT_CA)
            .bind(cert_pem)
            .bind(key_pem)
            .bind(super::now_ms())
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_as(GET_CA).fetch_one(&self.pool).await?)
    }

    async fn delete_certificate_authority(&self) -> Result<(), StoreError> {
        let deleted = sqlx::query(DELETE_CA).execute(&self.pool).await?;
        if DB::rows_affected(&deleted) > 0 {
            for statement in DB::SCRUB_DELETED {
                sqlx::query(*statement).execute(&self.pool).await?;
            }
        }
        Ok(())
    }

    async fn ca_key(&self, role: CaRole) -> Result<Option<SealedCa>, StoreError> {
        Ok(sqlx::query_as(GET_CA_KEY)
            .bind(role.as_str())
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn init_ca_key(&self, role: CaRole, ca: &SealedCa) -> Result<SealedCa, StoreError> {
        sqlx::query(INSERT_CA_KEY)
            .bind(role.as_str())
            .bind(ca.cert_pem.as_str())
            .bind(ca.key_sealed.as_str())
            .bind(super::now_ms())
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_as(GET_CA_KEY)
            .bind(role.as_str())
            .fetch_one(&self.pool)
            .await?)
    }

    async fn replace_ca_key(
        &self,
        role: CaRole,
        current: &SealedCa,
        next: &SealedCa,
    ) -> Result<SealedCa, StoreError> {
        sqlx::query(REPLACE_CA_KEY)
            .bind(next.cert_pem.as_str())
            .bind(next.key_sealed.as_str())
            .bind(super::now_ms())
            .bind(role.as_str())
            .bind(current.cert_pem.as_str())
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_as(GET_CA_KEY)
            .bind(role.as_str())
            .fetch_one(&self.pool)
            .await?)
    }

    async fn remove_ca_key(&self, role: CaRole) -> Result<bool, StoreError> {
        let removed = sqlx::query(REMOVE_CA_KEY)
            .bind(role.as_str())
            .execute(&self.pool)
            .await?;
        if DB::rows_affected(&removed) == 0 {
            return Ok(false);
        }
        // The old row's bytes (sealed, but openable with the key-encryption key) must not
        // linger in free pages or the journal.
        for statement in DB::SCRUB_DELETED {
            sqlx::query(*statement).execute(&self.pool).await?;
        }
        Ok(true)
    }

    async fn rotate_ca(
        &self,
        current: &SealedCa,
        root: &SealedCa,
        intermediate: &SealedCa,
    ) -> Result<bool, StoreError> {
        let now = super::now_ms();
        let mut tx = self.pool.begin().await?;
        let swapped = sqlx::query(REPLACE_CA_KEY)
            .bind(root.cert_pem.as_str())
            .bind(root.key_sealed.as_str())
            .bind(now)
            .bind(CaRole::Root.as_str())
            .bind(current.cert_pem.as_str())
            .execute(&mut *tx)
            .await?;
        if DB::rows_affected(&swapped) == 0 {
            // Dropping the transaction rolls it back.
            return Ok(false);
        }
        let stored = sqlx::query_as::<_, SealedCa>(GET_CA_KEY)
            .bind(CaRole::Intermediate.as_str())
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(REPLACE_CA_KEY)
            .bind(intermediate.cert_pem.as_str())
            .bind(intermediate.key_sealed.as_str())
            .bind(now)
            .bind(CaRole::Intermediate.as_str())
            .bind(stored.cert_pem.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(INSERT_RETIRING_ROOT)
            .bind(current.cert_pem.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn retiring_roots(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(RETIRING_ROOTS).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(pem,)| pem).collect())
    }

    async fn retire_roots(&self) -> Result<u64, StoreError> {
        let deleted = sqlx::query(DELETE_RETIRING_ROOTS)
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&deleted))
    }

    async fn record_svid(
        &self,
        svid: &SvidRecord,
        replaces: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(DELETE_EXPIRED_SVIDS)
            .bind(super::now_ms())
            .execute(&mut *tx)
            .await?;
        if let Some(old) = replaces {
            sqlx::query(DELETE_SVID).bind(old).execute(&mut *tx).await?;
        }
        sqlx::query(INSERT_SVID)
            .bind(svid.fingerprint.as_str())
            .bind(svid.spiffe_id.as_str())
            .bind(svid.root.as_str())
            .bind(svid.not_after)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn svid_holders(
        &self,
        root: &str,
        now_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(SVID_HOLDERS)
            .bind(root)
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await?)
    }
}
