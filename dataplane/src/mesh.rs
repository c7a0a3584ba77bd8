//! Between proxies: QUIC and the peer connection pool ([`transport`]), which peers' connection
//! attempts are taken on ([`admission`]), the server side of a
//! peer's HTTP/3 connection ([`server`]), request streams both ways ([`stream`]), the bodies
//! and byte streams that cross between hyper and those streams ([`body`]), the loss-filtering
//! congestion controller ([`congestion`]), each connection's path status and metrics
//! ([`path`]), and the path classes and their settings ([`paths`]).
//!
//! Only this folder names quinn and h3 (h3 is pre-1.0: this bounds the blast radius of its
//! changes); the request path sees the types these modules export.

pub mod admission;
pub mod body;
pub mod congestion;
pub mod path;
pub mod paths;
pub mod server;
pub mod stream;
pub mod transport;
