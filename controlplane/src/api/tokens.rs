//! API and join tokens on `MeshAdmin`: create (with a TTL), list (never a secret or a hash)
//! and revoke. Admin only. The checks of API tokens on every call are `crate::auth::Tokens`.

use std::time::Duration;

use quiver_api::resource::DEFAULT_NAMESPACE;
use quiver_api::v1;
use tonic::{Request, Status};

use super::{AdminApi, is_dns_label, store_status};
use crate::auth::{self, Role};
use crate::store::{JoinTokenRecord, NEVER, now_ms};
use crate::stored::rfc3339;

/// The longest a join token may stay redeemable.
pub(super) const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(90 * 86_400);

/// The longest an API token may be accepted when a TTL is given.
const MAX_API_TOKEN_TTL: Duration = Duration::from_secs(365 * 86_400);

/// A join token's lifetime when none is asked for.
const DEFAULT_JOIN_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// `field: value` as a token TTL: positive, at most `max`; `None` for an empty value.
fn ttl(field: &str, value: &str, max: Duration) -> Result<Option<Duration>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    match quiver_api::duration::parse(value) {
        Ok(d) if d > max => Err(format!(
            "{field}: {value:?} is longer than the maximum, {}",
            quiver_api::duration::format(max)
        )),
        Ok(d) if d.is_zero() => Err(format!("{field}: must be longer than 0s")),
        Ok(d) => Ok(Some(d)),
        Err(e) => Err(format!("{field}: {e}")),
    }
}

