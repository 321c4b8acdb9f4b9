//! Runs one drill: environment, load, fault timeline, sampling, abort conditions, rollback,
//! drain, reconciliation, verdict, reports.
//!
//! The order of the end is fixed whatever happened before it (research A5, "abort is not
//! resumable"): stop the load, revert every fault at once, wait for the grace queue to drain,
//! reconcile the ledgers, evaluate, write the reports, stop and reap every process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::env::Env;
use super::hypothesis::{self, Evidence};
use super::live::Live;
use super::plan::{Action, Drill, Fault, Kind, Signal};
use super::progress::Progress;
use super::report::{Report, Verdict};
use super::{reconcile, sampler, traffic};

mod watch;
use watch::{continuous, drain};

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where `report.json`, `junit.xml`, `report.html` and the run's files go.
    pub dir: PathBuf,
    /// The `lifeline` binary that local mode starts (sims, proxies, the sidecar).
    pub bin: PathBuf,
    /// No live progress line (CI).
    pub quiet: bool,
    /// Sampling interval of the admin API.
    pub sample_every: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Pending,
    Active,
    Done,
}

/// Runs `drill`; `interrupted` is set by Ctrl-C (the caller installs the handler).
pub async fn run(drill: &Drill, opts: &Options, interrupted: Arc<AtomicBool>) -> Report {
    let run_dir = opts.dir.join("run");
    let mut report = Report::new(drill);
    if let Err(e) = std::fs::create_dir_all(&run_dir) {
        report.error(format!("cannot create {}: {e}", run_dir.display()));
        return report.finish(Verdict::Errored, None, &[], &Live::default(), &opts.dir);
    }
    let progress = Progress::new(opts.quiet, drill);
    progress.line(&format!("drill {}: starting the environment", drill.name));
    let mut env = match Env::start(drill, &run_dir, &opts.bin).await {
        Ok(env) => env,
        Err(e) => {
            report.error(format!("environment: {e}"));
            return report.finish(Verdict::Errored, None, &[], &Live::default(), &opts.dir);
        }
    };
    let live = Arc::new(Live::default());
    let start = Instant::now();
    let stop_load = CancellationToken::new();
    let load = tokio::spawn({
        let (phases, plan, url, live, stop) =
            (drill.phases.clone(), drill.load.clone(), env.proxy_url.clone(), live.clone(), stop_load.clone());
        async move { traffic::run(&phases, &plan, &url, live, stop).await }
    });
    let mut watchers = vec![tokio::spawn(sampler::run(
        env.http.clone(),
        env.admin_url.clone(),
        live.clone(),
        start,
        opts.sample_every,
    ))];
    if drill.hypotheses.iter().any(|h| h.kind == Kind::AuthNeverFailsOpen) {
        let every = Duration::from_millis(250);
        watchers.push(tokio::spawn(sampler::probe_auth(
            env.http.clone(),
            env.proxy_url.clone(),
            live.clone(),
            start,
            every,
        )));
    }

    let outcome = timeline(drill, &mut env, &live, start, &interrupted, &progress).await;
    let mut verdict_hint = outcome.abort.as_ref().map(|_| Verdict::Aborted);
    if let Some(reason) = &outcome.abort {
        live.event(start.elapsed().as_secs_f64(), "abort", reason.clone());
        progress.line(&format!("ABORT: {reason}; reverting every fault"));
    }
    for e in &outcome.errors {
        report.error(e.clone());
    }
    if !outcome.errors.is_empty() && verdict_hint.is_none() {
        verdict_hint = Some(Verdict::Errored);
    }

    // The end, always in this order.
    stop_load.cancel();
    let problems = env.revert_all(&drill.faults).await;
    live.event(
        start.elapsed().as_secs_f64(),
        "rollback",
        if problems.is_empty() { "every fault reverted".to_string() } else { problems.join("; ") },
    );
    if !problems.is_empty() {
        report.error(format!("rollback: {}", problems.join("; ")));
        verdict_hint = verdict_hint.or(Some(Verdict::Errored));
    }
    match load.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            report.error(format!("load: {e}"));
            verdict_hint = verdict_hint.or(Some(Verdict::Errored));
        }
        Err(e) => {
            report.error(format!("load task: {e}"));
            verdict_hint = verdict_hint.or(Some(Verdict::Errored));
        }
    }
    let load_end = start.elapsed().as_secs_f64();
    progress.line("load stopped; waiting for the grace queue to drain");
    let drained_after = drain(drill, &env, &live, start, load_end).await;
    for w in &watchers {
        w.abort();
    }
    let settlements = live.settlements.lock().map(|s| s.clone()).unwrap_or_default();
    let reconciliation = if env.ledgers.is_empty() {
        None
    } else {
        match reconcile::run(&env.http, &env.ledgers, &settlements).await {
            Ok(r) => Some(r),
            Err(e) => {
                report.error(format!("reconciliation: {e}"));
                None
            }
        }
    };
    let samples = live.samples();
    let probes = live.probes.lock().map(|p| p.clone()).unwrap_or_default();
    let seconds = live.seconds();
    let evidence = Evidence {
        seconds: &seconds,
        settlements: &settlements,
        samples: &samples,
        probes: &probes,
        faults: &outcome.windows,
        reconciliation: reconciliation.as_ref(),
        drained_after,
        continuous_failures: &outcome.continuous_failures,
    };
    let results: Vec<hypothesis::Outcome> =
        drill.hypotheses.iter().map(|h| hypothesis::evaluate(h, &evidence)).collect();
    env.shutdown().await;
    let verdict = verdict_hint.unwrap_or_else(|| {
        if results.iter().any(|r| r.result == "errored") {
            Verdict::Errored
        } else if results.iter().any(|r| r.result == "failed") {
            Verdict::Deviated
        } else {
            Verdict::Passed
        }
    });
    report.windows = outcome.windows.clone();
    report.finish(verdict, reconciliation, &results, &live, &opts.dir)
}

