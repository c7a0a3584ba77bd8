//! Generates the demo's `quiver.demo.Ratings` gRPC code (the sample app behind
//! the demo). protoc: `$PROTOC` when set, else the vendored binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto/demo.proto");
    let mut config = prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(p) => config.protoc_executable(p),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/demo.proto"],
        &["proto"],
    )?;
    Ok(())
}