/// Milliseconds since the epoch `ttl` from now (saturating).
fn expiry(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

fn shown_expiry(expires_at: i64) -> String {
    if expires_at == NEVER {
        String::new()
    } else {
        rfc3339(expires_at)
    }
}

impl AdminApi {
    pub(super) async fn create_api_token(
        &self,
        req: Request<v1::CreateApiTokenRequest>,
    ) -> Result<v1::CreateApiTokenResponse, Status> {
        let inputs = &self.inputs;
        inputs
            .tokens
            .authorize(req.metadata(), Role::Admin, "CreateApiToken")
            .await?;
        let req = req.into_inner();
        let mut errors = Vec::new();
        let role = Role::parse(&req.role);
        if role.is_none() {
            errors.push(format!("role: {:?} is not admin or viewer", req.role));
        }
        let ttl = ttl("ttl", &req.ttl, MAX_API_TOKEN_TTL).unwrap_or_else(|e| {
            errors.push(e);
            None
        });
        let (Some(role), true) = (role, errors.is_empty()) else {
            return Err(Status::invalid_argument(errors.join("; ")));
        };
        let expires_at = ttl.map_or(NEVER, |t| expiry(now_ms(), t));
        let (id, token) =
            auth::create_token(inputs.store.as_ref(), role, &req.description, expires_at)
                .await
                .map_err(store_status)?;
        Ok(v1::CreateApiTokenResponse {
            token,
            id,
            role: role.as_str().into(),
            expires_at: shown_expiry(expires_at),
        })
    }

    pub(super) async fn create_join_token(
        &self,
        req: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<v1::CreateJoinTokenResponse, Status> {
        let inputs = &self.inputs;
        inputs
            .tokens
            .authorize(req.metadata(), Role::Admin, "CreateJoinToken")
            .await?;
        let req = req.into_inner();
        let namespace = if req.namespace.is_empty() {
            DEFAULT_NAMESPACE.to_string()
        } else {
            req.namespace
        };
        let mut errors = Vec::new();
        if !is_dns_label(&namespace) {
            errors.push(format!("namespace: {namespace:?} is not a DNS label"));
        }
        if let Some(reason) = quiver_api::spiffe::reserved_namespace(&namespace) {
            errors.push(format!("namespace: {reason}"));
        }
        if !is_dns_label(&req.service_account) {
            errors.push(format!(
                "serviceAccount: {:?} is not a DNS label",
                req.service_account
            ));
        }
        let ttl = ttl("ttl", &req.ttl, MAX_JOIN_TOKEN_TTL)
            .unwrap_or_else(|e| {
                errors.push(e);
                None
            })
            .unwrap_or(DEFAULT_JOIN_TOKEN_TTL);
        let uses = if req.uses == 0 { 1 } else { req.uses };
        if uses > 10_000 {
            errors.push(format!("uses: {uses} is above the limit of 10000"));
        }
        if !errors.is_empty() {
            return Err(Status::invalid_argument(errors.join("; ")));
        }
        let spiffe_id = quiver_api::SpiffeId::workload(
            inputs.ca.trust_domain(),
            &namespace,
            &req.service_account,
        )
        .map_err(|e| Status::invalid_argument(format!("serviceAccount: {e}")))?;
        let secret = auth::new_secret("qvj_");
        let hash = auth::hash_secret(&secret);
        let now = now_ms();
        let expires_at = expiry(now, ttl);
        let record = JoinTokenRecord {
            id: auth::token_id(&hash),
            token_hash: hash,
            namespace,
            service_account: req.service_account,
            expires_at,
            max_uses: i32::try_from(uses).unwrap_or(i32::MAX),
            uses: 0,
            created_at: now,
        };
        inputs
            .store
            .insert_join_token(&record)
            .await
            .map_err(store_status)?;
        Ok(v1::CreateJoinTokenResponse {
            token: secret,
            id: record.id,
            spiffe_id: spiffe_id.to_string(),
            expires_at: rfc3339(expires_at),
            uses,
        })
    }

    pub(super) async fn list_tokens(
        &self,
        req: Request<v1::ListTokensRequest>,
    ) -> Result<v1::TokenList, Status> {
        let inputs = &self.inputs;
        inputs
            .tokens
            .authorize(req.metadata(), Role::Admin, "ListTokens")
            .await?;
        let store = inputs.store.as_ref();
        let now = now_ms();
        let api = store.list_api_tokens().await.map_err(store_status)?;
        let join = store.list_join_tokens().await.map_err(store_status)?;
        let trust_domain = inputs.ca.trust_domain();
        let mut items: Vec<v1::TokenInfo> = api
            .into_iter()
            .map(|t| v1::TokenInfo {
                kind: "api".into(),
                id: t.id,
                role: t.role,
                description: t.description,
                created_at: rfc3339(t.created_at),
                expires_at: shown_expiry(t.expires_at),
                expired: t.expires_at <= now,
                ..Default::default()
            })
            .collect();
        items.extend(join.into_iter().map(|t| {
            v1::TokenInfo {
                kind: "join".into(),
                spiffe_id: quiver_api::SpiffeId::workload(
                    trust_domain,
                    &t.namespace,
                    &t.service_account,
                )
                .map(|id| id.to_string())
                .unwrap_or_default(),
                id: t.id,
                created_at: rfc3339(t.created_at),
                expires_at: rfc3339(t.expires_at),
                uses: u32::try_from(t.uses).unwrap_or(0),
                max_uses: u32::try_from(t.max_uses).unwrap_or(0),
                expired: t.expires_at <= now || t.uses >= t.max_uses,
                ..Default::default()
            }
        }));
        Ok(v1::TokenList { items })
    }

    pub(super) async fn revoke_token(
        &self,
        req: Request<v1::RevokeTokenRequest>,
    ) -> Result<v1::RevokeTokenResponse, Status> {
        let inputs = &self.inputs;
        inputs
            .tokens
            .authorize(req.metadata(), Role::Admin, "RevokeToken")
            .await?;
        let req = req.into_inner();
        if req.id.is_empty() {
            return Err(Status::invalid_argument("id: required"));
        }
        let store = inputs.store.as_ref();
        let found = match req.kind.as_str() {
            "api" => match store
                .revoke_api_token(&req.id)
                .await
                .map_err(store_status)?
            {
                Some(hash) => {
                    inputs.tokens.revoked(&hash);
                    true
                }
                None => false,
            },
            "join" => store
                .revoke_join_token(&req.id)
                .await
                .map_err(store_status)?,
            other => {
                return Err(Status::invalid_argument(format!(
                    "kind: {other:?} is not api or join"
                )));
            }
        };
        if !found {
            return Err(Status::not_found(format!(
                "id: no {} token {:?}",
                req.kind, req.id
            )));
        }
        tracing::info!(token.kind = %req.kind, token.id = %req.id, "token revoked");
        Ok(v1::RevokeTokenResponse {})
    }
}
