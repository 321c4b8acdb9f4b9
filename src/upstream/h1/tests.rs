//! The client codec against raw sockets: framing both ways, reuse, and malformed answers.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::proxy::body;

/// Collects the connections a body hands back.
#[derive(Default)]
struct Home(Mutex<Vec<Conn>>);

impl Release for Home {
    fn release(&self, conn: Conn) {
        self.0.lock().unwrap().push(conn);
    }
}

impl Home {
    fn take(&self) -> Option<Conn> {
        self.0.lock().unwrap().pop()
    }
}

async fn pair() -> (Conn, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (Conn::new(client), server)
}

/// Reads one request, head and body (by Content-Length or chunked), and returns it raw.
async fn read_request(s: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "request head cut short: {raw:?}");
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw.clone()).unwrap().to_ascii_lowercase();
    if let Some(n) = head.lines().find_map(|l| l.strip_prefix("content-length: ")) {
        let mut body = vec![0u8; n.trim().parse().unwrap()];
        s.read_exact(&mut body).await.unwrap();
        raw.extend(body);
    } else if head.contains("transfer-encoding: chunked") {
        while !raw.ends_with(b"\r\n0\r\n\r\n") {
            assert_eq!(s.read(&mut byte).await.unwrap(), 1);
            raw.push(byte[0]);
        }
    }
    String::from_utf8(raw).unwrap()
}

fn get(path: &str) -> Request<ProxyBody> {
    Request::get(path).header("host", "backend").body(body::empty()).unwrap()
}

async fn collect(resp: Response<ProxyBody>) -> (Bytes, Option<HeaderMap>) {
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

/// The answer's fields as one map: those passed through, then the response's own.
fn fields(resp: &mut Response<ProxyBody>) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Some(p) = resp.body().fields() {
        p.each(|name, value, _| {
            map.append(http::HeaderName::from_bytes(name).unwrap(), http::HeaderValue::from_bytes(value).unwrap());
        });
    }
    for (name, value) in resp.headers() {
        map.append(name, value.clone());
    }
    map
}

fn failure_text(f: Failure) -> String {
    match f {
        Failure::NotSent(e, _) => format!("not sent: {e}"),
        Failure::Exchange(why) => why,
        Failure::Stale(why) => format!("stale: {why}"),
        Failure::Body(e) => format!("body: {e}"),
    }
}

/// An exchange that may not be sent again.
async fn send(conn: Conn, req: Request<ProxyBody>, home: Arc<Home>) -> Result<Response<ProxyBody>, Failure> {
    exchange(conn, &mut ProxyRequest::new(req), "backend", home, false).await
}

/// A kept-alive connection the backend closed while it sat idle: with `resend`, a bodyless GET
/// comes back whole (to go out elsewhere); without it, or with a body, or once the backend
/// started answering, the failure stays an exchange failure (the request may have been seen).
#[tokio::test]
async fn a_connection_closed_while_idle_hands_back_a_resendable_request_only() {
    async fn closed_after_request(answer: &'static [u8]) -> (Conn, tokio::task::JoinHandle<String>) {
        let (conn, mut server) = pair().await;
        let seen = tokio::spawn(async move {
            let req = read_request(&mut server).await;
            server.write_all(answer).await.unwrap();
            drop(server);
            req
        });
        (conn, seen)
    }
    let home = Arc::new(Home::default());
    let (conn, seen) = closed_after_request(b"").await;
    let mut back = ProxyRequest::new(Request::get("/again?x=1").header("x-k", "v").body(body::empty()).unwrap());
    match exchange(conn, &mut back, "10.0.0.9:80", home.clone(), true).await {
        Err(Failure::Stale(why)) => {
            assert!(why.contains("before a response"), "{why}");
            assert_eq!(back.uri(), "/again?x=1");
            assert_eq!(back.headers()["x-k"], "v");
            assert!(back.headers().get("host").is_none(), "the Host written for this hop is not left in the request");
            assert!(http_body::Body::is_end_stream(back.body()));
        }
        other => panic!("expected a stale connection, got {:?}", other.map(|r| r.status())),
    }
    let seen = seen.await.unwrap();
    assert!(seen.starts_with("GET /again?x=1 HTTP/1.1\r\nx-k: v\r\nhost: 10.0.0.9:80\r\n\r\n"), "{seen}");

    let (conn, _seen) = closed_after_request(b"").await;
    let r = send(conn, get("/"), home.clone()).await;
    assert!(matches!(r, Err(Failure::Exchange(_))), "without resend: the outcome is unknown");

    let (conn, _seen) = closed_after_request(b"").await;
    let post = Request::post("/pay").header("host", "b").body(body::full("{}")).unwrap();
    let r = exchange(conn, &mut ProxyRequest::new(post), "b", home.clone(), true).await;
    assert!(matches!(r, Err(Failure::Exchange(_))), "a request with a body is never handed back once sent");

    let (conn, _seen) = closed_after_request(b"HTTP/1.1 200 OK\r\nContent-Le").await;
    let r = exchange(conn, &mut ProxyRequest::new(get("/")), "b", home.clone(), true).await;
    assert!(matches!(r, Err(Failure::Exchange(_))), "the backend started answering: not stale");
}

