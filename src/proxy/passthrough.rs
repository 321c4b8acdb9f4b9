//! A backend's answer's header fields, kept as they arrived instead of in a `HeaderMap`.
//!
//! Nearly every field of an answer goes from the backend to the caller untouched: parsing each
//! into a `HeaderName` and a `HeaderValue`, hashing it into a map, then walking the map to write
//! it out again was the largest share of a proxied request left (callgrind, session 12: the
//! parse into the map alone 4.6k of 30k instructions). The upstream client reads the fields
//! once (httparse has checked their bytes: names are tokens, values hold no control character
//! but tab), drops this hop's, and hands the rest on as spans of the head it read
//! ([`Passthrough`], carried in the answer body's box: [`ProxyBody::fields`]). The HTTP/1.1
//! server writes them out as they are, then what Lifeline sets (the request id, the attempt
//! count; kept beside the spans, replacing a backend field of the same name), then the
//! response's map. The few readers of a backend's field (`Retry-After`) go through
//! [`response_header`]. The h2c server encodes them the same way, straight from the spans
//! ([`Passthrough::each`], names lowercased as they are written).

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::Response;
use smallvec::SmallVec;

use super::body::ProxyBody;

/// The end-to-end fields of an answer, in arrival order, as spans of the head they came in.
#[derive(Clone, Debug)]
pub struct Passthrough {
    head: Bytes,
    fields: SmallVec<[Span; 8]>,
    dated: bool,
    /// Fields Lifeline sets on the answer (the request id, the attempt count), kept here
    /// rather than in the response's map: an empty map allocates twice on its first insert.
    set: SmallVec<[(HeaderName, HeaderValue); 2]>,
}

#[derive(Clone, Copy, Debug)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
    /// `Content-Length`: written only where the server does not frame the body itself.
    length: bool,
    /// The line in the head is exactly `name: value` and CRLF, what [`put_header`] would
    /// write: it is copied as it stands, with its neighbours when they are too.
    ///
    /// [`put_header`]: crate::http1::put_header
    canonical: bool,
}

impl Passthrough {
    /// No fields yet, over `head` ([`Passthrough::push`] adds them).
    pub fn new(head: Bytes) -> Passthrough {
        Passthrough { head, fields: SmallVec::new(), dated: false, set: SmallVec::new() }
    }

    /// Adds one field (ranges into the head; the caller has checked them).
    pub fn push(&mut self, name: (usize, usize), value: (usize, usize), length: bool) {
        self.dated |= self.head[name.0..name.1].eq_ignore_ascii_case(b"date");
        let r = |(a, b): (usize, usize)| (a as u32, b as u32);
        let canonical = value.0 == name.1 + 2
            && self.head.get(name.1..value.0) == Some(b": ")
            && self.head.get(value.1..value.1 + 2) == Some(b"\r\n");
        self.fields.push(Span { name: r(name), value: r(value), length, canonical });
    }

