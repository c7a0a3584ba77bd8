//! Revocation: the admin side (`Revoke`, `ListRevocations`) and the checks the discovery
//! handlers run with it (who may still call, join and renew, and the notBefore floor of the
//! certificates they get).
//!
//! A revocation is "identity + instant": every certificate of the SPIFFE id with an earlier
//! notBefore is denied everywhere, and so is every join token of it made before the instant;
//! certificates issued afterwards (from a fresh token) start at or after the instant and are
//! not covered. Revoking a workload revokes its identity (an SVID names an identity, not a
//! workload) and removes the workload's endpoint at once.

use std::time::{Duration, SystemTime};

use quiver_api::resource::{DEFAULT_NAMESPACE, Kind};
use quiver_api::v1;
use quiver_api::{SpiffeId, revocation};
use tonic::{Request, Status};

use super::tokens::MAX_JOIN_TOKEN_TTL;
use super::{Inputs, decode, is_dns_label, store_status};
use crate::auth::Role;
use crate::discovery::Caller;
use crate::discovery::revocations::to_proto;
use crate::store::{JoinTokenRecord, RevocationRecord, now_ms};

/// At most this many revocations are kept; each is sent to every proxy.
pub const MAX_REVOCATIONS: usize = 10_000;
/// The longest reason kept with a revocation.
const MAX_REASON: usize = 256;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `Revoke` (admin).
pub async fn revoke(
    inputs: &Inputs,
    req: Request<v1::RevokeRequest>,
) -> Result<v1::Revocation, Status> {
    inputs
        .tokens
        .authorize(req.metadata(), Role::Admin, "Revoke")
        .await?;
    let store = inputs.store.as_ref();
    let req = req.into_inner();
    let mut errors = Vec::new();
    if req.reason.chars().count() > MAX_REASON {
        errors.push(format!("reason: longer than {MAX_REASON} characters"));
    }
    let namespace = if req.namespace.is_empty() {
        DEFAULT_NAMESPACE.to_string()
    } else {
        req.namespace.clone()
    };
    let target = match &req.target {
        None => {
            errors.push("target: give a workload or a spiffeId".into());
            None
        }
        Some(v1::revoke_request::Target::Workload(name)) => {
            if !is_dns_label(&namespace) {
                errors.push(format!("namespace: {namespace:?} is not a DNS label"));
            }
            if name.is_empty() {
                errors.push("workload: required".into());
            }
            Some(Err(name.clone()))
        }
        Some(v1::revoke_request::Target::SpiffeId(id)) => match SpiffeId::parse(id) {
            Ok(id) if id.trust_domain() != inputs.ca.trust_domain() => {
                errors.push(format!(
                    "spiffeId: {id} is not in this mesh's trust domain {}",
                    inputs.ca.trust_domain()
                ));
                None
            }
            Ok(id) if id.workload_parts().is_none() => {
                errors.push(format!(
                    "spiffeId: {id} is not a workload identity \
                     (spiffe://<td>/ns/<namespace>/sa/<account>)"
                ));
                None
            }
            Ok(id) => Some(Ok(id)),
            Err(e) => {
                errors.push(format!("spiffeId: {e}"));
                None
            }
        },
    };
    let Some(target) = target.filter(|_| errors.is_empty()) else {
        return Err(Status::invalid_argument(errors.join("; ")));
    };
    // A workload is revoked through its identity; it also stops being an endpoint now.
    let (spiffe_id, workload) = match target {
        Ok(id) => (id.to_string(), None),
        Err(name) => {
            let stored = store
                .get(Kind::Workload, &namespace, &name)
                .await
                .map_err(store_status)?
                .ok_or_else(|| {
                    Status::not_found(format!("workload: {namespace}/{name} is not registered"))
                })?;
            let w: v1::Workload = decode(&stored)?;
            let id = w.spec.map(|s| s.spiffe_id).unwrap_or_default();
            if SpiffeId::parse(&id).is_err() {
                return Err(Status::failed_precondition(format!(
                    "workload: {namespace}/{name} carries no valid SPIFFE id ({id:?}); revoke \
                     its identity by spiffeId"
                )));
            }
            (id, Some((name, stored.resource_version)))
        }
    };
    let now = now_ms();
    let existing = store
        .revocation(&spiffe_id, now)
        .await
        .map_err(store_status)?;
    if existing.is_none()
        && store.revocations(now).await.map_err(store_status)?.len() >= MAX_REVOCATIONS
    {
        return Err(Status::resource_exhausted(format!(
            "spiffeId: {MAX_REVOCATIONS} revocations are in force, the limit; they are \
             dropped when the certificates and join tokens they cover have expired"
        )));
    }
    // Whole seconds (certificate times are), strictly after an earlier revocation of the
    // same id, so that certificates issued from that one's instant are covered too.
    let mut not_before = now.div_euclid(1000);
    if let Some(e) = &existing
        && e.not_before >= not_before
    {
        not_before = e.not_before + 1;
    }
    // Covered certificates were issued before `not_before`; none outlives the longest SVID.
    let expires_at = (not_before * 1000).saturating_add(ms(quiver_policy::mesh::MAX_SVID_TTL));
    let record = RevocationRecord {
        spiffe_id: spiffe_id.clone(),
        not_before,
        revoked_at: now,
        expires_at,
        forget_at: now.saturating_add(ms(MAX_JOIN_TOKEN_TTL)).max(expires_at),
        reason: req.reason,
        workload: workload
            .as_ref()
            .map(|(name, _)| format!("{namespace}/{name}"))
            .unwrap_or_default(),
    };
    store.put_revocation(&record).await.map_err(store_status)?;
    // This replica's view first, so that a keep-alive refused below (its lease is gone) and
    // the re-registration it leads to are refused by the view too; Register also reads the
    // store after writing, which closes the race on other replicas.
    if let Err(e) = inputs.revocations.refresh().await {
        // Stored: the poll pushes it within a second.
        tracing::warn!(error = %e, "re-reading revocations after a revoke failed");
    }
    if let Some((name, version)) = workload {
        // Gone already (deregistered or lapsed meanwhile) is fine: the point is that it is.
        let _ = store
            .delete(Kind::Workload, &namespace, &name, Some(version))
            .await;
        store
            .delete_lease(&namespace, &name)
            .await
            .map_err(store_status)?;
    }
    tracing::warn!(
        spiffe.id = %spiffe_id,
        workload = %record.workload,
        not_before = record.not_before,
        reason = %record.reason,
        "identity revoked"
    );
    Ok(to_proto(&record))
}

