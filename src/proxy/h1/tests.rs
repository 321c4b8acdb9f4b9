//! The server connection against raw sockets: framing both ways, keep-alive and pipelining,
//! the smuggling refusals, 100-continue, draining, hang-ups and shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A route for the tests: what the handler answers (the h2c server's tests use it too).
pub(in crate::proxy) type Reply =
    Box<dyn Fn(Request<ProxyBody>) -> BoxFuture<'static, Response<ProxyBody>> + Send + Sync>;

struct FnHandler(Reply);

impl Handler for FnHandler {
    fn call(&self, req: ProxyRequest, _peer: SocketAddr) -> impl Future<Output = Response<ProxyBody>> + Send {
        (self.0)(req.into_parts().0)
    }
}

/// Answers `METHOD PATH len=N trailers=T` after reading the whole body.
fn echo() -> Reply {
    Box::new(|req| {
        Box::pin(async move {
            let line = format!("{} {}", req.method(), req.uri());
            let collected = req.into_body().collect().await;
            let text = match collected {
                Ok(c) => {
                    let trailers = c.trailers().map_or(0, |t| t.len());
                    let data = c.to_bytes();
                    format!("{line} len={} trailers={trailers} body={}", data.len(), String::from_utf8_lossy(&data))
                }
                Err(e) => format!("{line} body error: {e}"),
            };
            Response::new(body::full(text))
        })
    })
}

/// An answer body without end: 64 KiB frames as fast as they are taken. Counts itself in
/// `dropped` when it goes.
pub(in crate::proxy) struct Endless(pub Arc<AtomicUsize>);

impl Body for Endless {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        static CHUNK: [u8; 64 << 10] = [b'x'; 64 << 10];
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Answers every request with an [`Endless`] body.
pub(in crate::proxy) fn endless(dropped: Arc<AtomicUsize>) -> Reply {
    Box::new(move |_| {
        let dropped = dropped.clone();
        Box::pin(async move { Response::new(body::boxed(Endless(dropped))) })
    })
}

pub(in crate::proxy) fn limits() -> Limits {
    Limits {
        max_head: 8 << 10,
        max_header_list_size: 16 << 10,
        head_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        send_timeout: Duration::from_secs(10),
    }
}

pub(in crate::proxy) struct Server {
    pub addr: SocketAddr,
    pub stop: Arc<Stop>,
    /// Connections served to their end.
    pub ended: Arc<AtomicUsize>,
}

/// A listener on a loopback port whose connections [`serve`] runs with `reply`.
pub(in crate::proxy) async fn server_with(reply: Reply, limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(FnHandler(reply));
    let stop = Arc::new(Stop::default());
    let ended = Arc::new(AtomicUsize::new(0));
    let (s, e) = (stop.clone(), ended.clone());
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let (h, s, e) = (handler.clone(), s.clone(), e.clone());
            tokio::spawn(async move {
                serve(stream, peer, h, limits, s).await;
                e.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Server { addr, stop, ended }
}

async fn server(reply: Reply) -> Server {
    server_with(reply, limits()).await
}

/// One answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads answers off a raw connection, keeping what follows one for the next.
struct Client {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client { s: tokio::net::TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.s.write_all(raw).await.unwrap();
    }

    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk))
            .await
            .expect("read timed out")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next answer; `head_only` for an answer to HEAD.
    async fn answer(&mut self, head_only: bool) -> Answer {
        let (len, status, headers) = loop {
            let mut h = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut h);
            if let httparse::Status::Complete(len) = r.parse(&self.buf).unwrap() {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect::<Vec<_>>();
                break (len, r.code.unwrap(), headers);
            }
            assert!(self.more().await, "closed before a whole head: {:?}", String::from_utf8_lossy(&self.buf));
        };
        self.buf.drain(..len);
        let mut a = Answer { status, headers, body: String::new() };
        if head_only || status == 204 || status == 304 || status < 200 {
            return a;
        }
        if let Some(n) = a.header("content-length").map(|v| v.parse::<usize>().unwrap()) {
            while self.buf.len() < n {
                assert!(self.more().await, "closed mid-body");
            }
            a.body = String::from_utf8(self.buf.drain(..n).collect()).unwrap();
        } else if a.header("transfer-encoding") == Some("chunked") {
            loop {
                let mut framing = Framing::Chunked(Chunk::Size);
                let mut b = BytesMut::from(&self.buf[..]);
                let mut body = Vec::new();
                let done = loop {
                    match http1::decode(&mut framing, &mut b, 1 << 16).unwrap() {
                        Step::Frame(f) => body.extend_from_slice(f.data_ref().map_or(&[][..], |d| &d[..])),
                        Step::End => break true,
                        Step::More => break false,
                    }
                };
                if done {
                    let used = self.buf.len() - b.len();
                    self.buf.drain(..used);
                    a.body = String::from_utf8(body).unwrap();
                    break;
                }
                assert!(self.more().await, "closed mid-chunks");
            }
        } else {
            while self.more().await {}
            a.body = String::from_utf8(std::mem::take(&mut self.buf)).unwrap();
        }
        a
    }

