//! The proxy listener's HTTP/1.1 server connection, driven by the connection's own task.
//!
//! hyper's server connection was the largest cost per request left on the path after the
//! upstream client became our own (BENCHMARKS.md, session 8): a dispatcher that reads ahead for
//! keep-alive into a fresh 8 KiB buffer while the request's headers still share the old one,
//! a boxed in-flight future, a `Date` header formatted through `fmt`, and its own write buffer.
//! Here one task per connection reads a head, parses it with httparse, runs the handler,
//! writes the answer (head and first body frame in one write), and loops:
//!
//! - **Buffers are per worker, not per connection.** A connection waiting for its next request
//!   holds no read buffer: it waits for readiness, then takes a 4 KiB buffer from its worker's
//!   free list. Headers are slices of that buffer (no copies); it goes back to the list once the
//!   request is answered and nothing is left in it.
//! - **Bodies read the socket themselves.** A request body ([`RequestBody`]) shares the
//!   connection (`Arc<Shared>`): the upstream client polls it, and it decodes from the same
//!   buffer with the framing code the client uses for answers ([`crate::http1`]). A body left
//!   unread is drained after the answer when it is small, else the connection closes.
//! - **A caller that hangs up cancels its request** (as hyper did): while a bodyless request
//!   is in flight the connection watches for end of stream.
//! - **A caller that stops reading is cut off** after [`Limits::send_timeout`] without progress
//!   (nginx's `send_timeout`), which drops the answer and with it its upstream stream.
//! - **h2c** (HTTP/2 with prior knowledge) is recognised by its preface and handed to
//!   [`super::h2`] with the bytes already read put back in front ([`Rewind`]).
//!
//! Framing follows RFC 9112: `Transfer-Encoding` whose last coding is not chunked, or together
//! with `Content-Length`, and `Content-Length` values that disagree are refused with 400 before
//! anything is forwarded (the request smuggling cases); a head over the limit gets 431. Every
//! refusal is the usual JSON error answer, then the connection closes.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::body::{self, ProxyBody, ProxyRequest};
use super::h2::PREFACE;
use super::passthrough::Passthrough;
use crate::error::{BoxError, ErrorKind, LifelineError};
use crate::http1::{self, Chunk, Framing, Step, MAX_HEADERS};

/// Bytes asked for per read; also the size of the buffers on each worker's free list.
const READ_SIZE: usize = 4 << 10;
/// Buffers a worker keeps for its connections between requests.
const POOL_MAX: usize = 256;
/// A request body left unread after the answer is read and dropped up to this size (and
/// within [`DRAIN_TIMEOUT`]), so the connection can carry the next request; past it the
/// connection closes.
const DRAIN_MAX: u64 = 64 << 10;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Capacity of the answer buffer a connection keeps between requests.
const KEEP_IDLE: usize = 8 << 10;
/// Body frames up to this size are copied behind the head (or chunk line) and written with it.
const INLINE_BODY: usize = 16 << 10;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What serves a connection's requests. A request arrives without this hop's fields
/// (RFC 9110 §7.6.1): HTTP/1.1 ones are dropped while parsing, h2c ones (`te: trailers`, the
/// only one HTTP/2 lets through) by the h2c server ([`super::h2`]).
pub trait Handler: Send + Sync + 'static {
    fn call(&self, req: ProxyRequest, peer: SocketAddr) -> impl Future<Output = Response<ProxyBody>> + Send;

    /// The limits of a connection accepted now, from the listener's (`base`); the proxy puts
    /// in the configured timeouts, so a reload applies to the connections accepted after it.
    fn limits(&self, base: Limits) -> Limits {
        base
    }
}

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line and header fields).
    pub max_head: usize,
    /// HTTP/2: largest header list.
    pub max_header_list_size: u32,
    /// A head must arrive whole within this of its first byte (or of the accept).
    pub head_timeout: Duration,
    /// A keep-alive connection with no request for this long (up to twice as long) is closed.
    pub idle_timeout: Duration,
    /// A client that takes none of an answer for this long is cut off (nginx's
    /// `send_timeout`: measured between two writes that made progress, not over the whole
    /// answer). Without it a caller that stops reading holds the connection, the answer's
    /// upstream stream and its buffers for as long as it likes.
    pub send_timeout: Duration,
}

