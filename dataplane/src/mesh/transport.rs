//! QUIC and HTTP/3 between proxies: the one module that touches quinn's endpoint and h3's
//! connection types (h3 is pre-1.0; keeping it here bounds the blast radius of its changes).
//!
//! One UDP socket is both the server for peers and the client for outbound connections.
//! Outbound, there is one connection per peer address, reused and multiplexed; a peer must
//! prove the SPIFFE id the config expects for that endpoint before any request is sent.
//!
//! Every connection is set up for its path class (loopback, zone, region: see
//! [`crate::mesh::paths`]): its congestion controller, loss tolerance and windows. Outbound
//! the class comes from the endpoint's address and zone; inbound from the caller's address
//! and, when the snapshot lists it as an endpoint, its zone. docs/transport.md has why.
//!
//! Revocation: both sides' TLS verifiers consult the transport's [`DenyList`]; a resumed
//! session runs no verifier, so [`Transport::accept`] and dialling check the peer's leaf again
//! after the handshake ([`Transport::refuse_revoked`]); and a new list closes the live
//! connections it covers, both sides ([`Transport::set_revocations`]). docs/security.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, TransportConfig, VarInt};
use quiver_api::SpiffeId;
use quiver_api::revocation::DenyList;
use quiver_api::tls::MeshIdentity;
use rustls_pki_types::CertificateDer;

use crate::errors::ProxyError;
use crate::mesh::admission::{Admission, Decision};
use crate::mesh::body::{H3Body, ProxyBody};
use crate::mesh::congestion::MeshControllerFactory;
use crate::mesh::path::PathStatus;
use crate::mesh::paths::{PathClass, PathClasses};
use crate::mesh::server::{Connection, Incoming};
use crate::mesh::stream::{ClientRecv, ClientStream};
use crate::snapshot::Endpoint;
use crate::telemetry::metrics::{Metrics, PathLabels};

/// ALPN for HTTP/3.
pub const ALPN: &[u8] = b"h3";
/// Application close code sent when this proxy shuts down: H3_NO_ERROR (RFC 9114 §8.1).
pub const CLOSE_SHUTDOWN: u32 = 0x100;
/// Application close code for a peer that proved the wrong identity: H3_REQUEST_REJECTED (no
/// request was processed), with the reason in the close frame's text.
const CLOSE_IDENTITY: u32 = 0x10b;
/// Application close code for a connection over `tuning.limits.max_connections_per_peer`
/// found once its handshake proved the address: H3_EXCESSIVE_LOAD.
const CLOSE_LIMIT: u32 = 0x107;
/// Application close code for a peer whose certificate is revoked: H3_REQUEST_REJECTED, like
/// a wrong identity, with "certificate revoked" in the close frame's text.
const CLOSE_REVOKED: u32 = 0x10b;

/// An h3 request-sending handle on a pooled connection.
type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// What the transport takes from the proxy's `tuning` (see `Tuning::transport`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub paths: PathClasses,
    pub max_concurrent_streams: u32,
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    pub udp_socket_buffer: usize,
    pub connect_timeout: Duration,
    pub max_header_bytes: usize,
    pub limits: crate::limits::Limits,
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] quiver_api::tls::IdentityError),
    #[error("QUIC crypto config: {0}")]
    Crypto(String),
}

/// A ready connection to a peer proxy.
#[derive(Clone)]
pub struct PeerConn {
    conn: quinn::Connection,
    send: SendRequest,
    pub peer: SpiffeId,
    /// [`connection_trace_id`], computed once per connection rather than per request.
    pub trace_id: Arc<str>,
}

impl PeerConn {
    /// The peer's address, for error messages.
    pub fn addr(&self) -> String {
        self.conn.remote_address().to_string()
    }

    /// Classify a failure of a request stream on this connection (see [`classify_h3_conn`]).
    pub fn stream_error(&self, e: &impl std::fmt::Display) -> ProxyError {
        classify_h3_conn(&self.addr(), &self.conn, &e.to_string())
    }

    /// The response body arriving on `rx`, a stream of this connection. The body holds a
    /// request handle: h3 closes a client connection when its last handle goes, and the pool
    /// may let go of this one (GOAWAY) while the body still streams.
    pub fn response_body(&self, rx: ClientRecv, length: Option<u64>) -> ProxyBody {
        H3Body::new(rx, length)
            .keep_alive(self.send.clone())
            .boxed()
    }
}