/// `ListRevocations` (viewer or admin): the revocations kept, including those no longer
/// pushed (which still refuse old join tokens).
pub async fn list(
    inputs: &Inputs,
    req: Request<v1::ListRevocationsRequest>,
) -> Result<v1::RevocationList, Status> {
    inputs
        .tokens
        .authorize(req.metadata(), Role::Viewer, "ListRevocations")
        .await?;
    let store = inputs.store.as_ref();
    let items = store
        .revocations(now_ms())
        .await
        .map_err(store_status)?
        .iter()
        .map(to_proto)
        .collect();
    Ok(v1::RevocationList { items })
}

pub(super) fn revoked_status(spiffe_id: &str, not_before: i64) -> Status {
    Status::permission_denied(format!(
        "{spiffe_id} is revoked: its certificates issued before {} are refused; join again \
         with a join token made after that",
        rfc3339_secs(not_before)
    ))
}

fn rfc3339_secs(s: i64) -> String {
    crate::stored::rfc3339(s.saturating_mul(1000))
}

/// Refuse a discovery call whose client certificate a revocation covers (this replica's view,
/// at most one poll old). `method` labels the refusal metric.
pub fn check_caller(
    inputs: &Inputs,
    caller: &Caller,
    cert_not_before: i64,
    method: &'static str,
) -> Result<(), Status> {
    match inputs
        .revocations
        .current()
        .covering(&caller.spiffe_id, cert_not_before)
    {
        Some(r) => {
            inputs.metrics.revoked_refusal(method);
            Err(revoked_status(&caller.spiffe_id, r))
        }
        None => Ok(()),
    }
}

/// Whether `caller` (certificate notBefore `cert_not_before`) may have its SVID renewed: its
/// certificate is not revoked (read from the store, not a view: no renewal slips through a
/// poll) and a Service in its namespace still runs as its service account.
pub async fn check_renewal(
    inputs: &Inputs,
    caller: &Caller,
    cert_not_before: i64,
) -> Result<(), Status> {
    check_stored(inputs, caller, cert_not_before, "Renew").await?;
    let (services, _) = inputs
        .store
        .list(Kind::Service, Some(&caller.namespace))
        .await
        .map_err(store_status)?;
    let entitled = services.iter().any(|s| {
        decode::<v1::Service>(s).is_ok_and(|svc| {
            crate::discovery::view::service_account(&svc) == caller.service_account
        })
    });
    if !entitled {
        return Err(Status::permission_denied(format!(
            "{} is no longer entitled to a certificate: no Service in namespace {} runs as \
             service account {:?}",
            caller.spiffe_id, caller.namespace, caller.service_account
        )));
    }
    Ok(())
}

/// Refuse `caller` when a revocation in the store (not this replica's view, which may be a
/// poll old) covers its certificate. `method` labels the refusal metric.
pub async fn check_stored(
    inputs: &Inputs,
    caller: &Caller,
    cert_not_before: i64,
    method: &'static str,
) -> Result<(), Status> {
    if let Some(r) = inputs
        .store
        .revocation(&caller.spiffe_id, now_ms())
        .await
        .map_err(store_status)?
        && revocation::covers(r.not_before, cert_not_before)
    {
        inputs.metrics.revoked_refusal(method);
        return Err(revoked_status(&caller.spiffe_id, r.not_before));
    }
    Ok(())
}

/// Refuse a join token made before its identity was revoked (it may be the leaked one).
pub async fn check_join(
    inputs: &Inputs,
    grant: &JoinTokenRecord,
    spiffe_id: &str,
) -> Result<(), Status> {
    if let Some(r) = inputs
        .store
        .revocation(spiffe_id, now_ms())
        .await
        .map_err(store_status)?
        && grant.created_at < r.revoked_at
    {
        inputs.metrics.revoked_refusal("Join");
        return Err(Status::permission_denied(format!(
            "join token {} was made before {spiffe_id} was revoked ({}); create a new join token",
            grant.id,
            crate::stored::rfc3339(r.revoked_at)
        )));
    }
    Ok(())
}

/// The earliest notBefore a new certificate of `spiffe_id` may carry: its revocation's
/// instant, so that the revocation never covers it. UNAVAILABLE (retried by proxies) in the
/// rare second when that instant is still ahead.
pub async fn not_before_floor(inputs: &Inputs, spiffe_id: &str) -> Result<SystemTime, Status> {
    let Some(r) = inputs
        .store
        .revocation(spiffe_id, now_ms())
        .await
        .map_err(store_status)?
    else {
        return Ok(SystemTime::UNIX_EPOCH);
    };
    let floor =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(r.not_before).unwrap_or(0));
    if floor > SystemTime::now() {
        return Err(Status::unavailable(format!(
            "{spiffe_id} was revoked this second; try again in a second"
        )));
    }
    Ok(floor)
}
