//! Opaque TCP over an HTTP/3 CONNECT stream (RFC 9114 §4.4): bytes both ways, each direction
//! ending on its own so half-close survives the mesh (a FIN from the app becomes a QUIC stream
//! FIN, and a QUIC FIN becomes a TCP write shutdown).

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::errors::{Direction, ErrorKind};
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

/// Pump until both directions have ended. An error in either direction ends the tunnel and
/// resets the stream, so the far side sees an abort, never a clean end of truncated data.
pub async fn pump<IO, S, R>(io: IO, mut tx: S, mut rx: R) -> (TunnelBytes, Option<BodyError>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: SendHalf,
    R: RecvHalf,
{
    let (mut rd, mut wr) = tokio::io::split(io);
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
                wr.write_all(&b).await.map_err(BodyError::from)?;
            }
            if ended {
                // The peer half-closed: pass the FIN on to the local socket.
                wr.shutdown().await.map_err(BodyError::from)?;
                return Ok::<(), BodyError>(());
            }
        }
    };
    match tokio::try_join!(up, down) {
        Ok(_) => (bytes, None),
        Err(e) => {
            tx.reset();
            (bytes, Some(e))
        }
    }
}

/// Record a finished tunnel's bytes and outcome.
pub fn record(
    metrics: &Metrics,
    direction: Direction,
    service: &str,
    bytes: TunnelBytes,
    failed: bool,
) {
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
        "tcp tunnel closed"
    );
}
