//! What each proxy runs: the reports proxies send with KeepAlive (written to the store, so
//! every replica answers), `MeshAdmin.ListProxyStatus` and `MeshAdmin.GetProxyConfig`.
//!
//! "Latest" for a proxy is the newest snapshot a Watch stream pushed to its identity and
//! service (`crate::discovery::pushed` on the replica that holds the stream, and the store's
//! `note_pushed`, so that a proxy that stops reporting still shows the push it did not
//! apply). The decision SYNCED / STALE / REFUSED is [`state_of`], a pure function.

use prost::Message;
use quiver_api::resource::Kind;
use quiver_api::v1;
use tonic::{Request, Status};

use super::{Inputs, decode, rfc3339, store_status};
use crate::auth::Role;
use crate::discovery::Caller;
use crate::store::{ProxyStatusRecord, now_ms};

/// Longest refusal reason kept (a proxy's error list can be long).
const MAX_REASON: usize = 2048;

/// Record a proxy's report, sent with a KeepAlive of `workload` whose lease was just renewed.
pub async fn report(
    inputs: &Inputs,
    caller: &Caller,
    workload: &str,
    report: &v1::ProxyReport,
) -> Result<(), Status> {
    let ns = caller.namespace.as_str();
    let service = match inputs
        .view
        .current()
        .namespaces
        .get(ns)
        .and_then(|n| n.workloads.get(workload))
        .and_then(|w| w.spec.as_ref())
    {
        Some(spec) => spec.service.clone(),
        None => {
            // Registered a moment ago: this replica's view may not have it yet.
            let stored = inputs
                .store
                .get(Kind::Workload, ns, workload)
                .await
                .map_err(store_status)?
                .ok_or_else(|| Status::not_found(format!("workload {ns}/{workload} not found")))?;
            let w: v1::Workload = decode(&stored)?;
            w.spec.map(|s| s.service).unwrap_or_default()
        }
    };
    let now = now_ms();
    let pushed = inputs.pushed.latest(&caller.spiffe_id, &service);
    let applied = report.applied_version;
    let (latest, since) = match pushed {
        Some(p) if p.version > applied => (p.version, p.since_ms),
        _ => (applied, now),
    };
    let mut reason = report.refused_reason.clone();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str("...");
    }
    let record = ProxyStatusRecord {
        namespace: ns.to_string(),
        workload: workload.to_string(),
        spiffe_id: caller.spiffe_id.clone(),
        service: service.clone(),
        proxy_version: report.proxy_version.chars().take(64).collect(),
        applied_version: to_i64(applied),
        applied_at: now,
        refused_version: to_i64(report.refused_version),
        refused_reason: reason,
        cert_expires_at: report.certificate_expires_unix,
        last_seen: now,
        latest_version: to_i64(latest),
        latest_since: since,
        snapshot_version: 0,
    };
    let kept = inputs
        .store
        .put_proxy_report(&record)
        .await
        .map_err(store_status)?;
    if applied != 0
        && kept != to_i64(applied)
        && let Some(snap) = inputs.pushed.snapshot(&caller.spiffe_id, &service, applied)
    {
        inputs
            .store
            .put_proxy_snapshot(ns, workload, to_i64(applied), &snap.encode_to_vec())
            .await
            .map_err(store_status)?;
    }
    Ok(())
}

/// A Watch stream of `caller` fronting `services` pushed `snap` (already in this replica's
/// push log): move the latest version of the caller's proxies in the store. A store error
/// only costs the status view, never the push, so it is logged.
pub async fn pushed(
    inputs: &Inputs,
    caller: &Caller,
    services: &[String],
    snap: &v1::ProxySnapshot,
) {
    let now = now_ms();
    for service in services {
        if let Err(e) = inputs
            .store
            .note_pushed(&caller.spiffe_id, service, to_i64(snap.version), now)
            .await
        {
            tracing::warn!(error = %e, spiffe.id = %caller.spiffe_id, "recording a push for proxy status failed");
        }
    }
}

/// `MeshAdmin.ListProxyStatus`.
pub async fn list(
    inputs: &Inputs,
    req: Request<v1::ListRequest>,
) -> Result<v1::ProxyStatusList, Status> {
    inputs
        .tokens
        .authorize(req.metadata(), Role::Viewer, "ListProxyStatus")
        .await?;
    let ns = req.into_inner().namespace;
    let rows = inputs
        .store
        .proxy_statuses((!ns.is_empty()).then_some(ns.as_str()))
        .await
        .map_err(store_status)?;
    let now = now_ms();
    let mut items: Vec<v1::ProxyStatus> = rows.iter().map(|r| state_of(r, now)).collect();
    // Registered workloads whose proxy has not reported (just started, or older than this
    // control plane) are listed too, as UNKNOWN.
    let reported: std::collections::BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.namespace.clone(), r.workload.clone()))
        .collect();
    let view = inputs.view.current();
    for (name_ns, state) in &view.namespaces {
        if !ns.is_empty() && *name_ns != ns {
            continue;
        }
        for (name, w) in &state.workloads {
            if reported.contains(&(name_ns.clone(), name.clone())) {
                continue;
            }
            let spec = w.spec.clone().unwrap_or_default();
            items.push(v1::ProxyStatus {
                namespace: name_ns.clone(),
                workload: name.clone(),
                service: spec.service,
                spiffe_id: spec.spiffe_id,
                state: "UNKNOWN".into(),
                ..Default::default()
            });
        }
    }
    items.sort_by(|a, b| (&a.namespace, &a.workload).cmp(&(&b.namespace, &b.workload)));
    Ok(v1::ProxyStatusList { items })
}