impl Limits {
    pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
    /// Envoy's default.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// nginx's default `send_timeout`.
    pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
}

/// How a worker tells its connections to finish: idle ones close at once, busy ones after
/// the answer in flight (with `Connection: close`).
#[derive(Debug, Default)]
pub struct Stop {
    stopping: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Stop {
    pub fn trigger(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ready once [`Stop::trigger`] is called after this was made.
    pub(super) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

/// The read side of the connection, shared with the body of the request in flight.
struct Shared {
    inbound: Mutex<Inbound>,
}

/// The read side: the socket's read half, what has been read and not yet used, and where the
/// current body stands.
///
/// Reads go through `AsyncRead`, which clears the runtime's readiness when a read comes back
/// short: the next wait goes to the reactor instead of trying a read that would only say
/// `EAGAIN` (with `try_read` that was 0.7 wasted `recvfrom` per request under `strace -c`).
struct Inbound {
    rd: OwnedReadHalf,
    buf: BytesMut,
    body: Framing,
    /// Which request the body belongs to; a body kept past its answer reads nothing.
    serial: u64,
    /// `Expect: 100-continue` was asked and the interim answer not yet (fully) written.
    continue_owed: Option<usize>,
    /// The body's framing broke or the caller went away mid-body: the connection is done.
    broken: bool,
}

impl Shared {
    fn inbound(&self) -> MutexGuard<'_, Inbound> {
        self.inbound.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inbound {
    /// Reads what the socket has into the buffer; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            self.buf = take_buffer();
        }
        reserve(&mut self.buf);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.rd), cx, &mut self.buf)
    }
}

/// Serves one accepted connection until it closes, fails, or `stop` says so.
pub async fn serve<H: Handler>(stream: TcpStream, peer: SocketAddr, handler: Arc<H>, limits: Limits, stop: Arc<Stop>) {
    let (rd, wr) = stream.into_split();
    let inbound =
        Inbound { rd, buf: BytesMut::new(), body: Framing::Done, serial: 0, continue_owed: None, broken: false };
    let shared = Arc::new(Shared { inbound: Mutex::new(inbound) });
    let mut conn = Conn { shared, wr, out: Vec::new(), serial: 0, idle_timer: None, send_timeout: limits.send_timeout };
    // Boxed once per connection: the HTTP/1.1 path (with the route future inline, several KB)
    // is not carried by the task of an h2c connection, and an h2c connection's state is not
    // carried by an HTTP/1.1 one.
    let served = Box::pin(conn.run(&*handler, peer, limits, &stop)).await;
    match served {
        Ok(Next::H2) => Box::pin(serve_h2(conn, peer, handler, limits, &stop)).await,
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "client connection ended with an error"),
    }
}

struct Conn {
    shared: Arc<Shared>,
    wr: OwnedWriteHalf,
    /// The answer's head (and small body frames) on its way out; kept for its capacity.
    out: Vec<u8>,
    serial: u64,
    /// The idle timer, and how many requests had been served when it was armed.
    idle_timer: Option<(Pin<Box<tokio::time::Sleep>>, u64)>,
    send_timeout: Duration,
}

/// Why [`Conn::run`] returned.
enum Next {
    Close,
    H2,
}

/// A parsed request head: the request (boxed where it will stay, its body not yet set).
struct Head {
    req: ProxyRequest,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

impl Conn {
    async fn run<H: Handler>(
        &mut self,
        handler: &H,
        peer: SocketAddr,
        limits: Limits,
        stop: &Stop,
    ) -> io::Result<Next> {
        let mut first = true;
        loop {
            let head = match self.read_head(limits, stop, first).await? {
                Read::Head(head) => head,
                Read::Closed => return Ok(Next::Close),
                Read::H2 => return Ok(Next::H2),
                Read::Refused(err) => {
                    self.answer_refusal(&err).await;
                    self.linger().await;
                    return Ok(Next::Close);
                }
            };
            first = false;
            self.serial += 1;
            let head_only = head.req.method() == Method::HEAD;
            let version = head.req.version();
            let has_body = !head.framing.is_end();
            {
                let mut inb = self.shared.inbound();
                inb.body = head.framing;
                inb.serial = self.serial;
                inb.continue_owed = (head.expect_continue && has_body).then_some(0);
            }
            let mut req = head.req;
            if has_body {
                *req.body_mut() = body::boxed(RequestBody { shared: self.shared.clone(), serial: self.serial });
            }
            let resp = match self.respond(handler, req, peer, has_body).await {
                Some(resp) => resp,
                None => return Ok(Next::Close), // the caller hung up: its request is cancelled
            };
            let keep = head.keep_alive && !stop.is_stopping() && self.body_settles();
            self.finish_continue().await?;
            let keep = self.write_response(resp, head_only, version, keep).await?;
            if self.out.capacity() > KEEP_IDLE {
                // A large head or body frame went out: do not keep its buffer while idle.
                self.out = Vec::new();
            }
            if !keep || !self.finish_body().await {
                return Ok(Next::Close);
            }
        }
    }

