//! Operator endpoints for grace on the admin API.
//!
//! Reads: `GET /grace/status`, `GET /grace/items?state=&policy=&limit=`,
//! `GET /grace/reconciliation?date=YYYY-MM-DD`. Actions (bearer token via
//! [`crate::admin::authorize`], a `reason` required, audit-logged with actor and reason in the
//! journal and the `lifeline::audit` log): `POST /grace/force {on, reason}`,
//! `POST /grace/items/{id}/cancel {reason}`, `POST /grace/items/{id}/resolve {outcome, reason}`
//! (outcome `settled | declined | resubmit`), `POST /grace/drain {action: pause|resume, rate?}`.
//! Every body may carry `policy` (default: all policies, or the one owning the item) and
//! `actor` (default: the `X-Lifeline-Actor` header, else `admin-token`).

use std::collections::HashMap;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::clock::{date_of, now_ms, rfc3339};
use super::engine::Engine;
use super::sqlite::report::item_json;
use super::store::{State, Transition};
use crate::app::AppState;
use crate::config::Rate;
use crate::proxy::body::ProxyBody;
use crate::proxy::respond::{json_error, json_response};

/// Serves `/grace/...` on the admin port.
pub async fn handle(state: &AppState, req: Request<Incoming>) -> Response<ProxyBody> {
    let engines = state.runtime.load().grace.clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let selected: Vec<Arc<Engine>> = match query.get("policy") {
        Some(p) => engines.map.get(p).cloned().into_iter().collect(),
        None => engines.map.values().cloned().collect(),
    };
    if engines.map.is_empty() {
        return json_error(StatusCode::NOT_FOUND, "grace_not_configured", "no grace policy is configured");
    }
    let method = req.method().clone();
    match (method.clone(), path.as_str()) {
        (Method::GET, "/grace/status") => status(&selected).await,
        (Method::GET, "/grace/items") => items(&selected, &query).await,
        (Method::GET, "/grace/reconciliation") => reconciliation(&selected, &query).await,
        (Method::POST, _) => {
            if let Err(resp) = crate::admin::authorize(state, &req) {
                return *resp;
            }
            let actor_header = req.headers().get("x-lifeline-actor").and_then(|v| v.to_str().ok()).map(String::from);
            let body = match read_json(req).await {
                Ok(v) => v,
                Err(resp) => return resp,
            };
            let Some(reason) = body.get("reason").and_then(Value::as_str).filter(|r| !r.trim().is_empty()) else {
                return json_error(StatusCode::BAD_REQUEST, "reason_required", "operator actions need a \"reason\"");
            };
            let actor = body.get("actor").and_then(Value::as_str).map(String::from).or(actor_header);
            let act = Action { actor: actor.unwrap_or_else(|| "admin-token".into()), reason: reason.to_string() };
            let selected = match body.get("policy").and_then(Value::as_str) {
                Some(p) => engines.map.get(p).cloned().into_iter().collect(),
                None => selected,
            };
            action(&path, &selected, &body, act).await
        }
        _ => json_error(StatusCode::NOT_FOUND, "not_found", format!("no grace endpoint {method} {path}")),
    }
}

struct Action {
    actor: String,
    reason: String,
}

impl Action {
    async fn audit(&self, engine: &Engine, action: &str, target: &str) {
        tracing::info!(target: "lifeline::audit", actor = %self.actor, action, target, reason = %self.reason, policy = %engine.name, "operator action");
        if let Err(e) = engine.store.audit(self.actor.clone(), action.into(), target.into(), self.reason.clone()).await
        {
            tracing::error!(error = %e, "cannot write the audit record");
        }
    }
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Response<ProxyBody>> {
    let bytes = http_body_util::Limited::new(req.into_body(), 64 << 10)
        .collect()
        .await
        .map_err(|_| json_error(StatusCode::BAD_REQUEST, "bad_request", "cannot read the request body"))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, "bad_request", format!("body is not JSON: {e}")))
}

