//! `--find-knee`: raise the offered rate step by step until the objective breaks.
//!
//! Each step is a constant-rate run of `step_duration` on fresh connections; the objective is a
//! p99 bound and an error-rate bound (5xx, 429 and transport failures over completed requests).
//! Because latency counts from the scheduled time, a server (or a generator) that cannot keep up
//! shows up as a p99 that grows with the step's length: the step breaks instead of reporting the
//! throughput the server happened to manage. The knee is the last rate that held.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::conn::Target;
use super::engine::execute;
use super::plan::{fmt_rate, Plan};
use super::report::{fmt_us, KneeReport, KneeStep, Report};
use super::stats::Collector;
use super::workload::Workload;
use super::{finish, Observer};

/// How to grow the rate between steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Add this many requests per second.
    Add(f64),
    /// Multiply by this factor (> 1).
    Mul(f64),
}

impl Step {
    /// `500` or `+500` (add), `x1.5` or `*1.5` (multiply).
    pub fn parse(s: &str) -> Result<Step, String> {
        let s = s.trim();
        let bad = || format!("invalid step {s:?}: expected +N (add N/s) or xF (multiply by F > 1)");
        if let Some(f) = s.strip_prefix('x').or_else(|| s.strip_prefix('*')) {
            let f: f64 = f.parse().map_err(|_| bad())?;
            return if f > 1.0 && f.is_finite() { Ok(Step::Mul(f)) } else { Err(bad()) };
        }
        let n: f64 = s.strip_prefix('+').unwrap_or(s).parse().map_err(|_| bad())?;
        if n > 0.0 && n.is_finite() {
            Ok(Step::Add(n))
        } else {
            Err(bad())
        }
    }

    pub fn next(self, rate: f64) -> f64 {
        match self {
            Step::Add(n) => rate + n,
            Step::Mul(f) => (rate * f).round(),
        }
    }
}

/// The search: where to start, how to step, where to stop, and the objective.
#[derive(Debug, Clone)]
pub struct KneeSearch {
    pub start_rate: f64,
    pub step: Step,
    pub max_rate: f64,
    pub step_duration: Duration,
    pub max_p99: Duration,
    /// 0..1.
    pub max_error_rate: f64,
    pub workload: Workload,
}

/// Runs the search; the report has one phase per step and [`Report::knee`] set.
pub async fn find_knee(search: &KneeSearch, target: &Target, observer: &mut dyn Observer) -> Result<Report, String> {
    if !(search.start_rate > 0.0 && search.start_rate <= search.max_rate) {
        return Err(format!(
            "the start rate {} must be positive and at most the maximum {}",
            search.start_rate, search.max_rate
        ));
    }
    let started = super::unix_ms();
    let stop = CancellationToken::new();
    let mut collector = Collector::new();
    let mut steps = Vec::new();
    let mut rate = search.start_rate;
    let (mut knee_rate, mut broke_at) = (None, None);
    let reason = loop {
        let plan = Plan::fixed(rate, search.step_duration, search.workload.clone());
        execute(&plan, target, observer, &stop, &mut collector).await?;
        let Some((info, acc)) = collector.phases.last() else { return Err("no step was run".into()) };
        let s = acc.summary(info.duration_s);
        let step = KneeStep {
            offered_rate: rate,
            throughput: s.throughput,
            p50_us: s.latency.p50_us,
            p99_us: s.latency.p99_us,
            p999_us: s.latency.p999_us,
            error_rate: s.error_rate,
            held: verdict(&s.latency, s.error_rate, search).is_none(),
        };
        observer.knee_step(&step);
        steps.push(step);
        if let Some(why) = verdict(&s.latency, s.error_rate, search) {
            broke_at = Some(rate);
            break format!("broke at {}/s: {why}", fmt_rate(rate));
        }
        knee_rate = Some(rate);
        let next = search.step.next(rate);
        if next > search.max_rate {
            break format!("held up to the search maximum ({}/s); the knee is higher", fmt_rate(search.max_rate));
        }
        rate = next;
    };
    let knee = KneeReport {
        objective_p99_us: search.max_p99.as_micros() as u64,
        objective_error_rate: search.max_error_rate,
        steps,
        knee_rate,
        broke_at,
        reason,
    };
    Ok(finish(collector, target, started, Some(knee)))
}

/// Why a step broke the objective, or `None` if it held.
fn verdict(latency: &super::report::Latency, error_rate: f64, search: &KneeSearch) -> Option<String> {
    let max = search.max_p99.as_micros() as u64;
    if latency.p99_us > max {
        return Some(format!("p99 {} > {}", fmt_us(latency.p99_us), fmt_us(max)));
    }
    if error_rate > search.max_error_rate {
        return Some(format!("error rate {:.2}% > {:.2}%", error_rate * 100.0, search.max_error_rate * 100.0));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_grow() {
        assert_eq!(Step::parse("500").unwrap(), Step::Add(500.0));
        assert_eq!(Step::parse("+250").unwrap(), Step::Add(250.0));
        assert_eq!(Step::parse("x1.5").unwrap(), Step::Mul(1.5));
        assert!(Step::parse("x1").is_err());
        assert!(Step::parse("-5").is_err());
        assert!(Step::parse("fast").is_err());
        assert_eq!(Step::Mul(1.5).next(1000.0), 1500.0);
        assert_eq!(Step::Add(100.0).next(1000.0), 1100.0);
    }
}
