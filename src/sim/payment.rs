//! The simulated payment service: medical-insurance settlements with idempotency keys.
//!
//! `POST /payment/v1/settlements` needs an `Idempotency-Key` header (1-128 visible ASCII
//! characters; 400 `missing_idempotency_key` without) and a JSON body
//! `{"card_no", "hospital_id", "visit_id", "amount_fen", "items": [...]}` where `amount_fen` is an
//! integer in 1..=100,000,000 and `items` is optional (an array). Answers:
//!
//! * 201 `{"settlement_id", "status": "settled", "amount_fen", "fund_paid_fen", "self_paid_fen",
//!   "applied_at"}`, after the settlement is on the ledger (fsync'd when there is a ledger file);
//! * the same 201 body again, with `Idempotent-Replayed: true`, for a repeat of the same key and
//!   the same body (compared by a hash of the canonical JSON, so key order and spacing do not
//!   matter) — also after a restart on the same ledger file;
//! * 422 `idempotency_key_reused` for the same key with a different body;
//! * 409 `idempotency_key_in_flight` only if the first request with that key is still being
//!   written after 30 s (duplicates normally wait for it and get its answer);
//! * 402 `{"error": "declined", "reason": card_lost|card_frozen|insufficient_fund_balance}` for a
//!   business decline. A decline claims nothing: the key stays free and a retry is judged afresh;
//! * 500 `ledger_write_failed` if the ledger cannot be written (nothing was settled).
//!
//! `GET /payment/v1/settlements/{settlement_id}` and `GET /payment/v1/settlements?idempotency_key=K`
//! answer 200 with the ledger entry or 404 `not_found`: the question a forwarder asks after an
//! ambiguous failure ("did this already happen?") before it resends.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::book::{Outcome, Settle};
use super::fixture::{self, MAX_AMOUNT_FEN};
use super::ledger::LedgerEntry;
use super::request::{self, query_param, read_json, string_field, Reject};
use super::service::Shared;
use crate::proxy::body::ProxyBody;
use crate::proxy::respond::{json_error, json_response};

pub(crate) use super::book::PaymentState;

const SETTLEMENTS: &str = "/payment/v1/settlements";
const MAX_ITEMS: usize = 1000;

pub(crate) async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let Some(payment) = &shared.payment else {
        return request::not_routed(&method, &path, false);
    };
    if path == SETTLEMENTS {
        return match method {
            Method::POST => settle(shared, req).await,
            Method::GET => match query_param(req.uri(), "idempotency_key") {
                Some(key) => found(payment.by_key(&key), "no settlement with this idempotency key"),
                None => json_error(StatusCode::BAD_REQUEST, "missing_query", "use ?idempotency_key=K"),
            },
            _ => request::not_routed(&method, &path, true),
        };
    }
    match path.strip_prefix("/payment/v1/settlements/") {
        Some(id) if !id.contains('/') && method == Method::GET => {
            found(payment.by_id(id), "no settlement with this id")
        }
        Some(id) if !id.contains('/') => request::not_routed(&method, &path, true),
        _ => request::not_routed(&method, &path, false),
    }
}

fn found(entry: Option<Arc<LedgerEntry>>, missing: &str) -> Response<ProxyBody> {
    match entry {
        Some(e) => json_response(StatusCode::OK, &serde_json::to_value(&*e).unwrap_or(Value::Null)),
        None => json_error(StatusCode::NOT_FOUND, "not_found", missing),
    }
}

async fn settle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let key = match idempotency_key(req.headers()) {
        Ok(k) => k,
        Err(reject) => return reject.response(),
    };
    let settle = match read_json(req).await.and_then(|body| validate(key, &body)) {
        Ok(s) => s,
        Err(reject) => return reject.response(),
    };
    // Its own task: a caller hanging up must not abort a settlement between claim and publish.
    let shared = shared.clone();
    let task = tokio::spawn(async move {
        match &shared.payment {
            Some(p) => Some(p.settle(&shared.world, &settle).await),
            None => None,
        }
    });
    match task.await {
        Ok(Some(outcome)) => respond(outcome),
        _ => json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the settlement task failed"),
    }
}

