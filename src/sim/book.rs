//! The payment simulator's books: settlements by key and by id, the in-flight claims, and the
//! ledger file behind them.
//!
//! The one rule it keeps is *at most one settlement per idempotency key*. Claiming a key,
//! checking the card and reserving its fund share happen under one lock; the claim is then
//! written to the ledger (fsync'd) outside the lock, and only then published. A second request
//! with the same key meanwhile waits for the first to finish and gets its answer; one with a
//! different body is refused. Each settlement runs in its own task, so a caller that hangs up
//! mid-settlement cannot leave a claim half-applied.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::fixture::{Decline, World};
use super::ledger::{self, LedgerEntry, LedgerWriter};
use crate::telemetry::redact::mask_card;

/// How long a duplicate waits for the first request with its key before answering 409.
const DUPLICATE_WAIT: Duration = Duration::from_secs(30);

/// A validated settlement request.
#[derive(Debug, Clone)]
pub(crate) struct Settle {
    pub key: String,
    pub card: String,
    pub hospital_id: String,
    pub visit_id: String,
    pub amount_fen: i64,
    pub request_sha256: String,
}

/// How a settlement request ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Settled(Arc<LedgerEntry>),
    Replayed(Arc<LedgerEntry>),
    Conflict(Arc<LedgerEntry>),
    ConflictInFlight,
    StillInFlight,
    Declined(Decline),
    WriteFailed(io::Error),
}

enum Slot {
    Done(Arc<LedgerEntry>),
    /// Claimed, being written. The receiver closes when the claimant finishes either way.
    InFlight {
        sha: String,
        done: watch::Receiver<()>,
    },
}

#[derive(Default)]
struct Book {
    entries: Vec<Arc<LedgerEntry>>,
    by_key: HashMap<String, Slot>,
    by_id: HashMap<String, Arc<LedgerEntry>>,
    next_seq: u64,
}

/// The payment simulator's state.
pub(crate) struct PaymentState {
    book: Mutex<Book>,
    writer: Option<LedgerWriter>,
    /// Part of every settlement id, so two payment simulators never issue the same id.
    port: u16,
}

impl PaymentState {
    /// Reloads `ledger` (if any) and opens it for appending.
    pub fn open(port: u16, ledger: Option<PathBuf>) -> io::Result<PaymentState> {
        let mut book = Book { next_seq: 1, ..Book::default() };
        let writer = match ledger {
            None => None,
            Some(path) => {
                for entry in ledger::load(&path)? {
                    let seq = entry.settlement_id.rsplit('-').next().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
                    book.next_seq = book.next_seq.max(seq + 1);
                    book.insert(Arc::new(entry));
                }
                tracing::info!(file = %path.display(), settlements = book.entries.len(), "ledger reloaded");
                Some(LedgerWriter::open(path)?)
            }
        };
        Ok(PaymentState { book: Mutex::new(book), writer, port })
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every settlement, in the order applied.
    pub fn entries(&self) -> Vec<LedgerEntry> {
        self.lock().entries.iter().map(|e| LedgerEntry::clone(e)).collect()
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<LedgerEntry>> {
        self.lock().by_id.get(id).cloned()
    }

    pub fn by_key(&self, key: &str) -> Option<Arc<LedgerEntry>> {
        match self.lock().by_key.get(key) {
            Some(Slot::Done(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Applies `req` at most once per key.
    pub async fn settle(&self, world: &World, req: &Settle) -> Outcome {
        let deadline = tokio::time::Instant::now() + DUPLICATE_WAIT;
        loop {
            let (mut done, entry, claim) = {
                let mut book = self.lock();
                match book.by_key.get(&req.key) {
                    Some(Slot::Done(e)) if e.request_sha256 == req.request_sha256 => {
                        return Outcome::Replayed(e.clone())
                    }
                    Some(Slot::Done(e)) => return Outcome::Conflict(e.clone()),
                    Some(Slot::InFlight { sha, .. }) if *sha != req.request_sha256 => return Outcome::ConflictInFlight,
                    Some(Slot::InFlight { done, .. }) => (done.clone(), None, None),
                    None => {
                        let fund = match world.reserve(&req.card, req.amount_fen) {
                            Ok(f) => f,
                            Err(d) => return Outcome::Declined(d),
                        };
                        let entry = Arc::new(self.entry(book.next_seq, req, fund));
                        book.next_seq += 1;
                        let (tx, rx) = watch::channel(());
                        book.by_key.insert(
                            req.key.clone(),
                            Slot::InFlight { sha: req.request_sha256.clone(), done: rx.clone() },
                        );
                        (rx, Some(entry), Some(tx))
                    }
                }
            };
            if let (Some(entry), Some(claim)) = (entry, claim) {
                let written = match &self.writer {
                    Some(w) => w.append(&entry).await,
                    None => Ok(()),
                };
                let mut book = self.lock();
                let outcome = match written {
                    Ok(()) => {
                        book.insert(entry.clone());
                        Outcome::Settled(entry)
                    }
                    Err(e) => {
                        book.by_key.remove(&req.key);
                        world.release(&req.card, entry.fund_paid_fen);
                        Outcome::WriteFailed(e)
                    }
                };
                drop(claim);
                return outcome;
            }
            // A duplicate of a request in flight: wait for it, then look again.
            if tokio::time::timeout_at(deadline, done.changed()).await.is_err() {
                return Outcome::StillInFlight;
            }
        }
    }

    fn entry(&self, seq: u64, req: &Settle, fund: i64) -> LedgerEntry {
        let applied_at =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        LedgerEntry {
            settlement_id: format!("stl-{}-{seq:08}", self.port),
            idempotency_key: req.key.clone(),
            status: "settled".into(),
            amount_fen: req.amount_fen,
            fund_paid_fen: fund,
            self_paid_fen: req.amount_fen - fund,
            hospital_id: req.hospital_id.clone(),
            visit_id: req.visit_id.clone(),
            card_no_masked: mask_card(&req.card),
            applied_at,
            request_sha256: req.request_sha256.clone(),
        }
    }
}

impl Book {
    fn insert(&mut self, entry: Arc<LedgerEntry>) {
        self.by_key.insert(entry.idempotency_key.clone(), Slot::Done(entry.clone()));
        self.by_id.insert(entry.settlement_id.clone(), entry.clone());
        self.entries.push(entry);
    }
}
