//! Quiver's shared vocabulary: what the proxy, the control plane and the CLI must agree on.
//!
//! Owns SPIFFE identities ([`spiffe`]), minting and reading mesh certificates ([`certs`]), the
//! rustls verifiers that enforce mesh mTLS ([`tls`]) and the deny-list they consult
//! ([`revocation`]), the generated `quiver.v1` API ([`v1`]),
//! resource kinds and YAML documents ([`resource`], [`document`]) and resource validation
//! ([`validate`]). Without the `full` feature (the default has it) only the vocabulary is
//! built: messages, documents, SPIFFE ids, durations and field errors, for wasm32 (the
//! console compiles policy in the browser with it). Its only I/O: reading the PEM files it is pointed at, and [`dial`], the one
//! way to open a gRPC channel to the control plane's discovery listener (proxy and tests).
#![forbid(unsafe_code)]

#[cfg(feature = "full")]
pub mod certs;
#[cfg(feature = "full")]
pub mod dial;
pub mod document;
pub mod duration;
pub mod exposition;
pub mod resource;
#[cfg(feature = "full")]
pub mod revocation;
pub mod spiffe;
#[cfg(feature = "full")]
pub mod tls;
pub mod validate;

pub use spiffe::SpiffeId;

/// The generated `quiver.v1` protobuf messages, and (with the `full` feature) the gRPC
/// clients and servers.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/quiver.v1.rs"));

    /// Encoded `FileDescriptorSet` of every `quiver.v1` file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/quiver_v1_descriptor.bin"));
}
