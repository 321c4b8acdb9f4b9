//! HPACK (RFC 7541), the header compression of HTTP/2, for the h2c server: it decodes the
//! header blocks of callers' requests and encodes the blocks of our answers.
//!
//! - **Decoding is complete**: static and dynamic table, Huffman-coded strings, table size
//!   updates. Input comes from the network, so every length and index is checked before use,
//!   integers are capped, and malformed input is an error, never a panic. Values do not copy
//!   when they need not: a raw literal is a slice of the block, an indexed field a clone of the
//!   table's `Bytes`. What goes into the dynamic table is copied once, so a small entry never
//!   keeps a whole block alive.
//! - **Encoding uses no dynamic table and no Huffman coding**: the encoder keeps no state, so
//!   the peer's SETTINGS_HEADER_TABLE_SIZE never matters, and an answer's head costs one pass
//!   over its fields. Static table names still shorten the common ones.

use std::collections::VecDeque;
use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;

/// A decoded field's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldName {
    /// `:method`
    Method,
    /// `:scheme`
    Scheme,
    /// `:authority`
    Authority,
    /// `:path`
    Path,
    /// `:status`
    Status,
    /// `:protocol` (RFC 8441, extended CONNECT)
    Protocol,
    /// A pseudo-header field HTTP/2 does not define (a malformed request for the caller).
    UnknownPseudo,
    /// A regular field; the name is valid and lowercase (HeaderName::from_lowercase accepted it).
    Header(HeaderName),
    /// A name that is not a valid lowercase field name (uppercase, bad characters, empty): the
    /// caller treats the request as malformed (a stream error), but the block still decodes so
    /// the dynamic table stays in step with the peer's.
    Invalid,
}

/// Why a header block could not be decoded. Each is a connection error (COMPRESSION_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The block ends inside an integer.
    Truncated,
    /// A string literal is longer than what is left of the block.
    StringTooLong,
    /// An integer does not fit in the 28 bits allowed.
    IntegerOverflow,
    /// Index 0, or past the end of the dynamic table.
    BadIndex,
    /// A Huffman-coded string holds EOS, or its padding is longer than 7 bits or not all ones.
    BadHuffman,
    /// A dynamic table size update above the size we advertised.
    TableSizeTooLarge,
    /// A dynamic table size update after the block's first field.
    LateTableSizeUpdate,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::Truncated => "header block ends inside an integer",
            DecodeError::StringTooLong => "string literal runs past the end of the header block",
            DecodeError::IntegerOverflow => "integer too large in header block",
            DecodeError::BadIndex => "header field index out of range",
            DecodeError::BadHuffman => "invalid Huffman-coded string",
            DecodeError::TableSizeTooLarge => "dynamic table size update above the advertised size",
            DecodeError::LateTableSizeUpdate => "dynamic table size update after a header field",
        })
    }
}

impl std::error::Error for DecodeError {}

/// Per-entry overhead in the table size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;
/// First index of the dynamic table.
const DYNAMIC_BASE: usize = STATIC_TABLE.len() + 1;

/// Decodes the header blocks of one connection (each block in order: they share the table).
pub struct Decoder {
    /// Newest first: index 62 is `table[0]`.
    table: VecDeque<Entry>,
    /// Sum of the entries' sizes.
    size: usize,
    /// The limit the peer's encoder chose (a size update), at most `max_allowed`.
    max_size: usize,
    /// What we advertised in SETTINGS_HEADER_TABLE_SIZE.
    max_allowed: usize,
    /// Huffman-coded literal names decode here (only the `HeaderName` is kept).
    scratch: Vec<u8>,
}