#[tokio::test]
async fn a_length_framed_response_is_read_whole_and_the_connection_carries_the_next() {
    let (conn, mut server) = pair().await;
    let home = Arc::new(Home::default());
    let backend = tokio::spawn(async move {
        let mut seen = Vec::new();
        for body in ["hello", "world!"] {
            seen.push(read_request(&mut server).await);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Custom: a b\r\nRetry-After: 7\r\n\r\n{body}",
                body.len()
            );
            server.write_all(resp.as_bytes()).await.unwrap();
        }
        seen
    });
    let mut resp = send(conn, get("/first?q=1"), home.clone()).await.map_err(failure_text).unwrap();
    assert_eq!(resp.status(), 200);
    // The backend's fields pass through unparsed; `Retry-After` is still read from them.
    assert_eq!(crate::resilience::retry::backoff::retry_after(&resp), Some(Duration::from_secs(7)));
    assert_eq!(fields(&mut resp)["x-custom"], "a b");
    assert_eq!(resp.body().size_hint().exact(), Some(5));
    assert_eq!(collect(resp).await.0, "hello");
    let conn = home.take().expect("the connection came home after its body ended");
    assert!(conn.is_usable());
    // An h2c caller's answer passes its fields through the same way (the h2c server encodes
    // them from the spans).
    let mut h2 = get("/second");
    *h2.version_mut() = http::Version::HTTP_2;
    let mut resp = send(conn, h2, home.clone()).await.map_err(failure_text).unwrap();
    assert!(resp.headers().is_empty());
    assert_eq!(resp.body().fields().and_then(|p| p.get("x-custom")), Some(&b"a b"[..]));
    assert_eq!(fields(&mut resp)["content-length"], "6");
    assert_eq!(collect(resp).await.0, "world!");
    assert!(home.take().is_some());
    let seen = backend.await.unwrap();
    assert!(seen[0].starts_with("GET /first?q=1 HTTP/1.1\r\n"), "{}", seen[0]);
    assert!(seen[0].contains("host: backend\r\n"));
    assert!(
        !seen[0].to_ascii_lowercase().contains("content-length"),
        "a GET without a body has no length: {}",
        seen[0]
    );
    assert!(seen[1].starts_with("GET /second HTTP/1.1\r\n"));
}

