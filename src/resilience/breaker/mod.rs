//! Circuit breaker: closed → open → half-open, per cluster (or per route when configured).
//!
//! The shape is Linkerd's: the request path only reads a [`gate::Gate`] (one atomic load, plus
//! one atomic decrement for a half-open probe) and hands each finished call's classified outcome
//! to a per-breaker policy task ([`task`]): a plain success as a count in its worker's own
//! [`Successes`] stripe, anything else over a channel, with the successes before it. The task
//! owns the state machine ([`core::Core`]), publishes every change into the gate, and keeps
//! the decision log that `GET /breakers/events` serves. The semantics are Resilience4j's (count
//! or time windows, `min_calls`, slow-call rate, N half-open probes, disabled / forced-open /
//! metrics-only) with the trip conditions and evidence recorded for every transition
//! (research §4.1).

pub mod config;
pub mod core;
pub mod gate;
pub mod layer;
mod task;
pub mod window;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use self::config::BreakerConfig;
use self::core::Evidence;
use self::gate::{Admit, Gate, Mode};
use crate::error::{BoxError, ErrorKind, LifelineError};
use crate::proxy::workers::PerWorker;
use crate::telemetry::names;

/// Transitions kept per breaker for `GET /breakers/events`.
pub const EVENTS_KEPT: usize = 256;

/// Orders events of all breakers.
static EVENT_SEQ: AtomicU64 = AtomicU64::new(1);

/// One entry of the decision log.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    pub at_unix_ms: u64,
    pub breaker: String,
    pub cluster: String,
    pub from: &'static str,
    pub to: &'static str,
    pub reason: &'static str,
    pub mode: &'static str,
    /// True when the breaker only reports (metrics_only): nothing was blocked.
    pub dry_run: bool,
    pub evidence: Evidence,
    pub open_for_ms: Option<u64>,
    /// The operator's reason, for overrides.
    pub note: Option<String>,
}

/// What the admin API shows besides the live figures.
#[derive(Debug, Default)]
struct Status {
    since_unix_ms: u64,
    next_probe_unix_ms: Option<u64>,
    last_trip: Option<Event>,
    events: VecDeque<Event>,
}

enum Msg {
    /// `successes_before`: plain successes of the same epoch this thread counted before this
    /// outcome and the policy task had not taken yet (they go first, in order).
    Outcome {
        epoch: u64,
        failed: bool,
        slow: bool,
        at: tokio::time::Instant,
        successes_before: u64,
    },
    SetMode {
        mode: Mode,
        note: String,
        ack: oneshot::Sender<()>,
    },
    Snapshot(oneshot::Sender<Evidence>),
    Sync(oneshot::Sender<()>),
}

