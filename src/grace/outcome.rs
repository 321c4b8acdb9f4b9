//! Recording what a forward learned: the compare-and-set transitions of the forwarder.
//!
//! Terminal answers (settled, declined) record the backend's status, body and reference; failed
//! attempts back off with equal jitter and give up to needs_review after `forward.max_attempts`;
//! NotSent costs no attempt. Errors are masked before they are stored (invariant 10).

use std::time::Duration;

use http::StatusCode;

use super::clock::now_ms;
use super::engine::Engine;
use super::store::{Item, State, Transition};
use crate::telemetry::names;

pub(super) fn backoff(engine: &Engine, item: &Item) -> Duration {
    let fwd = engine.policy().forward.clone();
    let exp = fwd.backoff.saturating_mul(1u32 << item.attempts.clamp(0, 16) as u32).min(fwd.max_backoff);
    // Equal jitter: half fixed, half random, so a fleet of sidecars does not retry in step.
    exp / 2 + exp.mul_f64(rand::random::<f64>() / 2.0)
}

pub(super) async fn cas(engine: &Engine, id: &str, from: &[State], to: State, note: &str) -> bool {
    let t = Transition {
        receipt_id: id.into(),
        from: from.to_vec(),
        to: Some(to),
        actor: "forwarder".into(),
        note: note.into(),
        ..Default::default()
    };
    engine.store.transition(t).await.unwrap_or(false)
}

fn backend_ref(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    ["/settlement_id", "/setl_id", "/id"].iter().find_map(|p| match v.pointer(p)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

pub(super) async fn finish(
    engine: &Engine,
    item: &Item,
    from: State,
    to: State,
    status: StatusCode,
    body: String,
    note: &str,
) {
    let t = Transition {
        receipt_id: item.receipt_id.clone(),
        from: vec![from],
        to: Some(to),
        actor: "forwarder".into(),
        note: note.into(),
        add_attempt: from == State::Forwarding,
        final_status: Some(i64::from(status.as_u16())),
        backend_ref: backend_ref(&body),
        final_body: Some(body),
        ..Default::default()
    };
    if engine.store.transition(t).await.unwrap_or(false) {
        engine.forwarded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(names::GRACE_FORWARDED_TOTAL, "policy" => engine.name.clone(), "outcome" => to.as_str())
            .increment(1);
    }
}

/// A failed attempt: wait and try again, or give up to needs_review after `max_attempts`.
pub(super) async fn retry(
    engine: &Engine,
    item: &Item,
    from: State,
    to: State,
    after: Option<Duration>,
    error: String,
) {
    let max = i64::from(engine.policy().forward.max_attempts);
    let (to, outcome, note) = if item.attempts + 1 >= max {
        (State::NeedsReview, "needs_review", format!("gave up after {max} attempts: {error}"))
    } else {
        (to, if to == State::Unknown { "unknown" } else { "retry" }, String::new())
    };
    let next = now_ms() + after.map(|d| d.as_millis() as i64).unwrap_or(0);
    let t = Transition {
        receipt_id: item.receipt_id.clone(),
        from: vec![from],
        to: Some(to),
        actor: "forwarder".into(),
        note,
        add_attempt: true,
        next_attempt_ms: Some(next),
        last_error: Some(crate::telemetry::redact::mask(&error).into_owned()),
        ..Default::default()
    };
    let _ = engine.store.transition(t).await;
    metrics::counter!(names::GRACE_FORWARDED_TOTAL, "policy" => engine.name.clone(), "outcome" => outcome).increment(1);
}

/// Not sent: the backend is down. Costs no attempt; the item waits for the next canary.
pub(super) async fn retry_not_sent(engine: &Engine, item: &Item, from: State, to: State, error: String) {
    let probe = engine.policy().forward.probe_interval;
    let t = Transition {
        receipt_id: item.receipt_id.clone(),
        from: vec![from],
        to: Some(to),
        actor: "forwarder".into(),
        next_attempt_ms: Some(now_ms() + probe.as_millis() as i64),
        last_error: Some(crate::telemetry::redact::mask(&error).into_owned()),
        ..Default::default()
    };
    let _ = engine.store.transition(t).await;
    metrics::counter!(names::GRACE_FORWARDED_TOTAL, "policy" => engine.name.clone(), "outcome" => "not_sent")
        .increment(1);
}

/// An item that cannot be sent at all (unreadable payload) waits for an operator.
pub(super) async fn park(engine: &Engine, item: &Item, from: State, error: &str) {
    tracing::error!(receipt = %item.receipt_id, error, "grace item cannot be forwarded; needs review");
    let t = Transition {
        receipt_id: item.receipt_id.clone(),
        from: vec![from],
        to: Some(State::NeedsReview),
        actor: "forwarder".into(),
        note: error.into(),
        last_error: Some(error.into()),
        ..Default::default()
    };
    let _ = engine.store.transition(t).await;
}
