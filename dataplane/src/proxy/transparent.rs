//! Captured connections: the listeners the capture rules (`capture.rs`) redirect a
//! workload's TCP to, so that an app calls `http://catalog.demo.mesh/` (or a Service's
//! virtual IP on any declared port) and never knows about the mesh.
//!
//! Outbound (the app's own connections): the original destination (`SO_ORIGINAL_DST`) picks
//! the way.
//! - A Service's virtual IP on a declared port: into the mesh exactly as an explicit listener
//!   for that service and port would carry it (HTTP/1.1, h2c, gRPC through routes and
//!   retries; `tcp` ports as a tunnel). Declared ports are never sniffed.
//! - A virtual IP on a port the Service does not declare: refused (closed), counted.
//! - Anywhere else (egress): passed through as plain TCP from the proxy's own socket, or
//!   denied, by `capture.egress`; both counted by the protocol the client's first bytes show.
//!   Pass-through never waits for them (the connection to the destination is made at once and
//!   bytes flow both ways from the start), so a server-speaks-first protocol sees no delay.
//!   A denied connection is held at most `capture.detect_timeout` to learn what it was.
//!
//! Inbound (TCP from outside the pod to the workload's ports): mesh traffic arrives over QUIC,
//! so this is plaintext from a client outside the mesh; refused in strict mode (the default),
//! else handed to the app, counted either way.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::Inputs;
use crate::config::{CaptureSettings as Settings, Egress, Plaintext};
use crate::errors::Direction;
use crate::proxy::outbound::{self, Entry};
use crate::snapshot::{Protocol, Target};
use crate::telemetry::metrics::CaptureLabels;

/// The protocol a client's first bytes show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    /// HTTP/2 with prior knowledge (the client preface).
    H2c,
    /// A TLS ClientHello.
    Tls,
    /// Anything else, or nothing from the client (server-speaks-first).
    Tcp,
}

impl Detected {
    pub fn as_str(self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::H2c => "h2c",
            Detected::Tls => "tls",
            Detected::Tcp => "tcp",
        }
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(c: u8) -> Option<Self> {
        [Self::Http1, Self::H2c, Self::Tls, Self::Tcp]
            .get(usize::from(c).checked_sub(1)?)
            .copied()
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Classify a connection by the first bytes its client sent (as many as one read gave).
/// Pure: the fuzz-free half of detection, tested on its own.
pub fn detect(first: &[u8]) -> Detected {
    if first.is_empty() {
        return Detected::Tcp;
    }
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] == H2_PREFACE[..n] && n >= 4 {
        return Detected::H2c;
    }
    if METHODS
        .iter()
        .any(|m| first.len() >= m.len() && first.starts_with(m))
    {
        return Detected::Http1;
    }
    // A TLS handshake record (0x16), version 3.x.
    if first.len() >= 3 && first[0] == 0x16 && first[1] == 0x03 {
        return Detected::Tls;
    }
    Detected::Tcp
}

/// The address a captured connection was headed for (`SO_ORIGINAL_DST`).
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddrV4> {
    let addr = socket2::SockRef::from(stream).original_dst_v4()?;
    addr.as_socket_ipv4().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "not an IPv4 destination")
    })
}

fn count(inputs: &Inputs, direction: Direction, outcome: &'static str, protocol: &'static str) {
    inputs
        .metrics
        .captured
        .get_or_create(&CaptureLabels {
            direction: direction.as_str(),
            outcome,
            protocol,
        })
        .inc();
}

/// Serve the transparent outbound listener until drain.
pub async fn serve_outbound(inputs: Arc<Inputs>, listener: TcpListener, settings: Arc<Settings>) {
    let own = listener.local_addr().ok();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = inputs.drain.signaled() => return,
        };
        let _ = stream.set_nodelay(true);
        let inputs = inputs.clone();
        let settings = settings.clone();
        tokio::spawn(async move { outbound_conn(inputs, stream, &settings, own).await });
    }
}

async fn outbound_conn(
    inputs: Arc<Inputs>,
    stream: TcpStream,
    settings: &Settings,
    own: Option<SocketAddr>,
) {
    let dst = match original_destination(&stream) {
        // A connection made to the listener itself (not redirected) has no destination of
        // its own: serving it would loop.
        Ok(dst) if Some(SocketAddr::V4(dst)) != own => dst,
        Ok(_) | Err(_) => {
            count(&inputs, Direction::Outbound, "refused", "tcp");
            tracing::debug!("a connection to the capture listener without a captured destination");
            return;
        }
    };
    let snapshot = inputs.snapshot();
    if let Some(service) = snapshot.service_at(*dst.ip()) {
        let Some(protocol) = service.ports.get(&dst.port()).copied() else {
            count(&inputs, Direction::Outbound, "undeclared-port", "tcp");
            tracing::info!(target: "access", direction = "outbound", dst.service = %service.name, dst.port = dst.port(), "captured connection to a port the service does not declare: closed");
            return;
        };
        let target = Target {
            service: service.name.clone(),
            port: Some(dst.port()),
        };
        drop(snapshot);
        count(&inputs, Direction::Outbound, "mesh", protocol.name());
        match protocol {
            Protocol::Tcp => outbound::tcp(inputs, stream, target).await,
            _ => outbound::http_conn(inputs, stream, Entry::Fixed(target)).await,
        }
        return;
    }
    drop(snapshot);
    match settings.egress {
        Egress::Allow => passthrough(&inputs, stream, dst).await,
        Egress::Deny => deny(&inputs, stream, dst, settings.detect_timeout).await,
    }
}