/// A live breaker: the gate the path reads and the handle to its policy task.
pub struct Breaker {
    pub name: String,
    pub cluster: String,
    pub config: BreakerConfig,
    gate: Arc<Gate>,
    tx: std::sync::mpsc::Sender<Msg>,
    /// Plain successes not yet taken by the policy task.
    successes: Arc<Successes>,
    /// Wakes the policy task. Plain successes do not ring it (they cannot change the state); the
    /// task takes them with the next failure or probe, or when its window needs them
    /// ([`core::Core::successes_due`]), so a busy breaker costs the path an add to its worker's
    /// own counter, not a task wake-up per request.
    wake: Arc<Notify>,
    status: Arc<Mutex<Status>>,
    task: tokio::task::JoinHandle<()>,
    rejected: metrics::Counter,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Drop for Breaker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Plain successes the policy task has not taken yet, one counter per proxy worker.
///
/// Until session 20 every success was a message on the channel: both workers pushed onto its
/// one tail, and every 31st push allocated a block the policy task freed on another thread.
/// Each counter packs the breaker epoch its calls were admitted in (low 32 bits of it, above)
/// with their count (below): successes of an epoch the breaker has left are not counted (the
/// task would drop them), and one of an older epoch never replaces a newer count.
#[derive(Debug, Default)]
pub(crate) struct Successes(PerWorker<AtomicU64>);

const COUNT: u64 = u32::MAX as u64;

fn packed_epoch(epoch: u64) -> u64 {
    epoch & COUNT
}

impl Successes {
    /// One more success of a call admitted in `epoch`.
    fn count(&self, epoch: u64) {
        let e = packed_epoch(epoch);
        let slot = self.0.here();
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (held, n) = (cur >> 32, cur & COUNT);
            let next = if held == e {
                if n == COUNT {
                    return; // four billion successes between two drains: the window is full anyway
                }
                cur + 1
            } else if (e.wrapping_sub(held) & COUNT) < (1 << 31) {
                // A newer epoch: what the stripe held, the task no longer counts.
                (e << 32) | 1
            } else {
                return; // an older epoch's call: the task no longer counts it
            };
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Takes this thread's successes of `epoch` (none when the stripe holds another epoch's:
    /// a late failure of an older epoch leaves the current one's alone).
    fn take_here(&self, epoch: u64) -> u64 {
        let e = packed_epoch(epoch);
        let slot = self.0.here();
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            if cur >> 32 != e || cur & COUNT == 0 {
                return 0;
            }
            match slot.compare_exchange_weak(cur, e << 32, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return cur & COUNT,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Takes every stripe (the policy task): how many successes of `epoch` they held.
    pub(crate) fn take_all(&self, epoch: u64) -> u64 {
        self.0.iter().map(|s| split(s.swap(0, Ordering::Relaxed), epoch)).sum()
    }
}

fn split(v: u64, epoch: u64) -> u64 {
    if v >> 32 == packed_epoch(epoch) {
        v & COUNT
    } else {
        0
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Breaker {
    /// Starts a breaker and its policy task (needs a tokio runtime). `mode` and `history` carry
    /// the operator override and the decision log over from the breaker this one replaces when
    /// a reload changed its config.
    pub fn spawn(name: &str, cluster: &str, config: BreakerConfig, mode: Mode, history: Vec<Event>) -> Arc<Breaker> {
        let gate = Arc::new(Gate::new(config.open_for));
        let (tx, rx) = std::sync::mpsc::channel();
        let wake = Arc::new(Notify::new());
        let events: VecDeque<Event> = history.into_iter().rev().take(EVENTS_KEPT).rev().collect();
        let status = Arc::new(Mutex::new(Status { since_unix_ms: unix_ms(), events, ..Status::default() }));
        let ctx = task::Ctx::new(name, cluster, gate.clone(), status.clone(), mode);
        // On the housekeeping beat, the time window's buckets end with the control plane's other
        // once-a-second chores (a 1 s bucket; a shorter one that divides a second at some of
        // them): an idle breaker wakes nobody on its own.
        let core = self::core::Core::new(
            config.clone(),
            crate::beat::floor(tokio::time::Instant::now(), crate::beat::SECOND),
            Box::new(|| rand::random_range(0..10_000)),
        );
        let span = tracing::info_span!("breaker_policy", breaker = name);
        let successes = Arc::new(Successes::default());
        let task = tokio::spawn(tracing::Instrument::instrument(
            task::run(core, ctx, rx, successes.clone(), wake.clone()),
            span,
        ));
        let rejected =
            metrics::counter!(names::REJECTED_TOTAL, "cluster" => cluster.to_string(), "reason" => "circuit_open");
        Arc::new(Breaker {
            name: name.into(),
            cluster: cluster.into(),
            config,
            gate,
            tx,
            successes,
            wake,
            status,
            task,
            rejected,
        })
    }

    /// The path's question. Counts refusals.
    pub fn admit(&self) -> Admit {
        let a = self.gate.admit();
        if let Admit::No { .. } = a {
            self.rejected.increment(1);
        }
        a
    }

    /// The error a refused call fails with (typed, so grace can take it: the request was not sent).
    pub fn open_error(&self, retry_after: Duration) -> BoxError {
        let (_, mode, state) = self.gate.load();
        let what = if mode == Mode::ForcedOpen {
            "forced open by an operator".to_string()
        } else {
            state.name().replace('_', "-")
        };
        LifelineError::new(ErrorKind::CircuitOpen, format!("circuit breaker {} is {what}; failing fast", self.name))
            .with_cluster(&self.cluster)
            .with_retry_after(retry_after)
            .boxed()
    }

    fn send(&self, msg: Msg, urgent: bool) -> bool {
        let sent = self.tx.send(msg).is_ok();
        if urgent {
            self.wake.notify_one();
        }
        sent
    }

    /// Reports a finished call admitted with `epoch` (`probe`: it was a half-open probe).
    pub fn record(&self, epoch: u64, failed: bool, slow: bool, probe: bool) {
        self.record_at(epoch, failed, slow, probe, tokio::time::Instant::now());
    }

    /// [`Breaker::record`] for a call that ended `at` (the caller read the clock already).
    pub fn record_at(&self, epoch: u64, failed: bool, slow: bool, probe: bool, at: tokio::time::Instant) {
        if !(failed || slow || probe) {
            self.successes.count(epoch);
            return;
        }
        let successes_before = self.successes.take_here(epoch);
        self.send(Msg::Outcome { epoch, failed, slow, at, successes_before }, true);
    }

    /// A call admitted as a probe ended without an outcome (the caller went away).
    pub fn cancelled(&self, epoch: u64, probe: bool) {
        if probe {
            self.gate.return_probe(epoch);
        }
    }

    /// Sets the operator mode; returns once the policy applied it.
    pub async fn set_mode(&self, mode: Mode, note: &str) {
        let (ack, done) = oneshot::channel();
        if self.send(Msg::SetMode { mode, note: note.to_string(), ack }, true) {
            let _ = done.await;
        }
    }

    /// The current operator mode.
    pub fn mode(&self) -> Mode {
        self.gate.load().1
    }

    /// Waits until the policy task has handled everything sent before (tests, admin reads).
    pub async fn sync(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Msg::Sync(tx), true) {
            let _ = rx.await;
        }
    }

    /// What `GET /breakers` shows for this breaker.
    pub async fn snapshot(&self) -> serde_json::Value {
        let (tx, rx) = oneshot::channel();
        let live = if self.send(Msg::Snapshot(tx), true) { rx.await.ok() } else { None };
        let (epoch, mode, state) = self.gate.load();
        let status = self.status.lock().map(|s| (s.since_unix_ms, s.next_probe_unix_ms, s.last_trip.clone()));
        let (since, next_probe, last_trip) = status.unwrap_or((0, None, None));
        serde_json::json!({
            "name": self.name,
            "cluster": self.cluster,
            "state": state.name(),
            "mode": mode.name(),
            "epoch": epoch,
            "since_unix_ms": since,
            "next_probe_unix_ms": if state == self::core::State::Open { next_probe } else { None },
            "window": live,
            "last_trip": last_trip,
            "config": self.config,
        })
    }

    /// The decision log, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.status.lock().map(|s| s.events.iter().cloned().collect()).unwrap_or_default()
    }

    /// Stops the policy task (shutdown). The gate keeps its last state.
    pub fn stop(&self) {
        self.task.abort();
    }
}
