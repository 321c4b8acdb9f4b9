//! The embedded journal: a write-ahead log of accepted items in front of one SQLite file per
//! grace policy (rusqlite, bundled SQLite).
//!
//! Appends go to the committer thread ([`committer`]): key claim, limit decision, one group
//! write and `fdatasync` of the log ([`log`]), then the answer. The applier thread ([`writer`])
//! writes accepted items into SQLite behind the log, and runs every other change (transitions,
//! expiry, audit) as a durable transaction. Reads use a small pool of separate connections
//! (WAL lets them run while the applier commits) and see accepted items the applier has not
//! reached yet through [`committer::Pending`]. On open: integrity check, the log replayed into
//! the database, items that were in flight become `unknown` (query before resend), counters
//! rebuilt.

mod checkpoint;
mod committer;
mod counters;
mod keys;
pub mod log;
mod ops;
pub mod report;
pub mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::config::GraceLimits;
use super::store::{
    AppendOutcome, Item, NewItem, State, Store, StoreError, StoreFuture, Summary, Transition, TransitionRow,
};
use committer::{Append, Committer, Pending};
use counters::Counters;
use keys::KeyFilter;
use schema::ITEM_COLS;
use writer::{Applier, Cmd};

/// The SQLite [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    appends: Mutex<Option<mpsc::Sender<Append>>>,
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The applier's thread, to unpark it when a command arrives.
    applier: std::thread::Thread,
    checkpointer: Mutex<Option<checkpoint::Checkpointer>>,
    /// The applier's and the checkpoint thread's gate and flags.
    shared: Arc<checkpoint::Shared>,
    counters: Arc<Mutex<Counters>>,
    pending: Arc<Mutex<Pending>>,
    readers: Arc<Mutex<Vec<Connection>>>,
}

impl SqliteStore {
    /// Opens (or creates) the journal with its log in the default directory (`<path>-log`).
    pub fn open(path: &Path) -> Result<(SqliteStore, u64), StoreError> {
        SqliteStore::open_with_log(path, &log::dir_for(path))
    }

    /// Opens (or creates) the journal with its log in `log_dir`, checks it, replays its log
    /// (and, if the log has moved, first what the old directory still holds), recovers and
    /// starts the committer and applier threads. Returns the store and the number of in-flight
    /// items turned `unknown`.
    pub fn open_with_log(path: &Path, log_dir: &Path) -> Result<(SqliteStore, u64), StoreError> {
        let mut conn = schema::open_writer(path)?;
        schema::integrity_check(&conn)?;
        adopt_log_dir(&mut conn, path, log_dir)?;
        let log_dir = log_dir.to_path_buf();
        let io = |what: &str, e: std::io::Error| StoreError(format!("{what} {}: {e}", log_dir.display()));
        let next_seg = log::next_id(&log_dir).map_err(|e| io("cannot read the grace log", e))?;
        let replayed = replay_log(&mut conn, &log_dir, next_seg)?;
        if replayed > 0 {
            tracing::info!(items = replayed, "grace log replayed into the journal");
        }
        let recovered = schema::recover_in_flight(&conn)?;
        let mut counters = Counters::rebuild(&conn)?;
        counters.journal_bytes = schema::journal_bytes(&conn);
        let next_seq: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM items", [], |r| r.get(0))?;
        let log = log::Writer::open(&log_dir, next_seg).map_err(|e| io("cannot open the grace log", e))?;
        let counters = Arc::new(Mutex::new(counters));
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (tx, rx) = mpsc::channel(writer::MAX_BATCH * 8);
        let shared = Arc::new(checkpoint::Shared::default());
        let applier = Applier::new(conn, counters.clone(), pending.clone(), log_dir, shared.clone(), next_seg);
        let thread = std::thread::Builder::new()
            .name("grace-journal".into())
            .spawn(move || applier.run(rx))
            .map_err(|e| StoreError(format!("cannot start the journal writer: {e}")))?;
        let reader = schema::open_reader(path)?;
        let keys = known_keys(&reader)?;
        let committer = Committer {
            log,
            reader,
            counters: counters.clone(),
            pending: pending.clone(),
            applier: tx.clone(),
            next_seq,
            keys,
        };
        let (atx, arx) = mpsc::channel(writer::MAX_BATCH * 8);
        let committer = std::thread::Builder::new()
            .name("grace-commit".into())
            .spawn(move || committer.run(arx))
            .map_err(|e| StoreError(format!("cannot start the journal committer: {e}")))?;
        let store = SqliteStore {
            path: path.to_path_buf(),
            appends: Mutex::new(Some(atx)),
            tx: Mutex::new(Some(tx)),
            committer: Mutex::new(Some(committer)),
            applier: thread.thread().clone(),
            thread: Mutex::new(Some(thread)),
            checkpointer: Mutex::new(Some(checkpoint::Checkpointer::start(path, shared.clone())?)),
            shared,
            counters,
            pending,
            readers: Arc::new(Mutex::new(Vec::new())),
        };
        Ok((store, recovered))
    }

    /// Answers once everything accepted or queued so far is in the database (for readers that
    /// list or report rather than look one item up).
    fn barrier(&self) -> StoreFuture<'_, ()> {
        self.command(Cmd::Barrier)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sender(&self) -> Result<mpsc::Sender<Cmd>, StoreError> {
        self.tx.lock().ok().and_then(|t| t.clone()).ok_or_else(|| StoreError("the journal is closed".into()))
    }

