//! Provisional receipts: the 202 answer, its signature, and the status endpoint.
//!
//! A receipt is built from the journaled item alone (ids, masked card, amount, institution,
//! times, the card's remaining limits as they were at acceptance) and Ed25519 signatures are
//! deterministic — so the same key asked again gets byte-for-byte the same receipt, and an
//! auditor can verify a printed one offline (`lifeline grace verify`). The receipt says in words
//! that it is not a final settlement.

use http::header::{HeaderValue, CONTENT_TYPE, LOCATION};
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::clock::rfc3339;
use super::engine::Engine;
use super::store::{Item, State};
use super::Engines;
use crate::proxy::body::{full, ProxyBody};
use crate::proxy::respond::json_error;

pub const NOTICE: &str = "PROVISIONAL RECEIPT. This is not a final settlement: the medical-insurance backend \
    was unavailable, so the settlement was recorded offline and will be submitted when the backend is back. \
    Check its status at status_url.";

/// Where callers poll the receipt (on the proxy port).
pub fn status_path(receipt_id: &str) -> String {
    format!("/grace/receipts/{receipt_id}")
}

/// The signed part of a receipt.
pub fn body(engine: &Engine, item: &Item) -> Value {
    json!({
        "type": "lifeline.grace.provisional_receipt",
        "version": 1,
        "receipt_id": item.receipt_id,
        "idempotency_key": item.idem_key,
        "seq": item.seq,
        "policy": engine.name,
        "card": item.card_masked,
        "amount_fen": item.amount_fen,
        "institution": item.institution,
        "reason": item.reason,
        "accepted_at": rfc3339(item.accepted_ms),
        "forward_deadline": rfc3339(item.deadline_ms),
        "remaining_card_limits": {
            "count": item.remaining_count,
            "amount_fen": item.remaining_amount,
        },
        "status_url": status_path(&item.receipt_id),
        "final": false,
        "notice": NOTICE,
    })
}

/// `{"receipt": …, "signature": {alg, key_id, public_key, value}}`, signed over the canonical
/// bytes of `receipt` (serde_json's maps are sorted, output has no whitespace).
pub fn signed(engine: &Engine, item: &Item) -> Value {
    let receipt = body(engine, item);
    let canonical = serde_json::to_vec(&receipt).unwrap_or_default();
    json!({
        "receipt": receipt,
        "signature": {
            "alg": "Ed25519",
            "key_id": engine.signer.key_id,
            "public_key": engine.signer.public_key_b64(),
            "value": engine.signer.sign(&canonical),
        }
    })
}

/// The 202 a caller gets for a journaled settlement (first time or again for the same key).
pub fn accepted(engine: &Engine, item: &Item) -> Response<ProxyBody> {
    let bytes = serde_json::to_vec(&signed(engine, item)).unwrap_or_default();
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = StatusCode::ACCEPTED;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&status_path(&item.receipt_id)) {
        h.insert(LOCATION, v);
    }
    h.insert("grace-status", HeaderValue::from_static("provisional"));
    if let Ok(v) = HeaderValue::from_str(&item.reason) {
        h.insert("grace-reason", v);
    }
    let depth = engine.store.summary().outstanding_count;
    h.insert("grace-queue-depth", HeaderValue::from(depth));
    resp
}

/// The backend's final answer for a settled or declined item, replayed for the same key.
pub fn final_result(item: &Item) -> Option<Response<ProxyBody>> {
    if !matches!(item.state, State::Settled | State::Declined) {
        return None;
    }
    let status = StatusCode::from_u16(u16::try_from(item.final_status?).ok()?).ok()?;
    let mut resp = Response::new(full(item.final_body.clone().unwrap_or_default()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("grace-status", HeaderValue::from_static(item.state.as_str()));
    if let Ok(v) = HeaderValue::from_str(&status_path(&item.receipt_id)) {
        h.insert(LOCATION, v);
    }
    Some(resp)
}

/// `GET /grace/receipts/{id}` on the proxy port: the signed receipt plus where it is now.
pub async fn serve(engines: &Engines, id: &str) -> Response<ProxyBody> {
    let valid = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        return json_error(StatusCode::BAD_REQUEST, "bad_request", "receipt ids are letters, digits and '-'");
    }
    let Some((engine, item)) = engines.find_receipt(id).await else {
        return json_error(StatusCode::NOT_FOUND, "receipt_not_found", format!("no grace receipt {id}"));
    };
    let history = engine.store.history(id.to_string()).await.unwrap_or_default();
    let mut v = signed(&engine, &item);
    v["state"] = json!(item.state);
    v["final"] = json!(item.state.is_terminal());
    v["attempts"] = json!(item.attempts);
    v["updated_at"] = json!(rfc3339(item.updated_ms));
    v["final_status"] = json!(item.final_status);
    v["backend_ref"] = json!(item.backend_ref);
    v["final_response"] = item.final_body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()).into();
    // The first state is implied by the append (no separate row, to keep appends cheap).
    let ambiguous = matches!(item.reason.as_str(), "upstream_timeout" | "upstream_reset" | "deadline_exceeded");
    let first = if ambiguous { "unknown" } else { "journaled" };
    let mut steps = vec![
        json!({"from": null, "to": first, "at": rfc3339(item.accepted_ms), "actor": "grace", "note": item.reason}),
    ];
    steps.extend(
        history
            .iter()
            .map(|t| json!({"from": t.from, "to": t.to, "at": rfc3339(t.at_ms), "actor": t.actor, "note": t.note})),
    );
    v["history"] = json!(steps);
    crate::proxy::respond::json_response(StatusCode::OK, &v)
}

/// Verifies a receipt envelope offline; with `public_key` None, the key embedded in the receipt
/// is used (then compare its `key_id` with the one the insurer published).
pub fn verify(envelope: &Value, public_key: Option<&str>) -> Result<String, String> {
    let receipt = envelope.get("receipt").ok_or("no \"receipt\" object")?;
    let sig = envelope.get("signature").ok_or("no \"signature\" object")?;
    let value = sig.get("value").and_then(Value::as_str).ok_or("no signature value")?;
    let key = match public_key {
        Some(k) => k.to_string(),
        None => sig.get("public_key").and_then(Value::as_str).ok_or("no public key given or embedded")?.to_string(),
    };
    let canonical = serde_json::to_vec(receipt).map_err(|e| e.to_string())?;
    super::crypto::verify(&key, &canonical, value)?;
    Ok(sig.get("key_id").and_then(Value::as_str).unwrap_or("").to_string())
}
