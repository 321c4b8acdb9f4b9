//! Results: every completed arrival becomes one [`Event`]; the [`Collector`] folds events into HDR
//! histograms per phase, per second and overall, and keeps one record per settlement.
//!
//! Latency is measured from the arrival's *scheduled* time, not from when the request was
//! written: a stalled server delays every later send, and a generator that measured from the
//! send would hide exactly that queueing (coordinated omission, Gil Tene; wrk2 corrects it the
//! same way). Per-second histograms use 2 significant digits (1% resolution, small); phase and
//! overall histograms use 3.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::report::{Latency, PhaseReport, Second, SettlementRecord, Summary};
use super::workload::{key_string, Kind};
use crate::telemetry::redact::mask_card;

/// How one arrival ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The server answered with this status.
    Status(u16),
    /// No complete answer within the request timeout.
    Timeout,
    /// The connection could not be opened (nothing was sent).
    Connect,
    /// The connection broke while the request was in flight.
    Io,
}

impl Outcome {
    pub fn label(self) -> String {
        match self {
            Outcome::Status(s) => s.to_string(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Connect => "connect_error".into(),
            Outcome::Io => "io_error".into(),
        }
    }

    /// 1xx–3xx.
    pub fn is_ok(self) -> bool {
        matches!(self, Outcome::Status(s) if s < 400)
    }

    /// What an availability objective counts against the server: 5xx, 429 and transport
    /// failures. Other 4xx (a wrong PIN, a declined settlement) are answers, not errors.
    pub fn is_error(self) -> bool {
        match self {
            Outcome::Status(s) => s >= 500 || s == 429,
            _ => true,
        }
    }
}

/// One completed arrival, from a connection task to the collector.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// Seconds from the start of the run when it was due.
    pub scheduled: f64,
    /// Seconds from the start of the run when it completed.
    pub done: f64,
    pub phase: usize,
    pub kind: Kind,
    pub outcome: Outcome,
    pub latency_us: u64,
    pub card: u32,
    pub key: Option<u128>,
    pub amount_fen: u64,
}

/// Counters and a histogram.
#[derive(Debug, Clone)]
pub struct Acc {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub errors: u64,
    pub by_result: BTreeMap<Outcome, u64>,
    pub by_kind: BTreeMap<Kind, u64>,
    pub hist: Histogram<u64>,
}

impl Acc {
    fn new(sigfig: u8) -> Acc {
        // 1 µs .. 1 h; `auto` lets a longer outlier grow the histogram instead of being lost.
        let mut hist = Histogram::new_with_bounds(1, 3_600_000_000, sigfig)
            .or_else(|_| Histogram::new(sigfig))
            .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!("2 sig figs is valid")));
        hist.auto(true);
        Acc { sent: 0, ok: 0, failed: 0, errors: 0, by_result: BTreeMap::new(), by_kind: BTreeMap::new(), hist }
    }

    fn complete(&mut self, e: &Event) {
        if e.outcome.is_ok() {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        if e.outcome.is_error() {
            self.errors += 1;
        }
        *self.by_result.entry(e.outcome).or_insert(0) += 1;
        *self.by_kind.entry(e.kind).or_insert(0) += 1;
        let _ = self.hist.record(e.latency_us.max(1));
    }

    pub fn latency(&self) -> Latency {
        let h = &self.hist;
        let q = |q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
        Latency {
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            mean_us: if h.is_empty() { 0 } else { h.mean() as u64 },
        }
    }

    pub fn summary(&self, seconds: f64) -> Summary {
        let done = self.ok + self.failed;
        Summary {
            sent: self.sent,
            ok: self.ok,
            failed: self.failed,
            errors: self.errors,
            error_rate: if done == 0 { 0.0 } else { self.errors as f64 / done as f64 },
            throughput: if seconds > 0.0 { done as f64 / seconds } else { 0.0 },
            latency: self.latency(),
            by_result: self.by_result.iter().map(|(o, n)| (o.label(), *n)).collect(),
            by_kind: self.by_kind.iter().map(|(k, n)| (k.label().to_string(), *n)).collect(),
        }
    }
}

/// Where a phase sits in the run, for its report.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseInfo {
    pub name: String,
    pub start_s: f64,
    pub duration_s: f64,
    pub rate: f64,
    pub end_rate: f64,
}

