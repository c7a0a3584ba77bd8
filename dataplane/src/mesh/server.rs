//! The server side of HTTP/3 between proxies: a peer's connection once its handshake is done
//! ([`crate::mesh::transport::Transport::accept`]), the request streams it opens, GOAWAY, and
//! holding the connection until it closes.
//!
//! It hands each request to the request path (`proxy/inbound.rs`) and decides nothing about
//! it: which requests are allowed, and when to stop taking new ones, are the caller's.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use quiver_api::SpiffeId;

use crate::mesh::admission::Permit;
use crate::mesh::stream::ServerStream;

/// A peer's connection attempt that `tuning.limits` admitted, before its handshake.
pub struct Incoming {
    pub(super) quinn: quinn::Incoming,
    /// Counts the attempt, then the connection, until it ends.
    pub(super) permit: Permit,
}

impl Incoming {
    /// The address the peer connects from.
    pub fn remote_address(&self) -> SocketAddr {
        self.quinn.remote_address()
    }
}

/// A peer's connection, its SPIFFE id proven, serving HTTP/3.
pub struct Connection {
    conn: quinn::Connection,
    h3: h3::server::Connection<h3_quinn::Connection, Bytes>,
    remote: SocketAddr,
    peer: Arc<SpiffeId>,
    trace_id: Arc<str>,
    /// Counted against `tuning.limits` until the connection is dropped.
    _permit: Permit,
}

impl Connection {
    /// Set up HTTP/3 on a connection whose handshake is done; `None` (logged) if that fails.
    pub(super) async fn setup(
        conn: quinn::Connection,
        remote: SocketAddr,
        peer: Arc<SpiffeId>,
        trace_id: Arc<str>,
        max_header_bytes: u64,
        permit: Permit,
    ) -> Option<Self> {
        let h3 = h3::server::builder()
            .max_field_section_size(max_header_bytes)
            .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await;
        match h3 {
            Ok(h3) => Some(Self {
                conn,
                h3,
                remote,
                peer,
                trace_id,
                _permit: permit,
            }),
            Err(e) => {
                tracing::debug!(peer.addr = %remote, error = %e, "h3 setup failed");
                None
            }
        }
    }

    /// The peer's verified SPIFFE id.
    pub fn peer(&self) -> &Arc<SpiffeId> {
        &self.peer
    }

    /// The connection's id as both ends compute it
    /// ([`crate::mesh::transport::connection_trace_id`]).
    pub fn trace_id(&self) -> &Arc<str> {
        &self.trace_id
    }

    /// The next request stream the peer opens; `None` once it opens no more (it closed the
    /// connection, or it honours our GOAWAY). Its head is read by [`PendingRequest::resolve`],
    /// which belongs on the request's own task.
    pub async fn next(&mut self) -> Option<PendingRequest> {
        match self.h3.accept().await {
            Ok(Some(resolver)) => Some(PendingRequest(resolver)),
            Ok(None) => None,
            Err(e) => {
                if !e.is_h3_no_error() {
                    tracing::debug!(peer.addr = %self.remote, error = %e, "peer connection ended");
                }
                None
            }
        }
    }

    /// Send GOAWAY: the peer sends nothing new here; requests already open complete.
    pub async fn goaway(&mut self) {
        let _ = self.h3.shutdown(0).await;
    }

    /// Hold the connection until it closes: by the peer, by idle timeout, or by the proxy's
    /// shutdown. Dropping the h3 connection closes the QUIC connection, which would cut
    /// requests still streaming on it (after a GOAWAY, `next` ends while they run).
    pub async fn closed(self) {
        let _ = self.conn.closed().await;
        drop(self.h3);
    }
}

/// A request stream a peer opened, its head not read yet.
pub struct PendingRequest(h3::server::RequestResolver<h3_quinn::Connection, Bytes>);

impl PendingRequest {
    /// Read the request head; `None` (logged) if it is malformed.
    pub async fn resolve(self) -> Option<(Request<()>, ServerStream)> {
        match self.0.resolve_request().await {
            Ok((req, stream)) => Some((req, ServerStream(stream))),
            Err(e) => {
                tracing::debug!(error = %e, "malformed request from peer");
                None
            }
        }
    }
}
