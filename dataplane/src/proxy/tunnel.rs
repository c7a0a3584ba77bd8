//! Opaque TCP over an HTTP/3 CONNECT stream (RFC 9114 §4.4): bytes both ways, each direction
//! ending on its own so half-close survives the mesh (a FIN from the app becomes a QUIC stream
//! FIN, and a QUIC FIN becomes a TCP write shutdown). A tunnel with no bytes either way for
//! `tuning.limits.tunnel_idle_timeout` is closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::errors::{Direction, ErrorKind};
use crate::limits::{self, Limit};
use crate::mesh::body::{Batch, BodyError, RecvHalf, SendHalf, poll_batch};
use crate::telemetry::metrics::{Metrics, TcpConnLabels, TcpLabels};

/// Bytes moved by one tunnel, from the local socket's point of view.
#[derive(Debug, Default, Clone, Copy)]
pub struct TunnelBytes {
    /// Read from the local socket, sent into the mesh.
    pub received: u64,
    /// Received from the mesh, written to the local socket.
    pub sent: u64,
}

const CHUNK: usize = 256 * 1024;

/// Why a tunnel was closed with bytes still possible: nothing moved for this long.
#[derive(Debug, thiserror::Error)]
#[error("no bytes either way for {0:?}")]
pub struct TunnelIdle(pub Duration);

/// Pump until both directions have ended. An error in either direction, or `idle` without a
/// byte either way ([`TunnelIdle`]), ends the tunnel and resets the stream, so the far side
/// sees an abort, never a clean end of truncated data.
pub async fn pump<IO, S, R>(
    io: IO,
    mut tx: S,
    mut rx: R,
    idle: Duration,
) -> (TunnelBytes, Option<BodyError>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: SendHalf,
    R: RecvHalf,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    // When bytes last moved, as milliseconds since `start`: one store per chunk, no timer reset.
    let start = tokio::time::Instant::now();
    let last = AtomicU64::new(0);
    let touch = || {
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.store(ms, Ordering::Relaxed);
    };
    let mut bytes = TunnelBytes::default();
    let (received, sent) = (&mut bytes.received, &mut bytes.sent);
    let tx_ref = &mut tx;
    let up = async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            let n = rd.read_buf(&mut buf).await.map_err(BodyError::from)?;
            if n == 0 {
                tx_ref.finish().await?;
                return Ok::<(), BodyError>(());
            }
            *received += n as u64;
            touch();
            tx_ref.send_data(buf.split().freeze()).await?;
        }
    };
    let down = async move {
        loop {
            let (data, ended) =
                match std::future::poll_fn(|cx| poll_batch(&mut rx, cx, CHUNK)).await? {
                    Batch::Data(b, ended) => (Some(b), ended),
                    Batch::End => (None, true),
                };
            if let Some(b) = data {
                *sent += b.len() as u64;
                touch();
                wr.write_all(&b).await.map_err(BodyError::from)?;
            }
            if ended {
                // The peer half-closed: pass the FIN on to the local socket.
                wr.shutdown().await.map_err(BodyError::from)?;
                return Ok::<(), BodyError>(());
            }
        }
    };
    let idle_timer = async {
        loop {
            let due = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    let ended = tokio::select! {
        r = async { tokio::try_join!(up, down) } => r.err(),
        () = idle_timer => Some(Box::new(TunnelIdle(idle)) as BodyError),
    };
    if ended.is_some() {
        tx.reset();
    }
    (bytes, ended)
}

/// Record a finished tunnel's bytes and outcome: `ended` is why it ended early, if it did
/// (an idle tunnel closed by the limit is counted under `tunnel_idle_timeout`, not as a failure).
pub fn record(
    metrics: &Metrics,
    direction: Direction,
    service: &str,
    bytes: TunnelBytes,
    ended: Option<&BodyError>,
) {
    let idle = ended.is_some_and(|e| e.is::<TunnelIdle>());
    if idle {
        limits::count(&metrics.limit_refusals, Limit::TunnelIdleTimeout);
    }
    let failed = ended.is_some() && !idle;
    let direction = direction.as_str();
    let labels = TcpLabels {
        direction,
        service: service.to_string(),
    };
    metrics
        .tcp_received
        .get_or_create(&labels)
        .inc_by(bytes.received);
    metrics.tcp_sent.get_or_create(&labels).inc_by(bytes.sent);
    let error = if failed {
        ErrorKind::UpstreamReset.reason()
    } else {
        ""
    };
    metrics
        .tcp_connections
        .get_or_create(&TcpConnLabels {
            direction,
            service: service.to_string(),
            error,
        })
        .inc();
    tracing::info!(
        target: "access",
        direction,
        dst.service = %service,
        bytes.received = bytes.received,
        bytes.sent = bytes.sent,
        error,
        idle_timeout = idle,
        "tcp tunnel closed"
    );
}