struct Entry {
    name: FieldName,
    value: Bytes,
    /// Name and value length plus the overhead; kept because an `Invalid` name has no length.
    size: usize,
}

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE we advertised (4096 by default); a
    /// dynamic table size update above it is an error.
    pub fn new(max_table_size: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: max_table_size,
            max_allowed: max_table_size,
            scratch: Vec::new(),
        }
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION payloads concatenated),
    /// calling `each(&name, value)` for every field in order. Values are `Bytes`: a slice of
    /// `block` (Bytes::slice, no copy) for raw literals, a fresh buffer for Huffman-coded ones,
    /// a clone of the table's Bytes for indexed ones (and for a literal that enters the table: its
    /// copy). Any error is a connection error (COMPRESSION_ERROR) for the caller; the decoder
    /// need not be usable afterwards.
    pub fn decode(&mut self, block: &Bytes, mut each: impl FnMut(&FieldName, Bytes)) -> Result<(), DecodeError> {
        let mut r = Reader { buf: block, pos: 0 };
        // §4.2: size updates come first in a block, before any field.
        let mut first_field = true;
        while let Some(&b) = r.buf.get(r.pos) {
            if b & 0x80 != 0 {
                // §6.1 indexed field.
                let index = r.int(7)?;
                let (name, value) = self.field_at(index)?;
                each(name, value);
            } else if b & 0x40 != 0 {
                // §6.2.1 literal with incremental indexing.
                let index = r.int(6)?;
                let (name, name_len) = if index == 0 {
                    literal_name(&mut r, &mut self.scratch)?
                } else {
                    let (name, len) = self.name_at(index)?;
                    // Cloned before the insert below, which may evict the entry it names.
                    (name.clone(), len)
                };
                let value = r.string()?.to_owned_bytes()?;
                each(&name, value.clone());
                self.insert(name, name_len, value);
            } else if b & 0x20 != 0 {
                // §6.3 dynamic table size update.
                if !first_field {
                    return Err(DecodeError::LateTableSizeUpdate);
                }
                let size = r.int(5)?;
                if size > self.max_allowed {
                    return Err(DecodeError::TableSizeTooLarge);
                }
                self.max_size = size;
                self.evict_to(size);
                continue;
            } else {
                // §6.2.2 without indexing and §6.2.3 never indexed (0x10): the same to a
                // decoder that forwards nothing itself.
                let index = r.int(4)?;
                if index == 0 {
                    let (name, _) = literal_name(&mut r, &mut self.scratch)?;
                    let value = r.string()?.to_bytes(block)?;
                    each(&name, value);
                } else {
                    let (name, _) = self.name_at(index)?;
                    let value = r.string()?.to_bytes(block)?;
                    each(name, value);
                }
            }
            first_field = false;
        }
        Ok(())
    }

    /// The name at a table index, with its length (for the size of a new entry).
    fn name_at(&self, index: usize) -> Result<(&FieldName, usize), DecodeError> {
        if index < DYNAMIC_BASE {
            let (name, text, _) =
                index.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)).ok_or(DecodeError::BadIndex)?;
            Ok((name, text.len()))
        } else {
            let entry = self.table.get(index - DYNAMIC_BASE).ok_or(DecodeError::BadIndex)?;
            Ok((&entry.name, entry.size - ENTRY_OVERHEAD - entry.value.len()))
        }
    }

    fn field_at(&self, index: usize) -> Result<(&FieldName, Bytes), DecodeError> {
        if index < DYNAMIC_BASE {
            let (name, _, value) =
                index.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)).ok_or(DecodeError::BadIndex)?;
            Ok((name, Bytes::from_static(value)))
        } else {
            let entry = self.table.get(index - DYNAMIC_BASE).ok_or(DecodeError::BadIndex)?;
            Ok((&entry.name, entry.value.clone()))
        }
    }

    /// §4.4: adds an entry, evicting the oldest ones to make room; one larger than the table
    /// leaves it empty.
    fn insert(&mut self, name: FieldName, name_len: usize, value: Bytes) {
        // No overflow: both lengths are at most the block's.
        let size = name_len + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.evict_to(0);
            return;
        }
        self.evict_to(self.max_size - size);
        self.size += size;
        self.table.push_front(Entry { name, value, size });
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            match self.table.pop_back() {
                Some(entry) => self.size -= entry.size,
                None => self.size = 0,
            }
        }
    }
}

/// A position in the block being decoded.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

/// A string literal's bytes, as sent.
struct Literal<'a> {
    bytes: &'a [u8],
    start: usize,
    huffman: bool,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// §5.1: an integer with an N-bit prefix (the current byte's flags are the other bits).
    /// At most four continuation bytes: values up to 2^28 and a bit, far above any length or
    /// index a sane block holds, and no overflow even with a 32-bit `usize`.
    fn int(&mut self, prefix_bits: u32) -> Result<usize, DecodeError> {
        let max_prefix = (1u8 << prefix_bits) - 1;
        let prefix = self.byte()? & max_prefix;
        if prefix < max_prefix {
            return Ok(usize::from(prefix));
        }
        let mut value = usize::from(max_prefix);
        for shift in [0, 7, 14, 21] {
            let b = self.byte()?;
            value += usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::IntegerOverflow)
    }

    /// §5.2: a string literal's header and bytes.
    fn string(&mut self) -> Result<Literal<'a>, DecodeError> {
        let buf: &'a [u8] = self.buf;
        let huffman = buf.get(self.pos).is_some_and(|b| b & 0x80 != 0);
        let len = self.int(7)?;
        let start = self.pos;
        let bytes = start.checked_add(len).and_then(|end| buf.get(start..end)).ok_or(DecodeError::StringTooLong)?;
        self.pos += len;
        Ok(Literal { bytes, start, huffman })
    }
}

impl Literal<'_> {
    /// The value as a slice of `block` when raw (no copy).
    fn to_bytes(&self, block: &Bytes) -> Result<Bytes, DecodeError> {
        if self.huffman {
            self.decode_huffman()
        } else {
            Ok(block.slice(self.start..self.start + self.bytes.len()))
        }
    }

    /// The value in a buffer of its own (for the dynamic table).
    fn to_owned_bytes(&self) -> Result<Bytes, DecodeError> {
        if self.huffman {
            self.decode_huffman()
        } else {
            Ok(Bytes::copy_from_slice(self.bytes))
        }
    }

    fn decode_huffman(&self) -> Result<Bytes, DecodeError> {
        let mut out = Vec::with_capacity(huffman::max_decoded_len(self.bytes.len()));
        huffman::decode(self.bytes, &mut out)?;
        Ok(Bytes::from(out))
    }
}