    /// True once the server has closed the connection (after anything still buffered).
    async fn closed(&mut self) -> bool {
        !self.more().await
    }
}

#[tokio::test]
async fn keep_alive_and_pipelined_requests_are_answered_in_order_on_one_connection() {
    let srv = server(echo()).await;
    let mut c = Client::connect(srv.addr).await;
    c.send(b"GET /one HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.body.as_str()), (200, "GET /one len=0 trailers=0 body="));
    assert!(a.header("date").is_some(), "an answer without a Date gets one");
    assert!(a.header("connection").is_none(), "HTTP/1.1 keeps alive without saying so");
    // Three requests in one write, the last with a body.
    c.send(b"GET /two HTTP/1.1\r\nhost: a\r\n\r\nGET /three HTTP/1.1\r\nhost: a\r\n\r\nPOST /four HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc").await;
    for want in ["GET /two len=0", "GET /three len=0", "POST /four len=3 trailers=0 body=abc"] {
        let a = c.answer(false).await;
        assert!(a.body.starts_with(want), "{want} -> {a:?}");
    }
    c.send(b"GET /last HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.closed().await, "closed after the answer to connection: close");
}

#[tokio::test]
async fn request_bodies_by_length_and_by_chunks_arrive_whole_however_they_are_cut() {
    let srv = server(echo()).await;
    let chunked = b"POST /c HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-check: 1\r\n\r\n";
    let sized = b"PUT /s HTTP/1.1\r\nhost: a\r\ncontent-length: 11\r\n\r\nhello world";
    for (raw, want) in [
        (&chunked[..], "POST /c len=11 trailers=1 body=hello world"),
        (&sized[..], "PUT /s len=11 trailers=0 body=hello world"),
    ] {
        for step in [1, 3, raw.len()] {
            let mut c = Client::connect(srv.addr).await;
            for piece in raw.chunks(step) {
                c.send(piece).await;
                tokio::task::yield_now().await;
            }
            let a = c.answer(false).await;
            assert_eq!(a.body, want, "sent {step} bytes at a time");
            // The connection carries the next request.
            c.send(b"GET /after HTTP/1.1\r\nhost: a\r\n\r\n").await;
            assert!(c.answer(false).await.body.starts_with("GET /after"));
        }
    }
}

#[tokio::test]
async fn smuggling_shapes_and_oversized_heads_are_refused_before_the_handler_and_the_connection_closes() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let srv = server(Box::new(move |_req| {
        seen.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Response::new(body::full("handled")) })
    }))
    .await;
    let big = format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n", "x".repeat(9 << 10));
    let many = format!("GET / HTTP/1.1\r\n{}\r\n", (0..120).map(|i| format!("x-{i}: 1\r\n")).collect::<String>());
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (
            b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
            400,
            "both",
        ),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, gzip\r\n\r\n", 400, "does not end in chunked"),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello", 400, "disagree"),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: -1\r\n\r\n", 400, "not a length"),
        (b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400, "HTTP/1.0"),
        (b"GET /\x01 HTTP/1.1\r\n\r\n", 400, "malformed"),
        (big.as_bytes(), 431, "larger than"),
        (many.as_bytes(), 431, "larger than"),
    ];
    for (raw, status, why) in cases {
        let mut c = Client::connect(srv.addr).await;
        c.send(raw).await;
        let a = c.answer(false).await;
        assert_eq!(a.status, status, "{:?} -> {a:?}", String::from_utf8_lossy(&raw[..raw.len().min(80)]));
        assert!(a.body.contains(why), "the answer says why: {a:?}");
        assert!(a.header("x-lifeline-error").is_some(), "{a:?}");
        assert_eq!(a.header("connection"), Some("close"));
        assert!(c.closed().await);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no refused request reached the handler");
}

