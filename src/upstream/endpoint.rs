//! One upstream endpoint: its address, and the live state that health checks, outlier detection
//! and the balancer share.
//!
//! The request path only touches atomics here ([`Endpoint::record`] counts an outcome and, when a
//! consecutive-failure threshold is crossed, wakes the cluster's controller; it never decides).
//! Health and ejection live in [`Health`] behind a mutex that only background tasks and the admin
//! API lock. [`EndpointState`] is kept by address across config reloads and DNS refreshes, so an
//! ejected endpoint stays ejected when an unrelated key of its cluster changes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::OutlierConfig;
use super::window::Window;
use crate::classify::{FailureKind, Outcome};
use crate::config::EndpointConfig;
use crate::error::ErrorKind;
use crate::proxy::workers::PerWorker;
use crate::telemetry::names;

/// Live counters of one endpoint, one set per proxy worker (summed on read): every request
/// writes them, and shared by both workers they moved their cache line between the cores on
/// every request. Read by `GET /clusters`, the balancer (`in_flight`) and outlier decay
/// (`successes`).
#[derive(Debug, Default)]
pub struct EndpointStats(PerWorker<Counts>);

#[derive(Debug, Default)]
struct Counts {
    /// Signed: a request counted out on another stripe than it was counted in (off the
    /// workers, where tasks move between threads) leaves its stripes at +1 and -1.
    in_flight: AtomicI64,
    requests: AtomicU64,
    failures: AtomicU64,
    successes: AtomicU64,
}

impl EndpointStats {
    fn sum(&self, field: impl Fn(&Counts) -> u64) -> u64 {
        self.0.iter().fold(0u64, |s, c| s.wrapping_add(field(c)))
    }

    /// Requests being sent to or answered by this endpoint.
    pub fn in_flight(&self) -> u64 {
        let n: i64 = self.0.iter().map(|c| c.in_flight.load(Ordering::Relaxed)).sum();
        u64::try_from(n).unwrap_or(0)
    }

    /// Attempts that ended with an outcome that says something about the endpoint.
    pub fn requests(&self) -> u64 {
        self.sum(|c| c.requests.load(Ordering::Relaxed))
    }

    pub fn failures(&self) -> u64 {
        self.sum(|c| c.failures.load(Ordering::Relaxed))
    }

    pub fn successes(&self) -> u64 {
        self.sum(|c| c.successes.load(Ordering::Relaxed))
    }

    /// Counts a request in flight until the guard drops: also when its future is dropped
    /// unfinished (an attempt's timeout), which a decrement after the `await` missed, leaving
    /// the endpoint looking busier to the balancer for good.
    pub fn enter(&self) -> InFlight<'_> {
        self.0.here().in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }
}

/// A request counted in [`EndpointStats::in_flight`].
pub struct InFlight<'a>(&'a EndpointStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0 .0.here().in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What active checks say about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActiveState {
    /// Before the first check, with `startup: wait_first_check`.
    Unknown,
    Healthy,
    Unhealthy,
}

/// Why and until when an endpoint is ejected.
#[derive(Debug, Clone)]
pub struct Ejection {
    pub reason: &'static str,
    pub at: Instant,
    pub until: Instant,
    pub evidence: serde_json::Value,
}

/// The last active check.
#[derive(Debug, Clone)]
pub struct CheckRecord {
    pub at: Instant,
    pub passed: bool,
    pub detail: String,
}

/// Health and ejection of one endpoint; written by background tasks only.
#[derive(Debug, Clone)]
pub struct Health {
    pub active: ActiveState,
    /// Consecutive passing / failing checks.
    pub passes: u32,
    pub fails: u32,
    pub last_check: Option<CheckRecord>,
    /// No traffic before this instant: the failback hold after recovering from unhealthy.
    pub hold_until: Option<Instant>,
    /// Slow start: the endpoint's share ramps from 0 at this instant to full over `slow_start`.
    pub ramp_from: Option<Instant>,
    pub ejection: Option<Ejection>,
    /// Multiplier of the next ejection time (Envoy's ejection count); decays on evidence of health.
    pub ejection_multiplier: u32,
    pub ejections_total: u64,
    pub decay_due: Option<Instant>,
    /// `successes` when the decay period started.
    pub decay_mark: u64,
    /// A detection was logged but the `max_ejected_percent` cap prevented the ejection.
    pub skip_logged: bool,
}

impl Health {
    fn new(start_healthy: bool) -> Health {
        Health {
            active: if start_healthy { ActiveState::Healthy } else { ActiveState::Unknown },
            passes: 0,
            fails: 0,
            last_check: None,
            hold_until: None,
            ramp_from: None,
            ejection: None,
            ejection_multiplier: 0,
            ejections_total: 0,
            decay_due: None,
            decay_mark: 0,
            skip_logged: false,
        }
    }

    /// Share of its weight the endpoint may take now: 0 when unusable, ramping to 1 in slow start.
    pub fn fraction(&self, now: Instant, slow_start: Duration) -> f64 {
        if self.ejection.is_some() || self.active != ActiveState::Healthy {
            return 0.0;
        }
        if self.hold_until.is_some_and(|h| now < h) {
            return 0.0;
        }
        match self.ramp_from {
            Some(from) if now < from => 0.0,
            Some(from) if !slow_start.is_zero() => (now - from).as_secs_f64() / slow_start.as_secs_f64(),
            _ => 1.0,
        }
        .min(1.0)
    }

