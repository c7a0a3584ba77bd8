//! Bearer-token authentication for the admin API: token minting, hashing and role checks.
//!
//! Tokens are 256 random bits, shown once and stored only as their SHA-256 (a fast hash is
//! enough for secrets this long: there is nothing to brute-force). Roles: `admin` may call
//! everything; `viewer` may only read.

use std::fmt;

use base64::Engine;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::store::{ApiTokenRecord, Store, StoreError, now_ms};

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

/// Store a new token with `role`; returns (id, secret). The secret is not kept.
pub async fn create_token(
    store: &dyn Store,
    role: Role,
    description: &str,
) -> Result<(String, String), StoreError> {
    let secret = new_secret("qvr_");
    let hash = hash_secret(&secret);
    let id = hash[..12].to_string();
    store
        .insert_api_token(&ApiTokenRecord {
            id: id.clone(),
            token_hash: hash,
            role: role.as_str().into(),
            description: description.into(),
            created_at: now_ms(),
        })
        .await?;
    Ok((id, secret))
}

/// Make sure `secret` is an admin token (for `QUIVER_ADMIN_TOKEN`); idempotent.
pub async fn ensure_admin_token(store: &dyn Store, secret: &str) -> Result<(), StoreError> {
    let hash = hash_secret(secret);
    if store.api_token_role(&hash).await?.is_some() {
        return Ok(());
    }
    store
        .insert_api_token(&ApiTokenRecord {
            id: hash[..12].to_string(),
            token_hash: hash,
            role: Role::Admin.as_str().into(),
            description: "QUIVER_ADMIN_TOKEN".into(),
            created_at: now_ms(),
        })
        .await
}

/// The caller's role, from `authorization: Bearer <token>`, if it is at least `needed`.
pub async fn authorize(
    store: &dyn Store,
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
    let role = store
        .api_token_role(&hash_secret(token))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "token lookup failed");
            Status::unavailable("token lookup failed; try again")
        })?
        .and_then(|r| Role::parse(&r))
        .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))?;
    if role < needed {
        return Err(Status::permission_denied(format!(
            "role {role} may not call {method} (needs {needed})"
        )));
    }
    Ok(role)
}