    /// Runs the handler; for a bodyless request, watches for the caller hanging up meanwhile
    /// (`None`: it did, and the request was dropped).
    async fn respond<H: Handler>(
        &self,
        handler: &H,
        req: ProxyRequest,
        peer: SocketAddr,
        has_body: bool,
    ) -> Option<Response<ProxyBody>> {
        // Pinned where it is made, then awaited through the pin: awaited by value, the
        // request's whole future (~2 KB) was moved into the await's own slot.
        let mut call = std::pin::pin!(handler.call(req, peer));
        if has_body {
            return Some(call.await);
        }
        let mut watching = true;
        poll_fn(|cx| {
            if let Poll::Ready(resp) = call.as_mut().poll(cx) {
                return Poll::Ready(Some(resp));
            }
            while watching {
                match self.poll_hangup(cx) {
                    Poll::Ready(true) => return Poll::Ready(None),
                    Poll::Ready(false) => watching = false,
                    Poll::Pending => break,
                }
            }
            Poll::Pending
        })
        .await
    }

    /// `true` when the caller closed its side; `false` when it sent more (a pipelined request:
    /// kept for later, and the watch ends).
    fn poll_hangup(&self, cx: &mut Context<'_>) -> Poll<bool> {
        match ready!(self.shared.inbound().poll_fill(cx)) {
            Ok(0) | Err(_) => Poll::Ready(true),
            Ok(_) => Poll::Ready(false),
        }
    }

    /// A "100 Continue" the body started writing is finished before the final answer goes out
    /// (a socket that took part of 25 bytes is all but unheard of, but half an interim answer
    /// followed by the final one would be a broken stream).
    async fn finish_continue(&mut self) -> io::Result<()> {
        let rest = {
            let mut inb = self.shared.inbound();
            match inb.continue_owed {
                Some(at) if at > 0 => {
                    inb.continue_owed = None;
                    Some(at)
                }
                _ => None,
            }
        };
        match rest {
            Some(at) => {
                write_all_vectored(&mut self.wr, &CONTINUE[at.min(CONTINUE.len())..], &[], self.send_timeout).await
            }
            None => Ok(()),
        }
    }

    /// Whether the request body can be settled after the answer (read to its end, or small
    /// enough to drain); decided before the answer's head, which says whether we close.
    fn body_settles(&self) -> bool {
        let inb = self.shared.inbound();
        if inb.broken || inb.continue_owed.is_some() {
            // A caller still waiting for "100 Continue" may or may not send its body now.
            return inb.body.is_end() && !inb.broken;
        }
        match inb.body {
            Framing::Done | Framing::Length(0) => true,
            Framing::Length(n) => n <= DRAIN_MAX,
            Framing::Chunked(_) => true,
            Framing::Eof => false,
        }
    }

    /// After the answer: reads and drops what is left of the request body (bounded), so the
    /// next request starts where it should. `false` when the connection cannot go on.
    async fn finish_body(&mut self) -> bool {
        let drain = async {
            let mut dropped = 0u64;
            loop {
                let step = {
                    let mut inb = self.shared.inbound();
                    if inb.broken {
                        return false;
                    }
                    let inb = &mut *inb;
                    match http1::decode(&mut inb.body, &mut inb.buf, READ_SIZE * 4) {
                        Ok(step) => step,
                        Err(_) => return false,
                    }
                };
                match step {
                    Step::End => return true,
                    Step::Frame(f) => {
                        dropped += f.data_ref().map_or(0, |d| d.len() as u64);
                        if dropped > DRAIN_MAX {
                            return false;
                        }
                    }
                    Step::More => match self.fill().await {
                        Ok(0) | Err(_) => return false,
                        Ok(_) => {}
                    },
                }
            }
        };
        let done = tokio::time::timeout(DRAIN_TIMEOUT, drain).await.unwrap_or(false);
        let mut inb = self.shared.inbound();
        inb.serial = 0; // a body kept past its answer reads nothing more
        done
    }

