//! The upstream connection pool (`src/upstream/pool.rs`) against a raw TCP upstream that counts
//! the connections it accepts and can misbehave the ways real backends do: close a keep-alive
//! connection right after answering, answer `Connection: close`, or stop answering mid-body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{eventually, http1, send, Sidecar};

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Keep-alive: answer every request on the connection.
    KeepAlive,
    /// Answer, then close the socket without saying so (a backend's idle timeout firing).
    SilentClose,
    /// Answer with `Connection: close`, then close.
    AnnouncedClose,
    /// Keep-alive, with a response head and body larger than hyper's first 8 KiB read buffer.
    Big,
}

const BIG_HEADER: usize = 6 * 1024;
const BIG_BODY: usize = 200 * 1024;

struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections the peer (Lifeline) closed.
    closed_by_peer: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start(behaviour: Behaviour) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_peer = Arc::new(AtomicUsize::new(0));
        let (acc, closed) = (accepted.clone(), closed_by_peer.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { continue };
                acc.fetch_add(1, Ordering::SeqCst);
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let close =
                                if behaviour == Behaviour::AnnouncedClose { "connection: close\r\n" } else { "" };
                            let resp = if behaviour == Behaviour::Big {
                                format!(
                                    "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: {BIG_BODY}\r\n\r\n{}",
                                    "h".repeat(BIG_HEADER),
                                    "b".repeat(BIG_BODY)
                                )
                            } else {
                                format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{close}\r\nok")
                            };
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                            if !matches!(behaviour, Behaviour::KeepAlive | Behaviour::Big) {
                                return; // drops the socket
                            }
                        }
                    }
                });
            }
        });
        RawUpstream { addr, accepted, closed_by_peer }
    }
}

fn yaml(addr: SocketAddr, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nshutdown: {{ drain_delay: 0s, grace_period: 5s }}\n\
         clusters:\n  backend:\n    endpoints:\n      - {{ address: {addr} }}\n    outlier: {{ enabled: false }}\n{extra}\
         routes:\n  - {{ name: all, cluster: backend }}\n"
    )
}

/// Sends `n` requests one after another on one client connection; returns the statuses.
async fn sequential(sc: &Sidecar, n: usize) -> Vec<u16> {
    let client = http1();
    let mut out = Vec::new();
    for i in 0..n {
        let req = Request::get(sc.url(&format!("/r/{i}"))).body(Full::new(Bytes::new())).unwrap();
        out.push(send(&client, req).await.status.as_u16());
    }
    out
}

/// A response head and body larger than the connection's first read buffer arrive whole, and
/// the connection is reused after them. (Reading upstream responses 4 KiB at a time, tried in
/// session 4 for memory, failed here with a 502: an exact read size also caps the head.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_passes_responses_larger_than_its_read_size_whole() {
    let up = RawUpstream::start(Behaviour::Big).await;
    let sc = Sidecar::start(&yaml(up.addr, "")).await;
    let client = http1();
    for i in 0..6 {
        let req = Request::get(sc.url(&format!("/big/{i}"))).body(Full::new(Bytes::new())).unwrap();
        let got = send(&client, req).await;
        assert_eq!(got.status.as_u16(), 200);
        assert_eq!(got.header("x-big").map(str::len), Some(BIG_HEADER));
        assert_eq!(got.body.len(), BIG_BODY);
        assert!(got.body.iter().all(|b| *b == b'b'));
    }
    // Reused: at most one upstream connection per worker (the test client may open a second
    // connection to the sidecar, which can land on the other worker; seen once in CI).
    let opened = up.accepted.load(Ordering::SeqCst);
    assert!(opened <= sc.app.worker_count(), "6 big answers opened {opened} upstream connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_reuses_one_connection_for_sequential_requests() {
    let up = RawUpstream::start(Behaviour::KeepAlive).await;
    let sc = Sidecar::start(&yaml(up.addr, "")).await;
    let statuses = sequential(&sc, 50).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // A client connection lives on one worker, which reuses its one upstream connection. (The
    // test client may open a second connection to the sidecar, which can land on another
    // worker: at most one upstream connection per worker.)
    let opened = up.accepted.load(Ordering::SeqCst);
    assert!(opened <= sc.app.worker_count(), "50 sequential requests opened {opened} upstream connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_resends_on_a_fresh_connection_when_the_backend_closed_the_idle_one() {
    let up = RawUpstream::start(Behaviour::SilentClose).await;
    let sc = Sidecar::start(&yaml(up.addr, "")).await;
    let statuses = sequential(&sc, 40).await;
    // Every pooled connection was closed under the pool's feet; none of that reaches a caller.
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 40, "a new connection per request");
}

