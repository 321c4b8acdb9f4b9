//! The h2c server connection against the `h2` crate's client (an independent implementation)
//! and against raw frames: answers and bodies both ways past the flow-control windows, many
//! streams at once, trailers, resets, malformed requests, connection errors, the rapid-reset
//! guard, the header list limit and shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::super::h1::tests::{endless, limits, server_with, Reply, Server};
use super::*;

/// Answers `METHOD URI len=N trailers=T` after reading the whole body; the body is echoed
/// when the request asks with `echo: 1`.
fn echo() -> Reply {
    Box::new(|req| {
        Box::pin(async move {
            let line = format!("{} {}", req.method(), req.uri());
            let echo = req.headers().contains_key("echo");
            match req.into_body().collect().await {
                Ok(c) => {
                    let trailers = c.trailers().map_or(0, |t| t.len());
                    let data = c.to_bytes();
                    if echo {
                        return Response::new(body::full(data));
                    }
                    Response::new(body::full(format!("{line} len={} trailers={trailers}", data.len())))
                }
                Err(e) => Response::new(body::full(format!("{line} body error: {e}"))),
            }
        })
    })
}

async fn server(reply: Reply) -> Server {
    server_with(reply, limits()).await
}

/// An `h2` crate client on a fresh connection.
async fn client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

async fn get(send: &mut h2::client::SendRequest<Bytes>, path: &str) -> (http::response::Parts, Bytes) {
    let req = Request::get(format!("http://test{path}")).body(()).unwrap();
    let (resp, _) = send.clone().ready().await.unwrap().send_request(req, true).unwrap();
    read(resp).await
}

async fn read(resp: h2::client::ResponseFuture) -> (http::response::Parts, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(10), resp).await.expect("no answer").unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    (parts, Bytes::from(data))
}

#[tokio::test]
async fn answers_a_get_with_date_and_length() {
    let srv = server(echo()).await;
    let mut c = client(srv.addr).await;
    for _ in 0..3 {
        let (parts, body) = get(&mut c, "/card/1?x=y").await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, "GET http://test/card/1?x=y len=0 trailers=0");
        assert!(parts.headers.contains_key("date"));
        assert_eq!(parts.headers["content-length"], body.len().to_string().as_str());
    }
}

#[tokio::test]
async fn bodies_larger_than_every_window_flow_both_ways() {
    let srv = server(echo()).await;
    let c = client(srv.addr).await;
    // 3 MiB: past our 1 MiB windows one way and the client's 64 KiB default the other.
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let req = Request::post("http://test/upload").header("echo", "1").body(()).unwrap();
    let (resp, mut tx) = c.clone().ready().await.unwrap().send_request(req, false).unwrap();
    let sender = {
        let big = Bytes::from(big.clone());
        tokio::spawn(async move {
            let mut rest = big;
            while !rest.is_empty() {
                tx.reserve_capacity(rest.len().min(256 << 10));
                let n = poll_fn(|cx| tx.poll_capacity(cx)).await.unwrap().unwrap();
                let chunk = rest.split_to(n.min(rest.len()));
                tx.send_data(chunk, rest.is_empty()).unwrap();
            }
        })
    };
    let (parts, body) = read(resp).await;
    sender.await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(body.len(), big.len());
    assert!(body == big, "the echoed body differs");
}

#[tokio::test]
async fn many_streams_at_once_on_one_connection() {
    let srv = server(Box::new(|req| {
        Box::pin(async move {
            // Answers out of order: later streams first.
            let n: u64 = req.uri().path().trim_start_matches('/').parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(200 - n)).await;
            Response::new(body::full(format!("stream {n}")))
        })
    }))
    .await;
    let c = client(srv.addr).await;
    let mut waiting = Vec::new();
    for n in 0..150u64 {
        let req = Request::get(format!("http://test/{n}")).body(()).unwrap();
        let (resp, _) = c.clone().ready().await.unwrap().send_request(req, true).unwrap();
        waiting.push((n, resp));
    }
    for (n, resp) in waiting {
        let (parts, body) = read(resp).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, format!("stream {n}"));
    }
}

#[tokio::test]
async fn request_trailers_reach_the_route() {
    let srv = server(echo()).await;
    let c = client(srv.addr).await;
    let req = Request::post("http://test/t").header("content-length", "5").body(()).unwrap();
    let (resp, mut tx) = c.clone().ready().await.unwrap().send_request(req, false).unwrap();
    tx.send_data(Bytes::from_static(b"hello"), false).unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("checksum", HeaderValue::from_static("abc"));
    tx.send_trailers(trailers).unwrap();
    let (_, body) = read(resp).await;
    assert_eq!(body, "POST http://test/t len=5 trailers=1");
}

