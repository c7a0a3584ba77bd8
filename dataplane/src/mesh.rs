//! Between proxies: QUIC and the peer connection pool ([`transport`]), the loss-filtering
//! congestion controller ([`congestion`]), each connection's path status and metrics
//! ([`path`]), the path classes and their settings ([`paths`]), and the bodies that cross between hyper and h3
//! ([`body`]).

pub mod body;
pub mod congestion;
pub mod path;
pub mod paths;
pub mod transport;
