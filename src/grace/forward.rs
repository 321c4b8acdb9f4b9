//! Forwarding one journaled item: query-before-resend, send with the original key, classify.
//!
//! Every transition is a compare-and-set on the journal, so two forwarders (or a forwarder and
//! an operator) can never both act on one item. The request goes through the route's normal
//! stack *without* grace; a NotSent answer (breaker open, no healthy endpoint, refused) means the
//! backend is still down and costs the item no attempt.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::BodyExt;

use super::engine::{Engine, Target};
use super::outcome::{backoff, cas, finish, park, retry, retry_not_sent};
use super::request::open_payload;
use super::store::{Item, State};
use crate::error::{ErrorKind, LifelineError};
use crate::proxy::body::{empty, full, Hop, ProxyRequest};
use crate::telemetry::names;

/// What one forward says about the backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// The backend answered (success, decline, or an error status).
    Answered,
    /// The backend is unavailable; wait at least this long (Retry-After) before the next canary.
    Down(Option<Duration>),
    /// Sent, no answer: the backend is sick.
    Ambiguous,
    /// Nothing happened (another actor moved the item, or there is no route to send through).
    Skipped,
}

/// Forwards `item`, moving it through its states. Returns what was learned about the backend.
pub async fn forward_one(engine: &Arc<Engine>, item: Item) -> Signal {
    let Some(target) = engine.target(&item.route) else { return Signal::Skipped };
    let id = item.receipt_id.clone();
    if item.state == State::Unknown {
        if !cas(engine, &id, &[State::Unknown], State::Querying, "asking the backend before any resend").await {
            return Signal::Skipped;
        }
        match query(engine, &target, &item).await {
            Answer::Status(s, _, body) if s.is_success() => {
                finish(engine, &item, State::Querying, State::Settled, s, body, "found by query").await;
                return Signal::Answered;
            }
            Answer::Status(StatusCode::NOT_FOUND, _, _) => {
                let note = "the backend has no settlement for this key; sending";
                if !cas(engine, &id, &[State::Querying], State::Forwarding, note).await {
                    return Signal::Skipped;
                }
            }
            Answer::Status(s, _, _) => {
                let after = Some(backoff(engine, &item));
                retry(engine, &item, State::Querying, State::Unknown, after, format!("query answered {s}")).await;
                return Signal::Answered;
            }
            Answer::NotSent(e) => {
                retry_not_sent(engine, &item, State::Querying, State::Unknown, e).await;
                return Signal::Down(None);
            }
            Answer::Lost(e) => {
                let after = Some(backoff(engine, &item));
                retry(engine, &item, State::Querying, State::Unknown, after, e).await;
                return Signal::Ambiguous;
            }
        }
    } else if !cas(engine, &id, &[State::Journaled, State::RetryWait], State::Forwarding, "").await {
        return Signal::Skipped;
    }
    send(engine, &target, &item).await
}

enum Answer {
    /// The backend answered: status, `Retry-After`, body.
    Status(StatusCode, Option<Duration>, String),
    NotSent(String),
    Lost(String),
}

async fn send(engine: &Arc<Engine>, target: &Target, item: &Item) -> Signal {
    let (headers, body) = match open_payload(engine, item) {
        Ok(p) => p,
        Err(e) => {
            park(engine, item, State::Forwarding, &e).await;
            return Signal::Skipped;
        }
    };
    let mut req = Request::new(full(body));
    *req.method_mut() = item.method.parse().unwrap_or(http::Method::POST);
    *req.uri_mut() = item.path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            req.headers_mut().append(k, v);
        }
    }
    let ambiguous_first = [ErrorKind::UpstreamTimeout, ErrorKind::UpstreamReset, ErrorKind::DeadlineExceeded]
        .iter()
        .any(|k| k.code() == item.reason);
    let resent = item.attempts > 0 || ambiguous_first || item.state == State::Unknown;
    let (status, retry_after, body) = match call(target, item, req, resent).await {
        Answer::Status(s, retry_after, body) => (s, retry_after, body),
        Answer::NotSent(e) => {
            retry_not_sent(engine, item, State::Forwarding, State::RetryWait, e).await;
            return Signal::Down(None);
        }
        Answer::Lost(e) => {
            metrics::counter!(names::GRACE_UNKNOWN_OUTCOMES_TOTAL, "policy" => engine.name.clone()).increment(1);
            let after = Some(backoff(engine, item));
            retry(engine, item, State::Forwarding, State::Unknown, after, format!("sent, no answer: {e}")).await;
            return Signal::Ambiguous;
        }
    };
    classify(engine, item, status, retry_after, body).await
}

