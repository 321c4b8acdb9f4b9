//! Accept loops.
//!
//! The proxy listener ([`serve_proxy`]) runs the HTTP/1.1 server connection of our own
//! ([`super::h1`]), which hands h2c to ours too ([`super::h2`]). The admin API, the simulators and the chaos
//! proxy's API ([`serve`], [`serve_shared`]) use one hyper-util `auto` builder for HTTP/1.1 and
//! h2c: they are not on the request path, and hyper there is an independent check of our own
//! codecs (the simulators answer the proxy's upstream client).
//!
//! Shutdown is a parameter (mini-redis style): when `stop` fires the loop stops accepting,
//! every connection is told to finish gracefully (HTTP/1 closes after its in-flight response,
//! HTTP/2 sends GOAWAY), and the loop returns once they are done or `grace` has passed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

use super::body::ProxyBody;
use super::h1;
use super::workers::Seat;

/// How long a worker over its share of connections lets the others accept first.
const DEFER: Duration = Duration::from_millis(1);

/// Limits applied to each connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// HTTP/1 read buffer (hyper answers 431 on its own past this).
    pub max_buf_size: usize,
    /// HTTP/2 header list size.
    pub max_header_list_size: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits { max_buf_size: 256 << 10, max_header_list_size: 256 << 10 }
    }
}

/// Serves `listener` with `handler` until `stop` completes, then drains for up to `grace`.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    limits: ConnLimits,
    stop: impl Future<Output = ()>,
    grace: Duration,
    name: &'static str,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    serve_shared(listener, handler, limits, stop, grace, name, None).await
}

/// [`serve`] for one of several workers sharing `listener`: a worker over its share of open
/// connections waits a moment before accepting, so the others take the next ones.
pub async fn serve_shared<H, F>(
    listener: TcpListener,
    handler: H,
    limits: ConnLimits,
    stop: impl Future<Output = ()>,
    grace: Duration,
    name: &'static str,
    seat: Option<Seat>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(limits.max_buf_size).keep_alive(true);
    builder.http2().max_header_list_size(limits.max_header_list_size).max_concurrent_streams(1024);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        if seat.as_ref().is_some_and(Seat::over_share) {
            // Bounded: if the others do not accept within DEFER, this worker takes it anyway.
            tokio::select! {
                () = tokio::time::sleep(DEFER) => {}
                () = &mut stop => break,
            }
        }
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(listener = name, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let open = seat.as_ref().map(Seat::opened);
                let svc = service_fn(move |req| handler(req, peer));
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        tracing::debug!(listener = name, error = %err, "connection ended with an error");
                    }
                    drop(open);
                });
            }
            () = &mut stop => break,
        }
    }
    drop(listener);
    tracing::info!(listener = name, "stopped accepting; draining connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(listener = name, "all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(listener = name, "grace period over with connections still open"),
    }
}

/// While its worker is serving requests, a timer due within this (shorter than any request's
/// deadline or attempt timeout worth having) is always registered on it.
const HORIZON: Duration = Duration::from_millis(50);
/// A worker that started no request during the last [`HORIZON`] looks again after this; one
/// that started none during this either sleeps until its next request.
const HORIZON_IDLE: Duration = Duration::from_secs(1);

thread_local! {
    /// This worker's horizon task, while it sleeps until the next request.
    static HORIZON_ASLEEP: std::cell::Cell<Option<std::task::Waker>> = const { std::cell::Cell::new(None) };
}

/// A request starts on this thread: on a worker whose horizon task sleeps for want of
/// requests, the task takes up its timer again.
#[inline]
pub fn request_started() {
    if let Some(w) = HORIZON_ASLEEP.take() {
        w.wake();
    }
}

