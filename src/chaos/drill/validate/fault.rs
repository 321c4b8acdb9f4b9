//! Checks of the fault timeline: times resolved against the phases, exactly one kind per fault,
//! targets that exist, and the parts each kind needs.

use std::time::Duration;

use super::super::plan::*;
use super::super::scenario::*;
use super::{check_sidecar_config, ident_ok};
use crate::chaos::proxy::toxic::{self, ToxicSpec};
use crate::config::strict::Checker;
use crate::config::Dur;

/// `<phase>` or `<phase>+<duration>` or `<phase>+<n>%`.
fn resolve_time(s: &str, phases: &[Phase]) -> Result<Duration, String> {
    let (name, offset) = match s.split_once('+') {
        Some((n, o)) => (n.trim(), Some(o.trim())),
        None => (s.trim(), None),
    };
    let phase = phases.iter().find(|p| p.name == name).ok_or_else(|| {
        let known: Vec<&str> = phases.iter().map(|p| p.name.as_str()).collect();
        format!("no phase named {name:?} (phases: {})", known.join(", "))
    })?;
    let off = match offset {
        None => Duration::ZERO,
        Some(o) if o.ends_with('%') => {
            let pct: f64 = o.trim_end_matches('%').trim().parse().map_err(|_| format!("{o:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(format!("{o:?}: between 0% and 100% of the phase"));
            }
            phase.duration.mul_f64(pct / 100.0)
        }
        Some(o) => Dur::parse(o)?.0,
    };
    Ok(phase.start + off)
}

pub(super) fn check_fault(
    c: &mut Checker,
    f: &RawFault,
    phases: &[Phase],
    target: &Target,
    length: Duration,
) -> Option<Fault> {
    if !ident_ok(&f.id) {
        c.error_at("id", "1 to 64 letters, digits, '-' or '_'");
    }
    let start = match resolve_time(&f.at, phases) {
        Ok(t) => t,
        Err(e) => {
            c.error_at("at", e);
            return None;
        }
    };
    if start >= length && !phases.is_empty() {
        c.error_at("at", "after the end of the load");
    }
    let end = match (&f.until, f.duration) {
        (Some(_), Some(_)) => {
            c.error_at("duration", "set until or duration, not both");
            None
        }
        (Some(u), None) => match resolve_time(u, phases) {
            Ok(t) if t > start => Some(t),
            Ok(_) => {
                c.error_at("until", "must be after `at`");
                None
            }
            Err(e) => {
                c.error_at("until", e);
                None
            }
        },
        (None, Some(d)) if d.0.is_zero() => {
            c.error_at("duration", "must be greater than 0");
            None
        }
        (None, Some(d)) => Some(start + d.0),
        (None, None) => None,
    };
    let when = f.when.as_ref().map(|w| When {
        grace_depth: w.grace_depth_at_least.max(1),
        timeout: w.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
    });
    let set = [f.sidecar.is_some(), f.proxy.is_some(), f.process.is_some(), f.sim.is_some(), f.reload.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        c.error("set exactly one of sidecar, proxy, process, sim, reload");
        return None;
    }
    let local = match target {
        Target::Local(l) => Some(l),
        Target::Remote(_) => None,
    };
    let remote = match target {
        Target::Remote(r) => Some(r),
        Target::Local(_) => None,
    };
    let action = if let Some(s) = &f.sidecar {
        let mut errors = Vec::new();
        crate::chaos::fault::check_kind(&s.fault, &mut errors);
        for e in errors {
            c.error_at("sidecar", e);
        }
        if end.is_none() {
            c.error_at("sidecar", "a sidecar fault needs `until` or `duration` (it becomes its ttl)");
        }
        Action::Sidecar(s.clone())
    } else if let Some(p) = &f.proxy {
        let known = local.map(|l| l.proxies.iter().any(|x| x.name == p.target)).unwrap_or(false)
            || remote.map(|r| r.proxies.contains_key(&p.target)).unwrap_or(false);
        if !known {
            c.key("proxy", |c| c.error_at("target", format!("no proxy named {:?}", p.target)));
        }
        if end.is_none() {
            c.error_at("proxy", "a proxy fault needs `until` or `duration` (it becomes its ttl)");
        }
        match (&p.toxic, p.partition) {
            (Some(t), false) => {
                let spec = ToxicSpec {
                    name: Some(f.id.clone()),
                    stream: p.stream.unwrap_or_default(),
                    toxicity: p.toxicity.unwrap_or(1.0),
                    toxic: t.clone(),
                    ttl: Dur(Duration::from_secs(1)),
                };
                if let Err(errors) = toxic::validate(&spec) {
                    for e in errors {
                        c.error_at("proxy", e);
                    }
                }
                Action::Proxy {
                    target: p.target.clone(),
                    toxic: Some(t.clone()),
                    stream: spec.stream,
                    toxicity: spec.toxicity,
                }
            }
            (None, true) => Action::Partition { target: p.target.clone() },
            _ => {
                c.error_at("proxy", "set either toxic or partition: true");
                return None;
            }
        }
    } else if let Some(p) = &f.process {
        let Some(l) = local else {
            c.error_at("process", "process faults need local mode (the runner owns the processes)");
            return None;
        };
        if p.target != "sidecar" && !l.sims.iter().any(|s| s.name == p.target) {
            c.key("process", |c| c.error_at("target", format!("{:?}: `sidecar` or a sim's name", p.target)));
        }
        let signal = match p.signal.to_ascii_uppercase().as_str() {
            "SIGKILL" | "KILL" => Signal::Kill,
            "SIGTERM" | "TERM" => Signal::Term,
            "SIGSTOP" | "STOP" => Signal::Stop,
            other => {
                c.key("process", |c| c.error_at("signal", format!("{other:?}: SIGKILL, SIGTERM or SIGSTOP")));
                Signal::Kill
            }
        };
        if signal == Signal::Stop && end.is_none() {
            c.error_at("process", "SIGSTOP needs `until` or `duration` (SIGCONT is sent then)");
        }
        Action::Process { target: p.target.clone(), signal, restart_after: p.restart_after.map(|d| d.0) }
    } else if let Some(s) = &f.sim {
        let known = local.map(|l| l.sims.iter().any(|x| x.name == s.target)).unwrap_or(false)
            || remote.map(|r| r.sims.contains_key(&s.target)).unwrap_or(false);
        if !known {
            c.key("sim", |c| c.error_at("target", format!("no sim named {:?}", s.target)));
        }
        Action::Sim { target: s.target.clone(), mode: s.mode.clone() }
    } else if let Some(r) = &f.reload {
        if let Some(l) = local {
            c.key("reload", |c| check_sidecar_config(c, "config", &r.config, &l.sims, &l.proxies));
        } else {
            c.error_at("reload", "config reloads need local mode (remote: reload through your own rollout)");
        }
        Action::Reload { config: r.config.clone() }
    } else {
        return None;
    };
    Some(Fault { id: f.id.clone(), start, end: end.map(|e| e.min(length.max(start))), when, action })
}
