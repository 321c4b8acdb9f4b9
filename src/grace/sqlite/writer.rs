//! The applier: the one SQLite writer, keeping the database up to date behind the log.
//!
//! Accepted items arrive from the committer (`committer.rs`) already durable in the log;
//! operator and forwarder changes arrive as commands. The thread takes the first waiting
//! message plus everything queued behind it (up to [`MAX_BATCH`]) and runs them all in one
//! `BEGIN IMMEDIATE` transaction — each command in its own savepoint, so one bad command does
//! not sink the others — and COMMITs once (group commit). Every transaction is run holding the
//! checkpoint thread's gate (`checkpoint.rs`: that thread does SQLite's checkpoint syncs
//! itself, and the gate keeps them in SQLite's order).
//!
//! A batch of accepted items alone commits with `synchronous=NORMAL`: no fsync, the log already
//! holds them. A batch with a command commits with `synchronous=FULL` (its fsync of the WAL
//! also makes every earlier commit durable), so nobody hears "done" before it is on disk. So
//! does the first batch that reaches a new log segment: after it, the segments before are in
//! the database for good and are recycled.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::Shared;
use super::committer::Pending;
use super::counters::{Counters, Undo};
use super::log;
use super::ops;
use super::schema;
use crate::grace::clock::now_ms;
use crate::grace::store::{Item, StoreError, Transition};

/// Most messages in one transaction (and most appends in one log write).
pub const MAX_BATCH: usize = 2048;

/// Accepted items are written into the database at most this often (see `Applier::run`).
const APPLY_EVERY: Duration = Duration::from_millis(250);

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum Cmd {
    /// Items the committer accepted, durable in log segment `.1` up to offset `.2`.
    Apply(Vec<Arc<Item>>, u64, u64),
    Transition(Box<Transition>, Reply<bool>),
    Expire(i64, Reply<u64>),
    Audit([String; 4], Reply<()>),
    SetMeta(String, Option<String>, Reply<()>),
    /// Answers once everything queued before it is in the database.
    Barrier(Reply<()>),
    /// Commit what is queued, then stop.
    Stop,
}

/// Accepted items waiting to be written (kept across a failed transaction and retried).
struct Applies {
    items: Vec<Arc<Item>>,
    seg: u64,
    offset: u64,
}

/// The applier's state between batches.
pub struct Applier {
    pub conn: Connection,
    pub counters: Arc<Mutex<Counters>>,
    pub pending: Arc<Mutex<Pending>>,
    pub log_dir: PathBuf,
    /// Shared with the checkpoint thread (`checkpoint.rs`): the gate every transaction is
    /// committed behind, the count of commits, and its flags (`backfilled`: its last pass
    /// copied the whole WAL it found, and the writer finishes that checkpoint between two
    /// batches; `sync_failed`: nothing more is written).
    pub shared: Arc<Shared>,
    /// Log segments below this one are durable in the database (and recycled).
    pub durable_seg: u64,
    full: bool,
    carry: Vec<Applies>,
    /// The newest segment prepared ahead of the committer.
    prepared: u64,
}

impl Applier {
    pub fn new(
        conn: Connection,
        counters: Arc<Mutex<Counters>>,
        pending: Arc<Mutex<Pending>>,
        log_dir: PathBuf,
        shared: Arc<Shared>,
        durable_seg: u64,
    ) -> Applier {
        Applier { conn, counters, pending, log_dir, shared, durable_seg, full: true, carry: Vec::new(), prepared: 0 }
    }

