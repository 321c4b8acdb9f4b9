//! The set of active faults of one sidecar, each with its deadline.
//!
//! The request path reads an immutable snapshot (`ArcSwap`) and skips expired entries itself,
//! so a fault stops acting at its TTL even before the reaper gets to it; the reaper
//! ([`Faults::reap`], an owned background task of the app) removes expired entries and logs
//! them. Nothing outside this process has to be alive for a fault to end: that is the
//! dead-man switch drill runners rely on.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::fault::FaultSpec;

/// One fault in force.
#[derive(Debug)]
pub struct ActiveFault {
    pub id: String,
    pub spec: FaultSpec,
    pub expires: Instant,
    pub created_unix_ms: u64,
    /// Attempts this fault has acted on.
    pub injected: AtomicU64,
}

impl ActiveFault {
    pub fn live(&self, now: Instant) -> bool {
        now < self.expires
    }

    /// True when an attempt to `cluster`/`route`/`endpoint` is in this fault's target.
    pub fn targets(&self, cluster: &str, route: Option<&str>, endpoint: &str) -> bool {
        self.spec.cluster == cluster
            && self.spec.route.as_deref().is_none_or(|r| Some(r) == route)
            && self.spec.endpoint.as_deref().is_none_or(|e| e == endpoint)
    }

    /// What `GET /chaos/faults` shows.
    pub fn describe(&self, now: Instant) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.spec).unwrap_or_default();
        v["id"] = self.id.clone().into();
        v["kind"] = self.spec.fault.label().into();
        v["created_unix_ms"] = self.created_unix_ms.into();
        v["expires_in_ms"] = (self.expires.saturating_duration_since(now).as_millis() as u64).into();
        v["injected"] = self.injected.load(Ordering::Relaxed).into();
        v
    }
}

/// All active faults; shared by every runtime generation of one app.
#[derive(Debug, Default)]
pub struct Faults {
    snapshot: ArcSwap<Vec<Arc<ActiveFault>>>,
    /// The snapshot's length, stored after it: the path's check for "no fault at all" reads
    /// this word instead of loading the snapshot (an `arc_swap` load was ~70 instructions per
    /// request, `bench/profile.py`, session 26).
    len: AtomicUsize,
    write: Mutex<()>,
    next_id: AtomicU64,
    changed: Notify,
}

/// Why a fault was not added.
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    TooMany(usize),
}

impl Faults {
    /// The faults in force now (expired ones are skipped even before the reaper runs).
    pub fn active(&self) -> Vec<Arc<ActiveFault>> {
        let now = Instant::now();
        self.snapshot.load().iter().filter(|f| f.live(now)).cloned().collect()
    }

    /// True when no fault was ever left in the set: the path's fast exit.
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Publishes a new set (the caller holds `write`).
    fn publish(&self, list: Vec<Arc<ActiveFault>>) {
        let n = list.len();
        self.snapshot.store(Arc::new(list));
        self.len.store(n, Ordering::Release);
        self.changed.notify_one();
    }

    /// The current snapshot, expired entries included (the path filters with one `now`).
    pub fn snapshot(&self) -> Arc<Vec<Arc<ActiveFault>>> {
        self.snapshot.load_full()
    }

