//! Grace policy config: the raw YAML shape and the validated [`GracePolicy`].
//!
//! A policy is a named, separate control set (research §2.3, Marqeta's `commando_mode_enables`):
//! where the journal lives, which JSON pointers find the card number, the amount in fen and the
//! institution in a settlement body, the exposure limits, and how the backlog is forwarded.
//! Routes opt in with `grace: <policy>`.
//!
//! Which cluster is the auth service? A cluster has a `role` (`auth | payment | card | other`).
//! When `role` is not written it defaults from the cluster name: a name containing `auth` is
//! `auth`, `pay` is `payment`, `card` is `card`, anything else `other`. Validation refuses grace
//! on any route whose cluster has role `auth` (design invariant 1: authentication never fails
//! open) — the default errs on the safe side, so `auth-dr` or `sso_auth` are covered unwritten.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{Dur, Rate, Size};

pub(crate) use super::validate::{check_policies, check_routes};

/// What a cluster serves; decides (among other things) whether grace may ever apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    Auth,
    Payment,
    Card,
    Other,
}

impl ClusterRole {
    /// The role of a cluster whose config does not say: derived from its name, auth first.
    pub fn from_name(name: &str) -> ClusterRole {
        let n = name.to_ascii_lowercase();
        if n.contains("auth") {
            ClusterRole::Auth
        } else if n.contains("pay") {
            ClusterRole::Payment
        } else if n.contains("card") {
            ClusterRole::Card
        } else {
            ClusterRole::Other
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGracePolicy {
    /// Where the journal lives: `{ sqlite: /var/lib/lifeline/grace.db }` (directory must be writable).
    pub store: RawStore,
    /// JSON pointer to the card number in the request body, e.g. `/card_no`.
    pub card_no: String,
    /// JSON pointer to the amount in integer fen, e.g. `/amount_fen`.
    pub amount_fen: String,
    /// JSON pointer to the institution (hospital) code, e.g. `/hospital_id`.
    pub hospital_id: String,
    /// Exposure limits, checked in the same transaction as the journal append.
    pub limits: RawLimits,
    /// How the backlog is sent once the backend is back.
    #[serde(default)]
    pub forward: RawForward,
    /// File with a 32-byte AES-256-GCM key (64 hex chars or base64). Bodies are encrypted at rest.
    #[serde(default)]
    pub body_key_file: Option<String>,
    /// File with a 32-byte Ed25519 seed (hex or base64) that signs receipts. Without it a key is
    /// generated once and kept in the journal (fine for trials, not for audits).
    #[serde(default)]
    pub signing_key_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Path of the SQLite journal file.
    pub sqlite: String,
    /// Directory of the journal's write-ahead log: the only writes a settlement waits for (one
    /// `fdatasync` per group of appends). Default: `<sqlite>-log` beside the file. On a volume
    /// of its own (a local SSD, say) its flushes no longer queue behind the database's writes,
    /// as etcd's `--wal-dir`. Moving it is safe: on start, items still only in the directory
    /// the journal last used are copied into the database first.
    #[serde(default)]
    pub log_dir: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCountAmount {
    /// Number of outstanding provisional settlements.
    #[serde(default)]
    pub count: Option<u64>,
    /// Outstanding provisional amount in fen.
    #[serde(default)]
    pub amount: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCardLimits {
    /// Beyond this, try online first even when grace is forced (EMV lower offline limit).
    #[serde(default)]
    pub soft: Option<RawCountAmount>,
    /// Beyond this, grace is refused (EMV upper offline limit). Required.
    pub hard: RawCountAmount,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest single settlement in fen that grace accepts. Required.
    pub per_settlement: u64,
    /// Outstanding provisional settlements per card.
    pub per_card: RawCardLimits,
    /// Outstanding provisional settlements per institution (`hospital_id`).
    #[serde(default)]
    pub per_institution: Option<RawCountAmount>,
    /// Outstanding provisional settlements of this sidecar. Required.
    pub total: RawCountAmount,
    /// Refuse new grace when the journal file reaches this size. Default 1GiB.
    #[serde(default)]
    pub journal_size: Option<Size>,
    /// An item not settled within this time goes to needs-review (never deleted). Default 72h.
    #[serde(default)]
    pub max_age: Option<Dur>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    /// Highest replay rate, reached after `ramp`. Live settlements draw from the same budget
    /// first. Default 50/s.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// Slow-start window after the canary succeeds. Default 30s.
    #[serde(default)]
    pub ramp: Option<Dur>,
    /// Send attempts before an item goes to needs-review. Default 20.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Items in flight at once (different cards; one card is one FIFO lane). Default 8.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// First backoff after a 5xx (doubles, with jitter). Default 500ms.
    #[serde(default)]
    pub backoff: Option<Dur>,
    /// Longest backoff. Default 60s.
    #[serde(default)]
    pub max_backoff: Option<Dur>,
    /// While the backend is down, how often one canary item is tried. Default 2s.
    #[serde(default)]
    pub probe_interval: Option<Dur>,
    /// Path queried with `?idempotency_key=K` to resolve an unknown outcome. Default
    /// `/payment/v1/settlements`.
    #[serde(default)]
    pub query_path: Option<String>,
}

/// Limits with `None` meaning "not limited on this axis".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CountAmount {
    pub count: Option<u64>,
    pub amount: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraceLimits {
    pub per_settlement: u64,
    pub card_soft: CountAmount,
    pub card_hard: CountAmount,
    pub institution: CountAmount,
    pub total: CountAmount,
    pub journal_bytes: u64,
    #[serde(serialize_with = "ser_dur")]
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForwardConfig {
    pub rate: Rate,
    #[serde(serialize_with = "ser_dur")]
    pub ramp: Duration,
    pub max_attempts: u32,
    pub concurrency: u32,
    #[serde(serialize_with = "ser_dur")]
    pub backoff: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub max_backoff: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub probe_interval: Duration,
    pub query_path: String,
}

/// A validated grace policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GracePolicy {
    pub name: String,
    pub store: PathBuf,
    /// The log directory (`store.log_dir`, or `<store>-log`).
    pub log_dir: PathBuf,
    pub card_no: String,
    pub amount_fen: String,
    pub hospital_id: String,
    pub limits: GraceLimits,
    pub forward: ForwardConfig,
    pub body_key_file: Option<PathBuf>,
    pub signing_key_file: Option<PathBuf>,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    Dur(*d).serialize(s)
}