/// A GET skips the kernel check of an idle connection and is sent again if the connection
/// turns out closed (above); a POST is never written into a connection the backend closed:
/// each one here finds its idle connection closed (the close had time to arrive) and goes out
/// on a fresh one, and every caller gets the backend's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_never_writes_a_post_into_a_connection_the_backend_closed() {
    let up = RawUpstream::start(Behaviour::SilentClose).await;
    let sc = Sidecar::start(&yaml(up.addr, "")).await;
    let client = http1();
    for i in 0..20 {
        let req = Request::post(sc.url(&format!("/pay/{i}")))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        assert_eq!(send(&client, req).await.status.as_u16(), 200, "POST {i}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 20, "a new connection per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_retires_a_connection_the_backend_announced_closing() {
    let up = RawUpstream::start(Behaviour::AnnouncedClose).await;
    let sc = Sidecar::start(&yaml(up.addr, "")).await;
    let statuses = sequential(&sc, 20).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_closes_connections_idle_past_idle_timeout() {
    let up = RawUpstream::start(Behaviour::KeepAlive).await;
    let sc = Sidecar::start(&yaml(up.addr, "    idle_timeout: 1s\n")).await;
    assert_eq!(sequential(&sc, 3).await, vec![200; 3]);
    assert_eq!(up.closed_by_peer.load(Ordering::SeqCst), 0, "kept alive right after use");
    // One upstream connection per worker the client's requests landed on (the test client may
    // open a second connection to the sidecar, on the other worker: CI saw two here once).
    let opened = up.accepted.load(Ordering::SeqCst);
    assert!((1..=sc.app.worker_count()).contains(&opened), "3 sequential requests opened {opened}");
    // The controller sweeps every second: all closed within idle_timeout + one sweep (+ slack).
    assert!(
        eventually(Duration::from_secs(8), || async { up.closed_by_peer.load(Ordering::SeqCst) == opened }).await,
        "the idle connections were closed by Lifeline: {} of {opened}",
        up.closed_by_peer.load(Ordering::SeqCst)
    );
    // And the next request opens a new one: nothing idle is left on any worker.
    assert_eq!(sequential(&sc, 1).await, vec![200]);
    assert_eq!(up.accepted.load(Ordering::SeqCst), opened + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_keeps_no_more_idle_connections_than_max_idle_per_endpoint() {
    let up = RawUpstream::start(Behaviour::KeepAlive).await;
    let sc = Sidecar::start(&yaml(up.addr, "    max_idle_per_endpoint: 2\n")).await;
    // 8 concurrent callers need 8 upstream connections at once...
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = sc.url("/c");
        tasks.push(tokio::spawn(async move {
            let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
            send(&http1(), req).await.status.as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let opened = up.accepted.load(Ordering::SeqCst);
    assert!(opened >= 2, "concurrent requests opened {opened} connections");
    // ...but at most 2 per worker slot stay open afterwards; the rest are closed at once.
    let slots = 1 + sc.app.worker_count();
    assert!(
        eventually(Duration::from_secs(3), || async { opened - up.closed_by_peer.load(Ordering::SeqCst) <= 2 * slots })
            .await,
        "opened {opened}, closed {}",
        up.closed_by_peer.load(Ordering::SeqCst)
    );
}
