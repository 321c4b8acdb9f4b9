//! Body types of the proxy.
//!
//! Bodies stream both ways: [`ProxyBody`] is a boxed `http_body::Body`, so a 100 MB upload flows
//! through in frames without ever being held whole. [`Limited`] counts the bytes of an incoming
//! body and fails the stream once the route's `max_body` is passed; the flag it shares lets the
//! proxy answer 413 instead of a confusing upstream error.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Empty, Full};

use super::passthrough::Passthrough;
use crate::error::{BoxError, ErrorKind, LifelineError};
use crate::resilience::limit::Permit;

/// The body type of every request and response inside Lifeline: a boxed `http_body::Body`,
/// which can carry what goes with an answer to the connection that writes it ([`Carried`]).
///
/// The backend's fields passed through unparsed ([`Passthrough`]) and the bulkhead's slot ride
/// in the box with the body rather than in the response's `Extensions` and a wrapper body:
/// `Extensions` allocated a map, its table and a box for the fields, and the wrapper a second
/// body box, on every answer (callgrind, session 21: three of the request's nine allocations).
/// The handle stays one fat pointer: a `Response` larger than 128 bytes is moved with a call
/// to `memcpy` at each of the dozen steps it goes up through (measured: +440 instructions per
/// request when the fields and the slot sat beside the pointer).
pub struct ProxyBody(Pin<Box<dyn Carrier>>);

/// What an answer's body carries to the connection that writes it.
#[derive(Default)]
struct Carried {
    /// A backend's answer fields, passed through as they came (set by the upstream client for
    /// an HTTP/1.x caller, read by the connection that writes the answer).
    fields: Option<Passthrough>,
    /// Held until the body ends or is dropped (a bulkhead slot: a slow download still occupies
    /// the backend).
    guard: Option<Permit>,
}

/// A body that may carry [`Carried`].
trait Carrier: Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static {
    fn carried(self: Pin<&mut Self>) -> Option<&mut Carried>;
    fn carried_ref(&self) -> Option<&Carried>;
}

/// Room for what goes with a body: [`Carried`], or `()` for none (no space taken, so an empty
/// body's box stays zero-sized and allocates nothing).
trait Room: Send + Sync + 'static {
    fn room(&mut self) -> Option<&mut Carried>;
    fn room_ref(&self) -> Option<&Carried>;
}

impl Room for () {
    fn room(&mut self) -> Option<&mut Carried> {
        None
    }
    fn room_ref(&self) -> Option<&Carried> {
        None
    }
}

impl Room for Carried {
    fn room(&mut self) -> Option<&mut Carried> {
        Some(self)
    }
    fn room_ref(&self) -> Option<&Carried> {
        Some(self)
    }
}

pin_project_lite::pin_project! {
    /// A body and what goes with it; a slot it holds is given back when the last frame went by.
    struct Boxed<B, C> {
        #[pin]
        body: B,
        carried: C,
    }
}

impl<B, C> Body for Boxed<B, C>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    C: Room,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let (Poll::Ready(None), Some(carried)) = (&polled, this.carried.room()) {
            // Given back as soon as the last frame went by, not when the connection drops us.
            carried.guard = None;
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B, C> Carrier for Boxed<B, C>
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
    C: Room,
{
    fn carried(self: Pin<&mut Self>) -> Option<&mut Carried> {
        self.project().carried.room()
    }

    fn carried_ref(&self) -> Option<&Carried> {
        self.carried.room_ref()
    }
}

impl ProxyBody {
    /// `body` with room for what goes with an answer, and a backend's fields passed through.
    pub fn carrying<B>(body: B, fields: Option<Passthrough>) -> ProxyBody
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        ProxyBody(Box::pin(Boxed { body, carried: Carried { fields, guard: None } }))
    }

    /// The backend's fields passed through, if any.
    pub fn fields(&self) -> Option<&Passthrough> {
        self.0.carried_ref()?.fields.as_ref()
    }

    pub fn fields_mut(&mut self) -> Option<&mut Passthrough> {
        self.0.as_mut().carried()?.fields.as_mut()
    }

    pub fn take_fields(&mut self) -> Option<Passthrough> {
        self.0.as_mut().carried()?.fields.take()
    }

    /// Keeps `permit` until the body ends or is dropped: in the box with the body when it has
    /// room (a backend's answer), else in a box around it.
    pub fn hold(&mut self, permit: Permit) {
        if let Some(c) = self.0.as_mut().carried() {
            c.guard = Some(permit);
            return;
        }
        let body = std::mem::replace(self, empty());
        *self = ProxyBody(Box::pin(Boxed { body, carried: Carried { fields: None, guard: Some(permit) } }));
    }

