//! One replica's in-memory view of what proxies are sent: Services, Routes,
//! AuthorizationPolicies, Workloads and the MeshConfig, kept current from the change feed.
//!
//! One task per replica applies changes in batches (everything already queued is applied
//! before publishing, which coalesces bursts) and publishes an immutable [`MeshState`] on a
//! `tokio::sync::watch` channel. Watch streams read the latest state; a slow stream skips
//! intermediate states instead of queueing them. Namespaces untouched by a batch keep their
//! `Arc`, so a state change costs only the namespaces it touches. This module must not know
//! about individual proxies: building a proxy's snapshot is [`super::snapshot`]'s job.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use quiver_api::resource::{DEFAULT_NAMESPACE, Kind};
use quiver_api::v1;
use tokio::sync::{broadcast, watch};

use crate::store::{Change, ChangeOp, Feed, Store, StoreError, StoredObject};
use crate::stored::decode;

/// The name of the one MeshConfig (in namespace `default`).
pub const MESH_CONFIG_NAME: &str = "mesh";

/// Kinds the view follows (Canaries for the weights they put in effect).
const KINDS: [Kind; 8] = [
    Kind::MeshConfig,
    Kind::Service,
    Kind::Route,
    Kind::HttpRoute,
    Kind::GrpcRoute,
    Kind::Canary,
    Kind::AuthorizationPolicy,
    Kind::Workload,
];

/// The objects of one namespace, plus what every proxy of the namespace is sent alike.
#[derive(Debug, Default)]
pub struct NamespaceState {
    pub services: BTreeMap<String, v1::Service>,
    /// The Routes that govern its services, one per service (derived:
    /// `quiver_policy::gateway::governing_routes` over Routes and Gateway API routes).
    pub routes: Vec<v1::Route>,
    pub policies: BTreeMap<String, v1::AuthorizationPolicy>,
    pub workloads: BTreeMap<String, v1::Workload>,
    /// Every Service with its live endpoints, ordered by name (derived).
    pub callable: Vec<v1::SnapshotService>,
}

/// Everything proxies are sent, at one store version.
#[derive(Debug, Default)]
pub struct MeshState {
    /// The last change reflected here.
    pub version: u64,
    pub trust_domain: String,
    pub mesh: Arc<v1::MeshConfigSpec>,
    pub namespaces: BTreeMap<String, Arc<NamespaceState>>,
}

/// A running view. Dropping it stops the task.
pub struct MeshView {
    rx: watch::Receiver<Arc<MeshState>>,
    /// The last store version this view has read from the feed, of any kind.
    seen: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MeshView {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MeshView {
    /// Load the current state and follow `feed` from here on.
    pub async fn start(
        store: Arc<dyn Store>,
        feed: &Feed,
        trust_domain: &str,
    ) -> Result<Self, StoreError> {
        // Subscribe before listing, so nothing committed in between is missed.
        let live = feed.subscribe();
        let mut model = Model::load(store.as_ref(), trust_domain).await?;
        let (seen_tx, seen) = watch::channel(model.seen);
        let (tx, rx) = watch::channel(model.publish(None));
        let task = tokio::spawn(follow(store, model, live, tx, seen_tx));
        Ok(Self { rx, seen, task })
    }

    /// Wait until this view reflects every change up to `version` (for example the store's
    /// version when a proxy asked for its first snapshot), so a caller never gets a state
    /// older than a write that had already returned. Returns false if the view stopped.
    pub async fn caught_up(&self, version: u64) -> bool {
        let mut seen = self.seen.clone();
        seen.wait_for(|v| *v >= version).await.is_ok()
    }

    /// The latest state, and a receiver that is told when a newer one is published.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshState>> {
        self.rx.clone()
    }

    pub fn current(&self) -> Arc<MeshState> {
        self.rx.borrow().clone()
    }
}

async fn follow(
    store: Arc<dyn Store>,
    mut model: Model,
    mut live: broadcast::Receiver<Arc<Change>>,
    tx: watch::Sender<Arc<MeshState>>,
    seen: watch::Sender<u64>,
) {
    loop {
        let first = match live.recv().await {
            Ok(c) => c,
            Err(broadcast::error::RecvError::Closed) => return,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "mesh view fell behind the change feed; reloading"
                );
                model = reload(store.as_ref(), &model.trust_domain, &mut live).await;
                tx.send_replace(model.publish(None));
                seen.send_replace(model.seen);
                continue;
            }
        };
        let mut touched = BTreeSet::new();
        let mut mesh_touched = model.apply(&first, &mut touched);
        // Coalesce: apply whatever else is already queued before publishing once.
        loop {
            match live.try_recv() {
                Ok(c) => mesh_touched |= model.apply(&c, &mut touched),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    model = reload(store.as_ref(), &model.trust_domain, &mut live).await;
                    touched.clear();
                    mesh_touched = true;
                    touched.extend(model.namespaces.keys().cloned());
                    break;
                }
                Err(_) => break,
            }
        }
        if mesh_touched || !touched.is_empty() {
            tx.send_replace(model.publish(Some(&touched)));
        }
        // After publishing: whoever waits on `seen` then reads a state that includes it.
        seen.send_replace(model.seen);
    }
}