/// Folds events into the report. One collector may span several runs (the knee search).
pub struct Collector {
    pub(crate) total: Acc,
    pub(crate) phases: Vec<(PhaseInfo, Acc)>,
    seconds: Vec<(f64, Acc)>,
    settlements: Vec<SettlementRecord>,
    /// Added to event times and phase indexes of the current run.
    offset_s: f64,
    phase_base: usize,
    /// Seconds already handed to the observer.
    pub(crate) published: usize,
}

impl Collector {
    pub fn new() -> Collector {
        Collector {
            total: Acc::new(3),
            phases: Vec::new(),
            seconds: Vec::new(),
            settlements: Vec::new(),
            offset_s: 0.0,
            phase_base: 0,
            published: 0,
        }
    }

    /// Starts a run whose phases begin `offset_s` seconds after the collector's start.
    pub fn begin(&mut self, offset_s: f64, phases: impl IntoIterator<Item = PhaseInfo>) {
        self.offset_s = offset_s;
        self.phase_base = self.phases.len();
        for mut p in phases {
            p.start_s += offset_s;
            self.phases.push((p, Acc::new(3)));
        }
    }

    /// The end of the timeline so far, in seconds (where the next run starts).
    pub fn end_s(&self) -> f64 {
        self.phases.last().map(|(p, _)| p.start_s + p.duration_s).unwrap_or(0.0)
    }

    fn second(&mut self, t: f64, offered: f64) -> &mut Acc {
        let i = t.max(0.0) as usize;
        while self.seconds.len() <= i {
            self.seconds.push((offered, Acc::new(2)));
        }
        &mut self.seconds[i].1
    }

    pub fn record(&mut self, e: &Event, cards: Option<&super::cards::CardPool>) {
        let (scheduled, done) = (e.scheduled + self.offset_s, e.done + self.offset_s);
        self.second(scheduled, 0.0).sent += 1;
        self.second(done, 0.0).complete(e);
        self.total.sent += 1;
        self.total.complete(e);
        if let Some((_, acc)) = self.phases.get_mut(self.phase_base + e.phase) {
            acc.sent += 1;
            acc.complete(e);
        }
        if let (Kind::Settle, Some(key)) = (e.kind, e.key) {
            self.settlements.push(SettlementRecord {
                idempotency_key: key_string(key),
                card_no: cards.map(|c| mask_card(c.card(e.card))).unwrap_or_default(),
                amount_fen: e.amount_fen,
                status: match e.outcome {
                    Outcome::Status(s) => Some(s),
                    _ => None,
                },
                outcome: e.outcome.label(),
                sent_at_s: scheduled,
                latency_us: e.latency_us,
            });
        }
    }

    /// Sets the offered rate shown for each second of the current run (for charts).
    pub fn offered(&mut self, run_seconds: f64, rate_at: impl Fn(f64) -> f64) {
        let first = self.offset_s as usize;
        for i in 0..run_seconds.ceil() as usize {
            let r = rate_at(i as f64 + 0.5);
            self.second((first + i) as f64, 0.0);
            if let Some(s) = self.seconds.get_mut(first + i) {
                s.0 = r;
            }
        }
    }

    /// Second `i` of the timeline.
    pub fn second_report(&self, i: usize) -> Option<Second> {
        let (offered, acc) = self.seconds.get(i)?;
        let l = acc.latency();
        Some(Second {
            t: i as u64,
            offered_rate: *offered,
            sent: acc.sent,
            ok: acc.ok,
            failed: acc.failed,
            errors: acc.errors,
            by_result: acc.by_result.iter().map(|(o, n)| (o.label(), *n)).collect(),
            p50_us: l.p50_us,
            p90_us: l.p90_us,
            p99_us: l.p99_us,
            max_us: l.max_us,
        })
    }

    pub fn seconds_len(&self) -> usize {
        self.seconds.len()
    }

    pub fn phase_reports(&self) -> Vec<PhaseReport> {
        self.phases
            .iter()
            .map(|(info, acc)| PhaseReport { info: info.clone(), summary: acc.summary(info.duration_s) })
            .collect()
    }

    pub fn timeline(&self) -> Vec<Second> {
        (0..self.seconds.len()).filter_map(|i| self.second_report(i)).collect()
    }

    pub fn take_settlements(&mut self) -> Vec<SettlementRecord> {
        std::mem::take(&mut self.settlements)
    }
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new()
    }
}
