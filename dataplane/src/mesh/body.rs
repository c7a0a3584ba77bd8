//! Moving HTTP bodies between hyper and HTTP/3 streams without buffering them whole.
//!
//! [`H3Body`] turns the receiving half of a request stream ([`crate::mesh::stream`]) into an
//! `http_body::Body` (data frames, then trailers) that hyper can send on; [`send_body`] drives
//! any body into the sending half; [`StartBy`] cuts an app's request body that does not start
//! in time (`tuning.limits.request_body_timeout`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

/// Errors while streaming a body; hyper and h3 both want a boxed error here.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every proxied response and request is carried in.
pub type ProxyBody = UnsyncBoxBody<Bytes, BodyError>;

/// The receiving half of a request stream, client or server side ([`crate::mesh::stream`]).
pub trait RecvHalf: Send + Unpin + 'static {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BodyError>>;
    fn poll_trailers(&mut self, cx: &mut Context<'_>)
    -> Poll<Result<Option<HeaderMap>, BodyError>>;
    /// Tell the peer to stop sending (STOP_SENDING with `code`).
    fn stop(&mut self, code: h3::error::Code);
}

/// The sending half of a request stream, client or server side ([`crate::mesh::stream`]).
pub trait SendHalf: Send + 'static {
    fn send_data(&mut self, b: Bytes) -> impl Future<Output = Result<(), BodyError>> + Send;
    fn send_trailers(&mut self, t: HeaderMap)
    -> impl Future<Output = Result<(), BodyError>> + Send;
    fn finish(&mut self) -> impl Future<Output = Result<(), BodyError>> + Send;
    /// Abort the sending side (RESET_STREAM), so the peer never mistakes a failure for an end.
    fn reset(&mut self);
}

/// Upper bound on bytes coalesced into one chunk by [`poll_batch`].
pub const BATCH_BYTES: usize = 256 * 1024;

/// Outcome of [`poll_batch`].
pub enum Batch {
    /// Data, and whether the peer's end of stream was seen right after it.
    Data(Bytes, bool),
    /// End of stream, nothing more.
    End,
}

/// Poll `recv` for data, coalescing every chunk that is already available (up to about
/// `max` bytes). QUIC hands data over one packet's worth (~1.2 KB) at a time; passing each
/// chunk on separately costs a syscall or a body frame per packet, which dominated the
/// receiving proxy's CPU in bulk transfers. A single available chunk is passed on uncopied.
pub fn poll_batch<R: RecvHalf>(
    recv: &mut R,
    cx: &mut Context<'_>,
    max: usize,
) -> Poll<Result<Batch, BodyError>> {
    let first = match recv.poll_data(cx) {
        Poll::Ready(Ok(Some(b))) => b,
        Poll::Ready(Ok(None)) => return Poll::Ready(Ok(Batch::End)),
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        Poll::Pending => return Poll::Pending,
    };
    if first.len() >= max {
        return Poll::Ready(Ok(Batch::Data(first, false)));
    }
    let mut buf: Option<bytes::BytesMut> = None;
    let mut ended = false;
    loop {
        let len = buf.as_ref().map_or(first.len(), bytes::BytesMut::len);
        if len >= max {
            break;
        }
        match recv.poll_data(cx) {
            Poll::Ready(Ok(Some(more))) => {
                let b = buf.get_or_insert_with(|| {
                    let mut b = bytes::BytesMut::with_capacity(max.max(first.len() + more.len()));
                    b.extend_from_slice(&first);
                    b
                });
                b.extend_from_slice(&more);
            }
            Poll::Ready(Ok(None)) => {
                ended = true;
                break;
            }
            // Errors surface on the next poll, after the data already read is delivered.
            Poll::Ready(Err(_)) | Poll::Pending => break,
        }
    }
    let data = match buf {
        Some(b) => b.freeze(),
        None => first,
    };
    Poll::Ready(Ok(Batch::Data(data, ended)))
}

enum State {
    Data,
    Trailers,
    Done,
}

