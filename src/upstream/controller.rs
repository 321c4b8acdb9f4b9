//! The cluster's decision loop and its DNS follower: the only writers of the published plan and
//! endpoint list. Both run as owned, named tasks ([`super::Cluster::start`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::endpoint::Endpoint;
use super::failover::{self, Mode, Plan};
use super::{health, outlier, resolve, Shared};
use crate::telemetry::names;

/// Evaluation period while something moves on its own: a slow-start ramp (how coarse it is),
/// failures in an endpoint's `failure_percentage` window (how late the detection is), an
/// ejection held back by `max_ejected_percent`.
pub(super) const TICK: Duration = Duration::from_millis(100);
/// How often idle upstream connections past their `idle_timeout` are closed: the longest the
/// controller sleeps when nothing rings it.
const POOL_SWEEP: Duration = Duration::from_secs(1);

/// Runs until aborted.
///
/// Rung by what changes an endpoint's state (a health check's verdict, the request path
/// crossing a consecutive-failure threshold, an operator, DNS), it otherwise wakes when the next
/// known change is due ([`next_look`]): an ejection's or a failback hold's end, a decay. A calm
/// cluster costs one wake-up a second, not ten (an idle sidecar's CPU, on every pod).
pub async fn run(shared: Arc<Shared>) {
    let mut checkers: HashMap<Arc<str>, (Arc<Endpoint>, AbortOnDropHandle<()>)> = HashMap::new();
    let mut gauges: HashMap<Arc<str>, (bool, bool)> = HashMap::new();
    let mut next_sweep = Instant::now();
    let mut look_at = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(look_at) => {}
            () = shared.wake.notified() => {}
        }
        let endpoints = shared.endpoints.load_full();
        if let Some(hc) = &shared.config.policy.health_check {
            checkers.retain(|k, (e, _)| endpoints.iter().any(|n| n.key == *k && Arc::ptr_eq(n, e)));
            for e in endpoints.iter() {
                if !checkers.contains_key(&e.key) {
                    let span = tracing::info_span!("health_check", cluster = %shared.name, endpoint = %e.key);
                    let task = tokio::spawn(health::run(shared.clone(), e.clone(), hc.clone()).instrument(span));
                    checkers.insert(e.key.clone(), (e.clone(), AbortOnDropHandle::new(task)));
                }
            }
        }
        let now = Instant::now();
        if now >= next_sweep {
            next_sweep = crate::beat::next_after(now, POOL_SWEEP);
            for e in endpoints.iter() {
                e.pool.evict_idle();
            }
        }
        outlier::evaluate(&shared, &endpoints, now);
        publish(&shared, now, true);
        shared.check_warm(now);
        update_gauges(&shared, &endpoints, now, &mut gauges);
        look_at = next_look(&shared, &endpoints, now, next_sweep);
    }
}

/// When the controller must look again if nothing rings it first: the next pool sweep, an
/// ejection's, a hold's or a decay period's end, or [`TICK`] from `now` while something changes
/// continuously or is only seen by looking (a ramp; failures in a `failure_percentage` window,
/// which the path does not ring about; an ejection the cap held back).
pub fn next_look(shared: &Shared, endpoints: &[Arc<Endpoint>], now: Instant, sweep: Instant) -> Instant {
    let outlier = &shared.config.policy.outlier;
    let watch_rate = outlier.enabled && outlier.failure_percentage.is_some();
    let soon = now + TICK;
    let mut at = sweep;
    for e in endpoints {
        let h = e.state.health();
        let due = [h.ejection.as_ref().map(|j| j.until), h.hold_until, h.decay_due, h.ramp_from];
        for t in due.into_iter().flatten().filter(|t| *t > now) {
            at = at.min(t);
        }
        // Unusable (ejected, unhealthy) it stays at zero until a deadline above or a ring.
        let ramping = h.ramp_from.is_some_and(|from| from <= now)
            && h.ejection.is_none()
            && h.active == super::endpoint::ActiveState::Healthy;
        if ramping || h.skip_logged || (watch_rate && e.state.window.totals().1 > 0) {
            at = at.min(soon);
        }
    }
    at.max(now)
}

/// Computes the plan from the endpoints' current state and publishes it if it changed,
/// logging failover, failback, spill, panic and recovery.
pub fn publish(shared: &Shared, now: Instant, log: bool) {
    let _one_at_a_time = shared.publishing.lock().unwrap_or_else(|p| p.into_inner());
    let endpoints = shared.endpoints.load_full();
    let slow_start = shared.config.policy.failover.slow_start;
    let mut ramped = Vec::new();
    let fractions: Vec<(Arc<Endpoint>, f64)> = endpoints
        .iter()
        .map(|e| {
            let mut h = e.state.health();
            let f = h.fraction(now, slow_start);
            if f >= 1.0 && h.ramp_from.is_some() {
                h.ramp_from = None;
                h.hold_until = None;
                ramped.push(e.clone());
            }
            (e.clone(), f)
        })
        .collect();
    for e in &ramped {
        if log {
            shared.event("ramp_complete", Some(e), "slow start finished: full weight".into(), json!({}));
        }
    }
    let plan = failover::compute(&fractions, &shared.config.policy.failover);
    let old = shared.plan.load_full();
    if plan.same_as(&old) {
        return;
    }
    if log {
        log_transition(shared, &old, &plan, &fractions, now);
    }
    let active = plan.active_priority.map(f64::from).unwrap_or(-1.0);
    metrics::gauge!(names::FAILOVER_PRIORITY, "cluster" => shared.name.clone()).set(active);
    for (p, share) in &plan.shares {
        metrics::gauge!(names::PRIORITY_SHARE, "cluster" => shared.name.clone(), "priority" => p.to_string())
            .set(f64::from(*share) / f64::from(failover::FULL));
    }
    shared.plan.store(Arc::new(plan));
}

