//! Checks of hypotheses: a known kind, a window of existing phases, the tolerance unit the
//! kind measures in, and the fields the kind needs.

use std::time::Duration;

use super::super::plan::*;
use super::super::scenario::*;
use super::super::tolerance::{Tolerance, Unit};
use super::ident_ok;
use crate::config::strict::Checker;
use crate::config::Dur;

pub(super) fn check_hypothesis(
    c: &mut Checker,
    h: &RawHypothesis,
    phases: &[Phase],
    faults: &[Fault],
) -> Option<Hypothesis> {
    if !ident_ok(&h.id) {
        c.error_at("id", "1 to 64 letters, digits, '-' or '_'");
    }
    let Some(kind) = Kind::ALL.iter().find(|(n, _)| *n == h.kind).map(|(_, k)| *k) else {
        let names: Vec<&str> = Kind::ALL.iter().map(|(n, _)| *n).collect();
        c.error_at("kind", format!("{:?}: one of {}", h.kind, names.join(", ")));
        return None;
    };
    let (from, to, window) = match &h.phases {
        None => (Duration::ZERO, phases.last().map(|p| p.start + p.duration).unwrap_or_default(), "all".to_string()),
        Some(names) => {
            let mut span: Option<(Duration, Duration)> = None;
            for n in names {
                match phases.iter().find(|p| &p.name == n) {
                    Some(p) => {
                        let (a, b) = span.unwrap_or((p.start, p.start + p.duration));
                        span = Some((a.min(p.start), b.max(p.start + p.duration)));
                    }
                    None => c.error_at("phases", format!("no phase named {n:?}")),
                }
            }
            let (a, b) = span.unwrap_or_default();
            (a, b, names.join("+"))
        }
    };
    let skip = match &h.skip {
        None => Duration::ZERO,
        Some(s) if s.trim().ends_with('%') => match s.trim().trim_end_matches('%').parse::<f64>() {
            Ok(p) if (0.0..100.0).contains(&p) => (to - from).mul_f64(p / 100.0),
            _ => {
                c.error_at("skip", format!("{s:?}: a percentage below 100%"));
                Duration::ZERO
            }
        },
        Some(s) => match Dur::parse(s) {
            Ok(d) if d.0 < to - from => d.0,
            Ok(_) => {
                c.error_at("skip", "skips the whole window");
                Duration::ZERO
            }
            Err(e) => {
                c.error_at("skip", e);
                Duration::ZERO
            }
        },
    };
    let tolerance = match &h.tolerance {
        Some(t) => match Tolerance::parse(t) {
            Ok(t) => Some(t),
            Err(e) => {
                c.error_at("tolerance", e);
                None
            }
        },
        None => None,
    };
    let want = match kind {
        Kind::Availability => Some(Unit::Ratio),
        Kind::Latency | Kind::FailoverTime | Kind::GraceDrained => Some(Unit::Seconds),
        Kind::Priority | Kind::Failovers | Kind::GraceQueued | Kind::Lost | Kind::Duplicated | Kind::Amplification => {
            Some(Unit::Count)
        }
        Kind::Breaker | Kind::AuthNeverFailsOpen => None,
    };
    match (want, &tolerance, &h.tolerance) {
        (Some(u), Some(t), _) if t.unit != u => c.error_at("tolerance", format!("{} needs a {}", h.kind, unit_name(u))),
        (Some(u), None, None) => c.error_at("tolerance", format!("{} needs a tolerance ({})", h.kind, unit_name(u))),
        (None, _, Some(_)) => c.error_at("tolerance", format!("{} takes no tolerance", h.kind)),
        _ => {}
    }
    let needs_cluster = matches!(kind, Kind::Breaker | Kind::Priority | Kind::Failovers | Kind::Amplification);
    if needs_cluster && h.cluster.is_none() {
        c.error_at("cluster", format!("{} needs the cluster", h.kind));
    }
    if kind == Kind::Breaker && !matches!(h.state.as_deref(), Some("open" | "closed" | "half_open")) {
        c.error_at("state", "breaker needs state: open, closed or half_open (the state that must be seen)");
    }
    if kind == Kind::FailoverTime {
        match &h.fault {
            Some(f) if faults.iter().any(|x| &x.id == f) => {}
            Some(f) => c.error_at("fault", format!("no fault with id {f:?}")),
            None => c.error_at("fault", "failover_time needs the fault whose start starts the clock"),
        }
    }
    let ops = match h.ops.as_deref() {
        None | Some("all") => Ops::All,
        Some("settle") => Ops::Settle,
        Some(o) => {
            c.error_at("ops", format!("{o:?}: all or settle"));
            Ops::All
        }
    };
    let percentile = h.percentile.unwrap_or(99.0);
    if !(0.0..=100.0).contains(&percentile) || percentile == 0.0 {
        c.error_at("percentile", "between 0 (excluded) and 100");
    }
    let continuous = h.continuous.as_ref().map(|k| Continuous {
        window: k.window.map(|d| d.0).unwrap_or(Duration::from_secs(5)),
        failures: k.failures.unwrap_or(3).max(1),
        abort: k.abort,
    });
    if continuous.is_some() && !matches!(kind, Kind::Availability | Kind::Latency) {
        c.error_at("continuous", "only availability and latency are evaluated continuously");
    }
    if continuous.is_some() && ops == Ops::Settle {
        c.error_at("continuous", "continuous checks read the per-second timeline of all requests: use ops: all");
    }
    Some(Hypothesis {
        id: h.id.clone(),
        kind,
        from: from + skip,
        to,
        window,
        ops,
        tolerance,
        percentile,
        cluster: h.cluster.clone(),
        state: h.state.clone(),
        fault: h.fault.clone(),
        continuous,
        weight: h.weight.unwrap_or(1),
    })
}

fn unit_name(u: Unit) -> &'static str {
    match u {
        Unit::Ratio => "percentage, e.g. \">= 99.5%\"",
        Unit::Seconds => "duration, e.g. \"<= 800ms\"",
        Unit::Count => "count, e.g. \"== 0\"",
    }
}
