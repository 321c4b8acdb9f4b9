//! Operator actions on one endpoint (admin API, bearer token required):
//! `POST /clusters/{cluster}/endpoints/{ip:port}/eject[?for=30s]` takes it out of service now,
//! `POST /clusters/{cluster}/endpoints/{ip:port}/reinstate` ends an ejection early (slow start
//! still applies). Envoy has no per-host manual uneject (envoy#6016); an operator who knows
//! better than the detectors should not have to wait out an ejection. An operator ejection
//! ignores the `max_ejected_percent` cap and is logged like any other decision.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use crate::app::AppState;
use crate::config::Dur;
use crate::proxy::body::ProxyBody;
use crate::proxy::respond::{json_error, json_response};
use crate::telemetry::names;

/// Serves an operator action (the caller already checked the token).
pub fn handle<B>(state: &AppState, req: &Request<B>) -> Response<ProxyBody> {
    let path = req.uri().path().trim_start_matches('/');
    let parts: Vec<&str> = path.split('/').collect();
    let ["clusters", name, "endpoints", addr, action] = parts.as_slice() else {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "use POST /clusters/{cluster}/endpoints/{ip:port}/eject or /reinstate",
        );
    };
    let rt = state.runtime.load();
    let Some(cluster) = rt.clusters.get(*name) else {
        return json_error(StatusCode::NOT_FOUND, "not_found", format!("no cluster named {name:?}"));
    };
    let endpoints = cluster.endpoints();
    let Some(e) = endpoints.iter().find(|e| &*e.key == *addr) else {
        let known: Vec<&str> = endpoints.iter().map(|e| &*e.key).collect();
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("cluster {name} has no endpoint {addr:?} (known: {})", known.join(", ")),
        );
    };
    let shared = cluster.shared();
    let now = Instant::now();
    match *action {
        "eject" => {
            let default = shared.config.policy.outlier.base_ejection;
            let duration = match req.uri().query().and_then(|q| q.strip_prefix("for=")) {
                None => default,
                Some(v) => match Dur::parse(v) {
                    Ok(Dur(d)) if !d.is_zero() && d <= Duration::from_secs(86_400) => d,
                    _ => {
                        return json_error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            format!("for={v}: expected a duration up to 24h, e.g. 30s"),
                        )
                    }
                },
            };
            {
                let mut h = e.state.health();
                h.ejections_total += 1;
                h.ramp_from = None;
                h.ejection = Some(super::endpoint::Ejection {
                    reason: "operator",
                    at: now,
                    until: now + duration,
                    evidence: json!({ "by": "operator", "duration_ms": duration.as_millis() as u64 }),
                });
            }
            metrics::counter!(names::EJECTIONS_TOTAL, "cluster" => shared.name.clone(), "reason" => "operator")
                .increment(1);
            shared.event(
                "ejected",
                Some(e),
                format!("ejected by an operator for {duration:?}"),
                json!({ "reason": "operator" }),
            );
        }
        "reinstate" => {
            let previous = {
                let mut h = e.state.health();
                let previous = h.ejection.take().map(|j| j.reason);
                if previous.is_some() {
                    h.ramp_from = Some(now);
                }
                previous
            };
            let Some(reason) = previous else {
                return json_error(StatusCode::CONFLICT, "not_ejected", format!("{addr} is not ejected"));
            };
            e.state.reset_consecutive();
            shared.event(
                "reinstated",
                Some(e),
                format!("reinstated by an operator (was ejected for {reason}); slow start applies"),
                json!({ "by": "operator", "ejection_reason": reason }),
            );
        }
        other => {
            return json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown action {other:?} (eject, reinstate)"),
            )
        }
    }
    shared.wake.notify_one();
    super::controller::publish(shared, now, true);
    json_response(StatusCode::OK, &json!({ "result": "ok", "endpoint": &*e.key, "action": action }))
}
