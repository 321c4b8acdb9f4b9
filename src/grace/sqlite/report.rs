//! Read-only views of a journal: item lists, histories, status and the reconciliation report.
//!
//! These take a plain `&Connection`, so the admin API (through the store's reader pool) and the
//! offline CLI (`lifeline grace … --db FILE`, on a copied file while the pod is down) print the
//! very same figures.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};
use serde_json::{json, Value};

use super::schema::{self, ITEM_COLS, OUTSTANDING};
use crate::grace::clock::{day_bounds, now_ms, rfc3339};
use crate::grace::store::{Item, State, StoreError, TransitionRow};

pub fn history(conn: &Connection, receipt_id: &str) -> Result<Vec<TransitionRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT from_state, to_state, at_ms, actor, note FROM transitions WHERE receipt_id = ?1 ORDER BY id",
    )?;
    let rows = stmt
        .query_map(params![receipt_id], |r| {
            Ok(TransitionRow { from: r.get(0)?, to: r.get(1)?, at_ms: r.get(2)?, actor: r.get(3)?, note: r.get(4)? })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn list(conn: &Connection, state: Option<State>, limit: usize) -> Result<Vec<Item>, StoreError> {
    let limit = limit as i64;
    let mut stmt;
    let rows = match state {
        Some(s) => {
            stmt =
                conn.prepare_cached(&format!("SELECT {ITEM_COLS} FROM items WHERE state = ?1 ORDER BY seq LIMIT ?2"))?;
            stmt.query_map(params![s.as_str(), limit], schema::item)?.collect::<Result<Vec<_>, _>>()?
        }
        None => {
            stmt = conn.prepare_cached(&format!("SELECT {ITEM_COLS} FROM items ORDER BY seq LIMIT ?1"))?;
            stmt.query_map(params![limit], schema::item)?.collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(rows)
}

/// What an operator list shows for an item (never the card number or the body).
pub fn item_json(i: &Item) -> Value {
    json!({
        "receipt_id": i.receipt_id,
        "seq": i.seq,
        "idempotency_key": i.idem_key,
        "card": i.card_masked,
        "institution": i.institution,
        "amount_fen": i.amount_fen,
        "reason": i.reason,
        "state": i.state,
        "attempts": i.attempts,
        "accepted_at": rfc3339(i.accepted_ms),
        "forward_deadline": rfc3339(i.deadline_ms),
        "updated_at": rfc3339(i.updated_ms),
        "final_status": i.final_status,
        "backend_ref": i.backend_ref,
        "last_error": i.last_error,
    })
}

/// Status computed from the file alone (the CLI's view; the live one adds mode and rates).
pub fn status(conn: &Connection) -> Result<Value, StoreError> {
    let mut by_state = BTreeMap::new();
    let mut stmt = conn.prepare("SELECT state, COUNT(*), COALESCE(SUM(amount_fen),0) FROM items GROUP BY state")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))? {
        let (s, n, fen) = row?;
        by_state.insert(s, json!({"count": n, "amount_fen": fen}));
    }
    let mut by_inst = BTreeMap::new();
    let sql = format!(
        "SELECT institution, COUNT(*), SUM(amount_fen) FROM items WHERE state IN {OUTSTANDING} GROUP BY institution"
    );
    let mut stmt = conn.prepare(&sql)?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))? {
        let (inst, n, fen) = row?;
        by_inst.insert(inst, json!({"count": n, "amount_fen": fen}));
    }
    let oldest: Option<i64> =
        conn.query_row(&format!("SELECT MIN(accepted_ms) FROM items WHERE state IN {OUTSTANDING}"), [], |r| r.get(0))?;
    let forced: Option<String> = conn.query_row("SELECT v FROM meta WHERE k = 'forced'", [], |r| r.get(0)).ok();
    Ok(json!({
        "by_state": by_state,
        "outstanding_by_institution": by_inst,
        "oldest_accepted_at": oldest.map(rfc3339),
        "oldest_age_seconds": oldest.map(|o| (now_ms() - o).max(0) / 1000),
        "forced": forced,
        "journal_bytes": schema::journal_bytes(conn),
    }))
}

#[derive(Default)]
struct Tally {
    count: i64,
    fen: i64,
}

impl Tally {
    fn add(&mut self, fen: i64) {
        self.count += 1;
        self.fen += fen;
    }
    fn json(&self) -> Value {
        json!({"count": self.count, "amount_fen": self.fen})
    }
}

/// The final amount the backend reported, if its answer carried `amount_fen`.
fn final_amount(i: &Item) -> Option<i64> {
    let body: Value = serde_json::from_str(i.final_body.as_deref()?).ok()?;
    body.pointer("/amount_fen").and_then(Value::as_i64)
}

/// Per institution and per item: provisional vs final, with mismatches flagged.
pub fn reconciliation(conn: &Connection, date: &str) -> Result<Value, StoreError> {
    let (start, end) =
        day_bounds(date).ok_or_else(|| StoreError(format!("date {date:?} is not YYYY-MM-DD (UTC day)")))?;
    let mut stmt = conn
        .prepare(&format!("SELECT {ITEM_COLS} FROM items WHERE accepted_ms >= ?1 AND accepted_ms < ?2 ORDER BY seq"))?;
    let all = stmt.query_map(params![start, end], schema::item)?.collect::<Result<Vec<_>, _>>()?;
    let mut per_inst: BTreeMap<String, BTreeMap<&'static str, Tally>> = BTreeMap::new();
    let mut lines = Vec::new();
    let mut mismatches = 0;
    for i in &all {
        let t = per_inst.entry(i.institution.clone()).or_default();
        t.entry("provisional").or_default().add(i.amount_fen);
        let bucket = match i.state {
            State::Settled => "settled",
            State::Declined => "declined",
            State::Cancelled => "cancelled",
            State::NeedsReview | State::Expired => "needs_review",
            _ => "pending",
        };
        t.entry(bucket).or_default().add(i.amount_fen);
        let fin = final_amount(i);
        let mismatch = match i.state {
            State::Settled if fin.is_some_and(|f| f != i.amount_fen) => Some("final_amount_differs"),
            State::Settled if i.final_status.is_none() => Some("settled_without_backend_answer"),
            State::NeedsReview | State::Expired => Some("needs_review"),
            s if !s.is_terminal() && i.deadline_ms < now_ms() => Some("pending_past_deadline"),
            _ => None,
        };
        if mismatch.is_some() {
            mismatches += 1;
            t.entry("mismatches").or_default().add(i.amount_fen);
        }
        lines.push(json!({
            "receipt_id": i.receipt_id,
            "idempotency_key": i.idem_key,
            "card": i.card_masked,
            "institution": i.institution,
            "state": i.state,
            "provisional_amount_fen": i.amount_fen,
            "final_amount_fen": fin.or(if i.state == State::Settled { Some(i.amount_fen) } else { None }),
            "final_status": i.final_status,
            "backend_ref": i.backend_ref,
            "accepted_at": rfc3339(i.accepted_ms),
            "mismatch": mismatch,
        }));
    }
    let institutions: Vec<Value> = per_inst
        .into_iter()
        .map(|(inst, t)| {
            let mut v = json!({ "institution": inst });
            for key in ["provisional", "settled", "declined", "cancelled", "pending", "needs_review", "mismatches"] {
                v[key] = t.get(key).map(Tally::json).unwrap_or_else(|| Tally::default().json());
            }
            v
        })
        .collect();
    Ok(json!({
        "date": date,
        "timezone": "UTC",
        "items_total": all.len(),
        "mismatch_count": mismatches,
        "institutions": institutions,
        "items": lines,
    }))
}
