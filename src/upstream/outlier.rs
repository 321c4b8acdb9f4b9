//! Passive outlier detection: eject endpoints on what real requests experienced.
//!
//! The request path only counts ([`super::endpoint::Endpoint::record`]); the controller calls
//! [`evaluate`] on every tick and whenever the path reports a crossed threshold. Three detectors
//! (Envoy's, research 1B): consecutive failures (`consecutive_5xx`), consecutive gateway
//! failures (connect, reset, timeout, 502-504), and failure percentage over a window with a
//! minimum volume. An ejection lasts `base_ejection × n` for the n-th ejection, capped at
//! `max_ejection`, plus random jitter; at most `max_ejected_percent` of the cluster is ejected
//! at once (at least one when the cap is above 0%; at 0% detections are logged, not enforced:
//! shadow mode), and never the last usable endpoint: ejection exists to steer traffic elsewhere;
//! failing a whole cluster fast is the breaker's decision (Envoy reaches the same end through
//! its panic threshold). The multiplier decays by one per `base_ejection` in service *with successful
//! requests* — evidence of health, not mere time (the flaw reported in envoy#21142).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tokio::time::Instant;

use super::config::OutlierConfig;
use super::endpoint::{Ejection, Endpoint, Health};
use super::failover::FULL;
use super::Shared;
use crate::telemetry::names;