    /// Reads once into the buffer (waiting for readiness); `Ok(0)` is end of stream.
    async fn fill(&self) -> io::Result<usize> {
        poll_fn(|cx| self.shared.inbound().poll_fill(cx)).await
    }

    /// Reads the next request head.
    async fn read_head(&mut self, limits: Limits, stop: &Stop, first: bool) -> io::Result<Read> {
        // The head timer runs from the accept for a new connection, from the first byte after.
        let mut head_deadline = first.then(|| Instant::now() + limits.head_timeout);
        loop {
            {
                let mut inb = self.shared.inbound();
                if !inb.buf.is_empty() {
                    if first && PREFACE.starts_with(&inb.buf[..inb.buf.len().min(PREFACE.len())]) {
                        if inb.buf.len() >= PREFACE.len() {
                            return Ok(Read::H2);
                        }
                    } else {
                        match parse_head(&mut inb.buf, limits.max_head) {
                            Parsed::Head(head) => return Ok(Read::Head(head)),
                            Parsed::Refused(err) => return Ok(Read::Refused(err)),
                            Parsed::Partial => {}
                        }
                    }
                    head_deadline.get_or_insert_with(|| Instant::now() + limits.head_timeout);
                } else if !first {
                    // Idle between requests: the buffer goes back to the worker's list.
                    give_back(std::mem::take(&mut inb.buf));
                }
            }
            match self.wait_readable(stop, head_deadline, limits.idle_timeout).await {
                Wait::Ready => {}
                Wait::Stop => return Ok(Read::Closed),
                Wait::HeadTimeout if self.shared.inbound().buf.is_empty() => return Ok(Read::Closed),
                Wait::HeadTimeout => {
                    let msg = format!("the request head did not arrive within {:?}", limits.head_timeout);
                    return Ok(Read::Refused(LifelineError::new(ErrorKind::RequestTimeout, msg)));
                }
            }
            // Readable, or so the reactor says: a stale readiness costs one read that comes
            // back pending, and clears it.
            let read = poll_fn(|cx| Poll::Ready(self.shared.inbound().poll_fill(cx))).await;
            match read {
                Poll::Ready(Ok(0)) => return Ok(Read::Closed),
                Poll::Ready(Ok(_)) | Poll::Pending => {}
                Poll::Ready(Err(e)) => return Err(e),
            }
        }
    }

