//! Header rewriting at the proxy boundary: hop-by-hop removal, forwarding headers, request ids.

use std::io::Write as _;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_LIFELINE_ERROR: HeaderName = HeaderName::from_static("x-lifeline-error");
pub static X_LIFELINE_ATTEMPTS: HeaderName = HeaderName::from_static("x-lifeline-attempts");
pub static X_LIFELINE_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-lifeline-timeout-ms");
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
static PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");

/// The hop-by-hop headers of RFC 9110 §7.6.1 (plus the legacy proxy ones); the first is
/// `Connection`, whose value names more.
fn hop_by_hop() -> [&'static HeaderName; 9] {
    [
        &CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
    ]
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the `Connection` header names.
///
/// On the hot path for every request and response. One pass over the names finds which are
/// present (usually none, or only `Connection`); only those are removed, so the common request
/// costs no hash lookups at all, and nothing is allocated.
/// Maps of up to this many fields are searched by walking them: comparing a name with each
/// field's costs less than hashing it once (callgrind, session 21: a `HeaderMap::get` was
/// 140–180 instructions on a request of a few fields, and the path made eight lookups).
const WALK: usize = 12;

/// The first value of the field `name`.
pub fn field<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.len() > WALK {
        return headers.get(name);
    }
    headers.iter().find_map(|(n, v)| (n == name).then_some(v))
}

/// The first values of the fields `a` and `b`, found in one walk of the map (two [`field`]
/// calls walk it twice).
pub fn field_pair<'a>(
    headers: &'a HeaderMap,
    a: &HeaderName,
    b: &HeaderName,
) -> (Option<&'a HeaderValue>, Option<&'a HeaderValue>) {
    if headers.len() > WALK {
        return (headers.get(a), headers.get(b));
    }
    let (mut va, mut vb) = (None, None);
    for (n, v) in headers {
        if va.is_none() && n == a {
            va = Some(v);
        } else if vb.is_none() && n == b {
            vb = Some(v);
        }
    }
    (va, vb)
}

/// Whether the field `name` is present.
pub fn has_field(headers: &HeaderMap, name: &HeaderName) -> bool {
    field(headers, name).is_some()
}

/// How many values the field `name` has.
pub fn field_count(headers: &HeaderMap, name: &HeaderName) -> usize {
    if headers.len() > WALK {
        return headers.get_all(name).iter().count();
    }
    headers.iter().filter(|(n, _)| *n == name).count()
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop = hop_by_hop();
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop.iter().position(|h| *h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        if headers.get_all(CONNECTION).iter().nth(1).is_some() {
            // Several Connection headers (rare): collect them, then strip what each names.
            let values: Vec<HeaderValue> = headers.get_all(CONNECTION).iter().cloned().collect();
            headers.remove(CONNECTION);
            for v in &values {
                remove_named(headers, v);
            }
        } else if let Some(v) = headers.remove(CONNECTION) {
            remove_named(headers, &v);
        }
    }
    for (i, name) in hop.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// Removes every header named in a `Connection` value (`close` and `keep-alive` name none here).
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue) {
    if let Ok(list) = connection.to_str() {
        for token in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            headers.remove(token);
        }
    }
}

/// The fields this hop writes itself when it sends a request upstream ([`Hop`](super::body::Hop)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopField {
    ForwardedFor,
    ForwardedProto,
    RequestId,
    TimeoutMs,
    GrpcTimeout,
}

/// Which of this hop's own fields `name` is: one match on the name's bytes (by length first),
/// not a comparison with each custom `HeaderName` in turn.
pub fn hop_field(name: &HeaderName) -> Option<HopField> {
    match name.as_str().as_bytes() {
        b"x-forwarded-for" => Some(HopField::ForwardedFor),
        b"x-forwarded-proto" => Some(HopField::ForwardedProto),
        b"x-request-id" => Some(HopField::RequestId),
        b"x-lifeline-timeout-ms" => Some(HopField::TimeoutMs),
        b"grpc-timeout" => Some(HopField::GrpcTimeout),
        _ => None,
    }
}