pub(super) struct TimelineOutcome {
    pub(super) abort: Option<String>,
    pub(super) errors: Vec<String>,
    pub(super) windows: BTreeMap<String, (f64, Option<f64>)>,
    pub(super) continuous_failures: BTreeMap<String, f64>,
}

/// Drives the fault timeline until the load's end or an abort.
async fn timeline(
    drill: &Drill,
    env: &mut Env,
    live: &Arc<Live>,
    start: Instant,
    interrupted: &AtomicBool,
    progress: &Progress,
) -> TimelineOutcome {
    let mut out = TimelineOutcome {
        abort: None,
        errors: Vec::new(),
        windows: BTreeMap::new(),
        continuous_failures: BTreeMap::new(),
    };
    let mut states = vec![State::Pending; drill.faults.len()];
    let mut streaks: BTreeMap<String, u32> = BTreeMap::new();
    let kill_switch = drill.kill_switch.clone();
    let length = drill.length();
    let mut last_second = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let t = start.elapsed();
        let ts = t.as_secs_f64();
        if interrupted.load(Ordering::SeqCst) {
            out.abort = Some("interrupted (Ctrl-C)".into());
        } else if kill_switch.as_ref().is_some_and(|k| k.exists()) {
            out.abort = Some(format!(
                "kill switch {} exists",
                kill_switch.as_ref().map(|k| k.display().to_string()).unwrap_or_default()
            ));
        } else if t > drill.max_duration {
            out.abort = Some(format!("the drill ran past abort.max_duration ({:?})", drill.max_duration));
        }
        if out.abort.is_some() || t >= length {
            break;
        }
        for (i, f) in drill.faults.iter().enumerate() {
            match states[i] {
                State::Pending if t >= f.start => {
                    if let Some(w) = f.when {
                        let depth = live.last_sample().and_then(|s| s.grace_depth).unwrap_or(0.0);
                        if depth < w.grace_depth as f64 {
                            if t > f.start + w.timeout {
                                out.abort = Some(format!(
                                    "fault {}: the grace queue never reached {} within {:?}",
                                    f.id, w.grace_depth, w.timeout
                                ));
                            }
                            continue;
                        }
                    }
                    let ttl = f.end.map(|e| e.saturating_sub(t));
                    match env.apply(f, ttl).await {
                        Ok(()) => {
                            states[i] = State::Active;
                            out.windows.insert(f.id.clone(), (start.elapsed().as_secs_f64(), None));
                            live.event(
                                start.elapsed().as_secs_f64(),
                                "fault",
                                format!("{}: {}", f.id, f.action.label()),
                            );
                            progress.line(&format!("{:>6.1}s fault {} started: {}", ts, f.id, f.action.label()));
                        }
                        Err(e) => {
                            out.errors.push(format!("fault {}: {e}", f.id));
                            out.abort = Some(format!("fault {} could not be applied", f.id));
                        }
                    }
                }
                State::Active if revert_due(f, t, out.windows.get(&f.id).map(|w| w.0)) => {
                    states[i] = State::Done;
                    let result = env.revert(f).await;
                    let now = start.elapsed().as_secs_f64();
                    if let Some(w) = out.windows.get_mut(&f.id) {
                        w.1 = Some(now);
                    }
                    match result {
                        Ok(()) => {
                            live.event(now, "revert", f.id.clone());
                            progress.line(&format!("{now:>6.1}s fault {} ended", f.id));
                        }
                        Err(e) => {
                            out.errors.push(format!("revert {}: {e}", f.id));
                            out.abort = Some(format!("fault {} could not be reverted", f.id));
                        }
                    }
                }
                _ => {}
            }
            if out.abort.is_some() {
                break;
            }
        }
        if t.as_secs() > last_second {
            last_second = t.as_secs();
            continuous(drill, live, ts, &mut streaks, &mut out);
            progress.tick(
                ts,
                live,
                &states
                    .iter()
                    .zip(&drill.faults)
                    .filter(|(s, _)| **s == State::Active)
                    .map(|(_, f)| f.id.as_str())
                    .collect::<Vec<_>>(),
            );
        }
        if out.abort.is_some() {
            break;
        }
    }
    progress.done();
    out
}

/// A fault ends at its `end`; a killed process comes back after `restart_after` if set.
fn revert_due(f: &Fault, t: Duration, started: Option<f64>) -> bool {
    if let Action::Process { restart_after: Some(after), signal: Signal::Kill | Signal::Term, .. } = &f.action {
        let s = started.unwrap_or(f.start.as_secs_f64());
        return t.as_secs_f64() >= s + after.as_secs_f64();
    }
    f.end.is_some_and(|e| t >= e)
}
