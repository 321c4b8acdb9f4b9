//! Small request helpers shared by the simulators: bounded JSON bodies, query parameters, field
//! checks, and [`Reject`], the one shape of a refused request (`{"error": code, "message"}`).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use crate::proxy::body::ProxyBody;
use crate::proxy::respond::json_error;

/// Largest request body a simulator reads.
const MAX_BODY: usize = 256 << 10;

/// A refused request: becomes a `{"error": code, "message"}` answer. Small, unlike a response.
#[derive(Debug)]
pub(crate) struct Reject {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Reject {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Reject {
        Reject { status, code, message: message.into() }
    }

    /// A 400.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Reject {
        Reject::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn response(self) -> Response<ProxyBody> {
        json_error(self.status, self.code, self.message)
    }
}

/// Reads a JSON object body of at most [`MAX_BODY`] bytes; the error is a ready 400/413.
pub(crate) async fn read_json(req: Request<Incoming>) -> Result<Value, Reject> {
    let bytes = read_body(req).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Reject::bad("invalid_json", "the body must be a JSON object")),
        Err(e) => Err(Reject::bad("invalid_json", format!("the body is not JSON: {e}"))),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Reject> {
    match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {MAX_BODY} bytes"),
        )),
        Err(e) => Err(Reject::bad("body_read_failed", format!("cannot read the body: {e}"))),
    }
}

/// A decoded query parameter.
pub(crate) fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// A JSON string field that must be present, non-empty and at most `max` characters.
pub(crate) fn string_field<'a>(body: &'a Value, name: &str, max: usize) -> Result<&'a str, Reject> {
    match body.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max => Ok(s),
        Some(Value::String(_)) => Err(Reject::bad("invalid_field", format!("{name} must be 1 to {max} characters"))),
        Some(_) => Err(Reject::bad("invalid_field", format!("{name} must be a string"))),
        None => Err(Reject::bad("missing_field", format!("{name} is required"))),
    }
}

/// 405 for a known path with the wrong method, 404 otherwise.
pub(crate) fn not_routed(method: &Method, path: &str, known: bool) -> Response<ProxyBody> {
    let path = crate::telemetry::redact::mask(path);
    if known {
        json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{method} is not allowed on {path}"))
    } else {
        json_error(StatusCode::NOT_FOUND, "not_found", format!("no endpoint {method} {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let uri: http::Uri = "/x?a=1&idempotency_key=k%2F1+2&bad=%zz%4".parse().unwrap();
        assert_eq!(query_param(&uri, "idempotency_key").as_deref(), Some("k/1 2"));
        assert_eq!(query_param(&uri, "bad").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(&uri, "none"), None);
    }
}