    /// A short word for `GET /clusters`.
    pub fn label(&self, now: Instant) -> &'static str {
        match self.active {
            ActiveState::Unknown => "unknown",
            ActiveState::Unhealthy => "unhealthy",
            ActiveState::Healthy if self.hold_until.is_some_and(|h| now < h) => "failback_hold",
            ActiveState::Healthy => "healthy",
        }
    }
}

/// State of an endpoint that outlives config reloads (keyed by resolved address).
#[derive(Debug)]
pub struct EndpointState {
    pub stats: EndpointStats,
    pub consecutive_5xx: AtomicU32,
    pub consecutive_gateway: AtomicU32,
    pub window: Window,
    /// Set on the path when a consecutive threshold is crossed; cleared by the controller.
    pub suspect: AtomicBool,
    health: Mutex<Health>,
}

impl EndpointState {
    pub fn new(start_healthy: bool, window: Duration) -> EndpointState {
        EndpointState {
            stats: EndpointStats::default(),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            window: Window::new(window),
            suspect: AtomicBool::new(false),
            health: Mutex::new(Health::new(start_healthy)),
        }
    }

    /// Locks the health record (background tasks and the admin API only; never held across await).
    pub fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.suspect.store(false, Ordering::Relaxed);
    }
}

/// One upstream address of a cluster (a DNS name gives one per A/AAAA record).
#[derive(Debug)]
pub struct Endpoint {
    /// `ip:port`: the identity used in metrics labels, `TriedEndpoints` and the admin API.
    pub key: Arc<str>,
    /// The config entry this endpoint comes from (`address` as written, priority, weight).
    pub config: EndpointConfig,
    pub addr: SocketAddr,
    pub state: Arc<EndpointState>,
    /// Keep-alive connections to this endpoint, per proxy worker.
    pub pool: Arc<super::pool::ConnPool>,
    thresholds: (u32, u32),
    wake: Arc<Notify>,
    success: metrics::Counter,
    failure: metrics::Counter,
    not_sent: metrics::Counter,
}

impl Endpoint {
    pub(crate) fn new(
        cluster: &str,
        config: &EndpointConfig,
        addr: SocketAddr,
        state: Arc<EndpointState>,
        outlier: &OutlierConfig,
        pool: super::pool::PoolConfig,
        wake: Arc<Notify>,
    ) -> Endpoint {
        let key: Arc<str> = Arc::from(addr.to_string());
        let counter = |result: &'static str| metrics::counter!(names::UPSTREAM_REQUESTS_TOTAL, "cluster" => cluster.to_string(), "endpoint" => key.to_string(), "result" => result);
        let thresholds =
            if outlier.enabled { (outlier.consecutive_5xx, outlier.consecutive_gateway_failures) } else { (0, 0) };
        Endpoint {
            success: counter("success"),
            failure: counter("failure"),
            not_sent: counter("not_sent"),
            key,
            config: config.clone(),
            addr,
            state,
            pool: super::pool::ConnPool::new(addr, pool),
            thresholds,
            wake,
        }
    }

    /// True when this endpoint wakes `controller` (it belongs to that cluster generation).
    pub fn wakes(&self, controller: &Arc<Notify>) -> bool {
        Arc::ptr_eq(&self.wake, controller)
    }

    pub fn priority(&self) -> u32 {
        self.config.priority
    }

    /// Records how an attempt on this endpoint ended (request path: atomics only).
    pub fn record(&self, outcome: Outcome) {
        let s = &self.state;
        let counts = s.stats.0.here();
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let (fail, gateway) = match outcome {
            Outcome::Success => (false, false),
            Outcome::Failure(FailureKind::Status(code)) => (true, matches!(code, 502..=504)),
            Outcome::Failure(FailureKind::Timeout | FailureKind::Reset) => (true, true),
            Outcome::NotSent(ErrorKind::ConnectFailed) => (true, true),
            // Refused by Lifeline itself (breaker, limit): says nothing about the endpoint.
            Outcome::NotSent(_) => {
                self.not_sent.increment(1);
                return;
            }
            // The caller's body failed: says nothing about the endpoint either.
            Outcome::Client(_) => return,
        };
        s.window.record(!fail);
        match outcome {
            Outcome::Success => self.success.increment(1),
            Outcome::NotSent(_) => self.not_sent.increment(1),
            Outcome::Failure(_) => self.failure.increment(1),
            // Returned above: a caller's failure is not counted for the endpoint at all.
            Outcome::Client(_) => {}
        }
        if !fail {
            counts.successes.fetch_add(1, Ordering::Relaxed);
            // Read before written: a store of the zero already there would still take the
            // line from the other core.
            if s.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                s.consecutive_5xx.store(0, Ordering::Relaxed);
            }
            if s.consecutive_gateway.load(Ordering::Relaxed) != 0 {
                s.consecutive_gateway.store(0, Ordering::Relaxed);
            }
            return;
        }
        counts.failures.fetch_add(1, Ordering::Relaxed);
        let c5 = s.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let cg = if gateway {
            s.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            s.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let (t5, tg) = self.thresholds;
        if ((t5 > 0 && c5 >= t5) || (tg > 0 && cg >= tg)) && !s.suspect.swap(true, Ordering::Relaxed) {
            // The decision is the controller's; the path only wakes it.
            self.wake.notify_one();
        }
    }
}
