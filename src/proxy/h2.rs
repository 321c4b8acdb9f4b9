//! The proxy listener's h2c (HTTP/2 with prior knowledge, RFC 9113) server connection, driven
//! by the connection's own task.
//!
//! hyper's HTTP/2 server over the `h2` crate (what this replaced) cost twice the user time per
//! request of HAProxy's HTTP/2 under h2load with one stream per connection, and half of all of
//! Lifeline's instructions per h2c request were the `h2` crate's connection (callgrind,
//! BENCHMARKS.md session 24). Serving the streams inside `h2`'s connection task instead of a
//! task each changed nothing. So, as for HTTP/1.1 ([`super::h1`]), the connection is our own:
//!
//! - **One task, one round.** The task reads frames, decodes header blocks ([`super::hpack`]),
//!   runs each stream's route future ([`FuturesUnordered`]), polls the answers' bodies, and
//!   writes every frame the round produced with one write.
//! - **Answers are encoded without a dynamic table and without Huffman coding** (RFC 7541
//!   allows both): no per-connection encoder state, and the peer's table size never matters.
//!   Request blocks are decoded in full, dynamic table included.
//! - **Flow control both ways.** We grant 1 MiB per stream and per connection and give it back
//!   as the route reads the body (a slow backend slows the client, it does not fill memory); an
//!   answer's data goes out as the client's windows allow. A client that leaves a stream without
//!   window, or takes nothing from the socket, for [`Limits::send_timeout`] loses the stream
//!   (`CANCEL`) or the connection.
//!
//! Errors follow RFC 9113 §5.4: a malformed request resets its stream (`PROTOCOL_ERROR`), a
//! broken connection gets `GOAWAY` with the code and is closed. A client that resets streams
//! faster than it lets them finish (the "rapid reset" attack) is sent `ENHANCE_YOUR_CALM`.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::BuildHasherDefault;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{self, ProxyBody, ProxyRequest};
use super::h1::{Handler, Limits, Stop};
use super::hpack::{self, Decoder, FieldName};
use crate::error::{BoxError, ErrorKind, LifelineError};

/// The client connection preface (RFC 9113 §3.4), recognised by [`super::h1`].
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// The largest frame we accept (SETTINGS_MAX_FRAME_SIZE left at its initial value).
const MAX_FRAME: usize = 16 << 10;
/// Flow-control windows we grant, per stream and for the connection.
const WINDOW: u32 = 1 << 20;
/// Granted bytes given back in one WINDOW_UPDATE at least (fewer, larger frames).
const RETURN_AT: u32 = WINDOW / 4;
/// The initial window of RFC 9113 §6.9.2, before SETTINGS change it.
const DEFAULT_WINDOW: i64 = 65_535;
const MAX_WINDOW: i64 = (1 << 31) - 1;
/// Streams open at once on one connection.
const MAX_STREAMS: usize = 1024;
/// Our SETTINGS_HEADER_TABLE_SIZE (the initial value: the decoder's table is at most this).
const TABLE_SIZE: usize = 4096;
/// Bytes asked for per read.
const READ_SIZE: usize = 8 << 10;
/// Frames waiting for the socket past this: stop reading and stop polling bodies until it
/// takes them.
const WRITE_HIGH: usize = 256 << 10;
/// Capacity the write buffer keeps when empty.
const WRITE_KEEP: usize = 16 << 10;
/// How long, and how much, a connection we close reads and drops what the client still sends.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_MAX: usize = 256 << 10;
/// Streams the client may reset while their routes run, beyond twice those answered.
const RESET_ALLOWANCE: u64 = 100;

/// RFC 9113 §7 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Code {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    Compression = 0x9,
    EnhanceYourCalm = 0xb,
}