    /// Waits until the socket is readable, the worker stops (idle connections only), the head
    /// timer runs out, or the connection has been idle for `idle` ([`Limits::idle_timeout`]).
    ///
    /// The idle timer is one per connection and stays registered across requests: when it
    /// fires it re-arms if any request was served since it was armed, and closes the
    /// connection otherwise. So waiting for a request costs no timer registration and no clock
    /// read (it is the common wait: every keep-alive request has one), and a connection is
    /// closed between one and two idle timeouts after its last request.
    async fn wait_readable(&mut self, stop: &Stop, head_deadline: Option<Instant>, idle: Duration) -> Wait {
        // Between requests (nothing of the next one read yet) a stop closes the connection.
        let between = self.shared.inbound().buf.is_empty();
        let stopped = stop.notify.notified();
        tokio::pin!(stopped);
        if between && stop.is_stopping() {
            return Wait::Stop;
        }
        let (shared, served, idle_timer) = (&self.shared, self.serial, &mut self.idle_timer);
        let mut head_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        poll_fn(|cx| {
            if shared.inbound().rd.as_ref().poll_read_ready(cx).is_ready() {
                return Poll::Ready(Wait::Ready);
            }
            if between && stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wait::Stop);
            }
            if let Some(at) = head_deadline {
                let timer = head_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                return match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Wait::HeadTimeout),
                    Poll::Pending => Poll::Pending,
                };
            }
            let (timer, armed_at) = idle_timer.get_or_insert_with(|| (Box::pin(tokio::time::sleep(idle)), served));
            while timer.as_mut().poll(cx).is_ready() {
                if *armed_at == served {
                    return Poll::Ready(Wait::Stop);
                }
                *armed_at = served;
                timer.as_mut().reset(Instant::now() + idle);
            }
            Poll::Pending
        })
        .await
    }

    /// Writes the answer. Returns whether the connection stays open.
    async fn write_response(
        &mut self,
        resp: Response<ProxyBody>,
        head_only: bool,
        version: Version,
        keep: bool,
    ) -> io::Result<bool> {
        // The answer goes out at the end of the worker's round: the other connections whose
        // work came in the same batch of events run first, then the answers are written back
        // to back. Written as each came, a write woke the caller for one answer, and on a busy
        // machine the caller (and the backend, woken the same way) preempted this worker: with
        // 256 connections the workers were preempted 463 times per 1 000 requests (HAProxy
        // 214) and the backend woke 231 times (HAProxy 119); waiting for the round, 206 and 107
        // (`bench/cpu_split.py --conns 256 --compare`, BENCHMARKS.md "Session 17").
        // The wait is a turn at the back of the worker's queue, not `yield_now`: tokio runs a
        // yielded task only after a zero-timeout poll of the reactor and a pass of its timer
        // wheel, which at a moderate rate, where a round often holds one answer, was half an
        // `epoll_wait` per request for nothing (`bench/syscalls.py --rate 5000`: 1.45 per
        // request, 0.95 with the turn; HAProxy 1.0, nginx 0.8-1.0; BENCHMARKS.md "Session 22").
        requeue().await;
        let (parts, mut body) = resp.into_parts();
        let closes_itself = parts.headers.get_all(CONNECTION).iter().any(|v| http1::has_token(v.as_bytes(), "close"));
        let mut keep = keep && !closes_itself;
        let mode = framing_of(&parts, &body, head_only);
        let mode = match mode {
            Out::Chunked if version == Version::HTTP_10 => {
                keep = false;
                Out::UntilClose
            }
            m => m,
        };
        if mode == Out::UntilClose {
            keep = false;
        }
        encode_head(&mut self.out, &parts, body.fields(), version, mode, keep);
        drop(parts);
        if mode == Out::Nothing {
            drop(body);
            self.write_out().await?;
            return Ok(keep);
        }
        let mut sent = 0u64;
        let mut trailers = None;
        loop {
            if body.is_end_stream() {
                break;
            }
            let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Nothing at hand: what is buffered goes out while the body is awaited.
                    self.write_out().await?;
                    poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            let frame = match frame {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    // Too late for an error answer: cut the connection so the caller sees an
                    // incomplete message rather than a complete wrong one.
                    let _ = self.write_out().await;
                    return Err(io::Error::other(format!("the answer's body failed: {e}")));
                }
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    sent += data.len() as u64;
                    self.put_data(data, mode).await?;
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        match mode {
            Out::Chunked => {
                self.out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.iter().flatten() {
                    http1::put_header(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
                }
                self.out.extend_from_slice(b"\r\n");
            }
            Out::Length(n) if n != sent => {
                let _ = self.write_out().await;
                return Err(io::Error::other(format!("the answer's body was {sent} bytes, not the {n} announced")));
            }
            _ => {}
        }
        self.write_out().await?;
        Ok(keep)
    }

    /// Queues or writes one data frame of the answer.
    async fn put_data(&mut self, data: Bytes, mode: Out) -> io::Result<()> {
        if mode == Out::Chunked {
            self.out.extend_from_slice(http1::hex_u64(data.len() as u64, &mut [0; 16]));
            self.out.extend_from_slice(b"\r\n");
        }
        if self.out.len() + data.len() <= INLINE_BODY {
            self.out.extend_from_slice(&data);
        } else {
            let head = std::mem::take(&mut self.out);
            let result = write_all_vectored(&mut self.wr, &head, &data, self.send_timeout).await;
            self.out = head;
            self.out.clear();
            result?;
        }
        if mode == Out::Chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    async fn write_out(&mut self) -> io::Result<()> {
        let result = write_all_vectored(&mut self.wr, &self.out, &[], self.send_timeout).await;
        self.out.clear();
        result
    }

    /// Closes after a refusal without losing the answer: a close with unread bytes in the
    /// receive queue sends a reset, which can discard the answer before the caller reads it.
    /// So the write side is shut, and what the caller still sends is read and dropped for a
    /// moment (nginx's lingering close).
    async fn linger(&self) {
        let _ = socket2::SockRef::from(self.wr.as_ref()).shutdown(std::net::Shutdown::Write);
        let drain = async {
            let mut dropped = 0usize;
            while dropped < DRAIN_MAX as usize {
                match self.fill().await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => dropped += n,
                }
                self.shared.inbound().buf.clear();
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }

    /// Answers a request refused before the handler (400, 408, 431) and closes.
    async fn answer_refusal(&mut self, err: &LifelineError) {
        tracing::debug!(error = %err, "refused a request before routing");
        let id = super::headers::new_request_id();
        let resp = super::respond::lifeline_error_response(err, &id);
        let _ = self.write_response(resp, false, Version::HTTP_11, false).await;
    }
}

enum Read {
    Head(Head),
    Closed,
    H2,
    Refused(LifelineError),
}

enum Wait {
    Ready,
    Stop,
    HeadTimeout,
}

enum Parsed {
    Head(Head),
    Partial,
    Refused(LifelineError),
}

/// Parses a complete head off the front of `buf`.
fn parse_head(buf: &mut BytesMut, max_head: usize) -> Parsed {
    let bad = |msg: String| Parsed::Refused(LifelineError::new(ErrorKind::BadRequest, msg));
    let too_large = || {
        Parsed::Refused(LifelineError::new(
            ErrorKind::HeadersTooLarge,
            format!("the request head is larger than {max_head} bytes"),
        ))
    };
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len > max_head => return too_large(),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return too_large(),
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return too_large(),
        Err(e) => return bad(format!("malformed request head: {e}")),
    };
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let (Some(method), Some(path), Some(minor)) = (parsed.method, parsed.path, parsed.version) else {
        return bad("incomplete request line".into());
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return bad("invalid method".into()) };
    let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    let path_span = span(path.as_bytes());
    // Spans, not slices: the head is cut off the buffer before the values are made.
    let mut fields: smallvec::SmallVec<[(usize, usize, usize, usize); 16]> = smallvec::SmallVec::new();
    for h in parsed.headers.iter() {
        let (n, nl) = span(h.name.as_bytes());
        let (v, vl) = span(h.value);
        fields.push((n, nl, v, vl));
    }
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path_span.0..path_span.0 + path_span.1)) else {
        return bad("invalid request target".into());
    };
    // Exact: what the proxy adds on the way out (X-Forwarded-For and -Proto, the request id,
    // the time budget) is written by the upstream client from the request's `body::Hop`, not
    // inserted here.
    let mut map = HeaderMap::with_capacity(fields.len());
    let (mut te, mut cl, mut keep, mut close, mut expect, mut named) =
        (None::<Bytes>, false, false, false, false, false);
    for &(n, nl, v, vl) in &fields {
        let raw = &head[v..v + vl];
        // This hop's fields are read here and not put in the map (the proxy would only take
        // them out again, RFC 9110 §7.6.1); `Content-Length` stays for the route's limit.
        match http1::Field::of(&head[n..n + nl]) {
            http1::Field::TransferEncoding => {
                te = Some(match te {
                    None => head.slice(v..v + vl),
                    Some(prev) => Bytes::from([&prev[..], b",", raw].concat()),
                });
                continue;
            }
            http1::Field::Connection => {
                keep |= http1::has_token(raw, "keep-alive");
                close |= http1::has_token(raw, "close");
                named |= http1::connection_names(raw).next().is_some();
                continue;
            }
            http1::Field::HopByHop => continue,
            http1::Field::ContentLength => cl = true,
            http1::Field::EndToEnd => {}
        }
        let Ok(name) = HeaderName::from_bytes(&head[n..n + nl]) else { return bad("invalid header name".into()) };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(v..v + vl)) else {
            return bad(format!("invalid value of header {name}"));
        };
        if name == EXPECT {
            expect |= value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        map.append(name, value);
    }
    if named {
        http1::remove_named(&mut map, fields.iter().map(|&(n, nl, v, vl)| (&head[n..n + nl], &head[v..v + vl])));
    }
    let framing = match (te, cl) {
        (Some(_), true) => return bad("both Transfer-Encoding and Content-Length".into()),
        (Some(_), _) if version == Version::HTTP_10 => return bad("Transfer-Encoding in an HTTP/1.0 request".into()),
        (Some(te), _) if http1::ends_chunked(&te) => Framing::Chunked(Chunk::Size),
        (Some(_), _) => return bad("a Transfer-Encoding that does not end in chunked".into()),
        (None, true) => match http1::content_length(map.get_all(CONTENT_LENGTH).iter().map(HeaderValue::as_bytes)) {
            Ok(n) => Framing::Length(n.unwrap_or(0)),
            Err(why) => return bad(why),
        },
        (None, false) => Framing::Done,
    };
    let mut req = ProxyRequest::new(Request::new(body::empty()));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = map;
    let keep_alive = if version == Version::HTTP_11 { !close } else { keep && !close };
    Parsed::Head(Head { req, framing, keep_alive, expect_continue: expect && version == Version::HTTP_11 })
}

