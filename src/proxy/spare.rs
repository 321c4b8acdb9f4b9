//! Spare request boxes and response extension maps, kept per thread for the next request.
//!
//! Every HTTP/1.1 request is parsed into a boxed [`Request`] with a [`HeaderMap`] (three
//! allocations: the box, the map's index table and its entries), and every backend's answer
//! carries its fields in an extension map (two more: the map and its table). They all die one
//! request later on the same proxy worker. The upstream client hands the request back here once
//! its head is written, and the server hands back the answer's extensions once its head is
//! written: the next request on that thread reuses them, their capacity kept, their contents
//! dropped. (Session 19, `bench/profile.py`: per proxied request 9.4 allocations and 1 818
//! bytes before, 4.4 and 743 after; 28.6k instructions before, 27.0k after.)
//!
//! Bounded both ways: at most [`KEEP`] of each per thread, and a map that grew past
//! [`MAX_FIELDS`] fields (a request with many headers) is freed rather than kept.

use std::cell::RefCell;

use http::{Extensions, HeaderMap, Method, Request, Uri, Version};

use super::body::{self, ProxyRequest};

/// Spares kept per thread, of each kind (a worker with more requests in flight allocates the
/// rest as before).
const KEEP: usize = 32;
/// A request whose header map has room for more fields than this is not kept.
const MAX_FIELDS: usize = 64;

thread_local! {
    static REQUESTS: RefCell<Vec<ProxyRequest>> = const { RefCell::new(Vec::new()) };
    static EXTENSIONS: RefCell<Vec<Extensions>> = const { RefCell::new(Vec::new()) };
}

/// An empty request (GET, `/`, HTTP/1.1, no fields, no extensions, empty body) whose header
/// map has room for `fields` fields: a spare when this thread has one.
pub fn request(fields: usize) -> ProxyRequest {
    let spare = REQUESTS.try_with(|s| s.borrow_mut().pop()).ok().flatten();
    match spare {
        Some(mut req) => {
            req.headers_mut().reserve(fields);
            req
        }
        None => {
            let mut req = Box::new(Request::new(body::empty()));
            *req.headers_mut() = HeaderMap::with_capacity(fields);
            req
        }
    }
}

/// Keeps `req`'s box and header map for a later [`request`]; everything it holds (the fields'
/// values, target, extensions, body) is dropped now.
pub fn give_back(mut req: ProxyRequest) {
    if req.headers().capacity() > MAX_FIELDS {
        return;
    }
    *req.method_mut() = Method::GET;
    *req.uri_mut() = Uri::from_static("/");
    *req.version_mut() = Version::HTTP_11;
    req.headers_mut().clear();
    req.extensions_mut().clear();
    *req.body_mut() = body::empty();
    let _ = REQUESTS.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(req);
        }
    });
}

/// An empty extension map: a spare (its table allocated) when this thread has one.
pub fn extensions() -> Extensions {
    EXTENSIONS.try_with(|s| s.borrow_mut().pop()).ok().flatten().unwrap_or_default()
}

/// Keeps `ext`'s table for a later [`extensions`]; its values are dropped now.
pub fn give_back_extensions(mut ext: Extensions) {
    ext.clear();
    let _ = EXTENSIONS.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(ext);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_request_given_back_comes_back_empty_with_its_room() {
        let mut req = request(8);
        *req.method_mut() = Method::POST;
        *req.uri_mut() = Uri::from_static("/pay?x=1");
        *req.version_mut() = Version::HTTP_10;
        for i in 0..6 {
            req.headers_mut()
                .append(format!("x-f{i}").parse::<http::HeaderName>().unwrap(), HeaderValue::from_static("v"));
        }
        req.extensions_mut().insert(7u32);
        *req.body_mut() = body::full("some body");
        let room = req.headers().capacity();
        let at = &*req as *const Request<_>;
        give_back(req);

        let again = request(4);
        assert_eq!(&*again as *const Request<_>, at, "the same box");
        assert_eq!(again.method(), Method::GET);
        assert_eq!(again.uri(), "/");
        assert_eq!(again.version(), Version::HTTP_11);
        assert!(again.headers().is_empty());
        assert_eq!(again.headers().capacity(), room, "the map kept its room");
        assert!(again.extensions().get::<u32>().is_none());
        assert!(http_body::Body::is_end_stream(again.body()));
    }

    #[test]
    fn a_map_grown_large_is_not_kept_and_the_spares_are_bounded() {
        let mut big = request(0);
        for i in 0..(MAX_FIELDS + 10) {
            big.headers_mut()
                .append(format!("x-f{i}").parse::<http::HeaderName>().unwrap(), HeaderValue::from_static("v"));
        }
        assert!(big.headers().capacity() > MAX_FIELDS);
        give_back(big);
        assert_eq!(request(0).headers().capacity(), 0, "a large map was freed, not kept");

        for _ in 0..(KEEP + 10) {
            give_back(request(0));
        }
        let held: Vec<_> = (0..KEEP + 10).map(|_| request(0)).collect();
        let spares = REQUESTS.with(|s| s.borrow().len());
        assert_eq!(spares, 0);
        for r in held {
            give_back(r);
        }
        assert_eq!(REQUESTS.with(|s| s.borrow().len()), KEEP, "at most KEEP kept");
    }

    #[test]
    fn extensions_given_back_come_back_empty() {
        let mut ext = extensions();
        ext.insert(5u64);
        give_back_extensions(ext);
        let again = extensions();
        assert!(again.get::<u64>().is_none());
        assert!(again.is_empty());
    }
}
