//! Upstream clusters: endpoints by priority, health, outlier ejection, failover, load balancing
//! and the connection pool.
//!
//! A [`Cluster`] is the stateful half of a cluster config. Decisions happen off the request
//! path, in tasks the app starts with [`activate`] and stops on shutdown:
//! - the **controller** ([`controller`]) ticks every 100 ms and whenever the path reports a
//!   crossed failure threshold: it runs passive outlier detection ([`outlier`]), owns one
//!   active health-check task per endpoint ([`health`]), computes the traffic split across
//!   priorities with failback hold and slow start ([`failover`]) and publishes it as a
//!   [`failover::Plan`] through an `ArcSwap`;
//! - the **resolver** re-resolves DNS names ([`resolve`]) and republishes the endpoint list.
//!
//! The request path ([`ClusterService`]) reads the plan, picks an endpoint ([`balance`]),
//! counts the outcome with atomics, and re-picks at once when a connect fails (nothing was
//! sent). Every decision is logged with its evidence ([`events`], `GET /clusters/events`).
//!
//! A cluster outlives a reload when its config did not change; when it did, the new cluster
//! takes over each endpoint's state by address, so health and ejections survive (invariant 8).

pub mod admin;
mod balance;
pub mod config;
mod controller;
pub mod endpoint;
pub mod events;
pub mod failover;
mod h1;
pub mod health;
pub mod operator;
pub mod outlier;
mod pool;
pub mod resolve;
mod service;
mod shared;
#[cfg(test)]
mod tests;
mod window;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::{Response, Uri};
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::config::ClusterConfig;
use crate::error::{BoxError, ErrorKind, LifelineError};
use crate::proxy::body::{ProxyBody, ProxyRequest};
pub use endpoint::{Endpoint, EndpointStats};
use events::EventLog;
use failover::Plan;
use resolve::Resolve;
pub use service::ClusterService;
pub use shared::Shared;

/// A cluster's endpoints, policy, background tasks and connection pool.
pub struct Cluster {
    pub config: ClusterConfig,
    shared: Arc<Shared>,
    started: AtomicBool,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("name", &self.config.name).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Builds a fresh cluster with the system resolver.
    pub fn new(config: &ClusterConfig) -> Result<Arc<Cluster>, BoxError> {
        Ok(Cluster::build(config, None, resolve::system()))
    }