/// An h3 receive half as an `http_body::Body`.
pub struct H3Body<R: RecvHalf> {
    recv: Tracked<R>,
    state: State,
    /// A data frame read ahead by [`H3Body::peek_end`].
    ahead: Option<Bytes>,
    /// Exact length when the sender declared `content-length`.
    length: Option<u64>,
    /// Whatever must outlive the body (h3 closes a client connection when its last request
    /// handle is dropped, which would cut this body short if the pool let go of it).
    _keep: Option<Box<dyn std::any::Any + Send>>,
    /// STOP_SENDING code if the body is dropped unread: otherwise quinn stops the stream with
    /// code 0, which the peer's h3 takes as an error and resets the whole exchange.
    abandon: h3::error::Code,
    /// Data bytes handed out so far.
    delivered: u64,
}

/// A receive half that remembers whether its last poll returned Pending. Then a read is in
/// flight and h3-quinn 0.0.10 holds the QUIC stream inside it: calling `stop` would panic
/// there (it unwraps the stream), so an abandoned body must stay quiet in that state.
struct Tracked<R> {
    inner: R,
    reading: bool,
}

impl<R: RecvHalf> RecvHalf for Tracked<R> {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BodyError>> {
        let r = self.inner.poll_data(cx);
        self.reading = r.is_pending();
        r
    }
    fn poll_trailers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<HeaderMap>, BodyError>> {
        let r = self.inner.poll_trailers(cx);
        self.reading = r.is_pending();
        r
    }
    fn stop(&mut self, code: h3::error::Code) {
        if !self.reading {
            self.inner.stop(code);
        }
    }
}

impl<R: RecvHalf> Drop for H3Body<R> {
    fn drop(&mut self) {
        if matches!(self.state, State::Done) {
            return;
        }
        // All declared bytes delivered (hyper stops at content-length): nothing was abandoned.
        let complete = self.length.is_some_and(|n| n == self.delivered);
        self.recv.stop(if complete {
            h3::error::Code::H3_NO_ERROR
        } else {
            self.abandon
        });
    }
}

impl<R: RecvHalf> H3Body<R> {
    pub fn new(recv: R, length: Option<u64>) -> Self {
        Self {
            recv: Tracked {
                inner: recv,
                reading: false,
            },
            state: State::Data,
            ahead: None,
            length,
            _keep: None,
            abandon: h3::error::Code::H3_REQUEST_CANCELLED,
            delivered: 0,
        }
    }

    /// A request body the app may legitimately leave unread (it answered early): dropping it
    /// asks the peer to stop sending without error (RFC 9114 §4.1.2).
    pub fn may_be_abandoned(mut self) -> Self {
        self.abandon = h3::error::Code::H3_NO_ERROR;
        self
    }

    /// Wait until the first data or the end of the body has arrived, when neither a length nor
    /// an end is known yet. For requests whose method carries no body by convention (GET,
    /// HEAD...), the end follows the headers at once but may arrive in a later packet; knowing
    /// it lets hyper send the request without `transfer-encoding: chunked`.
    pub async fn settle(&mut self) {
        if self.length.is_some() || !matches!(self.state, State::Data) || self.ahead.is_some() {
            return;
        }
        match std::future::poll_fn(|cx| self.recv.poll_data(cx)).await {
            Ok(Some(b)) => self.ahead = Some(b),
            Ok(None) => {
                self.state = State::Trailers;
                if let Ok(None) = std::future::poll_fn(|cx| self.recv.poll_trailers(cx)).await {
                    self.state = State::Done;
                    self.length = Some(0);
                }
            }
            // The error surfaces on the first real poll.
            Err(_) => {}
        }
    }

    /// Keep `handle` alive until this body is dropped.
    pub fn keep_alive(mut self, handle: impl std::any::Any + Send) -> Self {
        self._keep = Some(Box::new(handle));
        self
    }

