//! Toxics of the fault proxy: what they are, their validation, and the live set with TTLs.
//!
//! Modelled on Toxiproxy's toxics (`latency`, `bandwidth`, `slow_close`, `timeout`,
//! `reset_peer`, `slicer`, `limit_data`), each on one `stream` (`upstream` = client to backend,
//! `downstream` = backend to client) with a `toxicity` (the share of connections it applies
//! to). Unlike Toxiproxy, every toxic carries a `ttl` and removes itself: removal under load must
//! not depend on an API call getting through (toxiproxy#412, #558).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::chaos::fault::via_json;
use crate::config::{Dur, Size};

/// Which way the bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Client (the sidecar) to backend.
    Upstream,
    /// Backend to client.
    #[default]
    Downstream,
}

/// One toxic as requested (`POST /toxics`, or `proxy_toxics` in a drill).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToxicSpec {
    /// Name; default `<type>_<stream>`. Reusing a name replaces that toxic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub stream: Stream,
    /// Share of connections affected, 0.0 to 1.0. Default 1.0.
    #[serde(default = "one")]
    pub toxicity: f64,
    #[serde(deserialize_with = "via_json")]
    pub toxic: ToxicKind,
    /// The toxic removes itself after this long.
    pub ttl: Dur,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ToxicKind {
    /// Delay every chunk by `latency` ± `jitter`.
    Latency {
        latency: Dur,
        #[serde(default)]
        jitter: Dur,
    },
    /// At most `rate` bytes per second.
    Bandwidth { rate: Size },
    /// Delay the close after the sender closed.
    SlowClose { delay: Dur },
    /// Stop all data; close the connection after `timeout` (0s: never, data is dropped until the
    /// toxic goes away): a hung backend.
    Timeout { timeout: Dur },
    /// Reset the connection (TCP RST) after `timeout` (0s: at the first chance).
    ResetPeer {
        #[serde(default)]
        timeout: Dur,
    },
    /// Cut data into pieces of `average_size` ± `size_variation` bytes, `delay` apart.
    Slicer {
        average_size: usize,
        #[serde(default)]
        size_variation: usize,
        #[serde(default)]
        delay: Dur,
    },
    /// Close the connection after `bytes` went through.
    LimitData { bytes: Size },
}

impl ToxicKind {
    pub fn label(&self) -> &'static str {
        match self {
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::Bandwidth { .. } => "bandwidth",
            ToxicKind::SlowClose { .. } => "slow_close",
            ToxicKind::Timeout { .. } => "timeout",
            ToxicKind::ResetPeer { .. } => "reset_peer",
            ToxicKind::Slicer { .. } => "slicer",
            ToxicKind::LimitData { .. } => "limit_data",
        }
    }
}

/// Longest TTL the proxy accepts.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Checks a toxic; every problem names its field.
pub fn validate(spec: &ToxicSpec) -> Result<(), Vec<String>> {
    let mut e = Vec::new();
    if spec.ttl.0.is_zero() || spec.ttl.0 > MAX_TTL {
        e.push("ttl: must be greater than 0 and at most 24h".to_string());
    }
    if !(0.0..=1.0).contains(&spec.toxicity) {
        e.push("toxicity: must be between 0.0 and 1.0".into());
    }
    if let Some(n) = &spec.name {
        if n.is_empty() || n.len() > 64 || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            e.push("name: 1 to 64 letters, digits, '-' or '_'".into());
        }
    }
    match &spec.toxic {
        ToxicKind::Bandwidth { rate } if rate.0 == 0 => e.push("toxic.bandwidth.rate: must be at least 1".into()),
        ToxicKind::Slicer { average_size, size_variation, .. }
            if *average_size == 0 || size_variation >= average_size =>
        {
            e.push("toxic.slicer: average_size must be > 0 and size_variation < average_size".into())
        }
        ToxicKind::LimitData { bytes } if bytes.0 == 0 => e.push("toxic.limit_data.bytes: must be at least 1".into()),
        _ => {}
    }
    if e.is_empty() {
        Ok(())
    } else {
        Err(e)
    }
}

/// A toxic in force.
#[derive(Debug)]
pub struct Toxic {
    /// Unique per insertion, so a replaced toxic is a new toxic for every connection.
    pub uid: u64,
    pub name: String,
    pub spec: ToxicSpec,
    pub expires: Instant,
}