    fn command<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Cmd + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let sender = self.sender();
        let applier = self.applier.clone();
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            sender?.send(make(reply)).await.map_err(|_| StoreError("the journal writer stopped".into()))?;
            // The applier may be holding accepted items back for a bigger batch: a command
            // does not wait for that.
            applier.unpark();
            rx.await.map_err(|_| StoreError("the journal writer stopped".into()))?
        })
    }

    /// Runs `f` on a pooled read connection in the blocking pool.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let conn = readers.lock().ok().and_then(|mut r| r.pop());
                let conn = match conn {
                    Some(c) => c,
                    None => schema::open_reader(&path)?,
                };
                let out = f(&conn);
                if let Ok(mut r) = readers.lock() {
                    if r.len() < 4 {
                        r.push(conn);
                    }
                }
                out
            })
            .await
            .map_err(|e| StoreError(format!("journal reader failed: {e}")))?
        })
    }
}

thread_local! {
    static READERS: std::cell::RefCell<std::collections::HashMap<PathBuf, Connection>> = Default::default();
}

/// Runs `f` on a read connection owned by the current thread (opened on first use).
fn with_thread_reader<T>(path: &Path, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
    READERS.with(|cell| {
        let mut map = cell.try_borrow_mut().map_err(|_| StoreError("reader busy".into()))?;
        if !map.contains_key(path) {
            map.insert(path.to_path_buf(), schema::open_reader(path)?);
        }
        match map.get(path) {
            Some(conn) => f(conn),
            None => Err(StoreError("no reader".into())),
        }
    })
}

/// The log directory recorded in the journal when it was last opened, if any.
fn log_dir_on_record(conn: &Connection) -> Result<Option<PathBuf>, StoreError> {
    let v = conn.query_row("SELECT v FROM meta WHERE k = 'log_dir'", [], |r| r.get::<_, String>(0)).optional()?;
    Ok(v.map(PathBuf::from))
}

/// The log directory the journal at `path` was last opened with (a journal from before it was
/// recorded used the default one).
pub fn recorded_log_dir(conn: &Connection, path: &Path) -> Result<PathBuf, StoreError> {
    Ok(log_dir_on_record(conn)?.unwrap_or_else(|| log::dir_for(path)))
}

/// The hash of every idempotency key the database holds, for the committer's filter
/// (`keys.rs`), read from the `items_idem` index alone. Called after the log's replay, so items
/// only the log held are in it too.
fn known_keys(conn: &Connection) -> Result<KeyFilter, StoreError> {
    let started = std::time::Instant::now();
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM items", [], |r| r.get(0))?;
    let mut keys = KeyFilter::with_capacity(u64::try_from(count).unwrap_or(0));
    let mut stmt = conn.prepare("SELECT idem_hash FROM items INDEXED BY items_idem")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        keys.insert(row.get(0)?);
    }
    if count > 0 {
        tracing::info!(
            keys = keys.len(),
            kib = keys.bytes() / 1024,
            ms = started.elapsed().as_millis() as u64,
            "grace journal: idempotency keys loaded"
        );
    }
    Ok(keys)
}

/// Makes `log_dir` the journal's log directory. If the journal was last opened with another
/// one that still exists, every item in it is written into the database first (durably, those
/// already there left alone), so moving the log never hides an acknowledged item; the old
/// directory is left as it was, for the operator to remove.
///
/// A log directory that has gone missing is refused when it may have held items the database
/// does not: when it is a directory of its own that the journal last wrote to (its volume not
/// mounted, say), and whenever the journal did not stop cleanly since it last wrote there
/// (`log_clean`, below), whichever directory is configured now. A journal that stopped cleanly
/// had everything in the database and its log emptied, so a `.db` copied alone after a clean
/// stop starts without its log.
fn adopt_log_dir(conn: &mut Connection, path: &Path, log_dir: &Path) -> Result<(), StoreError> {
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let recorded = log_dir_on_record(conn)?;
    let own = log_dir != log::dir_for(path);
    if own && recorded.as_deref().is_some_and(|d| same(d, log_dir)) && !log_dir.exists() {
        return Err(StoreError(format!(
            "the grace log directory {} is missing, and {} last wrote its log there: is its volume mounted? \
             (create it empty only if its contents are known to be lost)",
            log_dir.display(),
            path.display()
        )));
    }
    let previous = recorded.clone().unwrap_or_else(|| log::dir_for(path));
    if log_left_dirty(conn)? && !previous.exists() {
        return Err(StoreError(format!(
            "{} did not stop cleanly the last time it ran, and the grace log directory it wrote then, {}, is missing: \
             settlements acknowledged since may be only there. Mount it again{} (create it empty only if its \
             contents are known to be lost)",
            path.display(),
            previous.display(),
            if same(&previous, log_dir) { "" } else { " or point store.log_dir back at it" },
        )));
    }
    if recorded.as_deref() != Some(log_dir) {
        if !same(&previous, log_dir) && previous.exists() {
            let items = insert_logged(conn, &previous)?;
            tracing::warn!(
                from = %previous.display(),
                to = %log_dir.display(),
                items,
                "the grace log has moved: what the old directory held is in the journal now; the old directory is no longer used and can be removed"
            );
        }
        conn.execute("INSERT OR REPLACE INTO meta(k, v) VALUES ('log_dir', ?1)", params![log_dir.to_string_lossy()])?;
    }
    // From here until a clean close, the log may hold items the database does not.
    conn.execute("INSERT OR REPLACE INTO meta(k, v) VALUES ('log_clean', '0')", [])?;
    Ok(())
}

