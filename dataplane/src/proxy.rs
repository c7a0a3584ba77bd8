//! The request path: app -> mesh ([`outbound`], carried out by [`dispatch`] over endpoints
//! leased from [`upstream`]), mesh -> app ([`inbound`]), opaque TCP ([`tunnel`]), HTTP/1.1
//! upgrades such as WebSocket ([`upgrade`]), the HTTP hygiene both directions share
//! ([`http`]), and the pod's local resolver for mesh names ([`dns`]). ARCHITECTURE.md walks
//! both paths.

pub mod dispatch;
pub mod dns;
pub mod http;
pub mod inbound;
pub mod outbound;
pub mod transparent;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;