#[tokio::test]
async fn a_body_shorter_than_its_length_resets_the_stream() {
    let srv = server(echo()).await;
    let c = client(srv.addr).await;
    let req = Request::post("http://test/short").header("content-length", "10").body(()).unwrap();
    let (resp, mut tx) = c.clone().ready().await.unwrap().send_request(req, false).unwrap();
    tx.send_data(Bytes::from_static(b"abc"), true).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), resp).await.unwrap().unwrap_err();
    assert_eq!(err.reason(), Some(h2::Reason::PROTOCOL_ERROR), "{err}");
    // The connection goes on.
    let (parts, _) = get(&mut c.clone(), "/after").await;
    assert_eq!(parts.status, 200);
}

/// Counts drops of route futures.
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_stream_the_client_resets_drops_its_route() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let srv = server(Box::new(move |_req| {
        let guard = DropCount(d.clone());
        Box::pin(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(body::empty())
        })
    }))
    .await;
    let c = client(srv.addr).await;
    let req = Request::get("http://test/slow").body(()).unwrap();
    let (resp, mut tx) = c.clone().ready().await.unwrap().send_request(req, true).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    tx.send_reset(h2::Reason::CANCEL);
    drop(resp);
    for _ in 0..100 {
        if dropped.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the reset stream's route was not dropped");
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_answered_431() {
    let srv = server(echo()).await;
    let c = client(srv.addr).await;
    let req = Request::get("http://test/big").header("x-big", "a".repeat(20 << 10)).body(()).unwrap();
    let (resp, _) = c.clone().ready().await.unwrap().send_request(req, true).unwrap();
    let (parts, body) = read(resp).await;
    assert_eq!(parts.status, 431);
    assert!(String::from_utf8_lossy(&body).contains("headers_too_large"), "{body:?}");
}

#[tokio::test]
async fn stop_sends_goaway_and_lets_the_stream_in_flight_finish() {
    let srv = server(Box::new(|_req| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Response::new(body::full("late"))
        })
    }))
    .await;
    let c = client(srv.addr).await;
    let req = Request::get("http://test/slow").body(()).unwrap();
    let (resp, _) = c.clone().ready().await.unwrap().send_request(req, true).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    srv.stop.trigger();
    let (parts, body) = read(resp).await;
    assert_eq!(parts.status, 200);
    assert_eq!(body, "late");
    for _ in 0..100 {
        if srv.ended.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the connection did not end after GOAWAY");
}

/// A raw connection: frames written by hand, frames read back.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct RawFrame {
    kind: u8,
    flags: u8,
    id: u32,
    payload: Vec<u8>,
}

impl Raw {
    /// Connects and sends the preface and an empty SETTINGS.
    async fn connect(addr: SocketAddr) -> Raw {
        let mut raw = Raw { s: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() };
        raw.s.write_all(PREFACE).await.unwrap();
        raw.frame(SETTINGS, 0, 0, &[]).await;
        raw
    }

    async fn frame(&mut self, kind: u8, flags: u8, id: u32, payload: &[u8]) {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).await.unwrap();
    }

    /// A request's header block (no Huffman, no table): what any encoder may send.
    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in fields {
            b.push(0x00);
            push_str(&mut b, n.as_bytes());
            push_str(&mut b, v.as_bytes());
        }
        b
    }

    async fn request(&mut self, id: u32, fields: &[(&str, &str)]) {
        self.frame(HEADERS, END_HEADERS | END_STREAM, id, &Raw::block(fields)).await;
    }

    /// The next frame, or `None` when the server closed the connection.
    async fn next(&mut self) -> Option<RawFrame> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16) | (usize::from(self.buf[1]) << 8) | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f = RawFrame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        id: u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]),
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 16 << 10];
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk))
                .await
                .expect("read timed out")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Skips frames until one of `kind` (on stream `id`), which it returns.
    async fn expect(&mut self, kind: u8, id: u32) -> RawFrame {
        loop {
            let f = self.next().await.unwrap_or_else(|| panic!("closed before a frame of type {kind}"));
            if f.kind == kind && f.id == id {
                return f;
            }
        }
    }

    /// The GOAWAY's error code, after which the server must close.
    async fn goaway(&mut self) -> u32 {
        let f = self.expect(GOAWAY, 0).await;
        let code = u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]);
        while self.next().await.is_some() {}
        code
    }
}

fn push_str(b: &mut Vec<u8>, s: &[u8]) {
    assert!(s.len() < 127);
    b.push(s.len() as u8);
    b.extend_from_slice(s);
}