/// Reads a literal name (§6.2 with index 0), with its length as sent (decoded).
fn literal_name(r: &mut Reader<'_>, scratch: &mut Vec<u8>) -> Result<(FieldName, usize), DecodeError> {
    let lit = r.string()?;
    if lit.huffman {
        scratch.clear();
        huffman::decode(lit.bytes, scratch)?;
        Ok((field_name(scratch), scratch.len()))
    } else {
        Ok((field_name(lit.bytes), lit.bytes.len()))
    }
}

fn field_name(name: &[u8]) -> FieldName {
    match name {
        b":method" => FieldName::Method,
        b":scheme" => FieldName::Scheme,
        b":authority" => FieldName::Authority,
        b":path" => FieldName::Path,
        b":status" => FieldName::Status,
        b":protocol" => FieldName::Protocol,
        [b':', ..] => FieldName::UnknownPseudo,
        _ => HeaderName::from_lowercase(name).map_or(FieldName::Invalid, FieldName::Header),
    }
}

/// Appendix A: name, name as sent (for entry sizes), value.
static STATIC_TABLE: [(FieldName, &str, &[u8]); 61] = [
    (FieldName::Authority, ":authority", b""),
    (FieldName::Method, ":method", b"GET"),
    (FieldName::Method, ":method", b"POST"),
    (FieldName::Path, ":path", b"/"),
    (FieldName::Path, ":path", b"/index.html"),
    (FieldName::Scheme, ":scheme", b"http"),
    (FieldName::Scheme, ":scheme", b"https"),
    (FieldName::Status, ":status", b"200"),
    (FieldName::Status, ":status", b"204"),
    (FieldName::Status, ":status", b"206"),
    (FieldName::Status, ":status", b"304"),
    (FieldName::Status, ":status", b"400"),
    (FieldName::Status, ":status", b"404"),
    (FieldName::Status, ":status", b"500"),
    (FieldName::Header(header::ACCEPT_CHARSET), "accept-charset", b""),
    (FieldName::Header(header::ACCEPT_ENCODING), "accept-encoding", b"gzip, deflate"),
    (FieldName::Header(header::ACCEPT_LANGUAGE), "accept-language", b""),
    (FieldName::Header(header::ACCEPT_RANGES), "accept-ranges", b""),
    (FieldName::Header(header::ACCEPT), "accept", b""),
    (FieldName::Header(header::ACCESS_CONTROL_ALLOW_ORIGIN), "access-control-allow-origin", b""),
    (FieldName::Header(header::AGE), "age", b""),
    (FieldName::Header(header::ALLOW), "allow", b""),
    (FieldName::Header(header::AUTHORIZATION), "authorization", b""),
    (FieldName::Header(header::CACHE_CONTROL), "cache-control", b""),
    (FieldName::Header(header::CONTENT_DISPOSITION), "content-disposition", b""),
    (FieldName::Header(header::CONTENT_ENCODING), "content-encoding", b""),
    (FieldName::Header(header::CONTENT_LANGUAGE), "content-language", b""),
    (FieldName::Header(header::CONTENT_LENGTH), "content-length", b""),
    (FieldName::Header(header::CONTENT_LOCATION), "content-location", b""),
    (FieldName::Header(header::CONTENT_RANGE), "content-range", b""),
    (FieldName::Header(header::CONTENT_TYPE), "content-type", b""),
    (FieldName::Header(header::COOKIE), "cookie", b""),
    (FieldName::Header(header::DATE), "date", b""),
    (FieldName::Header(header::ETAG), "etag", b""),
    (FieldName::Header(header::EXPECT), "expect", b""),
    (FieldName::Header(header::EXPIRES), "expires", b""),
    (FieldName::Header(header::FROM), "from", b""),
    (FieldName::Header(header::HOST), "host", b""),
    (FieldName::Header(header::IF_MATCH), "if-match", b""),
    (FieldName::Header(header::IF_MODIFIED_SINCE), "if-modified-since", b""),
    (FieldName::Header(header::IF_NONE_MATCH), "if-none-match", b""),
    (FieldName::Header(header::IF_RANGE), "if-range", b""),
    (FieldName::Header(header::IF_UNMODIFIED_SINCE), "if-unmodified-since", b""),
    (FieldName::Header(header::LAST_MODIFIED), "last-modified", b""),
    (FieldName::Header(header::LINK), "link", b""),
    (FieldName::Header(header::LOCATION), "location", b""),
    (FieldName::Header(header::MAX_FORWARDS), "max-forwards", b""),
    (FieldName::Header(header::PROXY_AUTHENTICATE), "proxy-authenticate", b""),
    (FieldName::Header(header::PROXY_AUTHORIZATION), "proxy-authorization", b""),
    (FieldName::Header(header::RANGE), "range", b""),
    (FieldName::Header(header::REFERER), "referer", b""),
    (FieldName::Header(header::REFRESH), "refresh", b""),
    (FieldName::Header(header::RETRY_AFTER), "retry-after", b""),
    (FieldName::Header(header::SERVER), "server", b""),
    (FieldName::Header(header::SET_COOKIE), "set-cookie", b""),
    (FieldName::Header(header::STRICT_TRANSPORT_SECURITY), "strict-transport-security", b""),
    (FieldName::Header(header::TRANSFER_ENCODING), "transfer-encoding", b""),
    (FieldName::Header(header::USER_AGENT), "user-agent", b""),
    (FieldName::Header(header::VARY), "vary", b""),
    (FieldName::Header(header::VIA), "via", b""),
    (FieldName::Header(header::WWW_AUTHENTICATE), "www-authenticate", b""),
];

