//! The journal behind a trait, so a shared PostgreSQL store can follow the embedded SQLite one.
//!
//! A [`Store`] keeps grace items and their state machine. Its one hard promise is
//! [`Store::append`]: the idempotency-key claim, the exposure-limit check and the insert are one
//! atomic step (no other append sees a state between them), and the returned future resolves
//! only after the item is durable (fsync done; the SQLite store's is its write-ahead log). Everything the forwarder and the operators do is a compare-and-set
//! [`Store::transition`], timestamped and recorded.
//!
//! States (research §5.5):
//! ```text
//! journaled ─► forwarding ─► settled | declined            (terminal)
//!     │            ├──► retry_wait ─► forwarding
//!     │            └──► unknown ─► querying ─► settled | forwarding | needs_review
//!     ├─► cancelled (operator, before forwarding; terminal)
//!     └─► expired ─► needs_review (operator resolves; never deleted)
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use super::config::GraceLimits;

/// A boxed future, so the trait stays object-safe without extra crates.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A journal failure. Never the caller's fault; the request path answers "backend unavailable".
#[derive(Debug, Clone, thiserror::Error)]
#[error("grace journal: {0}")]
pub struct StoreError(pub String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

macro_rules! states {
    ($($v:ident => $s:literal),* $(,)?) => {
        /// Where an item is in its life.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum State { $($v),* }
        impl State {
            pub const ALL: &'static [State] = &[$(State::$v),*];
            pub fn as_str(self) -> &'static str { match self { $(State::$v => $s),* } }
            pub fn parse(s: &str) -> Option<State> { match s { $($s => Some(State::$v),)* _ => None } }
        }
    };
}

states! {
    Journaled => "journaled",
    Forwarding => "forwarding",
    RetryWait => "retry_wait",
    Unknown => "unknown",
    Querying => "querying",
    Settled => "settled",
    Declined => "declined",
    Expired => "expired",
    NeedsReview => "needs_review",
    Cancelled => "cancelled",
}

impl State {
    /// Settled, declined and cancelled end an item's exposure; everything else still counts.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Settled | State::Declined | State::Cancelled)
    }
}

/// Everything journaled for one settlement.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub receipt_id: String,
    pub idem_key: String,
    pub fingerprint: [u8; 32],
    pub policy: String,
    pub route: String,
    /// Keyed hash of the card number: the lane and the limit key. The number itself is only in
    /// the (encrypted) payload.
    pub card_ref: String,
    pub card_masked: String,
    pub institution: String,
    pub amount_fen: i64,
    /// Why grace took it (an error code such as `circuit_open`, or `operator_forced`).
    pub reason: String,
    /// `journaled`, or `unknown` when the request may already have reached the backend.
    pub state: State,
    pub method: String,
    pub path: String,
    /// Headers and body to forward (encrypted when a key is configured).
    pub payload: Vec<u8>,
    pub encrypted: bool,
    pub accepted_ms: i64,
    pub deadline_ms: i64,
    /// Not forwarded before this time (an `unknown` item gives a slow backend time to finish
    /// before it is asked about it).
    pub next_attempt_ms: i64,
}

/// A journaled item as read back.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub seq: i64,
    pub receipt_id: String,
    pub idem_key: String,
    #[serde(skip)]
    pub fingerprint: Vec<u8>,
    pub policy: String,
    pub route: String,
    #[serde(skip)]
    pub card_ref: String,
    pub card_masked: String,
    pub institution: String,
    pub amount_fen: i64,
    pub reason: String,
    pub state: State,
    pub method: String,
    pub path: String,
    #[serde(skip)]
    pub payload: Vec<u8>,
    #[serde(skip)]
    pub encrypted: bool,
    pub accepted_ms: i64,
    pub deadline_ms: i64,
    pub updated_ms: i64,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub final_status: Option<i64>,
    pub final_body: Option<String>,
    pub backend_ref: Option<String>,
    pub last_error: Option<String>,
    /// Hard card limits left after this item was accepted (for the receipt).
    pub remaining_count: Option<i64>,
    pub remaining_amount: Option<i64>,
}