    /// Adds a validated fault; a fault with the same id is replaced.
    pub fn add(&self, spec: FaultSpec, max_faults: usize) -> Result<Arc<ActiveFault>, AddError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let id = spec.id.clone().unwrap_or_else(|| format!("f{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1));
        let mut list: Vec<Arc<ActiveFault>> =
            self.snapshot.load().iter().filter(|f| f.live(now) && f.id != id).cloned().collect();
        if list.len() >= max_faults {
            return Err(AddError::TooMany(max_faults));
        }
        let created_unix_ms =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let fault =
            Arc::new(ActiveFault { id, expires: now + spec.ttl.0, spec, created_unix_ms, injected: AtomicU64::new(0) });
        list.push(fault.clone());
        self.publish(list);
        tracing::warn!(fault = %fault.id, kind = fault.spec.fault.label(), cluster = %fault.spec.cluster, ttl = %fault.spec.ttl, "chaos fault injected");
        Ok(fault)
    }

    /// Removes one fault; false when no such fault is active.
    pub fn remove(&self, id: &str) -> bool {
        let removed = self.retain(|f| f.id != id) > 0;
        if removed {
            tracing::warn!(fault = %id, "chaos fault removed");
        }
        removed
    }

    /// Removes every fault at once (the drill abort). Returns how many were active.
    pub fn clear(&self) -> usize {
        let n = self.retain(|_| false);
        if n > 0 {
            tracing::warn!(count = n, "all chaos faults removed");
        }
        n
    }

    /// Keeps faults for which `keep` holds (and that have not expired); returns how many live
    /// faults were dropped.
    fn retain(&self, keep: impl Fn(&ActiveFault) -> bool) -> usize {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let old = self.snapshot.load_full();
        let list: Vec<Arc<ActiveFault>> = old.iter().filter(|f| f.live(now) && keep(f)).cloned().collect();
        let dropped_live = old.iter().filter(|f| f.live(now) && !keep(f)).count();
        if list.len() != old.len() {
            self.publish(list);
        }
        dropped_live
    }

    /// The reaper: removes faults as they expire. Runs until the app aborts it.
    pub async fn reap(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let snapshot = self.snapshot.load_full();
            for f in snapshot.iter().filter(|f| !f.live(now)) {
                tracing::warn!(fault = %f.id, injected = f.injected.load(Ordering::Relaxed), "chaos fault expired (ttl)");
            }
            self.retain(|_| true);
            let next = self.snapshot.load().iter().map(|f| f.expires).min();
            let wait = next.map(|t| t.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::fault::FaultKind;
    use crate::config::Dur;

    fn spec(id: Option<&str>, ttl_ms: u64) -> FaultSpec {
        FaultSpec {
            id: id.map(String::from),
            cluster: "payment".into(),
            route: None,
            endpoint: None,
            fault: FaultKind::Reset,
            percent: None,
            ttl: Dur(Duration::from_millis(ttl_ms)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn faults_expire_by_ttl_without_anyone_asking() {
        let faults = Arc::new(Faults::default());
        let reaper = tokio::spawn(faults.clone().reap());
        faults.add(spec(None, 1_000), 10).unwrap();
        faults.add(spec(Some("long"), 5_000), 10).unwrap();
        assert_eq!(faults.active().len(), 2);
        tokio::time::sleep(Duration::from_millis(1_001)).await;
        assert_eq!(faults.active().len(), 1, "the path skips an expired fault at once");
        tokio::task::yield_now().await;
        assert_eq!(faults.snapshot().len(), 1, "the reaper removed it");
        tokio::time::sleep(Duration::from_secs(5)).await;
        tokio::task::yield_now().await;
        assert!(faults.is_empty());
        reaper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn replace_remove_clear_and_cap() {
        let faults = Faults::default();
        assert!(faults.is_empty());
        faults.add(spec(Some("a"), 10_000), 2).unwrap();
        assert!(!faults.is_empty(), "the path sees an added fault");
        faults.add(spec(Some("a"), 20_000), 2).unwrap();
        assert_eq!(faults.active().len(), 1, "same id replaces");
        faults.add(spec(None, 10_000), 2).unwrap();
        assert_eq!(faults.add(spec(None, 10_000), 2).unwrap_err(), AddError::TooMany(2));
        assert!(faults.remove("a"));
        assert!(!faults.remove("a"));
        faults.add(spec(None, 10_000), 2).unwrap();
        assert_eq!(faults.clear(), 2);
        assert!(faults.active().is_empty());
        assert!(faults.is_empty(), "and a cleared set as empty");
    }
}
