//! The request path: app -> mesh ([`outbound`], carried out by [`dispatch`] over endpoints
//! leased from [`upstream`]), mesh -> app ([`inbound`]), opaque TCP ([`tunnel`]), and the HTTP
//! hygiene both directions share ([`http`]). ARCHITECTURE.md walks both paths.

pub mod dispatch;
pub mod http;
pub mod inbound;
pub mod outbound;
pub mod tunnel;
pub mod upstream;
