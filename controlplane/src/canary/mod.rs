//! The canary controller: drives every Canary from the proxies' real telemetry, one replica
//! per canary.
//!
//! Every [`TICK`] each replica lists the Canaries and, for each, claims the store's lease on
//! driving it ([`LEASE_TTL`]; another replica takes over when the holder stops renewing,
//! e.g. when it dies). The holder asks `quiver_policy::canary` what is due (start, a check,
//! nothing), measures a check from the edge statistics the proxies report for the service's
//! stable and canary subsets since the step began, and writes the new status with the
//! version it read (a concurrent spec apply or manual action wins; the next tick sees it).
//! The status is written only here and by the manual actions ([`act`]): `Apply` keeps the
//! stored status. The weights take effect through the discovery view, which applies each
//! canary's weight to its service's route (`quiver_policy::gateway::governing_routes`).
//! State lives in the Canary's status, so a restarted control plane resumes where it was.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use quiver_api::resource::Kind;
use quiver_api::v1;
use quiver_policy::canary::{self, Action, Due, Gates, Settings, Totals};
use tokio::sync::watch;

use crate::discovery::view::MeshState;
use crate::store::{Store, StoreError, StoredObject, now_ms};
use crate::stored::decode;

mod webhooks;

/// How often each replica looks at every canary.
pub const TICK: Duration = Duration::from_secs(1);
/// How long a replica's claim on driving a canary lasts without renewal: the longest a
/// canary waits for another replica when its driver dies.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// Drive canaries until the task is dropped. `holder` names this replica in leases and in
/// `status.driver`.
pub async fn run(store: Arc<dyn Store>, mesh: watch::Receiver<Arc<MeshState>>, holder: String) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let state = mesh.borrow().clone();
        if let Err(e) = tick(store.as_ref(), &state, &holder, now_ms()).await {
            tracing::warn!(error = %e, "canary controller: a pass failed; retrying next tick");
        }
    }
}

/// One pass over every canary.
pub async fn tick(
    store: &dyn Store,
    mesh: &MeshState,
    holder: &str,
    now: i64,
) -> Result<(), StoreError> {
    let (canaries, _) = store.list(Kind::Canary, None).await?;
    let ttl = i64::try_from(LEASE_TTL.as_millis()).unwrap_or(i64::MAX);
    for obj in canaries {
        let key = lease_name(&obj.namespace, &obj.name);
        if !store
            .claim_controller_lease(&key, holder, now.saturating_add(ttl), now)
            .await?
        {
            continue;
        }
        let Ok(c) = decode::<v1::Canary>(&obj) else {
            continue;
        };
        if let Err(e) = drive(store, mesh, holder, &obj, c, now).await {
            tracing::warn!(error = %e, canary = %key, "canary controller: driving failed");
        }
    }
    Ok(())
}

fn lease_name(namespace: &str, name: &str) -> String {
    format!("Canary/{namespace}/{name}")
}

async fn drive(
    store: &dyn Store,
    mesh: &MeshState,
    holder: &str,
    obj: &StoredObject,
    c: v1::Canary,
    now: i64,
) -> Result<(), StoreError> {
    let spec = c.spec.clone().unwrap_or_default();
    let Some(settings) = Settings::from_spec(&spec) else {
        return Ok(());
    };
    let status = c.status.clone().unwrap_or_default();
    let observed = observed(&spec, mesh, &obj.namespace);
    let (ns, name) = (obj.namespace.as_str(), obj.name.as_str());
    let next = match canary::due(&settings, &status, &observed, now) {
        Due::Start(reason) => match webhooks::gate(ns, name, &spec, "pre-rollout", &status).await {
            Some(refused) => {
                canary::pre_rollout_failed(&settings, &status, &observed, &refused, now)
            }
            None => canary::start(&settings, &status, &observed, &reason, now),
        },
        Due::Check { since_ms } => {
            let edges = store
                .edge_stats_since(since_ms.saturating_mul(1_000_000), Some(&obj.namespace))
                .await?;
            let mut stable = Totals::default();
            let mut canary_totals = Totals::default();
            for e in edges
                .iter()
                .filter(|e| e.destination_service == spec.service)
            {
                let t = if e.destination_subset == spec.canary_subset {
                    &mut canary_totals
                } else if e.destination_subset == spec.stable_subset {
                    &mut stable
                } else {
                    continue;
                };
                t.add(
                    u64::try_from(e.requests).unwrap_or(0),
                    u64::try_from(e.errors).unwrap_or(0),
                    &e.latency_buckets,
                );
            }
            let canary_measure = canary_totals.measure();
            let mut gates = Gates {
                rollout: webhooks::gate(ns, name, &spec, "rollout", &status).await,
                confirm_promotion: None,
            };
            if gates.rollout.is_none() && canary::would_promote(&settings, &status, &canary_measure)
            {
                gates.confirm_promotion =
                    webhooks::gate(ns, name, &spec, "confirm-promotion", &status).await;
            }
            canary::after_check(
                &settings,
                &status,
                canary_measure,
                stable.measure(),
                &gates,
                now,
            )
        }
        Due::Nothing => return Ok(()),
    };
    let transitioned =
        next.events.len() != status.events.len() || next.events.last() != status.events.last();
    if next.phase != status.phase {
        tracing::info!(
            canary = %format!("{}/{}", obj.namespace, obj.name),
            phase = %next.phase,
            weight = next.canary_weight,
            message = %next.message,
            "canary"
        );
    }
    let written = write_status(store, obj, c, next.clone(), holder).await?;
    if transitioned && written.is_some() {
        webhooks::notify(ns, name, &spec, &next);
    }
    Ok(())
}