/// Keeps a timer due within [`HORIZON`] on this worker while it serves requests.
///
/// tokio's timer wakes the runtime's I/O driver (a `write` to its eventfd) whenever a timer is
/// registered with a deadline earlier than the one the driver last went to sleep with, even
/// from the runtime's own thread while it runs (tokio-rs/tokio#5207; the fix, #8383, is not
/// released). Every request registers two timers (its deadline and its attempt's timeout), and
/// a worker that sleeps between requests had none due sooner: `perf stat` counted 0.66 `write`
/// per request at full load and 1.6 at 5 000 requests/s. With a timer always due sooner than
/// any request's, a request's timer is never the earliest, and the writes go (BENCHMARKS.md,
/// session 12). A worker that starts no request for a second (idle keep-alive connections
/// included) holds no timer and sleeps until its next request ([`request_started`]); was: it
/// woke twice a second for nothing (the wheel's slot, then the timer), on every pod. The first
/// requests after a quiet second may pay the writes again.
///
/// While busy, two timers leapfrog [`HORIZON`] apart: the one re-armed as it fires is due after
/// the other, so it is never the earliest, and re-arming it costs no `write` either (one timer,
/// re-armed each time, made 20 a second on a busy worker).
async fn hold_timer_horizon() {
    let mut seen = super::started_here();
    loop {
        let mut pair = [Box::pin(tokio::time::sleep(HORIZON)), Box::pin(tokio::time::sleep(2 * HORIZON))];
        loop {
            let fired = std::future::poll_fn(|cx| match pair.iter_mut().position(|t| t.as_mut().poll(cx).is_ready()) {
                Some(i) => Poll::Ready(i),
                None => Poll::Pending,
            })
            .await;
            pair[fired].as_mut().reset(tokio::time::Instant::now() + 2 * HORIZON);
            let now = super::started_here();
            if now == seen {
                break;
            }
            seen = now;
        }
        drop(pair); // their timers go now, or they would wake the quiet second
        tokio::time::sleep(HORIZON_IDLE).await;
        if super::started_here() == seen {
            std::future::poll_fn(|cx| {
                if super::started_here() != seen {
                    return Poll::Ready(());
                }
                HORIZON_ASLEEP.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
        }
        seen = super::started_here();
    }
}

/// Serves the proxy listener (one worker's share of it): HTTP/1.1 with the server connection
/// of our own ([`h1`]), h2c handed to ours from there ([`super::h2`]). Shutdown as in [`serve_shared`]: when
/// `stop` completes no more connections are taken, idle ones close at once, busy ones after
/// their answer, and this returns when all are gone or `grace` has passed.
pub async fn serve_proxy<H: h1::Handler>(
    listener: TcpListener,
    handler: std::sync::Arc<H>,
    limits: ConnLimits,
    stop: impl Future<Output = ()>,
    grace: Duration,
    seat: Option<Seat>,
) {
    let limits = h1::Limits {
        max_head: limits.max_buf_size,
        max_header_list_size: limits.max_header_list_size,
        head_timeout: h1::Limits::HEAD_TIMEOUT,
        idle_timeout: h1::Limits::IDLE_TIMEOUT,
        send_timeout: h1::Limits::SEND_TIMEOUT,
    };
    let stopping = std::sync::Arc::new(h1::Stop::default());
    let _horizon = seat.is_some().then(|| AbortOnDropHandle::new(tokio::spawn(hold_timer_horizon())));
    // Every connection holds a receiver; `closed` resolves when the last one is gone.
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    tokio::pin!(stop);
    loop {
        if seat.as_ref().is_some_and(Seat::over_share) {
            tokio::select! {
                () = tokio::time::sleep(DEFER) => {}
                () = &mut stop => break,
            }
        }
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(listener = "proxy", error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (handler, stopping, held) = (handler.clone(), stopping.clone(), open_rx.clone());
                let limits = handler.limits(limits);
                let open = seat.as_ref().map(Seat::opened);
                // The request path reads the clock once per poll of its connection.
                tokio::spawn(super::clock::Polled::new(async move {
                    h1::serve(stream, peer, handler, limits, stopping).await;
                    drop((held, open));
                }));
            }
            () = &mut stop => break,
        }
    }
    drop(listener);
    tracing::info!(listener = "proxy", "stopped accepting; draining connections");
    stopping.trigger();
    drop(open_rx);
    tokio::select! {
        () = open_tx.closed() => tracing::info!(listener = "proxy", "all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(listener = "proxy", "grace period over with connections still open"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::body::{self, ProxyBody, ProxyRequest};
    use http::Response;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads the clock twice 2 ms apart within one poll and answers whether the readings were
    /// one (`shared`) or two (`fresh`).
    struct TwoReadings;

    impl h1::Handler for TwoReadings {
        async fn call(&self, _req: ProxyRequest, _peer: SocketAddr) -> Response<ProxyBody> {
            let first = crate::proxy::clock::now();
            let spin = std::time::Instant::now();
            while spin.elapsed() < Duration::from_millis(2) {
                std::hint::spin_loop();
            }
            let same = crate::proxy::clock::now() == first;
            Response::new(body::full(if same { "shared" } else { "fresh" }))
        }
    }

    #[tokio::test]
    async fn a_proxy_connection_reads_the_clock_once_per_poll() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = stop_rx.await;
        };
        let server = tokio::spawn(serve_proxy(
            listener,
            std::sync::Arc::new(TwoReadings),
            ConnLimits::default(),
            stop,
            Duration::from_secs(1),
            None,
        ));
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.expect("write");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.expect("read");
        assert!(answer.ends_with("shared"), "readings in one poll of a proxy connection are one: {answer}");
        let _ = stop_tx.send(());
        server.await.expect("server stopped");
    }
}
