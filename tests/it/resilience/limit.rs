//! The bulkhead: a fixed number in flight, a short bounded queue, the rest shed at once.

use super::*;

#[tokio::test]
async fn over_the_limit_requests_are_shed_with_503_overloaded() {
    let up = Switchable::start(1500).await;
    let cfg = "concurrency:\n  max_in_flight: 2\n  max_pending: 1\n  queue_timeout: 50ms\n";
    let sc = Sidecar::start(&yaml(&[up.up.addr], cfg, "")).await;
    let calls = (0..6).map(|_| {
        let url = sc.url("/x");
        tokio::spawn(async move { get(&url).await })
    });
    let got: Vec<Got> = futures_util::future::join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();
    let ok = got.iter().filter(|g| g.status == 200).count();
    let shed: Vec<&Got> = got.iter().filter(|g| g.status == 503).collect();
    assert_eq!((ok, shed.len()), (2, 4), "{:?}", got.iter().map(|g| g.status).collect::<Vec<_>>());
    for g in shed {
        assert_eq!(g.header("x-lifeline-error"), Some("overloaded"));
        assert_eq!(g.json()["cluster"], "payment");
        assert!(g.header("retry-after").is_some());
    }
    assert_eq!(up.hits(), 2);
    let metrics = get(&sc.admin_url("/metrics")).await.text();
    assert!(metrics.contains("lifeline_rejected_total{cluster=\"payment\",reason=\"queue_timeout\"}"), "{metrics}");
}

/// The slot stays taken until the answer's body has ended, not only until its head came: a
/// slow download still occupies the backend. (The attempt hands its slot to the body.)
#[tokio::test]
async fn a_slot_is_held_until_the_answers_body_has_ended() {
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let held = Arc::new(std::sync::Mutex::new(Some(held)));
    let up = Upstream::start(Arc::new(move |_req| {
        let rest = held.lock().unwrap_or_else(|p| p.into_inner()).take();
        Box::pin(async move { http::Response::new(lifeline::proxy::body::boxed(Trickle { first: true, rest })) })
    }))
    .await;
    let cfg = "concurrency:\n  max_in_flight: 1\n  max_pending: 0\n";
    let sc = Sidecar::start(&yaml(&[up.addr], cfg, "")).await;

    // The first answer's head is here; the end of its body waits for `release`.
    let req = Request::get(sc.url("/x")).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
    let first = http1().request(req).await.expect("first answer's head");
    assert_eq!(first.status(), 200);
    let second = get(&sc.url("/x")).await;
    assert_eq!(second.status, 503, "the first answer's body still holds the only slot: {}", second.text());
    assert_eq!(second.header("x-lifeline-error"), Some("overloaded"));

    release.send(()).expect("the body is waiting");
    let body = http_body_util::BodyExt::collect(first.into_body()).await.expect("first body").to_bytes();
    assert_eq!(&body[..], b"head-tail");
    // Given back when the last frame went by (a few microseconds after the client has it).
    let mut third = get(&sc.url("/x")).await;
    for _ in 0..50 {
        if third.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        third = get(&sc.url("/x")).await;
    }
    assert_eq!(third.status, 200, "the slot came back when the body ended: {}", third.text());
    assert_eq!(up.hits(), 2, "the shed request never reached the backend");
}

/// A body that sends "head-", then "tail" once `rest` is rung (at once when there is none).
struct Trickle {
    first: bool,
    rest: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl http_body::Body for Trickle {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        if std::mem::take(&mut self.first) {
            return Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"head-")))));
        }
        let Some(rx) = self.rest.as_mut() else { return Poll::Ready(None) };
        if std::pin::Pin::new(rx).poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.rest = None;
        Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"tail")))))
    }
}
