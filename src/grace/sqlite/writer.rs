//! The one journal writer: a dedicated thread that group-commits.
//!
//! Every change to the journal is a command on this thread's channel. The thread takes the
//! first waiting command plus everything queued behind it (up to [`MAX_BATCH`]), runs them all in
//! one `BEGIN IMMEDIATE` transaction — each in its own savepoint, so one bad command does not sink
//! the others — and COMMITs once. With `synchronous=FULL` that COMMIT is one fsync for the whole
//! batch: concurrent appends share it (group commit), and no caller hears "done" before it.
//! One writer also makes the key claim, the limit check and the insert trivially atomic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::counters::{Counters, Undo};
use super::ops;
use super::schema;
use crate::grace::clock::now_ms;
use crate::grace::config::GraceLimits;
use crate::grace::store::{AppendOutcome, NewItem, StoreError, Transition};
use crate::telemetry::names;

/// Most commands in one transaction.
pub const MAX_BATCH: usize = 2048;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum Cmd {
    Append(Box<NewItem>, Arc<GraceLimits>, Reply<AppendOutcome>),
    Transition(Box<Transition>, Reply<bool>),
    Expire(i64, Reply<u64>),
    Audit([String; 4], Reply<()>),
    SetMeta(String, Option<String>, Reply<()>),
    /// Commit what is queued, then stop.
    Stop,
}

/// Runs the writer until every sender is dropped, then returns (the connection closes cleanly).
///
/// `backfilled` is raised by the checkpoint thread when its last pass copied the whole WAL
/// it found (`checkpoint.rs`). The writer then finishes that checkpoint between two batches.
pub fn run(
    mut conn: Connection,
    counters: Arc<Mutex<Counters>>,
    mut rx: mpsc::Receiver<Cmd>,
    backfilled: Arc<AtomicBool>,
) {
    let fsync = metrics::histogram!(names::GRACE_FSYNC_SECONDS);
    let mut stop = false;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::with_capacity(64);
        for cmd in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match cmd {
                Cmd::Stop => stop = true,
                cmd => batch.push(cmd),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
        }
        let bytes = schema::journal_bytes(&conn);
        if let Ok(mut c) = counters.lock() {
            c.journal_bytes = bytes;
        }
        if !batch.is_empty() {
            commit_batch(&mut conn, &counters, batch, &fsync);
        }
        if backfilled.swap(false, Ordering::AcqRel) {
            finish_checkpoint(&conn);
        }
        if stop && rx.is_empty() {
            break;
        }
    }
    // Fold the WAL into the database file, so a copy of the file alone is complete.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "journal checkpoint on close failed (the WAL file holds the rest)");
    }
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
    Append(Reply<AppendOutcome>, Result<AppendOutcome, StoreError>),
    Transition(Reply<bool>, Result<bool, StoreError>),
    Expire(Reply<u64>, Result<u64, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
}

fn commit_batch(conn: &mut Connection, counters: &Mutex<Counters>, batch: Vec<Cmd>, fsync: &metrics::Histogram) {
    let mut undo = Vec::new();
    let mut done = Vec::with_capacity(batch.len());
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch.into_iter().map(pending).collect(), &StoreError::from(e)),
    };
    {
        let Ok(mut c) = counters.lock() else {
            return fail_all(batch.into_iter().map(pending).collect(), &StoreError("counters poisoned".into()));
        };
        for cmd in batch {
            let mark = undo.len();
            // An append is one INSERT (atomic by itself) after reads, and touches the counters
            // only once the INSERT succeeded: it needs no savepoint, which keeps the hot path lean.
            if let Cmd::Append(item, limits, reply) = cmd {
                let v = ops::append(&tx, &mut c, &mut undo, *item, &limits);
                done.push(Done::Append(reply, v));
                continue;
            }
            let mut sp = match tx.unchecked_transaction_savepoint() {
                Ok(sp) => sp,
                Err(e) => {
                    done.push(fail_one(cmd, &e.into()));
                    continue;
                }
            };
            let result = run_one(&mut sp, &mut c, &mut undo, cmd);
            let ok = result.0;
            if ok {
                if let Err(e) = sp.commit() {
                    let log = undo.split_off(mark);
                    c.undo(log);
                    done.push(fail_done(result.1, &e.into()));
                    continue;
                }
            } else {
                let log = undo.split_off(mark);
                c.undo(log);
            }
            done.push(result.1);
        }
    }
    let started = Instant::now();
    let committed = tx.commit();
    fsync.record(started.elapsed().as_secs_f64());
    match committed {
        Ok(()) => done.into_iter().for_each(send),
        Err(e) => {
            if let Ok(mut c) = counters.lock() {
                c.undo(undo);
            }
            let err = StoreError(format!("commit failed: {e}"));
            done.into_iter().for_each(|d| send(fail_done(d, &err)));
        }
    }
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

fn pending(cmd: Cmd) -> Done {
    fail_one(cmd, &StoreError("not run".into()))
}

fn fail_one(cmd: Cmd, e: &StoreError) -> Done {
    match cmd {
        Cmd::Append(_, _, r) => Done::Append(r, Err(e.clone())),
        Cmd::Transition(_, r) => Done::Transition(r, Err(e.clone())),
        Cmd::Expire(_, r) => Done::Expire(r, Err(e.clone())),
        Cmd::Audit(_, r) | Cmd::SetMeta(_, _, r) => Done::Unit(r, Err(e.clone())),
        Cmd::Stop => unreachable_stop(),
    }
}

/// `Stop` never enters a batch; a dummy answer keeps the matches total without a panic.
fn unreachable_stop() -> Done {
    let (tx, _rx) = oneshot::channel();
    Done::Unit(tx, Ok(()))
}

fn fail_done(d: Done, e: &StoreError) -> Done {
    match d {
        Done::Append(r, _) => Done::Append(r, Err(e.clone())),
        Done::Transition(r, _) => Done::Transition(r, Err(e.clone())),
        Done::Expire(r, _) => Done::Expire(r, Err(e.clone())),
        Done::Unit(r, _) => Done::Unit(r, Err(e.clone())),
    }
}

fn fail_all(done: Vec<Done>, e: &StoreError) {
    done.into_iter().for_each(|d| send(fail_done(d, e)));
}

fn send(d: Done) {
    // A caller that went away (client disconnected) no longer needs the answer; the work is done.
    match d {
        Done::Append(r, v) => drop(r.send(v)),
        Done::Transition(r, v) => drop(r.send(v)),
        Done::Expire(r, v) => drop(r.send(v)),
        Done::Unit(r, v) => drop(r.send(v)),
    }
}

/// Runs one command in its savepoint. Returns (succeeded, answer).
fn run_one(sp: &mut Savepoint<'_>, c: &mut Counters, undo: &mut Vec<Undo>, cmd: Cmd) -> (bool, Done) {
    let conn = sp.conn;
    match cmd {
        Cmd::Append(item, limits, r) => {
            let v = ops::append(conn, c, undo, *item, &limits);
            (v.is_ok(), Done::Append(r, v))
        }
        Cmd::Transition(t, r) => {
            let v = ops::transition(conn, c, undo, &t);
            (v.is_ok(), Done::Transition(r, v))
        }
        Cmd::Expire(now, r) => {
            let v = ops::expire(conn, c, undo, now);
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
        Cmd::Stop => (true, unreachable_stop()),
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