/// One detection: reason and evidence.
type Detection = (&'static str, serde_json::Value);

/// Reinstates expired ejections, decays multipliers, and ejects new outliers.
pub fn evaluate(shared: &Shared, endpoints: &[Arc<Endpoint>], now: Instant) {
    let cfg = &shared.config.policy.outlier;
    for e in endpoints {
        let expired = {
            let mut h = e.state.health();
            decay(&mut h, e, cfg, now);
            match &h.ejection {
                Some(ej) if ej.until <= now => {
                    let reason = ej.reason;
                    h.ejection = None;
                    h.ramp_from = Some(now);
                    h.decay_due = Some(now + cfg.base_ejection);
                    h.decay_mark = e.state.stats.successes();
                    Some(reason)
                }
                _ => None,
            }
        };
        if let Some(reason) = expired {
            e.state.reset_consecutive();
            e.state.window.reset();
            shared.event(
                "reinstated",
                Some(e),
                format!("ejection time elapsed; back in service with slow start ({reason})"),
                json!({ "ejection_reason": reason }),
            );
        }
    }
    if !cfg.enabled {
        return;
    }
    let mut ejected = endpoints.iter().filter(|e| e.state.health().ejection.is_some()).count();
    let allowed = max_ejected(endpoints.len(), cfg.max_ejected_percent.basis_points());
    for e in endpoints {
        if e.state.health().ejection.is_some() {
            continue;
        }
        let Some((reason, evidence)) = detect(e, cfg) else {
            // The streak is over: a new one may be logged again.
            e.state.health().skip_logged = false;
            continue;
        };
        // Ejection steers traffic to other endpoints; with none left it would only fail every
        // request, which is the breaker's decision (and grace's cue), not the balancer's.
        let slow_start = shared.config.policy.failover.slow_start;
        let others_usable =
            endpoints.iter().filter(|o| !Arc::ptr_eq(o, e)).any(|o| o.state.health().fraction(now, slow_start) > 0.0);
        if ejected >= allowed || !others_usable {
            let mut h = e.state.health();
            if !h.skip_logged {
                h.skip_logged = true;
                drop(h);
                shared.event(
                    "ejection_skipped",
                    Some(e),
                    if others_usable {
                        format!(
                            "{reason} detected, but {ejected} of {} endpoints are already ejected (max_ejected_percent {})",
                            endpoints.len(),
                            cfg.max_ejected_percent
                        )
                    } else {
                        format!("{reason} detected, but no other endpoint is usable: not ejected")
                    },
                    json!({ "reason": reason, "evidence": evidence, "ejected": ejected, "allowed": allowed,
                            "others_usable": others_usable }),
                );
            }
            continue;
        }
        let (until, multiplier) = {
            let mut h = e.state.health();
            eject(&mut h, reason, evidence.clone(), cfg, now)
        };
        ejected += 1;
        e.state.reset_consecutive();
        metrics::counter!(names::EJECTIONS_TOTAL, "cluster" => shared.name.clone(), "reason" => reason).increment(1);
        shared.event(
            "ejected",
            Some(e),
            format!("ejected for {:?} ({reason}, ejection #{multiplier})", until - now),
            json!({ "reason": reason, "evidence": evidence, "multiplier": multiplier,
                    "duration_ms": (until - now).as_millis() as u64 }),
        );
    }
}

/// How many of `n` endpoints may be ejected at once.
pub fn max_ejected(n: usize, basis_points: u32) -> usize {
    if basis_points == 0 {
        return 0;
    }
    ((n as u64 * u64::from(basis_points)) / u64::from(FULL)).max(1) as usize
}

fn detect(e: &Endpoint, cfg: &OutlierConfig) -> Option<Detection> {
    let s = &e.state;
    let c5 = s.consecutive_5xx.load(Ordering::Relaxed);
    let cg = s.consecutive_gateway.load(Ordering::Relaxed);
    if cfg.consecutive_gateway_failures > 0 && cg >= cfg.consecutive_gateway_failures {
        return Some((
            "consecutive_gateway_failures",
            json!({ "consecutive": cg, "threshold": cfg.consecutive_gateway_failures }),
        ));
    }
    if cfg.consecutive_5xx > 0 && c5 >= cfg.consecutive_5xx {
        return Some(("consecutive_5xx", json!({ "consecutive": c5, "threshold": cfg.consecutive_5xx })));
    }
    s.suspect.store(false, Ordering::Relaxed);
    let pct = cfg.failure_percentage?;
    let (ok, fail) = s.window.totals();
    let total = ok + fail;
    if total >= u64::from(cfg.failure_min_requests) && fail * u64::from(FULL) >= u64::from(pct.basis_points()) * total {
        return Some((
            "failure_percentage",
            json!({ "failures": fail, "requests": total, "threshold": pct.to_string(),
                    "window_ms": cfg.failure_window.as_millis() as u64 }),
        ));
    }
    None
}

/// Ejects: returns (until, multiplier).
pub fn eject(
    h: &mut Health,
    reason: &'static str,
    evidence: serde_json::Value,
    cfg: &OutlierConfig,
    now: Instant,
) -> (Instant, u32) {
    h.ejection_multiplier = h.ejection_multiplier.saturating_add(1);
    h.ejections_total += 1;
    h.passes = 0;
    h.ramp_from = None;
    h.skip_logged = false;
    let base = cfg.base_ejection.saturating_mul(h.ejection_multiplier).min(cfg.max_ejection.max(cfg.base_ejection));
    let jitter_ms = cfg.ejection_jitter.as_millis() as u64;
    let jitter = Duration::from_millis(if jitter_ms > 0 { rand::rng().random_range(0..=jitter_ms) } else { 0 });
    let until = now + base + jitter;
    h.ejection = Some(Ejection { reason, at: now, until, evidence });
    (until, h.ejection_multiplier)
}

/// Evidence-based decay of the ejection multiplier.
fn decay(h: &mut Health, e: &Endpoint, cfg: &OutlierConfig, now: Instant) {
    if h.ejection.is_some() || h.ejection_multiplier == 0 {
        return;
    }
    let Some(due) = h.decay_due else { return };
    if now < due {
        return;
    }
    let successes = e.state.stats.successes();
    if successes > h.decay_mark {
        h.ejection_multiplier -= 1;
    }
    h.decay_mark = successes;
    h.decay_due = (h.ejection_multiplier > 0).then(|| now + cfg.base_ejection);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_cap() {
        assert_eq!(max_ejected(3, 5_000), 1);
        assert_eq!(max_ejected(2, 5_000), 1);
        assert_eq!(max_ejected(10, 1_000), 1);
        assert_eq!(max_ejected(3, 1_000), 1, "always at least one");
        assert_eq!(max_ejected(3, 0), 0, "0% is shadow mode");
        assert_eq!(max_ejected(4, 10_000), 4);
    }
}