#[derive(Default)]
struct PeerSlot {
    ready: Mutex<Option<PeerConn>>,
    connecting: tokio::sync::Mutex<()>,
}

/// quinn configs for each path class, indexed by [`class_index`].
struct ClassConfigs {
    servers: [Arc<quinn::ServerConfig>; 3],
    clients: [quinn::ClientConfig; 3],
}

fn class_index(class: PathClass) -> usize {
    match class {
        PathClass::Loopback => 0,
        PathClass::Zone => 1,
        PathClass::Region => 2,
    }
}

/// An open connection as `/config`, the close-time linger and revocation see it.
struct Live {
    conn: quinn::Connection,
    labels: PathLabels,
    /// The peer's leaf certificate, checked again when a new deny-list arrives.
    leaf: Option<CertificateDer<'static>>,
}

/// The QUIC endpoint and the outbound connection pool.
pub struct Transport {
    endpoint: quinn::Endpoint,
    transports: [Arc<TransportConfig>; 3],
    configs: RwLock<ClassConfigs>,
    pool: Mutex<HashMap<SocketAddr, Arc<PeerSlot>>>,
    /// Every open connection, both sides, for `/config` and the close-time linger.
    live: Arc<Mutex<HashMap<usize, Live>>>,
    connect_timeout: Duration,
    max_header_bytes: u64,
    paths: PathClasses,
    metrics: Arc<Metrics>,
    /// Which inbound attempts are taken on (`tuning.limits`).
    admission: Admission,
    /// Revoked identities (the snapshot's deny-list), consulted by both sides' verifiers.
    deny: DenyList,
}

