//! The admin API client quiverctl uses, and per-kind dispatch over it.

use quiver_api::resource::{AnyResource, Kind};
use quiver_api::v1::{self, mesh_admin_client::MeshAdminClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use super::Connection;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = MeshAdminClient<InterceptedService<Channel, Bearer>>;

/// Connect to the control plane (flags and environment over the config file's context,
/// [`super::profiles::resolve`]).
pub async fn connect(conn: &Connection) -> anyhow::Result<Client> {
    let target = super::profiles::resolve(conn)?;
    connect_to(&target).await
}

/// Connect to a resolved target.
pub async fn connect_to(target: &super::profiles::Target) -> anyhow::Result<Client> {
    let from = target
        .context
        .as_ref()
        .map(|c| format!(" (context {c:?})"))
        .unwrap_or_default();
    let token = match target.token.as_deref().filter(|t| !t.trim().is_empty()) {
        Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
            anyhow::anyhow!("--token / QUIVER_TOKEN{from}: not a valid header value")
        })?),
        None => None,
    };
    let server = &target.server;
    let mut endpoint = Endpoint::from_shared(server.clone()).map_err(|e| {
        anyhow::anyhow!("--server / QUIVER_SERVER{from} {server:?}: not a URL: {e}")
    })?;
    if server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &target.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("--ca-file{from} {}: {e}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| anyhow::anyhow!("TLS setup for {server}: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the control plane at {server}{from} (set --server, QUIVER_SERVER or a context): {}",
            source_chain(&e)
        )
    })?;
    Ok(MeshAdminClient::with_interceptor(channel, Bearer(token)))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// A readable one-line (or multi-line, for validation) message for a failed call.
pub fn describe(status: &Status) -> String {
    let hint = match status.code() {
        tonic::Code::Unauthenticated => " (pass --token or set QUIVER_TOKEN)",
        tonic::Code::PermissionDenied => " (this needs an admin token)",
        tonic::Code::Aborted => " (get it again, re-apply your change)",
        _ => "",
    };
    format!("{:?}: {}{hint}", status.code(), status.message())
}

