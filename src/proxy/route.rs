//! Route matching: host, method, exact path and path prefix; first match in config order wins.

use http::request::Parts;
use http::{HeaderMap, Method, Request, Uri, Version};

use crate::config::MatchConfig;

/// What routing and the request checks read of a request: its head, whether it is still a
/// whole `Request` (the proxy's path keeps it boxed, so it moves as a pointer) or its `Parts`.
pub trait RequestHead {
    fn method(&self) -> &Method;
    fn uri(&self) -> &Uri;
    fn version(&self) -> Version;
    fn headers(&self) -> &HeaderMap;
}

impl RequestHead for Parts {
    fn method(&self) -> &Method {
        &self.method
    }
    fn uri(&self) -> &Uri {
        &self.uri
    }
    fn version(&self) -> Version {
        self.version
    }
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

impl<B> RequestHead for Request<B> {
    fn method(&self) -> &Method {
        Request::method(self)
    }
    fn uri(&self) -> &Uri {
        Request::uri(self)
    }
    fn version(&self) -> Version {
        Request::version(self)
    }
    fn headers(&self) -> &HeaderMap {
        Request::headers(self)
    }
}

/// Host of the request without port, from `Host` (HTTP/1.1) or the URI authority (HTTP/2).
pub fn request_host(head: &impl RequestHead) -> Option<&str> {
    let raw = head
        .uri()
        .authority()
        .map(|a| a.host())
        .or_else(|| super::headers::field(head.headers(), &http::header::HOST).and_then(|h| h.to_str().ok()))?;
    // Strip a port; keep bracketed IPv6 literals whole.
    Some(match raw.rfind(':') {
        Some(i) if !raw.ends_with(']') && raw[..i].rfind(':').is_none() => &raw[..i],
        _ => raw,
    })
}

/// True when the request satisfies every condition of `m`.
pub fn matches(m: &MatchConfig, head: &impl RequestHead) -> bool {
    if let Some(method) = &m.method {
        if head.method() != method {
            return false;
        }
    }
    let path = head.uri().path();
    if let Some(p) = &m.path {
        if path != p {
            return false;
        }
    }
    if let Some(prefix) = &m.path_prefix {
        if !path.starts_with(prefix.as_str()) {
            return false;
        }
    }
    if let Some(host) = &m.host {
        match request_host(head) {
            Some(h) if h.eq_ignore_ascii_case(host) => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, host: Option<&str>) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn each_condition_must_hold() {
        let m = MatchConfig {
            host: Some("pay.local".into()),
            method: Some(http::Method::POST),
            path: Some("/payment/v1/settlements".into()),
            path_prefix: None,
        };
        assert!(matches(&m, &parts("POST", "/payment/v1/settlements", Some("PAY.local:8080"))));
        assert!(!matches(&m, &parts("GET", "/payment/v1/settlements", Some("pay.local"))));
        assert!(!matches(&m, &parts("POST", "/payment/v1/settlements/1", Some("pay.local"))));
        assert!(!matches(&m, &parts("POST", "/payment/v1/settlements", Some("other"))));
        assert!(!matches(&m, &parts("POST", "/payment/v1/settlements", None)));
        let prefix = MatchConfig { path_prefix: Some("/auth/".into()), ..Default::default() };
        assert!(matches(&prefix, &parts("GET", "/auth/v1/tokens/x?y=1", None)));
        assert!(!matches(&prefix, &parts("GET", "/authx", None)));
        assert!(matches(&MatchConfig::default(), &parts("GET", "/", None)));
    }
}