/// Writes one `x-forwarded-for` field line: the request's values in order (blank ones left
/// out), then the peer. Several incoming lines become one list (RFC 9110 §5.3), so a backend
/// that reads only the first line still sees every hop.
pub fn put_forwarded_for<'a>(out: &mut Vec<u8>, values: impl IntoIterator<Item = &'a HeaderValue>, peer: IpAddr) {
    out.extend_from_slice(b"x-forwarded-for: ");
    for v in values {
        let v = v.as_bytes().trim_ascii();
        if !v.is_empty() {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    with_peer_text(peer, |text| out.extend_from_slice(text));
    out.extend_from_slice(b"\r\n");
}

/// Calls `f` with the peer's address as text, formatted on the stack (an IPv6 address is at
/// most 45 characters); IPv4, the usual case inside a pod, without the formatting machinery.
fn with_peer_text<T>(peer: IpAddr, f: impl FnOnce(&[u8]) -> T) -> T {
    let mut buf = [0u8; 64];
    let len = match peer {
        IpAddr::V4(v4) => write_ipv4(&mut buf, v4.octets()),
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{peer}");
            cursor.position() as usize
        }
    };
    f(&buf[..len])
}

/// Writes `a.b.c.d` into `buf`; returns its length (at most 15).
fn write_ipv4(buf: &mut [u8; 64], octets: [u8; 4]) -> usize {
    let mut n = 0;
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + (o / 10) % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    n
}

/// The caller's `x-request-id` if it is sane (1–128 visible ASCII characters), else a new one.
///
/// Marked never-indexed for HPACK (RFC 7541 §6.2.3): a value unique to every response would
/// otherwise be inserted into each HTTP/2 connection's dynamic table, evicting the entries that
/// repeat, and keeping ~4 KB of dead ids per connection (dhat at 256 h2c connections: 2.8 MB
/// of the 17 MB heap peak). HTTP/1.1 ignores the flag.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut id = match field(headers, &X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|c| c.is_ascii_graphic()) => v.clone(),
        _ => new_request_id(),
    };
    id.set_sensitive(true);
    id
}

/// RFC 9110 §9.2.2: the methods whose request may be sent again without changing the outcome
/// (the retry layer's and the upstream pool's one definition).
pub fn idempotent(m: &http::Method) -> bool {
    use http::Method;
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Two lowercase hex digits for every byte value.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    table
};

/// A random 128-bit id in the UUID v4 text form.
pub fn new_request_id() -> HeaderValue {
    // A per-thread xoshiro generator seeded from the OS: request ids must be unique, not secret.
    thread_local! {
        static RNG: std::cell::RefCell<rand::rngs::SmallRng> =
            std::cell::RefCell::new(rand::SeedableRng::from_os_rng());
    }
    let (hi, lo): (u64, u64) = RNG.with(|r| {
        let mut r = r.borrow_mut();
        (rand::RngCore::next_u64(&mut *r), rand::RngCore::next_u64(&mut *r))
    });
    // Version 4 in the 13th hex digit, variant 10xx in the 17th (RFC 9562 §5.4).
    let hi = hi & !(0xf << 12) | (0x4 << 12);
    let lo = lo & !(0x3 << 62) | (0x2 << 62);
    // Two hex digits per byte from a table, into a stack buffer: one allocation (the header
    // value) per id. (Nibble by nibble through a u128 was ~700 instructions, callgrind.)
    let mut out = [b'-'; 36];
    let bytes = (u128::from(hi) << 64 | u128::from(lo)).to_be_bytes();
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        let pair = HEX_PAIRS[*b as usize];
        out[at] = pair[0];
        out[at + 1] = pair[1];
        at += 2;
    }
    shared_value(&out).unwrap_or_else(|| HeaderValue::from_static("unknown"))
}

/// A header value of at most [`Inline::CAP`] bytes (longer ones are copied as usual), in one
/// allocation that its clones share. `HeaderValue::from_bytes` makes a buffer whose first clone
/// allocates again to share it, and the request id and `X-Forwarded-For` values are cloned
/// (into the response, and for a possible retry).
pub fn shared_value(b: &[u8]) -> Option<HeaderValue> {
    if b.len() > Inline::CAP {
        return HeaderValue::from_bytes(b).ok();
    }
    let mut inline = Inline { len: b.len() as u8, buf: [0; Inline::CAP] };
    inline.buf[..b.len()].copy_from_slice(b);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(inline)).ok()
}

/// A short value kept inline in its shared owner.
struct Inline {
    len: u8,
    buf: [u8; Inline::CAP],
}

impl Inline {
    const CAP: usize = 64;
}

impl AsRef<[u8]> for Inline {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// Bytes the request line and headers take, as a client would have sent them (HTTP/1.1 form).
pub fn header_bytes(uri_len: usize, headers: &HeaderMap) -> usize {
    headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>() + uri_len + 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_walking_small_maps_and_hashing_large_ones() {
        for filler in [0usize, 3, super::WALK + 4] {
            let mut h = HeaderMap::new();
            for i in 0..filler {
                h.append(HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(), HeaderValue::from(i));
            }
            h.append(http::header::HOST, HeaderValue::from_static("a"));
            h.append(http::header::HOST, HeaderValue::from_static("b"));
            h.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("k1"));
            assert_eq!(field(&h, &http::header::HOST).unwrap(), "a", "the first value, with {filler} others");
            assert_eq!(field_count(&h, &http::header::HOST), 2);
            assert_eq!(field(&h, &IDEMPOTENCY_KEY).unwrap(), "k1");
            assert!(has_field(&h, &IDEMPOTENCY_KEY));
            assert!(!has_field(&h, &X_REQUEST_ID));
            assert!(!has_field(&h, &HeaderName::from_static("idempotency-ke")), "a prefix is another name");
            assert_eq!(field_count(&h, &X_LIFELINE_TIMEOUT_MS), 0);
        }
    }