    /// Runs until every sender is dropped (or `Stop`), then folds the WAL into the database.
    pub fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut stop = false;
        let mut last = Instant::now();
        let mut failures = 0u32;
        loop {
            let first = if self.carry.is_empty() {
                match rx.blocking_recv() {
                    Some(c) => Some(c),
                    None => break,
                }
            } else {
                None
            };
            let mut batch: Vec<Cmd> = Vec::with_capacity(64);
            stop |= take(&mut rx, &mut batch, first);
            // Accepted items alone wait for company: every transaction writes each B-tree page
            // it touches into the WAL again, and the checkpoints that copy and fsync that WAL
            // stall the log's fsync on the same disk. Measured at 20 000 appends/s: a
            // transaction per commit group wrote 135 MB/s of WAL and cost the log 25 ms every
            // checkpoint. Commands (operators, the forwarder) never wait: whoever sends one
            // unparks this thread.
            let wait = APPLY_EVERY.saturating_sub(last.elapsed());
            if !stop && !wait.is_zero() && batch.len() < MAX_BATCH && batch.iter().all(|c| matches!(c, Cmd::Apply(..)))
            {
                std::thread::park_timeout(wait);
                stop |= take(&mut rx, &mut batch, None);
            }
            last = Instant::now();
            let bytes = schema::journal_bytes(&self.conn);
            if let Ok(mut c) = self.counters.lock() {
                c.journal_bytes = bytes;
            }
            let shared = self.shared.clone();
            let gate = shared.gate();
            let idle = batch.is_empty() && self.carry.is_empty();
            let committed = idle || self.commit_batch(batch);
            if shared.backfilled.swap(false, Ordering::AcqRel) {
                finish_checkpoint(&self.conn);
            }
            drop(gate);
            if committed {
                failures = 0;
                if !idle {
                    shared.commits.fetch_add(1, Ordering::Release);
                }
            } else {
                // The database refused the items (disk full, I/O error): they are safe in the
                // log; try again shortly rather than spin, and when stopping, not forever (the
                // next start replays the log).
                failures += 1;
                if (stop || rx.is_closed()) && failures >= 5 {
                    tracing::error!("grace journal stopping with items not yet in the database; the log keeps them");
                    break;
                }
                std::thread::park_timeout(Duration::from_millis(200));
            }
            if stop && rx.is_empty() && self.carry.is_empty() {
                break;
            }
        }
        self.close();
    }

    fn close(&mut self) {
        let shared = self.shared.clone();
        let _gate = shared.gate();
        if shared.sync_failed.load(Ordering::Acquire) {
            tracing::error!(
                "grace journal closing after a failed sync: nothing folded, the log kept for the next start"
            );
            return;
        }
        // Fold the WAL into the database file, so a copy of the file alone is complete, and
        // the log is no longer needed.
        let folded = self
            .conn
            .execute_batch("PRAGMA synchronous=FULL; PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(|e| e.to_string());
        match folded {
            Ok(()) if self.carry.is_empty() => match log::recycle(&self.log_dir, u64::MAX, None) {
                // Everything is in the database and the log is empty, so a start that finds the
                // log directory gone hides nothing (`adopt_log_dir`); checkpointed again so a
                // copy of the file alone says so too.
                Ok(()) => {
                    let marked = self.conn.execute_batch(
                        "INSERT OR REPLACE INTO meta(k, v) VALUES ('log_clean', '1'); PRAGMA wal_checkpoint(TRUNCATE);",
                    );
                    if let Err(e) = marked {
                        tracing::warn!(error = %e, "cannot record the clean stop of the grace journal");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot recycle the grace log (it is replayed on the next start)"),
            },
            Ok(()) => tracing::warn!("grace items left unapplied; the log keeps them for the next start"),
            Err(e) => tracing::warn!(error = %e, "journal checkpoint on close failed (the WAL file holds the rest)"),
        }
    }

    /// Sets `synchronous` for the next transaction (only when it changes).
    fn durability(&mut self, full: bool) -> rusqlite::Result<()> {
        if self.full != full {
            self.conn.pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
            self.full = full;
        }
        Ok(())
    }
}

/// Moves `first` and whatever is queued behind it into `batch` (up to [`MAX_BATCH`]). Returns
/// whether a `Stop` was among them.
fn take(rx: &mut mpsc::Receiver<Cmd>, batch: &mut Vec<Cmd>, first: Option<Cmd>) -> bool {
    let mut stop = false;
    for cmd in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
        match cmd {
            Cmd::Stop => stop = true,
            cmd => batch.push(cmd),
        }
        if batch.len() >= MAX_BATCH {
            break;
        }
    }
    stop
}

/// Keeps the WAL file from growing without bound under sustained load.
///
/// SQLite writes the WAL from its start again only when a write transaction begins while the
/// whole WAL has been copied into the database. The checkpoint thread copies in parallel with
/// the writer, so under a steady stream of batches a new commit always lands before it
/// finishes and the WAL grows for as long as the load lasts (measured: ~80 MB/s at 20 000
/// appends/s; and every commit then also extends the file, which costs fsync time). Here, after
/// the thread caught up with a big WAL, the writer copies the few frames committed since —
/// between batches, when no transaction is open — so the next batch restarts the WAL. It is a
/// PASSIVE checkpoint: it never waits for readers; if one holds an old snapshot the restart
/// simply happens at a later round.
fn finish_checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "grace journal checkpoint failed; the WAL restarts later");
    }
}