/// A connection error: `GOAWAY` with this code, then the connection closes.
#[derive(Debug)]
struct ConnError(Code, &'static str);

/// Serves one h2c connection whose preface has not been consumed yet, until it closes, fails,
/// or `stop` says so (then the streams in flight finish first).
pub async fn serve<H, T>(io: T, peer: SocketAddr, handler: Arc<H>, limits: Limits, stop: &Stop)
where
    H: Handler,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn::new(io, limits);
    let mut routes = FuturesUnordered::new();
    // Boxed: a route future is several KB, and FuturesUnordered moves it (five copies per
    // request with `abortable` around it, callgrind) where a box moves a pointer.
    let start = |req: Request<ProxyBody>| Box::pin(handler.call(ProxyRequest::new(req), peer));
    let stopped = stop.notified();
    let mut stopped = pin!(stopped);
    let mut idle = Box::pin(tokio::time::sleep(limits.idle_timeout));
    let mut stall_check = Box::pin(tokio::time::sleep(limits.send_timeout));
    let mut opened_at_check = 0u64;
    let mut first = true;
    let ended = poll_fn(|cx| {
        // The stop signal, the idle timer and the request bodies' reports keep the waker they
        // were first polled with: this future never leaves its task, whose waker does not
        // change, so they are polled once here and then only looked at (each poll registered
        // the waker again, every round).
        if first {
            first = false;
            let _ = stopped.as_mut().poll(cx);
            let _ = idle.as_mut().poll(cx);
            let _ = stall_check.as_mut().poll(cx);
            conn.returns.waker.register(cx.waker());
        }
        if conn.goaway.is_none() && stop.is_stopping() {
            conn.go_away(Code::NoError);
        }
        // Idle: no stream for a whole period (so up to twice as long), checked once a period
        // rather than with a timer reset per request.
        if idle.is_elapsed() {
            if conn.streams.is_empty() && conn.opened == opened_at_check && conn.goaway.is_none() {
                conn.go_away(Code::NoError);
            }
            opened_at_check = conn.opened;
            let next = tokio::time::Instant::now() + limits.idle_timeout;
            idle.as_mut().reset(next);
            let _ = idle.as_mut().poll(cx);
        }
        // Writes stalled by the client (see `Conn::check_stalls`), checked once a period too.
        if stall_check.is_elapsed() {
            if conn.check_stalls() {
                conn.eof = true;
                return Poll::Ready(Ok(()));
            }
            stall_check.as_mut().reset(tokio::time::Instant::now() + limits.send_timeout);
            let _ = stall_check.as_mut().poll(cx);
        }
        conn.poll_round(cx, &mut routes, &start)
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(code = ?e.0, why = e.1, "h2c connection closed for an error");
    }
    if !conn.eof {
        conn.linger().await;
    }
}

/// Stream ids hashed with one multiplication (SipHash, the default, cost more than the rest of
/// a lookup). The client picks the ids, but it can hold at most [`MAX_STREAMS`] of them in
/// the map, so ids chosen to collide make a lookup scan at most that many entries.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// One stream's state on the connection.
struct Stream {
    /// The request body's inbox while the client may still send data.
    inbox: Option<Arc<Mutex<Inbox>>>,
    /// The client sent END_STREAM (or its request was refused).
    remote_closed: bool,
    /// What the client's `Content-Length` said is left to come.
    expected: Option<u64>,
    /// Our send window on this stream.
    send_window: i64,
    /// What the client may still send on it (what we granted, less what came).
    recv_window: i64,
    /// Granted bytes the route has read and we have not given back yet.
    unreturned: u32,
    /// The route's future is running (in the connection's [`Route`] set).
    running: bool,
    /// The answer's body while it is being sent.
    out: Option<Outgoing>,
    /// Waiting for the client's window at the last stall check, with no DATA sent since.
    stalled: bool,
}

struct Outgoing {
    body: ProxyBody,
    /// Data taken from the body and not yet sent (the windows were full).
    pending: Bytes,
    /// The body ended with `pending`.
    end: bool,
}

/// A header block arriving in CONTINUATION frames.
struct Partial {
    id: u32,
    end_stream: bool,
    block: BytesMut,
}

/// One h2c connection's state, owned by its task.
struct Conn<T> {
    io: T,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// How much of `wbuf` the socket has taken.
    written: usize,
    /// Frames waiting for the socket at the last stall check, and it has taken none since.
    stalled: bool,
    decoder: Decoder,
    limits: Limits,
    streams: HashMap<u32, Stream, BuildHasherDefault<IdHasher>>,
    /// Streams with an answer body to send.
    sending: Vec<u32>,
    /// The highest stream id the client has opened.
    last_id: u32,
    /// What we may still send on the connection (the client's window).
    send_window: i64,
    /// Connection-level bytes the routes read and not yet given back.
    unreturned: u32,
    /// What the client may still send on the connection.
    recv_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    partial: Option<Partial>,
    /// The client's preface has been read.
    greeted: bool,
    /// The client's SETTINGS came first, as the preface requires.
    settled: bool,
    /// The last stream id of the GOAWAY we sent.
    goaway: Option<u32>,
    /// The client sent GOAWAY: it opens no more streams.
    peer_done: bool,
    /// The socket reached its end (or failed): nothing more to read or write.
    eof: bool,
    /// Streams opened on this connection, answered, and reset by the client while running.
    opened: u64,
    answered: u64,
    resets: u64,
    /// Request bodies' reads, to give their windows back.
    returns: Arc<Returns>,
    /// A stream whose route was running has ended: its future is to be dropped.
    dropped_routes: bool,
}

/// What request bodies read, reported to the connection.
#[derive(Default)]
struct Returns {
    read: Mutex<Vec<(u32, u32)>>,
    waker: AtomicWaker,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    fn new(io: T, limits: Limits) -> Self {
        let mut conn = Conn {
            io,
            rbuf: BytesMut::with_capacity(READ_SIZE),
            wbuf: Vec::with_capacity(256),
            written: 0,
            stalled: false,
            decoder: Decoder::new(TABLE_SIZE),
            limits,
            streams: HashMap::default(),
            sending: Vec::new(),
            last_id: 0,
            send_window: DEFAULT_WINDOW,
            unreturned: 0,
            recv_window: i64::from(WINDOW),
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            partial: None,
            greeted: false,
            settled: false,
            goaway: None,
            peer_done: false,
            eof: false,
            opened: 0,
            answered: 0,
            resets: 0,
            returns: Arc::default(),
            dropped_routes: false,
        };
        // Our SETTINGS (the server preface), then the connection window raised to WINDOW.
        let settings: [(u16, u32); 3] = [(0x3, MAX_STREAMS as u32), (0x4, WINDOW), (0x6, limits.max_header_list_size)];
        conn.frame_head(settings.len() * 6, SETTINGS, 0, 0);
        for (id, value) in settings {
            conn.wbuf.extend_from_slice(&id.to_be_bytes());
            conn.wbuf.extend_from_slice(&value.to_be_bytes());
        }
        conn.window_update(0, WINDOW - DEFAULT_WINDOW as u32);
        conn
    }

    /// One round: finished routes' answers, window returns, answer bodies, the write, then
    /// reads and the frames they carry, until nothing more can be done now.
    fn poll_round<F: RouteFuture, S: Fn(Request<ProxyBody>) -> Pin<Box<F>>>(
        &mut self,
        cx: &mut Context<'_>,
        routes: &mut FuturesUnordered<Route<F>>,
        start: &S,
    ) -> Poll<Result<(), ConnError>> {
        loop {
            if self.dropped_routes {
                self.dropped_routes = false;
                self.drop_routes(routes);
            }
            while let Poll::Ready(Some(done)) = routes.poll_next_unpin(cx) {
                if let Some((id, resp)) = done {
                    self.answer(id, resp);
                }
            }
            self.give_back();
            self.send_bodies(cx);
            match self.poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "h2c write failed");
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending if self.wbuf.len() - self.written > WRITE_HIGH => return Poll::Pending,
                Poll::Pending => {}
            }
            if self.finished() {
                return Poll::Ready(Ok(()));
            }
            match self.poll_read(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    // The client closed its side: its requests are cancelled (as over HTTP/1.1).
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {
                    if let Err(e) = self.on_frames(routes, start) {
                        self.fail(cx, e.0);
                        return Poll::Ready(Err(e));
                    }
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "h2c read failed");
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// Closing first: the last frames (GOAWAY) are written, our side is shut, and what the
    /// client still sends is read and dropped for a moment, so the close does not reset the
    /// connection under frames the client has not read yet.
    async fn linger(&mut self) {
        let _ = tokio::time::timeout(LINGER, async {
            if poll_fn(|cx| self.poll_flush(cx)).await.is_err() {
                return;
            }
            let _ = poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
            let mut dropped = 0;
            while dropped < LINGER_MAX {
                self.rbuf.clear();
                match poll_fn(|cx| self.poll_read(cx)).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => dropped += n,
                }
            }
        })
        .await;
    }

    /// A client that stops taking what we send ([`Limits::send_timeout`], checked once a
    /// period, so it acts after one to two periods without progress):
    /// - a stream whose answer has waited for the client's window (stream or connection) a
    ///   whole period with nothing sent is reset with `CANCEL`, which lets its upstream go;
    /// - when the socket itself has taken nothing for a whole period, the answer is `true`:
    ///   the connection is closed (a `GOAWAY` could not get through either).
    ///
    /// Without this, a client that never reads or never opens its windows holds its streams,
    /// their upstream answers and our buffers for as long as it likes (the "slow read" and
    /// zero-window attacks, CVE-2019-9511 and -9517).
    fn check_stalls(&mut self) -> bool {
        let pending = self.written < self.wbuf.len();
        if pending && self.stalled {
            tracing::debug!(timeout = ?self.limits.send_timeout, "h2c client took no frames: connection closed");
            return true;
        }
        self.stalled = pending;
        let mut cut = Vec::new();
        for &id in &self.sending {
            let Some(stream) = self.streams.get_mut(&id) else { continue };
            let waiting = stream.out.as_ref().is_some_and(|o| !o.pending.is_empty())
                && (stream.send_window <= 0 || self.send_window <= 0);
            if waiting && stream.stalled {
                cut.push(id);
            }
            stream.stalled = waiting;
        }
        for id in cut {
            tracing::debug!(stream = id, "h2c client opened no window for its answer: stream reset");
            self.close_stream(id, Code::Cancel);
        }
        false
    }

    /// Done: GOAWAY sent or received, no stream left, everything written.
    fn finished(&self) -> bool {
        (self.goaway.is_some() || self.peer_done) && self.streams.is_empty() && self.written == self.wbuf.len()
    }

    /// A connection error: GOAWAY with `code`, written if the socket takes it now.
    fn fail(&mut self, cx: &mut Context<'_>, code: Code) {
        self.goaway = None;
        self.go_away(code);
        let _ = self.poll_flush(cx);
    }

    fn go_away(&mut self, code: Code) {
        if self.goaway.is_some() {
            return;
        }
        self.goaway = Some(self.last_id);
        self.frame_head(8, GOAWAY, 0, 0);
        self.wbuf.extend_from_slice(&self.last_id.to_be_bytes());
        self.wbuf.extend_from_slice(&(code as u32).to_be_bytes());
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_SIZE / 2 {
            self.rbuf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.wbuf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.stalled = false;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.wbuf.clear();
        self.written = 0;
        if self.wbuf.capacity() > WRITE_HIGH {
            self.wbuf = Vec::with_capacity(WRITE_KEEP);
        }
        Poll::Ready(Ok(()))
    }

    fn frame_head(&mut self, len: usize, kind: u8, flags: u8, id: u32) {
        self.wbuf.extend_from_slice(&frame_head(len, kind, flags, id));
    }

    fn window_update(&mut self, id: u32, n: u32) {
        self.frame_head(4, WINDOW_UPDATE, 0, id);
        self.wbuf.extend_from_slice(&n.to_be_bytes());
    }

    fn reset(&mut self, id: u32, code: Code) {
        self.frame_head(4, RST_STREAM, 0, id);
        self.wbuf.extend_from_slice(&(code as u32).to_be_bytes());
    }

    /// Parses the complete frames read so far.
    fn on_frames<F: RouteFuture, S: Fn(Request<ProxyBody>) -> Pin<Box<F>>>(
        &mut self,
        routes: &mut FuturesUnordered<Route<F>>,
        start: &S,
    ) -> Result<(), ConnError> {
        if !self.greeted {
            if self.rbuf.len() < PREFACE.len() {
                return if PREFACE.starts_with(&self.rbuf) {
                    Ok(())
                } else {
                    Err(ConnError(Code::Protocol, "not the HTTP/2 client preface"))
                };
            }
            if !self.rbuf.starts_with(PREFACE) {
                return Err(ConnError(Code::Protocol, "not the HTTP/2 client preface"));
            }
            self.rbuf.advance(PREFACE.len());
            self.greeted = true;
        }
        loop {
            if self.rbuf.len() < 9 {
                return Ok(());
            }
            let len = (usize::from(self.rbuf[0]) << 16) | (usize::from(self.rbuf[1]) << 8) | usize::from(self.rbuf[2]);
            if len > MAX_FRAME {
                return Err(ConnError(Code::FrameSize, "a frame larger than SETTINGS_MAX_FRAME_SIZE"));
            }
            if self.rbuf.len() < 9 + len {
                self.rbuf.reserve(9 + len - self.rbuf.len());
                return Ok(());
            }
            let kind = self.rbuf[3];
            let flags = self.rbuf[4];
            let id = u32::from_be_bytes([self.rbuf[5], self.rbuf[6], self.rbuf[7], self.rbuf[8]]) & 0x7fff_ffff;
            self.rbuf.advance(9);
            let payload = self.rbuf.split_to(len).freeze();
            if !self.settled {
                if kind != SETTINGS || flags & ACK != 0 {
                    return Err(ConnError(Code::Protocol, "the client preface must end with SETTINGS"));
                }
                self.settled = true;
            }
            if let Some(p) = &self.partial {
                if kind != CONTINUATION || id != p.id {
                    return Err(ConnError(Code::Protocol, "a header block was interrupted"));
                }
            }
            match kind {
                DATA => self.on_data(id, flags, payload)?,
                HEADERS => self.on_headers(id, flags, payload, routes, start)?,
                PRIORITY => self.on_priority(id, &payload)?,
                RST_STREAM => self.on_reset(id, &payload)?,
                SETTINGS => self.on_settings(id, flags, &payload)?,
                PUSH_PROMISE => return Err(ConnError(Code::Protocol, "a client sent PUSH_PROMISE")),
                PING => self.on_ping(id, flags, &payload)?,
                GOAWAY => {
                    if id != 0 || payload.len() < 8 {
                        return Err(ConnError(Code::Protocol, "a malformed GOAWAY"));
                    }
                    self.peer_done = true;
                }
                WINDOW_UPDATE => self.on_window_update(id, &payload)?,
                CONTINUATION => self.on_continuation(id, flags, &payload, routes, start)?,
                _ => {} // unknown frame types are ignored (RFC 9113 §4.1)
            }
        }
    }

    fn on_data(&mut self, id: u32, flags: u8, payload: Bytes) -> Result<(), ConnError> {
        if id == 0 {
            return Err(ConnError(Code::Protocol, "DATA on stream 0"));
        }
        let flow = payload.len() as u32;
        // Flow control is ours to enforce: a client past its window could fill memory.
        self.recv_window -= i64::from(flow);
        if self.recv_window < 0 {
            return Err(ConnError(Code::FlowControl, "DATA past the connection window"));
        }
        let data = strip_padding(flags, payload)?;
        let end = flags & END_STREAM != 0;
        let Some(stream) = self.streams.get_mut(&id) else {
            if id > self.last_id {
                return Err(ConnError(Code::Protocol, "DATA on an idle stream"));
            }
            // A stream already closed (reset, or answered): the data is dropped and its
            // window given back.
            self.credit(id, flow);
            return Ok(());
        };
        if stream.remote_closed {
            self.credit(id, flow);
            self.close_stream(id, Code::StreamClosed);
            return Ok(());
        }
        stream.recv_window -= i64::from(flow);
        if stream.recv_window < 0 {
            self.credit(id, flow);
            self.close_stream(id, Code::FlowControl);
            return Ok(());
        }
        let mut wrong = None;
        if let Some(left) = &mut stream.expected {
            match left.checked_sub(data.len() as u64) {
                Some(rest) => *left = rest,
                None => wrong = Some("more DATA than Content-Length"),
            }
            if end && *left != 0 {
                wrong = wrong.or(Some("less DATA than Content-Length"));
            }
        }
        if let Some(why) = wrong {
            tracing::debug!(stream = id, why, "h2c request body refused");
            self.credit(id, flow);
            self.close_stream(id, Code::Protocol);
            return Ok(());
        }
        stream.remote_closed = end;
        let inbox = if end { stream.inbox.take() } else { stream.inbox.clone() };
        // What the route will read is given back as it reads it; padding, and data for a
        // body already dropped, now.
        let mut unread = flow - data.len() as u32;
        match inbox {
            Some(inbox) => {
                let mut inb = lock(&inbox);
                if inb.dropped {
                    unread += data.len() as u32;
                } else {
                    if !data.is_empty() {
                        inb.data.push_back(data);
                    }
                    inb.end |= end;
                    if let Some(w) = inb.waker.take() {
                        w.wake();
                    }
                }
            }
            None => unread += data.len() as u32,
        }
        self.credit(id, unread);
        if end {
            self.maybe_remove(id);
        }
        Ok(())
    }

    /// Window to give back for `n` bytes of stream `id` nobody will read.
    fn credit(&mut self, id: u32, n: u32) {
        if n > 0 {
            lock(&self.returns.read).push((id, n));
        }
    }

    fn on_headers<F: RouteFuture, S: Fn(Request<ProxyBody>) -> Pin<Box<F>>>(
        &mut self,
        id: u32,
        flags: u8,
        payload: Bytes,
        routes: &mut FuturesUnordered<Route<F>>,
        start: &S,
    ) -> Result<(), ConnError> {
        if id == 0 || id % 2 == 0 {
            return Err(ConnError(Code::Protocol, "HEADERS on stream 0 or an even stream"));
        }
        let mut fragment = strip_padding(flags, payload)?;
        if flags & PRIORITY_FLAG != 0 {
            if fragment.len() < 5 {
                return Err(ConnError(Code::FrameSize, "HEADERS too short for its priority"));
            }
            let dep = u32::from_be_bytes([fragment[0], fragment[1], fragment[2], fragment[3]]) & 0x7fff_ffff;
            fragment.advance(5);
            if dep == id {
                // A stream depending on itself: a stream error, but the block must still be
                // decoded to keep the table in step.
                self.decode_discard(&fragment, flags)?;
                self.last_id = self.last_id.max(id);
                self.close_stream(id, Code::Protocol);
                return Ok(());
            }
        }
        if flags & END_HEADERS == 0 {
            let mut block = BytesMut::with_capacity(fragment.len() * 2);
            block.extend_from_slice(&fragment);
            self.partial = Some(Partial { id, end_stream: flags & END_STREAM != 0, block });
            return Ok(());
        }
        self.on_block(id, flags & END_STREAM != 0, fragment, routes, start)
    }

    fn on_continuation<F: RouteFuture, S: Fn(Request<ProxyBody>) -> Pin<Box<F>>>(
        &mut self,
        id: u32,
        flags: u8,
        payload: &[u8],
        routes: &mut FuturesUnordered<Route<F>>,
        start: &S,
    ) -> Result<(), ConnError> {
        let Some(mut partial) = self.partial.take() else {
            return Err(ConnError(Code::Protocol, "CONTINUATION without a header block"));
        };
        if partial.id != id {
            return Err(ConnError(Code::Protocol, "CONTINUATION on another stream"));
        }
        partial.block.extend_from_slice(payload);
        // A compressed block this much larger than the list we accept is not decoded.
        if partial.block.len() > 2 * self.limits.max_header_list_size as usize + MAX_FRAME {
            return Err(ConnError(Code::EnhanceYourCalm, "a header block far over the size limit"));
        }
        if flags & END_HEADERS == 0 {
            self.partial = Some(partial);
            return Ok(());
        }
        self.on_block(id, partial.end_stream, partial.block.freeze(), routes, start)
    }

    /// A complete header block: a new request, or trailers of one in progress.
    fn on_block<F: RouteFuture, S: Fn(Request<ProxyBody>) -> Pin<Box<F>>>(
        &mut self,
        id: u32,
        end_stream: bool,
        block: Bytes,
        routes: &mut FuturesUnordered<Route<F>>,
        start: &S,
    ) -> Result<(), ConnError> {
        if id <= self.last_id {
            return self.on_trailers(id, end_stream, block);
        }
        self.last_id = id;
        let head = decode_request(&mut self.decoder, &block, self.limits.max_header_list_size)?;
        if self.goaway.is_some() {
            // Past our GOAWAY: not processed (the client may retry it elsewhere).
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS {
            self.reset(id, Code::RefusedStream);
            return Ok(());
        }
        let mut req = match head {
            Ok(req) => req,
            Err(Refusal::Malformed(why)) => {
                tracing::debug!(stream = id, why, "h2c request malformed");
                self.reset(id, Code::Protocol);
                return Ok(());
            }
            Err(Refusal::TooLarge) => {
                let err = LifelineError::new(
                    ErrorKind::HeadersTooLarge,
                    format!("the request's header list is larger than {} bytes", self.limits.max_header_list_size),
                );
                let resp = super::respond::lifeline_error_response(&err, &super::headers::new_request_id());
                // Answered at once; a body that follows is dropped as it comes.
                self.streams.insert(id, Stream::new(self.peer_initial_window, None, end_stream));
                self.answer(id, resp);
                return Ok(());
            }
        };
        let expected = content_length(req.headers());
        if end_stream && expected.is_some_and(|n| n > 0) {
            self.reset(id, Code::Protocol);
            return Ok(());
        }
        self.opened += 1;
        let inbox = if end_stream {
            None
        } else {
            let inbox = Arc::new(Mutex::new(Inbox::default()));
            *req.body_mut() =
                body::boxed(RequestBody { id, inbox: inbox.clone(), left: expected, returns: self.returns.clone() });
            Some(inbox)
        };
        let mut stream = Stream::new(self.peer_initial_window, inbox, end_stream);
        stream.expected = if end_stream { None } else { expected };
        stream.running = true;
        self.streams.insert(id, stream);
        routes.push(Route { id, fut: Some(start(req)), waker: None });
        Ok(())
    }

    fn on_trailers(&mut self, id: u32, end_stream: bool, block: Bytes) -> Result<(), ConnError> {
        let trailers = decode_trailers(&mut self.decoder, &block, self.limits.max_header_list_size)?;
        let Some(stream) = self.streams.get_mut(&id) else {
            // A closed stream: decoded (the table) and dropped.
            return Ok(());
        };
        if stream.remote_closed {
            // Half-closed (remote): a stream error (RFC 9113 §5.1).
            self.close_stream(id, Code::StreamClosed);
            return Ok(());
        }
        let Some(trailers) = trailers.filter(|_| end_stream) else {
            self.close_stream(id, Code::Protocol);
            return Ok(());
        };
        if stream.expected.is_some_and(|n| n != 0) {
            self.close_stream(id, Code::Protocol);
            return Ok(());
        }
        stream.remote_closed = true;
        if let Some(inbox) = stream.inbox.take() {
            let mut inb = lock(&inbox);
            inb.trailers = Some(trailers);
            inb.end = true;
            if let Some(w) = inb.waker.take() {
                w.wake();
            }
        }
        self.maybe_remove(id);
        Ok(())
    }

    /// Decodes a block whose stream is refused anyway (the table must stay in step).
    fn decode_discard(&mut self, fragment: &Bytes, flags: u8) -> Result<(), ConnError> {
        if flags & END_HEADERS == 0 {
            return Err(ConnError(Code::Protocol, "a refused stream's header block continues"));
        }
        self.decoder.decode(fragment, |_, _| {}).map_err(|_| ConnError(Code::Compression, "a bad header block"))
    }

    fn on_priority(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if id == 0 {
            return Err(ConnError(Code::Protocol, "PRIORITY on stream 0"));
        }
        if payload.len() != 5 {
            self.close_stream(id, Code::FrameSize);
            return Ok(());
        }
        let dep = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
        if dep == id {
            self.close_stream(id, Code::Protocol);
        }
        Ok(())
    }

    fn on_reset(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if id == 0 {
            return Err(ConnError(Code::Protocol, "RST_STREAM on stream 0"));
        }
        if payload.len() != 4 {
            return Err(ConnError(Code::FrameSize, "RST_STREAM of the wrong size"));
        }
        if id > self.last_id {
            return Err(ConnError(Code::Protocol, "RST_STREAM on an idle stream"));
        }
        if let Some(stream) = self.streams.remove(&id) {
            if stream.running {
                // Reset while its route ran: what the rapid-reset guard counts.
                self.resets += 1;
                self.dropped_routes = true;
            }
            let held = stream.fail_inbox();
            self.credit(id, held);
            self.sending.retain(|s| *s != id);
            if self.resets > 2 * self.answered + RESET_ALLOWANCE {
                return Err(ConnError(Code::EnhanceYourCalm, "too many streams reset while their requests ran"));
            }
        }
        Ok(())
    }

    fn on_settings(&mut self, id: u32, flags: u8, payload: &[u8]) -> Result<(), ConnError> {
        if id != 0 {
            return Err(ConnError(Code::Protocol, "SETTINGS on a stream"));
        }
        if flags & ACK != 0 {
            if !payload.is_empty() {
                return Err(ConnError(Code::FrameSize, "a SETTINGS ack with a payload"));
            }
            return Ok(());
        }
        if payload.len() % 6 != 0 {
            return Err(ConnError(Code::FrameSize, "SETTINGS of the wrong size"));
        }
        for s in payload.chunks_exact(6) {
            let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match u16::from_be_bytes([s[0], s[1]]) {
                0x2 if value > 1 => return Err(ConnError(Code::Protocol, "SETTINGS_ENABLE_PUSH not 0 or 1")),
                0x4 => {
                    if i64::from(value) > MAX_WINDOW {
                        return Err(ConnError(Code::FlowControl, "SETTINGS_INITIAL_WINDOW_SIZE too large"));
                    }
                    let delta = i64::from(value) - self.peer_initial_window;
                    self.peer_initial_window = i64::from(value);
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > MAX_WINDOW {
                            return Err(ConnError(Code::FlowControl, "a stream window past 2^31-1"));
                        }
                    }
                }
                0x5 => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(ConnError(Code::Protocol, "SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    self.peer_max_frame = value as usize;
                }
                // Table size (we encode without the table), concurrency (we push nothing),
                // list size (advisory), and settings we do not know.
                _ => {}
            }
        }
        self.frame_head(0, SETTINGS, ACK, 0);
        Ok(())
    }

    fn on_ping(&mut self, id: u32, flags: u8, payload: &[u8]) -> Result<(), ConnError> {
        if id != 0 {
            return Err(ConnError(Code::Protocol, "PING on a stream"));
        }
        if payload.len() != 8 {
            return Err(ConnError(Code::FrameSize, "PING of the wrong size"));
        }
        if flags & ACK == 0 {
            self.frame_head(8, PING, ACK, 0);
            self.wbuf.extend_from_slice(payload);
        }
        Ok(())
    }

    fn on_window_update(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(ConnError(Code::FrameSize, "WINDOW_UPDATE of the wrong size"));
        }
        let n = i64::from(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff);
        if id == 0 {
            if n == 0 {
                return Err(ConnError(Code::Protocol, "a WINDOW_UPDATE of 0 on the connection"));
            }
            self.send_window += n;
            if self.send_window > MAX_WINDOW {
                return Err(ConnError(Code::FlowControl, "the connection window past 2^31-1"));
            }
            return Ok(());
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            if id > self.last_id {
                return Err(ConnError(Code::Protocol, "WINDOW_UPDATE on an idle stream"));
            }
            return Ok(());
        };
        stream.send_window += n;
        if n == 0 {
            self.close_stream(id, Code::Protocol);
        } else if stream.send_window > MAX_WINDOW {
            self.close_stream(id, Code::FlowControl);
        }
        Ok(())
    }

    /// Ends a stream with RST_STREAM (a stream error, or our answer sent before the request
    /// ended): its route is dropped, its body fails.
    fn close_stream(&mut self, id: u32, code: Code) {
        self.reset(id, code);
        if let Some(stream) = self.streams.remove(&id) {
            self.dropped_routes |= stream.running;
            let held = stream.fail_inbox();
            self.credit(id, held);
        }
        self.sending.retain(|s| *s != id);
    }

    /// Drops the route futures of streams that ended early (see [`Route`]): one pass over the
    /// routes running, after a batch of frames with resets.
    fn drop_routes<F>(&self, routes: &mut FuturesUnordered<Route<F>>) {
        for route in routes.iter_mut() {
            if route.fut.is_some() && !self.streams.get(&route.id).is_some_and(|s| s.running) {
                route.fut = None;
                if let Some(waker) = route.waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Drops a stream both sides have finished.
    fn maybe_remove(&mut self, id: u32) {
        if let Some(s) = self.streams.get(&id) {
            if s.remote_closed && !s.running && s.out.is_none() {
                self.streams.remove(&id);
            }
        }
    }

    /// A route's answer: its head goes out now, its body as the windows allow.
    fn answer(&mut self, id: u32, mut resp: Response<ProxyBody>) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        stream.running = false;
        self.answered += 1;
        // A backend's fields passed through are encoded from their spans (no map), then what
        // is in the response's map (Lifeline's own answers, fields set on the way).
        let fields = resp.body_mut().take_fields();
        let (mut head, body) = resp.into_parts();
        super::headers::strip_hop_by_hop(&mut head.headers);
        let end = body.is_end_stream();
        let out = &mut self.wbuf;
        let at = out.len();
        out.extend_from_slice(&[0; 9]);
        hpack::encode_status(head.status, out);
        let mut dated = head.headers.contains_key(DATE);
        let mut length = head.headers.contains_key(CONTENT_LENGTH);
        if let Some(p) = &fields {
            dated |= p.has_date();
            length |= p.has_length();
            p.each(|name, value, sensitive| hpack::encode_raw(name, value, sensitive, out));
        }
        hpack::encode_trailers(&head.headers, out);
        if !dated {
            super::h1::with_date(|date| hpack::encode_raw(b"date", date, false, out));
        }
        if !end && !length {
            if let Some(n) = body.size_hint().exact() {
                hpack::encode_raw(b"content-length", crate::http1::itoa_u64(n, &mut [0; 20]), false, out);
            }
        }
        self.finish_block(at, HEADERS, if end { END_STREAM } else { 0 }, id);
        if end {
            self.answered_fully(id);
        } else if let Some(stream) = self.streams.get_mut(&id) {
            stream.out = Some(Outgoing { body, pending: Bytes::new(), end: false });
            self.sending.push(id);
        }
    }

    /// Writes the frame head in front of a header block encoded at `at + 9`, splitting the
    /// block into CONTINUATION frames when it is larger than the client's frame size.
    fn finish_block(&mut self, at: usize, kind: u8, flags: u8, id: u32) {
        let len = self.wbuf.len() - at - 9;
        if len <= self.peer_max_frame {
            self.wbuf[at..at + 9].copy_from_slice(&frame_head(len, kind, flags | END_HEADERS, id));
            return;
        }
        let block = self.wbuf.split_off(at + 9);
        self.wbuf.truncate(at);
        let mut chunks = block.chunks(self.peer_max_frame).peekable();
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let (k, f) = if first { (kind, flags) } else { (CONTINUATION, 0) };
            self.frame_head(chunk.len(), k, f | if last { END_HEADERS } else { 0 }, id);
            self.wbuf.extend_from_slice(chunk);
            first = false;
        }
    }

    /// Our side of a stream has ended: done if the client's has too, else the client is
    /// told to stop sending (RFC 9113 §8.1: RST_STREAM with NO_ERROR).
    fn answered_fully(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        stream.out = None;
        if stream.remote_closed {
            self.streams.remove(&id);
        } else {
            self.close_stream(id, Code::NoError);
        }
    }

    /// Sends what the answer bodies have, as far as the windows and the write buffer allow.
    fn send_bodies(&mut self, cx: &mut Context<'_>) {
        let mut i = 0;
        while i < self.sending.len() {
            let id = self.sending[i];
            match self.send_body(cx, id) {
                BodyStep::Wait => i += 1,
                BodyStep::Done => {
                    self.sending.swap_remove(i);
                    self.answered_fully(id);
                }
                BodyStep::Failed => {
                    self.sending.swap_remove(i);
                    self.close_stream(id, Code::Internal);
                }
            }
        }
    }

    fn send_body(&mut self, cx: &mut Context<'_>, id: u32) -> BodyStep {
        loop {
            if self.wbuf.len() - self.written > WRITE_HIGH {
                return BodyStep::Wait;
            }
            let Some(stream) = self.streams.get_mut(&id) else { return BodyStep::Done };
            let Some(out) = stream.out.as_mut() else { return BodyStep::Done };
            if !out.pending.is_empty() {
                let room = stream.send_window.min(self.send_window).min(self.peer_max_frame as i64);
                if room <= 0 {
                    return BodyStep::Wait;
                }
                let n = (room as usize).min(out.pending.len());
                let chunk = out.pending.split_to(n);
                let last = out.pending.is_empty() && out.end;
                stream.send_window -= n as i64;
                stream.stalled = false;
                self.send_window -= n as i64;
                self.frame_head(n, DATA, if last { END_STREAM } else { 0 }, id);
                self.wbuf.extend_from_slice(&chunk);
                if last {
                    return BodyStep::Done;
                }
                continue;
            }
            if out.end {
                return BodyStep::Done;
            }
            match Pin::new(&mut out.body).poll_frame(cx) {
                Poll::Pending => return BodyStep::Wait,
                Poll::Ready(None) => {
                    self.frame_head(0, DATA, END_STREAM, id);
                    return BodyStep::Done;
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "h2c answer body failed");
                    return BodyStep::Failed;
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        out.end = out.body.is_end_stream();
                        if data.is_empty() && out.end {
                            self.frame_head(0, DATA, END_STREAM, id);
                            return BodyStep::Done;
                        }
                        out.pending = data;
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let at = self.wbuf.len();
                            self.wbuf.extend_from_slice(&[0; 9]);
                            hpack::encode_trailers(&trailers, &mut self.wbuf);
                            self.finish_block(at, HEADERS, END_STREAM, id);
                            return BodyStep::Done;
                        }
                    }
                },
            }
        }
    }

    /// Gives back the window of what the routes read (WINDOW_UPDATE once a quarter of it is).
    fn give_back(&mut self) {
        let read = std::mem::take(&mut *lock(&self.returns.read));
        for (id, n) in read {
            self.unreturned += n;
            if let Some(stream) = self.streams.get_mut(&id) {
                stream.unreturned += n;
                if stream.unreturned >= RETURN_AT && !stream.remote_closed {
                    let n = std::mem::take(&mut stream.unreturned);
                    stream.recv_window += i64::from(n);
                    self.window_update(id, n);
                }
            }
        }
        if self.unreturned >= RETURN_AT {
            let n = std::mem::take(&mut self.unreturned);
            self.recv_window += i64::from(n);
            self.window_update(0, n);
        }
    }
}

