//! The drill's load, driven by the load engine ([`crate::load`]): an open-model
//! settlement-peak mix (auth verify, settlement with a fresh Idempotency-Key, card query) at a
//! constant arrival rate per phase, latency counted from each arrival's scheduled time.
//!
//! Each finished second is copied into [`Live`] as it completes (the progress line and the
//! continuous hypotheses read it); at the end the engine's full timeline (with late answers)
//! and its record of every settlement replace it: the client's half of the ledger that
//! [`super::reconcile`] checks against the backends'.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::live::{Live, Sec, Settlement};
use super::plan::{LoadPlan, Phase};
use crate::load::{self, CardPool, Observer, Plan, Second, Target, Workload};

/// A card number the simulators accept (used by the auth probe).
pub fn card_no(i: u32) -> String {
    let first17 = format!("110101{:08}{:03}", 19_800_101 + i / 900, i % 900);
    format!("{first17}{}", crate::load::cards::check_char(&first17))
}

fn sec(s: &Second) -> Sec {
    Sec {
        t: s.t,
        sent: s.sent,
        ok: s.ok,
        errors: s.errors,
        failed: s.failed,
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        by_result: s.by_result.clone(),
    }
}

struct Feed(Arc<Live>);

impl Observer for Feed {
    fn second(&mut self, s: &Second) {
        if let Ok(mut secs) = self.0.seconds.lock() {
            match secs.iter_mut().find(|x| x.t == s.t) {
                Some(x) => *x = sec(s),
                None => secs.push(sec(s)),
            }
        }
    }
}

/// The engine's plan for the drill's phases.
pub fn plan(phases: &[Phase], lp: &LoadPlan) -> Result<Plan, String> {
    let cards = CardPool::new(lp.cards as usize, 1.0, 42)?;
    let mix = Workload::settlement(lp.weights, cards)?;
    Ok(Plan {
        phases: phases
            .iter()
            .map(|p| load::Phase::constant(p.duration, p.rate, mix.clone()).named(p.name.clone()))
            .collect(),
    })
}

/// Runs the load until its phases end or `stop` fires; every settlement sent is recorded.
pub async fn run(
    phases: &[Phase],
    lp: &LoadPlan,
    base: &str,
    live: Arc<Live>,
    stop: CancellationToken,
) -> Result<(), String> {
    let plan = plan(phases, lp)?;
    let mut target = Target::new(base, false, lp.connections)?;
    target.timeout = lp.timeout;
    let mut feed = Feed(live.clone());
    let report = load::run_until(&plan, &target, &mut feed, &stop).await?;
    if let Ok(mut secs) = live.seconds.lock() {
        *secs = report.timeline.iter().map(sec).collect();
    }
    if let Ok(mut s) = live.settlements.lock() {
        *s = report
            .settlements
            .into_iter()
            .map(|r| Settlement {
                idempotency_key: r.idempotency_key,
                status: r.status,
                outcome: r.outcome,
                sent_at_s: r.sent_at_s,
                latency_us: r.latency_us,
            })
            .collect();
    }
    Ok(())
}
