//! The SQLite journal's schema, pragmas, row mapping and start-up recovery.
//!
//! Durability settings are the point of this file: WAL with `synchronous=FULL` makes every
//! COMMIT fsync the WAL, so a committed item survives a crash or power loss (research §0 — with
//! `NORMAL` a committed transaction may roll back on power loss). Items are never deleted.

use rusqlite::{params, Connection, OpenFlags, Row};

use crate::grace::clock::now_ms;
use crate::grace::store::{Item, State, StoreError};

/// The items table's columns. `idem_hash` and `card_key` are [`key_hash`]es of `idem_key` and
/// `card_ref`: the two indexes a new item lands at a random place in are built on them, not on
/// the text (see [`INDEXES`]). Their default, 0, is what a Lifeline from before them writes
/// when it is rolled back to and runs on a journal of this shape; [`rehash_unhashed`] fills
/// those in on the next open.
const ITEMS_COLUMNS: &str = "(
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    receipt_id       TEXT NOT NULL UNIQUE,
    idem_key         TEXT NOT NULL,
    fingerprint      BLOB NOT NULL,
    policy           TEXT NOT NULL,
    route            TEXT NOT NULL,
    card_ref         TEXT NOT NULL,
    card_masked      TEXT NOT NULL,
    institution      TEXT NOT NULL,
    amount_fen       INTEGER NOT NULL,
    reason           TEXT NOT NULL,
    state            TEXT NOT NULL,
    method           TEXT NOT NULL,
    path             TEXT NOT NULL,
    payload          BLOB NOT NULL,
    encrypted        INTEGER NOT NULL,
    accepted_ms      INTEGER NOT NULL,
    deadline_ms      INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL DEFAULT 0,
    final_status     INTEGER,
    final_body       TEXT,
    backend_ref      TEXT,
    last_error       TEXT,
    remaining_count  INTEGER,
    remaining_amount INTEGER,
    idem_hash        INTEGER NOT NULL DEFAULT 0,
    card_key         INTEGER NOT NULL DEFAULT 0
)";

const OTHER_TABLES: &str = "
CREATE TABLE IF NOT EXISTS transitions (
    id         INTEGER PRIMARY KEY,
    receipt_id TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    note       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id     INTEGER PRIMARY KEY,
    at_ms  INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
";

/// Receipt ids and sequence numbers grow with time, so their indexes only gain entries at
/// their right edge. An idempotency key (the caller's) and a card reference (a hash) land
/// anywhere: every batch the applier commits rewrites nearly every page of those two indexes,
/// and SQLite writes each page twice (WAL, then the database), on the disk the log's
/// `fdatasync` waits on. Built on 8-byte hashes instead of the 32–40-byte text, they are a
/// third of the size, and so are those writes; a lookup compares the text too, so two values
/// sharing a hash only cost a second row read. Keys stay unique because one thread accepts
/// items and looks every key up first (`committer.rs`), as it did beside the old UNIQUE index.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS items_state ON items(state, next_attempt_ms);
DROP INDEX IF EXISTS items_lane;
DROP INDEX IF EXISTS items_open_lane;
CREATE INDEX IF NOT EXISTS items_idem ON items(idem_hash);
CREATE INDEX IF NOT EXISTS items_open_card ON items(card_key, seq)
    WHERE state IN ('journaled','forwarding','retry_wait','unknown','querying','expired','needs_review');
CREATE INDEX IF NOT EXISTS items_ready ON items(seq) WHERE state IN ('journaled','retry_wait','unknown');
CREATE INDEX IF NOT EXISTS transitions_item ON transitions(receipt_id, id);
";

/// The hash the `idem_hash` and `card_key` columns hold: the first 8 bytes of SHA-256, so it
/// is the same in every version and on every machine (it is stored), and callers cannot choose
/// keys that share one.
pub fn key_hash(text: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(first)
}

/// Columns of [`Item`], in the order [`item`] reads them.
pub const ITEM_COLS: &str = "seq, receipt_id, idem_key, fingerprint, policy, route, card_ref, card_masked, \
    institution, amount_fen, reason, state, method, path, payload, encrypted, accepted_ms, deadline_ms, \
    updated_ms, attempts, next_attempt_ms, final_status, final_body, backend_ref, last_error, \
    remaining_count, remaining_amount";

/// SQL list of the states that still count as exposure (the `items_open_card` index repeats it:
/// SQLite uses a partial index only for a query that names the same list).
pub const OUTSTANDING: &str = "('journaled','forwarding','retry_wait','unknown','querying','expired','needs_review')";

/// Reads one item row selected with [`ITEM_COLS`].
pub fn item(r: &Row<'_>) -> rusqlite::Result<Item> {
    let state: String = r.get(11)?;
    Ok(Item {
        seq: r.get(0)?,
        receipt_id: r.get(1)?,
        idem_key: r.get(2)?,
        fingerprint: r.get(3)?,
        policy: r.get(4)?,
        route: r.get(5)?,
        card_ref: r.get(6)?,
        card_masked: r.get(7)?,
        institution: r.get(8)?,
        amount_fen: r.get(9)?,
        reason: r.get(10)?,
        state: State::parse(&state).unwrap_or(State::NeedsReview),
        method: r.get(12)?,
        path: r.get(13)?,
        payload: r.get(14)?,
        encrypted: r.get::<_, i64>(15)? != 0,
        accepted_ms: r.get(16)?,
        deadline_ms: r.get(17)?,
        updated_ms: r.get(18)?,
        attempts: r.get(19)?,
        next_attempt_ms: r.get(20)?,
        final_status: r.get(21)?,
        final_body: r.get(22)?,
        backend_ref: r.get(23)?,
        last_error: r.get(24)?,
        remaining_count: r.get(25)?,
        remaining_amount: r.get(26)?,
    })
}

/// Opens the writer connection: creates the file and schema, WAL, `synchronous=FULL`.
pub fn open_writer(path: &std::path::Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create journal directory {}: {e}", dir.display())))?;
    }
    let mut conn = Connection::open(path).map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError(format!("{} cannot use WAL mode (got {mode})", path.display())));
    }
    // The writer never checkpoints inside a commit (`checkpoint.rs` does it on the side), so a
    // commit costs one WAL fsync.
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000; PRAGMA cache_size=-16000; \
         PRAGMA wal_autocheckpoint=0; PRAGMA temp_store=MEMORY;",
    )?;
    conn.execute_batch(&format!("CREATE TABLE IF NOT EXISTS items {ITEMS_COLUMNS}; {OTHER_TABLES}"))?;
    if !has_column(&conn, "items", "idem_hash")? {
        compact_key_indexes(&mut conn)?;
    }
    conn.execute_batch(INDEXES)?;
    rehash_unhashed(&mut conn)?;
    Ok(conn)
}