async fn status(engines: &[Arc<Engine>]) -> Response<ProxyBody> {
    let mut out = serde_json::Map::new();
    for e in engines {
        let s = e.store.summary();
        let forced = e.forced();
        let health = e.health();
        let pending = s.outstanding_count.saturating_sub(s.by_state.get("needs_review").copied().unwrap_or(0));
        let rate = e.drain_rate.lock().map(|r| *r).unwrap_or(0.0);
        let paused = e.control.lock().map(|c| c.paused).unwrap_or(false);
        let mode = if forced.is_some() {
            "forced"
        } else if matches!(health, super::Health::Down { .. }) {
            "backend_unavailable"
        } else if pending > 0 {
            "draining"
        } else {
            "normal"
        };
        let last = e.last_trigger.lock().ok().and_then(|t| t.clone());
        out.insert(
            e.name.clone(),
            json!({
                "mode": mode,
                "reason": forced.clone().or_else(|| last.as_ref().map(|t| t.0.clone())),
                "last_grace_at": last.map(|t| rfc3339(t.1)),
                "backend": health.label(),
                "paused": paused,
                "depth": s.outstanding_count,
                "by_state": s.by_state,
                "outstanding_fen": s.outstanding_fen,
                "outstanding_by_institution": s.by_institution.iter()
                    .map(|(k, v)| (k.clone(), json!({"count": v.0, "amount_fen": v.1}))).collect::<serde_json::Map<_, _>>(),
                "oldest_age_seconds": s.oldest_accepted_ms.map(|ms| (now_ms() - ms).max(0) / 1000),
                "drain_rate_per_second": (rate * 100.0).round() / 100.0,
                "forward_rate_limit_per_second": e.pacer.rate(),
                "eta_seconds": if rate > 0.01 { Some((pending as f64 / rate).ceil() as u64) } else { None },
                "journal_bytes": s.journal_bytes,
                "journal_error": s.journal_error,
                "receipt_key_id": e.signer.key_id,
                "receipt_public_key": e.signer.public_key_b64(),
            }),
        );
    }
    json_response(StatusCode::OK, &json!({ "policies": out }))
}

async fn items(engines: &[Arc<Engine>], q: &HashMap<String, String>) -> Response<ProxyBody> {
    let state = match q.get("state") {
        Some(s) => match State::parse(s) {
            Some(st) => Some(st),
            None => {
                let known: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_state",
                    format!("state must be one of {}", known.join(", ")),
                );
            }
        },
        None => None,
    };
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(1000usize).min(10_000);
    let mut all = Vec::new();
    for e in engines {
        match e.store.list(state, limit).await {
            Ok(items) => all.extend(items.iter().map(item_json)),
            Err(err) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "journal_error", err.to_string()),
        }
    }
    json_response(StatusCode::OK, &json!({ "count": all.len(), "items": all }))
}

async fn reconciliation(engines: &[Arc<Engine>], q: &HashMap<String, String>) -> Response<ProxyBody> {
    let date = q.get("date").cloned().unwrap_or_else(|| date_of(now_ms()));
    let mut out = serde_json::Map::new();
    for e in engines {
        match e.store.reconciliation(date.clone()).await {
            Ok(r) => {
                out.insert(e.name.clone(), r);
            }
            Err(err) => return json_error(StatusCode::BAD_REQUEST, "bad_request", err.to_string()),
        }
    }
    json_response(StatusCode::OK, &json!({ "date": date, "policies": out }))
}

async fn action(path: &str, engines: &[Arc<Engine>], body: &Value, act: Action) -> Response<ProxyBody> {
    match path {
        "/grace/force" => {
            let Some(on) = body.get("on").and_then(Value::as_bool) else {
                return json_error(StatusCode::BAD_REQUEST, "bad_request", "\"on\": true|false is required");
            };
            for e in engines {
                if let Err(err) = e.set_forced(on.then(|| act.reason.clone())).await {
                    return json_error(StatusCode::INTERNAL_SERVER_ERROR, "journal_error", err);
                }
                act.audit(e, if on { "force_on" } else { "force_off" }, "policy").await;
            }
            json_response(
                StatusCode::OK,
                &json!({"forced": on, "policies": engines.iter().map(|e| &e.name).collect::<Vec<_>>()}),
            )
        }
        "/grace/drain" => drain(engines, body, act).await,
        p => match p.strip_prefix("/grace/items/").and_then(|r| r.rsplit_once('/')) {
            Some((id, verb @ ("cancel" | "resolve"))) => item_action(engines, id, verb, body, act).await,
            _ => json_error(StatusCode::NOT_FOUND, "not_found", format!("no grace action {path}")),
        },
    }
}

