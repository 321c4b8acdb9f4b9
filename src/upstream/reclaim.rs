//! Getting a request back after a failed connect, so it can go to another endpoint.
//!
//! The pooled hyper client takes the request by value and drops it when the connection cannot
//! be established. Its body, though, is only polled once a connection exists. [`split`] parks
//! the real body in a shared slot and gives the client a stand-in that takes the body out of the
//! slot on its first poll. If the connect fails, the stand-in was never polled, the body is
//! still in the slot, and [`Reclaim::take`] rebuilds the request: not a byte was sent, so even a
//! POST may go elsewhere (design invariant 7), and a streaming upload need not be buffered.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};

use crate::error::BoxError;
use crate::proxy::body::ProxyBody;

type Slot = Arc<Mutex<Option<ProxyBody>>>;

/// What is needed to rebuild the request if its body was never polled.
pub struct Reclaim {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    slot: Slot,
}

/// Splits `req` into a request for one attempt and the means to get it back.
pub fn split(req: Request<ProxyBody>) -> (Request<ProxyBody>, Reclaim) {
    let (parts, body) = req.into_parts();
    let slot: Slot = Arc::new(Mutex::new(Some(body)));
    let reclaim = Reclaim {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        extensions: parts.extensions.clone(),
        slot: slot.clone(),
    };
    let stand_in = StandIn { slot, body: None };
    (Request::from_parts(parts, http_body_util::BodyExt::boxed(stand_in)), reclaim)
}

impl Reclaim {
    /// The original request, if the attempt never touched its body.
    pub fn take(self) -> Option<Request<ProxyBody>> {
        let body = self.slot.lock().ok()?.take()?;
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        *req.extensions_mut() = self.extensions;
        Some(req)
    }
}

struct StandIn {
    slot: Slot,
    body: Option<ProxyBody>,
}

impl StandIn {
    fn with_inner<T>(&self, f: impl FnOnce(&ProxyBody) -> T, default: T) -> T {
        match &self.body {
            Some(b) => f(b),
            None => match self.slot.lock() {
                Ok(guard) => guard.as_ref().map(f).unwrap_or(default),
                Err(_) => default,
            },
        }
    }
}

impl Body for StandIn {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.body.is_none() {
            let taken = self.slot.lock().ok().and_then(|mut s| s.take());
            match taken {
                Some(b) => self.body = Some(b),
                None => return Poll::Ready(Some(Err("request body already taken".into()))),
            }
        }
        match self.body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.with_inner(|b| b.is_end_stream(), false)
    }

    fn size_hint(&self) -> SizeHint {
        self.with_inner(|b| b.size_hint(), SizeHint::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn untouched_body_comes_back_and_a_polled_one_does_not() {
        let req = Request::post("/x").header("a", "1").body(crate::proxy::body::full("hello")).unwrap();
        let (attempt, reclaim) = split(req);
        assert_eq!(attempt.body().size_hint().exact(), Some(5));
        drop(attempt);
        let back = reclaim.take().expect("never polled");
        assert_eq!(back.headers()["a"], "1");
        assert_eq!(back.into_body().collect().await.unwrap().to_bytes(), "hello");

        let req = Request::post("/x").body(crate::proxy::body::full("hello")).unwrap();
        let (attempt, reclaim) = split(req);
        let sent = attempt.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(sent, "hello");
        assert!(reclaim.take().is_none(), "a body that was read cannot be replayed");
    }
}