impl Toxic {
    pub fn describe(&self, now: Instant) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.spec).unwrap_or_default();
        v["name"] = self.name.clone().into();
        v["type"] = self.spec.toxic.label().into();
        v["expires_in_ms"] = (self.expires.saturating_duration_since(now).as_millis() as u64).into();
        v
    }
}

/// The live toxics and the proxy's enabled flag, each with a deadline.
#[derive(Debug)]
pub struct Toxics {
    list: ArcSwap<Vec<Arc<Toxic>>>,
    write: Mutex<()>,
    uid: AtomicU64,
    /// Bumped on every change; connections re-read the list when it moves.
    pub changes: watch::Sender<u64>,
    /// `Some(until)` while the proxy is disabled (partition).
    pub disabled_until: watch::Sender<Option<Instant>>,
}

impl Default for Toxics {
    fn default() -> Self {
        Toxics {
            list: ArcSwap::default(),
            write: Mutex::new(()),
            uid: AtomicU64::new(0),
            changes: watch::channel(0).0,
            disabled_until: watch::channel(None).0,
        }
    }
}

impl Toxics {
    pub fn current(&self) -> Arc<Vec<Arc<Toxic>>> {
        self.list.load_full()
    }

    pub fn active(&self) -> Vec<Arc<Toxic>> {
        let now = Instant::now();
        self.list.load().iter().filter(|t| t.expires > now).cloned().collect()
    }

    pub fn add(&self, spec: ToxicSpec) -> Arc<Toxic> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let name = spec.name.clone().unwrap_or_else(|| {
            let dir = if spec.stream == Stream::Upstream { "upstream" } else { "downstream" };
            format!("{}_{dir}", spec.toxic.label())
        });
        let toxic = Arc::new(Toxic {
            uid: self.uid.fetch_add(1, Ordering::Relaxed) + 1,
            name,
            expires: Instant::now() + spec.ttl.0,
            spec,
        });
        let mut list: Vec<Arc<Toxic>> = self.active().into_iter().filter(|t| t.name != toxic.name).collect();
        list.push(toxic.clone());
        self.list.store(Arc::new(list));
        self.changes.send_modify(|g| *g += 1);
        tracing::warn!(toxic = %toxic.name, kind = toxic.spec.toxic.label(), ttl = %toxic.spec.ttl, "fault proxy toxic added");
        toxic
    }

    /// Removes toxics for which `drop` holds; returns how many.
    pub fn remove_where(&self, drop: impl Fn(&Toxic) -> bool) -> usize {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.list.load_full();
        let now = Instant::now();
        let keep: Vec<Arc<Toxic>> = old.iter().filter(|t| t.expires > now && !drop(t)).cloned().collect();
        let removed = old.iter().filter(|t| t.expires > now && drop(t)).count();
        if keep.len() != old.len() {
            self.list.store(Arc::new(keep));
            self.changes.send_modify(|g| *g += 1);
        }
        removed
    }

    /// Disables the proxy (refuse and cut connections) until `ttl` from now, or enables it.
    pub fn set_disabled(&self, ttl: Option<Duration>) {
        let until = ttl.map(|t| Instant::now() + t);
        tracing::warn!(
            disabled = until.is_some(),
            "fault proxy {}",
            if until.is_some() { "disabled (partition)" } else { "enabled" }
        );
        self.disabled_until.send_replace(until);
    }

    pub fn disabled(&self) -> bool {
        matches!(*self.disabled_until.borrow(), Some(t) if t > Instant::now())
    }

    /// Removes expired toxics and ends an expired partition. Runs until aborted.
    pub async fn reap(self: Arc<Self>) {
        let mut disabled = self.disabled_until.subscribe();
        let mut changes = self.changes.subscribe();
        loop {
            let now = Instant::now();
            self.remove_where(|t| t.expires <= now);
            let until = *disabled.borrow_and_update();
            if matches!(until, Some(t) if t <= now) {
                tracing::warn!("fault proxy partition expired (ttl)");
                self.disabled_until.send_replace(None);
            }
            let next = self.list.load().iter().map(|t| t.expires).chain(until).min();
            let wait = next.map(|t| t.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = disabled.changed() => {}
                _ = changes.changed() => {}
            }
        }
    }
}
