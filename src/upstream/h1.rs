//! A minimal HTTP/1.1 client connection, driven by the task that uses it.
//!
//! hyper's client connection is a future of its own: the request goes to it through a channel,
//! the response comes back through a oneshot, and the connection task and the request task wake
//! each other twice per exchange. On the proxy path that was the largest single cost per request
//! (BENCHMARKS.md, sessions 2 and 3). Here the request's own task writes the request head and
//! body, reads and parses the response head (httparse), and the response body reads the socket
//! when the downstream connection polls it. One exchange involves one task and no channel.
//!
//! Scope, on purpose: HTTP/1.1 origin-form requests to a backend, one exchange at a time, no
//! upgrades (the proxy strips `Upgrade`). Message framing follows RFC 9112 §6: the request body
//! is sent with `Content-Length` when its size is known and chunked otherwise; the response body
//! is empty for HEAD, 1xx, 204 and 304, chunked when `Transfer-Encoding` ends in chunked,
//! `Content-Length` delimited when that is valid, and read until close otherwise. Interim 1xx
//! responses are skipped. A connection is reused only when its response was fully read, framed
//! by length or chunks, HTTP/1.1, without `Connection: close` and with nothing left over.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::error::BoxError;
use crate::http1::{self, itoa_u64, put_header, Chunk, Field, Framing, Step, MAX_HEADERS};
use crate::proxy::body::{ProxyBody, ProxyRequest};
use crate::proxy::headers::{self, HopField};
use crate::proxy::passthrough::Passthrough;

/// Largest response head (and chunk trailer section) accepted.
const MAX_HEAD: usize = 256 << 10;
/// First read size of a connection; reads grow up to [`MAX_READ`] while they fill the buffer.
const MIN_READ: usize = 4 << 10;
const MAX_READ: usize = 64 << 10;
/// Buffer capacity an idle pooled connection may keep.
const KEEP_IDLE: usize = 8 << 10;
/// Request body frames up to this size are copied behind the head and written with it.
const INLINE_BODY: usize = 16 << 10;

/// One connection to a backend. Boxed: from the pool to an exchange, into the response's
/// body and back it moves as a pointer, where its ~96 bytes were copied at each step (and
/// twice into each `async fn` it passed through), into request state written per request.
pub struct Conn(Box<Link>);

impl std::ops::Deref for Conn {
    type Target = Link;
    fn deref(&self) -> &Link {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Link {
        &mut self.0
    }
}

/// What a [`Conn`] holds.
pub struct Link {
    io: TcpStream,
    buf: BytesMut,
    /// Encoded request head (and small body frames), kept for its capacity.
    out: Vec<u8>,
    next_read: usize,
}

/// Where a connection goes once its response body has been read to the end.
pub trait Release: Send + Sync + 'static {
    fn release(&self, conn: Conn);
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// Not one byte of the request was written: it may go out elsewhere. `true` when the
    /// request is whole again (body frames already taken were put back in front); `false`
    /// when its body cannot be rebuilt (trailers were taken).
    NotSent(io::Error, bool),
    /// The exchange failed after the request (or part of it) was written: it may have reached
    /// the backend.
    Exchange(String),
    /// The caller's request body failed while it was being forwarded (the caller went away,
    /// broke its chunked framing, sent more than `max_body` or less than its `Content-Length`).
    /// Part of the request may have reached the backend, but nothing here is the backend's
    /// fault: the connection is dropped and the endpoint's health is left alone.
    Body(BoxError),
    /// Sent with `resend` (idempotent, no body, on a kept-alive connection), and the connection
    /// closed or reset before one byte of an answer: the backend had closed it while it sat idle
    /// (RFC 9112 §9.3.1). The request is as it was, to go out on another connection.
    Stale(String),
}

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn(Box::new(Link { io, buf: BytesMut::new(), out: Vec::new(), next_read: MIN_READ }))
    }
}

