//! Quiver's shared vocabulary: what the proxy, the control plane and the CLI must agree on.
//!
//! Owns SPIFFE identities ([`spiffe`]), minting and reading mesh certificates ([`certs`]) and the
//! rustls verifiers that enforce mesh mTLS ([`tls`]). It must not do I/O beyond reading the PEM
//! files it is pointed at.
#![forbid(unsafe_code)]

pub mod certs;
pub mod duration;
pub mod spiffe;
pub mod tls;

pub use spiffe::SpiffeId;
