//! Generates the `quiver.v1` protobuf/gRPC code and the file descriptor set for reflection.
//!
//! protoc: `$PROTOC` when set, else the binary shipped by `protoc-bin-vendored`, so a clean
//! clone builds without an apt step.

use std::path::PathBuf;

/// Resource messages that are also YAML/JSON documents: camelCase, unknown fields refused,
/// missing fields default (proto3 semantics).
const DOCUMENT_TYPES: &[&str] = &[
    "ObjectMeta",
    "Service",
    "ServiceSpec",
    "ServicePort",
    "Subset",
    "Route",
    "RouteSpec",
    "RouteRule",
    "RouteMatch",
    "PathMatch",
    "HeaderMatch",
    "QueryParamMatch",
    "HeaderModifier",
    "HTTPHeader",
    "PathModifier",
    "Redirect",
    "Rewrite",
    "WeightedBackend",
    "Retries",
    "Fault",
    "FaultDelay",
    "FaultAbort",
    "Mirror",
    "Canary",
    "CanarySpec",
    "SuccessCriteria",
    "CanaryStatus",
    "ServiceStatus",
    "CanaryWebhook",
    "CanaryCheck",
    "CanaryMeasure",
    "CanaryEvent",
    "AuthorizationPolicy",
    "AuthorizationPolicySpec",
    "AuthorizationRule",
    "MeshConfig",
    "MeshConfigSpec",
    "TracingConfig",
    "Workload",
    "WorkloadSpec",
    "WorkloadStatus",
    "HTTPRoute",
    "HTTPRouteSpec",
    "ParentReference",
    "HTTPRouteRule",
    "HTTPRouteMatch",
    "HTTPPathMatch",
    "HTTPHeaderMatch",
    "HTTPQueryParamMatch",
    "HTTPRouteFilter",
    "RequestRedirectFilter",
    "URLRewriteFilter",
    "HTTPPathModifier",
    "RequestMirrorFilter",
    "Fraction",
    "BackendObjectReference",
    "HTTPBackendRef",
    "HTTPRouteTimeouts",
    "GRPCRoute",
    "GRPCRouteSpec",
    "GRPCRouteRule",
    "GRPCRouteMatch",
    "GRPCMethodMatch",
    "GRPCRouteFilter",
];

/// Messages `quiverctl` prints as YAML/JSON (`proxy-status`, `proxy-config`), in the same
/// camelCase as the documents.
const OUTPUT_TYPES: &[&str] = &[
    "ProxyStatus",
    "ProxySnapshot",
    "SnapshotService",
    "SnapshotEndpoint",
    "SnapshotLocalService",
    "Revocation",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    // Printing any rerun-if line turns off cargo's default "any file changed" check, so name
    // the protos too.
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=quiver/v1");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);

    // Without the `full` feature: the messages alone (no tonic, so wasm32 builds them).
    let services = std::env::var_os("CARGO_FEATURE_FULL").is_some();
    let mut builder = tonic_prost_build::configure()
        .build_client(services)
        .build_server(services)
        .build_transport(services)
        .file_descriptor_set_path(out_dir.join("quiver_v1_descriptor.bin"))
        .btree_map(".");
    for ty in DOCUMENT_TYPES.iter().chain(OUTPUT_TYPES) {
        builder = builder.message_attribute(
            format!(".quiver.v1.{ty}"),
            "#[derive(serde::Serialize, serde::Deserialize)] \
             #[serde(default, rename_all = \"camelCase\", deny_unknown_fields)]",
        );
    }
    builder.compile_with_config(
        config,
        &["quiver/v1/resources.proto", "quiver/v1/admin.proto"],
        &["."],
    )?;
    Ok(())
}
