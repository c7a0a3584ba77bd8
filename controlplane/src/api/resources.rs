//! The generic half of the admin API: Apply, Get, List, Delete and Watch for any kind, so the
//! per-kind RPCs in [`super::admin`] are one line each.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use quiver_api::resource::AnyResource;
use quiver_api::resource::{DEFAULT_NAMESPACE, Kind, Resource};
use quiver_api::v1::{self, watch_event};
use quiver_policy::gateway::GatewayRoute;
use quiver_policy::validate;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Status};

use super::{AdminApi, store_status};
use crate::auth::Role;
use crate::store::{Change, ChangeOp, StoredObject};

/// What every Watch RPC returns.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchEvent, Status>> + Send>>;

/// A resource the API serves: how it appears in a watch event and what Apply keeps of it.
pub trait ApiResource: Resource + Send + Sync + 'static {
    /// Controller-owned state that Apply must not overwrite. Only kinds with a status need it.
    fn keep_status_of(&mut self, _stored: &Self) {}
    /// Where the kind keeps a virtual IP the control plane assigns (Services only).
    fn virtual_ip_mut(&mut self) -> Option<&mut String> {
        None
    }
    fn into_event_object(self) -> watch_event::Object;
}

macro_rules! api_resource {
    ($($ty:ident => $variant:ident),*) => {$(
        impl ApiResource for v1::$ty {
            fn into_event_object(self) -> watch_event::Object {
                watch_event::Object::$variant(self)
            }
        }
    )*};
}
api_resource!(
    Route => Route,
    HttpRoute => HttpRoute,
    GrpcRoute => GrpcRoute,
    AuthorizationPolicy => AuthorizationPolicy,
    MeshConfig => MeshConfig
);

impl ApiResource for v1::Service {
    fn keep_status_of(&mut self, stored: &Self) {
        self.status = stored.status.clone();
    }
    fn virtual_ip_mut(&mut self) -> Option<&mut String> {
        Some(&mut self.status.get_or_insert_default().virtual_ip)
    }
    fn into_event_object(self) -> watch_event::Object {
        watch_event::Object::Service(self)
    }
}

impl ApiResource for v1::Canary {
    fn keep_status_of(&mut self, stored: &Self) {
        self.status = stored.status.clone();
    }
    fn into_event_object(self) -> watch_event::Object {
        watch_event::Object::Canary(self)
    }
}

impl ApiResource for v1::Workload {
    fn keep_status_of(&mut self, stored: &Self) {
        self.status = stored.status.clone();
    }
    fn into_event_object(self) -> watch_event::Object {
        watch_event::Object::Workload(self)
    }
}

fn namespace_or_default(ns: &str) -> &str {
    if ns.is_empty() { DEFAULT_NAMESPACE } else { ns }
}

fn require_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("name: required"));
    }
    Ok(())
}

/// Decode a stored object ([`crate::stored::decode`]); a body that does not decode is an
/// internal error.
pub fn decode<R: Resource>(obj: &StoredObject) -> Result<R, Status> {
    crate::stored::decode(obj).map_err(|_| Status::internal("stored object does not decode"))
}

/// Whether an Apply claims what the control plane assigns (a new Service's virtual IP): a
/// dry run must leave no trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Assign {
    Addresses,
    Nothing,
}

/// An Apply checked and encoded, ready to be written (or, for a dry run, not).
pub(super) struct Prepared<R> {
    pub namespace: String,
    pub name: String,
    /// The caller's resourceVersion precondition.
    pub expect: u64,
    /// The canonical encoding the store would hold.
    pub body: Vec<u8>,
    /// The object stored now.
    pub live: Option<StoredObject>,
    _kind: std::marker::PhantomData<R>,
}

impl AdminApi {
    pub(super) async fn apply<R: ApiResource>(
        &self,
        method: &'static str,
        req: Request<R>,
    ) -> Result<(R, v1::ApplyOutcome), Status> {
        self.inputs
            .tokens
            .authorize(req.metadata(), Role::Admin, method)
            .await?;
        let p = self
            .prepare_apply(req.into_inner(), &BTreeMap::new(), Assign::Addresses)
            .await?;
        let _t = self.inputs.metrics.store_timer("put");
        let (stored, outcome) = self
            .inputs
            .store
            .put(R::KIND, &p.namespace, &p.name, p.body, Some(p.expect))
            .await
            .map_err(store_status)?;
        Ok((decode(&stored)?, api_outcome(outcome)))
    }

