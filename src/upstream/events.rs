//! The decision log of a cluster: every health change, ejection, reinstatement, failover,
//! failback, panic and DNS change, each with the evidence it was decided on.
//!
//! Users of Envoy and Istio ask *why* an endpoint was ejected and get counters at best (see the
//! research notes, section 3.1). Here each decision is one record, served by
//! `GET /clusters/events` and logged at INFO. The log is bounded (oldest records drop first) and
//! shared by the cluster's successive configs, so a reload does not erase history.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// Records kept per cluster.
pub const CAPACITY: usize = 512;

/// One decision.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increasing per cluster; `?since=` pages on it.
    pub seq: u64,
    pub at_unix_ms: u64,
    pub cluster: String,
    /// `health_changed`, `ejected`, `ejection_skipped`, `reinstated`, `failover`, `failback`,
    /// `ramp_complete`, `panic`, `fail_fast`, `recovered`, `dns_changed`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    pub message: String,
    pub evidence: serde_json::Value,
}

/// A bounded, append-only log.
#[derive(Debug, Default)]
pub struct EventLog {
    inner: Mutex<(u64, VecDeque<Event>)>,
}

/// What a background task reports; the log stamps sequence and time.
pub struct NewEvent<'a> {
    pub cluster: &'a str,
    pub kind: &'static str,
    pub endpoint: Option<&'a str>,
    pub priority: Option<u32>,
    pub message: String,
    pub evidence: serde_json::Value,
}

impl EventLog {
    pub fn push(&self, e: NewEvent<'_>) {
        tracing::info!(
            target: "lifeline::upstream",
            cluster = e.cluster,
            kind = e.kind,
            endpoint = e.endpoint.unwrap_or("-"),
            evidence = %e.evidence,
            "{}",
            e.message
        );
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0 += 1;
        let event = Event {
            seq: guard.0,
            at_unix_ms: unix_ms(SystemTime::now()),
            cluster: e.cluster.to_string(),
            kind: e.kind,
            endpoint: e.endpoint.map(str::to_string),
            priority: e.priority,
            message: e.message,
            evidence: e.evidence,
        };
        if guard.1.len() >= CAPACITY {
            guard.1.pop_front();
        }
        guard.1.push_back(event);
    }

    /// Records with `seq > since`, oldest first.
    pub fn since(&self, since: u64) -> Vec<Event> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.iter().filter(|e| e.seq > since).cloned().collect()
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_paged() {
        let log = EventLog::default();
        for i in 0..(CAPACITY + 10) {
            log.push(NewEvent {
                cluster: "c",
                kind: "ejected",
                endpoint: None,
                priority: None,
                message: format!("{i}"),
                evidence: serde_json::Value::Null,
            });
        }
        let all = log.since(0);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].seq, 11);
        assert_eq!(log.since((CAPACITY + 8) as u64).len(), 2);
    }
}
