//! WAL checkpoints off the commit path, written out at a pace the log's `fdatasync` can live
//! beside.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses the threshold, so one
//! unlucky batch of settlements waits for megabytes to be copied into the database file and
//! fsynced. Here the writer never checkpoints (`wal_autocheckpoint=0`); this thread runs a
//! PASSIVE checkpoint (which never blocks readers) every 50 ms after the applier committed, on
//! its own connection. The writer still folds the WAL in completely when the journal closes.
//!
//! **The syncs are this thread's, not SQLite's.** A checkpoint makes the WAL durable, copies
//! its pages into the database file and makes that durable; SQLite does both with one `fsync`
//! each, and each `fsync` sends everything the applier's last batch wrote (several MB at
//! 20 000 appends/s) to the disk at once. On a disk without FUA (`queue/fua` 0, as on this
//! VM) the log's every `fdatasync` then waits for that whole burst: the appends' p99 at 20 000/s
//! was 5.5–6.4 ms. This thread's connection checkpoints with `synchronous=OFF` and does SQLite's
//! two syncs itself, in SQLite's order, first writing the dirty pages out in [`CHUNK`]s one
//! after the other (`sync_file_range`), so a log write finds at most one chunk ahead of it:
//! 3.7–4.2 ms, the two builds alternated (`bench/journal_ab.py`, BENCHMARKS.md session 15). Order is what keeps a power loss harmless,
//! and the applier's [`Shared::gate`] is what keeps it:
//! 1. the WAL is durable before any of its frames is copied: the gate is taken before the
//!    WAL's sync (most of the WAL is written out before, without it), and the applier (the
//!    journal's one writer) commits only holding it, so no frame written after the sync is
//!    copied;
//! 2. the database is durable before the WAL is written from its start again: only a write
//!    transaction restarts the WAL, and the gate is held until the database's sync is done.
//!
//! A failed sync leaves what is on the disk unknown: [`Shared::sync_failed`] is raised and the
//! applier writes nothing more (the items stay in the log, and a restart replays them).
//!
//! When a pass copied a WAL of at least [`RESTART_FRAMES`] completely, it raises
//! [`Shared::backfilled`] and the writer finishes the checkpoint between batches, so the WAL
//! restarts from its beginning (`writer::finish_checkpoint` says why the writer has to).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::grace::store::StoreError;

/// How often a checkpoint is attempted (when the applier committed since the last one). Each
/// pass writes out what the WAL gained since the last one: small, frequent passes keep the
/// log's wait short. Measured at 20 000 appends/s with the applier committing every 250 ms,
/// before the passes were paced: journal p99 7.7–10.2 ms at 50 ms, 11.7–21 ms at 250 ms.
const EVERY: Duration = Duration::from_millis(50);

/// How much is written out at a time. In probe builds that read it from the environment,
/// 64 KiB, 256 KiB and 1 MiB gave the same p99 (2.9–4.1 ms at 20 000 appends/s). A chunk with
/// nothing dirty in it is one cheap syscall, so a pass over a large, mostly clean file stays
/// cheap.
const CHUNK: i64 = 256 * 1024;

/// A WAL this long (in pages: 16 MiB at the default 4 KiB) is restarted with the writer's
/// help; a shorter one restarts by itself when the writer happens to be idle as a pass ends
/// (at low rates it mostly is). The writer's share pauses commits for 5–20 ms at
/// 20 000 appends/s; measured against thresholds of 256 MiB and "never", the fixed-rate bench's
/// p99 did not move beyond its run-to-run noise, so the smaller disk footprint wins.
pub const RESTART_FRAMES: i64 = 4096;

/// Why the journal stopped writing its database, for the applier's refusals and the status.
pub const SYNC_FAILED: &str = "a sync of the journal's database failed; restart the sidecar (the log keeps every item)";

/// What the applier and the checkpoint thread share.
#[derive(Default)]
pub struct Shared {
    /// Held by the applier for each transaction (and its own checkpoints), and by this thread
    /// from the WAL's sync to the database's (the module comment says why).
    gate: Mutex<()>,
    /// This thread is waiting for the gate: the applier lets it in before its next batch (a
    /// mutex is not fair, and an applier with a full queue would take it back at once).
    waiting: AtomicBool,
    /// Transactions the applier committed; a pass runs only when it moved.
    pub commits: AtomicU64,
    /// Raised when a pass copied a long WAL completely (`writer::finish_checkpoint`).
    pub backfilled: AtomicBool,
    /// Raised when a sync failed: the applier stops writing.
    pub sync_failed: AtomicBool,
}

