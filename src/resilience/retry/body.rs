//! A request body that can be sent more than once, up to a size cap.
//!
//! To retry, the body must still exist after the first attempt consumed it. Bodies up to
//! `max_replay_body` are read into memory before the first attempt (Envoy's
//! `per_request_buffer_limit_bytes`, Linkerd's 64 KiB); a larger one is streamed once, as it
//! came, and that request is simply not retried. Nothing is ever held without bound.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::CONTENT_LENGTH;
use http::HeaderMap;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, BodyStream, StreamBody};

use crate::error::BoxError;
use crate::proxy::body::{self, ProxyBody};

/// The body of a request that may be attempted several times.
pub enum Replay {
    /// Held in memory: every attempt gets a copy.
    Buffered { data: Bytes, trailers: Option<HeaderMap> },
    /// Too large (or retries off): can be sent once.
    Once(Option<ProxyBody>),
}

impl Replay {
    /// Reads `body` into memory if it is at most `cap` bytes; otherwise keeps it streaming.
    pub async fn prepare(mut body: ProxyBody, headers: &HeaderMap, cap: u64) -> Result<Replay, BoxError> {
        if body.is_end_stream() {
            return Ok(Replay::Buffered { data: Bytes::new(), trailers: None });
        }
        let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cap) {
            return Ok(Replay::Once(Some(body)));
        }
        let mut buf = BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            match frame.into_data() {
                Ok(data) if (buf.len() + data.len()) as u64 > cap => {
                    // Over the cap: send what we read, then the rest, once.
                    let head = futures_util::stream::iter([Ok(Frame::data(buf.freeze())), Ok(Frame::data(data))]);
                    let rest = head.chain(BodyStream::new(body));
                    return Ok(Replay::Once(Some(body::boxed(StreamBody::new(rest)))));
                }
                Ok(data) => buf.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok(Replay::Buffered { data: buf.freeze(), trailers })
    }

    /// A body for one attempt; `None` once a streaming body was used.
    pub fn take(&mut self) -> Option<ProxyBody> {
        match self {
            // An empty body boxes a zero-sized type: no allocation per attempt.
            Replay::Buffered { data, trailers: None } if data.is_empty() => Some(body::empty()),
            Replay::Buffered { data, trailers: None } => Some(body::full(data.clone())),
            Replay::Buffered { data, trailers: Some(t) } => {
                let frames: [Result<Frame<Bytes>, BoxError>; 2] =
                    [Ok(Frame::data(data.clone())), Ok(Frame::trailers(t.clone()))];
                Some(body::boxed(StreamBody::new(futures_util::stream::iter(frames))))
            }
            Replay::Once(b) => b.take(),
        }
    }

    /// True if another attempt can get the whole body.
    pub fn can_replay(&self) -> bool {
        matches!(self, Replay::Buffered { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(b: ProxyBody) -> Bytes {
        b.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn small_bodies_replay_large_ones_stream_once() {
        let mut r = Replay::prepare(body::full("hello"), &HeaderMap::new(), 10).await.unwrap();
        assert!(r.can_replay());
        assert_eq!(collect(r.take().unwrap()).await, "hello");
        assert_eq!(collect(r.take().unwrap()).await, "hello");

        // Chunked (no content-length) and larger than the cap: every byte still arrives, once.
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> =
            (0..4).map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + i; 4])))).collect();
        let streamed = body::boxed(StreamBody::new(futures_util::stream::iter(chunks)));
        let mut r = Replay::prepare(streamed, &HeaderMap::new(), 10).await.unwrap();
        assert!(!r.can_replay());
        assert_eq!(collect(r.take().unwrap()).await, "aaaabbbbccccdddd");
        assert!(r.take().is_none());

        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, "11".parse().unwrap());
        let r = Replay::prepare(body::full("hello world"), &h, 10).await.unwrap();
        assert!(!r.can_replay(), "declared too large: not even read");
    }
}
