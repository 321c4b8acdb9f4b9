//! Steady-state hypotheses: each kind evaluated over its window of what the drill observed.
//!
//! A hypothesis passes, fails (deviated), or cannot be evaluated (the data it needs does not
//! exist: no requests in the window, or a sidecar without the feature it asks about). The last
//! is reported as `errored` with the reason, never silently passed.

use std::collections::BTreeMap;

use serde::Serialize;

use super::live::{Probe, Sample, Sec, Settlement};
use super::plan::{Hypothesis, Kind, Ops};
use super::reconcile::Reconciliation;
use super::tolerance::{show, Unit};

/// How one hypothesis came out.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub id: String,
    pub kind: &'static str,
    pub window: String,
    pub tolerance: String,
    pub observed: String,
    /// `passed`, `failed` or `errored`.
    pub result: &'static str,
    pub detail: String,
    pub weight: u32,
}

/// Everything the evaluation reads.
pub struct Evidence<'a> {
    pub seconds: &'a [Sec],
    pub settlements: &'a [Settlement],
    pub samples: &'a [Sample],
    pub probes: &'a [Probe],
    /// Actual start and end (seconds from load start) of each fault.
    pub faults: &'a BTreeMap<String, (f64, Option<f64>)>,
    pub reconciliation: Option<&'a Reconciliation>,
    /// Seconds from load end until the grace queue was empty; `Err` says why unknown.
    pub drained_after: Result<Option<f64>, String>,
    /// When each continuous hypothesis failed, if it did.
    pub continuous_failures: &'a BTreeMap<String, f64>,
}

type Eval = Result<(f64, Unit, String), String>;