pub async fn get(
    c: &mut Client,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<AnyResource, Status> {
    let req = v1::GetRequest {
        namespace: namespace.into(),
        name: name.into(),
    };
    Ok(match kind {
        Kind::Service => AnyResource::Service(c.get_service(req).await?.into_inner()),
        Kind::Route => AnyResource::Route(c.get_route(req).await?.into_inner()),
        Kind::Canary => AnyResource::Canary(c.get_canary(req).await?.into_inner()),
        Kind::AuthorizationPolicy => {
            AnyResource::AuthorizationPolicy(c.get_authorization_policy(req).await?.into_inner())
        }
        Kind::MeshConfig => AnyResource::MeshConfig(c.get_mesh_config(req).await?.into_inner()),
        Kind::Workload => AnyResource::Workload(c.get_workload(req).await?.into_inner()),
        Kind::HttpRoute => AnyResource::HttpRoute(c.get_http_route(req).await?.into_inner()),
        Kind::GrpcRoute => AnyResource::GrpcRoute(c.get_grpc_route(req).await?.into_inner()),
    })
}

pub async fn list(c: &mut Client, kind: Kind, namespace: &str) -> Result<Vec<AnyResource>, Status> {
    let req = v1::ListRequest {
        namespace: namespace.into(),
    };
    fn wrap<T>(items: Vec<T>, f: fn(T) -> AnyResource) -> Vec<AnyResource> {
        items.into_iter().map(f).collect()
    }
    Ok(match kind {
        Kind::Service => wrap(
            c.list_services(req).await?.into_inner().items,
            AnyResource::Service,
        ),
        Kind::Route => wrap(
            c.list_routes(req).await?.into_inner().items,
            AnyResource::Route,
        ),
        Kind::Canary => wrap(
            c.list_canaries(req).await?.into_inner().items,
            AnyResource::Canary,
        ),
        Kind::AuthorizationPolicy => wrap(
            c.list_authorization_policies(req).await?.into_inner().items,
            AnyResource::AuthorizationPolicy,
        ),
        Kind::MeshConfig => wrap(
            c.list_mesh_configs(req).await?.into_inner().items,
            AnyResource::MeshConfig,
        ),
        Kind::Workload => wrap(
            c.list_workloads(req).await?.into_inner().items,
            AnyResource::Workload,
        ),
        Kind::HttpRoute => wrap(
            c.list_http_routes(req).await?.into_inner().items,
            AnyResource::HttpRoute,
        ),
        Kind::GrpcRoute => wrap(
            c.list_grpc_routes(req).await?.into_inner().items,
            AnyResource::GrpcRoute,
        ),
    })
}

/// Apply one resource; returns the stored resource and what happened.
pub async fn apply(
    c: &mut Client,
    r: AnyResource,
) -> Result<(AnyResource, v1::ApplyOutcome), Status> {
    fn outcome(o: i32) -> v1::ApplyOutcome {
        v1::ApplyOutcome::try_from(o).unwrap_or(v1::ApplyOutcome::Unspecified)
    }
    let missing = || Status::internal("server answered without the object");
    Ok(match r {
        AnyResource::Service(r) => {
            let resp = c.apply_service(r).await?.into_inner();
            (
                AnyResource::Service(resp.service.ok_or_else(missing)?),
                outcome(resp.outcome),
            )
        }
        AnyResource::Route(r) => {
            let resp = c.apply_route(r).await?.into_inner();
            (
                AnyResource::Route(resp.route.ok_or_else(missing)?),
                outcome(resp.outcome),
            )
        }
        AnyResource::Canary(r) => {
            let resp = c.apply_canary(r).await?.into_inner();
            (
                AnyResource::Canary(resp.canary.ok_or_else(missing)?),
                outcome(resp.outcome),
            )
        }
        AnyResource::AuthorizationPolicy(r) => {
            let resp = c.apply_authorization_policy(r).await?.into_inner();
            (
                AnyResource::AuthorizationPolicy(resp.authorization_policy.ok_or_else(missing)?),
                outcome(resp.outcome),
            )
        }
        AnyResource::MeshConfig(r) => {
            let resp = c.apply_mesh_config(r).await?.into_inner();
            (
                AnyResource::MeshConfig(resp.mesh_config.ok_or_else(missing)?),
                outcome(resp.outcome),
            )
        }
        AnyResource::HttpRoute(r) => {
            let resp = c.apply_http_route(r).await?.into_inner();
            (
                AnyResource::HttpRoute(resp.http_route.ok_or_else(missing)?),
                outcome(resp.outcome),
            )
        }
        AnyResource::GrpcRoute(r) => {
            let resp = c.apply_grpc_route(r).await?.into_inner();
            (
                AnyResource::GrpcRoute(resp.grpc_route.ok_or_else(missing)?),
                outcome(resp.outcome),
            )
        }
        AnyResource::Workload(_) => {
            return Err(Status::invalid_argument(
                "Workload is registered by proxies and cannot be applied",
            ));
        }
    })
}

pub async fn delete(
    c: &mut Client,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<u64, Status> {
    delete_at(c, kind, namespace, name, 0).await
}

/// Delete only if the object is still at `resource_version` (0: whatever it is at).
pub async fn delete_at(
    c: &mut Client,
    kind: Kind,
    namespace: &str,
    name: &str,
    resource_version: u64,
) -> Result<u64, Status> {
    let req = v1::DeleteRequest {
        namespace: namespace.into(),
        name: name.into(),
        resource_version,
    };
    let resp = match kind {
        Kind::Service => c.delete_service(req).await?,
        Kind::Route => c.delete_route(req).await?,
        Kind::Canary => c.delete_canary(req).await?,
        Kind::AuthorizationPolicy => c.delete_authorization_policy(req).await?,
        Kind::MeshConfig => c.delete_mesh_config(req).await?,
        Kind::HttpRoute => c.delete_http_route(req).await?,
        Kind::GrpcRoute => c.delete_grpc_route(req).await?,
        Kind::Workload => {
            return Err(Status::invalid_argument(
                "Workload is registered by proxies and cannot be deleted (its lease lapses)",
            ));
        }
    };
    Ok(resp.into_inner().resource_version)
}

/// What an apply of `r` would do, checked by the server without storing anything
/// (`DryRunApply`); `pending` are the Services the same apply writes first. Returns the
/// outcome, the object as it would be stored, and the live one.
pub async fn dry_run(
    c: &mut Client,
    r: AnyResource,
    pending: &[v1::Service],
) -> Result<(v1::ApplyOutcome, AnyResource, Option<AnyResource>), Status> {
    use v1::resource_object::Object;
    let object = match r {
        AnyResource::Service(r) => Object::Service(r),
        AnyResource::Route(r) => Object::Route(r),
        AnyResource::Canary(r) => Object::Canary(r),
        AnyResource::AuthorizationPolicy(r) => Object::AuthorizationPolicy(r),
        AnyResource::MeshConfig(r) => Object::MeshConfig(r),
        AnyResource::HttpRoute(r) => Object::HttpRoute(r),
        AnyResource::GrpcRoute(r) => Object::GrpcRoute(r),
        AnyResource::Workload(_) => {
            return Err(Status::invalid_argument(
                "Workload is registered by proxies and cannot be applied",
            ));
        }
    };
    let resp = c
        .dry_run_apply(v1::DryRunApplyRequest {
            object: Some(v1::ResourceObject {
                object: Some(object),
            }),
            pending_services: pending.to_vec(),
        })
        .await?
        .into_inner();
    fn unwrap(o: Option<v1::ResourceObject>) -> Option<AnyResource> {
        Some(match o?.object? {
            Object::Service(r) => AnyResource::Service(r),
            Object::Route(r) => AnyResource::Route(r),
            Object::Canary(r) => AnyResource::Canary(r),
            Object::AuthorizationPolicy(r) => AnyResource::AuthorizationPolicy(r),
            Object::MeshConfig(r) => AnyResource::MeshConfig(r),
            Object::HttpRoute(r) => AnyResource::HttpRoute(r),
            Object::GrpcRoute(r) => AnyResource::GrpcRoute(r),
        })
    }
    let outcome = v1::ApplyOutcome::try_from(resp.outcome).unwrap_or(v1::ApplyOutcome::Unspecified);
    let object = unwrap(resp.object)
        .ok_or_else(|| Status::internal("server answered without the object"))?;
    Ok((outcome, object, unwrap(resp.live)))
}

/// Whether a failed call means the object is not there.
pub fn is_not_found(status: &Status) -> bool {
    status.code() == tonic::Code::NotFound
}