/// How the answer's body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body (HEAD, 1xx, 204, 304): the head says what it says.
    Nothing,
    Length(u64),
    Chunked,
    /// HTTP/1.0 caller, length unknown: the close ends the body.
    UntilClose,
}

fn framing_of(parts: &http::response::Parts, body: &ProxyBody, head_only: bool) -> Out {
    let s = parts.status;
    if head_only || s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED {
        return Out::Nothing;
    }
    if body.is_end_stream() {
        return Out::Length(0);
    }
    body.size_hint().exact().map_or(Out::Chunked, Out::Length)
}

/// The status line and header fields. `Content-Length` and `Transfer-Encoding` come from the
/// body as it is (kept as given only where there is no body: HEAD and 304); `Connection`
/// says what this connection does next; `Date` is added when the answer has none.
///
/// A backend's fields passed through (`passed`) go first, as they arrived; then the fields of
/// the map (what Lifeline adds).
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    passed: Option<&Passthrough>,
    version: Version,
    mode: Out,
    keep: bool,
) {
    out.clear();
    out.extend_from_slice(if version == Version::HTTP_10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let no_length = mode == Out::Nothing && (parts.status.is_informational() || parts.status == StatusCode::NO_CONTENT);
    let with_length = mode == Out::Nothing && !no_length;
    let mut dated = false;
    if let Some(p) = passed {
        p.write_h1(out, with_length);
        dated = p.has_date();
    }
    for (name, value) in &parts.headers {
        if name == CONNECTION || name == TRANSFER_ENCODING {
            continue;
        }
        if name == CONTENT_LENGTH && !with_length {
            continue;
        }
        dated |= name == DATE;
        http1::put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match mode {
        Out::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(http1::itoa_u64(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::Nothing | Out::UntilClose => {}
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        DATE_CACHE.with(|d| out.extend_from_slice(d.borrow_mut().now()));
        out.extend_from_slice(b"\r\n");
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `Date` value, formatted once a second per thread.
struct DateCache {
    second: u64,
    text: Vec<u8>,
}

impl DateCache {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.text
    }
}

/// Runs `f` with the current `Date` value (this thread's, formatted once a second).
pub(super) fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    DATE_CACHE.with(|d| f(d.borrow_mut().now()))
}

thread_local! {
    static DATE_CACHE: std::cell::RefCell<DateCache> = const { std::cell::RefCell::new(DateCache { second: 0, text: Vec::new() }) };
    /// Read buffers of this worker's connections that are between requests.
    static POOL: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_buffer() -> BytesMut {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| BytesMut::with_capacity(READ_SIZE))
}

/// Returns an empty buffer to the worker's list if nothing else still holds a part of it
/// (a header value kept past its request).
fn give_back(mut buf: BytesMut) {
    if buf.capacity() == 0 {
        return;
    }
    buf.clear();
    // The whole allocation comes back only when this is its last handle; one grown for a
    // large head or body is let go rather than kept on the list.
    if buf.try_reclaim(READ_SIZE) && (READ_SIZE..=KEEP_IDLE).contains(&buf.capacity()) {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(buf);
            }
        });
    }
}

/// Room for one more read.
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
}