impl Transport {
    /// Bind the UDP socket and build the QUIC server and client configs for `identity`.
    pub fn bind(
        listen: SocketAddr,
        identity: &MeshIdentity,
        tuning: &Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TransportError> {
        let transports =
            PathClass::ALL.map(|class| Arc::new(transport_config(tuning, &tuning.paths, class)));
        let deny = DenyList::default();
        let configs = quic_configs(identity, &transports, &deny)?;
        // Peers are classified before their handshake (`accept`); the endpoint's own default
        // is the region class's, the one that suits an unknown path.
        let default_server = (*configs.servers[class_index(PathClass::Region)]).clone();
        let socket = udp_socket(listen, tuning.udp_socket_buffer).map_err(|source| {
            TransportError::Bind {
                addr: listen,
                source,
            }
        })?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| TransportError::Crypto("no async runtime for quinn".into()))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(default_server),
            socket,
            runtime,
        )
        .map_err(|source| TransportError::Bind {
            addr: listen,
            source,
        })?;
        Ok(Self {
            endpoint,
            transports,
            configs: RwLock::new(configs),
            pool: Mutex::new(HashMap::new()),
            live: Arc::default(),
            connect_timeout: tuning.connect_timeout,
            max_header_bytes: tuning.max_header_bytes as u64,
            paths: tuning.paths.clone(),
            admission: Admission::new(
                &tuning.limits,
                metrics.limit_refusals.clone(),
                metrics.quic_retries.clone(),
                metrics.quic_handshaking.clone(),
            ),
            metrics,
            deny,
        })
    }

    /// Switch to a new identity (a renewed certificate, a new trust bundle). New connections,
    /// both ways, use it at once; live connections keep the identity they were established
    /// with and are not disturbed.
    pub fn set_identity(&self, identity: &MeshIdentity) -> Result<(), TransportError> {
        let configs = quic_configs(identity, &self.transports, &self.deny)?;
        self.endpoint.set_server_config(Some(
            (*configs.servers[class_index(PathClass::Region)]).clone(),
        ));
        *self
            .configs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = configs;
        Ok(())
    }

    /// Enforce a new deny-list (SPIFFE id -> the notBefore, Unix seconds, below which its
    /// certificates are revoked): new handshakes both ways check it at once, and every live
    /// connection whose peer it covers is closed now, pooled and accepted alike (requests on
    /// it fail; the pool dials again, and that handshake is refused). Returns how many
    /// connections were closed.
    pub fn set_revocations(&self, entries: std::collections::BTreeMap<String, i64>) -> usize {
        self.metrics
            .revocations
            .set(i64::try_from(entries.len()).unwrap_or(i64::MAX));
        if !self.deny.replace(entries) {
            return 0;
        }
        let denied: Vec<(quinn::Connection, &'static str, String)> = lock(&self.live)
            .values()
            .filter_map(|l| {
                let why = self.deny.check(l.leaf.as_ref()?).err()?;
                Some((l.conn.clone(), l.labels.side, why.to_string()))
            })
            .collect();
        for (conn, side, why) in &denied {
            tracing::warn!(peer.addr = %conn.remote_address(), side, reason = %why, "closing a connection to a revoked peer");
            self.close_revoked(conn, side);
        }
        denied.len()
    }

    fn close_revoked(&self, conn: &quinn::Connection, side: &'static str) {
        conn.close(VarInt::from_u32(CLOSE_REVOKED), b"certificate revoked");
        self.metrics
            .revoked_peers
            .get_or_create(&crate::telemetry::metrics::SideLabels { side })
            .inc();
    }

    /// After a handshake: close `conn` if the deny-list covers the peer's leaf. The verifiers
    /// already refused covered certificates on full handshakes; a resumed session skips them.
    fn refuse_revoked(&self, conn: &quinn::Connection, side: &'static str) -> Result<(), String> {
        let Some(leaf) = peer_leaf(conn) else {
            return Ok(());
        };
        match self.deny.check(&leaf) {
            Ok(()) => Ok(()),
            Err(why) => {
                self.close_revoked(conn, side);
                Err(why.to_string())
            }
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Open a request stream to `endpoint`. A pooled connection that can no longer open
    /// streams is replaced once: a failed `send_request` never delivered a complete request (no
    /// FIN was sent), so the retry cannot duplicate it.
    pub async fn open_stream(
        &self,
        endpoint: &Endpoint,
        req: http::Request<()>,
        zone: impl Fn() -> String,
    ) -> Result<(PeerConn, ClientStream), ProxyError> {
        let mut last = None;
        for _ in 0..2 {
            let mut peer = self.connection(endpoint, &zone).await?;
            match peer.send.send_request(req.clone()).await {
                Ok(stream) => return Ok((peer, ClientStream(stream))),
                Err(e) => {
                    let err =
                        classify_h3_conn(&endpoint.address.to_string(), &peer.conn, &e.to_string());
                    // This connection takes no new requests (closed, or the peer sent GOAWAY while
                    // draining): never hand it out again. Requests already on it finish.
                    self.evict(endpoint.address, &peer.conn);
                    if matches!(
                        err,
                        ProxyError::PeerHandshake { .. } | ProxyError::PeerIdentityMismatch { .. }
                    ) {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| ProxyError::PeerConnect {
            addr: endpoint.address.to_string(),
            detail: "no usable connection".into(),
        }))
    }

    /// The next peer's connection attempt that `tuning.limits` admits; `None` once the
    /// endpoint is closed. Attempts over a limit are refused here, and while handshakes pile
    /// up, attempts from unproven addresses are answered with a Retry (no state kept).
    pub async fn incoming(&self) -> Option<Incoming> {
        loop {
            let incoming = self.endpoint.accept().await?;
            let peer = incoming.remote_address().ip();
            match self
                .admission
                .decide(peer, incoming.remote_address_validated())
            {
                Decision::Accept(permit) => {
                    return Some(Incoming {
                        quinn: incoming,
                        permit,
                    });
                }
                // Not validated (checked by `decide`), so quinn can always send the Retry.
                Decision::Retry => {
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().refuse();
                    }
                }
                Decision::Refuse(limit) => {
                    tracing::debug!(peer.addr = %peer, limit = limit.name(), "refused a connection attempt");
                    incoming.refuse();
                }
            }
        }
    }

    /// Refuse every connection attempt until the endpoint closes (while draining: the dialler
    /// gets CONNECTION_REFUSED instead of waiting for a handshake timeout).
    pub async fn refuse_incoming(&self) {
        while let Some(incoming) = self.endpoint.accept().await {
            incoming.refuse();
        }
    }

    /// Accept a peer's connection with the settings of its path class and set up HTTP/3 on
    /// it. The TLS handshake has already required a certificate chaining to the trust bundle
    /// with one SPIFFE id of our trust domain. `None` (counted and logged) when the handshake
    /// or the HTTP/3 setup fails.
    pub async fn accept(&self, incoming: Incoming, class: PathClass) -> Option<Connection> {
        let remote = incoming.remote_address();
        let Incoming {
            quinn: incoming,
            mut permit,
        } = incoming;
        let config = self
            .configs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .servers[class_index(class)]
        .clone();
        let connecting = match incoming.accept_with(config) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.handshake("server", false);
                tracing::info!(peer.addr = %remote, error = %e, "refused peer handshake");
                return None;
            }
        };
        let conn = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.metrics.handshake("server", false);
                tracing::info!(peer.addr = %remote, error = %e, "refused peer handshake");
                return None;
            }
            Err(_) => {
                self.metrics.handshake("server", false);
                tracing::info!(peer.addr = %remote, "peer handshake timed out");
                return None;
            }
        };
        self.metrics.handshake("server", true);
        if !self.admission.handshake_done(&mut permit) {
            tracing::info!(peer.addr = %remote, "refused a connection over tuning.limits.max_connections_per_peer");
            conn.close(
                VarInt::from_u32(CLOSE_LIMIT),
                b"too many connections from this address",
            );
            return None;
        }
        // The client verifier only completes a handshake for a certificate that chains to the
        // bundle and carries one SPIFFE id of our trust domain, so this is always present.
        let Some(peer) = peer_id(&conn) else {
            conn.close(VarInt::from_u32(0x101), b"no SPIFFE id");
            return None;
        };
        if let Err(why) = self.refuse_revoked(&conn, "server") {
            tracing::info!(peer.addr = %remote, peer.id = %peer, reason = %why, "refused a revoked peer");
            return None;
        }
        self.watch(conn.clone(), "server", class, &peer);
        let trace_id = connection_trace_id(&conn).into();
        Connection::setup(
            conn,
            remote,
            Arc::new(peer),
            trace_id,
            self.max_header_bytes,
            permit,
        )
        .await
    }

    /// Every open connection's path, both sides (for `/config`).
    pub fn paths(&self) -> Vec<PathStatus> {
        let mut out: Vec<_> = lock(&self.live)
            .values()
            .map(|l| PathStatus::of(&l.conn, &l.labels))
            .collect();
        out.sort_by(|a, b| (&a.peer, a.side, &a.address).cmp(&(&b.peer, b.side, &b.address)));
        out
    }

    /// A connection to `ep` that has proven `ep.identity`: pooled when one is alive,
    /// otherwise dialled now (concurrent callers share one dial). `own_zone` is read only
    /// when dialling, to class the path.
    pub async fn connection(
        &self,
        ep: &Endpoint,
        own_zone: impl FnOnce() -> String,
    ) -> Result<PeerConn, ProxyError> {
        let slot = {
            let mut pool = lock(&self.pool);
            pool.entry(ep.address).or_default().clone()
        };
        if let Some(c) = alive(&slot) {
            return check_identity(c, ep);
        }
        let _dialing = slot.connecting.lock().await;
        if let Some(c) = alive(&slot) {
            return check_identity(c, ep);
        }
        let class = PathClass::of_addr(ep.address, Some(&ep.zone), &own_zone());
        let c = self.dial(ep, class).await?;
        *lock(&slot.ready) = Some(c.clone());
        Ok(c)
    }

    /// Drop the pooled connection to `addr` if it is `conn` (after a connection-level failure).
    fn evict(&self, addr: SocketAddr, conn: &quinn::Connection) {
        let slot = lock(&self.pool).get(&addr).cloned();
        if let Some(slot) = slot {
            let mut ready = lock(&slot.ready);
            if ready
                .as_ref()
                .is_some_and(|c| c.conn.stable_id() == conn.stable_id())
            {
                *ready = None;
            }
        }
    }

    async fn dial(&self, ep: &Endpoint, class: PathClass) -> Result<PeerConn, ProxyError> {
        let addr = ep.address.to_string();
        let client_config = self
            .configs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clients[class_index(class)]
        .clone();
        let connecting = self
            .endpoint
            .connect_with(client_config, ep.address, "quiver.mesh")
            .map_err(|e| ProxyError::PeerConnect {
                addr: addr.clone(),
                detail: e.to_string(),
            })?;
        let conn = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.metrics.handshake("client", false);
                return Err(classify_close(&addr, &e));
            }
            Err(_) => {
                self.metrics.handshake("client", false);
                return Err(ProxyError::PeerConnect {
                    addr,
                    detail: format!("QUIC handshake timed out after {:?}", self.connect_timeout),
                });
            }
        };
        self.metrics.handshake("client", true);
        let Some(peer) = peer_id(&conn) else {
            conn.close(VarInt::from_u32(CLOSE_IDENTITY), b"no SPIFFE id");
            return Err(ProxyError::PeerHandshake {
                addr,
                detail: "peer presented no SPIFFE id".into(),
            });
        };
        if let Err(detail) = self.refuse_revoked(&conn, "client") {
            return Err(ProxyError::PeerHandshake { addr, detail });
        }
        if peer != ep.identity {
            conn.close(VarInt::from_u32(CLOSE_IDENTITY), b"unexpected identity");
            return Err(ProxyError::PeerIdentityMismatch {
                addr,
                expected: ep.identity.to_string(),
                got: peer.to_string(),
            });
        }
        let (mut driver, send) = h3::client::builder()
            .max_field_section_size(self.max_header_bytes)
            .build::<_, _, Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| classify_h3_conn(&addr, &conn, &e.to_string()))?;
        tokio::spawn(async move {
            let e = driver.wait_idle().await;
            tracing::debug!(error = %e, "h3 client connection ended");
        });
        self.watch(conn.clone(), "client", class, &peer);
        tracing::debug!(peer.addr = %ep.address, peer.id = %peer, path.class = class.name(), "connected to peer");
        let trace_id = connection_trace_id(&conn).into();
        Ok(PeerConn {
            conn,
            send,
            peer,
            trace_id,
        })
    }

    /// Track `conn` for metrics, `/config` and the close-time linger, until it closes.
    fn watch(
        &self,
        conn: quinn::Connection,
        side: &'static str,
        class: PathClass,
        peer: &SpiffeId,
    ) {
        let labels = PathLabels {
            peer: peer.to_string(),
            side,
            class: class.name(),
            congestion: self.paths.get(class).congestion.name(),
        };
        let live = self.live.clone();
        let metrics = self.metrics.clone();
        let id = conn.stable_id();
        lock(&live).insert(
            id,
            Live {
                leaf: peer_leaf(&conn),
                conn: conn.clone(),
                labels: labels.clone(),
            },
        );
        tokio::spawn(async move {
            crate::mesh::path::watch_connection(metrics, conn, labels).await;
            lock(&live).remove(&id);
        });
    }

    /// Close every connection with the shutdown code and wait for the socket to go idle.
    ///
    /// Requests are complete when this is called, but their last packets may not be
    /// acknowledged yet, and closing drops unacknowledged data. So first linger for a few
    /// round trips plus the peer's ACK delay (25 ms by default), bounded by `max_linger`.
    pub async fn close(&self, max_linger: Duration) {
        let rtt = lock(&self.live)
            .values()
            .map(|l| l.conn.rtt())
            .max()
            .unwrap_or_default();
        let linger = (rtt * 4 + Duration::from_millis(50)).min(max_linger);
        if !lock(&self.live).is_empty() {
            tokio::time::sleep(linger).await;
        }
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"proxy shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short critical sections cannot leave them half-updated
    // (each is a single assignment), so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn alive(slot: &PeerSlot) -> Option<PeerConn> {
    lock(&slot.ready)
        .as_ref()
        .filter(|c| c.conn.close_reason().is_none())
        .cloned()
}

