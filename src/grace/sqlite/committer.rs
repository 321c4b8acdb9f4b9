//! The committer: the thread every append goes through, and the only one that accepts items.
//!
//! It takes the first waiting append plus everything queued behind it (up to
//! [`MAX_BATCH`](super::writer::MAX_BATCH)), and for each: looks the idempotency key up (a key
//! the filter of known keys has never seen is new; any other in the items not yet applied to
//! the database, then the database; `keys.rs`), decides the limits against the live
//! counters, numbers the item and counts its exposure. Then ONE write and ONE `fdatasync` of the
//! log for the whole group, and only then the answers. The accepted items go to the applier
//! (`writer.rs`) to be written into SQLite behind the log. One thread makes the key claim, the
//! limit decision and the append atomic, as the single SQLite writer did before, and the batch
//! is all-or-nothing: if the log cannot be written, every item of it is refused and its counts
//! are taken back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::counters::{Counters, Undo};
use super::keys::KeyFilter;
use super::log;
use super::ops;
use super::schema;
use super::writer::{Cmd, MAX_BATCH};
use crate::grace::config::GraceLimits;
use crate::grace::store::{AppendOutcome, Item, NewItem, StoreError};
use crate::telemetry::names;

pub type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

/// An append, with the time it was handed to the committer.
pub struct Append(pub Box<NewItem>, pub Arc<GraceLimits>, pub Reply, pub Instant);

/// Accepted items the applier has not yet written into the database. Readers look here
/// first, then in the database: the applier removes an item only after its commit, so an item
/// is always in one of the two.
#[derive(Default)]
pub struct Pending {
    by_key: HashMap<String, Arc<Item>>,
    key_of_receipt: HashMap<String, String>,
}

impl Pending {
    pub fn by_key(&self, key: &str) -> Option<Item> {
        self.by_key.get(key).map(|i| (**i).clone())
    }

    pub fn by_receipt(&self, receipt_id: &str) -> Option<Item> {
        self.key_of_receipt.get(receipt_id).and_then(|k| self.by_key(k))
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn insert(&mut self, item: &Arc<Item>) {
        self.key_of_receipt.insert(item.receipt_id.clone(), item.idem_key.clone());
        self.by_key.insert(item.idem_key.clone(), item.clone());
    }

    /// Called by the applier once `items` are committed to the database. Returns what it
    /// removed, for the caller to drop once the lock is released.
    pub fn applied(&mut self, items: &[Arc<Item>]) -> Vec<Arc<Item>> {
        let mut removed = Vec::with_capacity(items.len());
        for item in items {
            removed.extend(self.by_key.remove(&item.idem_key));
            self.key_of_receipt.remove(&item.receipt_id);
        }
        removed
    }
}

/// Takes items the database now holds out of `pending` a slice at a time. The committer looks
/// every key up in it under the same lock, and the applier took a whole quarter second of
/// items out at once (5 000 at 20 000 appends/s, a millisecond or two of hashing and freeing);
/// now a key lookup waits for one slice at most, unless the applier is preempted while it
/// holds the lock (a probe still saw waits of a few ms). The items are freed after each
/// slice's lock is released.
pub fn forget_applied(pending: &Mutex<Pending>, items: &[Arc<Item>]) {
    for chunk in items.chunks(256) {
        let removed = match pending.lock() {
            Ok(mut p) => p.applied(chunk),
            Err(_) => return,
        };
        drop(removed);
    }
}

pub struct Committer {
    pub log: log::Writer,
    /// A read connection for key lookups in the database.
    pub reader: Connection,
    pub counters: Arc<Mutex<Counters>>,
    pub pending: Arc<Mutex<Pending>>,
    pub applier: mpsc::Sender<Cmd>,
    pub next_seq: i64,
    /// Every key the journal holds (and a few it does not): a key it has never seen is
    /// accepted without a database read.
    pub keys: KeyFilter,
}

impl Committer {
    /// Runs until every sender is dropped.
    pub fn run(mut self, mut rx: mpsc::Receiver<Append>) {
        let fsync = metrics::histogram!(names::GRACE_FSYNC_SECONDS);
        let latency = metrics::histogram!(names::GRACE_COMMIT_SECONDS);
        // Set when the log could not be written: its state on disk is unknown from then on, so
        // nothing more is accepted until a restart replays what is there.
        let mut broken: Option<StoreError> = None;
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Vec::with_capacity(64);
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            if let Some(e) = &broken {
                batch.into_iter().for_each(|Append(_, _, r, _)| drop(r.send(Err(e.clone()))));
                continue;
            }
            if let Err(e) = self.commit(batch, &fsync, &latency) {
                tracing::error!(error = %e, "grace log write failed; the journal accepts nothing more until restarted");
                broken = Some(e);
            }
        }
    }

