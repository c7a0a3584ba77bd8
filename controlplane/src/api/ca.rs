//! Root rotation of the generated mesh CA, the admin side: `RotateCa` (a new root and
//! intermediate; the old root stays in the bundle), `RetireCa` (the old root leaves the
//! bundle) and `GetCaStatus`. The CA itself is [`crate::ca::MeshCa`]; who still holds a
//! certificate from the old root comes from the `svids` table the Join and Renew handlers
//! keep.

use quiver_api::v1;
use tonic::{Request, Status};

use super::{Inputs, store_status};
use crate::auth::Role;
use crate::ca::{CaError, CaState, fingerprint};
use crate::store::now_ms;
use crate::stored::rfc3339;

fn ca_status(e: CaError) -> Status {
    match e {
        CaError::OperatorCa | CaError::RotationInProgress | CaError::RootOffline { .. } => {
            Status::failed_precondition(e.to_string())
        }
        CaError::Store(e) => store_status(e),
        other => Status::internal(other.to_string()),
    }
}

/// `RotateCa` (admin).
pub async fn rotate(
    inputs: &Inputs,
    req: Request<v1::RotateCaRequest>,
) -> Result<v1::CaStatus, Status> {
    inputs
        .tokens
        .authorize(req.metadata(), Role::Admin, "RotateCa")
        .await?;
    inputs
        .ca
        .rotate(inputs.store.as_ref())
        .await
        .map_err(ca_status)?;
    tracing::info!("mesh CA root rotated: new SVIDs come from the new root, both are trusted");
    status_of(inputs, &inputs.ca.current(), 0).await
}

/// `RetireCa` (admin): refused, naming who, while unrenewed certificates from the retiring
/// root are still unexpired, unless `force`.
pub async fn retire(
    inputs: &Inputs,
    req: Request<v1::RetireCaRequest>,
) -> Result<v1::CaStatus, Status> {
    inputs
        .tokens
        .authorize(req.metadata(), Role::Admin, "RetireCa")
        .await?;
    if inputs.ca.is_operator() {
        return Err(ca_status(CaError::OperatorCa));
    }
    // Read the store, not this replica's view: a rotation made elsewhere a moment ago counts.
    inputs
        .ca
        .refresh(inputs.store.as_ref())
        .await
        .map_err(ca_status)?;
    let state = inputs.ca.current();
    if state.retiring().is_empty() {
        return Err(Status::failed_precondition(
            "no root rotation is in progress: nothing to retire (`quiverctl ca rotate` starts one)",
        ));
    }
    let holders = old_root_holders(inputs, &state).await?;
    if !req.get_ref().force && !holders.is_empty() {
        let total: u32 = holders.iter().map(|h| h.certificates).sum();
        let named: Vec<String> = holders
            .iter()
            .take(10)
            .map(|h| format!("{} ({})", h.spiffe_id, h.certificates))
            .collect();
        return Err(Status::failed_precondition(format!(
            "{total} certificate(s) from the old root are still held by {} workload identit{} \
             that have not renewed since the rotation: {}{}; wait for them to renew (every \
             proxy renews before 2/3 of its SVID's lifetime), or pass --force (proxies still \
             on the old root are then refused by every peer)",
            holders.len(),
            if holders.len() == 1 { "y" } else { "ies" },
            named.join(", "),
            if holders.len() > 10 { ", ..." } else { "" },
        )));
    }
    let retired = inputs
        .ca
        .retire(inputs.store.as_ref())
        .await
        .map_err(ca_status)?;
    tracing::info!(
        retired,
        forced = req.get_ref().force,
        "old mesh CA root retired"
    );
    status_of(inputs, &inputs.ca.current(), retired).await
}

/// `GetCaStatus` (viewer or admin).
pub async fn status(
    inputs: &Inputs,
    req: Request<v1::GetCaStatusRequest>,
) -> Result<v1::CaStatus, Status> {
    inputs
        .tokens
        .authorize(req.metadata(), Role::Viewer, "GetCaStatus")
        .await?;
    status_of(inputs, &inputs.ca.current(), 0).await
}

async fn old_root_holders(inputs: &Inputs, state: &CaState) -> Result<Vec<v1::CaHolder>, Status> {
    let mut holders: Vec<v1::CaHolder> = Vec::new();
    for root in state.retiring() {
        let Some(fp) = crate::ca::pem_fingerprint(root) else {
            continue;
        };
        let rows = inputs
            .store
            .svid_holders(&fp, now_ms())
            .await
            .map_err(store_status)?;
        for (spiffe_id, n) in rows {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            match holders.iter_mut().find(|h| h.spiffe_id == spiffe_id) {
                Some(h) => h.certificates = h.certificates.saturating_add(n),
                None => holders.push(v1::CaHolder {
                    spiffe_id,
                    certificates: n,
                }),
            }
        }
    }
    Ok(holders)
}

async fn status_of(inputs: &Inputs, state: &CaState, retired: u64) -> Result<v1::CaStatus, Status> {
    let phase = if inputs.ca.is_operator() {
        "operator"
    } else if state.retiring().is_empty() {
        "single-root"
    } else {
        "overlap"
    };
    // "root-offline": its key was exported and removed (`quiver-control ca export-root
    // --remove-key`), so the intermediate cannot be renewed until it is given back.
    let root_role = if state.root_key_offline() {
        "root-offline"
    } else {
        "root"
    };
    let mut certificates = vec![describe(root_role, state.root_pem())];
    if !inputs.ca.is_operator() {
        certificates.push(describe("intermediate", state.signer_pem()));
    }
    certificates.extend(
        state
            .retiring()
            .iter()
            .map(|pem| describe("retiring-root", pem)),
    );
    Ok(v1::CaStatus {
        phase: phase.into(),
        certificates,
        old_root_holders: old_root_holders(inputs, state).await?,
        retired: u32::try_from(retired).unwrap_or(u32::MAX),
    })
}

fn describe(role: &str, pem: &str) -> v1::CaCertificate {
    let der = quiver_api::certs::certs_from_pem(pem)
        .ok()
        .and_then(|c| c.into_iter().next());
    let (subject, not_before, not_after, fp) = match &der {
        Some(der) => {
            let unix_ms = |t: std::time::SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .unwrap_or_default()
            };
            (
                quiver_api::certs::describe(der),
                quiver_api::certs::not_before_unix(der)
                    .map(|s| rfc3339(s.saturating_mul(1000)))
                    .unwrap_or_default(),
                quiver_api::certs::not_after(der)
                    .map(|t| rfc3339(unix_ms(t)))
                    .unwrap_or_default(),
                fingerprint(der),
            )
        }
        None => Default::default(),
    };
    v1::CaCertificate {
        role: role.into(),
        subject,
        fingerprint: fp,
        not_before,
        not_after,
        pem: pem.into(),
    }
}
