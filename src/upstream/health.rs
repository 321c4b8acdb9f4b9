//! Active health checks: one task per endpoint probes it over HTTP or TCP and moves its
//! [`Health`] through the HAProxy/Envoy state machine.
//!
//! An endpoint flips only after `healthy` / `unhealthy` consecutive results (pingora and HAProxy
//! `rise`/`fall`), except at startup, where one pass is enough (Envoy), and while it is
//! recovering (failback hold or slow-start ramp), where a single failure sends it back at once:
//! an endpoint on probation gets no benefit of the doubt. Between checks the task waits
//! `interval`, or `transition_interval` while the endpoint is changing state or ejected (HAProxy
//! `fastinter`), plus random jitter so a fleet of sidecars does not probe in lockstep.
//!
//! A passing check reinstates an endpoint ejected for gateway failures (it was unreachable and is
//! reachable again; it then serves the same failback hold as any recovery) but not one ejected
//! for 5xx: a health endpoint that answers 200 says nothing
//! about the errors real requests got (the surprise behind envoy#24217 and friends).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::json;
use tokio::time::Instant;

use super::config::{FailoverConfig, HealthCheckConfig, HealthProbe};
use super::endpoint::{ActiveState, CheckRecord, Endpoint, Health};
use super::Shared;
use crate::telemetry::names;

/// Largest health-check body read when `body_contains` is set.
const MAX_BODY: usize = 64 << 10;