    /// Everything an Apply does before it writes: the default namespace, validation against
    /// the referenced Services (from `pending`, keyed by namespace and name, else the store),
    /// the stored status kept (a new Service's virtual IP claimed, unless `assign` says this
    /// is a dry run), the canonical encoding. A dry run stops here.
    pub(super) async fn prepare_apply<R: ApiResource>(
        &self,
        mut obj: R,
        pending: &BTreeMap<(String, String), v1::ServiceSpec>,
        assign: Assign,
    ) -> Result<Prepared<R>, Status> {
        let store = self.inputs.store.as_ref();
        let meta = obj.metadata_mut();
        if meta.namespace.is_empty() {
            meta.namespace = DEFAULT_NAMESPACE.into();
        }
        let (ns, name, expect) = (
            meta.namespace.clone(),
            meta.name.clone(),
            meta.resource_version,
        );

        let any = obj.clone().into_any();
        let mut services = validate::ServiceSpecs::new();
        for svc in validate::referenced_services(&any) {
            if let Some(spec) = pending.get(&(ns.clone(), svc.clone())) {
                services.insert(svc, spec.clone());
                continue;
            }
            let _t = self.inputs.metrics.store_timer("get");
            if let Some(stored) = store
                .get(Kind::Service, &ns, &svc)
                .await
                .map_err(store_status)?
            {
                let s: v1::Service = decode(&stored)?;
                services.insert(svc, s.spec.unwrap_or_default());
            }
        }
        validate::validate(&any, &services).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_route_owner(&any, &ns, &name).await?;

        // Status is the controller's: keep the stored one (none for a new object).
        let live = self.get_stored::<R>(&ns, &name).await?;
        let stored = match &live {
            Some(stored) => decode(stored)?,
            None => R::default(),
        };
        obj.keep_status_of(&stored);
        if assign == Assign::Addresses
            && let Some(slot) = obj.virtual_ip_mut()
            && slot.is_empty()
        {
            let ip = crate::addresses::assign(store, self.inputs.service_vips, &ns, &name)
                .await
                .map_err(|e| match e {
                    crate::addresses::AssignError::Full(_) => {
                        Status::resource_exhausted(format!("Service {ns}/{name}: {e}"))
                    }
                    crate::addresses::AssignError::Store(e) => store_status(e),
                })?;
            *slot = ip.to_string();
        }
        let body = crate::stored::encode(obj)
            .map_err(|e| Status::invalid_argument(format!("{} {ns}/{name}: {e}", R::KIND)))?;
        Ok(Prepared {
            namespace: ns,
            name,
            expect,
            body,
            live,
            _kind: std::marker::PhantomData,
        })
    }

    /// A service's traffic has one owner: one Route, or the Gateway API routes of one kind
    /// attached to it (several HTTPRoutes merge, as Gateway API merges them). An apply that
    /// would give a service a second owner is refused, naming the first; the view settles
    /// applies that race past this on two replicas (`quiver_policy::gateway::governing_routes`).
    async fn check_route_owner(
        &self,
        any: &AnyResource,
        ns: &str,
        name: &str,
    ) -> Result<(), Status> {
        let (field, claims): (&str, Vec<String>) = match any {
            AnyResource::Route(r) => (
                "spec.service",
                r.spec.iter().map(|s| s.service.clone()).collect(),
            ),
            AnyResource::HttpRoute(r) => (
                "spec.parentRefs",
                GatewayRoute::Http(r)
                    .parents()
                    .into_iter()
                    .map(String::from)
                    .collect(),
            ),
            AnyResource::GrpcRoute(r) => (
                "spec.parentRefs",
                GatewayRoute::Grpc(r)
                    .parents()
                    .into_iter()
                    .map(String::from)
                    .collect(),
            ),
            _ => return Ok(()),
        };
        let mine = any.kind();
        for kind in [Kind::Route, Kind::HttpRoute, Kind::GrpcRoute] {
            // Several HTTPRoutes (or GRPCRoutes) on one Service merge.
            if kind == mine && kind != Kind::Route {
                continue;
            }
            let _t = self.inputs.metrics.store_timer("list");
            let (objects, _) = self
                .inputs
                .store
                .list(kind, Some(ns))
                .await
                .map_err(store_status)?;
            for obj in objects.iter().filter(|o| kind != mine || o.name != name) {
                let held: Vec<String> = match kind {
                    Kind::Route => decode::<v1::Route>(obj)?
                        .spec
                        .map(|s| vec![s.service])
                        .unwrap_or_default(),
                    Kind::HttpRoute => {
                        let r: v1::HttpRoute = decode(obj)?;
                        GatewayRoute::Http(&r)
                            .parents()
                            .into_iter()
                            .map(String::from)
                            .collect()
                    }
                    _ => {
                        let r: v1::GrpcRoute = decode(obj)?;
                        GatewayRoute::Grpc(&r)
                            .parents()
                            .into_iter()
                            .map(String::from)
                            .collect()
                    }
                };
                if let Some(service) = claims.iter().find(|c| held.contains(c)) {
                    return Err(Status::failed_precondition(format!(
                        "{mine} {ns}/{name}: {field}: service {service:?} is already routed by \
                         {kind} {ns}/{}; a service is routed by one Route, or by Gateway API \
                         routes of one kind (edit or delete that one first)",
                        obj.name
                    )));
                }
            }
        }
        Ok(())
    }