/// What the analysis depends on, hashed: the spec, and the label sets of the canary subset's
/// workloads (a new version registering with other labels restarts the analysis; more
/// replicas of the same version do not).
fn observed(spec: &v1::CanarySpec, mesh: &MeshState, namespace: &str) -> String {
    let mut input = prost::Message::encode_to_vec(spec);
    if let Some(ns) = mesh.namespaces.get(namespace) {
        let selector = ns
            .services
            .get(&spec.service)
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.subsets.iter().find(|s| s.name == spec.canary_subset))
            .map(|s| s.labels.clone());
        if let Some(selector) = selector {
            let labels: BTreeSet<Vec<(String, String)>> = ns
                .workloads
                .values()
                .filter_map(|w| w.spec.as_ref())
                .filter(|w| w.service == spec.service)
                .filter(|w| quiver_policy::selects(&selector, &w.labels))
                .map(|w| w.labels.clone().into_iter().collect())
                .collect();
            for set in labels {
                for (k, v) in set {
                    input.extend_from_slice(k.as_bytes());
                    input.push(b'=');
                    input.extend_from_slice(v.as_bytes());
                    input.push(b',');
                }
                input.push(b';');
            }
        }
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Store `status` as the canary's, if it is still at the version read (false when someone
/// changed it meanwhile: the next tick sees what they did).
async fn write_status(
    store: &dyn Store,
    obj: &StoredObject,
    mut c: v1::Canary,
    mut status: v1::CanaryStatus,
    holder: &str,
) -> Result<Option<v1::Canary>, StoreError> {
    status.driver = holder.to_string();
    c.status = Some(status);
    let meta = quiver_api::resource::Resource::metadata_mut(&mut c);
    meta.resource_version = 0;
    meta.created_at.clear();
    meta.updated_at.clear();
    let body = prost::Message::encode_to_vec(&c);
    match store
        .put(
            Kind::Canary,
            &obj.namespace,
            &obj.name,
            body,
            Some(obj.resource_version),
        )
        .await
    {
        Ok((stored, _)) => Ok(decode(&stored).ok()),
        Err(StoreError::Conflict { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A manual action (pause, resume, promote, abort) on canary `namespace/name`, written at
/// once whoever drives it. `Err` carries the reason for the caller (not found, not
/// applicable in its phase).
pub async fn act(
    store: &dyn Store,
    namespace: &str,
    name: &str,
    action: Action,
    reason: &str,
    by: &str,
) -> Result<v1::Canary, ActError> {
    // A few tries: the driving replica may write between our read and write.
    for _ in 0..5 {
        let obj = store
            .get(Kind::Canary, namespace, name)
            .await?
            .ok_or_else(|| ActError::NotFound(format!("canary {namespace}/{name} not found")))?;
        let c: v1::Canary = decode(&obj)
            .map_err(|_| ActError::Invalid(format!("canary {namespace}/{name} does not decode")))?;
        let spec = c.spec.clone().unwrap_or_default();
        let settings = Settings::from_spec(&spec).ok_or_else(|| {
            ActError::Invalid(format!("canary {namespace}/{name} has no valid spec"))
        })?;
        let status = c.status.clone().unwrap_or_default();
        let next =
            canary::act(&settings, &status, action, reason, now_ms()).map_err(ActError::Invalid)?;
        let driver = if status.driver.is_empty() {
            by.to_string()
        } else {
            status.driver.clone()
        };
        if let Some(stored) = write_status(store, &obj, c, next.clone(), &driver).await? {
            webhooks::notify(namespace, name, &spec, &next);
            return Ok(stored);
        }
    }
    Err(ActError::Busy(format!(
        "canary {namespace}/{name} kept changing; try again"
    )))
}

/// Why a manual action was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::discovery::view::NamespaceState;

    fn workload(name: &str, labels: &[(&str, &str)]) -> (String, v1::Workload) {
        (
            name.to_string(),
            v1::Workload {
                spec: Some(v1::WorkloadSpec {
                    service: "reviews".into(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    fn mesh(workloads: &[(&str, &[(&str, &str)])]) -> MeshState {
        let service = v1::Service {
            spec: Some(v1::ServiceSpec {
                subsets: vec![v1::Subset {
                    name: "canary".into(),
                    labels: [("track".to_string(), "canary".to_string())].into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let ns = NamespaceState {
            services: [("reviews".to_string(), service)].into(),
            workloads: workloads
                .iter()
                .map(|(n, l)| workload(n, l))
                .collect::<BTreeMap<_, _>>(),
            ..Default::default()
        };
        MeshState {
            namespaces: [("default".to_string(), Arc::new(ns))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_version_in_the_canary_subset_changes_what_was_observed_and_a_replica_does_not() {
        let spec = v1::CanarySpec {
            service: "reviews".into(),
            stable_subset: "stable".into(),
            canary_subset: "canary".into(),
            steps: vec![50],
            interval: "1m".into(),
            ..Default::default()
        };
        let v2 = [("track", "canary"), ("version", "v2")];
        let one = observed(&spec, &mesh(&[("a", &v2)]), "default");
        assert_eq!(
            one,
            observed(&spec, &mesh(&[("a", &v2), ("b", &v2)]), "default")
        );
        let v3 = [("track", "canary"), ("version", "v3")];
        assert_ne!(one, observed(&spec, &mesh(&[("a", &v3)]), "default"));
        // A stable workload is not the canary's.
        let stable = [("track", "stable"), ("version", "v1")];
        assert_eq!(
            one,
            observed(&spec, &mesh(&[("a", &v2), ("s", &stable)]), "default")
        );
        // A spec change restarts too.
        let faster = v1::CanarySpec {
            interval: "30s".into(),
            ..spec.clone()
        };
        assert_ne!(one, observed(&faster, &mesh(&[("a", &v2)]), "default"));
    }
}
