//! The request path: app -> mesh ([`outbound`], carried out by [`dispatch`] over endpoints
//! leased from [`upstream`]), mesh -> app ([`inbound`]), opaque TCP ([`tunnel`]), HTTP/1.1
//! upgrades such as WebSocket ([`upgrade`]), and the HTTP hygiene both directions share
//! ([`http`]). ARCHITECTURE.md walks both paths.

pub mod dispatch;
pub mod http;
pub mod inbound;
pub mod outbound;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;