/// Items read at a time by [`fill_hashes`] (two in tests, so that they cross chunks).
const FILL_CHUNK: i64 = if cfg!(test) { 2 } else { 10_000 };

/// Sets `idem_hash` and `card_key` in `table` for the items `select` returns (`seq, idem_key,
/// card_ref` in order of `seq`, those after `?1`, at most `?2`: a chunk at a time). Each chunk
/// is read before it is written: SQLite leaves undefined what a running query sees of rows
/// changed under it. Returns how many were set.
fn fill_hashes(conn: &Connection, select: &str, table: &str) -> Result<u64, StoreError> {
    let mut read = conn.prepare(select)?;
    let mut write = conn.prepare(&format!("UPDATE {table} SET idem_hash = ?2, card_key = ?3 WHERE seq = ?1"))?;
    let (mut after, mut done) = (i64::MIN, 0u64);
    loop {
        let rows = read
            .query_map(params![after, FILL_CHUNK], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let Some(last) = rows.last().map(|r| r.0) else {
            return Ok(done);
        };
        for (seq, key, card) in &rows {
            write.execute(params![seq, key_hash(key), key_hash(card)])?;
        }
        done += rows.len() as u64;
        after = last;
    }
}

/// Fills in `idem_hash` and `card_key` for items an older Lifeline wrote into a journal of the
/// current shape (after a rollback): it leaves both 0, and a key lookup by hash would miss them.
/// Both are always written together, so the `items_idem` index finds every such row.
fn rehash_unhashed(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let fixed = fill_hashes(
        &tx,
        "SELECT seq, idem_key, card_ref FROM items INDEXED BY items_idem \
         WHERE idem_hash = 0 AND seq > ?1 ORDER BY seq LIMIT ?2",
        "items",
    )?;
    tx.commit()?;
    if fixed > 0 {
        tracing::info!(items = fixed, "grace journal: key hashes filled in for items an older version wrote");
    }
    Ok(())
}

/// Whether `table` has `column` (journals written before a column existed lack it).
pub fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?;
    Ok(stmt.exists(params![column])?)
}

/// One-time migration of a journal written before `idem_hash` and `card_key` (its items table
/// had a UNIQUE index on the key's text, which only rebuilding the table removes): copies every
/// item into a table of the current shape, fills in both hashes, and puts it in the old one's
/// place, in one transaction (a crash leaves the journal as it was). Items keep their `seq`.
fn compact_key_indexes(conn: &mut Connection) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let tx = conn.transaction()?;
    tx.execute_batch(&format!(
        "CREATE TABLE items_compact {ITEMS_COLUMNS}; \
         INSERT INTO items_compact({ITEM_COLS}, idem_hash, card_key) SELECT {ITEM_COLS}, 0, 0 FROM items;"
    ))?;
    let moved = fill_hashes(
        &tx,
        "SELECT seq, idem_key, card_ref FROM items WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        "items_compact",
    )?;
    tx.execute_batch("DROP TABLE items; ALTER TABLE items_compact RENAME TO items;")?;
    tx.commit()?;
    tracing::info!(
        items = moved,
        ms = started.elapsed().as_millis() as u64,
        "grace journal: items table rebuilt with hashed key indexes (once per journal)"
    );
    Ok(())
}