    #[test]
    fn shared_values_hold_their_bytes_and_refuse_what_a_header_cannot_carry() {
        let v = shared_value(b"10.1.2.3").unwrap();
        assert_eq!(v, "10.1.2.3");
        assert_eq!(v.clone(), v);
        assert_eq!(shared_value(b"").unwrap(), "");
        let long = "a".repeat(Inline::CAP + 10);
        assert_eq!(shared_value(long.as_bytes()).unwrap(), long.as_str());
        assert!(shared_value(b"bad\nvalue").is_none(), "a newline is refused, as from_bytes does");
        assert!(shared_value(&[b'a'; 80][..70]).is_some());
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("x-app").unwrap(), "kept");
    }

    #[test]
    fn strips_what_every_connection_header_names() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("X-One"));
        h.append(CONNECTION, HeaderValue::from_static("close, x-two"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-app"));
    }

    #[test]
    fn request_ids_are_uuid_v4_text() {
        let a = new_request_id();
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(s.matches('-').count(), 4);
        assert_eq!([&s[8..9], &s[13..14], &s[18..19], &s[23..24]], ["-"; 4]);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert!(s.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(new_request_id(), a);
    }

    #[test]
    fn forwarded_for_lists_the_hops_then_the_peer() {
        let line = |values: &[&'static str], peer: &str| {
            let values: Vec<HeaderValue> = values.iter().map(|v| HeaderValue::from_static(v)).collect();
            let mut out = Vec::new();
            put_forwarded_for(&mut out, &values, peer.parse().unwrap());
            String::from_utf8(out).unwrap()
        };
        assert_eq!(line(&[], "127.0.0.1"), "x-forwarded-for: 127.0.0.1\r\n");
        assert_eq!(line(&["10.0.0.1"], "127.0.0.1"), "x-forwarded-for: 10.0.0.1, 127.0.0.1\r\n");
        assert_eq!(
            line(&["10.0.0.1, 10.0.0.2", "10.0.0.3"], "10.1.2.3"),
            "x-forwarded-for: 10.0.0.1, 10.0.0.2, 10.0.0.3, 10.1.2.3\r\n",
            "several lines become one list"
        );
        assert_eq!(line(&[" ", ""], "127.0.0.1"), "x-forwarded-for: 127.0.0.1\r\n", "blank ones are left out");
        assert_eq!(line(&[], "2001:db8::ffff:1"), "x-forwarded-for: 2001:db8::ffff:1\r\n");
    }

    #[test]
    fn hop_fields_are_known_by_name() {
        assert_eq!(hop_field(&X_FORWARDED_FOR), Some(HopField::ForwardedFor));
        assert_eq!(hop_field(&X_FORWARDED_PROTO), Some(HopField::ForwardedProto));
        assert_eq!(hop_field(&X_REQUEST_ID), Some(HopField::RequestId));
        assert_eq!(hop_field(&X_LIFELINE_TIMEOUT_MS), Some(HopField::TimeoutMs));
        assert_eq!(hop_field(&HeaderName::from_static("grpc-timeout")), Some(HopField::GrpcTimeout));
        for other in ["x-forwarded-host", "x-request", "host", "x-lifeline-error"] {
            assert_eq!(hop_field(&HeaderName::from_static(other)), None, "{other}");
        }
    }

    #[test]
    fn request_ids_are_kept_or_generated() {
        let mut h = HeaderMap::new();
        let id = request_id(&h);
        assert_eq!(id.len(), 36);
        assert_eq!(&id.to_str().unwrap()[14..15], "4");
        assert!(id.is_sensitive(), "a new id is never indexed by HPACK");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        assert!(request_id(&h).is_sensitive(), "nor is the caller's");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
    }

    #[test]
    fn ipv4_is_written_as_display_writes_it() {
        for o in [[0, 0, 0, 0], [127, 0, 0, 1], [10, 99, 100, 255], [9, 10, 199, 200], [255, 255, 255, 255]] {
            let mut buf = [0u8; 64];
            let n = write_ipv4(&mut buf, o);
            assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), std::net::Ipv4Addr::from(o).to_string());
        }
    }

    #[test]
    fn every_hop_by_hop_header_goes_and_nothing_else() {
        let mut h = HeaderMap::new();
        for name in hop_by_hop() {
            h.append(name.clone(), HeaderValue::from_static("x"));
        }
        h.insert("x-app", HeaderValue::from_static("kept"));
        h.insert("host", HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-app"]);
        let mut plain = HeaderMap::new();
        plain.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }
}