    /// Look, without waiting, whether the peer already ended the body. A GET usually arrives
    /// with its FIN in the same packet as its headers; knowing that lets hyper send it to the
    /// app without `transfer-encoding: chunked`.
    pub fn peek_end(&mut self) {
        if self.length.is_some() || !matches!(self.state, State::Data) || self.ahead.is_some() {
            return;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.recv.poll_data(&mut cx) {
            Poll::Ready(Ok(None)) => {
                // Trailers may still follow in theory; an ended stream with none is the norm.
                self.state = State::Trailers;
                if let Poll::Ready(Ok(None)) = self.recv.poll_trailers(&mut cx) {
                    self.state = State::Done;
                    self.length = Some(0);
                }
            }
            Poll::Ready(Ok(Some(b))) => self.ahead = Some(b),
            // Errors surface on the first real poll; Pending means the body is still coming.
            Poll::Ready(Err(_)) | Poll::Pending => {}
        }
    }

    pub fn boxed(self) -> ProxyBody {
        UnsyncBoxBody::new(self)
    }
}

impl<R: RecvHalf> Body for H3Body<R> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(b) = this.ahead.take() {
            this.delivered += b.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        let r = this.poll_frame_inner(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            this.delivered += d.len() as u64;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done) && self.ahead.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl<R: RecvHalf> H3Body<R> {
    fn poll_frame_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self;
        loop {
            match this.state {
                State::Data => match poll_batch(&mut this.recv, cx, BATCH_BYTES) {
                    Poll::Ready(Ok(Batch::Data(b, ended))) => {
                        if ended {
                            this.state = State::Trailers;
                        }
                        if b.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                    Poll::Ready(Ok(Batch::End)) => this.state = State::Trailers,
                    Poll::Ready(Err(e)) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Trailers => {
                    let r = this.recv.poll_trailers(cx);
                    if r.is_ready() {
                        this.state = State::Done;
                    }
                    return match r {
                        Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                        Poll::Ready(Ok(None)) => Poll::Ready(None),
                        Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                        Poll::Pending => Poll::Pending,
                    };
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }
}

/// Drive `body` into `send`: data frames, then trailers if any, then FIN. On failure the
/// stream is reset. Returns the number of body bytes sent.
pub async fn send_body<B, S>(body: B, send: &mut S) -> Result<u64, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
    S: SendHalf,
{
    let r = send_body_inner(body, send).await;
    if r.is_err() {
        send.reset();
    }
    r
}

async fn send_body_inner<B, S>(mut body: B, send: &mut S) -> Result<u64, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
    S: SendHalf,
{
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    sent += data.len() as u64;
                    send.send_data(data).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    // Trailers end the message; h3 does not finish the stream by itself.
                    send.send_trailers(trailers).await?;
                    send.finish().await?;
                    return Ok(sent);
                }
            }
        }
    }
    send.finish().await?;
    Ok(sent)
}

/// A body holding one complete chunk (proxy-generated responses).
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `body`, holding `guard` until it ends or is dropped.
/// A body that adds the length of every data frame to `counter` as it passes.
pub struct Counted<B> {
    inner: B,
    counter: prometheus_client::metrics::counter::Counter,
}

impl<B> Counted<B> {
    pub fn new(inner: B, counter: prometheus_client::metrics::counter::Counter) -> Self {
        Self { inner, counter }
    }