    /// Builds the cluster, taking over endpoint state, resolved addresses and the event log of
    /// `previous` (the cluster of the same name in the config being replaced). Spawns nothing:
    /// [`Cluster::start`] does.
    pub fn build(config: &ClusterConfig, previous: Option<&Cluster>, resolver: Arc<dyn Resolve>) -> Arc<Cluster> {
        let old: Vec<Arc<Endpoint>> = previous.map(|p| p.shared.endpoints.load().to_vec()).unwrap_or_default();
        let mut all_resolved = true;
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            config: config.clone(),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            plan: ArcSwap::from_pointee(Plan::empty()),
            wake: Arc::new(Notify::new()),
            events: previous.map(|p| p.shared.events.clone()).unwrap_or_default(),
            resolver,
            resolved: AtomicBool::new(false),
            warm: watch::Sender::new(false),
            publishing: Mutex::new(()),
        });
        let mut list: Vec<Arc<Endpoint>> = Vec::new();
        for ec in &config.endpoints {
            let addrs: Vec<std::net::SocketAddr> = match ec.address.parse() {
                Ok(addr) => vec![addr],
                Err(_) => {
                    let known: Vec<_> = old.iter().filter(|e| e.config.address == ec.address).map(|e| e.addr).collect();
                    all_resolved &= !known.is_empty();
                    known
                }
            };
            for addr in addrs {
                if !list.iter().any(|e| e.addr == addr) {
                    list.push(shared.endpoint(ec, addr, &old));
                }
            }
        }
        shared.endpoints.store(Arc::new(list));
        shared.resolved.store(all_resolved, Ordering::SeqCst);
        controller::publish(&shared, tokio::time::Instant::now(), false);
        shared.check_warm(tokio::time::Instant::now());
        Arc::new(Cluster {
            config: config.clone(),
            shared,
            started: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Starts the controller and, for DNS names, the resolver. Idempotent.
    pub fn start(&self) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let span = tracing::info_span!("upstream_controller", cluster = %self.config.name);
        tasks.push(tokio::spawn(controller::run(self.shared.clone()).instrument(span)).abort_handle());
        if self.config.endpoints.iter().any(|e| resolve::dns_name(&e.address).is_some()) {
            let span = tracing::info_span!("upstream_dns", cluster = %self.config.name);
            tasks.push(tokio::spawn(controller::resolve_loop(self.shared.clone()).instrument(span)).abort_handle());
        }
    }

    /// Stops the background tasks (health checks included).
    pub fn stop(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for t in tasks.drain(..) {
            t.abort();
        }
    }

    /// The shared state (admin API, tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Current endpoints (all priorities, DNS records expanded).
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.shared.endpoints.load_full()
    }

    /// Picks an endpoint from the published plan.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        self.pick_avoiding(&|_| false)
    }

    /// Picks an endpoint, avoiding those for which `avoid(key)` is true when possible.
    pub fn pick_avoiding(&self, avoid: &dyn Fn(&str) -> bool) -> Option<Arc<Endpoint>> {
        self.shared.plan.load().pick(self.config.policy.load_balancer, avoid)
    }

    /// Waits (at most a connect timeout, plus one health check with `wait_first_check`) until
    /// the cluster is warm: DNS names resolved, first checks done. Returns at once afterwards.
    pub async fn wait_ready(&self) {
        if *self.shared.warm.borrow() {
            return;
        }
        let checks = self.config.policy.health_check.as_ref().filter(|h| !h.start_healthy);
        let max = self.config.connect_timeout + checks.map(|h| h.timeout + h.transition_interval).unwrap_or_default();
        let mut rx = self.shared.warm.subscribe();
        let _ = tokio::time::timeout(max, rx.wait_for(|r| *r)).await;
    }

    /// Sends `req` to `endpoint` over one of its pooled connections (HTTP/1.1, origin-form
    /// request target, `Host` written when the request has none). When nothing of the request
    /// left Lifeline (no connection, or one that failed before the first byte), the failure says
    /// whether the request is whole, so it can go to another endpoint.
    pub async fn send(&self, endpoint: &Endpoint, req: &mut ProxyRequest) -> Result<Response<ProxyBody>, SendFailure> {
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = Uri::try_from(pq).map_err(|e| SendFailure::from(BoxError::from(e)))?;
        } else if req.uri().path().is_empty() {
            *req.uri_mut() = Uri::from_static("/");
        }
        // The version is left as the caller's: the client writes HTTP/1.1 whatever it says, and
        // reads it to know who will write the answer (h1::exchange).
        let in_flight = endpoint.state.stats.enter();
        let result = endpoint.pool.send(req).await;
        drop(in_flight);
        let fail = |kind, what: &str, cause: String| {
            LifelineError::new(kind, format!("{what} {} of cluster {}: {cause}", endpoint.key, self.config.name))
                .with_cluster(&self.config.name)
                .boxed()
        };
        result.map_err(|e| match e {
            pool::SendError::Connect(cause) => {
                SendFailure { error: fail(ErrorKind::ConnectFailed, "cannot connect to", cause), unsent: true }
            }
            pool::SendError::NotSent(cause, whole) => SendFailure {
                error: fail(ErrorKind::ConnectFailed, "the connection failed before the request was sent to", cause),
                unsent: whole,
            },
            pool::SendError::Exchange(cause) => fail(ErrorKind::UpstreamReset, "request failed on", cause).into(),
            // Over `max_body` keeps its own kind (413); anything else on the caller's side is
            // `client_aborted`. Neither counts against the endpoint (`classify`).
            pool::SendError::Body(e) => match LifelineError::find(e.as_ref()) {
                Some(le) if le.kind == ErrorKind::BodyTooLarge => e.into(),
                _ => LifelineError::new(
                    ErrorKind::ClientAborted,
                    format!("the caller's request body failed while it was sent to {}: {e}", endpoint.key),
                )
                .with_cluster(&self.config.name)
                .boxed()
                .into(),
            },
        })
    }

    /// What `GET /clusters` shows for this cluster.
    pub fn snapshot(&self) -> serde_json::Value {
        admin::snapshot(self)
    }

    /// The cluster's decision log.
    pub fn events(&self) -> &EventLog {
        &self.shared.events
    }
}

/// A failed send. `unsent` is true when not one byte of the request left Lifeline and the
/// request the caller lent is whole (its body put back): it may then go to another endpoint,
/// even a POST (design invariant 7), and a streaming upload need not have been buffered to
/// allow it.
pub struct SendFailure {
    pub error: BoxError,
    pub unsent: bool,
}

impl From<BoxError> for SendFailure {
    fn from(error: BoxError) -> Self {
        SendFailure { error, unsent: false }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the tasks of every cluster in `new` and stops those of `old` clusters that `new` no
/// longer uses (replaced or removed). Called by the app after building a runtime.
pub fn activate(new: &BTreeMap<String, Arc<Cluster>>, old: Option<&BTreeMap<String, Arc<Cluster>>>) {
    for c in new.values() {
        c.start();
    }
    for c in old.into_iter().flat_map(|o| o.values()) {
        if !new.values().any(|n| Arc::ptr_eq(n, c)) {
            c.stop();
        }
    }
}

/// Stops every cluster's tasks (app shutdown).
pub fn deactivate(clusters: &BTreeMap<String, Arc<Cluster>>) {
    for c in clusters.values() {
        c.stop();
    }
}