enum BodyStep {
    Wait,
    Done,
    Failed,
}

impl Stream {
    fn new(initial_window: i64, inbox: Option<Arc<Mutex<Inbox>>>, remote_closed: bool) -> Stream {
        Stream {
            inbox,
            remote_closed,
            expected: None,
            send_window: initial_window,
            recv_window: i64::from(WINDOW),
            unreturned: 0,
            running: false,
            out: None,
            stalled: false,
        }
    }

    /// The request body fails (the stream was reset); returns the bytes it held unread.
    fn fail_inbox(&self) -> u32 {
        let Some(inbox) = &self.inbox else { return 0 };
        let mut inb = lock(inbox);
        inb.failed = true;
        let held: usize = inb.data.iter().map(Bytes::len).sum();
        inb.data.clear();
        if let Some(w) = inb.waker.take() {
            w.wake();
        }
        held as u32
    }
}

/// What a stream's route future answers.
trait RouteFuture: Future<Output = Response<ProxyBody>> {}
impl<F: Future<Output = Response<ProxyBody>>> RouteFuture for F {}

/// A stream's route future in the connection's set. When the stream ends early (a reset, an
/// error) the future is dropped in place ([`Conn::drop_routes`]), which lets its upstream go,
/// and its waker (kept from the first poll) has the set poll it once more to take it out.
/// `futures::abortable` did the same with an allocation per stream and a waker registered at
/// every poll.
struct Route<F> {
    id: u32,
    fut: Option<Pin<Box<F>>>,
    waker: Option<Waker>,
}

