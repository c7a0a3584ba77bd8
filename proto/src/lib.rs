//! Quiver's shared vocabulary: what the proxy, the control plane and the CLI must agree on.
//!
//! Owns SPIFFE identities ([`spiffe`]), minting and reading mesh certificates ([`certs`]), the
//! rustls verifiers that enforce mesh mTLS ([`tls`]), the generated `quiver.v1` API ([`v1`]),
//! resource kinds and YAML documents ([`resource`], [`document`]) and resource validation
//! ([`validate`]). Its only I/O: reading the PEM files it is pointed at, and [`dial`], the one
//! way to open a gRPC channel to the control plane's discovery listener (proxy and tests).
#![forbid(unsafe_code)]

pub mod certs;
pub mod dial;
pub mod document;
pub mod duration;
pub mod exposition;
pub mod resource;
pub mod spiffe;
pub mod tls;
pub mod validate;

pub use spiffe::SpiffeId;

/// The generated `quiver.v1` protobuf messages and gRPC clients/servers.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("quiver.v1");

    /// Encoded `FileDescriptorSet` of every `quiver.v1` file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/quiver_v1_descriptor.bin"));
}