    async fn get_stored<R: Resource>(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, Status> {
        let _t = self.inputs.metrics.store_timer("get");
        self.inputs
            .store
            .get(R::KIND, ns, name)
            .await
            .map_err(store_status)
    }

    pub(super) async fn get<R: ApiResource>(
        &self,
        method: &'static str,
        req: Request<v1::GetRequest>,
    ) -> Result<R, Status> {
        self.inputs
            .tokens
            .authorize(req.metadata(), Role::Viewer, method)
            .await?;
        let req = req.into_inner();
        require_name(&req.name)?;
        let ns = namespace_or_default(&req.namespace);
        match self.get_stored::<R>(ns, &req.name).await? {
            Some(obj) => decode(&obj),
            None => Err(Status::not_found(format!(
                "{} {ns}/{} not found",
                R::KIND,
                req.name
            ))),
        }
    }

    pub(super) async fn list<R: ApiResource>(
        &self,
        method: &'static str,
        req: Request<v1::ListRequest>,
    ) -> Result<(Vec<R>, u64), Status> {
        self.inputs
            .tokens
            .authorize(req.metadata(), Role::Viewer, method)
            .await?;
        let ns = req.into_inner().namespace;
        let _t = self.inputs.metrics.store_timer("list");
        let (objects, version) = self
            .inputs
            .store
            .list(R::KIND, (!ns.is_empty()).then_some(ns.as_str()))
            .await
            .map_err(store_status)?;
        let items = objects.iter().map(decode).collect::<Result<Vec<R>, _>>()?;
        Ok((items, version))
    }

    pub(super) async fn delete<R: ApiResource>(
        &self,
        method: &'static str,
        req: Request<v1::DeleteRequest>,
    ) -> Result<v1::DeleteResponse, Status> {
        self.inputs
            .tokens
            .authorize(req.metadata(), Role::Admin, method)
            .await?;
        let req = req.into_inner();
        require_name(&req.name)?;
        let ns = namespace_or_default(&req.namespace);
        let _t = self.inputs.metrics.store_timer("delete");
        let change = self
            .inputs
            .store
            .delete(R::KIND, ns, &req.name, Some(req.resource_version))
            .await
            .map_err(store_status)?;
        if R::KIND == Kind::Service {
            // The address is free for another Service once this one is gone.
            self.inputs
                .store
                .release_service_address(ns, &req.name)
                .await
                .map_err(store_status)?;
        }
        Ok(v1::DeleteResponse {
            resource_version: change.resource_version,
        })
    }

    pub(super) async fn watch<R: ApiResource>(
        &self,
        method: &'static str,
        req: Request<v1::WatchRequest>,
    ) -> Result<WatchStream, Status> {
        self.inputs
            .tokens
            .authorize(req.metadata(), Role::Viewer, method)
            .await?;
        let req = req.into_inner();
        // Subscribe before reading the store, so nothing committed in between is missed.
        let live = self.inputs.feed.subscribe();
        let (tx, rx) = mpsc::channel(256);
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let _guard = inputs.metrics.watcher();
            let namespace = (!req.namespace.is_empty()).then_some(req.namespace);
            let watch = Watch::<R> {
                inputs: inputs.clone(),
                namespace,
                tx,
                _kind: std::marker::PhantomData,
            };
            if let Err(status) = watch.run(req.resource_version, live).await {
                let _ = watch.tx.send(Err(status)).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// One Watch stream: the initial snapshot (or a resume from a version), then live changes.
struct Watch<R> {
    inputs: Arc<super::Inputs>,
    namespace: Option<String>,
    tx: mpsc::Sender<Result<v1::WatchEvent, Status>>,
    _kind: std::marker::PhantomData<R>,
}

/// The client went away: stop quietly.
struct Gone;

impl<R: ApiResource> Watch<R> {
    async fn run(
        &self,
        from: u64,
        mut live: broadcast::Receiver<Arc<Change>>,
    ) -> Result<(), Status> {
        let store = self.inputs.store.as_ref();
        let mut last = if from == 0 {
            let (objects, snapshot) = store
                .list(R::KIND, self.namespace.as_deref())
                .await
                .map_err(store_status)?;
            for obj in &objects {
                if self
                    .send(
                        v1::watch_event::Type::Added,
                        obj.resource_version,
                        Some(decode::<R>(obj)?),
                    )
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            if self
                .send(v1::watch_event::Type::Synced, snapshot, None)
                .await
                .is_err()
            {
                return Ok(());
            }
            snapshot
        } else {
            let oldest = store.oldest_change().await.map_err(store_status)?;
            let current = store.current_version().await.map_err(store_status)?;
            if from < current && oldest.is_none_or(|o| o > from + 1) {
                return Err(Status::out_of_range(format!(
                    "resourceVersion {from} is too old (the change feed starts at {}); re-list",
                    oldest.unwrap_or(current)
                )));
            }
            let mut last = from;
            loop {
                let changes = store
                    .changes_since(last, 1000)
                    .await
                    .map_err(store_status)?;
                let n = changes.len();
                for change in changes {
                    last = change.resource_version;
                    if self.forward(&change).await.is_err() {
                        return Ok(());
                    }
                }
                if n < 1000 {
                    break last;
                }
            }
        };
        loop {
            tokio::select! {
                _ = self.tx.closed() => return Ok(()),
                msg = live.recv() => match msg {
                    Ok(change) => {
                        if change.resource_version <= last {
                            continue;
                        }
                        last = change.resource_version;
                        if self.forward(&change).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Err(Status::aborted(format!(
                            "watch fell {n} changes behind; re-list and watch again"
                        )));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Status::unavailable("server is shutting down"));
                    }
                },
            }
        }
    }

    async fn forward(&self, change: &Change) -> Result<(), Gone> {
        let obj = &change.object;
        if obj.kind != R::KIND
            || self
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != obj.namespace)
        {
            return Ok(());
        }
        let ty = match change.op {
            ChangeOp::Delete => v1::watch_event::Type::Deleted,
            ChangeOp::Create => v1::watch_event::Type::Added,
            ChangeOp::Update => v1::watch_event::Type::Modified,
        };
        match decode::<R>(obj) {
            Ok(r) => self.send(ty, change.resource_version, Some(r)).await,
            Err(status) => {
                let _ = self.tx.send(Err(status)).await;
                Err(Gone)
            }
        }
    }

    async fn send(
        &self,
        ty: v1::watch_event::Type,
        version: u64,
        obj: Option<R>,
    ) -> Result<(), Gone> {
        let event = v1::WatchEvent {
            r#type: ty as i32,
            resource_version: version,
            object: obj.map(ApiResource::into_event_object),
        };
        self.tx.send(Ok(event)).await.map_err(|_| Gone)
    }
}

/// The API's word for what a put did.
pub(super) fn api_outcome(outcome: crate::store::PutOutcome) -> v1::ApplyOutcome {
    match outcome {
        crate::store::PutOutcome::Created => v1::ApplyOutcome::Created,
        crate::store::PutOutcome::Updated => v1::ApplyOutcome::Updated,
        crate::store::PutOutcome::Unchanged => v1::ApplyOutcome::Unchanged,
    }
}

/// Objects per kind, for Status.
pub fn counts_by_kind(counts: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    Kind::ALL
        .iter()
        .map(|k| {
            (
                k.as_str().to_string(),
                counts.get(k.as_str()).copied().unwrap_or(0),
            )
        })
        .collect()
}
