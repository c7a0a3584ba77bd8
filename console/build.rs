//! Generates the quiver.v1 MeshAdmin client (no server, no transport) from the workspace's
//! proto/ files, over quiver-api's message types: the console speaks the same API as
//! quiverctl, with the same Rust types the policy compiler takes.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../proto/quiver/v1");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .btree_map(".")
        // The messages are quiver-api's own types; only the client is generated here.
        .extern_path(".quiver.v1", "::quiver_api::v1")
        .compile_with_config(
            config,
            &["quiver/v1/resources.proto", "quiver/v1/admin.proto"],
            &["../proto"],
        )?;
    Ok(())
}
