//! Offline grace for medical settlements: durable store-and-forward with limits, receipts and
//! paced replay.
//!
//! When the payment backend cannot be reached, a patient at the hospital counter must still be
//! able to settle — within limits the insurer sets — and the settlement must reach the backend
//! later exactly once. Research: `shared/research/offline-grace.md` §0, §2, §3, §5.
//!
//! Where it sits: [`wrap`] puts [`layer::GraceService`] around the whole stack of every route
//! marked `grace: <policy>` (outside the deadline, so a timeout is an outcome it can journal
//! instead of a cancellation that cuts the journal write short). What it does per request:
//! Idempotency-Key required → body fields by JSON pointer → try online → on a NotSent failure
//! (breaker open, no healthy endpoint, connect refused, overloaded) journal as `journaled`, on a
//! sent-but-no-answer failure (timeout, reset) journal as `unknown` → 202 provisional receipt
//! only after the fsync. Off the path: [`forwarder`] replays the journal per card lane, paced.
//!
//! One [`Engine`] per policy owns its [`store::Store`], keys, forced-mode flag, pacer and the
//! forwarder's view of backend health. [`Engines`] is the set, owned by the runtime snapshot and
//! carried across reloads (limits and forward settings change live; a new journal path needs a
//! restart).

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
mod engine;
mod forward;
pub mod forwarder;
pub mod layer;
mod outcome;
pub mod pacing;
pub mod receipt;
mod request;
pub mod sqlite;
pub mod store;
mod validate;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use engine::{Engine, Health};

use crate::config::{Config, RouteConfig};
use crate::error::BoxError;
use crate::proxy::stack::HttpService;

/// Every grace engine of the process, by policy name.
pub struct Engines {
    pub map: BTreeMap<String, Arc<Engine>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Default for Engines {
    fn default() -> Self {
        Engines { map: BTreeMap::new(), stop: watch::channel(false).0, tasks: Mutex::new(Vec::new()) }
    }
}

impl Engines {
    /// Opens every policy's journal (integrity check, recovery, counter rebuild).
    pub fn open(config: &Config) -> Result<Arc<Engines>, BoxError> {
        let mut map = BTreeMap::new();
        for (name, policy) in &config.grace {
            let engine = Engine::open(policy).map_err(|e| format!("grace policy {name}: {e}"))?;
            map.insert(name.clone(), Arc::new(engine));
        }
        Ok(Arc::new(Engines { map, ..Default::default() }))
    }

    /// Starts one forwarder task per policy (owned here, stopped by [`Engines::shutdown`]).
    pub fn start(&self) {
        let Ok(mut tasks) = self.tasks.lock() else { return };
        for engine in self.map.values() {
            let span = tracing::info_span!("grace_forwarder", policy = %engine.name);
            let fut = forwarder::run(engine.clone(), self.stop.subscribe());
            tasks.push(tokio::spawn(tracing::Instrument::instrument(fut, span)));
        }
    }

    /// Checks a reloaded config: limits and forward settings may change live; adding a policy or
    /// moving a journal is refused (it needs a restart, so no item is stranded in a closed file).
    pub fn check(&self, config: &Config) -> Result<(), BoxError> {
        for (name, policy) in &config.grace {
            match self.map.get(name) {
                Some(e) if e.policy().store == policy.store && e.policy().log_dir == policy.log_dir => {}
                Some(_) => {
                    return Err(format!("grace policy {name}: moving the journal or its log needs a restart").into())
                }
                None => return Err(format!("grace policy {name}: adding a policy needs a restart").into()),
            }
        }
        Ok(())
    }

    /// Takes the new limits and forward settings (after [`Engines::check`] passed).
    pub fn apply(&self, config: &Config) {
        for (name, policy) in &config.grace {
            if let Some(e) = self.map.get(name) {
                e.set_policy(policy.clone());
            }
        }
    }

    /// Stops the forwarders (in-flight forwards finish or are recorded as `unknown` on the next
    /// start), then closes the journals; every acknowledged item is already on disk.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self.tasks.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(10), task).await.is_err() {
                abort.abort();
            }
        }
        for engine in self.map.values() {
            let engine = engine.clone();
            let _ = tokio::task::spawn_blocking(move || engine.store.close()).await;
        }
    }

    /// The engine that owns a receipt id, with the item.
    pub async fn find_receipt(&self, id: &str) -> Option<(Arc<Engine>, store::Item)> {
        for engine in self.map.values() {
            if let Ok(Some(item)) = engine.store.get(id.to_string()).await {
                return Some((engine.clone(), item));
            }
        }
        None
    }
}

/// The receipt id of a `GET /grace/receipts/{id}` on the proxy port, when grace is configured
/// (the hospital's system polls it there; it is answered before routing so no route hides it).
pub fn receipt_request<'a, H: crate::proxy::route::RequestHead>(
    rt: &crate::runtime::Runtime,
    head: &'a H,
) -> Option<&'a str> {
    if rt.grace.map.is_empty() || head.method() != http::Method::GET {
        return None;
    }
    head.uri().path().strip_prefix("/grace/receipts/")
}

/// Wraps a route's stack with its grace policy, if it has one, and registers the unwrapped
/// stack with the engine so the forwarder sends through retry/breaker/balancer but never
/// through grace itself (a `CircuitOpen` answer then means "still down, wait").
pub fn wrap(route: &RouteConfig, inner: HttpService, engines: &Engines) -> Result<HttpService, BoxError> {
    let Some(policy) = &route.grace else { return Ok(inner) };
    let engine = engines
        .map
        .get(policy)
        .ok_or_else(|| format!("route {}: grace policy {policy} is not open (restart to add a policy)", route.name))?;
    engine.register_route(&route.name, &route.cluster, inner.clone());
    Ok(HttpService::new(layer::GraceService::new(engine.clone(), inner, &route.name)))
}
