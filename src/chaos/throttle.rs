//! A response body that streams no faster than a byte rate: the `bandwidth` fault.
//!
//! Frames are cut into slices of at most a tenth of a second's worth of bytes and each slice
//! waits for its share of time, so a large answer trickles out smoothly instead of arriving in
//! bursts after long pauses.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::error::BoxError;

pin_project_lite::pin_project! {
    /// Wraps a body and limits it to `rate` bytes per second.
    pub struct Throttled<B> {
        #[pin]
        inner: B,
        rate: u64,
        pending: Option<Bytes>,
        ready: Option<Bytes>,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        done: bool,
    }
}

impl<B> Throttled<B> {
    pub fn new(inner: B, rate: u64) -> Self {
        Throttled { inner, rate: rate.max(1), pending: None, ready: None, sleep: None, done: false }
    }
}

impl<B> Body for Throttled<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
                ready!(std::future::Future::poll(sleep, cx));
                this.sleep.set(None);
            }
            if let Some(chunk) = this.ready.take() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if let Some(buf) = this.pending.as_mut() {
                if buf.is_empty() {
                    *this.pending = None;
                    continue;
                }
                let slice_max = (*this.rate / 10).max(1) as usize;
                let chunk = buf.split_to(buf.len().min(slice_max));
                let wait = Duration::from_secs_f64(chunk.len() as f64 / *this.rate as f64);
                // Each slice waits for its share of time before it goes out.
                this.sleep.set(Some(tokio::time::sleep(wait)));
                *this.ready = Some(chunk);
                continue;
            }
            if *this.done {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => *this.pending = Some(data),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => *this.done = true,
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test(start_paused = true)]
    async fn streams_at_the_rate() {
        let start = tokio::time::Instant::now();
        let body = Throttled::new(Full::new(Bytes::from(vec![7u8; 1000])), 500);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 1000);
        let took = start.elapsed();
        // 1000 bytes at 500 B/s: 2s.
        assert!(took >= Duration::from_millis(1800) && took <= Duration::from_millis(2100), "{took:?}");
    }
}
