//! The result of a run: what `lifeline load --json` writes and what `lifeline drill` reads.
//!
//! Latencies are integer microseconds measured from each arrival's scheduled time. `errors`
//! counts what an availability objective holds against the server (5xx, 429, timeouts,
//! connection failures); `failed` is everything that was not 1xx–3xx (so also 401 and 402).

use std::collections::BTreeMap;

use serde::Serialize;

use super::stats::PhaseInfo;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `http://host:port` the run was aimed at.
    pub target: String,
    /// `http/1.1` or `h2c`.
    pub protocol: &'static str,
    pub connections: usize,
    pub started_unix_ms: u64,
    pub duration_s: f64,
    pub totals: Summary,
    pub phases: Vec<PhaseReport>,
    /// One entry per second of the run.
    pub timeline: Vec<Second>,
    /// One record per settlement sent, to reconcile against the payment ledger.
    pub settlements: Vec<SettlementRecord>,
    /// Present for `--find-knee`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knee: Option<KneeReport>,
}

/// Counts and latency of a set of arrivals.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub errors: u64,
    /// `errors / completed`, 0..1.
    pub error_rate: f64,
    /// Completed arrivals per second.
    pub throughput: f64,
    pub latency: Latency,
    /// By status code or `timeout` / `connect_error` / `io_error`.
    pub by_result: BTreeMap<String, u64>,
    /// By request kind (`request`, `verify`, `settle`, `card_query`).
    pub by_kind: BTreeMap<String, u64>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: u64,
}

/// One phase of the plan and what it measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    #[serde(flatten)]
    pub info: PhaseInfo,
    #[serde(flatten)]
    pub summary: Summary,
}

/// One second of the timeline: arrivals due in it (`sent`), and completions in it.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: u64,
    pub offered_rate: f64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub errors: u64,
    pub by_result: BTreeMap<String, u64>,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// One settlement the run sent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SettlementRecord {
    pub idempotency_key: String,
    /// Masked (first 3, last 4): reports are shared, card numbers are personal data.
    pub card_no: String,
    pub amount_fen: u64,
    /// The status received, if any answer came.
    pub status: Option<u16>,
    /// The status as text, or `timeout` / `connect_error` / `io_error`.
    pub outcome: String,
    /// When it was due, seconds from the start of the run.
    pub sent_at_s: f64,
    pub latency_us: u64,
}

/// The outcome of `--find-knee`.
#[derive(Debug, Clone, Serialize)]
pub struct KneeReport {
    pub objective_p99_us: u64,
    pub objective_error_rate: f64,
    pub steps: Vec<KneeStep>,
    /// The highest offered rate that met the objective (None if even the first step broke it).
    pub knee_rate: Option<f64>,
    /// The first rate that broke it (None if the search reached its maximum).
    pub broke_at: Option<f64>,
    pub reason: String,
}

/// One step of the knee search.
#[derive(Debug, Clone, Serialize)]
pub struct KneeStep {
    pub offered_rate: f64,
    pub throughput: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub error_rate: f64,
    pub held: bool,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"cannot serialize: {e}\"}}"))
    }

    /// A short human summary for the terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let t = &self.totals;
        let l = &t.latency;
        out.push_str(&format!(
            "{} {} with {} connections, {:.1}s\n  sent {}  ok {}  failed {}  errors {} ({:.2}%)  throughput {:.0}/s\n  \
             latency p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
            self.target,
            self.protocol,
            self.connections,
            self.duration_s,
            t.sent,
            t.ok,
            t.failed,
            t.errors,
            t.error_rate * 100.0,
            t.throughput,
            fmt_us(l.p50_us),
            fmt_us(l.p90_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us)
        ));
        let results: Vec<String> = t.by_result.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        out.push_str(&format!("  results {}\n", results.join(", ")));
        if self.phases.len() > 1 {
            for p in &self.phases {
                out.push_str(&format!(
                    "  phase {:<18} throughput {:>8.0}/s  p99 {:>9}  errors {:.2}%\n",
                    p.info.name,
                    p.summary.throughput,
                    fmt_us(p.summary.latency.p99_us),
                    p.summary.error_rate * 100.0
                ));
            }
        }
        if let Some(k) = &self.knee {
            let rate = k.knee_rate.map(|r| format!("{r:.0}/s")).unwrap_or_else(|| "none".into());
            out.push_str(&format!("  knee {rate}: {}\n", k.reason));
        }
        out
    }
}

/// `850µs`, `12.3ms`, `1.20s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}