/// Opens a read connection on an existing journal (never creates one).
pub fn open_reader(path: &std::path::Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError(format!("cannot open journal {}: {e}", path.display())))?;
    conn.execute_batch("PRAGMA busy_timeout=10000; PRAGMA query_only=1;")?;
    Ok(conn)
}

/// Opens a journal for offline reading (the `lifeline grace` CLI): items still only in its log
/// (after a crash) are laid over the file's items in temporary tables, so the reports see every
/// item that was acknowledged. The log is read from `log_dir`, else from `<file>-log/` if it
/// exists (the default, or a copy of the log made beside a copied file), else from the
/// directory the journal recorded (its own `store.log_dir`). Neither the journal nor its log is
/// changed.
pub fn open_offline(path: &std::path::Path, log_dir: Option<&std::path::Path>) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError(format!("cannot open journal {}: {e}", path.display())))?;
    conn.execute_batch("PRAGMA busy_timeout=10000;")?;
    let dir = offline_log_dir(&conn, path, log_dir)?;
    let logged = super::log::read_items(&dir).map_err(StoreError)?;
    if !logged.is_empty() {
        // Temporary objects live outside the file; `temp.items` shadows `main.items` for the
        // reports' unqualified queries.
        conn.execute_batch(
            "CREATE TEMP TABLE log_items AS SELECT * FROM main.items WHERE 0; \
             CREATE TEMP VIEW items AS SELECT * FROM main.items \
             UNION ALL SELECT * FROM temp.log_items WHERE seq NOT IN (SELECT seq FROM main.items);",
        )?;
        let hashed = has_column(&conn, "items", "idem_hash")?;
        let tx = conn.unchecked_transaction()?;
        for (_, item) in &logged {
            super::ops::insert_into(&tx, "temp.log_items", item, hashed)?;
        }
        tx.commit()?;
    }
    conn.execute_batch("PRAGMA query_only=1;")?;
    Ok(conn)
}

/// The log directory an offline reader of `path` reads: `log_dir` if given, else a log beside
/// the file (a copy's own), else the one the journal recorded.
fn offline_log_dir(
    conn: &Connection,
    path: &std::path::Path,
    log_dir: Option<&std::path::Path>,
) -> Result<std::path::PathBuf, StoreError> {
    match log_dir {
        Some(dir) => Ok(dir.to_path_buf()),
        None => Some(super::log::dir_for(path))
            .filter(|d| d.exists())
            .map_or_else(|| super::recorded_log_dir(conn, path), Ok),
    }
}

/// The log directory an offline reader found missing, when the journal did not stop cleanly
/// (so settlements acknowledged since may be only in that log, and missing from the reader's
/// view); `None` when nothing can be missing.
pub fn offline_log_missing(
    conn: &Connection,
    path: &std::path::Path,
    log_dir: Option<&std::path::Path>,
) -> Result<Option<std::path::PathBuf>, StoreError> {
    let dir = offline_log_dir(conn, path, log_dir)?;
    Ok((super::log_left_dirty(conn)? && !dir.exists()).then_some(dir))
}

/// `PRAGMA integrity_check`; an error names what SQLite found.
pub fn integrity_check(conn: &Connection) -> Result<(), StoreError> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let rows: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(StoreError(format!("journal integrity check failed: {}", rows.join("; "))))
    }
}

/// Items that were in flight when the process died may have reached the backend: they become
/// `unknown`, so the forwarder asks the backend before any resend (invariant 4).
pub fn recover_in_flight(conn: &Connection) -> Result<u64, StoreError> {
    let now = now_ms();
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "INSERT INTO transitions(receipt_id, from_state, to_state, at_ms, actor, note) \
         SELECT receipt_id, state, 'unknown', ?1, 'recovery', 'in flight when the sidecar stopped; query before resend' \
         FROM items WHERE state IN ('forwarding','querying')",
        params![now],
    )?;
    let n = tx.execute(
        "UPDATE items SET state='unknown', updated_ms=?1, next_attempt_ms=0 WHERE state IN ('forwarding','querying')",
        params![now],
    )?;
    tx.commit()?;
    Ok(n as u64)
}

/// Size of the journal in bytes (pages in use).
pub fn journal_bytes(conn: &Connection) -> u64 {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap_or(0);
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap_or(4096);
    (pages.max(0) as u64) * (size.max(0) as u64)
}