fn check_identity(c: PeerConn, ep: &Endpoint) -> Result<PeerConn, ProxyError> {
    if c.peer == ep.identity {
        Ok(c)
    } else {
        Err(ProxyError::PeerIdentityMismatch {
            addr: ep.address.to_string(),
            expected: ep.identity.to_string(),
            got: c.peer.to_string(),
        })
    }
}

/// The verified SPIFFE id of the peer on `conn`.
fn peer_id(conn: &quinn::Connection) -> Option<SpiffeId> {
    let any = conn.peer_identity()?;
    let chain = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    quiver_api::tls::peer_spiffe_id(&chain).ok()
}

/// The peer's leaf certificate on `conn` (present on resumed connections too).
fn peer_leaf(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let any = conn.peer_identity()?;
    let chain = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.into_iter().next()
}

/// Map a QUIC connection error to the proxy's vocabulary. TLS alerts (QUIC crypto error codes
/// 0x100-0x1ff) mean a certificate was refused, by us or by the peer.
fn classify_close(addr: &str, e: &ConnectionError) -> ProxyError {
    let crypto = |code: quinn::TransportErrorCode| {
        let v = u64::from(code);
        (0x100..0x200).contains(&v)
    };
    match e {
        ConnectionError::TransportError(t) if crypto(t.code) => ProxyError::PeerHandshake {
            addr: addr.into(),
            detail: format!("we refused the peer: {}", t.reason),
        },
        ConnectionError::ConnectionClosed(c) if crypto(c.error_code) => ProxyError::PeerHandshake {
            addr: addr.into(),
            detail: format!("the peer refused us: {c}"),
        },
        ConnectionError::TimedOut => ProxyError::PeerConnect {
            addr: addr.into(),
            detail: "QUIC idle timeout".into(),
        },
        other => ProxyError::PeerConnect {
            addr: addr.into(),
            detail: other.to_string(),
        },
    }
}