    /// Wraps the body in `f`, keeping what it carries on the outside.
    pub fn wrap<B>(mut self, f: impl FnOnce(ProxyBody) -> B) -> ProxyBody
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let carried = self.0.as_mut().carried().map(std::mem::take).unwrap_or_default();
        ProxyBody(Box::pin(Boxed { body: f(self), carried }))
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let carried = self.0.carried_ref();
        f.debug_struct("ProxyBody")
            .field("fields", &carried.is_some_and(|c| c.fields.is_some()))
            .field("guard", &carried.is_some_and(|c| c.guard.is_some()))
            .finish()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A request on its way down a route's path, boxed: every step of the path is an `async fn`
/// that takes the request, and each such future keeps its argument for its whole life (rustc
/// stores an `async fn`'s arguments apart from its locals). A 240-byte `Request` held twice
/// by each of a dozen steps made the route future 9 KB, copied into its box on every request
/// (callgrind, session 8: a sixth of all instructions); a pointer costs one small allocation.
///
/// The box also holds what this hop adds to the request on its way out ([`Hop`]): the caller's
/// address for `X-Forwarded-For`, the request id, the attempt's time budget and an h2c
/// caller's authority. The upstream client writes them as it encodes the head, so they never
/// go into the request's `HeaderMap`, where each costs a hash of its name and an insert
/// (callgrind, session 28: 856 of `prepare_upstream`'s 1 133 instructions per request, and
/// ~270 for the budget's insert).
pub struct ProxyRequest(Box<Outbound>);

struct Outbound {
    req: http::Request<ProxyBody>,
    hop: Hop,
}

/// What this hop adds to a request when it is sent upstream (RFC 7239's de-facto fields).
#[derive(Debug, Clone, Default)]
pub struct Hop {
    /// The caller's address, appended to `X-Forwarded-For`; `X-Forwarded-Proto: http` is added
    /// when the request has none. `None` leaves both as the request has them.
    pub peer: Option<std::net::IpAddr>,
    /// Sent as the one `X-Request-Id`, in place of any the request has. `None` sends the
    /// request's own.
    pub request_id: Option<http::HeaderValue>,
    /// The time the upstream has left, set by each attempt (`resilience::deadline`).
    pub budget: Option<Budget>,
    /// Sent as `Host` when the request has none: the authority an HTTP/2 caller (or an
    /// HTTP/1.0 one in absolute form) gave in the target.
    pub authority: Option<http::uri::Authority>,
}

/// The time left for an attempt, sent upstream in the field the caller used: `grpc-timeout`
/// (`<ms>m`) for a gRPC caller, else `x-lifeline-timeout-ms`, in place of the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub ms: u64,
    pub grpc: bool,
}

impl ProxyRequest {
    /// A request with nothing added on the way out.
    pub fn new(req: http::Request<ProxyBody>) -> Self {
        Self::with_hop(req, Hop::default())
    }

    pub fn with_hop(req: http::Request<ProxyBody>, hop: Hop) -> Self {
        ProxyRequest(Box::new(Outbound { req, hop }))
    }

    pub fn hop(&self) -> &Hop {
        &self.0.hop
    }

    pub fn hop_mut(&mut self) -> &mut Hop {
        &mut self.0.hop
    }

    /// The request and what this hop would add to it.
    pub fn into_parts(self) -> (http::Request<ProxyBody>, Hop) {
        let Outbound { req, hop } = *self.0;
        (req, hop)
    }
}

impl std::ops::Deref for ProxyRequest {
    type Target = http::Request<ProxyBody>;
    fn deref(&self) -> &Self::Target {
        &self.0.req
    }
}

impl std::ops::DerefMut for ProxyRequest {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0.req
    }
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    boxed(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> ProxyBody {
    boxed(Empty::new())
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    ProxyBody(Box::pin(Boxed { body, carried: () }))
}

pin_project_lite::pin_project! {
    /// Fails the stream with [`ErrorKind::BodyTooLarge`] once more than `limit` bytes went by.
    pub struct Limited<B> {
        #[pin]
        inner: B,
        remaining: u64,
        limit: u64,
        exceeded: Arc<AtomicBool>,
    }
}

impl<B> Limited<B> {
    /// Wraps `inner`; `exceeded` is set when the limit is passed.
    pub fn new(inner: B, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        Limited { inner, remaining: limit, limit, exceeded }
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > *this.remaining {
                        this.exceeded.store(true, Ordering::Relaxed);
                        let msg = format!("request body is larger than the route's limit of {} bytes", this.limit);
                        return Poll::Ready(Some(Err(LifelineError::new(ErrorKind::BodyTooLarge, msg).boxed())));
                    }
                    *this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
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
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn limited_fails_past_the_limit_and_flags_it() {
        let flag = Arc::new(AtomicBool::new(false));
        let body = Limited::new(Full::new(Bytes::from(vec![0u8; 100])), 99, flag.clone());
        let err = body.collect().await.expect_err("over the limit");
        assert_eq!(LifelineError::kind_of(&err), ErrorKind::BodyTooLarge);
        assert!(flag.load(Ordering::Relaxed));

        let flag = Arc::new(AtomicBool::new(false));
        let body = Limited::new(Full::new(Bytes::from(vec![0u8; 100])), 100, flag.clone());
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 100);
        assert!(!flag.load(Ordering::Relaxed));
    }

    /// What travels with a body: the bulkhead's slot comes back when the last frame went by
    /// (not when the body is dropped later) or when the body is dropped unfinished; `wrap`
    /// keeps the slot and the backend's fields on the outside.
    #[tokio::test]
    async fn a_held_slot_comes_back_at_the_end_of_the_body_and_wrapping_keeps_it() {
        use crate::config::Dur;
        use crate::resilience::limit::{LimitConfig, Limiter};
        let limiter = Limiter::new(
            "t",
            LimitConfig { max_in_flight: 2, max_pending: 0, queue_timeout: Dur(std::time::Duration::from_millis(10)) },
        );
        let mut read =
            ProxyBody::carrying(Full::new(Bytes::from_static(b"abc")), Some(super::Passthrough::new(Bytes::new())));
        read.hold(limiter.acquire().await.unwrap());
        let mut read = read.wrap(|b| Limited::new(b, 10, Arc::new(AtomicBool::new(false))));
        assert!(read.fields().is_some(), "the fields stay outside the wrapper");
        assert_eq!(limiter.in_flight(), 1);
        while let Some(frame) = read.frame().await {
            frame.unwrap();
        }
        assert_eq!(limiter.in_flight(), 0, "given back at the end, before the body is dropped");

        let mut dropped = full("abc");
        dropped.hold(limiter.acquire().await.unwrap());
        assert_eq!(limiter.in_flight(), 1);
        drop(dropped);
        assert_eq!(limiter.in_flight(), 0, "given back when dropped unread");
    }
}
