//! What the admin API shows about clusters: `GET /clusters` (state of every endpoint and the
//! traffic split) and `GET /clusters/events` (the decision log; `?cluster=`, `?since=`, `?limit=`).

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use super::events::unix_ms;
use super::Cluster;
use crate::app::AppState;
use crate::proxy::body::ProxyBody;
use crate::proxy::respond::{json_error, json_response};

/// An instant and the wall clock read with it: what instants are rendered against.
type Anchor = (Instant, SystemTime);

/// The anchor every answer renders its instants against. Kept while the wall clock keeps step
/// with the monotonic one, so the same instant reads the same millisecond in every answer (an
/// anchor read per answer, microseconds apart, rounded an ejection's end to neighbouring
/// milliseconds from one read to the next). A wall clock stepped by more than [`STEP`] (NTP,
/// an operator) takes a new one.
static ANCHOR: Mutex<Option<Anchor>> = Mutex::new(None);
const STEP: Duration = Duration::from_millis(50);

/// `kept` if the wall clock has kept step with it by `now`, else a new anchor.
fn rebase(kept: Option<Anchor>, now: Instant, wall_now: SystemTime) -> Anchor {
    if let Some((at, wall)) = kept.filter(|(at, _)| now >= *at) {
        let drift = match (wall + (now - at)).duration_since(wall_now) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        };
        if drift <= STEP {
            return (at, wall);
        }
    }
    (now, wall_now)
}

/// The anchor for an answer rendered now.
fn anchor() -> Anchor {
    let mut kept = ANCHOR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let a = rebase(*kept, Instant::now(), SystemTime::now());
    *kept = Some(a);
    a
}

/// An instant as wall-clock milliseconds since the epoch.
fn wall(at: Instant, (base, base_wall): Anchor) -> u64 {
    let t = if at >= base { base_wall + (at - base) } else { base_wall - (base - at) };
    unix_ms(t)
}

/// The JSON of one cluster for `GET /clusters`.
pub fn snapshot(cluster: &Cluster) -> serde_json::Value {
    let now = Instant::now();
    let base = anchor();
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
                "hold_until_unix_ms": h.hold_until.filter(|t| *t > now).map(|t| wall(t, base)),
                "last_check": h.last_check.as_ref().map(|c| json!({
                    "passed": c.passed, "detail": c.detail, "at_unix_ms": wall(c.at, base),
                })),
                "ejection": h.ejection.as_ref().map(|j| json!({
                    "reason": j.reason,
                    "since_unix_ms": wall(j.at, base),
                    "until_unix_ms": wall(j.until, base),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_instant_reads_the_same_millisecond_until_the_wall_clock_is_stepped() {
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_999_500);
        let first = rebase(None, t0, w0);
        assert_eq!(first, (t0, w0));
        let ejected_until = t0 + Duration::from_secs(10);
        // Read again 2 s later, the wall clock 900 ns further on than the monotonic one (a
        // fresh anchor would round the same instant to the next millisecond).
        let t1 = t0 + Duration::from_secs(2);
        let fresh = (t1, w0 + Duration::from_secs(2) + Duration::from_nanos(900));
        assert_eq!(wall(ejected_until, fresh), 1_700_000_010_124);
        let later = rebase(Some(first), fresh.0, fresh.1);
        assert_eq!(later, first, "in step: the anchor is kept");
        assert_eq!(wall(ejected_until, later), wall(ejected_until, first));
        assert_eq!(wall(ejected_until, first), 1_700_000_010_123);
        assert_eq!(wall(t0 - Duration::from_millis(500), first), 1_699_999_999_623, "an instant before the anchor");
        // Stepped back by a minute (NTP): a new anchor, and the instant follows the wall clock.
        let stepped = rebase(Some(first), t1, w0 + Duration::from_secs(2) - Duration::from_secs(60));
        assert_eq!(stepped.0, t1);
        assert_eq!(wall(ejected_until, stepped), 1_699_999_950_123);
        // Stepped forward by more than STEP: the same.
        let ahead = w0 + Duration::from_secs(2) + STEP + Duration::from_millis(1);
        assert_eq!(rebase(Some(first), t1, ahead), (t1, ahead));
    }
}