/// An answer that is sent only after the commit.
enum Done {
    Transition(Reply<bool>, Result<bool, StoreError>),
    Expire(Reply<u64>, Result<u64, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
}

impl Applier {
    /// One transaction for the batch (after the items carried from a failed one). Returns
    /// `false` when the accepted items could not be written.
    fn commit_batch(&mut self, batch: Vec<Cmd>) -> bool {
        let mut applies = std::mem::take(&mut self.carry);
        let commands = batch.iter().any(|c| !matches!(c, Cmd::Apply(..)));
        let newest_seg = batch
            .iter()
            .filter_map(|c| if let Cmd::Apply(_, seg, _) = c { Some(*seg) } else { None })
            .chain(applies.iter().map(|a| a.seg))
            .max()
            .unwrap_or(0);
        let full = commands || newest_seg > self.durable_seg;
        // State moves, applied to the counters once the transaction has committed.
        let mut moves = Vec::new();
        let mut done = Vec::with_capacity(batch.len());
        let mut apply_error: Option<StoreError> = None;
        if let Err(e) = self.durability(full) {
            apply_error = Some(e.into());
        }
        if self.shared.sync_failed.load(Ordering::Acquire) {
            // What the disk holds is unknown (`checkpoint.rs`): nothing more is written.
            let e = StoreError(super::checkpoint::SYNC_FAILED.into());
            applies.extend(batch_applies(batch, &e));
            self.carry = applies;
            return false;
        }
        let tx = match self.conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let e = StoreError::from(e);
                applies.extend(batch_applies(batch, &e));
                self.carry = applies;
                return false;
            }
        };
        {
            for a in &applies {
                insert_all(&tx, &a.items, &mut apply_error);
            }
            for cmd in batch {
                let mark = moves.len();
                if let Cmd::Apply(items, seg, offset) = cmd {
                    insert_all(&tx, &items, &mut apply_error);
                    applies.push(Applies { items, seg, offset });
                    continue;
                }
                if let Cmd::Barrier(reply) = cmd {
                    done.push(Done::Unit(reply, Ok(())));
                    continue;
                }
                let mut sp = match tx.unchecked_transaction_savepoint() {
                    Ok(sp) => sp,
                    Err(e) => {
                        done.push(fail_one(cmd, &e.into()));
                        continue;
                    }
                };
                let (ok, answer) = run_one(&mut sp, &mut moves, cmd);
                if !ok {
                    moves.truncate(mark);
                } else if let Err(e) = sp.commit() {
                    moves.truncate(mark);
                    done.push(fail_done(answer, &e.into()));
                    continue;
                }
                done.push(answer);
            }
        }
        let committed = match apply_error {
            Some(e) => {
                drop(tx);
                Err(e)
            }
            None => tx.commit().map_err(StoreError::from),
        };
        match committed {
            Ok(()) => {
                if let Ok(mut c) = self.counters.lock() {
                    c.apply(moves);
                }
                done.into_iter().for_each(send);
                applies.iter().for_each(|a| super::committer::forget_applied(&self.pending, &a.items));
                self.after_commit(full, &applies);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "grace journal transaction failed");
                let err = StoreError(format!("commit failed: {e}"));
                done.into_iter().for_each(|d| send(fail_done(d, &err)));
                let ok = applies.is_empty();
                self.carry = applies;
                ok
            }
        }
    }

    /// Retires the log segments the database now holds for good (the first one becomes the
    /// next segment), and otherwise prepares the next segment once the current one is half
    /// full, so the committer never waits for a file to be made.
    fn after_commit(&mut self, full: bool, applies: &[Applies]) {
        let Some(last) = applies.last() else { return };
        if full && last.seg > self.durable_seg {
            // Every record of a segment is queued before any of the next one's.
            if let Err(e) = log::recycle(&self.log_dir, last.seg, Some(last.seg + 1)) {
                tracing::warn!(error = %e, "cannot recycle grace log segments");
            }
            self.durable_seg = last.seg;
        }
        if last.offset > log::SEGMENT_BYTES / 2 && self.prepared < last.seg + 1 {
            self.prepared = last.seg + 1;
            if let Err(e) = log::prepare(&self.log_dir, last.seg + 1, None) {
                tracing::warn!(error = %e, "cannot prepare the next grace log segment");
            }
        }
    }
}

/// Inserts accepted items until the first error (after one, the transaction is rolled back and
/// the items retried, so nothing more is attempted).
fn insert_all(conn: &Connection, items: &[Arc<Item>], error: &mut Option<StoreError>) {
    if error.is_none() {
        *error = items.iter().find_map(|i| ops::insert(conn, i).err());
    }
}