/// The answer to an append.
#[derive(Debug, Clone)]
pub enum AppendOutcome {
    /// Journaled and durable. Shared with the journal's own copy (not cloned per append: a
    /// clone was a dozen allocations on the committer thread every append waits for).
    Accepted(Arc<Item>),
    /// The key was already journaled: the existing item (compare fingerprints).
    Existing(Box<Item>),
    /// A limit would be exceeded; nothing was written.
    Refused { limit: &'static str, message: String },
}

/// A compare-and-set state change.
#[derive(Debug, Clone, Default)]
pub struct Transition {
    pub receipt_id: String,
    /// The change applies only if the item is in one of these states.
    pub from: Vec<State>,
    pub to: Option<State>,
    pub actor: String,
    pub note: String,
    pub add_attempt: bool,
    pub reset_attempts: bool,
    pub next_attempt_ms: Option<i64>,
    pub final_status: Option<i64>,
    pub final_body: Option<String>,
    pub backend_ref: Option<String>,
    pub last_error: Option<String>,
    pub deadline_ms: Option<i64>,
}

/// One recorded transition.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionRow {
    pub from: Option<String>,
    pub to: String,
    pub at_ms: i64,
    pub actor: String,
    pub note: String,
}

/// Exposure and queue figures, from the writer's live counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub by_state: std::collections::BTreeMap<String, u64>,
    pub outstanding_count: u64,
    pub outstanding_fen: i64,
    /// Outstanding (count, fen) per institution.
    pub by_institution: std::collections::BTreeMap<String, (u64, i64)>,
    pub oldest_accepted_ms: Option<i64>,
    pub journal_bytes: u64,
    /// Set when the journal stopped writing its database (a failed sync): it still accepts
    /// items into its log, and needs a restart to catch up.
    pub journal_error: Option<String>,
}

/// The journal. Implementations must make `append` atomic and durable before resolving.
pub trait Store: Send + Sync {
    /// Claims the key, checks the limits and appends, in one durable transaction.
    fn append(&self, item: NewItem, limits: Arc<GraceLimits>) -> StoreFuture<'_, AppendOutcome>;
    /// Applies a compare-and-set transition; `false` when the item was not in `from`.
    fn transition(&self, t: Transition) -> StoreFuture<'_, bool>;
    /// Moves items past their deadline (and not in flight) to expired → needs_review.
    fn expire(&self, now_ms: i64) -> StoreFuture<'_, u64>;
    /// Records an operator action (actor, action, target, reason).
    fn audit(&self, actor: String, action: String, target: String, reason: String) -> StoreFuture<'_, ()>;
    fn set_meta(&self, key: String, value: Option<String>) -> StoreFuture<'_, ()>;
    fn meta(&self, key: String) -> StoreFuture<'_, Option<String>>;
    fn by_key(&self, key: String) -> StoreFuture<'_, Option<Item>>;
    fn get(&self, receipt_id: String) -> StoreFuture<'_, Option<Item>>;
    fn history(&self, receipt_id: String) -> StoreFuture<'_, Vec<TransitionRow>>;
    /// Items ready to forward now that are the head of their card's lane, oldest first.
    fn due(&self, now_ms: i64, limit: usize) -> StoreFuture<'_, Vec<Item>>;
    fn list(&self, state: Option<State>, limit: usize) -> StoreFuture<'_, Vec<Item>>;
    /// The reconciliation report for one UTC day (`YYYY-MM-DD`).
    fn reconciliation(&self, date: String) -> StoreFuture<'_, serde_json::Value>;
    /// Live counters (cheap; no I/O).
    fn summary(&self) -> Summary;
    /// Outstanding (count, fen) for one card (cheap; no I/O).
    fn card_exposure(&self, card_ref: &str) -> (u64, i64);
    /// Flushes and stops the writer; every acknowledged append is already durable.
    fn close(&self);
}