fn get_fields(path: &str) -> Vec<(&'static str, String)> {
    vec![(":method", "GET".into()), (":scheme", "http".into()), (":authority", "test".into()), (":path", path.into())]
}

async fn raw_get(raw: &mut Raw, id: u32, path: &str) {
    let f = get_fields(path);
    let fields: Vec<(&str, &str)> = f.iter().map(|(n, v)| (*n, v.as_str())).collect();
    raw.request(id, &fields).await;
}

/// The `:status` of a response HEADERS frame, decoded with our own decoder.
fn status_of(f: &RawFrame) -> String {
    let mut d = Decoder::new(4096);
    let mut status = String::new();
    d.decode(&Bytes::copy_from_slice(&f.payload), |n, v| {
        if *n == FieldName::Status {
            status = String::from_utf8_lossy(&v).into_owned();
        }
    })
    .unwrap();
    status
}

#[tokio::test]
async fn answers_ping_and_settings() {
    let srv = server(echo()).await;
    let mut raw = Raw::connect(srv.addr).await;
    let settings = raw.expect(SETTINGS, 0).await;
    assert_eq!(settings.flags & ACK, 0, "the server's own SETTINGS come first");
    raw.frame(PING, 0, 0, b"12345678").await;
    loop {
        let f = raw.next().await.expect("closed");
        if f.kind == PING {
            assert_eq!(f.flags, ACK);
            assert_eq!(f.payload, b"12345678");
            break;
        }
    }
}

#[tokio::test]
async fn a_malformed_request_resets_its_stream_and_the_connection_goes_on() {
    let srv = server(echo()).await;
    let mut raw = Raw::connect(srv.addr).await;
    // No :path.
    raw.request(1, &[(":method", "GET"), (":scheme", "http"), (":authority", "test")]).await;
    let rst = raw.expect(RST_STREAM, 1).await;
    assert_eq!(rst.payload, (Code::Protocol as u32).to_be_bytes());
    // Uppercase name.
    raw.request(3, &[(":method", "GET"), (":scheme", "http"), (":path", "/"), ("X-Upper", "1")]).await;
    let rst = raw.expect(RST_STREAM, 3).await;
    assert_eq!(rst.payload, (Code::Protocol as u32).to_be_bytes());
    // Connection-specific field.
    raw.request(5, &[(":method", "GET"), (":scheme", "http"), (":path", "/"), ("connection", "close")]).await;
    raw.expect(RST_STREAM, 5).await;
    raw_get(&mut raw, 7, "/fine").await;
    let headers = raw.expect(HEADERS, 7).await;
    assert_eq!(status_of(&headers), "200");
}

#[tokio::test]
async fn connection_errors_end_in_goaway_with_their_code() {
    let srv = server(echo()).await;
    // A frame larger than our maximum.
    let mut raw = Raw::connect(srv.addr).await;
    raw.frame(DATA, 0, 1, &vec![0; MAX_FRAME + 1]).await;
    assert_eq!(raw.goaway().await, Code::FrameSize as u32);
    // A header block that does not decode (an index past both tables).
    let mut raw = Raw::connect(srv.addr).await;
    raw.frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0xff, 0x7f]).await;
    assert_eq!(raw.goaway().await, Code::Compression as u32);
    // An even stream id.
    let mut raw = Raw::connect(srv.addr).await;
    raw_get(&mut raw, 2, "/").await;
    assert_eq!(raw.goaway().await, Code::Protocol as u32);
    // Something other than SETTINGS after the preface.
    let mut raw = Raw { s: TcpStream::connect(srv.addr).await.unwrap(), buf: Vec::new() };
    raw.s.write_all(PREFACE).await.unwrap();
    raw.frame(PING, 0, 0, b"12345678").await;
    assert_eq!(raw.goaway().await, Code::Protocol as u32);
    // A header block interrupted by another frame.
    let mut raw = Raw::connect(srv.addr).await;
    raw.frame(HEADERS, END_STREAM, 1, &Raw::block(&[(":method", "GET")])).await;
    raw.frame(PING, 0, 0, b"12345678").await;
    assert_eq!(raw.goaway().await, Code::Protocol as u32);
    // A window past 2^31-1.
    let mut raw = Raw::connect(srv.addr).await;
    raw.frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()).await;
    assert_eq!(raw.goaway().await, Code::FlowControl as u32);
}