impl<F: RouteFuture> Future for Route<F> {
    /// `None` for a route dropped early.
    type Output = Option<(u32, Response<ProxyBody>)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(fut) = this.fut.as_mut() else { return Poll::Ready(None) };
        let Poll::Ready(resp) = fut.as_mut().poll(cx) else {
            if this.waker.is_none() {
                this.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        };
        this.fut = None;
        Poll::Ready(Some((this.id, resp)))
    }
}

/// Why a request is not handed to a route.
enum Refusal {
    /// RFC 9113 §8.1.1: the stream is reset with PROTOCOL_ERROR.
    Malformed(&'static str),
    /// Larger than SETTINGS_MAX_HEADER_LIST_SIZE: answered 431.
    TooLarge,
}

/// Connection-specific fields, malformed in HTTP/2 (RFC 9113 §8.2.2).
fn connection_specific(name: &HeaderName) -> bool {
    static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    *name == CONNECTION
        || *name == TRANSFER_ENCODING
        || *name == UPGRADE
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// Decodes a request's header block into a request (body empty). A decoding error is the
/// connection's; the rest refuse the stream only.
fn decode_request(
    decoder: &mut Decoder,
    block: &Bytes,
    max_list: u32,
) -> Result<Result<Request<ProxyBody>, Refusal>, ConnError> {
    let mut method = None;
    let mut scheme = None;
    let mut authority = None;
    let mut path = None;
    let mut headers = HeaderMap::new();
    let mut malformed = None;
    let mut size = 0usize;
    let mut regular = false;
    decoder
        .decode(block, |name, value| {
            size += value.len() + 32;
            let slot = match name {
                FieldName::Method => &mut method,
                FieldName::Scheme => &mut scheme,
                FieldName::Authority => &mut authority,
                FieldName::Path => &mut path,
                FieldName::Status | FieldName::Protocol | FieldName::UnknownPseudo => {
                    malformed.get_or_insert("a pseudo-header field a request may not have");
                    return;
                }
                FieldName::Invalid => {
                    malformed.get_or_insert("an invalid field name");
                    return;
                }
                FieldName::Header(name) => {
                    size += name.as_str().len();
                    regular = true;
                    if size > max_list as usize {
                        return;
                    }
                    if connection_specific(name) || (*name == TE && value.as_ref() != b"trailers") {
                        malformed.get_or_insert("a connection-specific field");
                        return;
                    }
                    match field_value(value) {
                        Some(v) => {
                            headers.append(name.clone(), v);
                        }
                        None => {
                            malformed.get_or_insert("an invalid field value");
                        }
                    }
                    return;
                }
            };
            if regular {
                malformed.get_or_insert("a pseudo-header field after a regular one");
            } else if slot.replace(value).is_some() {
                malformed.get_or_insert("a repeated pseudo-header field");
            }
        })
        .map_err(|_| ConnError(Code::Compression, "a request header block that does not decode"))?;
    if size > max_list as usize {
        return Ok(Err(Refusal::TooLarge));
    }
    if let Some(why) = malformed {
        return Ok(Err(Refusal::Malformed(why)));
    }
    let Some(method) = method.and_then(|m| Method::from_bytes(&m).ok()) else {
        return Ok(Err(Refusal::Malformed("no valid :method")));
    };
    let mut parts = http::uri::Parts::default();
    if method == Method::CONNECT {
        if scheme.is_some() || path.is_some() {
            return Ok(Err(Refusal::Malformed(":scheme or :path in CONNECT")));
        }
    } else {
        let Some(s) = scheme.and_then(|s| http::uri::Scheme::try_from(s.as_ref()).ok()) else {
            return Ok(Err(Refusal::Malformed("no valid :scheme")));
        };
        let Some(p) = path.filter(|p| !p.is_empty()).and_then(|p| http::uri::PathAndQuery::from_maybe_shared(p).ok())
        else {
            return Ok(Err(Refusal::Malformed("no valid :path")));
        };
        parts.path_and_query = Some(p);
        parts.scheme = Some(s);
    }
    match authority.map(http::uri::Authority::from_maybe_shared) {
        Some(Ok(a)) => parts.authority = Some(a),
        Some(Err(_)) => return Ok(Err(Refusal::Malformed("an invalid :authority"))),
        // A scheme needs an authority in a `Uri`: the origin form alone then.
        None => parts.scheme = None,
    }
    let Ok(uri) = Uri::from_parts(parts) else {
        return Ok(Err(Refusal::Malformed("no valid request target")));
    };
    let mut req = Request::new(body::empty());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = headers;
    super::headers::strip_hop_by_hop(req.headers_mut());
    Ok(Ok(req))
}

/// Decodes a trailer block: `None` when it is malformed (pseudo-header fields, bad values).
fn decode_trailers(decoder: &mut Decoder, block: &Bytes, max_list: u32) -> Result<Option<HeaderMap>, ConnError> {
    let mut map = HeaderMap::new();
    let mut ok = true;
    let mut size = 0usize;
    decoder
        .decode(block, |name, value| {
            size += value.len() + 32;
            match (name, field_value(value)) {
                (FieldName::Header(name), Some(v)) if !connection_specific(name) && size <= max_list as usize => {
                    size += name.as_str().len();
                    map.append(name.clone(), v);
                }
                _ => ok = false,
            }
        })
        .map_err(|_| ConnError(Code::Compression, "a trailer block that does not decode"))?;
    Ok(ok.then_some(map))
}

/// A field value HTTP/2 allows (RFC 9113 §8.2.1): no NUL, CR or LF, no whitespace at either
/// end.
fn field_value(value: Bytes) -> Option<HeaderValue> {
    if let (Some(first), Some(last)) = (value.first(), value.last()) {
        if matches!(first, b' ' | b'\t') || matches!(last, b' ' | b'\t') {
            return None;
        }
    }
    HeaderValue::from_maybe_shared(value).ok()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// A frame's 9-byte head (RFC 9113 §4.1); `len` is at most a frame's size (24 bits).
fn frame_head(len: usize, kind: u8, flags: u8, id: u32) -> [u8; 9] {
    let [_, a, b, c] = (len as u32).to_be_bytes();
    let [d, e, f, g] = (id & 0x7fff_ffff).to_be_bytes();
    [a, b, c, kind, flags, d, e, f, g]
}

/// Removes a DATA or HEADERS frame's padding (RFC 9113 §6.1).
fn strip_padding(flags: u8, mut payload: Bytes) -> Result<Bytes, ConnError> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let Some(&pad) = payload.first() else {
        return Err(ConnError(Code::FrameSize, "a padded frame with no pad length"));
    };
    let pad = usize::from(pad);
    if pad >= payload.len() {
        return Err(ConnError(Code::Protocol, "padding as long as the frame"));
    }
    payload.advance(1);
    payload.truncate(payload.len() - pad);
    Ok(payload)
}

/// A request body's data, from the connection to the route.
#[derive(Default)]
struct Inbox {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    end: bool,
    failed: bool,
    /// The body was dropped: what arrives is given back at once.
    dropped: bool,
    waker: Option<Waker>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request body: reads the stream's inbox, and reports what it read so the connection gives
/// the window back.
struct RequestBody {
    id: u32,
    inbox: Arc<Mutex<Inbox>>,
    left: Option<u64>,
    returns: Arc<Returns>,
}

impl RequestBody {
    fn report(&self, n: usize) {
        if n == 0 {
            return;
        }
        lock(&self.returns.read).push((self.id, n as u32));
        self.returns.waker.wake();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut inb = lock(&self.inbox);
        if let Some(data) = inb.data.pop_front() {
            drop(inb);
            if let Some(left) = &mut self.left {
                *left = left.saturating_sub(data.len() as u64);
            }
            self.report(data.len());
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if inb.failed {
            return Poll::Ready(Some(Err("the h2c stream was reset before its body ended".into())));
        }
        if let Some(trailers) = inb.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if inb.end {
            return Poll::Ready(None);
        }
        inb.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let inb = lock(&self.inbox);
        inb.end && inb.data.is_empty() && inb.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let held = {
            let mut inb = lock(&self.inbox);
            inb.dropped = true;
            let held: usize = inb.data.iter().map(Bytes::len).sum();
            inb.data.clear();
            held
        };
        self.report(held);
    }
}

#[cfg(test)]
mod tests;
