//! Retry configuration: the raw YAML block and the validated [`RetryConfig`].

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{Dur, Percent, Size};
use crate::resilience::failure::FailureSet;
use crate::resilience::Problems;

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Set false to switch retries off (e.g. on one route). Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Attempts in total, the first one included. Default 2.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Outcomes worth another attempt: `5xx`, a status 500..599, `429`, `connect_error`, `timeout`,
    /// `reset`. Default `[connect_error, reset, 502, 503, 504]`. Requests that may have reached
    /// the backend are retried only if idempotent or carrying an `Idempotency-Key`.
    #[serde(default)]
    pub retry_on: Option<Vec<String>>,
    /// Timeout of each attempt (the route's timeout still bounds all of them). Default: none.
    #[serde(default)]
    pub per_try_timeout: Option<Dur>,
    /// Backoff range `base..max`: attempt n waits a random time in [0, min(max, base * 2^(n-1))]
    /// (full jitter). Default `25ms..250ms`.
    #[serde(default)]
    pub backoff: Option<String>,
    /// A `Retry-After` up to this long is honoured; a longer one ends the retries. Default 1s.
    #[serde(default)]
    pub retry_after_max: Option<Dur>,
    /// Retries may add at most this share of the requests (Finagle-style retry budget). Default 20%.
    #[serde(default)]
    pub budget: Option<Percent>,
    /// ... plus this many retries per second whatever the traffic. Default 10.
    #[serde(default)]
    pub min_per_second: Option<u32>,
    /// How long a request's deposit stays in the budget. Default 10s.
    #[serde(default)]
    pub budget_window: Option<Dur>,
    /// Request bodies up to this size are kept for replay; larger ones are never retried. Default 64KiB.
    #[serde(default)]
    pub max_replay_body: Option<Size>,
}

/// A validated retry configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryConfig {
    pub enabled: bool,
    pub attempts: u32,
    pub retry_on: FailureSet,
    #[serde(serialize_with = "ser_opt_dur")]
    pub per_try_timeout: Option<Duration>,
    #[serde(serialize_with = "ser_dur")]
    pub backoff_base: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub backoff_max: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub retry_after_max: Duration,
    pub budget: Percent,
    pub min_per_second: u32,
    #[serde(serialize_with = "ser_dur")]
    pub budget_window: Duration,
    pub max_replay_body: u64,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    Dur(*d).serialize(s)
}

fn ser_opt_dur<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    d.map(Dur).serialize(s)
}

/// `[connect_error, reset, 502, 503, 504]`: the outcomes that usually mean "another endpoint or
/// another moment would do better", and never "the request itself is bad".
fn default_retry_on() -> FailureSet {
    let list: Vec<String> = ["connect_error", "reset", "502", "503", "504"].iter().map(|s| s.to_string()).collect();
    FailureSet::parse(&list).unwrap_or(FailureSet::DEFAULT)
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            enabled: true,
            attempts: 2,
            retry_on: default_retry_on(),
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            retry_after_max: Duration::from_secs(1),
            budget: Percent::from_percent(20),
            min_per_second: 10,
            budget_window: Duration::from_secs(10),
            max_replay_body: 64 << 10,
        }
    }
}

fn parse_backoff(s: &str) -> Result<(Duration, Duration), String> {
    let bad = || format!("invalid backoff {s:?}: expected base..max, e.g. 25ms..250ms");
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let base = Dur::parse(a).map_err(|_| bad())?.0;
    let max = Dur::parse(b).map_err(|_| bad())?.0;
    if base.is_zero() || max < base {
        return Err(format!("invalid backoff {s:?}: base must be > 0 and max >= base"));
    }
    Ok((base, max))
}

impl RawRetry {
    /// Validates the block; problems are `(key, message)` pairs under `retry`.
    pub fn check(&self, p: &mut Problems) -> RetryConfig {
        let d = RetryConfig::default();
        let attempts = self.attempts.unwrap_or(d.attempts);
        if !(1..=10).contains(&attempts) {
            p.push("attempts", "must be between 1 and 10 (the first attempt included)");
        }
        let retry_on = match &self.retry_on {
            Some(list) => FailureSet::parse(list).unwrap_or_else(|e| {
                p.push("retry_on", e);
                d.retry_on
            }),
            None => d.retry_on,
        };
        let per_try_timeout = self.per_try_timeout.map(|d| d.0);
        if per_try_timeout.is_some_and(|d| d.is_zero()) {
            p.push("per_try_timeout", "must be greater than 0");
        }
        let (backoff_base, backoff_max) = match &self.backoff {
            Some(s) => parse_backoff(s).unwrap_or_else(|e| {
                p.push("backoff", e);
                (d.backoff_base, d.backoff_max)
            }),
            None => (d.backoff_base, d.backoff_max),
        };
        let budget = self.budget.unwrap_or(d.budget);
        if budget.basis_points() > 10_000 {
            p.push("budget", "must be at most 100%");
        }
        let budget_window = self.budget_window.map(|d| d.0).unwrap_or(d.budget_window);
        if budget_window < Duration::from_secs(1) || budget_window > Duration::from_secs(60) {
            p.push("budget_window", "must be between 1s and 60s");
        }
        RetryConfig {
            enabled: self.enabled.unwrap_or(true),
            attempts,
            retry_on,
            per_try_timeout,
            backoff_base,
            backoff_max,
            retry_after_max: self.retry_after_max.map(|d| d.0).unwrap_or(d.retry_after_max),
            budget,
            min_per_second: self.min_per_second.unwrap_or(d.min_per_second),
            budget_window,
            max_replay_body: self.max_replay_body.map(|s| s.0).unwrap_or(d.max_replay_body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> (RetryConfig, Vec<(&'static str, String)>) {
        let raw: RawRetry = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        let c = raw.check(&mut p);
        (c, p.0)
    }

    #[test]
    fn defaults_and_backoff() {
        let (c, p) = check("{ backoff: 10ms..1s, attempts: 3 }");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!((c.backoff_base, c.backoff_max), (Duration::from_millis(10), Duration::from_secs(1)));
        assert_eq!(c.retry_on.to_strings(), vec!["502", "503", "504", "connect_error", "reset"]);
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(check("{ attempts: 0 }").1[0].0, "attempts");
        assert_eq!(check("{ backoff: 1s..10ms }").1[0].0, "backoff");
        assert_eq!(check("{ budget_window: 500ms }").1[0].0, "budget_window");
        assert_eq!(check("{ retry_on: [teapot] }").1[0].0, "retry_on");
    }
}
