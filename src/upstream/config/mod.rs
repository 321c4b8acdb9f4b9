//! Validated upstream policy of a cluster: health checks, outlier detection, failover and load
//! balancing. Built once at config load by [`check`] from the raw keys in [`raw`]; the types here
//! cannot hold an invalid value, so the background tasks and the balancer never re-check.

pub mod raw;

use std::time::Duration;

use serde::Serialize;

use crate::config::raw::RawCluster;
use crate::config::Checker;
use crate::config::{Dur, Percent};
use raw::{RawFailover, RawHealthCheck, RawOutlier, RawStatus};

/// Everything `src/upstream` needs to know about one cluster beyond its endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamPolicy {
    pub health_check: Option<HealthCheckConfig>,
    pub outlier: OutlierConfig,
    pub failover: FailoverConfig,
    pub load_balancer: LoadBalancer,
    #[serde(serialize_with = "ser_dur")]
    pub dns_refresh: Duration,
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        UpstreamPolicy {
            health_check: None,
            outlier: OutlierConfig::default(),
            failover: FailoverConfig::default(),
            load_balancer: LoadBalancer::LeastRequest,
            dns_refresh: Duration::from_secs(5),
        }
    }
}

/// Endpoint choice inside one priority. Both honour endpoint weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// Power of two choices on least outstanding requests (Mitzenmacher; Envoy LEAST_REQUEST).
    LeastRequest,
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "protocol", rename_all = "snake_case")]
pub enum HealthProbe {
    Http {
        method: String,
        path: String,
        host: Option<String>,
        /// Inclusive ranges of passing statuses.
        expected_statuses: Vec<(u16, u16)>,
        body_contains: Option<String>,
        /// Checks share one connection while they pass.
        reuse_connection: bool,
    },
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheckConfig {
    pub probe: HealthProbe,
    #[serde(serialize_with = "ser_dur")]
    pub interval: Duration,
    pub jitter: Percent,
    #[serde(serialize_with = "ser_dur")]
    pub transition_interval: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
    /// True: endpoints take traffic before their first check.
    pub start_healthy: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierConfig {
    pub enabled: bool,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failures: u32,
    pub failure_percentage: Option<Percent>,
    #[serde(serialize_with = "ser_dur")]
    pub failure_window: Duration,
    pub failure_min_requests: u32,
    #[serde(serialize_with = "ser_dur")]
    pub base_ejection: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub max_ejection: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub ejection_jitter: Duration,
    pub max_ejected_percent: Percent,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            enabled: true,
            consecutive_5xx: 5,
            consecutive_gateway_failures: 3,
            failure_percentage: None,
            failure_window: Duration::from_secs(10),
            failure_min_requests: 20,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            ejection_jitter: Duration::from_secs(1),
            max_ejected_percent: Percent::from_percent(50),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailoverConfig {
    pub overprovisioning: f64,
    pub panic: bool,
    #[serde(serialize_with = "ser_dur")]
    pub failback_hold: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub slow_start: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            overprovisioning: 1.4,
            panic: false,
            failback_hold: Duration::from_secs(10),
            slow_start: Duration::from_secs(30),
        }
    }
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    Dur(*d).serialize(s)
}

/// Validates the upstream keys of one cluster (called with the checker at `clusters.<name>`).
pub(crate) fn check(c: &mut Checker, rc: &RawCluster) -> UpstreamPolicy {
    let defaults = UpstreamPolicy::default();
    let load_balancer = match rc.load_balancer.as_deref() {
        None | Some("least_request") => LoadBalancer::LeastRequest,
        Some("round_robin") => LoadBalancer::RoundRobin,
        Some(other) => {
            c.error_at("load_balancer", format!("{other:?} is not a load balancer (least_request, round_robin)"));
            LoadBalancer::LeastRequest
        }
    };
    let dns_refresh = positive(c, "dns_refresh", rc.dns_refresh, defaults.dns_refresh);
    let health_check = rc.health_check.as_ref().map(|h| c.key("health_check", |c| check_health(c, h)));
    let outlier = match &rc.outlier {
        Some(o) => c.key("outlier", |c| check_outlier(c, o)),
        None => OutlierConfig::default(),
    };
    let failover = match &rc.failover {
        Some(f) => c.key("failover", |c| check_failover(c, f)),
        None => FailoverConfig::default(),
    };
    UpstreamPolicy { health_check, outlier, failover, load_balancer, dns_refresh }
}

fn positive(c: &mut Checker, key: &str, d: Option<Dur>, default: Duration) -> Duration {
    match d {
        Some(Dur(d)) if d.is_zero() => {
            c.error_at(key, "must be greater than 0");
            default
        }
        Some(Dur(d)) => d,
        None => default,
    }
}

fn check_health(c: &mut Checker, h: &RawHealthCheck) -> HealthCheckConfig {
    let probe = match h.protocol.as_deref() {
        None | Some("http") => HealthProbe::Http {
            method: check_method(c, h.method.as_deref()),
            path: match &h.path {
                Some(p) if !p.starts_with('/') => {
                    c.error_at("path", format!("{p:?} must start with '/'"));
                    "/".into()
                }
                Some(p) => p.clone(),
                None => "/healthz".into(),
            },
            host: h.host.clone(),
            expected_statuses: check_statuses(c, h.expected_statuses.as_deref()),
            body_contains: h.body_contains.clone(),
            reuse_connection: h.reuse_connection.unwrap_or(true),
        },
        Some("tcp") => {
            for (key, set) in [
                ("method", h.method.is_some()),
                ("path", h.path.is_some()),
                ("host", h.host.is_some()),
                ("expected_statuses", h.expected_statuses.is_some()),
                ("body_contains", h.body_contains.is_some()),
                ("reuse_connection", h.reuse_connection.is_some()),
            ] {
                if set {
                    c.error_at(key, "only applies to protocol: http");
                }
            }
            HealthProbe::Tcp
        }
        Some(other) => {
            c.error_at("protocol", format!("{other:?} is not a health check protocol (http, tcp)"));
            HealthProbe::Tcp
        }
    };
    let interval = positive(c, "interval", h.interval, Duration::from_secs(2));
    let transition_interval = positive(c, "transition_interval", h.transition_interval, interval / 4);
    let timeout = positive(c, "timeout", h.timeout, Duration::from_secs(1));
    let mut threshold = |key: &str, v: Option<u32>, default: u32| match v {
        Some(0) => {
            c.error_at(key, "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    let healthy = threshold("healthy", h.healthy, 2);
    let unhealthy = threshold("unhealthy", h.unhealthy, 3);
    let start_healthy = match h.startup.as_deref() {
        None | Some("healthy") => true,
        Some("wait_first_check") => false,
        Some(other) => {
            c.error_at("startup", format!("{other:?} is not a startup state (healthy, wait_first_check)"));
            true
        }
    };
    HealthCheckConfig {
        probe,
        interval,
        jitter: h.jitter.unwrap_or(Percent::from_percent(10)),
        transition_interval,
        timeout,
        healthy,
        unhealthy,
        start_healthy,
    }
}

fn check_method(c: &mut Checker, m: Option<&str>) -> String {
    let m = m.unwrap_or("GET").to_ascii_uppercase();
    if http::Method::from_bytes(m.as_bytes()).is_err() {
        c.error_at("method", format!("{m:?} is not an HTTP method"));
    }
    m
}

fn check_statuses(c: &mut Checker, raw: Option<&[RawStatus]>) -> Vec<(u16, u16)> {
    let Some(raw) = raw else { return vec![(200, 299)] };
    if raw.is_empty() {
        c.error_at("expected_statuses", "list at least one status or range");
    }
    let mut out = Vec::new();
    for s in raw {
        let parsed = match s {
            RawStatus::Code(n) => Some((*n, *n)),
            RawStatus::Range(r) => match r.split_once('-') {
                Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                None => r.trim().parse().ok().map(|n| (n, n)),
            },
        };
        match parsed {
            Some((a, b)) if (100..=599).contains(&a) && (100..=599).contains(&b) && a <= b => out.push((a, b)),
            _ => {
                c.error_at("expected_statuses", format!("{s:?} is not a status (100-599) or a range like \"200-299\""))
            }
        }
    }
    out
}

fn check_outlier(c: &mut Checker, o: &RawOutlier) -> OutlierConfig {
    let d = OutlierConfig::default();
    let base_ejection = positive(c, "base_ejection", o.base_ejection, d.base_ejection);
    let max_ejection = positive(c, "max_ejection", o.max_ejection, d.max_ejection.max(base_ejection));
    if max_ejection < base_ejection {
        c.error_at("max_ejection", "must be at least base_ejection");
    }
    if o.failure_percentage == Some(Percent(0)) {
        c.error_at("failure_percentage", "must be above 0% (leave it out to disable)");
    }
    OutlierConfig {
        enabled: o.enabled.unwrap_or(true),
        consecutive_5xx: o.consecutive_5xx.unwrap_or(d.consecutive_5xx),
        consecutive_gateway_failures: o.consecutive_gateway_failures.unwrap_or(d.consecutive_gateway_failures),
        failure_percentage: o.failure_percentage,
        failure_window: positive(c, "failure_window", o.failure_window, d.failure_window),
        failure_min_requests: o.failure_min_requests.unwrap_or(d.failure_min_requests).max(1),
        base_ejection,
        max_ejection,
        ejection_jitter: o.ejection_jitter.map(|d| d.0).unwrap_or(d.ejection_jitter),
        max_ejected_percent: o.max_ejected_percent.unwrap_or(d.max_ejected_percent),
    }
}

fn check_failover(c: &mut Checker, f: &RawFailover) -> FailoverConfig {
    let d = FailoverConfig::default();
    let overprovisioning = match f.overprovisioning {
        Some(x) if !(1.0..=10.0).contains(&x) => {
            c.error_at("overprovisioning", format!("{x} must be between 1.0 and 10.0"));
            d.overprovisioning
        }
        Some(x) => x,
        None => d.overprovisioning,
    };
    FailoverConfig {
        overprovisioning,
        panic: f.panic.unwrap_or(d.panic),
        failback_hold: f.failback_hold.map(|d| d.0).unwrap_or(d.failback_hold),
        slow_start: f.slow_start.map(|d| d.0).unwrap_or(d.slow_start),
    }
}
