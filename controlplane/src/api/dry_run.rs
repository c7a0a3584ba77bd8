//! `DryRunApply`: an Apply of any kind checked exactly as the real one (the same
//! [`AdminApi::prepare_apply`] and the store's own [`put_outcome`] rule), answered with what
//! it would do. It must never write: no version is taken, no change reaches the feed.

use std::collections::BTreeMap;

use quiver_api::resource::DEFAULT_NAMESPACE;
use quiver_api::v1::{self, resource_object::Object};
use tonic::{Request, Status};

use super::resources::{ApiResource, api_outcome, decode};
use super::{AdminApi, store_status};
use crate::auth::Role;
use crate::store::{StoredObject, put_outcome};

/// A resource message and its place in [`v1::ResourceObject`].
trait Wrapped: ApiResource {
    fn wrap(self) -> Object;
}

macro_rules! wrapped {
    ($($ty:ident => $variant:ident),*) => {$(
        impl Wrapped for v1::$ty {
            fn wrap(self) -> Object {
                Object::$variant(self)
            }
        }
    )*};
}
wrapped!(
    Service => Service,
    Route => Route,
    HttpRoute => HttpRoute,
    GrpcRoute => GrpcRoute,
    Canary => Canary,
    AuthorizationPolicy => AuthorizationPolicy,
    MeshConfig => MeshConfig
);

impl AdminApi {
    pub(super) async fn dry_run_apply(
        &self,
        req: Request<v1::DryRunApplyRequest>,
    ) -> Result<v1::DryRunApplyResponse, Status> {
        self.inputs
            .tokens
            .authorize(req.metadata(), Role::Admin, "DryRunApply")
            .await?;
        let req = req.into_inner();
        let mut pending = BTreeMap::new();
        for (i, svc) in req.pending_services.into_iter().enumerate() {
            let meta = svc.metadata.unwrap_or_default();
            if meta.name.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "pendingServices[{i}].metadata.name: required"
                )));
            }
            let ns = if meta.namespace.is_empty() {
                DEFAULT_NAMESPACE.to_string()
            } else {
                meta.namespace
            };
            pending.insert((ns, meta.name), svc.spec.unwrap_or_default());
        }
        match req.object.and_then(|o| o.object) {
            Some(Object::Service(r)) => self.dry_run(r, &pending).await,
            Some(Object::Route(r)) => self.dry_run(r, &pending).await,
            Some(Object::Canary(r)) => self.dry_run(r, &pending).await,
            Some(Object::AuthorizationPolicy(r)) => self.dry_run(r, &pending).await,
            Some(Object::MeshConfig(r)) => self.dry_run(r, &pending).await,
            Some(Object::HttpRoute(r)) => self.dry_run(r, &pending).await,
            Some(Object::GrpcRoute(r)) => self.dry_run(r, &pending).await,
            None => Err(Status::invalid_argument(
                "object: required (one of service, route, canary, authorizationPolicy, \
                 meshConfig, httpRoute, grpcRoute)",
            )),
        }
    }

    async fn dry_run<R: Wrapped>(
        &self,
        obj: R,
        pending: &BTreeMap<(String, String), v1::ServiceSpec>,
    ) -> Result<v1::DryRunApplyResponse, Status> {
        let p = self
            .prepare_apply(obj, pending, super::resources::Assign::Nothing)
            .await?;
        let outcome = put_outcome(
            R::KIND,
            &p.namespace,
            &p.name,
            p.live
                .as_ref()
                .map(|l| (l.resource_version, l.body.as_slice())),
            &p.body,
            Some(p.expect),
        )
        .map_err(store_status)?;
        // The object as it would be stored, read back the way every stored object is; the
        // live object's bookkeeping, as no version is taken here.
        let would_be = StoredObject {
            kind: R::KIND,
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            resource_version: p.live.as_ref().map_or(0, |l| l.resource_version),
            body: p.body,
            created_at: p.live.as_ref().map_or(0, |l| l.created_at),
            updated_at: p.live.as_ref().map_or(0, |l| l.updated_at),
        };
        let mut object: R = decode(&would_be)?;
        if p.live.is_none() {
            let meta = object.metadata_mut();
            meta.created_at.clear();
            meta.updated_at.clear();
        }
        let live = match &p.live {
            Some(l) => Some(v1::ResourceObject {
                object: Some(decode::<R>(l)?.wrap()),
            }),
            None => None,
        };
        Ok(v1::DryRunApplyResponse {
            outcome: api_outcome(outcome) as i32,
            object: Some(v1::ResourceObject {
                object: Some(object.wrap()),
            }),
            live,
        })
    }
}