#[tokio::test]
async fn a_header_block_in_continuation_frames_is_one_request() {
    let srv = server(echo()).await;
    let mut raw = Raw::connect(srv.addr).await;
    let f = get_fields("/split");
    let fields: Vec<(&str, &str)> = f.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let block = Raw::block(&fields);
    let (a, b) = block.split_at(10);
    raw.frame(HEADERS, END_STREAM, 1, a).await;
    raw.frame(CONTINUATION, END_HEADERS, 1, b).await;
    let headers = raw.expect(HEADERS, 1).await;
    assert_eq!(status_of(&headers), "200");
    let data = raw.expect(DATA, 1).await;
    assert_eq!(data.payload, b"GET http://test/split len=0 trailers=0");
    assert_eq!(data.flags & END_STREAM, END_STREAM);
}

#[tokio::test]
async fn streams_reset_faster_than_they_finish_close_the_connection() {
    let srv = server(Box::new(|_req| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(body::empty())
        })
    }))
    .await;
    let mut raw = Raw::connect(srv.addr).await;
    let mut id = 1;
    let code = loop {
        raw_get(&mut raw, id, "/slow").await;
        raw.frame(RST_STREAM, 0, id, &(Code::NoError as u32).to_be_bytes()).await;
        id += 2;
        assert!(id < 1000, "no GOAWAY after {} resets", id / 2);
        if id > 2 * RESET_ALLOWANCE as u32 + 10 {
            break raw.goaway().await;
        }
    };
    assert_eq!(code, Code::EnhanceYourCalm as u32);
}

#[tokio::test]
async fn a_connection_idle_for_its_timeout_is_sent_goaway_and_closed() {
    let srv = server_with(echo(), Limits { idle_timeout: Duration::from_millis(200), ..limits() }).await;
    let mut raw = Raw::connect(srv.addr).await;
    raw_get(&mut raw, 1, "/once").await;
    raw.expect(DATA, 1).await;
    let started = std::time::Instant::now();
    let f = raw.expect(GOAWAY, 0).await;
    assert_eq!(&f.payload[..4], 1u32.to_be_bytes(), "the last stream id processed");
    assert_eq!(&f.payload[4..], (Code::NoError as u32).to_be_bytes());
    assert!(raw.next().await.is_none(), "closed after GOAWAY");
    // Idle for one to two periods; a stream in flight is never idle (the test above).
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn an_answer_waits_for_the_clients_window() {
    let srv = server(Box::new(|_req| Box::pin(async { Response::new(body::full(vec![7u8; 100])) }))).await;
    let mut raw = Raw { s: TcpStream::connect(srv.addr).await.unwrap(), buf: Vec::new() };
    raw.s.write_all(PREFACE).await.unwrap();
    // The client's initial stream window: 10 bytes.
    raw.frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 10]).await;
    raw_get(&mut raw, 1, "/").await;
    raw.expect(HEADERS, 1).await;
    let first = raw.expect(DATA, 1).await;
    assert_eq!(first.payload.len(), 10);
    assert_eq!(first.flags & END_STREAM, 0);
    raw.frame(WINDOW_UPDATE, 0, 1, &90u32.to_be_bytes()).await;
    let rest = raw.expect(DATA, 1).await;
    assert_eq!(rest.payload.len(), 90);
    assert_eq!(rest.flags & END_STREAM, END_STREAM);
}

#[tokio::test]
async fn a_client_sending_past_its_window_is_stopped() {
    let srv = server(Box::new(|req| {
        Box::pin(async move {
            // Holds the body and never reads it: nothing is given back.
            let _held = req;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(body::empty())
        })
    }))
    .await;
    let mut raw = Raw::connect(srv.addr).await;
    let f = get_fields("/upload");
    let mut fields: Vec<(&str, &str)> = f.iter().map(|(n, v)| (*n, v.as_str())).collect();
    fields[0].1 = "POST";
    raw.frame(HEADERS, END_HEADERS, 1, &Raw::block(&fields)).await;
    let chunk = vec![b'x'; MAX_FRAME];
    // One frame more than the 1 MiB granted, per stream and for the connection.
    for _ in 0..=(WINDOW as usize / MAX_FRAME) {
        raw.frame(DATA, 0, 1, &chunk).await;
    }
    assert_eq!(raw.goaway().await, Code::FlowControl as u32);
}

#[tokio::test]
async fn an_answer_head_larger_than_a_frame_goes_out_in_continuation_frames() {
    let big = "v".repeat(40 << 10);
    let value = big.clone();
    let srv = server(Box::new(move |_req| {
        let value = value.clone();
        Box::pin(async move {
            let mut resp = Response::new(body::full("ok"));
            resp.headers_mut().insert("x-big", HeaderValue::from_str(&value).unwrap());
            resp
        })
    }))
    .await;
    let mut c = client(srv.addr).await;
    let (parts, body) = get(&mut c, "/big-head").await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-big"], big.as_str());
    assert_eq!(body, "ok");
}