/// Classify an h3 failure on `conn`: if the connection is closed, its reason says why (for
/// example the peer rejecting our certificate, which TLS 1.3 reports only after the client
/// believes the handshake done); otherwise it is a reset of this one stream.
fn classify_h3_conn(addr: &str, conn: &quinn::Connection, detail: &str) -> ProxyError {
    match conn.close_reason() {
        Some(reason) => classify_close(addr, &reason),
        None => ProxyError::UpstreamReset(detail.to_string()),
    }
}

fn quic_configs(
    identity: &MeshIdentity,
    transports: &[Arc<TransportConfig>; 3],
    deny: &DenyList,
) -> Result<ClassConfigs, TransportError> {
    // quiver_api::tls turns session resumption off on both sides: every handshake, and so
    // every connection, is judged by the certificate verifiers, deny-list included
    // (docs/security.md).
    let server_tls = identity.server_config_denying(&[ALPN], deny)?;
    let server_crypto = Arc::new(
        QuicServerConfig::try_from(server_tls)
            .map_err(|e| TransportError::Crypto(e.to_string()))?,
    );
    let client_tls = identity.client_config_denying(&[ALPN], deny)?;
    let client_crypto = Arc::new(
        QuicClientConfig::try_from(client_tls)
            .map_err(|e| TransportError::Crypto(e.to_string()))?,
    );
    // One TLS config (and session cache) for every class; only the transport differs.
    Ok(ClassConfigs {
        servers: transports.clone().map(|t| {
            let mut server = quinn::ServerConfig::with_crypto(server_crypto.clone());
            server.transport_config(t);
            Arc::new(server)
        }),
        clients: transports.clone().map(|t| {
            let mut client = quinn::ClientConfig::new(client_crypto.clone());
            client.transport_config(t);
            client
        }),
    })
}

