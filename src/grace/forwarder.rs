//! The forwarder: one background task per policy that drains the journal into the backend.
//!
//! - **Lanes**: the journal hands out only lane heads (the oldest unfinished item of each card),
//!   so one card's settlements reach the backend in order while different cards go in parallel
//!   (up to `forward.concurrency`).
//! - **Canary**: while the backend's health is unknown, exactly one item is sent and awaited; only
//!   an answer starts the drain. NotSent (breaker open, no healthy endpoint, refused) or
//!   `Retry-After` marks it down until the next probe.
//! - **Slow start** ([`super::pacing`]): the rate ramps from 10 % to `forward.rate` over
//!   `forward.ramp`; live requests take from the same budget first.
//! - **Stops** at once when a forward finds the backend down again (the breaker opened).
//! - Operator pause, forced grace (planned maintenance) and shutdown stop new forwards; forwards
//!   in flight finish (a kill mid-forward is recovered as `unknown` on the next start).
//!
//! It also sweeps expired items to needs_review and publishes the queue gauges.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::clock::now_ms;
use super::engine::{Engine, Health};
use super::forward::{forward_one, Signal};
use super::pacing::{ramped_rate, RAMP_FLOOR};
use crate::telemetry::names;

/// Runs until `stop` turns true.
pub async fn run(engine: Arc<Engine>, mut stop: watch::Receiver<bool>) {
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut upkeep = Upkeep { last: Instant::now() - Duration::from_secs(60), forwarded: 0 };
    loop {
        if *stop.borrow() {
            break;
        }
        while tasks.try_join_next().is_some() {}
        upkeep.tick(&engine).await;
        let policy = engine.policy();
        let control = engine.control.lock().map(|c| c.clone()).unwrap_or_default();
        if control.paused || engine.forced().is_some() {
            idle(&engine, &mut stop, Duration::from_secs(1)).await;
            continue;
        }
        let now = Instant::now();
        let health = match engine.health() {
            Health::Down { until } if until > now => {
                idle(&engine, &mut stop, (until - now).min(Duration::from_secs(1))).await;
                continue;
            }
            Health::Down { .. } => {
                engine.set_health(Health::Canary);
                Health::Canary
            }
            h => h,
        };
        let max = control.rate.unwrap_or_else(|| policy.forward.rate.per_second());
        let rate = match health {
            Health::Ramping { since } => ramped_rate(max, since.elapsed(), policy.forward.ramp),
            _ => max * RAMP_FLOOR,
        };
        engine.pacer.set_rate(rate);
        let limit = policy.forward.concurrency as usize;
        if tasks.len() >= limit || (health == Health::Canary && !tasks.is_empty()) {
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let due = match engine.store.due(now_ms(), (limit - tasks.len()).min(256)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the grace journal");
                idle(&engine, &mut stop, Duration::from_secs(1)).await;
                continue;
            }
        };
        let busy = engine.busy_cards.lock().map(|b| b.clone()).unwrap_or_default();
        let mut due: Vec<_> = due.into_iter().filter(|i| !busy.contains(&i.card_ref)).collect();
        if due.is_empty() {
            idle(&engine, &mut stop, Duration::from_millis(200)).await;
            continue;
        }
        if health == Health::Canary {
            // One canary, awaited alone: the backlog does not start until the backend answers.
            let item = due.remove(0);
            let signal = forward_one(&engine, item).await;
            apply(&engine, signal);
            continue;
        }
        for item in due {
            if !wait_token(&engine, &mut stop).await || matches!(engine.health(), Health::Down { .. }) {
                break;
            }
            if let Ok(mut b) = engine.busy_cards.lock() {
                b.insert(item.card_ref.clone());
            }
            let e = engine.clone();
            tasks.spawn(async move {
                let card = item.card_ref.clone();
                let signal = forward_one(&e, item).await;
                apply(&e, signal);
                if let Ok(mut b) = e.busy_cards.lock() {
                    b.remove(&card);
                }
            });
        }
    }
    // Let forwards in flight finish, so their outcome is recorded rather than left `forwarding`.
    while tasks.join_next().await.is_some() {}
}

/// Updates the backend health from one forward's outcome.
fn apply(engine: &Engine, signal: Signal) {
    let probe = engine.policy().forward.probe_interval;
    match signal {
        Signal::Answered => {
            if engine.health() == Health::Canary {
                tracing::info!(policy = %engine.name, "grace canary answered; replay ramping up");
                engine.set_health(Health::Ramping { since: Instant::now() });
            }
        }
        Signal::Down(_) | Signal::Ambiguous => {
            let after = match signal {
                Signal::Down(Some(a)) => a.max(probe),
                _ => probe,
            };
            // Jitter so a fleet of sidecars does not probe in step.
            let wait = after.mul_f64(0.75 + rand::random::<f64>() / 2.0);
            if !matches!(engine.health(), Health::Down { .. }) {
                tracing::warn!(policy = %engine.name, ?wait, "backend unavailable; replay stopped until the next canary");
            }
            engine.set_health(Health::Down { until: Instant::now() + wait });
        }
        Signal::Skipped => {}
    }
}

/// Waits for a pacing token; false when stopping.
async fn wait_token(engine: &Engine, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *stop.borrow() {
            return false;
        }
        match engine.pacer.try_take() {
            Ok(()) => return true,
            Err(wait) => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return false,
                }
            }
        }
    }
}

async fn idle(engine: &Engine, stop: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = engine.wake.notified() => {}
        _ = stop.changed() => {}
    }
}

/// Once a second: expiry sweep, gauges, drain rate.
struct Upkeep {
    last: Instant,
    forwarded: u64,
}

impl Upkeep {
    async fn tick(&mut self, engine: &Engine) {
        let dt = self.last.elapsed();
        if dt < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        match engine.store.expire(now_ms()).await {
            Ok(n) if n > 0 => tracing::warn!(policy = %engine.name, items = n, "grace items expired; needs review"),
            Err(e) => tracing::error!(error = %e, "grace expiry sweep failed"),
            _ => {}
        }
        let done = engine.forwarded.load(Ordering::Relaxed);
        let rate = (done.saturating_sub(self.forwarded)) as f64 / dt.as_secs_f64().max(0.001);
        self.forwarded = done;
        if let Ok(mut r) = engine.drain_rate.lock() {
            *r = if *r == 0.0 { rate } else { 0.7 * *r + 0.3 * rate };
        }
        let s = engine.store.summary();
        let p = engine.name.clone();
        metrics::gauge!(names::GRACE_QUEUE_DEPTH, "policy" => p.clone()).set(s.outstanding_count as f64);
        metrics::gauge!(names::GRACE_OUTSTANDING_FEN, "policy" => p.clone()).set(s.outstanding_fen as f64);
        let age = s.oldest_accepted_ms.map(|ms| (now_ms() - ms).max(0) as f64 / 1000.0).unwrap_or(0.0);
        metrics::gauge!(names::GRACE_OLDEST_AGE_SECONDS, "policy" => p.clone()).set(age);
        let review = s.by_state.get("needs_review").copied().unwrap_or(0);
        metrics::gauge!(names::GRACE_NEEDS_REVIEW, "policy" => p.clone()).set(review as f64);
        metrics::gauge!(names::GRACE_FORCED, "policy" => p).set(if engine.forced().is_some() { 1.0 } else { 0.0 });
    }
}
