//! What the admin API shows about clusters: `GET /clusters` (state of every endpoint and the
//! traffic split) and `GET /clusters/events` (the decision log; `?cluster=`, `?since=`, `?limit=`).

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::{Request, Response, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use super::events::unix_ms;
use super::Cluster;
use crate::app::AppState;
use crate::proxy::body::ProxyBody;
use crate::proxy::respond::{json_error, json_response};

/// An instant as wall-clock milliseconds since the epoch.
fn wall(at: Instant, now: Instant) -> u64 {
    let wall_now = SystemTime::now();
    let t = if at >= now { wall_now + (at - now) } else { wall_now - (now - at) };
    unix_ms(t)
}

/// The JSON of one cluster for `GET /clusters`.
pub fn snapshot(cluster: &Cluster) -> serde_json::Value {
    let now = Instant::now();
    let shared = cluster.shared();
    let plan = shared.plan.load();
    let policy = &cluster.config.policy;
    let endpoints: Vec<serde_json::Value> = shared
        .endpoints
        .load()
        .iter()
        .map(|e| {
            let s = &e.state;
            let h = s.health();
            let fraction = h.fraction(now, policy.failover.slow_start);
            let effective = (fraction > 0.0).then(|| f64::from(e.config.weight) * fraction.max(0.1));
            json!({
                "address": &*e.key,
                "configured_as": e.config.address,
                "priority": e.priority(),
                "weight": e.config.weight,
                "effective_weight": effective,
                "health": h.label(now),
                "usable_fraction": fraction,
                "hold_until_unix_ms": h.hold_until.filter(|t| *t > now).map(|t| wall(t, now)),
                "last_check": h.last_check.as_ref().map(|c| json!({
                    "passed": c.passed, "detail": c.detail, "at_unix_ms": wall(c.at, now),
                })),
                "ejection": h.ejection.as_ref().map(|j| json!({
                    "reason": j.reason,
                    "since_unix_ms": wall(j.at, now),
                    "until_unix_ms": wall(j.until, now),
                    "remaining_ms": j.until.saturating_duration_since(now).as_millis() as u64,
                    "evidence": j.evidence,
                })),
                "ejection_multiplier": h.ejection_multiplier,
                "ejections_total": h.ejections_total,
                "in_flight": s.stats.in_flight(),
                "requests": s.stats.requests(),
                "failures": s.stats.failures(),
                "consecutive_failures": s.consecutive_5xx.load(Ordering::Relaxed),
                "recent_success_rate": s.window.success_rate(),
            })
        })
        .collect();
    let priorities: Vec<serde_json::Value> = plan
        .shares
        .iter()
        .map(|(p, share)| json!({ "priority": p, "share_percent": f64::from(*share) / 100.0 }))
        .collect();
    json!({
        "name": cluster.config.name,
        "load_balancer": policy.load_balancer,
        "mode": plan.mode,
        "active_priority": plan.active_priority,
        "priorities": priorities,
        "endpoints": endpoints,
    })
}

/// `GET /clusters/events`.
pub fn events<B>(state: &AppState, req: &Request<B>) -> Response<ProxyBody> {
    let mut cluster = None;
    let mut since = 0u64;
    let mut limit = 200usize;
    for pair in req.uri().query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bad =
            |what: &str| json_error(StatusCode::BAD_REQUEST, "bad_request", format!("query parameter {k}: {what}"));
        match k {
            "cluster" => cluster = Some(v.to_string()),
            "since" => match v.parse() {
                Ok(n) => since = n,
                Err(_) => return bad("must be an event sequence number"),
            },
            "limit" => match v.parse::<usize>() {
                Ok(n) if n > 0 => limit = n.min(super::events::CAPACITY),
                _ => return bad("must be a positive number"),
            },
            _ => return bad("unknown (use cluster, since, limit)"),
        }
    }
    let rt = state.runtime.load();
    if let Some(name) = &cluster {
        if !rt.clusters.contains_key(name) {
            let known: Vec<&str> = rt.clusters.keys().map(String::as_str).collect();
            return json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no cluster named {name:?} (known: {})", known.join(", ")),
            );
        }
    }
    let mut all: Vec<super::events::Event> = rt
        .clusters
        .iter()
        .filter(|(n, _)| cluster.as_ref().is_none_or(|c| c == *n))
        .flat_map(|(_, c)| c.events().since(since))
        .collect();
    all.sort_by_key(|e| (e.at_unix_ms, e.seq));
    let skip = all.len().saturating_sub(limit);
    json_response(StatusCode::OK, &json!({ "events": &all[skip..] }))
}
