//! quiver-control: the control plane (store, CA, API) and the library behind `quiverctl`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod store;