/// An id for `conn` that both ends compute alike: 8 bytes of the TLS exporter (RFC 8446
/// section 7.5) under a label of ours, hex. The CLIENT span of one proxy and the SERVER span
/// of its peer carry the same value, so a trace shows which requests shared a connection;
/// exporter output reveals nothing about the connection's keys. quinn's `stable_id` is
/// local to one side and would not match.
pub fn connection_trace_id(conn: &quinn::Connection) -> String {
    let mut out = [0u8; 8];
    match conn.export_keying_material(&mut out, b"EXPORTER-quiver-connection-id", b"") {
        Ok(()) => crate::telemetry::trace::hex(&out),
        Err(_) => String::new(),
    }
}

fn transport_config(t: &Settings, paths: &PathClasses, class: PathClass) -> TransportConfig {
    let p = paths.get(class);
    let mut c = TransportConfig::default();
    c.max_concurrent_bidi_streams(VarInt::from_u32(t.max_concurrent_streams));
    c.stream_receive_window(VarInt::from_u32(p.stream_receive_window));
    c.receive_window(VarInt::from_u32(p.connection_receive_window));
    c.send_window(p.send_window);
    c.congestion_controller_factory(MeshControllerFactory::new(p.control()));
    if p.ack_eliciting_threshold != 1 {
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(VarInt::from_u32(p.ack_eliciting_threshold));
        c.ack_frequency_config(Some(ack));
    }
    // IdleTimeout accepts up to 2^62 ms; validated durations are far below that.
    c.max_idle_timeout(quinn::IdleTimeout::try_from(t.idle_timeout).ok());
    c.keep_alive_interval((!t.keep_alive.is_zero()).then_some(t.keep_alive));
    c
}

fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    // Larger buffers absorb bursts that would otherwise be dropped and retransmitted; the
    // kernel silently caps them at net.core.{r,w}mem_max, which is fine.
    if let Err(e) = s.set_recv_buffer_size(buffer) {
        tracing::warn!(error = %e, "cannot raise UDP receive buffer");
    }
    if let Err(e) = s.set_send_buffer_size(buffer) {
        tracing::warn!(error = %e, "cannot raise UDP send buffer");
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}
