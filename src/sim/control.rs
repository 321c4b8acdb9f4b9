//! The `/sim/*` control endpoints: read and set fault modes, read the payment ledger.
//!
//! They bypass the fault gate: an operator must be able to heal a service that hangs or fails
//! every request. A `down` service has no listener, so its mode is changed through a sibling
//! started in the same process (`{"service": "payment", ...}`), the `--control` port of
//! `lifeline sim`, or the library handle.

use std::sync::atomic::Ordering;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::mode::Mode;
use super::payment::PaymentState;
use super::request::{query_param, read_json};
use super::service::Shared;
use super::Service;
use crate::config::Dur;
use crate::proxy::body::{full, ProxyBody};
use crate::proxy::respond::{json_error, json_response};

/// `/sim/mode` and `/sim/ledger`. `default` is the service the request arrived at (none on the
/// control port).
pub(crate) async fn control(shared: &Shared, default: Option<Service>, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/sim/mode") => {
            let modes: serde_json::Map<String, Value> = shared
                .services
                .iter()
                .map(|(s, c)| (s.as_str().to_string(), Value::from(c.mode().to_string())))
                .collect();
            let in_flight: serde_json::Map<String, Value> = shared
                .services
                .iter()
                .map(|(s, c)| (s.as_str().to_string(), Value::from(c.in_flight.load(Ordering::Relaxed))))
                .collect();
            json_response(StatusCode::OK, &json!({ "modes": modes, "in_flight": in_flight }))
        }
        (Method::POST, "/sim/mode") => match read_json(req).await {
            Ok(body) => set_mode(shared, default, &body),
            Err(reject) => reject.response(),
        },
        (Method::GET, "/sim/ledger") => match &shared.payment {
            Some(p) => ledger_text(p, query_param(req.uri(), "from").as_deref()),
            None => json_error(StatusCode::NOT_FOUND, "no_ledger", "the payment simulator does not run here"),
        },
        (_, "/sim/mode" | "/sim/ledger") => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{} {path}", req.method()))
        }
        _ => json_error(StatusCode::NOT_FOUND, "not_found", format!("no simulator endpoint {path}")),
    }
}

fn set_mode(shared: &Shared, default: Option<Service>, body: &Value) -> Response<ProxyBody> {
    let bad = |msg: String| json_error(StatusCode::BAD_REQUEST, "invalid_mode", msg);
    let service = match body.get("service") {
        None => default,
        Some(Value::String(s)) => match Service::parse(s) {
            Ok(s) => Some(s),
            Err(e) => return bad(e),
        },
        Some(_) => return bad("service must be a string".into()),
    };
    let Some(service) = service else { return bad("name the service: {\"service\": \"payment\", ...}".into()) };
    let Some(cell) = shared.services.get(&service) else {
        return json_error(StatusCode::NOT_FOUND, "unknown_service", format!("{service} does not run here"));
    };
    let mode = match body.get("mode").and_then(Value::as_str).map(Mode::parse) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return bad(e),
        None => return bad("expected {\"mode\": \"healthy|slow:..|errors:..|hang|flap:..|down\"}".into()),
    };
    let duration = match body.get("for").map(|v| v.as_str().map(Dur::parse)) {
        None => None,
        Some(Some(Ok(d))) => Some(d.0),
        Some(Some(Err(e))) => return bad(e),
        Some(None) => return bad("for must be a duration string such as \"10s\"".into()),
    };
    cell.set_mode(mode.clone(), duration);
    json_response(StatusCode::OK, &json!({"service": service.as_str(), "mode": mode.to_string()}))
}

fn ledger_text(p: &PaymentState, from: Option<&str>) -> Response<ProxyBody> {
    let Ok(from) = from.unwrap_or("0").parse::<usize>() else {
        return json_error(StatusCode::BAD_REQUEST, "invalid_query", "from must be a non-negative integer");
    };
    let mut out = Vec::new();
    for e in p.entries().iter().skip(from) {
        if serde_json::to_writer(&mut out, e).is_ok() {
            out.push(b'\n');
        }
    }
    let mut resp = Response::new(full(out));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    resp
}