impl Shared {
    /// The gate, for the applier: after the checkpoint thread if it is waiting.
    pub fn gate(&self) -> MutexGuard<'_, ()> {
        while self.waiting.load(Ordering::Acquire) {
            std::thread::park_timeout(Duration::from_micros(100));
        }
        self.lock()
    }

    /// The gate, for the checkpoint thread.
    fn gate_first(&self) -> MutexGuard<'_, ()> {
        self.waiting.store(true, Ordering::Release);
        let gate = self.lock();
        self.waiting.store(false, Ordering::Release);
        gate
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub fn start(path: &Path, shared: Arc<Shared>) -> Result<Checkpointer, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        // This connection's checkpoints copy without syncing: `pass` syncs.
        conn.execute_batch("PRAGMA busy_timeout=10000; PRAGMA synchronous=OFF;")?;
        // Never closed: closing any descriptor of the database file drops every POSIX lock this
        // process holds on it, SQLite's included (one descriptor per journal opened).
        let db = File::open(path).map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        let db = std::mem::ManuallyDrop::new(db);
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("grace-checkpoint".into())
            .spawn(move || {
                let mut seen = 0;
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(EVERY);
                    let commits = shared.commits.load(Ordering::Acquire);
                    if flag.load(Ordering::Acquire) || commits == seen || shared.sync_failed.load(Ordering::Acquire) {
                        continue;
                    }
                    match pass(&conn, &db, &wal, &shared) {
                        Ok((0, log, copied)) if copied == log => {
                            // All copied: nothing to do until the applier commits again.
                            seen = commits;
                            if log >= RESTART_FRAMES {
                                shared.backfilled.store(true, Ordering::Release);
                            }
                        }
                        // A reader's snapshot held some frames back: again at the next tick.
                        Ok(_) => {}
                        Err(Failed::Sync(e)) => {
                            shared.sync_failed.store(true, Ordering::Release);
                            tracing::error!(error = %e, "grace journal: a sync of the database failed; it takes no more writes until restarted (the log keeps every item)");
                        }
                        Err(Failed::Retry(e)) => {
                            tracing::warn!(error = %e, "grace journal checkpoint failed; will retry");
                        }
                    }
                }
            })
            .map_err(|e| StoreError(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { stop, thread: Some(thread) })
    }

    /// Stops the thread (at most one checkpoint's time).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Failed {
    /// A sync failed: what the disk holds is unknown.
    Sync(std::io::Error),
    /// Nothing was copied, or what was is synced: the next pass tries again.
    Retry(String),
}

/// One checkpoint, with SQLite's syncs done here (the module comment): returns SQLite's
/// (busy, frames in the WAL, frames copied into the database).
fn pass(conn: &Connection, db: &File, wal: &Path, shared: &Shared) -> Result<(i64, i64, i64), Failed> {
    let wal = match File::open(wal) {
        Ok(wal) => Some(wal),
        // No WAL yet: nothing to copy (the checkpoint below finds nothing either).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        // Out of descriptors, say: nothing was copied yet, so the disk is as it was.
        Err(e) => return Err(Failed::Retry(format!("cannot open the WAL: {e}"))),
    };
    // Most of the WAL goes out before the applier is held up; the sync under the gate writes
    // only what it committed since.
    if let Some(wal) = &wal {
        write_out(wal);
    }
    let _gate = shared.gate_first();
    if let Some(wal) = &wal {
        wal.sync_data().map_err(Failed::Sync)?;
    }
    let copied = conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(|e| Failed::Retry(e.to_string()));
    // Whatever the checkpoint reported, it may have written pages before it failed.
    write_out(db);
    db.sync_data().map_err(Failed::Sync)?;
    copied
}

/// Starts writing out `file`'s dirty pages one [`CHUNK`] at a time, each finished before the
/// next begins; the `fdatasync` that follows is the durability point (and does it all if this
/// cannot: on other systems, or where the call is refused).
fn write_out(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let len = file.metadata().map_or(0, |m| i64::try_from(m.len()).unwrap_or(i64::MAX));
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let mut offset = 0;
        while offset < len {
            // SAFETY: the descriptor is `file`'s, open for the whole call; the call takes no
            // pointers, and it only starts and waits for writeback of that file's pages.
            #[allow(unsafe_code)]
            let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, CHUNK, flags) };
            if r != 0 {
                return;
            }
            offset += CHUNK;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}
