//! Reading a settlement request: headers, the body fields the policy points at, the journal item.
//!
//! Bad input is the caller's to fix, so every refusal is a 400 that names the header or field.
//! The payload kept for forwarding is the headers and body exactly as received (minus
//! per-connection headers), sealed with the body key when one is configured.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http::HeaderMap;
use serde_json::Value;

use super::clock::now_ms;
use super::config::GracePolicy;
use super::engine::Engine;
use super::store::{NewItem, State};
use crate::error::{BoxError, ErrorKind, LifelineError};
use crate::telemetry::redact::mask_card;

/// The fields grace needs from a settlement body.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub card_no: String,
    pub amount_fen: i64,
    pub hospital_id: String,
}

fn bad(msg: impl Into<String>) -> BoxError {
    LifelineError::new(ErrorKind::BadRequest, msg).boxed()
}

/// The `Idempotency-Key`: required, 1–255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, BoxError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Err(LifelineError::new(
            ErrorKind::IdempotencyKeyMissing,
            "settlement requests must carry an Idempotency-Key header",
        )
        .boxed());
    };
    let ok = !v.is_empty() && v.len() <= 255 && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
    match v.to_str() {
        Ok(s) if ok => Ok(s.to_string()),
        _ => Err(bad("Idempotency-Key must be 1 to 255 visible ASCII characters")),
    }
}

/// `Grace-Mode: require-online` disables grace for this request; `prefer-online` is the default.
pub fn require_online(headers: &HeaderMap) -> Result<bool, BoxError> {
    match headers.get("grace-mode").map(|v| v.to_str().map(|s| s.trim().to_ascii_lowercase())) {
        None => Ok(false),
        Some(Ok(m)) if m == "require-online" => Ok(true),
        Some(Ok(m)) if m == "prefer-online" => Ok(false),
        _ => Err(bad("Grace-Mode must be require-online or prefer-online")),
    }
}

/// Finds card number, amount (integer fen) and institution by the policy's JSON pointers.
pub fn settlement(policy: &GracePolicy, body: &[u8]) -> Result<Settlement, BoxError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("settlement body is not JSON: {e}")))?;
    let text = |ptr: &str, name: &str| -> Result<String, BoxError> {
        match v.pointer(ptr) {
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 64 => Ok(s.clone()),
            Some(Value::Number(n)) if n.is_u64() => Ok(n.to_string()),
            Some(_) => Err(bad(format!("field {ptr} ({name}) must be a non-empty string of at most 64 characters"))),
            None => Err(bad(format!("settlement body lacks {ptr} ({name})"))),
        }
    };
    let card_no = text(&policy.card_no, "card number")?;
    let hospital_id = text(&policy.hospital_id, "institution")?;
    let amount_fen = match v.pointer(&policy.amount_fen) {
        None => return Err(bad(format!("settlement body lacks {} (amount in fen)", policy.amount_fen))),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(a) if a > 0 => a,
            _ => {
                return Err(bad(format!(
                    "field {} must be a positive integer amount in fen (no decimals)",
                    policy.amount_fen
                )))
            }
        },
        Some(_) => return Err(bad(format!("field {} must be an integer amount in fen", policy.amount_fen))),
    };
    Ok(Settlement { card_no, amount_fen, hospital_id })
}

/// Headers that belong to this hop, not to the settlement.
fn forwardable(name: &str) -> bool {
    !matches!(name, "host" | "content-length" | "grace-mode" | "x-request-id" | "x-lifeline-timeout-ms")
        && !name.starts_with("x-forwarded-")
}

/// The journal item for a request grace takes.
#[allow(clippy::too_many_arguments)]
pub fn new_item(
    engine: &Engine,
    route: &str,
    parts: &http::request::Parts,
    body: &[u8],
    key: String,
    fingerprint: [u8; 32],
    card_ref: String,
    s: &Settlement,
    reason: &str,
    state: State,
) -> Result<NewItem, String> {
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(k, _)| forwardable(k.as_str()))
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
        .collect();
    let plain = serde_json::to_vec(&serde_json::json!({ "headers": headers, "body": B64.encode(body) }))
        .map_err(|e| e.to_string())?;
    let receipt_id = new_receipt_id();
    let (payload, encrypted) = match &engine.cipher {
        Some(c) => (c.seal(&receipt_id, &plain)?, true),
        None => (plain, false),
    };
    let now = now_ms();
    let max_age = i64::try_from(engine.limits().max_age.as_millis()).unwrap_or(i64::MAX / 2);
    // A request that may still be in progress at the backend is asked about only after a
    // probe interval, so the query does not race the original and miss it.
    let settle_time = engine.policy().forward.probe_interval.as_millis() as i64;
    let next_attempt_ms = if state == State::Unknown { now + settle_time } else { 0 };
    Ok(NewItem {
        receipt_id,
        idem_key: key,
        fingerprint,
        policy: engine.name.clone(),
        route: route.to_string(),
        card_ref,
        card_masked: mask_card(&s.card_no),
        institution: s.hospital_id.clone(),
        amount_fen: s.amount_fen,
        reason: reason.to_string(),
        state,
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into()),
        payload,
        encrypted,
        accepted_ms: now,
        deadline_ms: now.saturating_add(max_age),
        next_attempt_ms,
    })
}

/// The stored headers and body of an item, opened with the body key if sealed.
/// Headers and body of a journaled request.
pub type Payload = (Vec<(String, String)>, Vec<u8>);

pub fn open_payload(engine: &Engine, item: &super::store::Item) -> Result<Payload, String> {
    let plain = if item.encrypted {
        engine
            .cipher
            .as_ref()
            .ok_or("item is encrypted but no body_key_file is configured")?
            .open(&item.receipt_id, &item.payload)?
    } else {
        item.payload.clone()
    };
    let v: Value = serde_json::from_slice(&plain).map_err(|e| format!("journaled payload is not readable: {e}"))?;
    let headers = v
        .get("headers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter().filter_map(|p| Some((p.get(0)?.as_str()?.to_string(), p.get(1)?.as_str()?.to_string()))).collect()
        })
        .unwrap_or_default();
    let body = v.get("body").and_then(Value::as_str).map(|b| B64.decode(b)).transpose().map_err(|e| e.to_string())?;
    Ok((headers, body.unwrap_or_default()))
}

/// A 128-bit id in UUID text form, laid out as UUIDv7 (RFC 9562): 48 bits of Unix milliseconds,
/// then 74 random bits. Time-ordered ids go in at the end of the journal's `receipt_id` index,
/// so an append dirties one index page per group commit instead of one per item.
pub fn new_receipt_id() -> String {
    let mut b: [u8; 16] = rand::random();
    let ms = u64::try_from(crate::grace::clock::now_ms()).unwrap_or(0);
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::new_receipt_id;

    #[tokio::test]
    async fn receipt_ids_are_uuid_v7_and_ordered_by_time() {
        let a = new_receipt_id();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let b = new_receipt_id();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "7", "version nibble: {a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "variant: {a}");
        assert!(a < b, "{a} sorts before the later {b}");
        assert_ne!(new_receipt_id(), new_receipt_id());
    }
}