async fn drain(engines: &[Arc<Engine>], body: &Value, act: Action) -> Response<ProxyBody> {
    let action = body.get("action").and_then(Value::as_str).unwrap_or("");
    let rate = match body.get("rate").and_then(Value::as_str).map(Rate::parse) {
        Some(Ok(r)) if r.count > 0 => Some(r.per_second()),
        Some(_) => return json_error(StatusCode::BAD_REQUEST, "bad_request", "rate must look like 20/s"),
        None => None,
    };
    if !matches!(action, "pause" | "resume" | "rate") {
        return json_error(StatusCode::BAD_REQUEST, "bad_request", "action must be pause, resume or rate");
    }
    for e in engines {
        if let Ok(mut c) = e.control.lock() {
            match action {
                "pause" => c.paused = true,
                "resume" => c.paused = false,
                _ => {}
            }
            if rate.is_some() {
                c.rate = rate;
            }
        }
        e.wake.notify_one();
        act.audit(e, &format!("drain_{action}"), "policy").await;
    }
    json_response(StatusCode::OK, &json!({"action": action, "rate_per_second": rate}))
}

async fn item_action(engines: &[Arc<Engine>], id: &str, verb: &str, body: &Value, act: Action) -> Response<ProxyBody> {
    let mut found = None;
    for e in engines {
        if let Ok(Some(item)) = e.store.get(id.to_string()).await {
            found = Some((e.clone(), item));
            break;
        }
    }
    let Some((engine, item)) = found else {
        return json_error(StatusCode::NOT_FOUND, "receipt_not_found", format!("no grace item {id}"));
    };
    let mut t = Transition {
        receipt_id: id.to_string(),
        actor: act.actor.clone(),
        note: act.reason.clone(),
        ..Default::default()
    };
    let outcome = body.get("outcome").and_then(Value::as_str).unwrap_or("");
    match (verb, outcome) {
        ("cancel", _) => {
            // Only before anything may have reached the backend (or from review, by decision).
            t.from = vec![State::Journaled, State::RetryWait, State::NeedsReview];
            t.to = Some(State::Cancelled);
        }
        ("resolve", "settled" | "declined") => {
            t.from = vec![State::NeedsReview, State::Unknown, State::RetryWait, State::Journaled];
            t.to = Some(if outcome == "settled" { State::Settled } else { State::Declined });
            t.backend_ref = body.get("backend_ref").and_then(Value::as_str).map(String::from);
        }
        ("resolve", "resubmit") => {
            t.from = vec![State::NeedsReview];
            // It may have been sent before: the forwarder asks the backend first, never resends blind.
            t.to = Some(State::Unknown);
            t.reset_attempts = true;
            t.next_attempt_ms = Some(0);
            let max_age = engine.limits().max_age.as_millis() as i64;
            t.deadline_ms = Some(now_ms() + max_age);
        }
        _ => {
            return json_error(StatusCode::BAD_REQUEST, "bad_request", "outcome must be settled, declined or resubmit")
        }
    }
    match engine.store.transition(t.clone()).await {
        Ok(true) => {
            act.audit(&engine, &format!("item_{verb}_{}", t.to.map(|s| s.as_str()).unwrap_or("")), id).await;
            engine.wake.notify_one();
            json_response(StatusCode::OK, &json!({"receipt_id": id, "from": item.state, "to": t.to}))
        }
        Ok(false) => json_error(
            StatusCode::CONFLICT,
            "invalid_state",
            format!("item {id} is {} and cannot be {verb}ed now", item.state.as_str()),
        ),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "journal_error", e.to_string()),
    }
}