#[tokio::test]
async fn a_stream_left_without_window_is_reset_after_the_send_timeout_and_a_slow_reader_is_not() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let srv =
        server_with(endless(dropped.clone()), Limits { send_timeout: Duration::from_millis(300), ..limits() }).await;
    // A slow reader (the `h2` client, giving back 16 KiB every 30 ms) keeps its stream.
    let c = client(srv.addr).await;
    let req = Request::get("http://test/slow").body(()).unwrap();
    let (resp, _) = c.clone().ready().await.unwrap().send_request(req, true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1000) {
        let chunk = body.data().await.unwrap().unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "a slow reader's stream is not reset");
    // Dropping the body resets the stream from the client's side: the answer goes then.
    drop(body);
    while dropped.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A stream whose window the client never opens (initial window 0) is reset with CANCEL;
    // the connection goes on.
    let mut raw = Raw { s: TcpStream::connect(srv.addr).await.unwrap(), buf: Vec::new() };
    raw.s.write_all(PREFACE).await.unwrap();
    raw.frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]).await;
    let started = std::time::Instant::now();
    raw_get(&mut raw, 1, "/stuck").await;
    raw.expect(HEADERS, 1).await;
    let rst = raw.expect(RST_STREAM, 1).await;
    assert_eq!(rst.payload, (Code::Cancel as u32).to_be_bytes());
    assert!(started.elapsed() >= Duration::from_millis(300), "reset before its timeout");
    assert_eq!(dropped.load(Ordering::SeqCst), 2, "the reset stream's answer body (its upstream) is let go");
    raw.frame(PING, 0, 0, b"12345678").await;
    let pong = raw.expect(PING, 0).await;
    assert_eq!((pong.flags, &pong.payload[..]), (ACK, &b"12345678"[..]));
    assert_eq!(srv.ended.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_disconnected_after_the_send_timeout() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let srv =
        server_with(endless(dropped.clone()), Limits { send_timeout: Duration::from_millis(300), ..limits() }).await;
    let mut raw = Raw { s: TcpStream::connect(srv.addr).await.unwrap(), buf: Vec::new() };
    raw.s.write_all(PREFACE).await.unwrap();
    // Every window as large as it goes: only the socket can hold the answer back.
    raw.frame(SETTINGS, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]).await;
    raw.frame(WINDOW_UPDATE, 0, 0, &(MAX_WINDOW as u32 - DEFAULT_WINDOW as u32).to_be_bytes()).await;
    let started = std::time::Instant::now();
    raw_get(&mut raw, 1, "/stuck").await;
    while srv.ended.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the stalled connection was never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(300), "closed before its timeout");
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the stalled answer's body (its upstream) is let go");
}

#[tokio::test]
async fn a_reset_streams_route_is_dropped_and_leaves_the_set_in_the_same_round() {
    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, id: u32, payload: &[u8]) {
        out.extend_from_slice(&frame_head(payload.len(), kind, flags, id));
        out.extend_from_slice(payload);
    }
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let mut conn = Conn::new(server, limits());
    let mut routes = FuturesUnordered::new();
    let dropped = Arc::new(AtomicUsize::new(0));
    let start = |_req| {
        let guard = DropCount(dropped.clone());
        Box::pin(async move {
            let _guard = guard;
            std::future::pending::<Response<ProxyBody>>().await
        })
    };
    let round = async |conn: &mut Conn<_>, routes: &mut _| {
        poll_fn(|cx| {
            assert!(conn.poll_round(cx, routes, &start).is_pending(), "the connection goes on");
            Poll::Ready(())
        })
        .await
    };
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    let f = get_fields("/held");
    let fields: Vec<(&str, &str)> = f.iter().map(|(n, v)| (*n, v.as_str())).collect();
    frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 1, &Raw::block(&fields));
    frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 3, &Raw::block(&fields));
    client.write_all(&out).await.unwrap();
    round(&mut conn, &mut routes).await;
    assert_eq!(routes.len(), 2, "both routes run");
    out.clear();
    frame(&mut out, RST_STREAM, 0, 1, &(Code::Cancel as u32).to_be_bytes());
    client.write_all(&out).await.unwrap();
    round(&mut conn, &mut routes).await;
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the reset stream's route is dropped");
    assert_eq!(routes.len(), 1, "and has left the set; the other runs on");
}
