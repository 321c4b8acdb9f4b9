//! HTTP/1.1 message framing shared by both ends of the proxy: the server that reads callers'
//! requests ([`crate::proxy::h1`]) and the client that reads backends' answers
//! (`upstream::h1`, private to the upstream module).
//!
//! Both read a body the same way (RFC 9112 §6 and §7.1): a known length, chunks with optional
//! extensions and trailers, or (answers only) until the peer closes. [`decode`] takes what is
//! buffered and gives the next frame, the end, or "more bytes needed"; the caller owns the
//! socket and the buffer. One decoder for both directions means one place where a framing bug
//! (the root of request smuggling) can hide, and one set of tests.

use bytes::{Buf, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

/// Most header fields accepted in a head or a trailer section (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (size and extensions).
pub const MAX_CHUNK_LINE: usize = 4 << 10;

/// Where a body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the peer closes the connection (answers only).
    Eof,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data are left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Expecting the trailer section after the last chunk.
    Trailers,
}

/// What the buffered bytes gave.
#[derive(Debug)]
pub enum Step {
    Frame(Frame<bytes::Bytes>),
    End,
    /// More bytes are needed.
    More,
}

impl Framing {
    /// No more body to read (the last frame may still be in the caller's hands).
    pub fn is_end(self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }
}

/// Decodes the next frame of a body from `buf`. `max_trailers` caps the trailer section.
pub fn decode(framing: &mut Framing, buf: &mut BytesMut, max_trailers: usize) -> Result<Step, String> {
    loop {
        match framing {
            Framing::Done => return Ok(Step::End),
            Framing::Length(0) => {
                *framing = Framing::Done;
                return Ok(Step::End);
            }
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                return Ok(Step::Frame(Frame::data(buf.split_to(n as usize).freeze())));
            }
            Framing::Eof => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                return Ok(Step::Frame(Frame::data(buf.split().freeze())));
            }
            Framing::Chunked(Chunk::Size) => {
                let Some(eol) = find_crlf(buf) else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err("chunk-size line too long".into())
                    } else {
                        Ok(Step::More)
                    };
                };
                let size = parse_chunk_size(&buf[..eol])?;
                buf.advance(eol + 2);
                *framing = Framing::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
            }
            Framing::Chunked(Chunk::Data(left)) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                if *left == 0 {
                    *framing = Framing::Chunked(Chunk::DataEnd);
                }
                return Ok(Step::Frame(Frame::data(buf.split_to(n as usize).freeze())));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF".into());
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    *framing = Framing::Done;
                    return Ok(Step::End);
                }
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(buf, &mut headers) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut map = HeaderMap::with_capacity(fields.len());
                        for h in fields {
                            if let (Ok(name), Ok(value)) =
                                (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value))
                            {
                                map.append(name, value);
                            }
                        }
                        buf.advance(len);
                        *framing = Framing::Done;
                        return Ok(Step::Frame(Frame::trailers(map)));
                    }
                    Ok(httparse::Status::Partial) if buf.len() > max_trailers => {
                        return Err("trailer section too large".into());
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(e) => return Err(format!("trailer section: {e}")),
                }
            }
        }
    }
}

/// The offset of the first CRLF in `buf`.
pub fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\r') {
        let at = from + i;
        if buf.get(at + 1) == Some(&b'\n') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The hex size at the start of a chunk-size line; extensions after `;` are ignored.
pub fn parse_chunk_size(line: &[u8]) -> Result<u64, String> {
    let end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
    let rest = &line[end..];
    if end == 0 || end > 15 || !(rest.is_empty() || rest[0] == b';' || rest[0] == b' ' || rest[0] == b'\t') {
        return Err(format!("invalid chunk size line {:?}", String::from_utf8_lossy(&line[..line.len().min(32)])));
    }
    let digits = std::str::from_utf8(&line[..end]).map_err(|e| e.to_string())?;
    u64::from_str_radix(digits, 16).map_err(|e| e.to_string())
}