/// Whether the journal was opened and has not been closed cleanly since (`log_clean` is `0`).
/// A journal from before this was recorded says nothing, and is taken as clean, as before.
pub(crate) fn log_left_dirty(conn: &Connection) -> Result<bool, StoreError> {
    let v = conn.query_row("SELECT v FROM meta WHERE k = 'log_clean'", [], |r| r.get::<_, String>(0)).optional()?;
    Ok(v.as_deref() == Some("0"))
}

/// Writes every item in the log into the database (those already there are left alone), with
/// a durable commit, then retires the log (one file becomes segment `next_seg`). Returns how many items the log held.
fn replay_log(conn: &mut Connection, dir: &Path, next_seg: u64) -> Result<usize, StoreError> {
    let items = insert_logged(conn, dir)?;
    if dir.exists() {
        log::recycle(dir, next_seg, Some(next_seg))
            .map_err(|e| StoreError(format!("cannot recycle {}: {e}", dir.display())))?;
    }
    Ok(items)
}

/// Writes every item in the log at `dir` into the database in one durable transaction (those
/// already there are left alone); the log is not changed. Returns how many items it held.
fn insert_logged(conn: &mut Connection, dir: &Path) -> Result<usize, StoreError> {
    let items = log::read_items(dir).map_err(StoreError)?;
    if !items.is_empty() {
        let tx = conn.transaction()?;
        for (_, item) in &items {
            ops::insert(&tx, item)?;
        }
        tx.commit()?;
    }
    Ok(items.len())
}