    fn commit(
        &mut self,
        batch: Vec<Append>,
        fsync: &metrics::Histogram,
        latency: &metrics::Histogram,
    ) -> Result<(), StoreError> {
        let enqueued: Vec<Instant> = batch.iter().map(|a| a.3).collect();
        let answered = || {
            let now = Instant::now();
            enqueued.iter().for_each(|at| latency.record(now.duration_since(*at).as_secs_f64()));
        };
        // Key lookups first, without the counters' lock (the database read may touch disk).
        let mut looked_up = Vec::with_capacity(batch.len());
        for Append(item, limits, reply, _) in batch {
            let key_hash = schema::key_hash(&item.idem_key);
            let known = self.known(&item.idem_key, key_hash);
            looked_up.push((item, limits, reply, known, key_hash));
        }
        let mut answers: Vec<(Reply, Result<AppendOutcome, StoreError>)> = Vec::with_capacity(looked_up.len());
        let mut accepted: Vec<Arc<Item>> = Vec::new();
        let mut in_batch: HashMap<String, usize> = HashMap::new();
        let mut undo = Vec::new();
        {
            let mut c = self.counters.lock().map_err(|_| StoreError("counters poisoned".into()))?;
            for (item, limits, reply, known, key_hash) in looked_up {
                let outcome = match known {
                    Err(e) => Err(e),
                    Ok(Some(existing)) => Ok(AppendOutcome::Existing(Box::new(existing))),
                    Ok(None) => match in_batch.get(&item.idem_key) {
                        Some(&i) => Ok(AppendOutcome::Existing(Box::new((*accepted[i]).clone()))),
                        None => match ops::decide(&c, &item, &limits) {
                            Err(refused) => Ok(refused),
                            Ok(remaining) => {
                                let item = Arc::new(ops::accepted(*item, self.next_seq, remaining));
                                self.next_seq += 1;
                                // Before anyone hears of it. If the log write fails the key stays
                                // in the filter: that only costs a lookup.
                                self.keys.insert(key_hash);
                                let share = ops::share(&item);
                                c.added(&share, item.state);
                                undo.push(Undo::Added(share, item.state));
                                in_batch.insert(item.idem_key.clone(), accepted.len());
                                accepted.push(item.clone());
                                Ok(AppendOutcome::Accepted(item))
                            }
                        },
                    },
                };
                answers.push((reply, outcome));
            }
        }
        if accepted.is_empty() {
            answers.into_iter().for_each(|(r, v)| drop(r.send(v)));
            answered();
            return Ok(());
        }
        let records: Vec<Vec<u8>> = accepted.iter().map(|i| log::encode(i)).collect();
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let started = Instant::now();
        let written = self.log.append(&refs);
        fsync.record(started.elapsed().as_secs_f64());
        let (seg, offset) = match written {
            Ok(at) => at,
            Err(e) => {
                self.next_seq -= accepted.len() as i64;
                if let Ok(mut c) = self.counters.lock() {
                    c.undo(undo);
                }
                let err = StoreError(format!("cannot write the grace log: {e}"));
                for (reply, outcome) in answers {
                    // Refusals and earlier items stand; anything this batch accepted does not.
                    let v = match outcome {
                        Ok(AppendOutcome::Refused { limit, message }) => Ok(AppendOutcome::Refused { limit, message }),
                        Ok(AppendOutcome::Existing(i)) if !in_batch.contains_key(&i.idem_key) => {
                            Ok(AppendOutcome::Existing(i))
                        }
                        _ => Err(err.clone()),
                    };
                    drop(reply.send(v));
                }
                return Err(err);
            }
        };
        if let Ok(mut p) = self.pending.lock() {
            accepted.iter().for_each(|i| p.insert(i));
        }
        // Queued before anyone hears of the items, so an operator's command about one of them
        // reaches the applier after the item itself.
        if self.applier.blocking_send(Cmd::Apply(accepted, seg, offset)).is_err() {
            tracing::error!("the grace journal applier stopped; accepted items stay in the log until a restart");
        }
        answers.into_iter().for_each(|(r, v)| drop(r.send(v)));
        answered();
        Ok(())
    }

    /// The item already holding `key` (whose `schema::key_hash` is `key_hash`): not yet
    /// applied, or in the database.
    fn known(&self, key: &str, key_hash: i64) -> Result<Option<Item>, StoreError> {
        if !self.keys.may_contain(key_hash) {
            return Ok(None);
        }
        if let Some(item) = self.pending.lock().ok().and_then(|p| p.by_key(key)) {
            return Ok(Some(item));
        }
        ops::by_key(&self.reader, key)
    }
}
