//! Live exposure counters: outstanding count and fen per card, per institution and in total.
//!
//! They are a cache of `SUM(...) WHERE state is outstanding` over the journal, rebuilt from the
//! items on start. The committer counts an item as it accepts it (and takes the count back if
//! the log write fails); the applier applies a transition's move once its transaction has
//! committed. So a limit decision sees the committed exposure plus the batch in progress, and
//! never exposure released by a change that may still roll back (invariant 5).

use std::collections::{BTreeSet, HashMap};

use rusqlite::Connection;

use super::schema::OUTSTANDING;
use crate::grace::store::{State, StoreError, Summary};

/// One item's share of the exposure.
#[derive(Debug, Clone)]
pub struct Share {
    pub seq: i64,
    pub card_ref: String,
    pub institution: String,
    pub amount_fen: i64,
    pub accepted_ms: i64,
}

/// A change to undo if the batch's transaction fails.
#[derive(Debug, Clone)]
pub enum Undo {
    /// The item was added in `state`.
    Added(Share, State),
    /// The item moved from `from` to `to`.
    Moved(Share, State, State),
}

#[derive(Debug, Default)]
pub struct Counters {
    pub cards: HashMap<String, (u64, i64)>,
    pub institutions: HashMap<String, (u64, i64)>,
    pub total: (u64, i64),
    pub by_state: HashMap<State, u64>,
    /// (accepted_ms, seq) of every outstanding item, for the oldest age.
    pub outstanding: BTreeSet<(i64, i64)>,
    pub journal_bytes: u64,
}

fn add(slot: &mut (u64, i64), sign: i64, amount: i64) {
    if sign > 0 {
        slot.0 += 1;
        slot.1 += amount;
    } else {
        slot.0 = slot.0.saturating_sub(1);
        slot.1 -= amount;
    }
}

impl Counters {
    /// Rebuilds the counters from the journal.
    pub fn rebuild(conn: &Connection) -> Result<Counters, StoreError> {
        let mut c = Counters::default();
        let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM items GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (state, n) = row?;
            if let Some(s) = State::parse(&state) {
                c.by_state.insert(s, n.max(0) as u64);
            }
        }
        let sql = format!(
            "SELECT seq, card_ref, institution, amount_fen, accepted_ms FROM items WHERE state IN {OUTSTANDING}"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([], |r| {
            Ok(Share {
                seq: r.get(0)?,
                card_ref: r.get(1)?,
                institution: r.get(2)?,
                amount_fen: r.get(3)?,
                accepted_ms: r.get(4)?,
            })
        })?;
        for share in rows {
            c.exposure(&share?, 1);
        }
        Ok(c)
    }

    fn exposure(&mut self, s: &Share, sign: i64) {
        add(self.cards.entry(s.card_ref.clone()).or_default(), sign, s.amount_fen);
        add(self.institutions.entry(s.institution.clone()).or_default(), sign, s.amount_fen);
        add(&mut self.total, sign, s.amount_fen);
        if sign > 0 {
            self.outstanding.insert((s.accepted_ms, s.seq));
        } else {
            self.outstanding.remove(&(s.accepted_ms, s.seq));
            // Keep the maps from growing with every card ever seen.
            if self.cards.get(&s.card_ref).is_some_and(|v| v.0 == 0) {
                self.cards.remove(&s.card_ref);
            }
        }
    }

    fn state(&mut self, s: State, sign: i64) {
        let n = self.by_state.entry(s).or_default();
        *n = if sign > 0 { *n + 1 } else { n.saturating_sub(1) };
    }

    /// A new item in `state`.
    pub fn added(&mut self, share: &Share, state: State) {
        self.state(state, 1);
        if !state.is_terminal() {
            self.exposure(share, 1);
        }
    }

    /// An item moved between states.
    pub fn moved(&mut self, share: &Share, from: State, to: State) {
        self.state(from, -1);
        self.state(to, 1);
        if !from.is_terminal() && to.is_terminal() {
            self.exposure(share, -1);
        } else if from.is_terminal() && !to.is_terminal() {
            self.exposure(share, 1);
        }
    }

    /// Applies the state moves of a committed transaction, in order.
    pub fn apply(&mut self, log: Vec<Undo>) {
        for u in log {
            match u {
                Undo::Added(share, state) => self.added(&share, state),
                Undo::Moved(share, from, to) => self.moved(&share, from, to),
            }
        }
    }

    /// Reverts the changes of a failed transaction, newest first.
    pub fn undo(&mut self, log: Vec<Undo>) {
        for u in log.into_iter().rev() {
            match u {
                Undo::Added(share, state) => {
                    self.state(state, -1);
                    if !state.is_terminal() {
                        self.exposure(&share, -1);
                    }
                }
                Undo::Moved(share, from, to) => self.moved(&share, to, from),
            }
        }
    }

    pub fn summary(&self) -> Summary {
        Summary {
            by_state: self
                .by_state
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(s, n)| (s.as_str().to_string(), *n))
                .collect(),
            outstanding_count: self.total.0,
            outstanding_fen: self.total.1,
            by_institution: self.institutions.iter().filter(|(_, v)| v.0 > 0).map(|(k, v)| (k.clone(), *v)).collect(),
            oldest_accepted_ms: self.outstanding.iter().next().map(|(ms, _)| *ms),
            journal_bytes: self.journal_bytes,
            journal_error: None,
        }
    }
}
