//! `quiverctl get KIND [NAME] -w`: one line per event of the kind's Watch stream
//! (`ADDED route shop/reviews v42`), until interrupted or the server ends the stream.

use anyhow::bail;
use quiver_api::resource::Kind;
use quiver_api::v1::{self, watch_event};

use super::Connection;
use super::client::{self, describe};
use super::resources::parse_kind;

pub async fn run(
    conn: &Connection,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    watch_only: bool,
) -> anyhow::Result<()> {
    let kind = parse_kind(kind)?;
    // As `get`: a NAME without -n is in "default"; a listing without -n is every namespace.
    let namespace = match (name, namespace) {
        (_, Some(ns)) => ns.to_string(),
        (Some(_), None) => quiver_api::resource::DEFAULT_NAMESPACE.to_string(),
        (None, None) => String::new(),
    };
    let req = v1::WatchRequest {
        namespace,
        resource_version: 0,
    };
    let mut c = client::connect(conn).await?;
    let started = match kind {
        Kind::Service => c.watch_services(req).await,
        Kind::Route => c.watch_routes(req).await,
        Kind::Canary => c.watch_canaries(req).await,
        Kind::AuthorizationPolicy => c.watch_authorization_policies(req).await,
        Kind::MeshConfig => c.watch_mesh_configs(req).await,
        Kind::Workload => c.watch_workloads(req).await,
        Kind::HttpRoute => c.watch_http_routes(req).await,
        Kind::GrpcRoute => c.watch_grpc_routes(req).await,
    };
    let mut stream = started
        .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
        .into_inner();
    let word = kind.as_str().to_ascii_lowercase();
    // The stream opens with the objects there now, up to SYNCED; --watch-only skips them.
    let mut synced = false;
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => bail!("the control plane ended the watch"),
            Err(s) => bail!("watch ended: {}", describe(&s)),
        };
        let ty = watch_event::Type::try_from(event.r#type).unwrap_or_default();
        let label = match ty {
            watch_event::Type::Synced => {
                synced = true;
                continue;
            }
            watch_event::Type::Added => "ADDED",
            watch_event::Type::Modified => "MODIFIED",
            watch_event::Type::Deleted => "DELETED",
            watch_event::Type::Unspecified => continue,
        };
        if watch_only && !synced {
            continue;
        }
        let Some(meta) = event.object.as_ref().and_then(object_meta) else {
            continue;
        };
        if name.is_some_and(|n| n != meta.name) {
            continue;
        }
        println!(
            "{label} {word} {}/{} v{}",
            meta.namespace, meta.name, event.resource_version
        );
    }
}

fn object_meta(object: &watch_event::Object) -> Option<&v1::ObjectMeta> {
    use watch_event::Object;
    match object {
        Object::Service(r) => r.metadata.as_ref(),
        Object::Route(r) => r.metadata.as_ref(),
        Object::Canary(r) => r.metadata.as_ref(),
        Object::AuthorizationPolicy(r) => r.metadata.as_ref(),
        Object::MeshConfig(r) => r.metadata.as_ref(),
        Object::Workload(r) => r.metadata.as_ref(),
        Object::HttpRoute(r) => r.metadata.as_ref(),
        Object::GrpcRoute(r) => r.metadata.as_ref(),
    }
}
