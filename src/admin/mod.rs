//! The admin API: health, readiness, metrics, effective config, cluster state, operator actions.
//!
//! Reads are open (the admin port is pod-internal). Anything that changes state requires
//! `Authorization: Bearer <token>` matching the file `admin.token_file` names, read at each
//! request so a rotated Secret takes effect without a restart. Without a token file those
//! endpoints answer 403: never open (design invariant 9 and the brief's "never fail open").

pub mod client;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::app::AppState;
use crate::proxy::body::{full, ProxyBody};
use crate::proxy::respond::{json_error, json_response};
use crate::telemetry;

/// Serves one admin request.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/live") => json_response(StatusCode::OK, &json!({"status": "live"})),
        (&Method::GET, "/ready") => ready(&state),
        (&Method::GET, "/metrics") => metrics_text(),
        (&Method::GET, "/config") => config(&state),
        (&Method::GET, "/clusters") => clusters(&state),
        (&Method::GET, "/clusters/events") => crate::upstream::admin::events(&state, &req),
        (&Method::POST, p) if p.starts_with("/clusters/") => match authorize(&state, &req) {
            Err(resp) => *resp,
            Ok(()) => crate::upstream::operator::handle(&state, &req),
        },
        (&Method::POST, "/reload") => match authorize(&state, &req) {
            Err(resp) => *resp,
            Ok(()) => match state.reload("admin_api").await {
                Ok(generation) => json_response(StatusCode::OK, &json!({"result": "ok", "generation": generation})),
                Err(error) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"result": "error", "error": "invalid_config", "message": error}),
                ),
            },
        },
        (_, p) if p.starts_with("/grace/") => crate::grace::admin::handle(&state, req).await,
        (&Method::POST, "/drain") => match authorize(&state, &req) {
            Err(resp) => *resp,
            Ok(()) => client::drain_endpoint(&state),
        },
        (_, p) if crate::chaos::admin::serves(p) => crate::chaos::admin::handle(state.clone(), req).await,
        (_, "/live" | "/ready" | "/metrics" | "/config" | "/clusters" | "/clusters/events" | "/reload" | "/drain") => {
            json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {path}", req.method()),
            )
        }
        (_, p) if p == "/breakers" || p.starts_with("/breakers/") => {
            crate::resilience::admin::handle(&state, req).await
        }
        _ => json_error(StatusCode::NOT_FOUND, "not_found", format!("no admin endpoint {path}")),
    };
    Ok(resp)
}

fn ready(state: &AppState) -> Response<ProxyBody> {
    if state.draining.load(Ordering::SeqCst) {
        json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "draining"}))
    } else if state.ready.load(Ordering::SeqCst) {
        json_response(StatusCode::OK, &json!({"status": "ready"}))
    } else {
        json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "starting"}))
    }
}

fn metrics_text() -> Response<ProxyBody> {
    crate::proxy::publish_in_flight();
    let text = telemetry::render();
    let mut resp = Response::new(full(text));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}

fn config(state: &AppState) -> Response<ProxyBody> {
    let rt = state.runtime.load();
    let mut effective = serde_json::to_value(&*rt.config).unwrap_or_default();
    // The token file path is not a secret, but its content is never shown; say so explicitly.
    if let Some(admin) = effective.get_mut("admin") {
        if admin.get("token_file").is_some_and(|v| !v.is_null()) {
            admin["token"] = json!("<redacted>");
        }
    }
    let last_reload = state.last_reload.lock().ok().and_then(|l| l.clone());
    json_response(
        StatusCode::OK,
        &json!({
            "generation": rt.generation,
            "source": state.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<embedded>".into()),
            "last_reload": last_reload,
            "config": effective,
        }),
    )
}

fn clusters(state: &AppState) -> Response<ProxyBody> {
    let rt = state.runtime.load();
    let clusters: Vec<serde_json::Value> = rt.clusters.values().map(|c| c.snapshot()).collect();
    json_response(StatusCode::OK, &json!({ "generation": rt.generation, "clusters": clusters }))
}

/// Checks the bearer token for a state-changing request. Returns the refusal to send otherwise.
pub fn authorize<B>(state: &AppState, req: &Request<B>) -> Result<(), Box<Response<ProxyBody>>> {
    let config = state.config();
    let Some(path) = config.admin.token_file.as_ref() else {
        return Err(Box::new(json_error(
            StatusCode::FORBIDDEN,
            "admin_token_not_configured",
            "state-changing admin endpoints are disabled: set admin.token_file",
        )));
    };
    let expected = match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            tracing::error!(file = %path.display(), "admin token file is missing or empty; refusing operator actions");
            return Err(Box::new(json_error(
                StatusCode::FORBIDDEN,
                "admin_token_unavailable",
                "the admin token file cannot be read",
            )));
        }
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => {
            Err(Box::new(json_error(StatusCode::UNAUTHORIZED, "invalid_token", "the bearer token is not valid")))
        }
        None => Err(Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "Authorization: Bearer <token> is required",
        ))),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