fn log_transition(shared: &Shared, old: &Plan, new: &Plan, fractions: &[(Arc<Endpoint>, f64)], now: Instant) {
    let taking = |p: &Plan| p.shares.iter().filter(|(_, s)| *s > 0).map(|(p, _)| *p).collect::<Vec<_>>();
    let evidence = || {
        let endpoints: Vec<_> = fractions
            .iter()
            .map(|(e, f)| {
                let h = e.state.health();
                json!({ "endpoint": &*e.key, "priority": e.priority(), "health": h.label(now),
                        "ejected": h.ejection.as_ref().map(|j| j.reason), "usable_fraction": f })
            })
            .collect();
        json!({ "shares_before": shares_json(old), "shares_after": shares_json(new), "endpoints": endpoints })
    };
    let (kind, message) = match (old.mode, new.mode) {
        (a, b) if a == b && a != Mode::Normal => return,
        (_, Mode::FailFast) => {
            ("fail_fast", "no endpoint of any priority is usable: requests fail fast with no_healthy_endpoint".into())
        }
        (_, Mode::Panic) => ("panic", "no endpoint of any priority is usable: panic mode spreads over all".into()),
        (Mode::FailFast | Mode::Panic, Mode::Normal) => {
            ("recovered", format!("usable endpoints again; priorities taking traffic: {:?}", taking(new)))
        }
        (Mode::Normal, Mode::Normal) => {
            if taking(old) == taking(new) {
                return;
            }
            match (old.active_priority, new.active_priority) {
                (Some(a), Some(b)) if b > a => {
                    ("failover", format!("priority {a} has no usable endpoint; traffic moves to priority {b}"))
                }
                (Some(a), Some(b)) if b < a => {
                    ("failback", format!("priority {b} takes traffic again (from priority {a}), ramping up"))
                }
                _ => ("spill_changed", format!("priorities taking traffic: {:?} -> {:?}", taking(old), taking(new))),
            }
        }
    };
    if matches!(kind, "failover" | "failback") {
        metrics::counter!(names::FAILOVERS_TOTAL, "cluster" => shared.name.clone(), "direction" => kind).increment(1);
    }
    shared.event(kind, None, message, evidence());
}

fn shares_json(p: &Plan) -> serde_json::Value {
    p.shares.iter().map(|(prio, s)| json!({ "priority": prio, "share_percent": f64::from(*s) / 100.0 })).collect()
}

fn update_gauges(
    shared: &Shared,
    endpoints: &[Arc<Endpoint>],
    now: Instant,
    seen: &mut HashMap<Arc<str>, (bool, bool)>,
) {
    for e in endpoints {
        let (healthy, ejected) = {
            let h = e.state.health();
            (h.label(now) == "healthy", h.ejection.is_some())
        };
        if seen.get(&e.key) != Some(&(healthy, ejected)) {
            seen.insert(e.key.clone(), (healthy, ejected));
            let labels = [("cluster", shared.name.clone()), ("endpoint", e.key.to_string())];
            metrics::gauge!(names::ENDPOINT_HEALTHY, &labels).set(if healthy { 1.0 } else { 0.0 });
            metrics::gauge!(names::ENDPOINT_EJECTED, &labels).set(if ejected { 1.0 } else { 0.0 });
        }
    }
}

/// Re-resolves DNS names every `dns_refresh` and republishes the endpoint list when the records
/// change. A failed lookup keeps the last records.
pub async fn resolve_loop(shared: Arc<Shared>) {
    let timeout = shared.config.connect_timeout.max(Duration::from_secs(2));
    let mut failing: BTreeSet<String> = BTreeSet::new();
    loop {
        let current = shared.endpoints.load_full();
        let mut list: Vec<Arc<Endpoint>> = Vec::new();
        for ec in &shared.config.endpoints {
            let addrs: Vec<std::net::SocketAddr> = match resolve::dns_name(&ec.address) {
                None => ec.address.parse().into_iter().collect(),
                Some((host, port)) => match resolve::lookup(shared.resolver.as_ref(), &host, port, timeout).await {
                    Ok(addrs) => {
                        failing.remove(&ec.address);
                        addrs.into_iter().collect()
                    }
                    Err(error) => {
                        if failing.insert(ec.address.clone()) {
                            tracing::warn!(cluster = %shared.name, %error, "DNS lookup failed; keeping the last records");
                        }
                        current.iter().filter(|e| e.config.address == ec.address).map(|e| e.addr).collect()
                    }
                },
            };
            for addr in addrs {
                if !list.iter().any(|e| e.addr == addr) {
                    list.push(shared.endpoint(ec, addr, &current));
                }
            }
        }
        let before: BTreeSet<&str> = current.iter().map(|e| &*e.key).collect();
        let after: BTreeSet<&str> = list.iter().map(|e| &*e.key).collect();
        if before != after {
            let added: Vec<&str> = after.difference(&before).copied().collect();
            let removed: Vec<&str> = before.difference(&after).copied().collect();
            shared.event(
                "dns_changed",
                None,
                format!("DNS records changed: +{added:?} -{removed:?}"),
                json!({ "added": added, "removed": removed }),
            );
            shared.endpoints.store(Arc::new(list));
            publish(&shared, Instant::now(), true);
            shared.wake.notify_one();
        }
        shared.resolved.store(true, std::sync::atomic::Ordering::SeqCst);
        shared.check_warm(Instant::now());
        tokio::time::sleep(shared.config.policy.dns_refresh).await;
    }
}