fn respond(outcome: Outcome) -> Response<ProxyBody> {
    match outcome {
        Outcome::Settled(e) => json_response(StatusCode::CREATED, &e.response_body()),
        Outcome::Replayed(e) => {
            let mut resp = json_response(StatusCode::CREATED, &e.response_body());
            resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            resp
        }
        Outcome::Conflict(e) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"error": "idempotency_key_reused", "settlement_id": e.settlement_id,
                    "message": "this idempotency key was used with a different request body"}),
        ),
        Outcome::ConflictInFlight => json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this idempotency key is in use by a request with a different body",
        ),
        Outcome::StillInFlight => json_error(
            StatusCode::CONFLICT,
            "idempotency_key_in_flight",
            "a request with this idempotency key is still being processed",
        ),
        Outcome::Declined(d) => json_response(
            StatusCode::PAYMENT_REQUIRED,
            &json!({"error": "declined", "reason": d.reason(), "message": format!("settlement declined: {}", d.reason())}),
        ),
        Outcome::WriteFailed(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ledger_write_failed",
            format!("the ledger could not be written, nothing was settled: {e}"),
        ),
    }
}

fn idempotency_key(headers: &http::HeaderMap) -> Result<String, Reject> {
    let Some(v) = headers.get("idempotency-key") else {
        return Err(Reject::bad("missing_idempotency_key", "settlements need an Idempotency-Key header"));
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) => Ok(k.to_string()),
        _ => Err(Reject::bad("invalid_idempotency_key", "Idempotency-Key must be 1 to 128 visible ASCII characters")),
    }
}

fn validate(key: String, body: &Value) -> Result<Settle, Reject> {
    let card = string_field(body, "card_no", 64)?;
    let card = fixture::parse_card_no(card).ok_or_else(super::auth::invalid_card)?;
    let hospital_id = string_field(body, "hospital_id", 64)?.to_string();
    let visit_id = string_field(body, "visit_id", 64)?.to_string();
    let amount_fen = match body.get("amount_fen") {
        Some(v) => v.as_i64().filter(|a| (1..=MAX_AMOUNT_FEN).contains(a)).ok_or_else(|| {
            Reject::bad(
                "invalid_amount",
                format!("amount_fen must be an integer number of fen from 1 to {MAX_AMOUNT_FEN}"),
            )
        })?,
        None => return Err(Reject::bad("missing_field", "amount_fen is required")),
    };
    let items = match body.get("items") {
        None => Value::Array(Vec::new()),
        Some(Value::Array(a)) if a.len() <= MAX_ITEMS => Value::Array(a.clone()),
        Some(_) => {
            let msg = format!("items must be an array of at most {MAX_ITEMS} entries");
            return Err(Reject::bad("invalid_field", msg));
        }
    };
    let canonical = canonical(&json!({
        "card_no": card, "hospital_id": hospital_id, "visit_id": visit_id, "amount_fen": amount_fen, "items": items,
    }));
    let request_sha256 = hex::encode(Sha256::digest(canonical.as_bytes()));
    Ok(Settle { key, card, hospital_id, visit_id, amount_fen, request_sha256 })
}

/// JSON text with object keys sorted at every level, whatever map order serde_json was built with.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", Value::from(k.as_str()), canonical(&m[k.as_str()]))).collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":[{"y":2,"x":"s"}]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "a": [ {"x":"s","y":2} ], "b": 1 }"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(canonical(&a), r#"{"a":[{"x":"s","y":2}],"b":1}"#);
    }

    #[test]
    fn validation_names_the_problem() {
        let ok = json!({"card_no": fixture::EXAMPLE_ACTIVE, "hospital_id": "H1", "visit_id": "V1", "amount_fen": 100});
        assert!(validate("k".into(), &ok).is_ok());
        for (patch, want) in [
            (json!({"amount_fen": 1.5}), StatusCode::BAD_REQUEST),
            (json!({"amount_fen": 0}), StatusCode::BAD_REQUEST),
            (json!({"amount_fen": "100"}), StatusCode::BAD_REQUEST),
            (json!({"card_no": "123"}), StatusCode::BAD_REQUEST),
            (json!({"visit_id": ""}), StatusCode::BAD_REQUEST),
            (json!({"items": {}}), StatusCode::BAD_REQUEST),
        ] {
            let mut body = ok.clone();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            assert_eq!(validate("k".into(), &body).unwrap_err().status, want, "{patch}");
        }
    }
}