/// `MeshAdmin.GetProxyConfig`.
pub async fn config(
    inputs: &Inputs,
    req: Request<v1::GetRequest>,
) -> Result<v1::ProxyConfig, Status> {
    inputs
        .tokens
        .authorize(req.metadata(), Role::Viewer, "GetProxyConfig")
        .await?;
    let req = req.into_inner();
    if req.name.is_empty() {
        return Err(Status::invalid_argument(
            "name: required (the Workload's name)",
        ));
    }
    let ns = if req.namespace.is_empty() {
        quiver_api::resource::DEFAULT_NAMESPACE.to_string()
    } else {
        req.namespace
    };
    let (record, bytes) = inputs
        .store
        .proxy_status(&ns, &req.name)
        .await
        .map_err(store_status)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "no proxy status for workload {ns}/{}: not registered, or its proxy has not \
                 reported yet (see quiverctl proxy-status)",
                req.name
            ))
        })?;
    let snapshot = if bytes.is_empty() {
        None
    } else {
        Some(
            v1::ProxySnapshot::decode(bytes.as_slice())
                .map_err(|_| Status::internal("the kept snapshot does not decode"))?,
        )
    };
    Ok(v1::ProxyConfig {
        status: Some(state_of(&record, now_ms())),
        snapshot,
    })
}

/// What a stored row says about its proxy at `now_ms`.
pub fn state_of(r: &ProxyStatusRecord, now_ms: i64) -> v1::ProxyStatus {
    let applied = to_u64(r.applied_version);
    let latest = to_u64(r.latest_version).max(applied);
    let refused = to_u64(r.refused_version);
    let state = if applied >= latest {
        "SYNCED"
    } else if refused >= latest {
        "REFUSED"
    } else {
        "STALE"
    };
    let seconds = |from: i64| to_u64(now_ms.saturating_sub(from) / 1000);
    v1::ProxyStatus {
        namespace: r.namespace.clone(),
        workload: r.workload.clone(),
        service: r.service.clone(),
        spiffe_id: r.spiffe_id.clone(),
        proxy_version: r.proxy_version.clone(),
        applied_version: applied,
        latest_version: latest,
        state: state.into(),
        stale_since: if state == "STALE" {
            rfc3339(r.latest_since)
        } else {
            String::new()
        },
        refused_version: refused,
        refused_reason: r.refused_reason.clone(),
        certificate_expires_at: if r.cert_expires_at > 0 {
            rfc3339(r.cert_expires_at.saturating_mul(1000))
        } else {
            String::new()
        },
        last_seen: rfc3339(r.last_seen),
        applied_at: rfc3339(r.applied_at),
        stale_seconds: if state == "STALE" {
            seconds(r.latest_since)
        } else {
            0
        },
        last_seen_seconds: seconds(r.last_seen),
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(applied: i64, latest: i64, refused: i64) -> ProxyStatusRecord {
        ProxyStatusRecord {
            namespace: "shop".into(),
            workload: "reviews-1".into(),
            proxy_version: "0.1.0".into(),
            applied_version: applied,
            latest_version: latest,
            latest_since: 10_000,
            refused_version: refused,
            refused_reason: "routes[0]: bad".into(),
            last_seen: 40_000,
            ..Default::default()
        }
    }

    #[test]
    fn synced_stale_refused() {
        let s = state_of(&row(7, 7, 0), 70_000);
        assert_eq!((s.state.as_str(), s.stale_seconds), ("SYNCED", 0));
        assert_eq!(s.last_seen_seconds, 30);
        let s = state_of(&row(7, 9, 0), 70_000);
        assert_eq!((s.state.as_str(), s.stale_seconds), ("STALE", 60));
        assert!(!s.stale_since.is_empty());
        // Refused the latest push: REFUSED; refused an older one and the latest not applied
        // either: still STALE.
        assert_eq!(state_of(&row(7, 9, 9), 70_000).state, "REFUSED");
        assert_eq!(state_of(&row(7, 9, 8), 70_000).state, "STALE");
        // A report can be newer than the last recorded push.
        let s = state_of(&row(9, 7, 0), 70_000);
        assert_eq!((s.state.as_str(), s.latest_version), ("SYNCED", 9));
        // Reported before its first snapshot arrived, one pushed since: STALE.
        assert_eq!(state_of(&row(0, 3, 0), 70_000).state, "STALE");
    }
}