fn items(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Vec<Item>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(p, schema::item)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

impl Store for SqliteStore {
    fn append(&self, item: NewItem, limits: Arc<GraceLimits>) -> StoreFuture<'_, AppendOutcome> {
        let sender = self.appends.lock().ok().and_then(|t| t.clone());
        Box::pin(async move {
            let sender = sender.ok_or_else(|| StoreError("the journal is closed".into()))?;
            let (reply, rx) = oneshot::channel();
            let stopped = || StoreError("the journal committer stopped".into());
            sender
                .send(Append(Box::new(item), limits, reply, std::time::Instant::now()))
                .await
                .map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())?
        })
    }

    fn transition(&self, t: Transition) -> StoreFuture<'_, bool> {
        self.command(move |r| Cmd::Transition(Box::new(t), r))
    }

    fn expire(&self, now_ms: i64) -> StoreFuture<'_, u64> {
        self.command(move |r| Cmd::Expire(now_ms, r))
    }

    fn audit(&self, actor: String, action: String, target: String, reason: String) -> StoreFuture<'_, ()> {
        self.command(move |r| Cmd::Audit([actor, action, target, reason], r))
    }

    fn set_meta(&self, key: String, value: Option<String>) -> StoreFuture<'_, ()> {
        self.command(move |r| Cmd::SetMeta(key, value, r))
    }

    fn meta(&self, key: String) -> StoreFuture<'_, Option<String>> {
        self.read(move |c| Ok(c.query_row("SELECT v FROM meta WHERE k = ?1", params![key], |r| r.get(0)).optional()?))
    }

    fn by_key(&self, key: String) -> StoreFuture<'_, Option<Item>> {
        // On the request path for every settlement: an indexed point read on this thread's own
        // connection (microseconds; WAL readers never wait for the writer) instead of a trip
        // through the blocking pool.
        if let Some(item) = self.pending.lock().ok().and_then(|p| p.by_key(&key)) {
            return Box::pin(std::future::ready(Ok(Some(item))));
        }
        let result = with_thread_reader(&self.path, |c| ops::by_key(c, &key));
        Box::pin(std::future::ready(result))
    }

    fn get(&self, receipt_id: String) -> StoreFuture<'_, Option<Item>> {
        if let Some(item) = self.pending.lock().ok().and_then(|p| p.by_receipt(&receipt_id)) {
            return Box::pin(std::future::ready(Ok(Some(item))));
        }
        self.read(move |c| {
            Ok(items(c, &format!("SELECT {ITEM_COLS} FROM items WHERE receipt_id = ?1"), params![receipt_id])?.pop())
        })
    }

    fn history(&self, receipt_id: String) -> StoreFuture<'_, Vec<TransitionRow>> {
        Box::pin(async move {
            self.barrier().await?;
            self.read(move |c| report::history(c, &receipt_id)).await
        })
    }

    fn due(&self, now_ms: i64, limit: usize) -> StoreFuture<'_, Vec<Item>> {
        // Lane heads only: no earlier unfinished item of the same card (strict FIFO per card;
        // an item parked in needs_review holds its lane until an operator resolves it).
        // Both indexes are partial, so neither the scan nor the lane probe touches the items
        // already settled: the earlier form (a full (card_ref, seq) index) walked each card's
        // whole history per candidate, 4 s per call at a 10 000-item backlog over 50 cards.
        let sql = format!(
            "SELECT {ITEM_COLS} FROM items i INDEXED BY items_ready \
             WHERE state IN ('journaled','retry_wait','unknown') AND next_attempt_ms <= ?1 \
             AND NOT EXISTS (SELECT 1 FROM items j INDEXED BY items_open_card WHERE j.card_key = i.card_key \
             AND j.card_ref = i.card_ref AND j.seq < i.seq AND j.state IN {}) ORDER BY seq LIMIT ?2",
            schema::OUTSTANDING
        );
        Box::pin(async move {
            // Items accepted but not yet in the database are due too: have them written first.
            if !self.pending.lock().map(|p| p.is_empty()).unwrap_or(true) {
                self.barrier().await?;
            }
            self.read(move |c| items(c, &sql, params![now_ms, limit as i64])).await
        })
    }

    fn list(&self, state: Option<State>, limit: usize) -> StoreFuture<'_, Vec<Item>> {
        Box::pin(async move {
            self.barrier().await?;
            self.read(move |c| report::list(c, state, limit)).await
        })
    }

    fn reconciliation(&self, date: String) -> StoreFuture<'_, serde_json::Value> {
        Box::pin(async move {
            self.barrier().await?;
            self.read(move |c| report::reconciliation(c, &date)).await
        })
    }

    fn summary(&self) -> Summary {
        let mut s = self.counters.lock().map(|c| c.summary()).unwrap_or_default();
        if self.shared.sync_failed.load(std::sync::atomic::Ordering::Acquire) {
            s.journal_error = Some(checkpoint::SYNC_FAILED.into());
        }
        s
    }

    fn card_exposure(&self, card_ref: &str) -> (u64, i64) {
        self.counters.lock().ok().and_then(|c| c.cards.get(card_ref).copied()).unwrap_or_default()
    }

    fn close(&self) {
        let checkpointer = self.checkpointer.lock().ok().and_then(|mut c| c.take());
        if let Some(mut c) = checkpointer {
            c.stop();
        }
        // The committer first: it answers what is queued and hands the last items to the
        // applier; then the applier, which commits everything queued before it stops.
        let appends = self.appends.lock().ok().and_then(|mut tx| tx.take());
        drop(appends);
        let committer = self.committer.lock().ok().and_then(|mut t| t.take());
        if let Some(committer) = committer {
            let _ = committer.join();
        }
        let sender = self.tx.lock().ok().and_then(|mut tx| tx.take());
        if let Some(sender) = sender {
            let _ = sender.try_send(Cmd::Stop);
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        if let Ok(mut r) = self.readers.lock() {
            r.clear();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::grace::config::CountAmount;

    fn limits(card_count: u64) -> Arc<GraceLimits> {
        let big = CountAmount { count: Some(1_000), amount: Some(1_000_000) };
        Arc::new(GraceLimits {
            per_settlement: 10_000,
            card_soft: CountAmount::default(),
            card_hard: CountAmount { count: Some(card_count), amount: None },
            institution: big,
            total: big,
            journal_bytes: 1 << 30,
            max_age: Duration::from_secs(60),
        })
    }

    fn item(i: u32, card: &str) -> NewItem {
        NewItem {
            receipt_id: format!("r{i}"),
            idem_key: format!("k{i}"),
            fingerprint: [1; 32],
            policy: "p".into(),
            route: "settle".into(),
            card_ref: card.into(),
            card_masked: "***".into(),
            institution: "H1".into(),
            amount_fen: 100,
            reason: "circuit_open".into(),
            state: State::Journaled,
            method: "POST".into(),
            path: "/pay".into(),
            payload: b"{}".to_vec(),
            encrypted: false,
            accepted_ms: 1,
            deadline_ms: i64::MAX / 2,
            next_attempt_ms: 0,
        }
    }

    fn to(id: &str, from: &[State], to: State) -> Transition {
        Transition { receipt_id: id.into(), from: from.to_vec(), to: Some(to), actor: "t".into(), ..Default::default() }
    }

    /// Under a steady stream of appends the WAL is restarted again and again instead of growing
    /// for as long as the load lasts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_sustained_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let (store, _) = SqliteStore::open(&path).unwrap();
        let store = Arc::new(store);
        let unlimited = CountAmount { count: Some(u64::MAX / 4), amount: Some(u64::MAX / 4) };
        let limits = Arc::new(GraceLimits {
            card_hard: unlimited,
            institution: unlimited,
            total: unlimited,
            ..(*limits(1)).clone()
        });
        // At least 3 s of appends, and on until the WAL has restarted (a slow machine takes
        // longer to fill 4096 frames), but never more than 30 s.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..128u32 {
            let (store, limits, stop) = (store.clone(), limits.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut it = item(w * 1_000_000 + i, &format!("card-{}", (w * 7919 + i * 104_729) % 5000));
                    it.payload = vec![b'x'; 400];
                    let out = store.append(it, limits.clone()).await.unwrap();
                    assert!(matches!(out, AppendOutcome::Accepted(_)));
                    i += 1;
                }
                i
            }));
        }
        let wal_path = dir.path().join("j.db-wal");
        // The WAL header's checkpoint sequence number counts the restarts (big-endian u32 at 12).
        let restarts_of = |wal: &[u8]| wal.get(12..16).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let started = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut header = [0u8; 16];
            let read = std::fs::File::open(&wal_path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header));
            let restarted = read.is_ok() && restarts_of(&header) >= 1;
            // A WAL past the bound fails below at once: no need to fill the disk for 30 s.
            let too_big = std::fs::metadata(&wal_path).is_ok_and(|m| m.len() >= 128 << 20);
            let elapsed = started.elapsed();
            if (restarted && elapsed >= Duration::from_secs(3)) || too_big || elapsed >= Duration::from_secs(30) {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let wal = std::fs::read(&wal_path).unwrap();
        let restarts = restarts_of(&wal);
        assert!(total > 1000, "the writers got {total} appends through");
        // Measured (restart at 4096 frames): 15 restarts in 4 s (an 83 MB WAL) with the writer
        // finishing checkpoints, none (an 818 MB WAL, still growing) without. In a debug build
        // beside the other tests (~60 000 appends/s; printed by a temporary eprintln!): 2–4
        // restarts, a 30–57 MB WAL; with the checkpoint thread's own syncs 2 restarts, 30–38 MB,
        // and once in eleven runs only 1.
        // On the machine of session 19 (syscalls three times as dear) 3 s were not enough for
        // the first restart (a 22 MB WAL): the writers now go on until it comes.
        assert!(restarts >= 1, "the WAL never restarted in 30 s of appends ({} bytes)", wal.len());
        assert!(wal.len() < 128 << 20, "the WAL grew to {} bytes ({restarts} restarts)", wal.len());
        // The log is bounded too: segments the database holds for good are reused or deleted
        // (the current one, the next one prepared, at most one retiring).
        let log_dir = log::dir_for(&path);
        let segments = log::segments(&log_dir).unwrap();
        let newest = segments.last().map(|s| s.0).unwrap_or(0);
        assert!(newest >= 2, "{total} appends should fill more than one 16 MiB segment (newest is {newest})");
        assert!(segments.len() <= 3, "{} segment files kept: {segments:?}", segments.len());
        store.close();
        assert!(log::segments(&log_dir).unwrap().is_empty(), "a clean close leaves no log to replay");
    }

    /// Writes items `n` (card "a", seq `n`) into the log at `dir` as the committer does, as if
    /// the process died before the applier wrote them into the database.
    fn log_only(dir: &Path, n: &[u32]) {
        let accepted =
            |i: u32| ops::accepted(item(i, "a"), i64::from(i), ops::Remaining { count: Some(7), amount: None });
        let records: Vec<Vec<u8>> = n.iter().map(|&i| log::encode(&accepted(i))).collect();
        let mut w = log::Writer::open(dir, log::next_id(dir).unwrap()).unwrap();
        w.append(&records.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
    }

    /// After a sync of the database failed (`checkpoint.rs`) the applier writes nothing more:
    /// appends are still acknowledged from the log, commands are refused with the reason, the
    /// close leaves the log alone, and the next start replays every item into the database.
    #[tokio::test]
    async fn after_a_failed_sync_nothing_more_is_written_and_a_restart_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let (store, _) = SqliteStore::open(&path).unwrap();
        assert!(matches!(store.append(item(1, "a"), limits(10)).await.unwrap(), AppendOutcome::Accepted(_)));
        assert_eq!(store.list(None, 10).await.unwrap().len(), 1, "item 1 is in the database");
        store.shared.sync_failed.store(true, std::sync::atomic::Ordering::Release);
        assert!(matches!(store.append(item(2, "a"), limits(10)).await.unwrap(), AppendOutcome::Accepted(_)));
        let refused = store.transition(to("r1", &[State::Journaled], State::Settled)).await.unwrap_err();
        assert!(refused.0.contains("sync"), "{refused:?}");
        assert_eq!(store.summary().journal_error.as_deref(), Some(checkpoint::SYNC_FAILED));
        store.close();
        drop(store);
        let c = schema::open_reader(&path).unwrap();
        let n: i64 = c.query_row("SELECT COUNT(*) FROM items", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1, "item 2 was never written into the database");
        drop(c);
        assert!(!log::segments(&log::dir_for(&path)).unwrap().is_empty(), "the log is kept");

        let (store, _) = SqliteStore::open(&path).unwrap();
        assert_eq!(store.card_exposure("a"), (2, 200));
        assert_eq!(store.get("r2".into()).await.unwrap().map(|i| i.seq), Some(2));
        assert!(store.transition(to("r1", &[State::Journaled], State::Settled)).await.unwrap());
        assert_eq!(store.summary().journal_error, None);
        store.close();
    }

    /// Turns a journal into the shape journals had before `idem_hash` and `card_key`: UNIQUE on
    /// the key's text, the card-lane index on the card reference.
    fn downgrade_to_text_key_indexes(path: &Path) {
        let c = Connection::open(path).unwrap();
        c.execute_batch(&format!(
            "BEGIN; CREATE TABLE items_old (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
             receipt_id TEXT NOT NULL UNIQUE, idem_key TEXT NOT NULL UNIQUE, fingerprint BLOB NOT NULL, \
             policy TEXT NOT NULL, route TEXT NOT NULL, card_ref TEXT NOT NULL, card_masked TEXT NOT NULL, \
             institution TEXT NOT NULL, amount_fen INTEGER NOT NULL, reason TEXT NOT NULL, state TEXT NOT NULL, \
             method TEXT NOT NULL, path TEXT NOT NULL, payload BLOB NOT NULL, encrypted INTEGER NOT NULL, \
             accepted_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, \
             attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL DEFAULT 0, \
             final_status INTEGER, final_body TEXT, backend_ref TEXT, last_error TEXT, \
             remaining_count INTEGER, remaining_amount INTEGER); \
             INSERT INTO items_old SELECT {ITEM_COLS} FROM items; DROP TABLE items; \
             ALTER TABLE items_old RENAME TO items; \
             CREATE INDEX items_state ON items(state, next_attempt_ms); \
             CREATE INDEX items_open_lane ON items(card_ref, seq) WHERE state IN {}; \
             CREATE INDEX items_ready ON items(seq) WHERE state IN ('journaled','retry_wait','unknown'); COMMIT;",
            schema::OUTSTANDING
        ))
        .unwrap();
    }

    fn indexes(path: &Path) -> Vec<(String, bool)> {
        let c = Connection::open(path).unwrap();
        let mut stmt = c.prepare("SELECT name, \"unique\" FROM pragma_index_list('items') ORDER BY name").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    }

    /// A journal written before the hashed key indexes is rebuilt once when opened: every item
    /// keeps its number and state, its key is still claimed, card lanes still order the
    /// forwarding, an item only in its log is read offline from the old shape and replayed
    /// into the new one, and the text indexes are gone.
    #[tokio::test]
    async fn a_journal_with_text_key_indexes_is_rebuilt_with_hashed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let (store, _) = SqliteStore::open(&path).unwrap();
        for (i, card) in [(1, "a"), (2, "a"), (3, "b")] {
            assert!(matches!(store.append(item(i, card), limits(10)).await.unwrap(), AppendOutcome::Accepted(_)));
        }
        store.close();
        drop(store);
        downgrade_to_text_key_indexes(&path);
        let old = indexes(&path);
        assert!(old.iter().any(|(n, u)| n == "sqlite_autoindex_items_2" && *u), "{old:?}");
        assert!(old.iter().any(|(n, _)| n == "items_open_lane"), "{old:?}");
        log_only(&log::dir_for(&path), &[5]);

        // The CLI reads the old shape, the item only in the log included, and changes nothing.
        let offline = schema::open_offline(&path, None).unwrap();
        let n: i64 = offline.query_row("SELECT COUNT(*) FROM items", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 4);
        drop(offline);
        assert_eq!(indexes(&path), old);

        let (store, _) = SqliteStore::open(&path).unwrap();
        let new = indexes(&path);
        let names: Vec<&str> = new.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"items_idem") && names.contains(&"items_open_card"), "{new:?}");
        assert!(!names.contains(&"items_open_lane"), "{new:?}");
        assert_eq!(new.iter().filter(|(_, u)| *u).count(), 1, "only the receipt id is UNIQUE: {new:?}");
        for (i, seq) in [(2, 2), (5, 5)] {
            match store.append(item(i, "a"), limits(10)).await.unwrap() {
                AppendOutcome::Existing(e) => assert_eq!(e.seq, seq, "key k{i}"),
                other => panic!("key k{i} is still claimed: {other:?}"),
            }
        }
        match store.append(item(6, "b"), limits(10)).await.unwrap() {
            AppendOutcome::Accepted(i) => assert_eq!(i.seq, 6),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.card_exposure("a"), (3, 300));
        let due: Vec<i64> = store.due(i64::MAX, 10).await.unwrap().iter().map(|i| i.seq).collect();
        assert_eq!(due, [1, 3], "one head per card lane");
        assert_eq!(store.get("r2".into()).await.unwrap().map(|i| i.state), Some(State::Journaled));
        store.close();
        drop(store);
        let c = schema::open_reader(&path).unwrap();
        schema::integrity_check(&c).unwrap();
        let hashed: i64 =
            c.query_row("SELECT COUNT(*) FROM items WHERE idem_hash <> 0 AND card_key <> 0", [], |r| r.get(0)).unwrap();
        assert_eq!(hashed, 5, "every item, migrated or replayed, has both hashes");
    }

    /// An item acknowledged but not yet applied when the process died is only in the log: the
    /// offline reader shows it, and the next open writes it into the database, counts its
    /// exposure and forwards it; an item in both is not doubled.
    #[tokio::test]
    async fn items_only_in_the_log_are_read_offline_and_replayed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let (store, _) = SqliteStore::open(&path).unwrap();
        assert!(matches!(store.append(item(1, "a"), limits(10)).await.unwrap(), AppendOutcome::Accepted(_)));
        store.close();
        drop(store);
        // What the committer writes for two more items when the applier never gets to them.
        let log_dir = log::dir_for(&path);
        log_only(&log_dir, &[1, 2, 3]);

        let offline = schema::open_offline(&path, None).unwrap();
        let n: i64 = offline.query_row("SELECT COUNT(*) FROM items", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 3, "item 1 is in the file and the log, items 2 and 3 only in the log");
        drop(offline);

        let (store, _) = SqliteStore::open(&path).unwrap();
        assert_eq!(store.card_exposure("a"), (3, 300));
        let r3 = store.get("r3".into()).await.unwrap().expect("replayed");
        assert_eq!((r3.seq, r3.remaining_count), (3, Some(7)));
        assert_eq!(store.due(i64::MAX, 10).await.unwrap().len(), 1, "one lane, one head");
        assert!(log::segments(&log_dir).unwrap().len() <= 1, "replayed segments are recycled");
        // Numbering continues after the replayed items; the replayed key is claimed.
        match store.append(item(4, "a"), limits(10)).await.unwrap() {
            AppendOutcome::Accepted(i) => assert_eq!(i.seq, 4),
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.append(item(2, "a"), limits(10)).await.unwrap(), AppendOutcome::Existing(_)));
        store.close();
    }

    /// With `store.log_dir` the log lives there and nowhere else, and an item acknowledged but
    /// only in that log when the process died is read offline from it (the journal recorded
    /// where its log is) and replayed on the next open.
    #[tokio::test]
    async fn a_log_directory_of_its_own_holds_the_log_and_is_replayed_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let wal = dir.path().join("fast").join("grace-log");
        let (store, _) = SqliteStore::open_with_log(&path, &wal).unwrap();
        assert!(matches!(store.append(item(1, "a"), limits(10)).await.unwrap(), AppendOutcome::Accepted(_)));
        assert!(!log::segments(&wal).unwrap().is_empty(), "the log is in the configured directory");
        assert!(!log::dir_for(&path).exists(), "and not beside the file");
        store.close();
        drop(store);
        log_only(&wal, &[2]);

        let offline = schema::open_offline(&path, None).unwrap();
        let n: i64 = offline.query_row("SELECT COUNT(*) FROM items", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2, "item 2 is read from the recorded log directory");
        drop(offline);
        // A copy of a log put beside the file is read instead (a copied journal's own).
        let beside = log::dir_for(&path);
        log_only(&beside, &[2, 3]);
        let offline = schema::open_offline(&path, None).unwrap();
        let n: i64 = offline.query_row("SELECT COUNT(*) FROM items", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 3, "items 2 and 3 are read from beside the file");
        drop(offline);
        std::fs::remove_dir_all(&beside).unwrap();
        let (store, _) = SqliteStore::open_with_log(&path, &wal).unwrap();
        assert_eq!(store.card_exposure("a"), (2, 200));
        assert!(store.get("r2".into()).await.unwrap().is_some(), "replayed from the configured directory");
        store.close();
    }

    /// Moving the log (a new `store.log_dir`, or back to the default) while items are only in
    /// the old directory: the next open writes them into the database before using the new
    /// directory, so none is hidden, and the old directory is left for the operator.
    #[tokio::test]
    async fn moving_the_log_directory_keeps_the_items_only_the_old_one_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let old = log::dir_for(&path);
        let (store, _) = SqliteStore::open(&path).unwrap();
        assert!(matches!(store.append(item(1, "a"), limits(10)).await.unwrap(), AppendOutcome::Accepted(_)));
        store.close();
        drop(store);
        log_only(&old, &[2, 3]);

        let new = dir.path().join("elsewhere");
        let (store, _) = SqliteStore::open_with_log(&path, &new).unwrap();
        assert_eq!(store.card_exposure("a"), (3, 300), "items 2 and 3 came over from the old directory");
        assert!(store.get("r3".into()).await.unwrap().is_some());
        match store.append(item(4, "a"), limits(10)).await.unwrap() {
            AppendOutcome::Accepted(i) => assert_eq!(i.seq, 4, "numbering continues after them"),
            other => panic!("{other:?}"),
        }
        assert!(!log::segments(&new).unwrap().is_empty(), "new appends go to the new directory");
        assert!(!log::segments(&old).unwrap().is_empty(), "the old directory is left as it was");
        store.close();
        drop(store);
        // The directory it now records goes missing (its volume not mounted): no start.
        std::fs::rename(&new, dir.path().join("unmounted")).unwrap();
        let err = SqliteStore::open_with_log(&path, &new).err().expect("a missing log directory is refused");
        assert!(err.0.contains("is missing") && err.0.contains("elsewhere"), "{}", err.0);
        std::fs::rename(dir.path().join("unmounted"), &new).unwrap();
        // And back: the default directory's stale records are already in the database.
        let (store, _) = SqliteStore::open(&path).unwrap();
        assert_eq!(store.card_exposure("a"), (4, 400), "nothing doubled, item 4 kept");
        store.close();
    }

    /// What a `kill -9` leaves behind: the journal marked as not stopped cleanly (as every open
    /// marks it) and items that only reached the log.
    fn as_if_killed(path: &Path, log_dir: &Path, n: &[u32]) {
        log_only(log_dir, n);
        let conn = Connection::open(path).unwrap();
        conn.execute("INSERT OR REPLACE INTO meta(k, v) VALUES ('log_clean', '0')", []).unwrap();
    }

    /// A log directory that has gone missing after an unclean stop is refused whichever
    /// directory is configured now (the default included): the items only it held would be
    /// hidden. After a clean stop nothing is only there, and the same start goes ahead.
    #[tokio::test]
    async fn a_missing_log_directory_is_refused_after_an_unclean_stop_whichever_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let own = dir.path().join("vol").join("log");
        let away = dir.path().join("unmounted");
        let (store, _) = SqliteStore::open_with_log(&path, &own).unwrap();
        assert!(matches!(store.append(item(1, "a"), limits(10)).await.unwrap(), AppendOutcome::Accepted(_)));
        store.close();
        drop(store);
        as_if_killed(&path, &own, &[2]);
        std::fs::rename(&own, &away).unwrap();

        let err = SqliteStore::open(&path).err().expect("back to the default with the old log gone: refused");
        assert!(err.0.contains("did not stop cleanly") && err.0.contains("vol/log"), "{}", err.0);
        assert!(err.0.contains("point store.log_dir back at it"), "{}", err.0);
        let elsewhere = dir.path().join("elsewhere");
        let err = SqliteStore::open_with_log(&path, &elsewhere).err().expect("another directory: refused too");
        assert!(err.0.contains("did not stop cleanly"), "{}", err.0);
        assert!(!elsewhere.exists() && !log::dir_for(&path).exists(), "a refused start creates no log");
        let err = SqliteStore::open_with_log(&path, &own).err().expect("its own directory, missing: refused");
        assert!(err.0.contains("is missing"), "{}", err.0);

        std::fs::rename(&away, &own).unwrap();
        let (store, _) = SqliteStore::open_with_log(&path, &own).unwrap();
        assert_eq!(store.card_exposure("a"), (2, 200), "item 2 came back with its directory");
        store.close();
        drop(store);
        // A clean stop: the database holds everything and the log is empty.
        std::fs::rename(&own, &away).unwrap();
        let (store, _) = SqliteStore::open(&path).unwrap();
        assert_eq!(store.card_exposure("a"), (2, 200));
        store.close();
        drop(store);
        // The default directory, deleted after a kill, is refused too.
        as_if_killed(&path, &log::dir_for(&path), &[3]);
        std::fs::remove_dir_all(log::dir_for(&path)).unwrap();
        let err = SqliteStore::open(&path).err().expect("the default directory gone after a kill: refused");
        assert!(err.0.contains("did not stop cleanly") && err.0.contains("Mount it again ("), "{}", err.0);
    }

    /// Lane heads only, in journal order: an item is due when every earlier item of its card is
    /// finished (settled or declined), whatever it is waiting behind on other cards.
    #[tokio::test]
    async fn due_gives_each_card_its_oldest_unfinished_item() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = SqliteStore::open(&dir.path().join("j.db")).unwrap();
        for (i, card) in [(1, "a"), (2, "a"), (3, "b"), (4, "a"), (5, "c"), (6, "b")] {
            assert!(matches!(store.append(item(i, card), limits(10)).await.unwrap(), AppendOutcome::Accepted(_)));
        }
        async fn due(store: &SqliteStore) -> Vec<String> {
            store.due(i64::MAX, 10).await.unwrap().into_iter().map(|i| i.receipt_id).collect()
        }
        assert_eq!(due(&store).await, ["r1", "r3", "r5"]);
        assert!(store.transition(to("r1", &[State::Journaled], State::Settled)).await.unwrap());
        assert!(store.transition(to("r3", &[State::Journaled], State::Forwarding)).await.unwrap());
        assert_eq!(due(&store).await, ["r2", "r5"], "r3 in flight holds lane b; r1 settled frees lane a");
        assert!(store.transition(to("r2", &[State::Journaled], State::Declined)).await.unwrap());
        assert!(store.transition(to("r3", &[State::Forwarding], State::Settled)).await.unwrap());
        assert_eq!(due(&store).await, ["r4", "r5", "r6"]);
        assert_eq!(store.due(i64::MAX, 2).await.unwrap().len(), 2, "the limit holds");
        store.close();
    }

    #[tokio::test]
    async fn claims_limits_transitions_and_recovery_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let (store, _) = SqliteStore::open(&path).unwrap();
        assert!(matches!(store.append(item(1, "c1"), limits(2)).await.unwrap(), AppendOutcome::Accepted(_)));
        assert!(matches!(store.append(item(1, "c1"), limits(2)).await.unwrap(), AppendOutcome::Existing(_)));
        assert!(matches!(store.append(item(2, "c1"), limits(2)).await.unwrap(), AppendOutcome::Accepted(_)));
        match store.append(item(3, "c1"), limits(2)).await.unwrap() {
            AppendOutcome::Refused { limit, .. } => assert_eq!(limit, "per_card_count"),
            other => panic!("{other:?}"),
        }
        // Compare-and-set: only from the listed states.
        assert!(store.transition(to("r1", &[State::Journaled], State::Forwarding)).await.unwrap());
        assert!(!store.transition(to("r1", &[State::Journaled], State::Forwarding)).await.unwrap());
        assert!(store.transition(to("r2", &[State::Journaled], State::Settled)).await.unwrap());
        assert_eq!(store.card_exposure("c1"), (1, 100), "settled releases its exposure");
        assert_eq!(store.due(i64::MAX, 10).await.unwrap().len(), 0, "the lane head r1 is in flight");
        store.close();
        drop(store);

        // Reopen: the in-flight item is unknown (query before resend); counters rebuilt.
        let (store, recovered) = SqliteStore::open(&path).unwrap();
        assert_eq!(recovered, 1);
        let r1 = store.get("r1".into()).await.unwrap().unwrap();
        assert_eq!(r1.state, State::Unknown);
        assert_eq!(store.card_exposure("c1"), (1, 100));
        assert_eq!(store.summary().by_state.get("settled"), Some(&1));
        let hist = store.history("r1".into()).await.unwrap();
        assert_eq!(hist.last().map(|h| h.actor.as_str()), Some("recovery"));
        assert_eq!(store.due(i64::MAX, 10).await.unwrap().len(), 1);
        // Keys from before the reopen are claimed (the committer's key filter starts with
        // every key in the database), whatever state their items are in.
        for i in [1, 2] {
            match store.append(item(i, "c1"), limits(5)).await.unwrap() {
                AppendOutcome::Existing(existing) => assert_eq!(existing.receipt_id, format!("r{i}")),
                other => panic!("key k{i} after a reopen: {other:?}"),
            }
        }
    }
}