/// Evaluates one hypothesis over `[from, to)` seconds (the continuous check passes its own window).
pub fn evaluate_window(h: &Hypothesis, ev: &Evidence, from: f64, to: f64) -> Eval {
    let in_win = |t: f64| t >= from && t < to;
    match h.kind {
        Kind::Availability => match h.ops {
            Ops::All => {
                let (sent, errors) = ev
                    .seconds
                    .iter()
                    .filter(|s| in_win(s.t as f64))
                    .fold((0, 0), |(a, b), s| (a + s.sent, b + s.errors));
                if sent == 0 {
                    return Err("no requests in the window".into());
                }
                let ok = sent - errors.min(sent);
                let detail = format!("{errors} of {sent} requests failed (5xx, 429, timeout, connection)");
                Ok((ok as f64 / sent as f64, Unit::Ratio, detail))
            }
            Ops::Settle => {
                let in_w: Vec<&Settlement> = ev.settlements.iter().filter(|s| in_win(s.sent_at_s)).collect();
                if in_w.is_empty() {
                    return Err("no settlements in the window".into());
                }
                let ok = in_w.iter().filter(|s| s.answered()).count();
                let acked = in_w.iter().filter(|s| s.acknowledged()).count();
                let n = in_w.len();
                let detail = format!("{} of {n} settlements failed; {acked} acknowledged (200/201/202)", n - ok);
                Ok((ok as f64 / n as f64, Unit::Ratio, detail))
            }
        },
        Kind::Latency => match h.ops {
            Ops::All => {
                let worst = ev.seconds.iter().filter(|s| in_win(s.t as f64) && s.sent > 0).map(|s| {
                    if h.percentile <= 50.0 {
                        s.p50_us
                    } else {
                        s.p99_us
                    }
                });
                let v = worst.max().ok_or("no requests in the window")?;
                Ok((v as f64 / 1e6, Unit::Seconds, "worst per-second percentile in the window".into()))
            }
            Ops::Settle => {
                let mut l: Vec<u64> =
                    ev.settlements.iter().filter(|s| in_win(s.sent_at_s)).map(|s| s.latency_us).collect();
                if l.is_empty() {
                    return Err("no settlements in the window".into());
                }
                l.sort_unstable();
                let i = ((h.percentile / 100.0) * l.len() as f64).ceil() as usize;
                let v = l[i.clamp(1, l.len()) - 1];
                Ok((v as f64 / 1e6, Unit::Seconds, format!("p{} of {} settlements", h.percentile, l.len())))
            }
        },
        Kind::FailoverTime => failover_time(h, ev),
        Kind::Breaker => {
            let cluster = h.cluster.as_deref().unwrap_or_default();
            let want = h.state.as_deref().unwrap_or("open");
            let seen: Vec<&str> = ev
                .samples
                .iter()
                .filter(|s| in_win(s.t))
                .filter_map(|s| s.breaker.get(cluster).map(String::as_str))
                .collect();
            if seen.is_empty() {
                return Err(format!("the sidecar reported no breaker state for cluster {cluster} (no circuit breaker configured or available)"));
            }
            let hit = seen.iter().filter(|s| **s == want).count();
            let states: std::collections::BTreeSet<&str> = seen.iter().copied().collect();
            let detail = format!("states seen: {}", states.into_iter().collect::<Vec<_>>().join(", "));
            Ok((if hit > 0 { 1.0 } else { 0.0 }, Unit::Count, detail))
        }
        Kind::Priority | Kind::Failovers => {
            let cluster = h.cluster.as_deref().unwrap_or_default();
            let p: Vec<f64> =
                ev.samples.iter().filter(|s| in_win(s.t)).filter_map(|s| s.priority.get(cluster).copied()).collect();
            if p.is_empty() {
                return Err(format!(
                    "the sidecar reported no active priority for cluster {cluster} (failover not available)"
                ));
            }
            if h.kind == Kind::Priority {
                let max = p.iter().cloned().fold(f64::MIN, f64::max);
                Ok((max, Unit::Count, "highest active priority seen".into()))
            } else {
                // The counter sees every change; sampled priorities can miss a quick flip.
                let counts: Vec<f64> = ev
                    .samples
                    .iter()
                    .filter(|s| in_win(s.t))
                    .filter_map(|s| s.failovers.get(cluster).copied())
                    .collect();
                let (first, last) = (counts.first().copied().unwrap_or(0.0), counts.last().copied().unwrap_or(0.0));
                if last < first {
                    return Err("the sidecar restarted in the window (its counters went back)".into());
                }
                let sampled = p.windows(2).filter(|w| w[0] != w[1]).count();
                let changes = (last - first).max(sampled as f64);
                Ok((changes, Unit::Count, format!("{changes} active-priority changes (failovers and failbacks)")))
            }
        }
        Kind::GraceQueued => {
            let d: Vec<f64> = ev.samples.iter().filter(|s| in_win(s.t)).filter_map(|s| s.grace_depth).collect();
            if d.is_empty() {
                return Err("the sidecar reported no grace queue (offline grace not available)".into());
            }
            let max = d.iter().cloned().fold(0.0, f64::max);
            Ok((max, Unit::Count, "deepest grace queue seen".into()))
        }
        Kind::GraceDrained => match &ev.drained_after {
            Ok(Some(s)) => Ok((*s, Unit::Seconds, "from the end of the load until the queue was empty".into())),
            Ok(None) => Ok((f64::INFINITY, Unit::Seconds, "the grace queue never drained".into())),
            Err(e) => Err(e.clone()),
        },
        Kind::Lost | Kind::Duplicated => {
            let r = ev.reconciliation.ok_or("no ledger to reconcile against")?;
            let (v, keys) =
                if h.kind == Kind::Lost { (r.lost, &r.lost_keys) } else { (r.duplicated, &r.duplicated_keys) };
            let mut detail =
                format!("{} acknowledged ({} offline), {} applied", r.acknowledged, r.accepted_offline, r.applied);
            if !keys.is_empty() {
                detail.push_str(&format!("; e.g. {}", keys.iter().take(3).cloned().collect::<Vec<_>>().join(", ")));
            }
            Ok((v as f64, Unit::Count, detail))
        }
        Kind::Amplification => {
            let cluster = h.cluster.as_deref().unwrap_or_default();
            let pts: Vec<(f64, f64)> = ev
                .samples
                .iter()
                .filter(|s| in_win(s.t))
                .filter_map(|s| Some((*s.upstream.get(cluster)?, *s.requests.get(cluster)?)))
                .collect();
            let (Some(first), Some(last)) = (pts.first(), pts.last()) else {
                return Err(format!("the sidecar reported no request counters for cluster {cluster}"));
            };
            let (du, dr) = (last.0 - first.0, last.1 - first.1);
            if du < 0.0 || dr < 0.0 {
                return Err("the sidecar restarted in the window (its counters went back)".into());
            }
            if dr == 0.0 {
                return Err(format!("no requests to cluster {cluster} in the window"));
            }
            Ok((du / dr, Unit::Count, format!("{du:.0} upstream attempts for {dr:.0} requests")))
        }
        Kind::AuthNeverFailsOpen => {
            let p: Vec<&Probe> = ev.probes.iter().filter(|p| in_win(p.t)).collect();
            if p.is_empty() {
                return Err("no auth probes in the window".into());
            }
            let open = p.iter().filter(|p| matches!(p.status, Some(200..=299))).count();
            let refused = p.iter().filter(|p| p.status == Some(401)).count();
            Ok((
                open as f64,
                Unit::Count,
                format!(
                    "{} wrong-PIN probes: {open} answered 2xx, {refused} refused (401), the rest failed closed",
                    p.len()
                ),
            ))
        }
    }
}