impl Link {
    /// True when the connection can carry a request: the peer has not closed it, reset it or
    /// sent anything unasked (an idle backend may announce a timeout, then close).
    ///
    /// Asks the kernel (a non-blocking peek, one syscall), not the runtime's cached readiness:
    /// a close that arrived while this thread was busy is not yet known to the reactor, and a
    /// POST written into a connection the backend has closed has an ambiguous outcome. nginx
    /// and HAProxy skip this check and retry idempotent requests instead; a settlement is not
    /// one, so the pool skips it only for those ([`super::pool::ConnPool::send`]). (Measured:
    /// trusting readiness let a POST fail after a SIGKILLed primary, in
    /// `failover::process::sigkilled_primary_active_checks_only_…`.)
    pub fn is_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&self.io).peek(&mut probe) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }

    /// Before the connection waits in its pool: buffers grown for a large exchange are let
    /// go, so a pool of idle connections holds a few KiB each, not the largest answer's
    /// read size (64 KiB) and body frame (16 KiB) forever.
    fn settle(&mut self) {
        if self.buf.capacity() > KEEP_IDLE {
            self.buf = BytesMut::new();
            self.next_read = MIN_READ;
        }
        if self.out.capacity() > KEEP_IDLE {
            self.out = Vec::new();
        }
    }

    /// Nothing unasked has been read from the connection (no syscall).
    pub fn is_quiet(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads what the socket has into the buffer; `Ok(0)` is end of stream. Through
    /// `AsyncRead`, so a short read clears the runtime's readiness and the next read waits for
    /// the reactor instead of trying a syscall that would say `EAGAIN`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.next_read / 2 {
            self.buf.reserve(self.next_read);
        }
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))?;
        if n > 0 && self.buf.capacity() == self.buf.len() {
            // The read filled the buffer: more is probably waiting.
            self.next_read = (self.next_read * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }

    /// Writes `self.out` whole, adding what was accepted to `written`, then clears it.
    async fn flush_out(&mut self, written: &mut u64) -> io::Result<()> {
        let mut at = 0;
        while at < self.out.len() {
            let n = self.io.write(&self.out[at..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            at += n;
            *written += n as u64;
        }
        self.out.clear();
        Ok(())
    }

    async fn write_direct(&mut self, data: &[u8], written: &mut u64) -> io::Result<()> {
        self.io.write_all(data).await?;
        *written += data.len() as u64;
        Ok(())
    }
}

/// Sends `req` (origin-form target, hop-by-hop headers removed) on `conn`, with `Host: {host}`
/// when it has no `Host`, and returns the response once its head has arrived. The body reads
/// the rest from the connection and hands the connection to `home` when it ends and the
/// connection can carry another.
///
/// The request is borrowed, not consumed: the caller keeps it for another attempt (a retry
/// needs no copy of its head). Its body is taken; it is put back when nothing was written
/// ([`Failure::NotSent`]). With `resend`, a connection that turns out closed before a byte of
/// an answer is [`Failure::Stale`] for a request without a body, which is then as it was.
pub async fn exchange<R: Release>(
    mut conn: Conn,
    req: &mut ProxyRequest,
    host: &str,
    home: Arc<R>,
    resend: bool,
) -> Result<Response<ProxyBody>, Failure> {
    let head_only = req.method() == Method::HEAD;
    let mut body = std::mem::replace(req.body_mut(), crate::proxy::body::empty());
    let resend = resend && body.is_end_stream();
    let framing = encode_head(&mut conn.out, req, host, &body);
    // Kept until the first byte is out, so a request that never left can be made whole.
    let mut unsent = Some(Unsent { held: None, whole: true });
    let mut written = 0u64;
    if body.is_end_stream() {
        if let Err(e) = conn.flush_out(&mut written).await {
            return Err(failed(written, e, unsent, body, req));
        }
    } else {
        let mut sent = 0u64;
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(Failure::Body)?;
            let frame = match frame.into_data() {
                Ok(data) => {
                    sent += data.len() as u64;
                    if data.is_empty() {
                        continue;
                    }
                    if let Some(u) = unsent.as_mut() {
                        u.held = Some(data.clone());
                    }
                    if framing == ReqBody::Chunked {
                        conn.out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    }
                    if conn.out.len() + data.len() <= INLINE_BODY {
                        conn.out.extend_from_slice(&data);
                    } else {
                        if let Err(e) = conn.flush_out(&mut written).await {
                            return Err(failed(written, e, unsent, body, req));
                        }
                        unsent = None;
                        conn.write_direct(&data, &mut written).await.map_err(|e| Failure::Exchange(e.to_string()))?;
                    }
                    if framing == ReqBody::Chunked {
                        conn.out.extend_from_slice(b"\r\n");
                    }
                    if body.is_end_stream() {
                        break;
                    }
                    // More is coming, maybe not soon: what we have goes out now.
                    if let Err(e) = conn.flush_out(&mut written).await {
                        return Err(failed(written, e, unsent, body, req));
                    }
                    unsent = None;
                    continue;
                }
                Err(frame) => frame,
            };
            if let Ok(t) = frame.into_trailers() {
                trailers = Some(t);
                if let Some(u) = unsent.as_mut() {
                    u.whole = false;
                }
            }
        }
        match framing {
            ReqBody::Chunked => {
                conn.out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.iter().flatten() {
                    put_header(&mut conn.out, name.as_str().as_bytes(), value.as_bytes());
                }
                conn.out.extend_from_slice(b"\r\n");
            }
            ReqBody::Length(n) if n != sent => {
                let short = format!("the request body was {sent} bytes, not the {n} announced");
                return Err(Failure::Body(short.into()));
            }
            ReqBody::Length(_) => {}
        }
        if let Err(e) = conn.flush_out(&mut written).await {
            return Err(failed(written, e, unsent, body, req));
        }
    }
    drop((unsent, body));
    read_response(conn, head_only, home, resend).await
}

/// What the body of a request that has not been written yet needs to be rebuilt.
struct Unsent {
    /// The body frame taken but not yet written (at most one: each is written before the next
    /// is taken, except the last).
    held: Option<Bytes>,
    /// False once trailers were taken (they cannot be put back).
    whole: bool,
}

/// A write failed: before its first byte, the request's body goes back into it (when it can
/// be rebuilt); after, the exchange failed with an unknown outcome.
fn failed(written: u64, e: io::Error, unsent: Option<Unsent>, body: ProxyBody, req: &mut ProxyRequest) -> Failure {
    if written > 0 {
        return Failure::Exchange(e.to_string());
    }
    let Some(u) = unsent.filter(|u| u.whole) else {
        return Failure::NotSent(e, false);
    };
    *req.body_mut() = match u.held {
        Some(first) => crate::proxy::body::boxed(Prepended { first: Some(first), rest: body }),
        None => body,
    };
    Failure::NotSent(e, true)
}

/// A body with one data frame put back in front of the rest.
struct Prepended {
    first: Option<Bytes>,
    rest: ProxyBody,
}

impl Body for Prepended {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.first.take() {
            Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self.first.as_ref().map_or(0, |f| f.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + extra);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqBody {
    Length(u64),
    Chunked,
}

/// Encodes the request line and headers; `Content-Length` and `Transfer-Encoding` are written
/// from the body as it is, never copied from the incoming request. A request without `Host`
/// gets one: the hop's authority (an h2c caller's `:authority`), else `host` (the endpoint's).
/// What this hop adds ([`Hop`](crate::proxy::body::Hop): `X-Forwarded-For`,
/// `X-Forwarded-Proto`, `X-Request-Id`, the time budget) is written here, in place of the
/// request's own fields of those names.
fn encode_head(out: &mut Vec<u8>, req: &ProxyRequest, host: &str, body: &ProxyBody) -> ReqBody {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let hop = req.hop();
    let rewrite = hop.peer.is_some() || hop.request_id.is_some() || hop.budget.is_some();
    let grpc = hop.budget.map(|b| b.grpc);
    // Seen on the way rather than looked up: a comparison of standard names per field costs
    // less than hashing the name once.
    let (mut has_host, mut has_length, mut has_proto, mut forwarded_for) = (false, false, false, false);
    for (name, value) in req.headers() {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            has_length |= name == CONTENT_LENGTH;
            continue;
        }
        has_host |= name == HOST;
        if rewrite {
            match (headers::hop_field(name), hop.peer) {
                (Some(HopField::ForwardedFor), Some(peer)) => {
                    // All its lines at once, at the first (rare: callers beside a sidecar
                    // seldom send one, so the lookup is paid only then).
                    if !forwarded_for {
                        headers::put_forwarded_for(out, req.headers().get_all(&headers::X_FORWARDED_FOR), peer);
                        forwarded_for = true;
                    }
                    continue;
                }
                (Some(HopField::ForwardedProto), _) => has_proto = true,
                (Some(HopField::RequestId), _) if hop.request_id.is_some() => continue,
                (Some(HopField::TimeoutMs), _) if grpc == Some(false) => continue,
                (Some(HopField::GrpcTimeout), _) if grpc == Some(true) => continue,
                _ => {}
            }
        }
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_host {
        let host = hop.authority.as_ref().map_or(host, |a| a.as_str());
        put_header(out, b"host", host.as_bytes());
    }
    if let Some(peer) = hop.peer {
        if !forwarded_for {
            headers::put_forwarded_for(out, [], peer);
        }
        if !has_proto {
            put_header(out, b"x-forwarded-proto", b"http");
        }
    }
    if let Some(id) = &hop.request_id {
        put_header(out, b"x-request-id", id.as_bytes());
    }
    if let Some(budget) = hop.budget {
        out.extend_from_slice(if budget.grpc { b"grpc-timeout: " } else { b"x-lifeline-timeout-ms: " });
        out.extend_from_slice(itoa_u64(budget.ms, &mut [0u8; 20]));
        out.extend_from_slice(if budget.grpc { b"m\r\n" } else { b"\r\n" });
    }
    let framing = if body.is_end_stream() {
        ReqBody::Length(0)
    } else {
        body.size_hint().exact().map_or(ReqBody::Chunked, ReqBody::Length)
    };
    match framing {
        ReqBody::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ReqBody::Length(0)
            if !has_length
                && matches!(
                    *req.method(),
                    Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
                ) => {}
        ReqBody::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa_u64(n, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Reads the response head (skipping interim 1xx answers) and builds the response around a
/// body that reads the rest.
async fn read_response<R: Release>(
    mut conn: Conn,
    head_only: bool,
    home: Arc<R>,
    resend: bool,
) -> Result<Response<ProxyBody>, Failure> {
    let mut answered = false;
    loop {
        if !conn.buf.is_empty() {
            answered = true;
            match parse_head(&mut conn.buf)? {
                Some(head) if head.status.is_informational() => continue,
                Some(head) => return attach_body(conn, head, head_only, home),
                None => {}
            }
        }
        let failed = match poll_fn(|cx| conn.poll_fill(cx)).await {
            Ok(0) if conn.buf.is_empty() => "the backend closed the connection before a response".to_string(),
            Ok(0) => "the backend closed the connection in the middle of the response head".to_string(),
            Ok(_) => continue,
            Err(e) => e.to_string(),
        };
        return Err(if resend && !answered { Failure::Stale(failed) } else { Failure::Exchange(failed) });
    }
}

/// A parsed response head. Its fields are the end-to-end ones only, kept as they arrived
/// ([`Passthrough`]): this client is a proxy's, and what was this hop's (`Connection` and what
/// it names, `Transfer-Encoding`, `Keep-Alive`...) is read here and dropped (RFC 9110 §7.6.1),
/// not handed on for the proxy to take out again.
struct Head {
    status: StatusCode,
    version: Version,
    fields: Passthrough,
    /// `Transfer-Encoding` was present; `true` when its last coding is chunked.
    chunked: Option<bool>,
    /// `Connection: close`.
    closes: bool,
}

/// Parses a complete head off the front of `buf`; `None` when more bytes are needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Failure> {
    let invalid = |why: String| Failure::Exchange(format!("invalid response from the backend: {why}"));
    // Uninitialised slots and spans on the stack: zeroing 100 headers was 3 KB of memset per
    // answer (callgrind, session 8).
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut spans: smallvec::SmallVec<[(usize, usize, usize, usize); 16]> = smallvec::SmallVec::new();
    let mut parsed = httparse::Response::new(&mut []);
    let (len, code, minor) =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => {
                let base = buf.as_ptr() as usize;
                for h in parsed.headers.iter() {
                    let name = h.name.as_ptr() as usize - base;
                    let value = h.value.as_ptr() as usize - base;
                    spans.push((name, name + h.name.len(), value, value + h.value.len()));
                }
                (len, parsed.code.unwrap_or(0), parsed.version.unwrap_or(1))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(invalid(format!("response head larger than {MAX_HEAD} bytes")));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(invalid(e.to_string())),
        };
    let status = StatusCode::from_u16(code).map_err(|_| invalid(format!("status code {code}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(invalid("101 Switching Protocols to a request that asked for no upgrade".into()));
    }
    let head = buf.split_to(len).freeze();
    let (mut chunked, mut closes, mut named) = (None, false, false);
    let mut fields = Passthrough::new(head.clone());
    for &(ns, ne, vs, ve) in &spans {
        let value = &head[vs..ve];
        // httparse checked the bytes: names are tokens, values hold no control characters
        // but tab (what `HeaderName` and `HeaderValue` would check again).
        let length = match Field::of(&head[ns..ne]) {
            Field::TransferEncoding => {
                chunked = Some(http1::ends_chunked(value));
                continue;
            }
            Field::Connection => {
                closes |= http1::has_token(value, "close");
                named |= http1::connection_names(value).next().is_some();
                continue;
            }
            Field::HopByHop => continue,
            Field::ContentLength => true,
            Field::EndToEnd => false,
        };
        fields.push((ns, ne), (vs, ve), length);
    }
    if named {
        let connection = spans.iter().filter(|&&(ns, ne, _, _)| Field::of(&head[ns..ne]) == Field::Connection);
        let listed: Vec<&[u8]> =
            connection.flat_map(|&(_, _, vs, ve)| http1::connection_names(&head[vs..ve])).collect();
        fields.retain(|name| !listed.iter().any(|l| l.eq_ignore_ascii_case(name)));
    }
    let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    Ok(Some(Head { status, version, fields, chunked, closes }))
}

fn attach_body<R: Release>(
    conn: Conn,
    mut head: Head,
    head_only: bool,
    home: Arc<R>,
) -> Result<Response<ProxyBody>, Failure> {
    let framing = response_framing(head.status, &head.fields, head.chunked, head_only)
        .map_err(|why| Failure::Exchange(format!("invalid response from the backend: {why}")))?;
    // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3): a message with both is how
    // response splitting is attempted. The length is dropped before it can reach the caller
    // and the connection is not reused.
    let smuggled = head.chunked.is_some() && head.fields.lengths().next().is_some();
    if smuggled && !head_only {
        head.fields.drop_lengths();
    }
    let keep = matches!(framing, Framing::Length(_) | Framing::Chunked(_))
        && head.version == Version::HTTP_11
        && !smuggled
        && !head.closes;
    let mut body = ResponseBody { conn: Some(conn), framing, home: keep.then_some(home) };
    if body.framing == Framing::Length(0) {
        body.finish();
    }
    // A backend's answer always has room for what goes with it (the bulkhead's slot too).
    let mut resp = Response::new(ProxyBody::carrying(body, Some(head.fields)));
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    Ok(resp)
}

/// RFC 9112 §6.3.
fn response_framing(
    s: StatusCode,
    fields: &Passthrough,
    chunked: Option<bool>,
    head_only: bool,
) -> Result<Framing, String> {
    if head_only || s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    if let Some(chunked) = chunked {
        return Ok(if chunked { Framing::Chunked(Chunk::Size) } else { Framing::Eof });
    }
    let length = http1::content_length(fields.lengths())?;
    Ok(length.map_or(Framing::Eof, Framing::Length))
}

/// A response body read straight from its connection.
struct ResponseBody<R: Release> {
    conn: Option<Conn>,
    framing: Framing,
    /// Where the connection goes at the end; `None` when it must close.
    home: Option<Arc<R>>,
}

impl<R: Release> ResponseBody<R> {
    /// The body ended: the connection goes home if it can carry another exchange.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let (Some(mut conn), Some(home)) = (self.conn.take(), self.home.take()) {
            if conn.buf.is_empty() {
                conn.settle();
                home.release(conn);
            }
        }
    }

    /// Decodes what is buffered.
    fn step(&mut self) -> Result<Step, String> {
        let Some(conn) = self.conn.as_mut() else { return Ok(Step::End) };
        http1::decode(&mut self.framing, &mut conn.buf, MAX_HEAD)
    }
}

impl<R: Release> Body for ResponseBody<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.step() {
                Ok(Step::Frame(frame)) => {
                    if matches!(this.framing, Framing::Length(0) | Framing::Done) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(why) => return Poll::Ready(Some(Err(this.fail(format!("invalid response body: {why}"))))),
            }
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::Eof => {
                    // Read until close: the close is the end. The connection is spent.
                    this.home = None;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return Poll::Ready(Some(Err(this.fail("the backend closed the connection mid-body".into()))));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(this.fail(format!("reading the response body: {e}"))))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done || self.framing == Framing::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl<R: Release> ResponseBody<R> {
    /// Ends the body with an error; the connection is closed.
    fn fail(&mut self, why: String) -> BoxError {
        self.conn = None;
        self.home = None;
        self.framing = Framing::Done;
        io::Error::new(io::ErrorKind::InvalidData, why).into()
    }
}

#[cfg(test)]
mod tests;
