//! The payment simulator's ledger: one JSON line per settlement, appended and fsync'd before the
//! settlement is answered.
//!
//! The ledger is what a chaos drill reconciles against: every line is a settlement that
//! happened, with the idempotency key that claimed it and when it was applied. Because the file is
//! also the idempotency store (the key and a hash of the request body are on the line), a
//! simulator killed with SIGKILL and restarted on the same file still answers a replay with the
//! original response and still refuses a conflicting body.
//!
//! Appends go through one writer thread that does group commit: it takes every line queued while
//! the previous fsync ran, writes them all and fsyncs once, so 500 concurrent settlements cost a
//! handful of fsyncs rather than 500. A crash can leave a torn last line; [`load`] drops it (that
//! settlement was never answered) and truncates the file back to the last complete line.
//!
//! The card number is written masked (`mask_card`): the ledger is an operator artefact and may be
//! copied around, so it must not hold personal data.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// One settlement, as written to the ledger file and returned by the lookup endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub settlement_id: String,
    pub idempotency_key: String,
    pub status: String,
    pub amount_fen: i64,
    pub fund_paid_fen: i64,
    pub self_paid_fen: i64,
    pub hospital_id: String,
    pub visit_id: String,
    /// The card number masked with `mask_card` (first 3 and last 4 characters).
    pub card_no_masked: String,
    /// When the settlement was applied, Unix milliseconds.
    pub applied_at: u64,
    /// SHA-256 of the canonical request body: a replay with another body is a conflict (422).
    pub request_sha256: String,
}

impl LedgerEntry {
    /// The body of the 201 answer, identical on every replay.
    pub fn response_body(&self) -> serde_json::Value {
        serde_json::json!({
            "settlement_id": self.settlement_id,
            "status": self.status,
            "amount_fen": self.amount_fen,
            "fund_paid_fen": self.fund_paid_fen,
            "self_paid_fen": self.self_paid_fen,
            "applied_at": self.applied_at,
        })
    }
}

/// Reads a ledger file (creating it if missing). A torn last line is dropped and the file is
/// truncated to the last complete line; a bad line anywhere else is an error naming it.
pub fn load(path: &Path) -> io::Result<Vec<LedgerEntry>> {
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    let mut entries = Vec::new();
    let mut good_len: u64 = 0;
    let mut reader = BufReader::new(&mut file);
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            tracing::warn!(file = %path.display(), line = number, "dropping a torn last ledger line (crash during append)");
            break;
        }
        match serde_json::from_slice::<LedgerEntry>(&line) {
            Ok(entry) => {
                entries.push(entry);
                good_len += n as u64;
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}:{number}: not a ledger entry: {e}", path.display()),
                ))
            }
        }
    }
    drop(reader);
    if file.metadata()?.len() != good_len {
        file.set_len(good_len)?;
        file.sync_all()?;
    }
    file.rewind()?;
    Ok(entries)
}

/// A queued append: the line (with its newline) and who to tell once it is on disk.
type Append = (Vec<u8>, oneshot::Sender<io::Result<()>>);

/// Handle to the writer thread. Dropping every handle stops the thread after the queue drains.
#[derive(Clone)]
pub struct LedgerWriter {
    tx: mpsc::UnboundedSender<Append>,
}

impl LedgerWriter {
    /// Opens `path` for appending and starts the writer thread.
    pub fn open(path: PathBuf) -> io::Result<LedgerWriter> {
        let file = OpenOptions::new().append(true).create(true).open(&path)?;
        // The file may have just been created: make its directory entry durable too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new().name("sim-ledger".into()).spawn(move || write_loop(file, rx))?;
        Ok(LedgerWriter { tx })
    }

    /// Appends one entry; returns once it is fsync'd.
    pub async fn append(&self, entry: &LedgerEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let (done, wait) = oneshot::channel();
        self.tx.send((line, done)).map_err(|_| io::Error::other("ledger writer stopped"))?;
        wait.await.map_err(|_| io::Error::other("ledger writer stopped"))?
    }
}

fn write_loop(mut file: File, mut rx: mpsc::UnboundedReceiver<Append>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut buf = Vec::with_capacity(batch.iter().map(|(l, _)| l.len()).sum());
        for (line, _) in &batch {
            buf.extend_from_slice(line);
        }
        let result = file.write_all(&buf).and_then(|()| file.sync_data());
        if let Err(e) = &result {
            tracing::error!(error = %e, "ledger append failed");
        }
        for (_, done) in batch {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            let _ = done.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32) -> LedgerEntry {
        LedgerEntry {
            settlement_id: format!("stl-{n}"),
            idempotency_key: format!("k{n}"),
            status: "settled".into(),
            amount_fen: 100,
            fund_paid_fen: 70,
            self_paid_fen: 30,
            hospital_id: "H1".into(),
            visit_id: "V1".into(),
            card_no_masked: "110***********1234".into(),
            applied_at: 1,
            request_sha256: "00".into(),
        }
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        assert!(load(&path).unwrap().is_empty());
        let w = LedgerWriter::open(path.clone()).unwrap();
        let (a, b) = (entry(1), entry(2));
        let (r1, r2) = tokio::join!(w.append(&a), w.append(&b));
        r1.unwrap();
        r2.unwrap();
        drop(w);
        // A crash in the middle of the next append.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"settlement_id":"stl-3","idem"#).unwrap();
        drop(f);
        let got = load(&path).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.contains(&a) && got.contains(&b));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n') && !text.contains("stl-3"), "{text}");
        // Appending after recovery yields a clean file.
        let w = LedgerWriter::open(path.clone()).unwrap();
        w.append(&entry(4)).await.unwrap();
        assert_eq!(load(&path).unwrap().len(), 3);
    }

    #[test]
    fn a_bad_line_in_the_middle_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let good = serde_json::to_string(&entry(1)).unwrap();
        std::fs::write(&path, format!("{good}\nnot json\n{good}\n")).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("ledger.jsonl:2"), "{err}");
    }
}
