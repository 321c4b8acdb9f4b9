//! One grace policy at run time: its journal, keys, forced mode, pacer and backend health.
//!
//! The request path reads it (policy snapshot, forced flag, in-flight keys); the forwarder and
//! the admin API change it. Nothing here blocks on I/O except the store's own futures.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::{GraceLimits, GracePolicy};
use super::crypto::{self, BodyCipher, ReceiptSigner};
use super::pacing::Pacer;
use super::sqlite::SqliteStore;
use super::store::Store;
use crate::error::{ErrorKind, LifelineError};
use crate::proxy::stack::HttpService;

/// The forwarder's view of the backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Health {
    /// Not known to be up: the next forward is a single canary.
    Canary,
    /// Known down (breaker open, refused, Retry-After): no forwards until then.
    Down { until: Instant },
    /// The canary answered: slow start since then.
    Ramping { since: Instant },
}

impl Health {
    pub fn label(self) -> &'static str {
        match self {
            Health::Canary => "canary",
            Health::Down { .. } => "down",
            Health::Ramping { .. } => "up",
        }
    }
}

/// Operator controls of the drain.
#[derive(Debug, Clone, Default)]
pub struct Control {
    pub paused: bool,
    /// Overrides `forward.rate` (per second).
    pub rate: Option<f64>,
}

/// A forwarding target: the route's stack without grace.
#[derive(Clone)]
pub struct Target {
    pub service: HttpService,
    pub route: Arc<str>,
    pub cluster: Arc<str>,
}

pub struct Engine {
    pub name: String,
    policy: ArcSwap<GracePolicy>,
    limits: ArcSwap<GraceLimits>,
    pub store: Arc<dyn Store>,
    pub cipher: Option<BodyCipher>,
    pub signer: ReceiptSigner,
    forced: Mutex<Option<String>>,
    in_flight: Mutex<HashMap<String, [u8; 32]>>,
    targets: Mutex<HashMap<String, Target>>,
    pub control: Mutex<Control>,
    pub health: Mutex<Health>,
    pub pacer: Pacer,
    /// Wakes the forwarder (new item, control change).
    pub wake: Notify,
    /// Cards with a forward in flight (a second guard for per-card FIFO, besides the journal).
    pub busy_cards: Mutex<HashSet<String>>,
    pub last_trigger: Mutex<Option<(String, i64)>>,
    /// Items finished by the forwarder (settled or declined), and the recent rate per second.
    pub forwarded: std::sync::atomic::AtomicU64,
    pub drain_rate: Mutex<f64>,
}

impl Engine {
    /// Opens the journal and loads the keys.
    pub fn open(policy: &GracePolicy) -> Result<Engine, String> {
        let cipher = match &policy.body_key_file {
            Some(path) => Some(BodyCipher::new(&crypto::read_key32(path)?)),
            None => None,
        };
        let (store, recovered) =
            SqliteStore::open_with_log(&policy.store, &policy.log_dir).map_err(|e| e.to_string())?;
        if recovered > 0 {
            tracing::warn!(policy = %policy.name, recovered, "items in flight at the last stop are now unknown; they will be queried before any resend");
        }
        let seed = match &policy.signing_key_file {
            Some(path) => crypto::read_key32(path)?,
            None => stored_seed(&policy.store)?,
        };
        let forced = forced_at_start(&policy.store);
        let rate = policy.forward.rate.per_second();
        Ok(Engine {
            name: policy.name.clone(),
            limits: ArcSwap::from_pointee(policy.limits.clone()),
            policy: ArcSwap::from_pointee(policy.clone()),
            store: Arc::new(store),
            cipher,
            signer: ReceiptSigner::from_seed(&seed),
            forced: Mutex::new(forced),
            in_flight: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
            control: Mutex::new(Control::default()),
            health: Mutex::new(Health::Canary),
            pacer: Pacer::new(rate),
            wake: Notify::new(),
            busy_cards: Mutex::new(HashSet::new()),
            last_trigger: Mutex::new(None),
            forwarded: std::sync::atomic::AtomicU64::new(0),
            drain_rate: Mutex::new(0.0),
        })
    }

    pub fn policy(&self) -> Arc<GracePolicy> {
        self.policy.load_full()
    }

