//! HTTP/3 request streams between proxies, as the request path sees them: the client side
//! (a request to a peer, [`ClientStream`]) and the server side (a peer's request,
//! [`ServerStream`]), whole or split into halves that bodies ([`crate::mesh::body`]) and
//! tunnels read and write.
//!
//! Each type is a newtype over the h3 stream, with the same methods the request path used on h3
//! directly: no buffering, no copies, no extra state. It must not decide anything about a
//! request; it exists so that h3 (pre-1.0) is named only inside `mesh/`.

use std::fmt;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Response};

use crate::mesh::body::{BodyError, RecvHalf, SendHalf};

type ClientH3<S> = h3::client::RequestStream<S, Bytes>;
type ServerH3<S> = h3::server::RequestStream<S, Bytes>;

/// A request stream to a peer proxy whose request head is sent
/// ([`crate::mesh::transport::Transport::open_stream`]).
pub struct ClientStream(pub(super) ClientH3<h3_quinn::BidiStream<Bytes>>);
/// The sending half of a [`ClientStream`]: the request body.
pub struct ClientSend(ClientH3<h3_quinn::SendStream<Bytes>>);
/// The receiving half of a [`ClientStream`]: the response head and body.
pub struct ClientRecv(ClientH3<h3_quinn::RecvStream>);

/// A peer's request stream whose request head has been read
/// ([`crate::mesh::server::PendingRequest::resolve`]).
pub struct ServerStream(pub(super) ServerH3<h3_quinn::BidiStream<Bytes>>);
/// The sending half of a [`ServerStream`]: the response head and body.
pub struct ServerSend(ServerH3<h3_quinn::SendStream<Bytes>>);
/// The receiving half of a [`ServerStream`]: the request body.
pub struct ServerRecv(ServerH3<h3_quinn::RecvStream>);

/// A request stream failed (reset, or its connection closed). Classify it against its
/// connection with [`crate::mesh::transport::PeerConn::stream_error`].
#[derive(Debug)]
pub struct StreamError(h3::error::StreamError);

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StreamError {}

impl ClientStream {
    /// Wait for the peer's response head.
    pub async fn recv_response(&mut self) -> Result<Response<()>, StreamError> {
        self.0.recv_response().await.map_err(StreamError)
    }

    /// Split into halves that can be driven independently (the request body on its own task).
    pub fn split(self) -> (ClientSend, ClientRecv) {
        let (tx, rx) = self.0.split();
        (ClientSend(tx), ClientRecv(rx))
    }
}

impl ClientRecv {
    /// Wait for the peer's response head.
    pub async fn recv_response(&mut self) -> Result<Response<()>, StreamError> {
        self.0.recv_response().await.map_err(StreamError)
    }
}

impl ServerStream {
    /// Split into halves that can be driven independently.
    pub fn split(self) -> (ServerSend, ServerRecv) {
        let (tx, rx) = self.0.split();
        (ServerSend(tx), ServerRecv(rx))
    }
}

/// What answers a peer's request: a whole [`ServerStream`] or its sending half.
pub trait Respond: SendHalf {
    /// Send the response head.
    fn send_response(
        &mut self,
        head: Response<()>,
    ) -> impl Future<Output = Result<(), StreamError>> + Send;
}

impl Respond for ServerStream {
    async fn send_response(&mut self, head: Response<()>) -> Result<(), StreamError> {
        self.0.send_response(head).await.map_err(StreamError)
    }
}

impl Respond for ServerSend {
    async fn send_response(&mut self, head: Response<()>) -> Result<(), StreamError> {
        self.0.send_response(head).await.map_err(StreamError)
    }
}

macro_rules! recv_half {
    ($t:ty) => {
        impl RecvHalf for $t {
            fn poll_data(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Option<Bytes>, BodyError>> {
                self.0.poll_recv_data(cx).map(|r| match r {
                    Ok(Some(mut buf)) => Ok(Some(buf.copy_to_bytes(buf.remaining()))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e.into()),
                })
            }
            fn poll_trailers(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Option<HeaderMap>, BodyError>> {
                self.0.poll_recv_trailers(cx).map_err(Into::into)
            }
            fn stop(&mut self, code: h3::error::Code) {
                self.0.stop_sending(code);
            }
        }
    };
}

macro_rules! send_half {
    ($t:ty) => {
        impl SendHalf for $t {
            async fn send_data(&mut self, b: Bytes) -> Result<(), BodyError> {
                self.0.send_data(b).await.map_err(Into::into)
            }
            async fn send_trailers(&mut self, t: HeaderMap) -> Result<(), BodyError> {
                self.0.send_trailers(t).await.map_err(Into::into)
            }
            async fn finish(&mut self) -> Result<(), BodyError> {
                self.0.finish().await.map_err(Into::into)
            }
            fn reset(&mut self) {
                self.0.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            }
        }
    };
}

recv_half!(ClientRecv);
send_half!(ClientSend);
recv_half!(ServerRecv);
send_half!(ServerSend);
// A whole server stream answers errors and CONNECTs before it is split.
send_half!(ServerStream);
