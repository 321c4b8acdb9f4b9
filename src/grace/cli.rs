//! `lifeline grace …`: read a journal offline, verify receipts, make a signing key.
//!
//! `status`, `items` and `reconcile` open the SQLite file directly (never creating one), so an
//! operator can work from a copy while the pod is down; they print the same JSON as the admin
//! API. After a clean stop the `.db` file is complete; after a crash copy `grace.db-wal` and
//! the log directory with it (`grace.db-log/`, or the policy's `store.log_dir`; acknowledged
//! items may still be only there: they are read from the log and shown, the files are not
//! changed). `--log-dir` says where the copy of the log is when it is not beside the file. `verify` checks a receipt's Ed25519 signature with no network at all.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::clock::{date_of, now_ms};
use super::sqlite::{report, schema};
use super::store::State;

#[derive(Debug, Subcommand)]
pub enum GraceCmd {
    /// Queue depth by state, outstanding exposure by institution, oldest item, forced mode.
    Status {
        #[command(flatten)]
        journal: Journal,
    },
    /// List items, optionally in one state (journaled, unknown, needs_review, settled, …).
    Items {
        #[command(flatten)]
        journal: Journal,
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Reconciliation report for one UTC day: provisional vs final per institution and item.
    Reconcile {
        #[command(flatten)]
        journal: Journal,
        /// YYYY-MM-DD (UTC). Default: today.
        #[arg(long)]
        date: Option<String>,
    },
    /// Verify a receipt's signature offline (the JSON a 202 or GET /grace/receipts/{id} returned).
    Verify {
        /// File with the receipt JSON.
        receipt: PathBuf,
        /// The insurer-published public key (base64 or hex). Default: the key in the receipt.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Write a new Ed25519 signing seed (for signing_key_file) and print its public key.
    Keygen {
        /// Output file (created with mode 0600; must not exist).
        out: PathBuf,
    },
}

/// The journal to read, and where its log is.
#[derive(Debug, clap::Args)]
pub struct Journal {
    /// The journal file (a copy is fine).
    #[arg(long)]
    db: PathBuf,
    /// Its log directory. Default: `<db>-log` beside the file if it is there (where to put a
    /// copy of the log), else the one the journal recorded (the policy's `store.log_dir`).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

fn print(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("lifeline grace: {msg}");
    ExitCode::FAILURE
}

pub fn run(cmd: GraceCmd) -> ExitCode {
    match cmd {
        GraceCmd::Status { journal } => {
            match open(&journal).and_then(|c| report::status(&c).map_err(|e| e.to_string())) {
                Ok(v) => {
                    print(&v);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        GraceCmd::Items { journal, state, limit } => {
            let state = match state.as_deref().map(|s| State::parse(s).ok_or(s)) {
                Some(Err(s)) => return fail(format!("unknown state {s:?}")),
                Some(Ok(s)) => Some(s),
                None => None,
            };
            match open(&journal).and_then(|c| report::list(&c, state, limit).map_err(|e| e.to_string())) {
                Ok(items) => {
                    let items: Vec<_> = items.iter().map(report::item_json).collect();
                    print(&serde_json::json!({ "count": items.len(), "items": items }));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        GraceCmd::Reconcile { journal, date } => {
            let date = date.unwrap_or_else(|| date_of(now_ms()));
            match open(&journal).and_then(|c| report::reconciliation(&c, &date).map_err(|e| e.to_string())) {
                Ok(v) => {
                    print(&v);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        GraceCmd::Verify { receipt, public_key } => {
            let text = match std::fs::read_to_string(&receipt) {
                Ok(t) => t,
                Err(e) => return fail(format!("cannot read {}: {e}", receipt.display())),
            };
            let v: serde_json::Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => return fail(format!("{} is not JSON: {e}", receipt.display())),
            };
            match super::receipt::verify(&v, public_key.as_deref()) {
                Ok(key_id) => {
                    println!("signature valid (key_id {key_id})");
                    if public_key.is_none() {
                        println!("checked with the key embedded in the receipt: compare key_id with the published one");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("INVALID receipt: {e}")),
            }
        }
        GraceCmd::Keygen { out } => keygen(&out),
    }
}

fn open(journal: &Journal) -> Result<rusqlite::Connection, String> {
    if !journal.db.exists() {
        return Err(format!("{} does not exist", journal.db.display()));
    }
    if let Some(dir) = journal.log_dir.as_deref().filter(|d| !d.is_dir()) {
        return Err(format!("log directory {} does not exist", dir.display()));
    }
    let conn = schema::open_offline(&journal.db, journal.log_dir.as_deref()).map_err(|e| e.to_string())?;
    if let Some(dir) =
        schema::offline_log_missing(&conn, &journal.db, journal.log_dir.as_deref()).map_err(|e| e.to_string())?
    {
        eprintln!(
            "lifeline grace: warning: {} did not stop cleanly and its log directory {} is missing: settlements \
             acknowledged since its last clean stop may be only there, and are not shown (copy that directory \
             too, and pass it with --log-dir)",
            journal.db.display(),
            dir.display()
        );
    }
    Ok(conn)
}

fn keygen(out: &std::path::Path) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let seed = super::crypto::random_seed();
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(out);
    let written = file.and_then(|mut f| f.write_all(hex::encode(seed).as_bytes()));
    if let Err(e) = written {
        return fail(format!("cannot write {}: {e}", out.display()));
    }
    let signer = super::crypto::ReceiptSigner::from_seed(&seed);
    println!("wrote {}\npublic_key {}\nkey_id {}", out.display(), signer.public_key_b64(), signer.key_id);
    ExitCode::SUCCESS
}
