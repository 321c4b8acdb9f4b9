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
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

use crate::error::{BoxError, ErrorKind, LifelineError};

/// The body type of every request and response inside Lifeline.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A request on its way down a route's path, boxed: every step of the path is an `async fn`
/// that takes the request, and each such future keeps its argument for its whole life (rustc
/// stores an `async fn`'s arguments apart from its locals). A 240-byte `Request` held twice
/// by each of a dozen steps made the route future 9 KB, copied into its box on every request
/// (callgrind, session 8: a sixth of all instructions); a pointer costs one small allocation.
pub type ProxyRequest = Box<http::Request<ProxyBody>>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
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
}