/// Appends a response header block: `:status`, then every field of `headers` in the map's
/// iteration order. No dynamic table is used (so the peer's SETTINGS_HEADER_TABLE_SIZE never
/// matters): `:status` 200/204/206/304/400/404/500 as the static table's indexed field, any
/// other status as a literal with the static name index 8; each field as a "literal without
/// indexing" (or "never indexed" when `HeaderValue::is_sensitive()`), with the static table's
/// name index when the name is in it (first match), else a literal name; no Huffman coding.
pub fn encode_response(status: StatusCode, headers: &HeaderMap, out: &mut Vec<u8>) {
    encode_status(status, out);
    encode_trailers(headers, out);
}

/// Appends `:status` alone: the static table's indexed field for 200, 204, 206, 304, 400,
/// 404 and 500, else a literal with the static name index 8.
pub fn encode_status(status: StatusCode, out: &mut Vec<u8>) {
    let indexed = match status.as_u16() {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if indexed != 0 {
        out.push(0x80 | indexed);
    } else {
        // 0x08: literal without indexing, name index 8 (`:status`).
        out.push(0x08);
        put_string(out, status.as_str().as_bytes());
    }
}

/// Appends one field given as bytes, its name in any case (a backend's field passed through
/// as it came): a literal name, lowercased as HTTP/2 requires (RFC 9113 §8.2.1). The caller
/// has checked both (httparse: the name a token, the value without control characters).
pub fn encode_raw(name: &[u8], value: &[u8], sensitive: bool, out: &mut Vec<u8>) {
    out.push(if sensitive { 0x10 } else { 0x00 });
    put_int(out, 0x00, 7, name.len());
    let at = out.len();
    // Copied, then lowercased in place (a byte-at-a-time map was three times the cost).
    out.extend_from_slice(name);
    out[at..].make_ascii_lowercase();
    put_string(out, value);
}

pub fn encode_trailers(headers: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in headers {
        // §6.2.3 never indexed (0x10) tells intermediaries not to compress it either.
        let flags = if value.is_sensitive() { 0x10 } else { 0x00 };
        match static_name_index(name) {
            Some(index) => put_int(out, flags, 4, index),
            None => {
                out.push(flags);
                put_string(out, name.as_str().as_bytes());
            }
        }
        put_string(out, value.as_bytes());
    }
}

/// §5.1, with the flags in the first byte's bits above the prefix.
fn put_int(out: &mut Vec<u8>, flags: u8, prefix_bits: u32, value: usize) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// §5.2, raw (no Huffman coding).
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// The static table's first index with this name.
fn static_name_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept-ranges" => 18,
        "accept" => 19,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "authorization" => 23,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "cookie" => 32,
        "date" => 33,
        "etag" => 34,
        "expect" => 35,
        "expires" => 36,
        "from" => 37,
        "host" => 38,
        "if-match" => 39,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "if-range" => 42,
        "if-unmodified-since" => 43,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "max-forwards" => 47,
        "proxy-authenticate" => 48,
        "proxy-authorization" => 49,
        "range" => 50,
        "referer" => 51,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "transfer-encoding" => 57,
        "user-agent" => 58,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => return None,
    })
}

/// The Huffman code of Appendix B, decoded four bits at a time: a state machine whose states
/// are the code tree's 256 inner nodes, built once from the code table.
mod huffman {
    use super::{DecodeError, OnceLock};

    /// Appendix B: each symbol's code (right-aligned) and its length in bits; symbol 256 is EOS.
    pub(super) const CODES: [u32; 257] = [
        0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8, 0xffffea,
        0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0,
        0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9,
        0xffffffa, 0xffffffb, 0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa,
        0x16, 0x17, 0x18, 0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
        0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b,
        0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3,
        0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9,
        0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7,
        0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde,
        0xffffeb, 0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3, 0x7fffe4,
        0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb,
        0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb,
        0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2,
        0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
        0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1,
        0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2, 0x1fffe4,
        0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed,
        0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3, 0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5,
        0x3ffffea, 0x7ffff4, 0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
        0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee, 0x3fffffff,
    ];
    pub(super) const LENS: [u8; 257] = [
        13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28,
        28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15,
        6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
        15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22,
        20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23,
        23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22,
        22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26,
        27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27,
        26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
    ];