/// The accepted items of a batch that could not start (its commands are answered with `e`).
fn batch_applies(batch: Vec<Cmd>, e: &StoreError) -> Vec<Applies> {
    let mut out = Vec::new();
    for cmd in batch {
        match cmd {
            Cmd::Apply(items, seg, offset) => out.push(Applies { items, seg, offset }),
            cmd => send(fail_one(cmd, e)),
        }
    }
    out
}

/// A savepoint on a transaction we already hold (rusqlite's `Transaction::savepoint` needs `&mut`).
trait SavepointExt {
    fn unchecked_transaction_savepoint(&self) -> rusqlite::Result<Savepoint<'_>>;
}

/// A named savepoint released on commit and rolled back on drop.
pub struct Savepoint<'a> {
    conn: &'a Connection,
    done: bool,
}

impl SavepointExt for Transaction<'_> {
    fn unchecked_transaction_savepoint(&self) -> rusqlite::Result<Savepoint<'_>> {
        self.prepare_cached("SAVEPOINT cmd")?.execute([])?;
        Ok(Savepoint { conn: self, done: false })
    }
}

impl Savepoint<'_> {
    fn commit(&mut self) -> rusqlite::Result<()> {
        self.done = true;
        self.conn.prepare_cached("RELEASE cmd")?.execute([]).map(|_| ())
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch("ROLLBACK TO cmd; RELEASE cmd");
        }
    }
}

fn fail_one(cmd: Cmd, e: &StoreError) -> Done {
    match cmd {
        Cmd::Transition(_, r) => Done::Transition(r, Err(e.clone())),
        Cmd::Expire(_, r) => Done::Expire(r, Err(e.clone())),
        Cmd::Audit(_, r) | Cmd::SetMeta(_, _, r) | Cmd::Barrier(r) => Done::Unit(r, Err(e.clone())),
        Cmd::Apply(..) | Cmd::Stop => unreachable_stop(),
    }
}

/// `Stop` never enters a batch and `Apply` has no one to answer; a dummy answer keeps the
/// matches total without a panic.
fn unreachable_stop() -> Done {
    let (tx, _rx) = oneshot::channel();
    Done::Unit(tx, Ok(()))
}

fn fail_done(d: Done, e: &StoreError) -> Done {
    match d {
        Done::Transition(r, _) => Done::Transition(r, Err(e.clone())),
        Done::Expire(r, _) => Done::Expire(r, Err(e.clone())),
        Done::Unit(r, _) => Done::Unit(r, Err(e.clone())),
    }
}

fn send(d: Done) {
    // A caller that went away (client disconnected) no longer needs the answer; the work is done.
    match d {
        Done::Transition(r, v) => drop(r.send(v)),
        Done::Expire(r, v) => drop(r.send(v)),
        Done::Unit(r, v) => drop(r.send(v)),
    }
}

/// Runs one command in its savepoint. Returns (succeeded, answer).
fn run_one(sp: &mut Savepoint<'_>, moves: &mut Vec<Undo>, cmd: Cmd) -> (bool, Done) {
    let conn = sp.conn;
    match cmd {
        Cmd::Transition(t, r) => {
            let v = ops::transition(conn, moves, &t);
            (v.is_ok(), Done::Transition(r, v))
        }
        Cmd::Expire(now, r) => {
            let v = ops::expire(conn, moves, now);
            (v.is_ok(), Done::Expire(r, v))
        }
        Cmd::Audit([actor, action, target, reason], r) => {
            let v = conn
                .prepare_cached("INSERT INTO audit(at_ms, actor, action, target, reason) VALUES (?1,?2,?3,?4,?5)")
                .and_then(|mut s| s.execute(params![now_ms(), actor, action, target, reason]))
                .map(|_| ())
                .map_err(StoreError::from);
            (v.is_ok(), Done::Unit(r, v))
        }
        Cmd::Apply(..) | Cmd::Barrier(_) | Cmd::Stop => (true, unreachable_stop()),
        Cmd::SetMeta(k, v, r) => {
            let res = match v {
                Some(v) => conn.execute("INSERT OR REPLACE INTO meta(k, v) VALUES (?1, ?2)", params![k, v]),
                None => conn.execute("DELETE FROM meta WHERE k = ?1", params![k]),
            }
            .map(|_| ())
            .map_err(StoreError::from);
            (res.is_ok(), Done::Unit(r, res))
        }
    }
}
