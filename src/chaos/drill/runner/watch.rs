//! What the runner watches besides the timeline: continuous hypotheses (each second, over a
//! sliding window, abort when one fails badly) and the grace queue draining after the load.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::super::env::Env;
use super::super::hypothesis::{self, Evidence};
use super::super::live::Live;
use super::super::plan::Drill;
use super::super::sampler;
use super::TimelineOutcome;

/// Evaluates continuous hypotheses over their sliding window.
pub(super) fn continuous(
    drill: &Drill,
    live: &Live,
    ts: f64,
    streaks: &mut BTreeMap<String, u32>,
    out: &mut TimelineOutcome,
) {
    let seconds = live.seconds();
    let settlements = live.settlements.lock().map(|s| s.clone()).unwrap_or_default();
    let ev = Evidence {
        seconds: &seconds,
        settlements: &settlements,
        samples: &[],
        probes: &[],
        faults: &out.windows,
        reconciliation: None,
        drained_after: Err(String::new()),
        continuous_failures: &BTreeMap::new(),
    };
    for h in &drill.hypotheses {
        let Some(c) = h.continuous else { continue };
        if out.continuous_failures.contains_key(&h.id) {
            continue;
        }
        // Seconds are complete one second late; look at the window that ended then.
        let to = (ts - 1.0).min(h.to.as_secs_f64());
        let from = (to - c.window.as_secs_f64()).max(h.from.as_secs_f64());
        if to <= from {
            continue;
        }
        let Ok((v, _, _)) = hypothesis::evaluate_window(h, &ev, from, to) else { continue };
        let held = h.tolerance.map(|t| t.holds(v)).unwrap_or(true);
        let streak = streaks.entry(h.id.clone()).or_default();
        *streak = if held { 0 } else { *streak + 1 };
        if *streak >= c.failures {
            out.continuous_failures.insert(h.id.clone(), ts);
            live.event(ts, "hypothesis", format!("{} failed {} times in a row", h.id, c.failures));
            if c.abort {
                out.abort = Some(format!("hypothesis {} failed badly (continuous check)", h.id));
            }
        }
    }
}

/// Waits for the grace queue to empty: `Ok(Some(seconds))` after the load ended, `Ok(None)`
/// if it did not within the drain timeout, `Err` if the sidecar has no grace queue.
pub(super) async fn drain(
    drill: &Drill,
    env: &Env,
    live: &Live,
    start: Instant,
    load_end: f64,
) -> Result<Option<f64>, String> {
    let has_grace = live.samples().iter().any(|s| s.grace_depth.is_some());
    if !has_grace {
        return Err("the sidecar reported no grace queue (offline grace not available)".into());
    }
    let deadline = Instant::now() + drill.drain_timeout;
    loop {
        let s = sampler::sample(&env.http, &env.admin_url, start.elapsed().as_secs_f64()).await;
        let depth = s.grace_depth;
        if let Ok(mut v) = live.samples.lock() {
            v.push(s);
        }
        if depth == Some(0.0) {
            return Ok(Some(start.elapsed().as_secs_f64() - load_end));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
