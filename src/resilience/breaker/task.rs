//! The policy task: the only place a breaker decides.
//!
//! It receives classified outcomes (and operator commands) from the path, feeds them to the
//! [`Core`], wakes itself at the end of the open period, and publishes every change into the
//! gate, the decision log, the metrics and the log. Off the request path by construction: a
//! request only ever sends a message.

use std::sync::{Arc, Mutex};

use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::core::{Core, Reason, State, Transition};
use super::gate::{Gate, Mode};
use super::{unix_ms, Event, Msg, Status, Successes, EVENTS_KEPT, EVENT_SEQ};
use crate::telemetry::names;

pub(super) struct Ctx {
    name: String,
    cluster: String,
    gate: Arc<Gate>,
    status: Arc<Mutex<Status>>,
    mode: Mode,
    epoch: u64,
    state_gauge: metrics::Gauge,
}

impl Ctx {
    pub(super) fn new(name: &str, cluster: &str, gate: Arc<Gate>, status: Arc<Mutex<Status>>, mode: Mode) -> Ctx {
        let state_gauge =
            metrics::gauge!(names::BREAKER_STATE, "cluster" => cluster.to_string(), "breaker" => name.to_string());
        let ctx = Ctx { name: name.into(), cluster: cluster.into(), gate, status, mode, epoch: 1, state_gauge };
        ctx.gate.publish(ctx.epoch, mode, State::Closed, 0, None);
        ctx.state_gauge.set(0.0);
        ctx
    }

    /// Publishes a transition: gate first (the path sees it at once), then the record of it.
    fn apply(&mut self, core: &Core, t: Transition, note: Option<String>) {
        self.epoch += 1;
        let probes = if t.to == State::HalfOpen { core.config().half_open_calls } else { 0 };
        let next_probe = core.next_deadline();
        self.gate.publish(self.epoch, self.mode, t.to, probes, next_probe);
        self.state_gauge.set(gauge_value(self.mode, t.to));
        metrics::counter!(names::BREAKER_TRANSITIONS_TOTAL, "cluster" => self.cluster.clone(), "from" => t.from.name(), "to" => t.to.name(), "reason" => t.reason.name()).increment(1);
        let dry_run = self.mode == Mode::MetricsOnly;
        let open_for_ms = t.open_for.map(|d| d.as_millis() as u64);
        match t.to {
            State::Open => {
                tracing::warn!(breaker = %self.name, reason = t.reason.name(), calls = t.evidence.window.calls,
                failures = t.evidence.window.failures, slow = t.evidence.window.slow, consecutive = t.evidence.consecutive_failures,
                open_for_ms, dry_run, "circuit breaker opened")
            }
            _ => {
                tracing::info!(breaker = %self.name, from = t.from.name(), to = t.to.name(), reason = t.reason.name(), dry_run, "circuit breaker changed state")
            }
        }
        let event = Event {
            seq: EVENT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            at_unix_ms: unix_ms(),
            breaker: self.name.clone(),
            cluster: self.cluster.clone(),
            from: t.from.name(),
            to: t.to.name(),
            reason: t.reason.name(),
            mode: self.mode.name(),
            dry_run,
            evidence: t.evidence,
            open_for_ms,
            note,
        };
        if let Ok(mut s) = self.status.lock() {
            s.since_unix_ms = event.at_unix_ms;
            s.next_probe_unix_ms = open_for_ms.map(|ms| event.at_unix_ms + ms);
            if t.to == State::Open {
                s.last_trip = Some(event.clone());
            }
            if s.events.len() == EVENTS_KEPT {
                s.events.pop_front();
            }
            s.events.push_back(event);
        }
    }

