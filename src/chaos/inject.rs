//! The fault step of the request path: the innermost step, between endpoint choice and the
//! pooled client.
//!
//! Sitting innermost means every layer above (attempt timeout, balancer, outlier detection,
//! breaker, retry, grace, deadline) sees an injected fault exactly as it would see the real one:
//! an abort is an upstream status (`InjectedFault` with that status, which `classify` counts as
//! `Failure(Status)`), a reset is `UpstreamReset`, a refusal is `ConnectFailed` (not sent), a
//! blackhole is an attempt that never ends until a timeout above ends it, a delay is time spent
//! before the upstream answers. The endpoint's counters record the attempt as usual.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Response, StatusCode};
use rand::Rng;

use super::fault::FaultKind;
use super::registry::Faults;
use super::throttle::Throttled;
use crate::error::{ErrorKind, LifelineError};
use crate::proxy::body::{ProxyBody, ProxyRequest};
use crate::telemetry::names;
use crate::upstream::{Cluster, Endpoint, SendFailure};

/// What the faults decided for one attempt.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub delay: Duration,
    pub terminal: Option<(String, Terminal)>,
    pub bandwidth: Option<u64>,
}

/// How an attempt ends instead of reaching the upstream normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    Abort(StatusCode),
    Reset,
    ResetAfterSend,
    Refuse,
    Blackhole,
}

impl Faults {
    /// Draws the plan for one attempt. Delays add up; the first terminal fault wins; the lowest
    /// bandwidth wins.
    pub fn plan(&self, cluster: &str, route: Option<&str>, endpoint: &str) -> Plan {
        let mut plan = Plan::default();
        if self.is_empty() {
            return plan;
        }
        let now = tokio::time::Instant::now();
        let mut rng = rand::rng();
        for f in self.snapshot().iter() {
            if !f.live(now) || !f.targets(cluster, route, endpoint) {
                continue;
            }
            let bp = f.spec.percent.map(|p| p.basis_points()).unwrap_or(10_000);
            if bp < 10_000 && rng.random_range(0..10_000) >= bp {
                continue;
            }
            let terminal = match &f.spec.fault {
                FaultKind::Delay(d) => {
                    let z: f64 = rand_distr_normal(&mut rng);
                    plan.delay += d.sample(rng.random::<f64>(), z);
                    None
                }
                FaultKind::Abort { status } => {
                    Some(Terminal::Abort(StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)))
                }
                FaultKind::Reset => Some(Terminal::Reset),
                FaultKind::ResetAfterSend => Some(Terminal::ResetAfterSend),
                FaultKind::Refuse => Some(Terminal::Refuse),
                FaultKind::Blackhole => Some(Terminal::Blackhole),
                FaultKind::Bandwidth { rate } => {
                    plan.bandwidth = Some(plan.bandwidth.map_or(rate.0, |b| b.min(rate.0)));
                    None
                }
            };
            if terminal.is_some() && plan.terminal.is_some() {
                continue;
            }
            f.injected.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(names::FAULTS_INJECTED_TOTAL, "kind" => f.spec.fault.label()).increment(1);
            if let Some(t) = terminal {
                plan.terminal = Some((f.id.clone(), t));
            }
        }
        plan
    }
}

/// A standard normal draw (Box–Muller), enough for a latency tail.
fn rand_distr_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Sends `req` to `endpoint` through whatever faults apply to it. The caller
/// (`ClusterService::send`) comes here only while some fault is in force, and sends straight
/// to the cluster otherwise; a set emptied in between plans nothing, and the send goes through.
pub async fn send(
    faults: &Faults,
    cluster: &Cluster,
    route: Option<&str>,
    endpoint: &Endpoint,
    req: &mut ProxyRequest,
) -> Result<Response<ProxyBody>, SendFailure> {
    let plan = faults.plan(cluster.name(), route, &endpoint.config.address);
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    let fail = |kind: ErrorKind, id: &str, what: &str| {
        LifelineError::new(
            kind,
            format!("{} of cluster {}: {what} (injected fault {id})", endpoint.config.address, cluster.name()),
        )
        .with_cluster(cluster.name())
    };
    match plan.terminal {
        Some((id, Terminal::Abort(status))) => {
            Err(fail(ErrorKind::InjectedFault, &id, &format!("answered {status}")).with_status(status).boxed().into())
        }
        Some((id, Terminal::Reset)) => {
            Err(fail(ErrorKind::UpstreamReset, &id, "connection reset by peer").boxed().into())
        }
        Some((id, Terminal::Refuse)) => {
            // Like a real refusal: nothing was sent, so the request is whole.
            let error = fail(ErrorKind::ConnectFailed, &id, "connection refused").boxed();
            Err(SendFailure { error, unsent: true })
        }
        Some((_, Terminal::Blackhole)) => std::future::pending().await,
        Some((id, Terminal::ResetAfterSend)) => {
            // Let the upstream do the work, then lose its answer.
            if let Ok(resp) = cluster.send(endpoint, req).await {
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            }
            Err(fail(ErrorKind::UpstreamReset, &id, "connection reset by peer after the request was sent")
                .boxed()
                .into())
        }
        None => {
            let resp = cluster.send(endpoint, req).await?;
            Ok(match plan.bandwidth {
                Some(rate) => resp.map(|b| b.wrap(|b| Throttled::new(b, rate))),
                None => resp,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::fault::{DelaySpec, FaultSpec};
    use crate::config::{Dur, Percent, Size};

    fn spec(kind: FaultKind, percent: Option<u32>) -> FaultSpec {
        FaultSpec {
            id: None,
            cluster: "payment".into(),
            route: Some("settle".into()),
            endpoint: None,
            fault: kind,
            percent: percent.map(Percent::from_percent),
            ttl: Dur(Duration::from_secs(60)),
        }
    }

    #[tokio::test]
    async fn plan_combines_and_targets() {
        let f = Faults::default();
        f.add(spec(FaultKind::Delay(DelaySpec::Fixed(Dur(Duration::from_millis(30)))), None), 10).unwrap();
        f.add(spec(FaultKind::Delay(DelaySpec::Fixed(Dur(Duration::from_millis(20)))), None), 10).unwrap();
        f.add(spec(FaultKind::Abort { status: 503 }, None), 10).unwrap();
        f.add(spec(FaultKind::Reset, None), 10).unwrap();
        f.add(spec(FaultKind::Bandwidth { rate: Size(100) }, None), 10).unwrap();
        let p = f.plan("payment", Some("settle"), "a:1");
        assert_eq!(p.delay, Duration::from_millis(50));
        assert_eq!(p.terminal.map(|t| t.1), Some(Terminal::Abort(StatusCode::SERVICE_UNAVAILABLE)));
        assert_eq!(p.bandwidth, Some(100));
        assert_eq!(f.plan("payment", Some("other"), "a:1"), Plan::default());
        assert_eq!(f.plan("auth", Some("settle"), "a:1"), Plan::default());
    }

    #[tokio::test]
    async fn percent_is_a_share_of_attempts() {
        let f = Faults::default();
        f.add(spec(FaultKind::Reset, Some(25)), 10).unwrap();
        let hit = (0..4000).filter(|_| f.plan("payment", Some("settle"), "a:1").terminal.is_some()).count();
        assert!((700..1300).contains(&hit), "{hit} of 4000 at 25%");
        let zero = Faults::default();
        zero.add(spec(FaultKind::Reset, Some(0)), 10).unwrap();
        assert!((0..500).all(|_| zero.plan("payment", Some("settle"), "a:1").terminal.is_none()));
    }
}
