//! The one place where failures become HTTP answers.
//!
//! Every error on the request path ends here: a status code, a JSON body
//! `{"error", "message", "request_id", ...}` and an `x-lifeline-error` header naming the cause,
//! so a caller (and an SRE reading an access log) can always tell a Lifeline answer from an
//! upstream one.

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::Response;

use super::body::{full, ProxyBody};
use super::headers::{X_LIFELINE_ATTEMPTS, X_LIFELINE_ERROR, X_REQUEST_ID};
use crate::error::{BoxError, ErrorKind, LifelineError};
use crate::telemetry::redact::mask;

/// Turns any error from the request path into the response the caller gets.
pub fn error_response(err: &BoxError, request_id: &HeaderValue) -> Response<ProxyBody> {
    match LifelineError::find(err.as_ref()) {
        Some(le) => lifeline_error_response(le, request_id),
        None => {
            let le = classify_foreign(err);
            lifeline_error_response(&le, request_id)
        }
    }
}

/// Errors that are not ours come from hyper or the OS: name them as upstream failures.
fn classify_foreign(err: &BoxError) -> LifelineError {
    let text = err.to_string();
    LifelineError::new(ErrorKind::UpstreamReset, format!("upstream connection failed: {}", mask(&text)))
}

/// The response for one of our typed errors.
pub fn lifeline_error_response(err: &LifelineError, request_id: &HeaderValue) -> Response<ProxyBody> {
    let status = err.status.unwrap_or_else(|| err.kind.status());
    let mut body = serde_json::json!({
        "error": err.kind.code(),
        "message": mask(&err.message),
        "request_id": request_id.to_str().unwrap_or(""),
    });
    if let Some(cluster) = &err.cluster {
        body["cluster"] = serde_json::Value::from(cluster.as_str());
    }
    if let Some(after) = err.retry_after {
        body["retry_after_ms"] = serde_json::Value::from(after.as_millis() as u64);
    }
    if let Some(serde_json::Value::Object(detail)) = &err.detail {
        for (k, v) in detail {
            body[k.as_str()] = v.clone();
        }
    }
    // Grace refusals are RFC 9457 problem details (type/title/status/detail) as well.
    let problem = err.kind == ErrorKind::GraceLimitExceeded;
    if problem {
        body["type"] = format!("urn:lifeline:error:{}", err.kind.code()).into();
        body["title"] = "Offline grace limit exceeded".into();
        body["status"] = status.as_u16().into();
        body["detail"] = body["message"].clone();
    }
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let content_type = if problem { "application/problem+json" } else { "application/json" };
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(X_LIFELINE_ERROR.clone(), HeaderValue::from_static(err.kind.code()));
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    if let Some(n) = err.attempts {
        h.insert(X_LIFELINE_ATTEMPTS.clone(), HeaderValue::from(n));
    }
    if let Some(after) = err.retry_after {
        // Retry-After is whole seconds; round up so "in 200ms" does not become "now".
        let secs = after.as_millis().div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            h.insert(RETRY_AFTER, v);
        }
    }
    resp
}

/// A JSON response for the admin API and the simulators: `{"error": code, "message": ...}`.
pub fn json_error(status: http::StatusCode, code: &str, message: impl Into<String>) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": code, "message": message.into() });
    json_response(status, &body)
}

/// A JSON response with `body`.
pub fn json_response(status: http::StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    #[tokio::test]
    async fn maps_typed_errors_with_header_and_json() {
        let err = LifelineError::new(ErrorKind::CircuitOpen, "payment is failing fast")
            .with_cluster("payment")
            .with_retry_after(Duration::from_millis(1500))
            .boxed();
        let id = HeaderValue::from_static("req-1");
        let resp = error_response(&err, &id);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[&X_LIFELINE_ERROR], "circuit_open");
        assert_eq!(resp.headers()[RETRY_AFTER], "2");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "circuit_open");
        assert_eq!(v["cluster"], "payment");
        assert_eq!(v["request_id"], "req-1");
    }

    #[tokio::test]
    async fn masks_personal_data_in_messages() {
        let err = LifelineError::new(ErrorKind::BadRequest, "bad card 110101199003071234").boxed();
        let resp = error_response(&err, &HeaderValue::from_static("r"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(!text.contains("110101199003071234"), "{text}");
    }
}