#[tokio::test]
async fn answers_are_framed_by_what_the_body_knows() {
    let srv = server(Box::new(|req| {
        Box::pin(async move {
            let stream = |parts: Vec<&'static str>| {
                let frames = parts.into_iter().map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from(p))));
                body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames)))
            };
            match req.uri().path() {
                "/stream" => Response::new(stream(vec!["ab", "cd"])),
                "/empty" => Response::new(body::empty()),
                "/nocontent" => {
                    let mut r = Response::new(body::empty());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                "/head" => {
                    let mut r = Response::new(body::empty());
                    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("42"));
                    r
                }
                _ => {
                    let mut r = Response::new(body::full("12345"));
                    // A stale length from elsewhere never reaches the wire: the body's does.
                    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
                    r.headers_mut().insert(DATE, HeaderValue::from_static("Tue, 01 Dec 2026 00:00:00 GMT"));
                    r
                }
            }
        })
    }))
    .await;
    let mut c = Client::connect(srv.addr).await;
    c.send(b"GET /stream HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!((a.header("transfer-encoding"), a.body.as_str()), (Some("chunked"), "abcd"));
    c.send(b"GET /empty HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!(c.answer(false).await.header("content-length"), Some("0"));
    c.send(b"GET /nocontent HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.header("content-length")), (204, None));
    c.send(b"HEAD /head HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let a = c.answer(true).await;
    assert_eq!(a.header("content-length"), Some("42"), "HEAD keeps the length it was given");
    c.send(b"GET /fixed HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!((a.header("content-length"), a.body.as_str()), (Some("5"), "12345"));
    assert_eq!(
        a.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("date")).count(),
        1,
        "the handler's Date is kept, not doubled"
    );

    // HTTP/1.0: a stream of unknown length is ended by the close; keep-alive only when asked.
    let mut c = Client::connect(srv.addr).await;
    c.send(b"GET /fixed HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!(a.header("connection"), Some("keep-alive"));
    c.send(b"GET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").await;
    let mut raw = Vec::new();
    c.s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8([std::mem::take(&mut c.buf), raw].concat()).unwrap();
    assert!(raw.starts_with("HTTP/1.0 200 OK\r\n") && raw.ends_with("\r\n\r\nabcd"), "{raw}");
    assert!(!raw.contains("transfer-encoding"), "no chunks for HTTP/1.0: {raw}");
    let mut c = Client::connect(srv.addr).await;
    c.send(b"GET /fixed HTTP/1.0\r\n\r\n").await;
    assert_eq!(c.answer(false).await.header("connection"), Some("close"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn expect_continue_is_answered_only_when_the_body_is_read() {
    let srv = server(Box::new(|req| {
        Box::pin(async move {
            if req.uri().path() == "/reject" {
                let mut r = Response::new(body::full("no"));
                *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                return r;
            }
            let n = req.into_body().collect().await.map(|c| c.to_bytes().len()).unwrap_or(0);
            Response::new(body::full(format!("got {n}")))
        })
    }))
    .await;
    let mut c = Client::connect(srv.addr).await;
    c.send(b"POST /take HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n").await;
    let interim = c.answer(false).await;
    assert_eq!(interim.status, 100, "the handler read the body, so the caller is asked to send it");
    c.send(b"data").await;
    assert_eq!(c.answer(false).await.body, "got 4");

    let mut c = Client::connect(srv.addr).await;
    c.send(b"POST /reject HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 100000\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!(a.status, 413, "answered without asking for the body: {a:?}");
    assert_eq!(a.header("connection"), Some("close"), "the caller may or may not send the body now");
    assert!(c.closed().await);
}

#[tokio::test]
async fn an_unread_body_is_drained_when_small_and_closes_the_connection_when_large() {
    let srv = server(Box::new(|_req| Box::pin(async { Response::new(body::full("early")) }))).await;
    let mut c = Client::connect(srv.addr).await;
    c.send(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n0123456789").await;
    let a = c.answer(false).await;
    assert_eq!((a.body.as_str(), a.header("connection")), ("early", None));
    c.send(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").await;
    assert_eq!(c.answer(false).await.body, "early", "the drained body did not leak into the next request");
    c.send(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!(c.answer(false).await.status, 200);

    let mut c = Client::connect(srv.addr).await;
    c.send(format!("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n", DRAIN_MAX + 1).as_bytes()).await;
    let a = c.answer(false).await;
    assert_eq!(a.header("connection"), Some("close"), "too much to drain: {a:?}");
    assert!(c.closed().await);
}

#[tokio::test]
async fn a_body_kept_past_its_answer_reads_nothing_of_the_next_request() {
    let kept: Arc<Mutex<Option<ProxyBody>>> = Arc::default();
    let stash = kept.clone();
    let srv = server(Box::new(move |req| {
        let stash = stash.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if path == "/keep" {
                *stash.lock().unwrap() = Some(req.into_body());
            }
            Response::new(body::full(path))
        })
    }))
    .await;
    let mut c = Client::connect(srv.addr).await;
    c.send(b"POST /keep HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi").await;
    assert_eq!(c.answer(false).await.body, "/keep");
    c.send(b"POST /next HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\nnext").await;
    assert_eq!(c.answer(false).await.body, "/next");
    let body = kept.lock().unwrap().take().expect("kept");
    assert!(body.collect().await.is_err(), "the stale body fails instead of reading the connection");
}

#[tokio::test]
async fn a_caller_that_hangs_up_cancels_its_request() {
    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let srv = server(Box::new(move |_req| {
        let guard = Guard(d.clone());
        Box::pin(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Response::new(body::empty())
        })
    }))
    .await;
    let mut c = Client::connect(srv.addr).await;
    c.send(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "still waiting");
    drop(c);
    for _ in 0..100 {
        if dropped.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the request was dropped when its caller went away");
    assert_eq!(srv.ended.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_head_that_dawdles_gets_408_and_a_silent_connection_is_closed() {
    let srv = server_with(echo(), Limits { head_timeout: Duration::from_millis(200), ..limits() }).await;
    let mut c = Client::connect(srv.addr).await;
    c.send(b"GET / HTTP/1.1\r\nhost:").await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.header("x-lifeline-error")), (408, Some("request_timeout")));
    assert!(c.closed().await);
    let mut silent = Client::connect(srv.addr).await;
    assert!(silent.closed().await, "a connection that never sends a head is closed");
}

#[tokio::test]
async fn stop_closes_idle_connections_at_once_and_busy_ones_after_their_answer() {
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let srv = server(Box::new(move |_req| {
        let r = r.clone();
        Box::pin(async move {
            r.notified().await;
            Response::new(body::full("done"))
        })
    }))
    .await;
    let mut idle = Client::connect(srv.addr).await;
    let mut busy = Client::connect(srv.addr).await;
    busy.send(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    srv.stop.trigger();
    let closed = tokio::time::timeout(Duration::from_secs(1), idle.closed()).await;
    assert!(closed.unwrap_or(false), "the idle connection closed at once, not at its head timeout");
    release.notify_waiters();
    let a = busy.answer(false).await;
    assert_eq!((a.body.as_str(), a.header("connection")), ("done", Some("close")));
    assert!(busy.closed().await);
}

#[tokio::test]
async fn this_hops_fields_never_reach_the_handler() {
    let srv = server(Box::new(|req| {
        Box::pin(async move {
            let mut names: Vec<String> = req.headers().keys().map(|n| n.to_string()).collect();
            names.sort();
            Response::new(body::full(names.join(",")))
        })
    }))
    .await;
    let mut c = Client::connect(srv.addr).await;
    c.send(
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\n\
          TE: trailers\r\nUpgrade: websocket\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\n\
          X-App: 1\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    let a = c.answer(false).await;
    assert_eq!(a.body, "content-length,host,x-app");
    assert!(a.header("connection").is_none(), "keep-alive was asked and given");
}

#[tokio::test]
async fn a_connection_idle_past_its_timeout_is_closed_and_a_busy_one_is_not() {
    let srv = server_with(echo(), Limits { idle_timeout: Duration::from_millis(200), ..limits() }).await;
    let mut busy = Client::connect(srv.addr).await;
    let mut idle = Client::connect(srv.addr).await;
    idle.send(b"GET /once HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!(idle.answer(false).await.status, 200);
    let started = std::time::Instant::now();
    // A request every 120 ms for ~700 ms: never idle for a whole timeout.
    for _ in 0..6 {
        busy.send(b"GET /again HTTP/1.1\r\nhost: a\r\n\r\n").await;
        assert_eq!(busy.answer(false).await.status, 200, "the busy connection stays open");
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert!(idle.closed().await, "idle since its one request: closed");
    assert!(srv.ended.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout_and_a_slow_reader_is_not() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let limits = Limits { send_timeout: Duration::from_secs(1), ..limits() };
    let srv = server_with(endless(dropped.clone()), limits).await;
    // A slow reader, all along: 512 KiB every 50 ms. (The kernel reports a full socket
    // writable again only once half of what it holds has gone, a few MB on loopback, so
    // "progress" comes in steps of a few hundred ms at this pace.)
    let mut slow = Client::connect(srv.addr).await;
    slow.send(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let slow = {
        let reading = reading.clone();
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 512 << 10];
            while reading.load(Ordering::SeqCst) {
                tokio::time::timeout(Duration::from_secs(5), slow.s.read_exact(&mut chunk)).await??;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(srv.ended.load(Ordering::SeqCst), 0, "a slow reader keeps its connection");
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    // A client that never reads: its answer fills the socket's buffers, then nothing moves.
    let started = std::time::Instant::now();
    let mut stuck = Client::connect(srv.addr).await;
    stuck.send(b"GET /stuck HTTP/1.1\r\nhost: a\r\n\r\n").await;
    while srv.ended.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the stalled connection was never cut off");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(1), "cut off before its timeout");
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the stalled answer's body (its upstream) is let go");
    // The slow reader was served all along.
    reading.store(false, Ordering::SeqCst);
    slow.await.unwrap().expect("the slow reader's answer kept coming");
    assert_eq!(srv.ended.load(Ordering::SeqCst), 1);
}
