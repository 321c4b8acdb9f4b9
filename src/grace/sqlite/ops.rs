//! What the journal does with each command: the limit decision for an append (the committer),
//! the insert of an accepted item, compare-and-set transitions and the expiry sweep (the
//! applier, inside its savepoint).
//!
//! Transitions and the sweep log the state moves they make; the applier applies them to the
//! live [`Counters`] only once its transaction has committed, so the committer never decides a
//! limit on exposure released by a change that might still roll back.

use rusqlite::{params, Connection, OptionalExtension};

use super::counters::{Counters, Share, Undo};
use super::schema::{self, ITEM_COLS};
use crate::grace::clock::now_ms;
use crate::grace::config::{CountAmount, GraceLimits};
use crate::grace::store::{AppendOutcome, Item, NewItem, State, StoreError, Transition};
use crate::telemetry::names;

fn over(limit: Option<u64>, current: u64, add: u64) -> bool {
    limit.is_some_and(|l| current.saturating_add(add) > l)
}

/// Which limit (if any) accepting `amount` on top of `(count, fen)` would exceed.
fn check(scope: &'static str, l: &CountAmount, cur: (u64, i64), amount: u64) -> Option<(&'static str, String)> {
    let fen = u64::try_from(cur.1).unwrap_or(0);
    if over(l.count, cur.0, 1) {
        return Some((scope_count(scope), format!("{scope} count limit of {} reached", l.count.unwrap_or(0))));
    }
    if over(l.amount, fen, amount) {
        let msg =
            format!("{scope} amount limit of {} fen would be exceeded ({fen} fen outstanding)", l.amount.unwrap_or(0));
        return Some((scope_amount(scope), msg));
    }
    None
}

fn scope_count(scope: &str) -> &'static str {
    match scope {
        "per_card" => "per_card_count",
        "per_institution" => "per_institution_count",
        _ => "total_count",
    }
}

fn scope_amount(scope: &str) -> &'static str {
    match scope {
        "per_card" => "per_card_amount",
        "per_institution" => "per_institution_amount",
        _ => "total_amount",
    }
}

/// The limit decision for one new item against the live counters (the committer holds them
/// locked across its whole batch): the card's remaining hard limits once it is accepted, or
/// the limit it would break.
pub fn decide(c: &Counters, item: &NewItem, limits: &GraceLimits) -> Result<Remaining, AppendOutcome> {
    let amount = u64::try_from(item.amount_fen).unwrap_or(u64::MAX);
    if amount > limits.per_settlement {
        let message = format!("a single settlement may be at most {} fen in grace", limits.per_settlement);
        return Err(AppendOutcome::Refused { limit: "per_settlement", message });
    }
    if c.journal_bytes >= limits.journal_bytes {
        let message = format!("the grace journal reached its size limit of {} bytes", limits.journal_bytes);
        return Err(AppendOutcome::Refused { limit: "journal_size", message });
    }
    let card = c.cards.get(&item.card_ref).copied().unwrap_or_default();
    let inst = c.institutions.get(&item.institution).copied().unwrap_or_default();
    let refused = check("per_card", &limits.card_hard, card, amount)
        .or_else(|| check("per_institution", &limits.institution, inst, amount))
        .or_else(|| check("total", &limits.total, c.total, amount));
    if let Some((limit, message)) = refused {
        return Err(AppendOutcome::Refused { limit, message });
    }
    Ok(Remaining {
        count: limits.card_hard.count.map(|l| l as i64 - card.0 as i64 - 1),
        amount: limits.card_hard.amount.map(|l| l as i64 - card.1 - item.amount_fen),
    })
}

/// Hard card limits left after an item.
pub struct Remaining {
    pub count: Option<i64>,
    pub amount: Option<i64>,
}

/// An accepted item as the journal holds it (number, remaining limits).
pub fn accepted(item: NewItem, seq: i64, remaining: Remaining) -> Item {
    Item {
        seq,
        receipt_id: item.receipt_id,
        idem_key: item.idem_key,
        fingerprint: item.fingerprint.to_vec(),
        policy: item.policy,
        route: item.route,
        card_ref: item.card_ref,
        card_masked: item.card_masked,
        institution: item.institution,
        amount_fen: item.amount_fen,
        reason: item.reason,
        state: item.state,
        method: item.method,
        path: item.path,
        payload: item.payload,
        encrypted: item.encrypted,
        accepted_ms: item.accepted_ms,
        deadline_ms: item.deadline_ms,
        updated_ms: item.accepted_ms,
        attempts: 0,
        next_attempt_ms: item.next_attempt_ms,
        final_status: None,
        final_body: None,
        backend_ref: None,
        last_error: None,
        remaining_count: remaining.count,
        remaining_amount: remaining.amount,
    }
}

/// The share of the exposure an item holds.
pub fn share(item: &Item) -> Share {
    Share {
        seq: item.seq,
        card_ref: item.card_ref.clone(),
        institution: item.institution.clone(),
        amount_fen: item.amount_fen,
        accepted_ms: item.accepted_ms,
    }
}

/// Writes an accepted item (already in the log) into the database. Replaying the log after a
/// crash inserts items the database may already have: those are left as they are (they may
/// have moved on since).
pub fn insert(conn: &Connection, item: &Item) -> Result<(), StoreError> {
    insert_into(conn, "items", item, true)
}