/// Egress allowed: connect to the destination at once and pump; classify the client's first
/// bytes on the way.
async fn passthrough(inputs: &Inputs, mut stream: TcpStream, dst: SocketAddrV4) {
    let _inflight = inputs.drain.track();
    let upstream = tokio::time::timeout(
        inputs.tuning.connect_timeout,
        TcpStream::connect(SocketAddr::V4(dst)),
    )
    .await;
    let mut upstream = match upstream {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            count(inputs, Direction::Outbound, "egress-failed", "tcp");
            tracing::info!(target: "access", direction = "outbound", dst.address = %dst, error = %e, "egress connection failed");
            return;
        }
        Err(_) => {
            count(inputs, Direction::Outbound, "egress-failed", "tcp");
            tracing::info!(target: "access", direction = "outbound", dst.address = %dst, "egress connection timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let seen = Arc::new(AtomicU8::new(0));
    let mut client = Sniff {
        inner: &mut stream,
        seen: seen.clone(),
    };
    let copied = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    let protocol = Detected::from_code(seen.load(Ordering::Relaxed)).unwrap_or(Detected::Tcp);
    count(inputs, Direction::Outbound, "egress", protocol.as_str());
    match copied {
        Ok((sent, received)) => {
            tracing::info!(target: "access", direction = "outbound", dst.address = %dst, protocol = protocol.as_str(), sent, received, "egress passed through");
        }
        Err(e) => {
            tracing::info!(target: "access", direction = "outbound", dst.address = %dst, protocol = protocol.as_str(), error = %e, "egress passed through, ended with an error");
        }
    }
}

/// Egress denied: read at most `bound` for the client's first bytes (to say what was
/// refused), then close.
async fn deny(inputs: &Inputs, mut stream: TcpStream, dst: SocketAddrV4, bound: Duration) {
    let mut buf = [0u8; 64];
    let n = match tokio::time::timeout(bound, stream.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        Ok(Err(_)) | Err(_) => 0,
    };
    let protocol = detect(&buf[..n]);
    count(
        inputs,
        Direction::Outbound,
        "egress-denied",
        protocol.as_str(),
    );
    tracing::info!(target: "access", direction = "outbound", dst.address = %dst, protocol = protocol.as_str(), "egress denied (capture.egress: deny)");
}

/// Serve the transparent inbound listener until drain.
pub async fn serve_inbound(inputs: Arc<Inputs>, listener: TcpListener, settings: Arc<Settings>) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = inputs.drain.signaled() => return,
        };
        let inputs = inputs.clone();
        let settings = settings.clone();
        tokio::spawn(async move { inbound_conn(inputs, stream, peer, &settings).await });
    }
}

async fn inbound_conn(
    inputs: Arc<Inputs>,
    stream: TcpStream,
    peer: SocketAddr,
    settings: &Settings,
) {
    let Ok(dst) = original_destination(&stream) else {
        count(&inputs, Direction::Inbound, "refused", "tcp");
        return;
    };
    match settings.inbound_plaintext {
        Plaintext::Refuse => {
            count(&inputs, Direction::Inbound, "plaintext-refused", "tcp");
            tracing::info!(target: "access", direction = "inbound", src.address = %peer, dst.port = dst.port(), "plaintext from outside the mesh refused (strict)");
        }
        Plaintext::Allow => {
            let _inflight = inputs.drain.track();
            let app = app_address(&inputs, dst.port());
            let mut stream = stream;
            match tokio::time::timeout(inputs.tuning.connect_timeout, TcpStream::connect(app)).await
            {
                Ok(Ok(mut upstream)) => {
                    count(&inputs, Direction::Inbound, "plaintext-allowed", "tcp");
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                }
                _ => count(&inputs, Direction::Inbound, "app-unreachable", "tcp"),
            }
        }
    }
}

/// Where the app behind `port` listens: the inbound port whose app port it is, else the
/// loopback address on that port.
fn app_address(inputs: &Inputs, port: u16) -> SocketAddr {
    inputs
        .snapshot()
        .inbound
        .iter()
        .find(|p| p.app.port() == port)
        .map(|p| p.app)
        .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// A client stream that notes what its first read showed.
struct Sniff<'a> {
    inner: &'a mut TcpStream,
    seen: Arc<AtomicU8>,
}

impl AsyncRead for Sniff<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && self.seen.load(Ordering::Relaxed) == 0 {
            let first = &buf.filled()[before..];
            if !first.is_empty() {
                self.seen.store(detect(first).code(), Ordering::Relaxed);
            }
        }
        r
    }
}

impl tokio::io::AsyncWrite for Sniff<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_classify() {
        assert_eq!(
            detect(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Detected::Http1
        );
        assert_eq!(detect(b"POST /a HTTP/1.0\r\n"), Detected::Http1);
        assert_eq!(detect(H2_PREFACE), Detected::H2c);
        // A preface split over reads still reads as h2c from its start.
        assert_eq!(detect(b"PRI * HT"), Detected::H2c);
        assert_eq!(detect(&[0x16, 0x03, 0x01, 0x02, 0x00]), Detected::Tls);
        assert_eq!(detect(b""), Detected::Tcp);
        assert_eq!(detect(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), Detected::Tcp); // Postgres SSLRequest
        assert_eq!(detect(b"GETX"), Detected::Tcp);
        assert_eq!(detect(b"PR"), Detected::Tcp);
        for d in [Detected::Http1, Detected::H2c, Detected::Tls, Detected::Tcp] {
            assert_eq!(Detected::from_code(d.code()), Some(d));
        }
        assert_eq!(Detected::from_code(0), None);
    }
}