/// A decision to log: (kind, message, evidence).
pub type Change = (&'static str, String, serde_json::Value);

/// Probes `endpoint` until the task is aborted.
pub async fn run(shared: Arc<Shared>, endpoint: Arc<Endpoint>, hc: HealthCheckConfig) {
    // Spread the first checks, unless traffic waits for them (`wait_first_check`).
    let first = if hc.start_healthy { hc.transition_interval.min(hc.interval) } else { Duration::ZERO };
    let mut wait = Duration::from_millis(rand::rng().random_range(0..=first.as_millis() as u64));
    let pass = metrics::counter!(names::HEALTH_CHECKS_TOTAL, "cluster" => shared.name.clone(), "result" => "pass");
    let fail = metrics::counter!(names::HEALTH_CHECKS_TOTAL, "cluster" => shared.name.clone(), "result" => "fail");
    loop {
        tokio::time::sleep(wait).await;
        let result = probe(endpoint.addr, &endpoint.config.address, &hc).await;
        if result.is_ok() { &pass } else { &fail }.increment(1);
        let now = Instant::now();
        let (changes, changing, first) = {
            let mut h = endpoint.state.health();
            let first = h.last_check.is_none();
            let changes = apply(&mut h, result, now, &hc, &shared.config.policy.failover);
            // HAProxy's `fastinter`: going down, coming up, unchecked, ejected or on probation.
            // A fully down endpoint is probed at the normal interval (`downinter`).
            let changing = match h.active {
                ActiveState::Unknown => true,
                ActiveState::Unhealthy => h.passes > 0,
                ActiveState::Healthy => h.fails > 0 || h.hold_until.is_some_and(|t| now < t),
            } || h.ejection.is_some();
            (changes, changing, first)
        };
        // The first check may be what the cluster's warm-up waits for (`wait_first_check`).
        let ring = first || !changes.is_empty();
        if !changes.is_empty() {
            for (kind, message, evidence) in changes {
                if kind == "reinstated" {
                    endpoint.state.reset_consecutive();
                    endpoint.state.window.reset();
                }
                shared.event(kind, Some(&endpoint), message, evidence);
            }
        }
        if ring {
            shared.wake.notify_one();
        }
        let base = if changing { hc.transition_interval } else { hc.interval };
        let jitter = (base.as_millis() as u64 * u64::from(hc.jitter.basis_points())) / 10_000;
        wait = base + Duration::from_millis(rand::rng().random_range(0..=jitter));
    }
}

/// Moves `h` by one check result; returns what changed.
pub fn apply(
    h: &mut Health,
    result: Result<String, String>,
    now: Instant,
    hc: &HealthCheckConfig,
    fo: &FailoverConfig,
) -> Vec<Change> {
    let passed = result.is_ok();
    let detail = match result {
        Ok(d) | Err(d) => d,
    };
    h.last_check = Some(CheckRecord { at: now, passed, detail: detail.clone() });
    let mut changes = Vec::new();
    if passed {
        h.passes = h.passes.saturating_add(1);
        h.fails = 0;
        match h.active {
            ActiveState::Unknown => {
                h.active = ActiveState::Healthy;
                changes.push(("health_changed", "first health check passed".into(), json!({ "check": detail })));
            }
            ActiveState::Unhealthy if h.passes >= hc.healthy => {
                h.active = ActiveState::Healthy;
                h.hold_until = Some(now + fo.failback_hold);
                h.ramp_from = Some(now + fo.failback_hold);
                changes.push((
                    "health_changed",
                    format!(
                        "healthy after {} passing checks; takes traffic after failback_hold {:?}, then ramps over {:?}",
                        h.passes, fo.failback_hold, fo.slow_start
                    ),
                    json!({ "passes": h.passes, "threshold": hc.healthy, "check": detail,
                            "failback_hold_ms": fo.failback_hold.as_millis() as u64,
                            "slow_start_ms": fo.slow_start.as_millis() as u64 }),
                ));
            }
            _ => {}
        }
        let reachable_again = h.ejection.as_ref().is_some_and(|e| e.reason == "consecutive_gateway_failures");
        if reachable_again && h.passes >= hc.healthy && h.active == ActiveState::Healthy {
            let reason = h.ejection.take().map(|e| e.reason).unwrap_or("");
            // Back from unreachable: the same failback hold and ramp as a recovery seen by checks.
            let hold_end = now + fo.failback_hold;
            h.hold_until = Some(h.hold_until.map_or(hold_end, |t| t.max(hold_end)));
            h.ramp_from = h.hold_until;
            changes.push((
                "reinstated",
                format!(
                    "{} consecutive active checks passed; the ejection ({reason}) ends early; takes traffic after \
                     failback_hold {:?}, then ramps over {:?}",
                    h.passes, fo.failback_hold, fo.slow_start
                ),
                json!({ "passes": h.passes, "threshold": hc.healthy, "ejection_reason": reason, "check": detail }),
            ));
        }
    } else {
        h.fails = h.fails.saturating_add(1);
        h.passes = 0;
        let recovering = h.hold_until.is_some_and(|t| now < t) || h.ramp_from.is_some_and(|r| now >= r);
        let down = match h.active {
            ActiveState::Healthy => h.fails >= hc.unhealthy || recovering,
            ActiveState::Unknown => h.fails >= hc.unhealthy,
            ActiveState::Unhealthy => false,
        };
        if down {
            let why = if h.fails >= hc.unhealthy {
                format!("unhealthy after {} failed checks", h.fails)
            } else {
                "a check failed while recovering (failback hold or slow start): back to unhealthy at once".into()
            };
            h.active = ActiveState::Unhealthy;
            h.hold_until = None;
            h.ramp_from = None;
            changes.push((
                "health_changed",
                why,
                json!({ "fails": h.fails, "threshold": hc.unhealthy, "recovering": recovering, "check": detail }),
            ));
        }
    }
    changes
}

/// One check. `Ok` carries a short description of the pass, `Err` of the failure.
pub async fn probe(addr: SocketAddr, address: &str, hc: &HealthCheckConfig) -> Result<String, String> {
    match tokio::time::timeout(hc.timeout, probe_inner(addr, address, &hc.probe)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", hc.timeout)),
    }
}

async fn probe_inner(addr: SocketAddr, address: &str, probe: &HealthProbe) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect failed: {e}"))?;
    let HealthProbe::Http { method, path, host, expected_statuses, body_contains } = probe else {
        return Ok("tcp connect succeeded".into());
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    let req = Request::builder()
        .method(method.as_str())
        .uri(path.as_str())
        .header(http::header::HOST, host.as_deref().unwrap_or(address))
        .header(http::header::USER_AGENT, "lifeline-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad health check request: {e}"))?;
    let work = async {
        let resp = sender.send_request(req).await.map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status().as_u16();
        if !expected_statuses.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status)) {
            return Err(format!("status {status} is not expected"));
        }
        let Some(needle) = body_contains else { return Ok(format!("status {status}")) };
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if String::from_utf8_lossy(&body).contains(needle.as_str()) {
            Ok(format!("status {status}, body contains {needle:?}"))
        } else {
            Err(format!("status {status}, body lacks {needle:?}"))
        }
    };
    tokio::pin!(conn);
    tokio::pin!(work);
    tokio::select! {
        biased;
        r = &mut work => r,
        c = &mut conn => match c {
            // The connection ended (it was told to close): the answer, if any, is already in.
            Ok(()) => work.await,
            Err(e) => Err(format!("connection: {e}")),
        },
    }
}
