//! `lifeline load`: an open-model HTTP load generator for settlement peaks, and the engine that
//! `lifeline drill` drives.
//!
//! **Open model.** Arrivals follow the plan's rate whatever the server does (a constant arrival
//! rate, like real cardholders at hospital counters), not a fixed number of users waiting for
//! answers: a closed-model tool slows down exactly when the server does and hides the queue.
//! **Coordinated omission** is corrected as wrk2 does: each request's latency counts from the
//! time it was *scheduled*, so a stall shows up in every request it delayed. Results go into
//! HDR histograms (`hdrhistogram`).
//!
//! # Library API (what `lifeline drill` uses)
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use std::time::Duration;
//! use lifeline::load::{self, CardPool, Phase, Plan, Target, Workload};
//!
//! let mix = Workload::settlement([1, 1, 1], CardPool::new(10_000, 1.0, 42)?)?;
//! let plan = Plan {
//!     phases: vec![
//!         Phase::constant(Duration::from_secs(30), 200.0, mix.clone()).named("baseline"),
//!         Phase::constant(Duration::from_secs(60), 200.0, mix).named("payment primary killed"),
//!     ],
//! };
//! let target = Target::new("http://127.0.0.1:15001", false, 32)?;
//! let report = load::run(&plan, &target, &mut load::Quiet).await?;
//! for s in &report.timeline { /* s.t, s.sent, s.ok, s.failed, s.by_result, s.p50_us, s.p99_us */ }
//! for r in &report.settlements { /* r.idempotency_key, r.status (201/202/4xx/5xx) or r.outcome "timeout" */ }
//! # Ok(()) }
//! ```
//!
//! - [`Plan`] `{ phases: Vec<Phase { name, duration, rate, end_rate, workload }> }` — constant or
//!   ramped rate per phase, and what to send ([`Workload::plain`] or [`Workload::settlement`]).
//! - [`Target`] — URL, HTTP/1.1 or h2c, pool size (fixed), request timeout, seed.
//! - [`run`] / [`run_until`] (with a `CancellationToken` to end early; in-flight requests are
//!   still awaited so every settlement sent has a record) → [`Report`]: totals, per phase, a
//!   per-second `timeline` (sent, ok, failed, errors, by status/error, p50/p90/p99/max) and one
//!   [`SettlementRecord`] per settlement (idempotency key, status received or
//!   `timeout`/`connect_error`/`io_error`, amount, masked card) to reconcile against the ledger.
//! - [`Observer`] — called once per finished second (and per knee step) while the run goes on.
//! - [`find_knee`] — the step search behind `--find-knee`.
//!
//! # Where it sits
//! Outside the request path entirely: this is a client. The CLI lives in [`cli`], the HTML
//! report in [`html`] (inline SVG, no scripts, opens offline).

pub mod cards;
pub mod cli;
pub mod conn;
mod engine;
pub mod html;
pub mod knee;
pub mod plan;
pub mod progress;
pub mod report;
pub mod stats;
mod svg;
pub mod workload;

use std::time::{SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

pub use cards::CardPool;
pub use conn::Target;
pub use knee::{find_knee, KneeSearch, Step};
pub use plan::{Phase, Plan};
pub use report::{KneeStep, Report, Second, SettlementRecord};
pub use workload::Workload;

/// Sees the run as it goes. Both methods default to doing nothing.
pub trait Observer: Send {
    /// A second of the timeline is complete (late completions may still be added to it).
    fn second(&mut self, _second: &Second) {}
    /// A step of the knee search finished.
    fn knee_step(&mut self, _step: &KneeStep) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Observer for Quiet {}

/// Runs `plan` against `target` to the end.
pub async fn run(plan: &Plan, target: &Target, observer: &mut dyn Observer) -> Result<Report, String> {
    run_until(plan, target, observer, &CancellationToken::new()).await
}

/// Runs `plan` until it ends or `stop` fires (no new arrivals after that; in-flight ones finish).
pub async fn run_until(
    plan: &Plan,
    target: &Target,
    observer: &mut dyn Observer,
    stop: &CancellationToken,
) -> Result<Report, String> {
    let started = unix_ms();
    let mut collector = stats::Collector::new();
    engine::execute(plan, target, observer, stop, &mut collector).await?;
    Ok(finish(collector, target, started, None))
}

fn finish(
    mut collector: stats::Collector,
    target: &Target,
    started_unix_ms: u64,
    knee: Option<report::KneeReport>,
) -> Report {
    let duration_s = collector.end_s();
    Report {
        target: target.url.clone(),
        protocol: target.protocol(),
        connections: target.connections,
        started_unix_ms,
        duration_s,
        totals: collector.total.summary(duration_s),
        phases: collector.phase_reports(),
        timeline: collector.timeline(),
        settlements: collector.take_settlements(),
        knee,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