/// Decides an answered forward.
async fn classify(
    engine: &Arc<Engine>,
    item: &Item,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: String,
) -> Signal {
    // A backend's `Retry-After` is honoured up to `forward.max_backoff`: a maintenance page
    // saying "a day", or an HTTP-date from a clock far ahead, must not halt replay that long.
    let retry_after = retry_after.map(|d| d.min(engine.policy().forward.max_backoff));
    let after = Some(backoff(engine, item).max(retry_after.unwrap_or_default()));
    if status.is_success() {
        finish(engine, item, State::Forwarding, State::Settled, status, body, "").await;
    } else if status == StatusCode::CONFLICT || (status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE)
    {
        // 409: the backend is still working on this key. 500/502/504: it may have processed it.
        // Either way: resolve by asking, never by resending blind.
        let note = format!("backend answered {status}; query before resend");
        retry(engine, item, State::Forwarding, State::Unknown, after, note).await;
    } else if matches!(status.as_u16(), 429 | 503 | 408) {
        // Throttled or in maintenance: explicitly not processed; send again later.
        retry(engine, item, State::Forwarding, State::RetryWait, after, format!("backend answered {status}")).await;
        if status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some() {
            return Signal::Down(retry_after);
        }
    } else if status.is_redirection() || matches!(status.as_u16(), 401 | 404 | 405 | 407 | 413 | 415) {
        // Not a business answer (wrong path, expired credentials): an operator must look.
        park(engine, item, State::Forwarding, &format!("backend answered {status}, not a business decision")).await;
    } else {
        finish(engine, item, State::Forwarding, State::Declined, status, body, "business decline").await;
    }
    Signal::Answered
}

/// Sends one request through the target, with the item's key and replay markers.
fn call(
    target: &Target,
    item: &Item,
    mut req: Request<crate::proxy::body::ProxyBody>,
    resent: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>> {
    let h = req.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&item.idem_key) {
        h.insert("idempotency-key", v);
    }
    if let Ok(v) = HeaderValue::from_str(&item.receipt_id) {
        h.insert("x-lifeline-grace-receipt", v);
    }
    if resent {
        // ISO 20022 PssblDplct / jPOS retransmission flag: the backend may have seen it before.
        h.insert("x-lifeline-possible-duplicate", HeaderValue::from_static("true"));
    }
    // A forward that may have reached the backend is resolved by query, not resent by retry.
    req.extensions_mut().insert(crate::proxy::stack::ResendOnlyIfNotSent);
    // Its own request id: the caller's went with the caller's attempt.
    let hop = Hop { request_id: Some(crate::proxy::headers::new_request_id()), ..Hop::default() };
    let fut = super::layer::call(target.service.clone(), ProxyRequest::with_hop(req, hop));
    Box::pin(async move {
        match fut.await {
            Ok(resp) => {
                let status = resp.status();
                let retry_after = crate::resilience::retry::backoff::retry_after(&resp);
                let body = read_body(resp.into_body()).await;
                Answer::Status(status, retry_after, body)
            }
            Err(e) => {
                let kind = LifelineError::kind_of(&e);
                if kind.not_sent() {
                    Answer::NotSent(e.to_string())
                } else {
                    Answer::Lost(e.to_string())
                }
            }
        }
    })
}

/// Reads an answer body (at most 1 MiB; a broken body reads as what arrived).
fn read_body(
    mut body: crate::proxy::body::ProxyBody,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> {
    Box::pin(async move {
        let mut buf = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                if buf.len() + d.len() > 1 << 20 {
                    break;
                }
                buf.extend_from_slice(d);
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// `GET {query_path}?idempotency_key=K`: did the backend already settle this key?
async fn query(engine: &Engine, target: &Target, item: &Item) -> Answer {
    let path = format!("{}?idempotency_key={}", engine.policy().forward.query_path, percent_encode(&item.idem_key));
    let mut req = Request::new(empty());
    *req.uri_mut() = match path.parse() {
        Ok(u) => u,
        Err(_) => return Answer::Lost("cannot build the query URI".into()),
    };
    call(target, item, req, false).await
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