/// Writes `a` then `b` whole, in as few writes as the socket allows; fails with `TimedOut` when
/// the socket takes nothing for `timeout` ([`Limits::send_timeout`]). The timer is made only
/// once a write has to wait.
async fn write_all_vectored(wr: &mut OwnedWriteHalf, mut a: &[u8], mut b: &[u8], timeout: Duration) -> io::Result<()> {
    let mut stall: Option<Pin<Box<tokio::time::Sleep>>> = None;
    while !a.is_empty() || !b.is_empty() {
        let n = poll_fn(|cx| {
            let written = match (a.is_empty(), b.is_empty()) {
                (false, false) => Pin::new(&mut *wr).poll_write_vectored(cx, &[IoSlice::new(a), IoSlice::new(b)]),
                (false, true) => Pin::new(&mut *wr).poll_write(cx, a),
                _ => Pin::new(&mut *wr).poll_write(cx, b),
            };
            if written.is_pending() {
                let timer = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client took none of the answer for {timeout:?}"),
                    )));
                }
            }
            written
        })
        .await;
        let mut n = match n? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => n,
        };
        if let Some(timer) = stall.as_mut() {
            timer.as_mut().reset(Instant::now() + timeout);
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        n -= from_a;
        b = &b[n..];
    }
    Ok(())
}

