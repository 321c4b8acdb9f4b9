//! The simulated services: their contracts (idempotency, declines, bad input), each fault mode as
//! seen through the sidecar, and the ledger surviving `kill -9`.

mod contract;
mod demo;
mod faults;
mod persistence;

use lifeline::sim::fixture::EXAMPLE_ACTIVE;
use serde_json::{json, Value};

/// A settlement body for `card` (the amount makes bodies differ when needed).
pub fn settlement(card: &str, amount_fen: i64) -> Value {
    json!({"card_no": card, "hospital_id": "H001", "visit_id": "V001", "amount_fen": amount_fen,
           "items": [{"code": "A01", "qty": 1, "price_fen": amount_fen}]})
}

pub fn active_settlement(amount_fen: i64) -> Value {
    settlement(EXAMPLE_ACTIVE, amount_fen)
}