    const EOS: u16 = 256;
    /// The step emits `sym`.
    const EMIT: u8 = 1;
    /// The step's bits complete EOS: an error.
    const FAIL: u8 = 2;
    /// The string may end after this step: every bit since the last symbol is a one, at most 7.
    const ACCEPT: u8 = 4;

    #[derive(Clone, Copy, Default)]
    struct Step {
        next: u8,
        sym: u8,
        flags: u8,
    }

    /// Transitions: `[state][next four bits]`. A nibble emits at most one symbol, as no code
    /// is shorter than five bits.
    type Table = [[Step; 16]; 256];

    /// Most bytes `len` coded bytes decode to (the shortest code is five bits).
    pub(super) fn max_decoded_len(len: usize) -> usize {
        len * 8 / 5
    }

    pub(super) fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let table = table();
        let mut state = 0;
        let mut accept = true;
        for &b in src {
            for nibble in [b >> 4, b & 0x0f] {
                let step = table[usize::from(state)][usize::from(nibble)];
                if step.flags & FAIL != 0 {
                    return Err(DecodeError::BadHuffman);
                }
                if step.flags & EMIT != 0 {
                    out.push(step.sym);
                }
                state = step.next;
                accept = step.flags & ACCEPT != 0;
            }
        }
        if accept {
            Ok(())
        } else {
            Err(DecodeError::BadHuffman)
        }
    }

    fn table() -> &'static Table {
        static TABLE: OnceLock<Box<Table>> = OnceLock::new();
        TABLE.get_or_init(build)
    }

    /// Builds the code tree from [`CODES`], then walks every (inner node, nibble) pair.
    fn build() -> Box<Table> {
        // children[node][bit]: an inner node's index, or LEAF | symbol. 0 means unset, as the
        // root (node 0) is nobody's child.
        const LEAF: u16 = 0x8000;
        let mut children: Vec<[u16; 2]> = vec![[0, 0]];
        for (sym, (&code, &len)) in CODES.iter().zip(LENS.iter()).enumerate() {
            let mut node = 0;
            for i in (0..len).rev() {
                let bit = ((code >> i) & 1) as usize;
                if i == 0 {
                    children[node][bit] = LEAF | sym as u16;
                } else {
                    if children[node][bit] == 0 {
                        children.push([0, 0]);
                        children[node][bit] = (children.len() - 1) as u16;
                    }
                    node = usize::from(children[node][bit]);
                }
            }
        }
        // Valid padding: the root, and the first seven nodes down the all-ones path.
        let mut accepting = [false; 256];
        let mut node = 0;
        accepting[0] = true;
        for _ in 0..7 {
            node = usize::from(children[node][1]);
            accepting[node] = true;
        }
        let mut table = Box::new([[Step::default(); 16]; 256]);
        for (state, steps) in table.iter_mut().enumerate() {
            for (nibble, step) in steps.iter_mut().enumerate() {
                let mut node = state;
                for i in (0..4).rev() {
                    let child = children[node][(nibble >> i) & 1];
                    if child & LEAF == 0 {
                        node = usize::from(child);
                    } else if child & !LEAF == EOS {
                        step.flags = FAIL;
                        break;
                    } else {
                        step.sym = (child & !LEAF) as u8;
                        step.flags |= EMIT;
                        node = 0;
                    }
                }
                step.next = node as u8;
                if accepting[node] {
                    step.flags |= ACCEPT;
                }
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex")).collect()
    }

    /// Names as text, for comparisons.
    fn name_str(name: &FieldName) -> String {
        match name {
            FieldName::Method => ":method".into(),
            FieldName::Scheme => ":scheme".into(),
            FieldName::Authority => ":authority".into(),
            FieldName::Path => ":path".into(),
            FieldName::Status => ":status".into(),
            FieldName::Protocol => ":protocol".into(),
            FieldName::UnknownPseudo => ":?".into(),
            FieldName::Header(h) => h.as_str().into(),
            FieldName::Invalid => "!invalid".into(),
        }
    }

    fn decode(d: &mut Decoder, block: &Bytes) -> Result<Vec<(String, String)>, DecodeError> {
        let mut fields = Vec::new();
        d.decode(block, |n, v| fields.push((name_str(n), String::from_utf8_lossy(&v).into_owned())))?;
        Ok(fields)
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn table(d: &Decoder) -> Vec<(String, String)> {
        d.table.iter().map(|e| (name_str(&e.name), String::from_utf8_lossy(&e.value).into_owned())).collect()
    }

    fn check_table(d: &Decoder, expected: &[(&str, &str)], size: usize) {
        assert_eq!(table(d), fields(expected));
        assert_eq!(d.size, size);
        assert_eq!(d.table.iter().map(|e| e.size).sum::<usize>(), size);
    }

    /// RFC 7541 C.3 (raw) or C.4 (Huffman): three requests on one connection.
    fn rfc_requests(blocks: [&str; 3]) {
        let mut d = Decoder::new(4096);
        let first = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
        assert_eq!(decode(&mut d, &hex(blocks[0])), Ok(fields(&first)));
        check_table(&d, &[(":authority", "www.example.com")], 57);

        let mut second = first.to_vec();
        second.push(("cache-control", "no-cache"));
        assert_eq!(decode(&mut d, &hex(blocks[1])), Ok(fields(&second)));
        check_table(&d, &[("cache-control", "no-cache"), (":authority", "www.example.com")], 110);

        let third = [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ];
        assert_eq!(decode(&mut d, &hex(blocks[2])), Ok(fields(&third)));
        check_table(
            &d,
            &[("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")],
            164,
        );
    }

    #[test]
    fn rfc7541_c3_requests_without_huffman() {
        rfc_requests([
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ]);
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        rfc_requests([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    /// Blocks from the Python `hpack` package (4.0.0), an independent encoder: Huffman coding,
    /// incremental indexing, then a size update to 256 that evicts most of the table.
    #[test]
    fn decodes_python_hpack_blocks() {
        let get = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/api/v1/items?id=42"),
            (":authority", "svc.internal:8080"),
            ("user-agent", "lifeline-test/1.0"),
            ("accept", "application/json"),
            ("x-trace-id", "abc123"),
        ];
        let post = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/api/v1/items"),
            (":authority", "svc.internal:8080"),
            ("user-agent", "lifeline-test/1.0"),
            ("content-type", "application/json"),
            ("x-trace-id", "def456"),
        ];
        let mut d = Decoder::new(4096);
        let block1 =
            hex("8286448e6075998ee160c92d28ff0d240d0b418c47722e6a925b2a1d171e03c07a8ca0d29683545592542580ae0f\
                          538b1d75d0620d263d4c7441ea4087f2b26c190ab1a4841c640899");
        assert_eq!(decode(&mut d, &block1), Ok(fields(&get)));
        assert_eq!((d.table.len(), d.size), (5, 276));
        let block2 = hex("838644896075998ee160c92d28c2c15f8b1d75d0620d263d4c7441ea7f018590b2b4db9f");
        assert_eq!(decode(&mut d, &block2), Ok(fields(&post)));
        assert_eq!((d.table.len(), d.size), (8, 434));
        let block3 =
            hex("3fe101 8286448e6075998ee160c92d28ff0d240d0b418c47722e6a925b2a1d171e03c07a8ca0d29683545592542580\
                          ae0f538b1d75d0620d263d4c7441ea4087f2b26c190ab1a4841c640899");
        assert_eq!(decode(&mut d, &block3), Ok(fields(&get)));
        assert_eq!((d.max_size, d.table.len(), d.size), (256, 4, 220));
        check_table(
            &d,
            &[
                ("x-trace-id", "abc123"),
                ("accept", "application/json"),
                ("user-agent", "lifeline-test/1.0"),
                (":authority", "svc.internal:8080"),
            ],
            220,
        );
    }

    fn huffman_encode(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &b in data {
            let len = u32::from(huffman::LENS[usize::from(b)]);
            acc = (acc << len) | u64::from(huffman::CODES[usize::from(b)]);
            bits += len;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            // Pad with the most significant bits of EOS (all ones).
            out.push(((acc << (8 - bits)) | (0xff >> bits)) as u8);
        }
        out
    }

    fn huffman_decode(coded: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        huffman::decode(coded, &mut out).map(|()| out)
    }

    #[test]
    fn huffman_decodes_every_symbol() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)), Ok(all.clone()));
        for b in all {
            let coded = huffman_encode(&[b]);
            assert_eq!(huffman_decode(&coded), Ok(vec![b]), "symbol {b}");
        }
        assert_eq!(huffman_decode(b""), Ok(vec![]));
        // '0' has a five-bit code, the shortest.
        for n in 0..50 {
            assert!(huffman::max_decoded_len(huffman_encode(&vec![b'0'; n]).len()) >= n);
        }
    }

    #[test]
    fn huffman_code_is_complete() {
        // Kraft's sum is exactly 1: a full tree of 257 leaves has 256 inner nodes, the states.
        let kraft: u64 = huffman::LENS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(kraft, 1 << 30);
    }

    #[test]
    fn huffman_rejects_bad_padding_and_eos() {
        // 'a' is 00011: padded with ones it is 0x1f.
        assert_eq!(huffman_decode(&[0x1f]), Ok(b"a".to_vec()));
        // Padding not all ones.
        assert_eq!(huffman_decode(&[0x18]), Err(DecodeError::BadHuffman));
        assert_eq!(huffman_decode(&[0x1e]), Err(DecodeError::BadHuffman));
        // Padding of 11 bits (longer than 7), and a whole byte of padding alone.
        assert_eq!(huffman_decode(&[0x1f, 0xff]), Err(DecodeError::BadHuffman));
        assert_eq!(huffman_decode(&[0xff]), Err(DecodeError::BadHuffman));
        // EOS (30 ones) inside the string.
        assert_eq!(huffman_decode(&[0xff, 0xff, 0xff, 0xff]), Err(DecodeError::BadHuffman));
        let mut eos_then_a = vec![0xff, 0xff, 0xff, 0xfc];
        eos_then_a.extend(huffman_encode(b"a"));
        assert_eq!(huffman_decode(&eos_then_a), Err(DecodeError::BadHuffman));
    }

    #[test]
    fn static_table_is_consistent() {
        for (i, (name, text, _)) in STATIC_TABLE.iter().enumerate() {
            assert_eq!(&field_name(text.as_bytes()), name, "{text}");
            if let FieldName::Header(h) = name {
                let first = STATIC_TABLE.iter().position(|(n, _, _)| n == name).map(|p| p + 1);
                assert_eq!(static_name_index(h), first, "{text}");
                assert!(first <= Some(i + 1));
            }
        }
        assert_eq!(static_name_index(&HeaderName::from_static("x-custom")), None);
    }

    #[test]
    fn literal_names() {
        let mut d = Decoder::new(4096);
        // Without indexing, literal names: ":protocol", ":foo", "Upper", "" and "a b".
        let mut block = Vec::new();
        for name in [&b":protocol"[..], b":foo", b"Upper", b"", b"a b", b"x-ok"] {
            block.push(0x00);
            put_string(&mut block, name);
            put_string(&mut block, b"v");
        }
        let got = decode(&mut d, &Bytes::from(block)).expect("decodes");
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [":protocol", ":?", "!invalid", "!invalid", "!invalid", "x-ok"]);
    }

    #[test]
    fn invalid_names_keep_the_table_in_step() {
        let mut d = Decoder::new(4096);
        // Incremental indexing with the name "Bad" (invalid), then indexed 62.
        let mut block = vec![0x40];
        put_string(&mut block, b"Bad");
        put_string(&mut block, b"value");
        block.push(0x80 | 62);
        let got = decode(&mut d, &Bytes::from(block)).expect("decodes");
        assert_eq!(got, fields(&[("!invalid", "value"), ("!invalid", "value")]));
        assert_eq!(d.size, 3 + 5 + 32);
    }

    #[test]
    fn entry_larger_than_the_table_empties_it() {
        let mut d = Decoder::new(64);
        let mut block = vec![0x40];
        put_string(&mut block, b"a");
        put_string(&mut block, b"b");
        block.push(0x40);
        put_string(&mut block, b"c");
        put_string(&mut block, &[b'x'; 40]);
        decode(&mut d, &Bytes::from(block)).expect("decodes");
        check_table(&d, &[], 0);
        // Evicts the oldest to make room.
        let mut block = Vec::new();
        for name in [b"a", b"b", b"c"] {
            block.push(0x40);
            put_string(&mut block, name);
            put_string(&mut block, b"");
        }
        decode(&mut d, &Bytes::from(block)).expect("decodes");
        check_table(&d, &[("c", "")], 33);
    }

    #[test]
    fn raw_values_share_the_block_and_table_values_do_not() {
        let mut d = Decoder::new(4096);
        let mut block = vec![0x0f, 0x28 - 15]; // without indexing, name index 40
        put_string(&mut block, b"yesterday");
        block.push(0x40);
        put_string(&mut block, b"x-a");
        put_string(&mut block, b"kept");
        let block = Bytes::from(block);
        let range = block.as_ptr_range();
        let mut values = Vec::new();
        d.decode(&block, |_, v| values.push(v)).expect("decodes");
        assert!(range.contains(&values[0].as_ptr()));
        assert!(!range.contains(&values[1].as_ptr()));
        assert!(!range.contains(&d.table[0].value.as_ptr()));
    }

    #[test]
    fn errors() {
        let cases: &[(&str, DecodeError)] = &[
            ("80", DecodeError::BadIndex), // index 0
            ("be", DecodeError::BadIndex), // 62, empty dynamic table
            ("ff80ffffffff", DecodeError::IntegerOverflow),
            ("ff", DecodeError::Truncated),         // integer prefix full, no continuation
            ("ff80", DecodeError::Truncated),       // continuation bit, then nothing
            ("40", DecodeError::Truncated),         // literal, no name length
            ("4003616263", DecodeError::Truncated), // name, no value
            ("400561626364", DecodeError::StringTooLong),
            ("0f2805616263", DecodeError::StringTooLong),
            ("0f28ff7f", DecodeError::StringTooLong),
            ("3fe21f", DecodeError::TableSizeTooLarge), // 4097
            ("823f00", DecodeError::LateTableSizeUpdate),
            ("00038081", DecodeError::StringTooLong),
            ("0083ffffff0161", DecodeError::BadHuffman), // a Huffman name of 24 ones
        ];
        for (block, err) in cases {
            assert_eq!(decode(&mut Decoder::new(4096), &hex(block)).map(|_| ()), Err(*err), "{block}");
        }
        // Past the end of a non-empty dynamic table.
        let mut d = Decoder::new(4096);
        assert_eq!(decode(&mut d, &hex("400161016282bebf")), Err(DecodeError::BadIndex));
        // Two size updates at the start are fine (§4.2); zero empties the table.
        let mut d = Decoder::new(4096);
        decode(&mut d, &hex("4001610162")).expect("decodes");
        assert_eq!(decode(&mut d, &hex("203f e11f 82")), Ok(fields(&[(":method", "GET")])));
        check_table(&d, &[], 0);
        assert_eq!(d.max_size, 4096);
        assert_eq!(decode(&mut Decoder::new(100), &hex("3f46")), Err(DecodeError::TableSizeTooLarge));
        assert_eq!(decode(&mut Decoder::new(100), &hex("3f45")), Ok(vec![]));
    }

    fn header_map(list: &[(&str, &str, bool)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(name, value, sensitive) in list {
            let mut value = HeaderValue::from_str(value).expect("test value");
            value.set_sensitive(sensitive);
            map.append(HeaderName::from_bytes(name.as_bytes()).expect("test name"), value);
        }
        map
    }

    fn round_trip(status: StatusCode, map: &HeaderMap) -> Vec<(String, String)> {
        let mut out = Vec::new();
        encode_response(status, map, &mut out);
        let mut d = Decoder::new(4096);
        let got = decode(&mut d, &Bytes::from(out)).expect("decodes");
        assert!(d.table.is_empty());
        got
    }

    fn expected(status: StatusCode, map: &HeaderMap) -> Vec<(String, String)> {
        let mut list = vec![(":status".to_string(), status.as_str().to_string())];
        list.extend(map.iter().map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())));
        list
    }

    #[test]
    fn responses_round_trip() {
        let long = "x".repeat(300);
        let map = header_map(&[
            ("content-type", "application/json", false),
            ("set-cookie", "a=1", false),
            ("set-cookie", "b=2", false),
            ("authorization", "secret", true),
            ("x-long", &long, false),
            ("www-authenticate", "Basic", false),
            ("x-empty", "", false),
        ]);
        for code in [200, 201, 204, 206, 304, 400, 404, 500, 503, 999] {
            let status = StatusCode::from_u16(code).expect("status");
            assert_eq!(round_trip(status, &map), expected(status, &map));
        }
        let mut out = Vec::new();
        encode_response(StatusCode::OK, &HeaderMap::new(), &mut out);
        assert_eq!(out, [0x88]);
        out.clear();
        encode_response(StatusCode::from_u16(503).expect("status"), &HeaderMap::new(), &mut out);
        assert_eq!(out, b"\x08\x03503");
        out.clear();
        // Never indexed with name index 23 (authorization): 0x1f, 23 - 15.
        encode_trailers(&header_map(&[("authorization", "s", true), ("x-a", "b", false)]), &mut out);
        assert_eq!(out, b"\x1f\x08\x01s\x00\x03x-a\x01b");
    }

    /// The Python `hpack` package decodes these bytes to the same fields, `authorization` as
    /// never indexed.
    #[test]
    fn encoding_is_what_python_hpack_accepts() {
        let long = "y".repeat(200);
        let map = header_map(&[
            ("content-type", "text/plain", false),
            ("authorization", "secret", true),
            ("x-long", &long, false),
            ("set-cookie", "a=1", false),
            ("set-cookie", "b=2", false),
        ]);
        let mut out = Vec::new();
        encode_response(StatusCode::SERVICE_UNAVAILABLE, &map, &mut out);
        let mut want = hex("0803353033 0f100a746578742f706c61696e 1f0806736563726574 0006782d6c6f6e67 7f49").to_vec();
        want.extend_from_slice(long.as_bytes());
        want.extend_from_slice(&hex("0f2803613d31 0f2803623d32"));
        assert_eq!(out, want);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = Decoder::new(4096);
            let block = Bytes::from(bytes);
            let _ = d.decode(&block, |_, _| {});
            // A block that failed half-way leaves a consistent table behind anyway.
            prop_assert_eq!(d.table.iter().map(|e| e.size).sum::<usize>(), d.size);
            prop_assert!(d.size <= d.max_size && d.max_size <= 4096);
        }

        #[test]
        fn mutated_blocks_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut d = Decoder::new(4096);
            let mut block = hex("8286448e6075998ee160c92d28ff0d240d0b418c47722e6a925b2a1d171e03c07a8ca0d2968354559254\
                                 2580ae0f538b1d75d0620d263d4c7441ea4087f2b26c190ab1a4841c640899").to_vec();
            for (at, b) in edits {
                let len = block.len();
                block[at % len] = b;
            }
            block.truncate(cut % (block.len() + 1));
            let _ = d.decode(&Bytes::from(block), |_, _| {});
            prop_assert_eq!(d.table.iter().map(|e| e.size).sum::<usize>(), d.size);
        }

        #[test]
        fn random_responses_round_trip(
            code in 100u16..1000,
            list in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("content-type".to_string()),
                        Just("set-cookie".to_string()),
                        Just("age".to_string()),
                        "[a-e][a-e0-9-]{0,6}",
                    ],
                    "[!-~]([ !-~]{0,150}[!-~])?",
                    any::<bool>(),
                ),
                0..20,
            ),
        ) {
            let status = StatusCode::from_u16(code).expect("100..1000 is a status");
            let list: Vec<(&str, &str, bool)> = list.iter().map(|(n, v, s)| (n.as_str(), v.as_str(), *s)).collect();
            let map = header_map(&list);
            prop_assert_eq!(round_trip(status, &map), expected(status, &map));
        }
    }
}