    /// Keeps only the fields whose name `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        let head = &self.head;
        self.fields.retain(|s| keep(&head[s.name.0 as usize..s.name.1 as usize]));
        let dated = self.iter().any(|(n, _)| n.eq_ignore_ascii_case(b"date"));
        self.dated = dated;
    }

    /// Name and value of every field, in arrival order (names as they came, any case).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields.iter().map(|s| (self.slice(s.name), self.slice(s.value)))
    }

    /// Values of the `Content-Length` fields.
    pub fn lengths(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.fields.iter().filter(|s| s.length).map(|s| self.slice(s.value))
    }

    /// Forgets the `Content-Length` fields.
    pub fn drop_lengths(&mut self) {
        self.fields.retain(|s| !s.length);
    }

    /// The first value of the field `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.find(name.as_bytes()).map(|s| self.slice(s.value))
    }

    fn find(&self, name: &[u8]) -> Option<&Span> {
        // Lengths first: this runs for every field set on every answer.
        self.fields
            .iter()
            .find(|s| (s.name.1 - s.name.0) as usize == name.len() && self.slice(s.name).eq_ignore_ascii_case(name))
    }

    /// Sets `name` to `value` in place of whatever the backend or an earlier `set` gave it.
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        if self.find(name.as_str().as_bytes()).is_some() {
            self.retain(|n| !n.eq_ignore_ascii_case(name.as_str().as_bytes()));
        }
        match self.set.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.set.push((name, value)),
        }
    }

    /// Whether the answer carries its own `Date`.
    pub fn has_date(&self) -> bool {
        self.dated
    }

    /// Whether the answer carries a `Content-Length`.
    pub fn has_length(&self) -> bool {
        self.fields.iter().any(|s| s.length)
    }

    /// Every field, the backend's (names as they came, any case) then those set here, with
    /// whether its value is sensitive (HPACK never indexes it): what the h2c server encodes.
    pub fn each(&self, mut field: impl FnMut(&[u8], &[u8], bool)) {
        for s in &self.fields {
            field(self.slice(s.name), self.slice(s.value), false);
        }
        for (name, value) in &self.set {
            field(name.as_str().as_bytes(), value.as_bytes(), value.is_sensitive());
        }
    }

    /// Writes the fields as HTTP/1.1 header lines, the backend's then those set here;
    /// `Content-Length` ones only `with_length`.
    pub fn write_h1(&self, out: &mut Vec<u8>, with_length: bool) {
        // A run of whole lines that follow each other in the head goes out in one copy
        // (a backend's usual answer: all of its fields but the framing ones).
        let mut run: Option<(u32, u32)> = None;
        for s in &self.fields {
            if s.length && !with_length {
                continue;
            }
            if s.canonical {
                let line = (s.name.0, s.value.1 + 2);
                run = match run {
                    Some((start, end)) if end == line.0 => Some((start, line.1)),
                    Some(done) => {
                        out.extend_from_slice(self.slice(done));
                        Some(line)
                    }
                    None => Some(line),
                };
                continue;
            }
            if let Some(done) = run.take() {
                out.extend_from_slice(self.slice(done));
            }
            crate::http1::put_header(out, self.slice(s.name), self.slice(s.value));
        }
        if let Some(done) = run {
            out.extend_from_slice(self.slice(done));
        }
        for (name, value) in &self.set {
            crate::http1::put_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }

    fn slice(&self, (a, b): (u32, u32)) -> &[u8] {
        &self.head[a as usize..b as usize]
    }
}

/// Sets a field on an answer, replacing any the backend sent under that name: in its
/// [`Passthrough`] when it has one (no map to allocate), in its map otherwise.
pub fn set_header(resp: &mut Response<ProxyBody>, name: HeaderName, value: HeaderValue) {
    match resp.body_mut().fields_mut() {
        Some(p) => p.set(name, value),
        None => {
            resp.headers_mut().insert(name, value);
        }
    }
}

