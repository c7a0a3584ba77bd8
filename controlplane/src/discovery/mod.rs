//! Discovery and config push for proxies: the per-replica mesh view, the revocations in force
//! (the deny-list), per-proxy snapshots and what was pushed (`pushed.rs`), the lease sweeper and the discovery listener's TLS
//! identity. The gRPC handlers are in
//! [`crate::api`]; this module owns the state they read.

pub mod listener;
pub mod pushed;
pub mod revocations;
pub mod snapshot;
pub mod sweeper;
pub mod view;

/// The dialer moved to `quiver_api::dial` (the proxy needs it too); this name stays for callers.
pub use quiver_api::dial as client;
pub use snapshot::Caller;
pub use view::{MeshState, MeshView};
