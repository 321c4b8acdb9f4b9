//! `/chaos/faults` on the admin API.
//!
//! ```text
//! POST   /chaos/faults        add a fault (JSON FaultSpec; `ttl` required)       token
//! GET    /chaos/faults        the faults in force, with time left and hit counts
//! DELETE /chaos/faults/{id}   remove one fault                                   token
//! DELETE /chaos/faults        remove every fault at once (drill abort)          token
//! ```
//! Adding needs `chaos.enabled: true`; removing never does, so a reload that turns chaos off
//! can never leave an operator unable to stop a fault.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::fault::{self, FaultSpec};
use super::registry::AddError;
use crate::admin::authorize;
use crate::app::AppState;
use crate::proxy::body::ProxyBody;
use crate::proxy::respond::{json_error, json_response};

/// Largest accepted fault document.
const MAX_BODY: usize = 64 << 10;

/// True for paths this module serves.
pub fn serves(path: &str) -> bool {
    path == "/chaos/faults" || path.starts_with("/chaos/faults/")
}

/// Serves `/chaos/faults[/{id}]`.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    let id = path.strip_prefix("/chaos/faults/").filter(|s| !s.is_empty()).map(str::to_string);
    match (req.method().clone(), id) {
        (Method::GET, None) => list(&state),
        (Method::POST, None) => match authorize(&state, &req) {
            Err(resp) => *resp,
            Ok(()) => add(&state, req).await,
        },
        (Method::DELETE, None) => match authorize(&state, &req) {
            Err(resp) => *resp,
            Ok(()) => {
                let removed = state.runtime.load().faults.clear();
                json_response(StatusCode::OK, &json!({ "removed": removed }))
            }
        },
        (Method::DELETE, Some(id)) => match authorize(&state, &req) {
            Err(resp) => *resp,
            Ok(()) if state.runtime.load().faults.remove(&id) => {
                json_response(StatusCode::OK, &json!({ "removed": 1, "id": id }))
            }
            Ok(()) => json_error(StatusCode::NOT_FOUND, "no_such_fault", format!("no active fault {id:?}")),
        },
        (m, _) => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{m} is not allowed on {path}"))
        }
    }
}

fn list(state: &AppState) -> Response<ProxyBody> {
    let rt = state.runtime.load();
    let now = tokio::time::Instant::now();
    let faults: Vec<serde_json::Value> = rt.faults.active().iter().map(|f| f.describe(now)).collect();
    json_response(StatusCode::OK, &json!({ "enabled": rt.config.chaos.enabled, "faults": faults }))
}

async fn add(state: &AppState, req: Request<Incoming>) -> Response<ProxyBody> {
    let config = state.config();
    if !config.chaos.enabled {
        return json_error(
            StatusCode::FORBIDDEN,
            "chaos_disabled",
            "fault injection is off: set chaos.enabled: true in the config to allow it",
        );
    }
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "a fault is at most 64KiB of JSON")
        }
    };
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let spec: FaultSpec = match serde_path_to_error::deserialize(&mut de) {
        Ok(s) => s,
        Err(e) => {
            let at = e.path().to_string();
            return json_error(StatusCode::BAD_REQUEST, "invalid_fault", format!("{at}: {}", e.into_inner()));
        }
    };
    if let Err(errors) = fault::validate(&spec, &config) {
        return json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({ "error": "invalid_fault", "message": errors.join("; "), "errors": errors }),
        );
    }
    let rt = state.runtime.load();
    match rt.faults.add(spec, config.chaos.max_faults) {
        Ok(f) => json_response(StatusCode::CREATED, &f.describe(tokio::time::Instant::now())),
        Err(AddError::TooMany(n)) => json_error(
            StatusCode::CONFLICT,
            "too_many_faults",
            format!("{n} faults are already active (chaos.max_faults)"),
        ),
    }
}