    /// The body being counted.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counter.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub fn guarded(body: ProxyBody, guard: crate::drain::InflightGuard) -> ProxyBody {
    UnsyncBoxBody::new(Guarded {
        inner: body,
        _guard: guard,
    })
}

struct Guarded {
    inner: ProxyBody,
    _guard: crate::drain::InflightGuard,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A receive half replaying a script: `Some(Some(b))` data, `Some(None)` end, `None` pending.
    struct Script(VecDeque<Option<Option<&'static [u8]>>>);

    impl RecvHalf for Script {
        fn poll_data(&mut self, _: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BodyError>> {
            match self.0.pop_front() {
                Some(Some(Some(b))) => Poll::Ready(Ok(Some(Bytes::from_static(b)))),
                Some(Some(None)) => {
                    self.0.push_front(Some(None));
                    Poll::Ready(Ok(None))
                }
                Some(None) | None => Poll::Pending,
            }
        }
        fn poll_trailers(
            &mut self,
            _: &mut Context<'_>,
        ) -> Poll<Result<Option<HeaderMap>, BodyError>> {
            Poll::Ready(Ok(None))
        }
        fn stop(&mut self, _: h3::error::Code) {}
    }

    fn poll(s: &mut Script, max: usize) -> Poll<Result<Batch, BodyError>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        poll_batch(s, &mut cx, max)
    }

    #[test]
    fn coalesces_ready_chunks_and_reports_the_end_with_them() {
        let mut s = Script(VecDeque::from([
            Some(Some(&b"ab"[..])),
            Some(Some(&b"cd"[..])),
            None,
            Some(Some(&b"ef"[..])),
            Some(None),
        ]));
        match poll(&mut s, 1024) {
            Poll::Ready(Ok(Batch::Data(b, false))) => assert_eq!(b, "abcd"),
            _ => panic!("expected abcd"),
        }
        match poll(&mut s, 1024) {
            Poll::Ready(Ok(Batch::Data(b, true))) => assert_eq!(b, "ef"),
            _ => panic!("expected ef with the end"),
        }
        assert!(matches!(poll(&mut s, 1024), Poll::Ready(Ok(Batch::End))));
    }

    #[test]
    fn stops_coalescing_at_the_limit_and_passes_single_chunks_uncopied() {
        static BIG: [u8; 8] = [7; 8];
        let mut s = Script(VecDeque::from([
            Some(Some(&BIG[..])),
            Some(Some(&b"x"[..])),
            Some(Some(&b"y"[..])),
            Some(Some(&b"z"[..])),
        ]));
        // A chunk at or above the limit goes through as it is, without the next one.
        match poll(&mut s, 8) {
            Poll::Ready(Ok(Batch::Data(b, false))) => {
                assert_eq!(b.as_ptr(), BIG.as_ptr(), "single chunk was copied");
            }
            _ => panic!("expected the big chunk"),
        }
        match poll(&mut s, 2) {
            Poll::Ready(Ok(Batch::Data(b, false))) => assert_eq!(b, "xy"),
            _ => panic!("expected xy"),
        }
        match poll(&mut s, 2) {
            Poll::Ready(Ok(Batch::Data(b, false))) => assert_eq!(b, "z"),
            _ => panic!("expected z"),
        }
        assert!(poll(&mut s, 2).is_pending());
    }
}

/// Why a request body was cut: it did not start in time (`tuning.limits.request_body_timeout`).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not start within {0:?}")]
pub struct BodyStalled(pub std::time::Duration);

/// An app's request body that must show its first frame by a deadline set when the head
/// arrived: an app that announces a body and never sends it would otherwise hold the request,
/// its stream to the peer and the peer's app connection for as long as it likes. After the
/// first frame the body flows at the app's pace. The timer is made only if the body is
/// actually waited for (most bodies arrive with their head).
pub struct StartBy<B> {
    inner: B,
    timeout: std::time::Duration,
    deadline: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    started: bool,
    refusals: crate::limits::Refusals,
    /// Set the moment the body is cut, before the error reaches whoever sends it on.
    stalled: Arc<AtomicBool>,
}

/// Whether a [`StartBy`] body was cut, readable by whoever waits for the answer: the peer's
/// answer to the stream reset the cut causes can arrive before the sending task has
/// returned the error, and must not be taken for the peer's own failure.
#[derive(Debug, Clone)]
pub struct StallWatch {
    stalled: Arc<AtomicBool>,
    timeout: std::time::Duration,
}

impl StallWatch {
    /// The cut, if the body was cut.
    pub fn stalled(&self) -> Option<BodyStalled> {
        self.stalled
            .load(Ordering::Acquire)
            .then_some(BodyStalled(self.timeout))
    }
}

impl<B> StartBy<B> {
    pub fn new(inner: B, timeout: std::time::Duration, refusals: crate::limits::Refusals) -> Self {
        Self {
            inner,
            timeout,
            deadline: tokio::time::Instant::now() + timeout,
            timer: None,
            started: false,
            refusals,
            stalled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A watch on whether this body gets cut.
    pub fn stall_watch(&self) -> StallWatch {
        StallWatch {
            stalled: self.stalled.clone(),
            timeout: self.timeout,
        }
    }
}

impl<B> Body for StartBy<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.started = true;
                this.timer = None;
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if this.started => Poll::Pending,
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        // The error ends the body for whoever reads it; count it once.
                        this.started = true;
                        this.timer = None;
                        this.stalled.store(true, Ordering::Release);
                        crate::limits::count(
                            &this.refusals,
                            crate::limits::Limit::RequestBodyTimeout,
                        );
                        Poll::Ready(Some(Err(Box::new(BodyStalled(this.timeout)))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