/// [`insert`] into another table of the same shape (the offline reader's overlay); `hashed`
/// false for the shape of a journal from before the `idem_hash` and `card_key` columns (a copy
/// the CLI reads without changing it).
pub fn insert_into(conn: &Connection, table: &str, item: &Item, hashed: bool) -> Result<(), StoreError> {
    let (cols, values) = if hashed { (", idem_hash, card_key", ",?22,?23") } else { ("", "") };
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT OR IGNORE INTO {table}(seq, receipt_id, idem_key, fingerprint, policy, route, card_ref, card_masked, \
         institution, amount_fen, reason, state, method, path, payload, encrypted, accepted_ms, deadline_ms, \
         updated_ms, attempts, next_attempt_ms, remaining_count, remaining_amount{cols}) \
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?17,0,?19,?20,?21{values})"
    ))?;
    let hashes = (schema::key_hash(&item.idem_key), schema::key_hash(&item.card_ref));
    let (state, encrypted) = (item.state.as_str(), item.encrypted as i64);
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![
        &item.seq,
        &item.receipt_id,
        &item.idem_key,
        &item.fingerprint,
        &item.policy,
        &item.route,
        &item.card_ref,
        &item.card_masked,
        &item.institution,
        &item.amount_fen,
        &item.reason,
        &state,
        &item.method,
        &item.path,
        &item.payload,
        &encrypted,
        &item.accepted_ms,
        &item.deadline_ms,
        &item.next_attempt_ms,
        &item.remaining_count,
        &item.remaining_amount,
    ];
    if hashed {
        values.extend([&hashes.0 as &dyn rusqlite::ToSql, &hashes.1]);
    }
    stmt.execute(values.as_slice())?;
    Ok(())
}

/// The item holding an idempotency key in the database, if any.
pub fn by_key(conn: &Connection, key: &str) -> Result<Option<Item>, StoreError> {
    static BY_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("SELECT {ITEM_COLS} FROM items INDEXED BY items_idem WHERE idem_hash = ?1 AND idem_key = ?2")
    });
    Ok(conn.prepare_cached(&BY_KEY)?.query_row(params![schema::key_hash(key), key], schema::item).optional()?)
}

fn share_of(conn: &Connection, receipt_id: &str) -> Result<Option<(Share, State)>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT seq, card_ref, institution, amount_fen, accepted_ms, state FROM items WHERE receipt_id = ?1",
        )?
        .query_row(params![receipt_id], |r| {
            let share = Share {
                seq: r.get(0)?,
                card_ref: r.get(1)?,
                institution: r.get(2)?,
                amount_fen: r.get(3)?,
                accepted_ms: r.get(4)?,
            };
            Ok((share, r.get::<_, String>(5)?))
        })
        .optional()?;
    Ok(row.map(|(share, s)| (share, State::parse(&s).unwrap_or(State::NeedsReview))))
}

fn record(
    conn: &Connection,
    id: &str,
    from: State,
    to: State,
    now: i64,
    actor: &str,
    note: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO transitions(receipt_id, from_state, to_state, at_ms, actor, note) VALUES (?1,?2,?3,?4,?5,?6)",
    )?
    .execute(params![id, from.as_str(), to.as_str(), now, actor, note])
    .map(|_| ())
}

pub fn transition(conn: &Connection, moves: &mut Vec<Undo>, t: &Transition) -> Result<bool, StoreError> {
    let Some((share, current)) = share_of(conn, &t.receipt_id)? else { return Ok(false) };
    if !t.from.is_empty() && !t.from.contains(&current) {
        return Ok(false);
    }
    let to = t.to.unwrap_or(current);
    let now = now_ms();
    conn.prepare_cached(
        "UPDATE items SET state=?2, updated_ms=?3, \
         attempts = CASE WHEN ?4 THEN 0 ELSE attempts END + ?5, \
         next_attempt_ms = COALESCE(?6, next_attempt_ms), final_status = COALESCE(?7, final_status), \
         final_body = COALESCE(?8, final_body), backend_ref = COALESCE(?9, backend_ref), \
         last_error = COALESCE(?10, last_error), deadline_ms = COALESCE(?11, deadline_ms) WHERE receipt_id=?1",
    )?
    .execute(params![
        t.receipt_id,
        to.as_str(),
        now,
        t.reset_attempts,
        t.add_attempt as i64,
        t.next_attempt_ms,
        t.final_status,
        t.final_body,
        t.backend_ref,
        t.last_error,
        t.deadline_ms,
    ])?;
    if to != current || !t.note.is_empty() {
        record(conn, &t.receipt_id, current, to, now, &t.actor, &t.note)?;
    }
    if to != current {
        moves.push(Undo::Moved(share, current, to));
        metrics::counter!(names::GRACE_TRANSITIONS_TOTAL, "to" => to.as_str()).increment(1);
    }
    Ok(true)
}

pub fn expire(conn: &Connection, moves: &mut Vec<Undo>, now: i64) -> Result<u64, StoreError> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT receipt_id FROM items WHERE deadline_ms < ?1 AND state IN ('journaled','retry_wait','unknown')",
        )?
        .query_map(params![now], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &ids {
        let Some((share, current)) = share_of(conn, id)? else { continue };
        conn.execute("UPDATE items SET state='needs_review', updated_ms=?2 WHERE receipt_id=?1", params![id, now])?;
        record(conn, id, current, State::Expired, now, "forwarder", "not settled before the forward deadline")?;
        record(conn, id, State::Expired, State::NeedsReview, now, "forwarder", "waiting for an operator")?;
        moves.push(Undo::Moved(share, current, State::NeedsReview));
    }
    Ok(ids.len() as u64)
}