/// Reload from the store, retrying until it answers (the last state stays published).
async fn reload(
    store: &dyn Store,
    trust_domain: &str,
    live: &mut broadcast::Receiver<Arc<Change>>,
) -> Model {
    loop {
        *live = live.resubscribe();
        match Model::load(store, trust_domain).await {
            Ok(m) => return m,
            Err(e) => {
                tracing::warn!(error = %e, "reloading the mesh view failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// The mutable side: raw objects per namespace, and the last published namespace states.
struct Model {
    trust_domain: String,
    version: u64,
    /// The last change read from the feed or list, of any kind (`version` counts only the
    /// kinds proxies are sent).
    seen: u64,
    /// Per kind, the version its initial list reflected: older changes are already in.
    listed_at: HashMap<Kind, u64>,
    mesh: Arc<v1::MeshConfigSpec>,
    namespaces: BTreeMap<String, Raw>,
    published: BTreeMap<String, Arc<NamespaceState>>,
}

/// The objects of one namespace, by name.
#[derive(Debug, Default, Clone)]
pub struct Raw {
    pub services: BTreeMap<String, v1::Service>,
    pub routes: BTreeMap<String, v1::Route>,
    pub http_routes: BTreeMap<String, v1::HttpRoute>,
    pub grpc_routes: BTreeMap<String, v1::GrpcRoute>,
    pub canaries: BTreeMap<String, v1::Canary>,
    pub policies: BTreeMap<String, v1::AuthorizationPolicy>,
    pub workloads: BTreeMap<String, v1::Workload>,
}

impl Model {
    async fn load(store: &dyn Store, trust_domain: &str) -> Result<Self, StoreError> {
        let mut model = Model {
            trust_domain: trust_domain.into(),
            version: 0,
            seen: 0,
            listed_at: HashMap::new(),
            mesh: Arc::default(),
            namespaces: BTreeMap::new(),
            published: BTreeMap::new(),
        };
        for kind in KINDS {
            let (objects, at) = store.list(kind, None).await?;
            model.listed_at.insert(kind, at);
            model.version = model.version.max(at);
            model.seen = model.seen.max(at);
            for obj in &objects {
                model.put(obj);
            }
        }
        Ok(model)
    }

    /// Apply one change; returns whether the MeshConfig changed and records the namespace.
    fn apply(&mut self, change: &Change, touched: &mut BTreeSet<String>) -> bool {
        let obj = &change.object;
        self.seen = self.seen.max(change.resource_version);
        if !KINDS.contains(&obj.kind)
            || self
                .listed_at
                .get(&obj.kind)
                .is_some_and(|at| change.resource_version <= *at)
        {
            return false;
        }
        self.version = self.version.max(change.resource_version);
        let is_mesh = obj.kind == Kind::MeshConfig;
        match change.op {
            ChangeOp::Delete => self.remove(obj),
            ChangeOp::Create | ChangeOp::Update => self.put(obj),
        }
        if !is_mesh {
            touched.insert(obj.namespace.clone());
        }
        is_mesh
    }

    fn put(&mut self, obj: &StoredObject) {
        let ns = self.namespaces.entry(obj.namespace.clone()).or_default();
        let name = obj.name.clone();
        // A body that does not decode was refused on write; skip it rather than stall.
        match obj.kind {
            Kind::Service => {
                if let Ok(s) = decode(obj) {
                    ns.services.insert(name, s);
                }
            }
            Kind::Route => {
                if let Ok(r) = decode(obj) {
                    ns.routes.insert(name, r);
                }
            }
            Kind::HttpRoute => {
                if let Ok(r) = decode(obj) {
                    ns.http_routes.insert(name, r);
                }
            }
            Kind::GrpcRoute => {
                if let Ok(r) = decode(obj) {
                    ns.grpc_routes.insert(name, r);
                }
            }
            Kind::AuthorizationPolicy => {
                if let Ok(p) = decode(obj) {
                    ns.policies.insert(name, p);
                }
            }
            Kind::Workload => {
                if let Ok(w) = decode(obj) {
                    ns.workloads.insert(name, w);
                }
            }
            Kind::MeshConfig => {
                if obj.namespace == DEFAULT_NAMESPACE && obj.name == MESH_CONFIG_NAME {
                    let m: Option<v1::MeshConfig> = decode(obj).ok();
                    self.mesh = Arc::new(m.and_then(|m| m.spec).unwrap_or_default());
                }
            }
            Kind::Canary => {
                if let Ok(c) = decode(obj) {
                    ns.canaries.insert(name, c);
                }
            }
        }
    }

    fn remove(&mut self, obj: &StoredObject) {
        if obj.kind == Kind::MeshConfig {
            if obj.namespace == DEFAULT_NAMESPACE && obj.name == MESH_CONFIG_NAME {
                self.mesh = Arc::default();
            }
            return;
        }
        let Some(ns) = self.namespaces.get_mut(&obj.namespace) else {
            return;
        };
        match obj.kind {
            Kind::Service => drop(ns.services.remove(&obj.name)),
            Kind::Route => drop(ns.routes.remove(&obj.name)),
            Kind::HttpRoute => drop(ns.http_routes.remove(&obj.name)),
            Kind::GrpcRoute => drop(ns.grpc_routes.remove(&obj.name)),
            Kind::Canary => drop(ns.canaries.remove(&obj.name)),
            Kind::AuthorizationPolicy => drop(ns.policies.remove(&obj.name)),
            Kind::Workload => drop(ns.workloads.remove(&obj.name)),
            Kind::MeshConfig => {}
        }
    }

    /// A new immutable state; `touched` None rebuilds every namespace.
    fn publish(&mut self, touched: Option<&BTreeSet<String>>) -> Arc<MeshState> {
        let rebuild: Vec<String> = match touched {
            Some(t) => t.iter().cloned().collect(),
            None => {
                self.published.clear();
                self.namespaces.keys().cloned().collect()
            }
        };
        for name in rebuild {
            match self.namespaces.get(&name) {
                Some(raw) => {
                    let built = build_namespace(&self.trust_domain, &name, raw.clone());
                    self.published.insert(name, Arc::new(built));
                }
                None => {
                    self.published.remove(&name);
                }
            }
        }
        Arc::new(MeshState {
            version: self.version,
            trust_domain: self.trust_domain.clone(),
            mesh: self.mesh.clone(),
            namespaces: self.published.clone(),
        })
    }
}

/// The SPIFFE id a Service's workloads run as.
pub fn service_identity(trust_domain: &str, namespace: &str, svc: &v1::Service) -> String {
    format!(
        "spiffe://{trust_domain}/ns/{namespace}/sa/{}",
        service_account(svc)
    )
}

/// `spec.serviceAccount`, defaulting to the service's name.
pub fn service_account(svc: &v1::Service) -> &str {
    let sa = svc
        .spec
        .as_ref()
        .map(|s| s.service_account.as_str())
        .unwrap_or_default();
    if sa.is_empty() {
        svc.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("")
    } else {
        sa
    }
}

/// Derive a namespace's state (endpoints per service) from its objects.
pub fn build_namespace(trust_domain: &str, namespace: &str, raw: Raw) -> NamespaceState {
    let mut endpoints: BTreeMap<&str, Vec<v1::SnapshotEndpoint>> = BTreeMap::new();
    for (name, w) in &raw.workloads {
        let Some(spec) = &w.spec else { continue };
        endpoints
            .entry(spec.service.as_str())
            .or_default()
            .push(v1::SnapshotEndpoint {
                address: spec.address.clone(),
                spiffe_id: spec.spiffe_id.clone(),
                labels: spec.labels.clone(),
                zone: spec.zone.clone(),
                workload: name.clone(),
            });
    }
    let callable = raw
        .services
        .iter()
        .map(|(name, svc)| {
            let spec = svc.spec.clone().unwrap_or_default();
            let mut eps = endpoints.remove(name.as_str()).unwrap_or_default();
            eps.sort_by(|a, b| a.address.cmp(&b.address));
            v1::SnapshotService {
                name: name.clone(),
                namespace: namespace.into(),
                ports: spec.ports,
                subsets: spec.subsets,
                spiffe_id: service_identity(trust_domain, namespace, svc),
                endpoints: eps,
                virtual_ip: svc
                    .status
                    .as_ref()
                    .map(|s| s.virtual_ip.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    NamespaceState {
        services: raw.services,
        routes: quiver_policy::gateway::governing_routes(
            namespace,
            &raw.routes.values().collect::<Vec<_>>(),
            &raw.http_routes.values().collect::<Vec<_>>(),
            &raw.grpc_routes.values().collect::<Vec<_>>(),
            &raw.canaries.values().collect::<Vec<_>>(),
        ),
        policies: raw.policies,
        workloads: raw.workloads,
        callable,
    }
}