    /// An operator changed the mode: always logged, even without a state change.
    fn set_mode(&mut self, core: &mut Core, mode: Mode, note: String, now: Instant) {
        let previous = self.mode;
        self.mode = mode;
        let reset = core.reset(now);
        let t = reset.unwrap_or(Transition {
            from: core.state(),
            to: core.state(),
            reason: Reason::Operator,
            evidence: core.evidence(now),
            open_for: None,
        });
        tracing::warn!(breaker = %self.name, from = previous.name(), to = mode.name(), note = %crate::telemetry::redact::mask(&note), "circuit breaker mode set by operator");
        self.apply(core, t, Some(format!("mode {} -> {}: {note}", previous.name(), mode.name())));
    }
}

fn gauge_value(mode: Mode, state: State) -> f64 {
    match (mode, state) {
        (Mode::ForcedOpen, _) | (_, State::Open) => 2.0,
        (_, State::HalfOpen) => 1.0,
        _ => 0.0,
    }
}

pub(super) async fn run(mut core: Core, mut ctx: Ctx, rx: Receiver<Msg>, successes: Arc<Successes>, wake: Arc<Notify>) {
    // Outcomes carry the time they happened; processing never goes back in time.
    let mut last = Instant::now();
    loop {
        // Successes nobody rang about are taken when the core needs them (a closed breaker with
        // a time window: at the end of each bucket, about once a second; idle or busy, that is
        // the task's only wake-up).
        let due = core.successes_due(Instant::now());
        let wake_at = match (core.next_deadline(), due.map(|(at, _)| at)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = wake.notified() => {}
            () = sleep => {}
        }
        let now = Instant::now().max(last);
        if let Some((end, true)) = due.filter(|(end, _)| now >= *end) {
            // The bucket has ended: what was counted since the last take happened in it (the
            // take before was at its start or later), so that is where it counts.
            let at = end.checked_sub(Duration::from_nanos(1)).unwrap_or(end).max(last);
            let taken = successes.take_all(ctx.epoch);
            record_successes(&mut core, &mut ctx, taken, at);
        }
        // The successes counted up to now, before the messages that woke the task: each message
        // carries those of its own thread that came before it.
        last = now;
        if let Some(t) = core.tick(now) {
            ctx.apply(&core, t, None);
        }
        let taken = successes.take_all(ctx.epoch);
        record_successes(&mut core, &mut ctx, taken, now);
        loop {
            let msg = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return, // the breaker is gone
            };
            let at = match &msg {
                Msg::Outcome { at, .. } => (*at).max(last),
                _ => Instant::now().max(last),
            };
            last = at;
            if let Some(t) = core.tick(at) {
                ctx.apply(&core, t, None);
            }
            handle(&mut core, &mut ctx, msg, at);
        }
        let now = Instant::now().max(last);
        if let Some(t) = core.tick(now) {
            ctx.apply(&core, t, None);
        }
    }
}

/// Records `n` plain successes of the current epoch.
fn record_successes(core: &mut Core, ctx: &mut Ctx, n: u64, at: Instant) {
    if !matches!(ctx.mode, Mode::Normal | Mode::MetricsOnly) {
        return;
    }
    if let Some(t) = core.record_successes(n, at) {
        ctx.apply(core, t, None);
    }
}

fn handle(core: &mut Core, ctx: &mut Ctx, msg: Msg, at: Instant) {
    match msg {
        Msg::Outcome { epoch, failed, slow, successes_before, .. } => {
            if epoch == ctx.epoch {
                record_successes(core, ctx, successes_before, at);
            }
            let counted = epoch == ctx.epoch && matches!(ctx.mode, Mode::Normal | Mode::MetricsOnly);
            if counted {
                if let Some(t) = core.record(failed, slow, at) {
                    ctx.apply(core, t, None);
                }
            }
        }
        Msg::SetMode { mode, note, ack } => {
            ctx.set_mode(core, mode, note, at);
            let _ = ack.send(());
        }
        Msg::Snapshot(reply) => {
            let _ = reply.send(core.evidence(at));
        }
        Msg::Sync(reply) => {
            let _ = reply.send(());
        }
    }
}
