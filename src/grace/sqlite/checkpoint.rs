//! WAL checkpoints off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses the threshold, so one
//! unlucky batch of settlements waits for megabytes to be copied into the database file and
//! fsynced. Here the writer never checkpoints (`wal_autocheckpoint=0`); this thread runs a
//! PASSIVE checkpoint (which never blocks the writer or readers) every 50 ms on its own
//! connection, so commit latency stays one WAL fsync. The writer still folds the WAL in
//! completely when the journal closes.
//!
//! When a pass copied a WAL of at least [`RESTART_FRAMES`] completely, it raises `backfilled`
//! and the writer finishes the checkpoint between batches, so the WAL restarts from its
//! beginning (`writer::finish_checkpoint` says why the writer has to).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::grace::store::StoreError;

/// How often a checkpoint is attempted. Each pass fsyncs what the WAL gained since the last
/// one, and the log's `fdatasync` waits behind that flush on the same disk: small, frequent
/// passes keep that wait short. Measured at 20 000 appends/s with the applier committing every
/// 250 ms: journal p99 7.7–10.2 ms at 50 ms, 11.7–21 ms at 250 ms.
const EVERY: Duration = Duration::from_millis(50);

/// A WAL this long (in pages: 16 MiB at the default 4 KiB) is restarted with the writer's
/// help; a shorter one restarts by itself when the writer happens to be idle as a pass ends
/// (at low rates it mostly is). The writer's share pauses commits for 5–20 ms at
/// 20 000 appends/s; measured against thresholds of 256 MiB and "never", the fixed-rate bench's
/// p99 did not move beyond its run-to-run noise, so the smaller disk footprint wins.
pub const RESTART_FRAMES: i64 = 4096;

pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub fn start(path: &Path, backfilled: Arc<AtomicBool>) -> Result<Checkpointer, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.execute_batch("PRAGMA busy_timeout=10000; PRAGMA synchronous=FULL;")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("grace-checkpoint".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(EVERY);
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    // (busy, frames in the WAL, frames copied into the database)
                    let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    });
                    match pass {
                        Ok((0, log, copied)) if log >= RESTART_FRAMES && copied == log => {
                            backfilled.store(true, Ordering::Release);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "grace journal checkpoint failed; will retry"),
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