    pub fn limits(&self) -> Arc<GraceLimits> {
        self.limits.load_full()
    }

    pub fn set_policy(&self, p: GracePolicy) {
        self.limits.store(Arc::new(p.limits.clone()));
        self.policy.store(Arc::new(p));
        self.wake.notify_one();
    }

    pub fn register_route(&self, route: &str, cluster: &str, service: HttpService) {
        if let Ok(mut t) = self.targets.lock() {
            t.insert(route.to_string(), Target { service, route: Arc::from(route), cluster: Arc::from(cluster) });
        }
    }

    /// Where to forward an item journaled on `route` (any route of this policy if it is gone).
    pub fn target(&self, route: &str) -> Option<Target> {
        let t = self.targets.lock().ok()?;
        t.get(route).or_else(|| t.values().next()).cloned()
    }

    pub fn forced(&self) -> Option<String> {
        self.forced.lock().ok().and_then(|f| f.clone())
    }

    /// Turns operator-forced grace on (with its reason) or off, and persists it.
    pub async fn set_forced(&self, reason: Option<String>) -> Result<(), String> {
        self.store.set_meta("forced".into(), reason.clone()).await.map_err(|e| e.to_string())?;
        if let Ok(mut f) = self.forced.lock() {
            *f = reason;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Marks `key` as being processed. While it is, the same key answers 409 (same body) or
    /// 422 (different body).
    pub fn claim(self: &Arc<Self>, key: &str, fingerprint: [u8; 32]) -> Result<InFlightGuard, LifelineError> {
        let mut map = self
            .in_flight
            .lock()
            .map_err(|_| LifelineError::new(ErrorKind::Internal, "grace in-flight table poisoned"))?;
        match map.get(key) {
            Some(fp) if *fp != fingerprint => Err(LifelineError::new(
                ErrorKind::IdempotencyConflict,
                "this Idempotency-Key is in use with a different request body",
            )),
            Some(_) => Err(LifelineError::new(
                ErrorKind::IdempotencyInFlight,
                "a request with this Idempotency-Key is still being processed; retry later",
            )
            .with_retry_after(std::time::Duration::from_secs(1))),
            None => {
                map.insert(key.to_string(), fingerprint);
                Ok(InFlightGuard { engine: self.clone(), key: key.to_string() })
            }
        }
    }

    /// Records why grace was last entered (for `/grace/status`).
    pub fn note_trigger(&self, reason: &str) {
        if let Ok(mut t) = self.last_trigger.lock() {
            *t = Some((reason.to_string(), super::clock::now_ms()));
        }
    }

    pub fn health(&self) -> Health {
        self.health.lock().map(|h| *h).unwrap_or(Health::Canary)
    }

    pub fn set_health(&self, h: Health) {
        if let Ok(mut cur) = self.health.lock() {
            *cur = h;
        }
    }
}

/// Releases an in-flight key when the request is done (also when the client went away).
pub struct InFlightGuard {
    engine: Arc<Engine>,
    key: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.engine.in_flight.lock() {
            map.remove(&self.key);
        }
    }
}

fn meta_value(path: &std::path::Path, key: &str) -> Option<String> {
    let conn = super::sqlite::schema::open_reader(path).ok()?;
    conn.query_row("SELECT v FROM meta WHERE k = ?1", [key], |r| r.get(0)).ok()
}

fn forced_at_start(path: &std::path::Path) -> Option<String> {
    meta_value(path, "forced")
}

/// Without a signing key file, a seed generated once and kept in the journal's meta table.
fn stored_seed(path: &std::path::Path) -> Result<[u8; 32], String> {
    if let Some(seed) = meta_value(path, "signing_seed").and_then(|s| crypto::parse_key32(&s)) {
        return Ok(seed);
    }
    tracing::warn!(journal = %path.display(), "no grace signing_key_file: generating a receipt signing key inside the journal (set signing_key_file for audits)");
    let seed = crypto::random_seed();
    let conn = super::sqlite::schema::open_writer(path).map_err(|e| e.to_string())?;
    conn.execute("INSERT OR REPLACE INTO meta(k, v) VALUES ('signing_seed', ?1)", [hex::encode(seed)])
        .map_err(|e| format!("cannot store the signing key: {e}"))?;
    Ok(seed)
}
