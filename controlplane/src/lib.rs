//! quiver-control: the control plane (store, CA, API) and the library behind `quiverctl`.
//! ARCHITECTURE.md at the repository root has the map and the config flow.
#![forbid(unsafe_code)]

pub mod addresses;
pub mod api;
pub mod auth;
pub mod ca;
pub mod canary;
pub mod cli;
pub mod console;
pub mod discovery;
pub mod inject;
pub mod metrics;
pub mod server;
pub mod store;
pub mod stored;
pub mod telemetry;
