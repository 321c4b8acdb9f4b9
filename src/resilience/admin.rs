//! Admin endpoints of the breakers: state, decision log, operator overrides.
//!
//! `GET /breakers` shows every breaker: state, operator mode, since when, the live window
//! figures, why it last tripped (condition and evidence) and when it will probe next.
//! `GET /breakers/events[?breaker=NAME][&since=SEQ]` is the decision log, oldest first.
//! `POST /breakers/NAME/mode` with `{"mode": "forced_open"|"disabled"|"metrics_only"|"normal",
//! "reason": "..."}` sets an override; it needs the admin token and a reason, and lands in the
//! decision log with that reason (research §3.8: users want to force or disable a breaker, with
//! an audit trail).

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use super::breaker::gate::Mode;
use crate::app::AppState;
use crate::proxy::body::ProxyBody;
use crate::proxy::respond::{json_error, json_response};

/// Largest accepted override request body.
const MAX_BODY: usize = 4096;

/// Serves `/breakers` and everything under it.
pub async fn handle(state: &AppState, req: Request<hyper::body::Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/breakers") => list(state).await,
        (&Method::GET, "/breakers/events") => events(state, &query),
        (&Method::POST, p) if p.starts_with("/breakers/") && p.ends_with("/mode") => {
            let name = p["/breakers/".len()..p.len() - "/mode".len()].to_string();
            if let Err(refusal) = crate::admin::authorize(state, &req) {
                return *refusal;
            }
            let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return json_error(StatusCode::BAD_REQUEST, "bad_request", format!("cannot read the body: {e}"))
                }
            };
            set_mode(state, &name, &body).await
        }
        (_, "/breakers" | "/breakers/events") => json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method()),
        ),
        _ => json_error(StatusCode::NOT_FOUND, "not_found", format!("no admin endpoint {path}")),
    }
}

async fn list(state: &AppState) -> Response<ProxyBody> {
    let rt = state.runtime.load_full();
    let mut out = Vec::new();
    for b in rt.resilience.breakers() {
        out.push(b.snapshot().await);
    }
    json_response(StatusCode::OK, &json!({ "generation": rt.generation, "breakers": out }))
}

fn events(state: &AppState, query: &str) -> Response<ProxyBody> {
    let mut only = None;
    let mut since = 0u64;
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        match k {
            "breaker" => only = Some(v.replace("%2F", "/").replace("%2f", "/")),
            "since" => match v.parse() {
                Ok(n) => since = n,
                Err(_) => {
                    return json_error(StatusCode::BAD_REQUEST, "bad_request", "since must be an event sequence number")
                }
            },
            _ => {}
        }
    }
    let rt = state.runtime.load();
    let mut all: Vec<_> = rt
        .resilience
        .breakers()
        .filter(|b| only.as_deref().is_none_or(|n| n == b.name))
        .flat_map(|b| b.events())
        .filter(|e| e.seq > since)
        .collect();
    all.sort_by_key(|e| e.seq);
    json_response(StatusCode::OK, &json!({ "events": all }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeRequest {
    mode: Mode,
    reason: String,
}

async fn set_mode(state: &AppState, name: &str, body: &[u8]) -> Response<ProxyBody> {
    let req: ModeRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "expected {{\"mode\": \"normal|disabled|forced_open|metrics_only\", \"reason\": \"...\"}}: {e}"
                ),
            )
        }
    };
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return json_error(
            StatusCode::BAD_REQUEST,
            "reason_required",
            "give a reason (1-500 characters); it goes into the decision log",
        );
    }
    let rt = state.runtime.load_full();
    let Some(breaker) = rt.resilience.breaker(name) else {
        let known: Vec<&str> = rt.resilience.breakers().map(|b| b.name.as_str()).collect();
        return json_error(
            StatusCode::NOT_FOUND,
            "no_such_breaker",
            format!("no breaker {name:?} (known: {})", known.join(", ")),
        );
    };
    breaker.set_mode(req.mode, reason).await;
    json_response(StatusCode::OK, &breaker.snapshot().await)
}