/// A response field, from the response's map or else from a backend's fields passed through.
pub fn response_header<'a>(resp: &'a Response<ProxyBody>, name: &HeaderName) -> Option<&'a [u8]> {
    if let Some(v) = resp.headers().get(name) {
        return Some(v.as_bytes());
    }
    let p = resp.body().fields()?;
    match p.set.iter().find(|(n, _)| n == name) {
        Some((_, v)) => Some(v.as_bytes()),
        None => p.get(name.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Passthrough {
        let head = Bytes::from_static(b"Server: x\r\nDATE: d\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n");
        let mut p = Passthrough::new(head.clone());
        let mut at = 0;
        for line in head.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let colon = line.iter().position(|&b| b == b':').unwrap();
            let (name, value) = ((at, at + colon), (at + colon + 2, at + line.len() - 1));
            p.push(name, value, &line[..colon] == b"Content-Length");
            at += line.len() + 1;
        }
        p
    }

    #[test]
    fn fields_are_written_as_they_came_with_the_length_only_when_asked() {
        let p = sample();
        assert!(p.has_date());
        let mut out = Vec::new();
        p.write_h1(&mut out, false);
        assert_eq!(out, b"Server: x\r\nDATE: d\r\nX-A: 1\r\nx-a: 2\r\n");
        out.clear();
        p.write_h1(&mut out, true);
        assert_eq!(out, b"Server: x\r\nDATE: d\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n");
        assert_eq!(p.lengths().collect::<Vec<_>>(), vec![&b"2"[..]]);
        assert_eq!(p.get("x-a"), Some(&b"1"[..]));
        assert_eq!(p.get("retry-after"), None);
    }

    /// The fields of a whole response head, spanned as the upstream client spans them.
    fn parsed(raw: &'static [u8]) -> Passthrough {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(resp.parse(raw).unwrap().is_complete());
        let base = raw.as_ptr() as usize;
        let mut p = Passthrough::new(Bytes::from_static(raw));
        for h in resp.headers.iter() {
            let (n, v) = (h.name.as_ptr() as usize - base, h.value.as_ptr() as usize - base);
            p.push((n, n + h.name.len()), (v, v + h.value.len()), h.name.eq_ignore_ascii_case("content-length"));
        }
        p
    }

    #[test]
    fn lines_not_written_as_put_header_writes_them_are_rewritten_and_the_rest_copied() {
        let p =
            parsed(b"HTTP/1.1 200 OK\r\nA: 1\r\nB:tight\r\nC: 3\r\nD: 4\r\nE: bare lf\nF:  spaced  \r\nG: 7\r\n\r\n");
        let mut out = Vec::new();
        p.write_h1(&mut out, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A: 1\r\nB: tight\r\nC: 3\r\nD: 4\r\nE: bare lf\r\nF: spaced\r\nG: 7\r\n"
        );
        // Copied runs skip what is left out: here the length between two plain lines.
        let p = parsed(b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\nX: y\r\n\r\n");
        let mut out = Vec::new();
        p.write_h1(&mut out, false);
        assert_eq!(out, b"Server: s\r\nX: y\r\n");
    }

    #[test]
    fn the_parser_refuses_what_a_header_value_may_not_hold() {
        // What passes through unchecked by `HeaderValue` must have been refused by httparse.
        for bad in [&b"\x00"[..], b"\x01", b"\x7f", b"\x1b", b"\r"] {
            let raw = [&b"HTTP/1.1 200 OK\r\nX: a"[..], bad, b"b\r\n\r\n"].concat();
            let mut headers = [httparse::EMPTY_HEADER; 4];
            let parsed = httparse::Response::new(&mut headers).parse(&raw);
            assert!(parsed.is_err(), "{bad:?} accepted: {parsed:?}");
            assert!(HeaderValue::from_bytes(&[b"a", bad, b"b"].concat()).is_err());
        }
    }

    #[test]
    fn retain_and_drop_lengths_forget_fields_and_the_date_with_them() {
        let mut p = sample();
        p.retain(|n| !n.eq_ignore_ascii_case(b"date"));
        p.drop_lengths();
        assert!(!p.has_date());
        assert_eq!(p.iter().map(|(n, _)| n).collect::<Vec<_>>(), vec![&b"Server"[..], b"X-A", b"x-a"]);
    }

    #[test]
    fn a_field_set_here_replaces_the_backends_once_and_is_written_after_them() {
        let mut resp = Response::new(ProxyBody::carrying(http_body_util::Empty::new(), Some(sample())));
        let name = HeaderName::from_static("x-a");
        set_header(&mut resp, name.clone(), HeaderValue::from_static("mine"));
        set_header(&mut resp, name.clone(), HeaderValue::from_static("mine again"));
        set_header(&mut resp, HeaderName::from_static("x-b"), HeaderValue::from_static("b"));
        assert!(resp.headers().is_empty(), "no map was needed");
        assert_eq!(response_header(&resp, &name), Some(&b"mine again"[..]));
        let mut out = Vec::new();
        resp.body().fields().unwrap().write_h1(&mut out, false);
        assert_eq!(out, b"Server: x\r\nDATE: d\r\nx-a: mine again\r\nx-b: b\r\n");
        let mut each = Vec::new();
        resp.body().fields().unwrap().each(|n, v, _| each.push((n.to_vec(), v.to_vec())));
        assert_eq!(
            each.iter().filter(|(n, _)| n == b"x-a").map(|(_, v)| &v[..]).collect::<Vec<_>>(),
            vec![b"mine again"]
        );
        // Without passthrough fields, the map.
        let mut plain = Response::new(crate::proxy::body::empty());
        set_header(&mut plain, name.clone(), HeaderValue::from_static("1"));
        assert_eq!(plain.headers()["x-a"], "1");
    }

    #[test]
    fn each_gives_the_backends_fields_as_they_came_then_those_set_here() {
        let mut p = sample();
        p.set(HeaderName::from_static("x-id"), {
            let mut v = HeaderValue::from_static("42");
            v.set_sensitive(true);
            v
        });
        let mut each = Vec::new();
        p.each(|n, v, sensitive| {
            each.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned(), sensitive))
        });
        let names: Vec<&str> = each.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"Server"), "names as they came: {names:?}");
        assert_eq!(names.last(), Some(&"x-id"));
        assert_eq!(each.last().map(|f| f.2), Some(true), "a value set sensitive stays so");
        assert!(each.iter().filter(|f| f.0 != "x-id").all(|f| !f.2));
        assert!(p.has_date());
        assert!(p.has_length());
        p.drop_lengths();
        assert!(!p.has_length());
    }
}