#[tokio::test]
async fn a_chunked_response_arriving_byte_by_byte_gives_its_data_and_trailers() {
    let (conn, mut server) = pair().await;
    let home = Arc::new(Home::default());
    tokio::spawn(async move {
        read_request(&mut server).await;
        let resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Checksum: 42\r\n\r\n";
        for b in resp.as_bytes() {
            server.write_all(&[*b]).await.unwrap();
            tokio::task::yield_now().await;
        }
        // Keep the socket open: the connection must come home without an EOF.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let resp = send(conn, get("/"), home.clone()).await.map_err(failure_text).unwrap();
    assert_eq!(resp.body().size_hint().exact(), None);
    let (data, trailers) = collect(resp).await;
    assert_eq!(data, "helloabcdefghijklmnopqrstuvwxyz");
    assert_eq!(trailers.expect("trailers")["x-checksum"], "42");
    assert!(home.take().is_some(), "a fully read chunked body returns the connection");
}

#[tokio::test]
async fn a_body_delimited_by_close_is_read_to_the_end_and_the_connection_is_not_reused() {
    let (conn, mut server) = pair().await;
    let home = Arc::new(Home::default());
    tokio::spawn(async move {
        read_request(&mut server).await;
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\nsome ").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        server.write_all(b"bytes").await.unwrap();
    });
    let resp = send(conn, get("/"), home.clone()).await.map_err(failure_text).unwrap();
    assert_eq!(collect(resp).await.0, "some bytes");
    assert!(home.take().is_none());
}

#[tokio::test]
async fn head_204_304_carry_no_body_and_interim_answers_are_skipped() {
    let (conn, mut server) = pair().await;
    let home = Arc::new(Home::default());
    tokio::spawn(async move {
        let answers: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        ];
        for a in answers {
            read_request(&mut server).await;
            server.write_all(a).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let head = Request::head("/").header("host", "b").body(body::empty()).unwrap();
    let mut conn = conn;
    let mut statuses = Vec::new();
    for req in [head, get("/204"), get("/304"), get("/continue")] {
        let resp = send(conn, req, home.clone()).await.map_err(failure_text).unwrap();
        statuses.push(resp.status().as_u16());
        let is_last = resp.status() == 201;
        let (data, _) = collect(resp).await;
        assert_eq!(data, if is_last { "ok" } else { "" });
        conn = home.take().expect("every answer here leaves the connection reusable");
    }
    assert_eq!(statuses, [200, 204, 304, 201]);
}

/// A backend that reads `n` requests, answers each `200` with no body, and gives back what it
/// read.
fn answer_ok(mut server: TcpStream, n: usize) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..n {
            seen.push(read_request(&mut server).await);
            server.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
        }
        seen
    })
}

#[tokio::test]
async fn request_bodies_go_out_with_a_length_when_known_and_chunked_when_not() {
    let (conn, server) = pair().await;
    let home = Arc::new(Home::default());
    let backend = answer_ok(server, 4);
    // A known length; an inbound Content-Length header is never copied (the body decides).
    let post = Request::post("/pay")
        .header("host", "b")
        .header("content-length", "999")
        .body(body::full(r#"{"a":1}"#))
        .unwrap();
    let resp = send(conn, post, home.clone()).await.map_err(failure_text).unwrap();
    collect(resp).await;
    // An unknown length: chunked, one chunk per frame; a big frame goes out on its own.
    let big = "x".repeat(INLINE_BODY + 10);
    let frames = vec![Ok::<_, BoxError>(Frame::data(Bytes::from("abc"))), Ok(Frame::data(Bytes::from(big.clone())))];
    let streamed =
        Request::post("/stream").header("host", "b").body(body::boxed(StreamBody::new(stream::iter(frames)))).unwrap();
    let resp = send(home.take().unwrap(), streamed, home.clone()).await.map_err(failure_text).unwrap();
    collect(resp).await;
    // An empty POST still says its length (some backends answer 411 otherwise).
    let empty = Request::post("/empty").header("host", "b").body(body::empty()).unwrap();
    let resp = send(home.take().unwrap(), empty, home.clone()).await.map_err(failure_text).unwrap();
    collect(resp).await;
    // A GET that said `Content-Length: 0` says it upstream too (one that did not, does not).
    let get = Request::get("/zero").header("content-length", "0").header("host", "b").body(body::empty()).unwrap();
    let resp = send(home.take().unwrap(), get, home.clone()).await.map_err(failure_text).unwrap();
    collect(resp).await;

    let seen = backend.await.unwrap();
    assert_eq!(seen[0], "POST /pay HTTP/1.1\r\nhost: b\r\ncontent-length: 7\r\n\r\n{\"a\":1}");
    let chunked = format!(
        "POST /stream HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    assert_eq!(seen[1], chunked);
    assert_eq!(seen[2], "POST /empty HTTP/1.1\r\nhost: b\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(seen[3], "GET /zero HTTP/1.1\r\nhost: b\r\ncontent-length: 0\r\n\r\n");
}

/// This hop's fields are written by the encoder from the request's `Hop`, in place of the
/// caller's: one `x-forwarded-for` line listing every earlier hop then the peer, the caller's
/// `x-forwarded-proto` kept (else `http`), exactly one `x-request-id`, the attempt's time
/// budget in place of the caller's, a `Host` from the caller's authority when it sent none.
/// Without a `Hop` the fields go as they came.
#[tokio::test]
async fn this_hops_fields_are_written_from_the_hop_in_place_of_the_callers() {
    let (conn, server) = pair().await;
    let home = Arc::new(Home::default());
    let backend = answer_ok(server, 8);
    let hop = |peer: &str| crate::proxy::body::Hop {
        peer: Some(peer.parse().unwrap()),
        request_id: Some(http::HeaderValue::from_static("id-1")),
        ..Default::default()
    };
    let authority = |a: &'static str| crate::proxy::body::Hop {
        authority: Some(http::uri::Authority::from_static(a)),
        ..Default::default()
    };
    let budget = |ms, grpc| crate::proxy::body::Hop {
        budget: Some(crate::proxy::body::Budget { ms, grpc }),
        ..Default::default()
    };
    let mut conn = Some(conn);
    let requests = [
        (get("/plain"), hop("127.0.0.1")),
        (
            Request::get("/relayed")
                .header("host", "b")
                .header("x-forwarded-for", "10.0.0.1, 10.0.0.2")
                .header("x-request-id", "callers")
                .header("x-forwarded-for", "10.0.0.3")
                .header("x-forwarded-proto", "https")
                .header("x-app", "kept")
                .body(body::empty())
                .unwrap(),
            hop("2001:db8::1"),
        ),
        (
            Request::get("/blank").header("host", "b").header("x-forwarded-for", " ").body(body::empty()).unwrap(),
            hop("10.9.8.7"),
        ),
        (
            Request::get("/as-is")
                .header("host", "b")
                .header("x-forwarded-for", "10.0.0.1")
                .header("x-request-id", "callers")
                .body(body::empty())
                .unwrap(),
            crate::proxy::body::Hop::default(),
        ),
        (
            Request::get("/budget")
                .header("host", "b")
                .header("x-lifeline-timeout-ms", "999")
                .header("grpc-timeout", "5S")
                .body(body::empty())
                .unwrap(),
            budget(250, false),
        ),
        (
            Request::get("/grpc").header("host", "b").header("grpc-timeout", "5S").body(body::empty()).unwrap(),
            budget(1234, true),
        ),
        // An h2c caller's `:authority` is its Host; a Host it sent wins.
        (Request::get("/h2").body(body::empty()).unwrap(), authority("pay.example:8443")),
        (Request::get("/h2-host").header("host", "given").body(body::empty()).unwrap(), authority("other")),
    ];
    for (req, hop) in requests {
        let c = conn.take().or_else(|| home.take()).unwrap();
        let mut req = ProxyRequest::with_hop(req, hop);
        let resp = exchange(c, &mut req, "backend", home.clone(), false).await.map_err(failure_text).unwrap();
        collect(resp).await;
    }
    let seen = backend.await.unwrap();
    assert_eq!(
        seen[0],
        "GET /plain HTTP/1.1\r\nhost: backend\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-request-id: id-1\r\n\r\n"
    );
    assert_eq!(
        seen[1],
        "GET /relayed HTTP/1.1\r\nhost: b\r\nx-forwarded-for: 10.0.0.1, 10.0.0.2, 10.0.0.3, 2001:db8::1\r\n\
         x-forwarded-proto: https\r\nx-app: kept\r\nx-request-id: id-1\r\n\r\n"
    );
    assert_eq!(
        seen[2],
        "GET /blank HTTP/1.1\r\nhost: b\r\nx-forwarded-for: 10.9.8.7\r\nx-forwarded-proto: http\r\nx-request-id: id-1\r\n\r\n"
    );
    assert_eq!(seen[3], "GET /as-is HTTP/1.1\r\nhost: b\r\nx-forwarded-for: 10.0.0.1\r\nx-request-id: callers\r\n\r\n");
    // The attempt's budget replaces the caller's field of the kind it was read from.
    assert_eq!(seen[4], "GET /budget HTTP/1.1\r\nhost: b\r\ngrpc-timeout: 5S\r\nx-lifeline-timeout-ms: 250\r\n\r\n");
    assert_eq!(seen[5], "GET /grpc HTTP/1.1\r\nhost: b\r\ngrpc-timeout: 1234m\r\n\r\n");
    assert_eq!(seen[6], "GET /h2 HTTP/1.1\r\nhost: pay.example:8443\r\n\r\n");
    assert_eq!(seen[7], "GET /h2-host HTTP/1.1\r\nhost: given\r\n\r\n");
}

/// Sends one GET to a backend that answers `answer` (then closes when `close`), and returns
/// what came of it: the exchange's failure, or the body's error, or the body.
async fn outcome(answer: &'static [u8], close: bool) -> (Result<Result<Bytes, String>, String>, bool) {
    let (conn, mut server) = pair().await;
    let home = Arc::new(Home::default());
    tokio::spawn(async move {
        read_request(&mut server).await;
        server.write_all(answer).await.unwrap();
        if !close {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    let result = match send(conn, get("/"), home.clone()).await {
        Err(f) => Err(failure_text(f)),
        Ok(resp) => Ok(resp.into_body().collect().await.map(|c| c.to_bytes()).map_err(|e| e.to_string())),
    };
    (result, home.take().is_some())
}

#[tokio::test]
async fn malformed_or_cut_answers_fail_and_retire_the_connection() {
    let (r, home) = outcome(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", false).await;
    assert!(r.unwrap_err().contains("disagree"));
    assert!(!home);
    let (r, _) = outcome(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).await;
    assert!(r.unwrap_err().contains("not a length"));
    let (r, _) = outcome(b"HTTP/1.1 2000 Weird\r\n\r\n", false).await;
    assert!(r.unwrap_err().contains("invalid response"));
    let (r, home) = outcome(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false).await;
    assert!(r.unwrap().unwrap_err().contains("chunk size"));
    assert!(!home);
    let (r, home) = outcome(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true).await;
    assert!(r.unwrap().unwrap_err().contains("mid-body"));
    assert!(!home);
    let (r, _) = outcome(b"", true).await;
    assert!(r.unwrap_err().contains("before a response"));
    let (r, _) = outcome(b"HTTP/1.1 200 OK\r\nConte", true).await;
    assert!(r.unwrap_err().contains("middle of the response head"));
    // Announced close: read whole, then not reused.
    let (r, home) = outcome(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", false).await;
    assert_eq!(r.unwrap().unwrap(), "ok");
    assert!(!home);
    // Both Transfer-Encoding and Content-Length: the chunks frame it, the length is dropped
    // (it would mislead whoever frames the answer next), and the connection is spent.
    let (conn, mut server) = pair().await;
    let home_both = Arc::new(Home::default());
    tokio::spawn(async move {
        read_request(&mut server).await;
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        server.write_all(both).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let mut resp = send(conn, get("/"), home_both.clone()).await.map_err(failure_text).unwrap();
    assert!(fields(&mut resp).get("content-length").is_none());
    assert_eq!(collect(resp).await.0, "hello");
    assert!(home_both.take().is_none());
    // HTTP/1.0 answers are not reused either.
    let (r, home) = outcome(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
    assert_eq!(r.unwrap().unwrap(), "ok");
    assert!(!home);
}

#[tokio::test]
async fn an_idle_connection_is_unusable_once_the_backend_closed_it_or_spoke_unasked() {
    let (conn, server) = pair().await;
    assert!(conn.is_usable());
    drop(server);
    // No yield to the reactor: only the kernel knows about the close yet.
    std::thread::park_timeout(Duration::from_millis(50));
    assert!(!conn.is_usable(), "closed by the backend");

    let (conn, mut server) = pair().await;
    server.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!conn.is_usable(), "the backend sent something nobody asked for");
}

#[tokio::test]
async fn a_request_that_never_left_comes_back_whole() {
    let (conn, server) = pair().await;
    // The backend resets the connection: the next write fails before a byte is out.
    socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO)).unwrap();
    drop(server);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let home = Arc::new(Home::default());
    let mut back = ProxyRequest::new(
        Request::post("/pay").header("host", "b").header("idempotency-key", "k1").body(body::full("{}")).unwrap(),
    );
    match exchange(conn, &mut back, "backend", home, false).await {
        Err(Failure::NotSent(_, true)) => {}
        Err(other) => panic!("{}", failure_text(other)),
        Ok(resp) => panic!("answered {}", resp.status()),
    }
    assert_eq!(back.uri(), "/pay");
    assert_eq!(back.headers()["idempotency-key"], "k1");
    assert_eq!(back.body().size_hint().exact(), Some(2), "the length survives, so it goes out framed the same");
    assert_eq!(back.into_parts().0.into_body().collect().await.unwrap().to_bytes(), "{}");
}

#[tokio::test]
async fn answers_come_without_this_hops_fields_and_connection_close_retires_the_connection() {
    let (conn, mut server) = pair().await;
    let home = Arc::new(Home::default());
    let backend = tokio::spawn(async move {
        read_request(&mut server).await;
        let first = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n\
                     Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-App: kept\r\nContent-Length: 2\r\n\r\nok";
        server.write_all(first.as_bytes()).await.unwrap();
        read_request(&mut server).await;
        let second = "HTTP/1.1 200 OK\r\nCONNECTION: Close\r\nContent-Length: 3\r\n\r\nbye";
        server.write_all(second.as_bytes()).await.unwrap();
    });
    let mut resp = send(conn, get("/"), home.clone()).await.map_err(failure_text).unwrap();
    let map = fields(&mut resp);
    let mut names: Vec<&str> = map.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-length", "x-app"], "only end-to-end fields are left");
    assert_eq!(collect(resp).await.0, "ok");
    let conn = home.take().expect("keep-alive: the connection came home");
    let mut resp = send(conn, get("/"), home.clone()).await.map_err(failure_text).unwrap();
    assert!(!fields(&mut resp).contains_key("connection"));
    assert_eq!(collect(resp).await.0, "bye");
    assert!(home.take().is_none(), "an answer with Connection: close retires its connection");
    backend.await.unwrap();
}

#[tokio::test]
async fn a_pooled_connection_lets_go_of_buffers_grown_for_a_large_exchange() {
    let (conn, mut server) = pair().await;
    let home = Arc::new(Home::default());
    let big = "x".repeat(300 << 10);
    let body = big.clone();
    let backend = tokio::spawn(async move {
        read_request(&mut server).await;
        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        server.write_all(resp.as_bytes()).await.unwrap();
        server
    });
    let upload = Request::post("/up").header("host", "backend").body(body::full(vec![b'u'; 20 << 10])).unwrap();
    let resp = send(conn, upload, home.clone()).await.map_err(failure_text).unwrap();
    assert_eq!(collect(resp).await.0.len(), big.len());
    let conn = home.take().expect("came home");
    assert!(conn.buf.capacity() <= KEEP_IDLE, "read buffer kept at {} bytes", conn.buf.capacity());
    assert!(conn.out.capacity() <= KEEP_IDLE, "write buffer kept at {} bytes", conn.out.capacity());
    drop(backend.await.unwrap());
}