/// The one length every `Content-Length` field (and every item of a list in one) agrees on;
/// `Ok(None)` without any. Values that disagree or are not lengths are an error (RFC 9112 §6.3).
pub fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, String> {
    let mut length = None;
    for v in values {
        let v = std::str::from_utf8(v).map_err(|_| "a Content-Length that is not text".to_string())?;
        for item in v.split(',') {
            let item = item.trim();
            let n = (!item.is_empty() && item.len() <= 19 && item.bytes().all(|b| b.is_ascii_digit()))
                .then(|| item.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| format!("Content-Length {item:?} is not a length"))?;
            if length.is_some_and(|l| l != n) {
                return Err("Content-Length values that disagree".into());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// What a header field is to a proxy (RFC 9110 §7.6.1), told from its name as it came off the
/// wire, before a `HeaderName` is made of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// End to end: forwarded.
    EndToEnd,
    /// `Content-Length`: end to end, but framing reads it.
    ContentLength,
    /// `Transfer-Encoding`: this hop's framing.
    TransferEncoding,
    /// `Connection`: this hop's options, and the names of more hop-by-hop fields.
    Connection,
    /// Another hop-by-hop field (`Keep-Alive`, `TE`, `Trailer`, `Upgrade` and the legacy
    /// proxy ones): dropped at the proxy.
    HopByHop,
}

impl Field {
    pub fn of(name: &[u8]) -> Field {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        match name.len() {
            2 if is("te") => Field::HopByHop,
            7 if is("trailer") || is("upgrade") => Field::HopByHop,
            10 if is("connection") => Field::Connection,
            10 if is("keep-alive") => Field::HopByHop,
            14 if is("content-length") => Field::ContentLength,
            16 if is("proxy-connection") => Field::HopByHop,
            17 if is("transfer-encoding") => Field::TransferEncoding,
            18 if is("proxy-authenticate") => Field::HopByHop,
            19 if is("proxy-authorization") => Field::HopByHop,
            _ => Field::EndToEnd,
        }
    }
}

/// The names a `Connection` value lists besides `close` and `keep-alive` (more hop-by-hop
/// fields to drop).
pub fn connection_names(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
}

/// Removes from `map` the fields that the `Connection` fields among `fields` (name, value as
/// they came off the wire) name: rare, so the parsers note that there are some and call this
/// after their one pass.
pub fn remove_named<'a>(map: &mut http::HeaderMap, fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
    for (_, value) in fields.filter(|(name, _)| Field::of(name) == Field::Connection) {
        for name in connection_names(value) {
            if let Ok(name) = http::header::HeaderName::from_bytes(name) {
                map.remove(name);
            }
        }
    }
}

/// True when a comma-separated header value lists `token` (ASCII case-insensitive).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// True when the last transfer coding of a `Transfer-Encoding` value is `chunked`.
pub fn ends_chunked(value: &[u8]) -> bool {
    value.rsplit(|&b| b == b',').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

pub fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `n`, written into `buf`.
pub fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Lowercase hex digits of `n` (a chunk size), written into `buf`.
pub fn hex_u64(mut n: u64, buf: &mut [u8; 16]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framing: Framing, wire: &[u8], step_by: usize) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), String> {
        let mut f = framing;
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match decode(&mut f, &mut buf, 1 << 10)? {
                Step::Frame(frame) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Step::End => return Ok((data, trailers, buf)),
                Step::More if fed == wire.len() => return Err("cut short".into()),
                Step::More => {
                    let n = step_by.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_the_same_whatever_the_read_sizes() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers, rest) = frames(Framing::Chunked(Chunk::Size), wire, step).expect("decodes");
            assert_eq!(data, b"hello world", "read {step} bytes at a time");
            assert_eq!(trailers.expect("trailers")["x-sum"], "1");
            assert!(b"NEXT".starts_with(&rest), "only the next message is left: {rest:?}");
        }
    }

    #[test]
    fn a_length_ends_exactly_and_leaves_the_next_message() {
        let (data, _, rest) = frames(Framing::Length(5), b"helloGET /", 64).expect("decodes");
        assert_eq!(data, b"hello");
        assert_eq!(&rest[..], b"GET /");
    }

    #[test]
    fn broken_chunks_are_errors() {
        for wire in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"1\r\na\r\n0\r\nbad header\r\n\r\n"] {
            assert!(frames(Framing::Chunked(Chunk::Size), wire, 64).is_err(), "{wire:?}");
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 2];
        assert!(frames(Framing::Chunked(Chunk::Size), &long, 64).is_err(), "an endless size line");
    }

    #[test]
    fn chunk_size_lines() {
        assert_eq!(parse_chunk_size(b"1f"), Ok(31));
        assert_eq!(parse_chunk_size(b"A;ext=\"x\""), Ok(10));
        assert_eq!(parse_chunk_size(b"0"), Ok(0));
        assert!(parse_chunk_size(b"").is_err());
        assert!(parse_chunk_size(b"-1").is_err());
        assert!(parse_chunk_size(b"1x").is_err());
        assert!(parse_chunk_size(b"1000000000000000").is_err(), "more than 15 hex digits");
    }

    #[test]
    fn content_lengths_must_agree_and_be_numbers() {
        let cl = |vals: &[&str]| content_length(vals.iter().map(|v| v.as_bytes()));
        assert_eq!(cl(&[]), Ok(None));
        assert_eq!(cl(&["12"]), Ok(Some(12)));
        assert_eq!(cl(&["12, 12", "12"]), Ok(Some(12)));
        assert!(cl(&["12", "13"]).is_err());
        assert!(cl(&["-1"]).is_err());
        assert!(cl(&["+5"]).is_err());
        assert!(cl(&[""]).is_err());
        assert!(cl(&["99999999999999999999"]).is_err(), "overflows u64");
    }

    #[test]
    fn fields_are_told_apart_by_name_in_any_case() {
        for (name, want) in [
            ("Connection", Field::Connection),
            ("CONTENT-LENGTH", Field::ContentLength),
            ("transfer-encoding", Field::TransferEncoding),
            ("Keep-Alive", Field::HopByHop),
            ("TE", Field::HopByHop),
            ("Trailer", Field::HopByHop),
            ("Upgrade", Field::HopByHop),
            ("Proxy-Connection", Field::HopByHop),
            ("Proxy-Authenticate", Field::HopByHop),
            ("Proxy-Authorization", Field::HopByHop),
            ("Trailers", Field::EndToEnd),
            ("x-te", Field::EndToEnd),
            ("Content-Type", Field::EndToEnd),
            ("Authorization", Field::EndToEnd),
        ] {
            assert_eq!(Field::of(name.as_bytes()), want, "{name}");
        }
        let named: Vec<&[u8]> = connection_names(b"keep-alive, X-Hop ,close,,x-two").collect();
        assert_eq!(named, [&b"X-Hop"[..], b"x-two"]);
    }

    #[test]
    fn tokens_and_codings() {
        assert!(has_token(b"keep-alive, Close", "close"));
        assert!(!has_token(b"closed", "close"));
        assert!(ends_chunked(b"gzip, Chunked"));
        assert!(!ends_chunked(b"chunked, gzip"));
        assert_eq!(itoa_u64(0, &mut [0; 20]), b"0");
        assert_eq!(itoa_u64(u64::MAX, &mut [0; 20]), u64::MAX.to_string().as_bytes());
        assert_eq!(hex_u64(0, &mut [0; 16]), b"0");
        assert_eq!(hex_u64(0xabc, &mut [0; 16]), b"abc");
    }
}