/// A request body, read from the connection as the upstream client asks for it.
struct RequestBody {
    shared: Arc<Shared>,
    serial: u64,
}

impl RequestBody {
    fn fail(inb: &mut Inbound, why: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        inb.broken = true;
        inb.body = Framing::Done;
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, why).into())))
    }

    /// Writes what is left of "100 Continue".
    fn poll_continue(&self, inb: &mut Inbound, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(at) = inb.continue_owed {
            if at == CONTINUE.len() {
                inb.continue_owed = None;
                break;
            }
            let io: &TcpStream = inb.rd.as_ref();
            ready!(io.poll_write_ready(cx))?;
            match io.try_write(&CONTINUE[at..]) {
                Ok(n) => inb.continue_owed = Some(at + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &*self;
        let mut inb = this.shared.inbound();
        if inb.serial != this.serial {
            return Poll::Ready(Some(Err("the request this body belongs to has been answered".into())));
        }
        if let Err(e) = ready!(this.poll_continue(&mut inb, cx)) {
            return Self::fail(&mut inb, format!("writing 100 Continue: {e}"));
        }
        loop {
            let inb = &mut *inb;
            match http1::decode(&mut inb.body, &mut inb.buf, READ_SIZE * 4) {
                Ok(Step::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(why) => return Self::fail(inb, format!("invalid request body: {why}")),
            }
            match ready!(inb.poll_fill(cx)) {
                Ok(0) => return Self::fail(inb, "the caller closed the connection mid-body".into()),
                Ok(_) => {}
                Err(e) => return Self::fail(inb, format!("reading the request body: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let inb = self.shared.inbound();
        inb.serial != self.serial || inb.body.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        match self.shared.inbound().body {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Puts the task at the back of its worker's queue once: the tasks already woken run before it
/// goes on. Unlike `tokio::task::yield_now`, it does not wait for the next poll of the reactor.
async fn requeue() {
    let mut queued = false;
    poll_fn(|cx| {
        if queued {
            return Poll::Ready(());
        }
        queued = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// HTTP/2 with prior knowledge ([`super::h2`]), with the bytes read so far put back in front.
async fn serve_h2<H: Handler>(conn: Conn, peer: SocketAddr, handler: Arc<H>, limits: Limits, stop: &Stop) {
    let Ok(shared) = Arc::try_unwrap(conn.shared) else { return };
    let inbound = shared.inbound.into_inner().unwrap_or_else(|p| p.into_inner());
    let Ok(stream) = inbound.rd.reunite(conn.wr) else { return };
    let io = Rewind { read: inbound.buf.freeze(), io: stream };
    super::h2::serve(io, peer, handler, limits, stop).await;
}

/// A socket with bytes already read put back in front of it.
struct Rewind {
    read: Bytes,
    io: TcpStream,
}

impl tokio::io::AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(super) mod tests;
