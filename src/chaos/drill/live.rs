//! What a drill observes while it runs, shared by the load, the sampler, the probes, the
//! timeline and (at the end) the hypotheses and the report.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// One second of load: arrivals due in it and what became of them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sec {
    pub t: u64,
    pub sent: u64,
    /// Answered 1xx-3xx (a 202 grace receipt counts: the caller was told it is accepted).
    pub ok: u64,
    /// 5xx, 429, timeouts, connection failures: what availability holds against the system.
    pub errors: u64,
    /// Anything that was not 2xx.
    pub failed: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Answers by status code or `timeout` / `connect_error` / `io_error`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_result: BTreeMap<String, u64>,
}

/// One settlement the load sent: the client's side of the ledger.
#[derive(Debug, Clone, Serialize)]
pub struct Settlement {
    pub idempotency_key: String,
    pub status: Option<u16>,
    /// The status as text, or `timeout` / `connect_error` / `io_error`.
    pub outcome: String,
    pub sent_at_s: f64,
    pub latency_us: u64,
}

impl Settlement {
    /// Answered without an error (a business decline such as 402 is an answer; 5xx, 429,
    /// timeouts and broken connections are not).
    pub fn answered(&self) -> bool {
        matches!(self.status, Some(s) if s < 500 && s != 429)
    }

    /// The client was told the settlement happened (201/200) or was accepted (202).
    pub fn acknowledged(&self) -> bool {
        matches!(self.status, Some(200..=202))
    }
}

/// One look at the sidecar's admin API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub t: f64,
    /// The admin API answered.
    pub up: bool,
    /// Breaker state per cluster (`closed`, `open`, `half_open`, ...), when the sidecar has them.
    pub breaker: BTreeMap<String, String>,
    /// Active priority per cluster, when the sidecar reports it.
    pub priority: BTreeMap<String, f64>,
    /// Settlements in the grace journal waiting to be forwarded, when the sidecar has grace.
    pub grace_depth: Option<f64>,
    /// Active-priority changes so far, per cluster (`lifeline_failovers_total`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub failovers: BTreeMap<String, f64>,
    /// Attempts sent upstream so far, per cluster (`lifeline_upstream_requests_total`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream: BTreeMap<String, f64>,
    /// Requests answered so far, per cluster (`lifeline_requests_total`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, f64>,
}

/// One auth probe with a wrong PIN: any 2xx means auth failed open.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub t: f64,
    pub status: Option<u16>,
}

/// Something that happened on the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub t: f64,
    pub kind: String,
    pub detail: String,
}

/// Everything observed so far.
#[derive(Debug, Default)]
pub struct Live {
    pub seconds: Mutex<Vec<Sec>>,
    pub samples: Mutex<Vec<Sample>>,
    pub probes: Mutex<Vec<Probe>>,
    pub events: Mutex<Vec<Event>>,
    pub settlements: Mutex<Vec<Settlement>>,
}

impl Live {
    pub fn event(&self, t: f64, kind: &str, detail: impl Into<String>) {
        let detail = detail.into();
        if let Ok(mut e) = self.events.lock() {
            e.push(Event { t, kind: kind.into(), detail });
        }
    }

    pub fn seconds(&self) -> Vec<Sec> {
        self.seconds.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn last_sample(&self) -> Option<Sample> {
        self.samples.lock().ok().and_then(|s| s.last().cloned())
    }
}
