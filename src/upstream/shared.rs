//! The state a cluster shares with its background tasks and the request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use super::controller;
use super::endpoint::{self, Endpoint};
use super::events::{EventLog, NewEvent};
use super::failover::Plan;
use super::resolve::Resolve;
use crate::config::ClusterConfig;

/// State shared by a cluster, its background tasks and the request path.
pub struct Shared {
    pub name: String,
    pub config: ClusterConfig,
    pub endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    pub plan: ArcSwap<Plan>,
    /// Wakes the controller (the path crossed a threshold, a check changed a state).
    pub wake: Arc<Notify>,
    pub events: Arc<EventLog>,
    pub(super) resolver: Arc<dyn Resolve>,
    /// True once every DNS name was looked up at least once.
    pub(super) resolved: AtomicBool,
    /// True once the cluster can take traffic: names resolved and, with
    /// `startup: wait_first_check`, every endpoint checked once (Envoy's cluster warming).
    pub(super) warm: watch::Sender<bool>,
    /// Serialises plan publication (controller and resolver), so a transition is logged once.
    pub(super) publishing: Mutex<()>,
}

impl Shared {
    /// Logs a decision about this cluster (or one of its endpoints).
    pub fn event(&self, kind: &'static str, e: Option<&Endpoint>, message: String, evidence: serde_json::Value) {
        self.events.push(NewEvent {
            cluster: &self.name,
            kind,
            endpoint: e.map(|e| &*e.key),
            priority: e.map(|e| e.priority()),
            message,
            evidence,
        });
    }

    /// Marks the cluster warm when it is; publishes the plan first so no request sees it empty.
    pub(super) fn check_warm(&self, now: tokio::time::Instant) {
        if *self.warm.borrow() || !self.resolved.load(Ordering::SeqCst) {
            return;
        }
        let waits_for_checks = self.config.policy.health_check.as_ref().is_some_and(|h| !h.start_healthy);
        if waits_for_checks && self.endpoints.load().iter().any(|e| e.state.health().last_check.is_none()) {
            return;
        }
        controller::publish(self, now, true);
        self.warm.send_replace(true);
    }

    /// An endpoint for `cfg` at `addr`, keeping the state of an endpoint already at that address.
    pub(super) fn endpoint(
        &self,
        cfg: &crate::config::EndpointConfig,
        addr: std::net::SocketAddr,
        existing: &[Arc<Endpoint>],
    ) -> Arc<Endpoint> {
        let key = addr.to_string();
        // The same endpoint of this very cluster is kept as is; one of the cluster this one
        // replaces lends only its state (its thresholds and wake-up belong to the old config).
        if let Some(e) = existing.iter().find(|e| *e.key == *key && e.config == *cfg && e.wakes(&self.wake)) {
            return e.clone();
        }
        let inherited = existing.iter().find(|e| *e.key == *key).map(|e| e.state.clone());
        if let (Some(state), None) = (&inherited, &self.config.policy.health_check) {
            // Active checks were switched off: nothing would ever revise their last verdict.
            let mut h = state.health();
            h.active = endpoint::ActiveState::Healthy;
            h.hold_until = None;
        }
        let state = inherited.unwrap_or_else(|| {
            let start_healthy = self.config.policy.health_check.as_ref().is_none_or(|h| h.start_healthy);
            Arc::new(endpoint::EndpointState::new(start_healthy, self.config.policy.outlier.failure_window))
        });
        let pool = super::pool::PoolConfig {
            connect_timeout: self.config.connect_timeout,
            idle_timeout: self.config.idle_timeout,
            max_idle: self.config.max_idle_per_endpoint,
        };
        Arc::new(Endpoint::new(&self.name, cfg, addr, state, &self.config.policy.outlier, pool, self.wake.clone()))
    }
}