fn failover_time(h: &Hypothesis, ev: &Evidence) -> Eval {
    let fault = h.fault.as_deref().unwrap_or_default();
    let (start, _) = ev.faults.get(fault).copied().ok_or(format!("fault {fault} never started"))?;
    // Per-second availability after the fault started.
    let good = |t: u64| -> Option<bool> {
        match h.ops {
            Ops::All => ev
                .seconds
                .iter()
                .find(|s| s.t == t && s.sent > 0)
                .map(|s| (s.sent - s.errors.min(s.sent)) as f64 / s.sent as f64 >= 0.99),
            Ops::Settle => {
                let w: Vec<&Settlement> =
                    ev.settlements.iter().filter(|s| s.sent_at_s >= t as f64 && s.sent_at_s < t as f64 + 1.0).collect();
                (!w.is_empty()).then(|| w.iter().filter(|s| s.answered()).count() as f64 / w.len() as f64 >= 0.99)
            }
        }
    };
    let first = start.floor() as u64;
    let last = ev.seconds.last().map(|s| s.t).unwrap_or(first);
    for t in first..=last {
        if good(t) == Some(true) && good(t + 1) != Some(false) {
            let v = (t as f64 - start).max(0.0);
            return Ok((v, Unit::Seconds, "until two seconds in a row were >= 99% available".into()));
        }
    }
    Ok((f64::INFINITY, Unit::Seconds, "availability never recovered to 99%".into()))
}

/// Evaluates a hypothesis over its own window (plus any continuous failure).
pub fn evaluate(h: &Hypothesis, ev: &Evidence) -> Outcome {
    let mut out = Outcome {
        id: h.id.clone(),
        kind: h.kind.name(),
        window: if h.kind.is_final() { "final".into() } else { h.window.clone() },
        tolerance: h.tolerance.map(|t| t.to_string()).unwrap_or_else(|| match h.kind {
            Kind::Breaker => format!("state {} seen", h.state.as_deref().unwrap_or("open")),
            Kind::AuthNeverFailsOpen => "no 2xx to a wrong PIN".into(),
            _ => String::new(),
        }),
        observed: String::new(),
        result: "errored",
        detail: String::new(),
        weight: h.weight,
    };
    match evaluate_window(h, ev, h.from.as_secs_f64(), h.to.as_secs_f64()) {
        Err(e) => out.detail = e,
        Ok((v, unit, detail)) => {
            let passed = match (h.kind, h.tolerance) {
                (Kind::Breaker, _) => v >= 1.0,
                (Kind::AuthNeverFailsOpen, _) => v == 0.0,
                (_, Some(t)) => t.holds(v),
                (_, None) => false,
            };
            out.observed = match h.kind {
                Kind::Breaker => {
                    if passed {
                        "seen".into()
                    } else {
                        "not seen".into()
                    }
                }
                _ if v.is_infinite() => "never".into(),
                _ => show(unit, v),
            };
            out.result = if passed { "passed" } else { "failed" };
            out.detail = detail;
        }
    }
    if let Some(t) = ev.continuous_failures.get(&h.id) {
        out.result = "failed";
        out.detail = format!("failed its continuous check at {t:.0}s; {}", out.detail);
    }
    out
}
