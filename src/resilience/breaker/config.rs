//! Breaker configuration: the raw YAML block and the validated [`BreakerConfig`].
//!
//! Everything is checked here once, so the policy never meets an impossible combination (a
//! slow-call rate without a slow-call threshold, a count window smaller than `min_calls`, an
//! open duration longer than its cap).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{Dur, Percent};
use crate::resilience::failure::FailureSet;
use crate::resilience::Problems;

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Set false to switch the breaker off (e.g. on one route of a cluster that has one). Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Outcomes that count as failures: `5xx`, a status 500..599, `429`, `connect_error`, `timeout`,
    /// `reset`. Default `[5xx, connect_error, timeout, reset]` (4xx and 429 are successes).
    #[serde(default)]
    pub failure_on: Option<Vec<String>>,
    /// Trip after this many failures in a row.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// Trip when this share of the calls in the window failed (once `min_calls` is reached).
    /// Default 50% when no other condition is set.
    #[serde(default)]
    pub failure_rate: Option<Percent>,
    /// A call taking at least this long is slow.
    #[serde(default)]
    pub slow_call: Option<Dur>,
    /// Trip when this share of the calls in the window were slow. Needs `slow_call`. Default 100%.
    #[serde(default)]
    pub slow_call_rate: Option<Percent>,
    /// The sliding window: a duration (`10s`, time-based, 10 buckets) or a count (`100 calls`).
    /// Default `10s`.
    #[serde(default)]
    pub window: Option<String>,
    /// Rates are judged only once the window holds this many calls. Default 20.
    #[serde(default)]
    pub min_calls: Option<u32>,
    /// How long the breaker stays open after the first trip. Default 5s.
    #[serde(default)]
    pub open_for: Option<Dur>,
    /// Each trip that follows a failed probe doubles the open time, up to this. Default 60s.
    #[serde(default)]
    pub max_open_for: Option<Dur>,
    /// Open times are shortened by a random share up to this, so a fleet does not probe in step.
    /// Default 20%.
    #[serde(default)]
    pub open_jitter: Option<Percent>,
    /// Probes admitted in half-open; other calls fail fast. Default 3.
    #[serde(default)]
    pub half_open_calls: Option<u32>,
    /// Share of the probes that must succeed (and not be slow) to close. Default 100%.
    #[serde(default)]
    pub half_open_success: Option<Percent>,
}

/// The sliding window over which rates are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls.
    Count(u32),
    /// The last duration, in [`TIME_BUCKETS`] buckets.
    Time(Duration),
}

/// Buckets of a time-based window (Resilience4j uses one per second; a fixed count keeps memory
/// bounded whatever the window length).
pub const TIME_BUCKETS: u32 = 10;

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Window::Count(n) => format!("{n} calls").serialize(s),
            Window::Time(d) => Dur(*d).serialize(s),
        }
    }
}

impl Window {
    fn parse(s: &str) -> Result<Window, String> {
        let t = s.trim();
        if let Some(n) = t.strip_suffix("calls").or_else(|| t.strip_suffix("call")) {
            return match n.trim().parse::<u32>() {
                Ok(n) if (1..=100_000).contains(&n) => Ok(Window::Count(n)),
                _ => Err(format!("invalid window {s:?}: the count must be 1..100000, e.g. `100 calls`")),
            };
        }
        let d = Dur::parse(t)
            .map_err(|_| format!("invalid window {s:?}: expected a duration (10s) or a count (100 calls)"))?;
        if d.0 < Duration::from_millis(100) || d.0 > Duration::from_secs(3600) {
            return Err(format!("window {s:?} must be between 100ms and 1h"));
        }
        Ok(Window::Time(d.0))
    }
}

/// A validated breaker configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerConfig {
    pub enabled: bool,
    pub failure_on: FailureSet,
    pub consecutive_failures: Option<u32>,
    pub failure_rate: Option<Percent>,
    #[serde(serialize_with = "ser_opt_dur")]
    pub slow_call: Option<Duration>,
    pub slow_call_rate: Percent,
    pub window: Window,
    pub min_calls: u32,
    #[serde(serialize_with = "ser_dur")]
    pub open_for: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub max_open_for: Duration,
    pub open_jitter: Percent,
    pub half_open_calls: u32,
    pub half_open_success: Percent,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    Dur(*d).serialize(s)
}

fn ser_opt_dur<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    d.map(Dur).serialize(s)
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failure_on: FailureSet::DEFAULT,
            consecutive_failures: None,
            failure_rate: Some(Percent::from_percent(50)),
            slow_call: None,
            slow_call_rate: Percent::from_percent(100),
            window: Window::Time(Duration::from_secs(10)),
            min_calls: 20,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            open_jitter: Percent::from_percent(20),
            half_open_calls: 3,
            half_open_success: Percent::from_percent(100),
        }
    }
}

fn rate(p: &mut Problems, key: &'static str, v: Option<Percent>) -> Option<Percent> {
    if let Some(r) = v {
        if r.basis_points() == 0 || r.basis_points() > 10_000 {
            p.push(key, "must be in (0%, 100%]");
        }
    }
    v
}

impl RawBreaker {
    /// Validates the block; problems are `(key, message)` pairs under `breaker`.
    pub fn check(&self, p: &mut Problems) -> BreakerConfig {
        let d = BreakerConfig::default();
        let failure_on = match &self.failure_on {
            Some(list) => FailureSet::parse(list).unwrap_or_else(|e| {
                p.push("failure_on", e);
                FailureSet::DEFAULT
            }),
            None => FailureSet::DEFAULT,
        };
        let window = match &self.window {
            Some(w) => Window::parse(w).unwrap_or_else(|e| {
                p.push("window", e);
                d.window
            }),
            None => d.window,
        };
        let min_calls = self.min_calls.unwrap_or(d.min_calls);
        if min_calls == 0 {
            p.push("min_calls", "must be at least 1");
        }
        if let Window::Count(n) = window {
            if n < min_calls {
                p.push("window", format!("a window of {n} calls can never reach min_calls ({min_calls})"));
            }
        }
        if self.consecutive_failures == Some(0) {
            p.push("consecutive_failures", "must be at least 1");
        }
        let slow_call = self.slow_call.map(|d| d.0);
        if slow_call.is_some_and(|d| d.is_zero()) {
            p.push("slow_call", "must be greater than 0");
        }
        if self.slow_call_rate.is_some() && slow_call.is_none() {
            p.push("slow_call_rate", "needs slow_call (the duration above which a call is slow)");
        }
        let slow_call_rate = rate(p, "slow_call_rate", self.slow_call_rate).unwrap_or(d.slow_call_rate);
        let explicit_rate = rate(p, "failure_rate", self.failure_rate);
        let failure_rate = match (explicit_rate, self.consecutive_failures, slow_call) {
            (Some(r), _, _) => Some(r),
            (None, None, None) => d.failure_rate,
            _ => None,
        };
        let open_for = self.open_for.map(|d| d.0).unwrap_or(d.open_for);
        let max_open_for = self.max_open_for.map(|d| d.0).unwrap_or(d.max_open_for.max(open_for));
        if open_for.is_zero() {
            p.push("open_for", "must be greater than 0");
        }
        if max_open_for < open_for {
            p.push("max_open_for", "must be at least open_for");
        }
        let open_jitter = self.open_jitter.unwrap_or(d.open_jitter);
        if open_jitter.basis_points() >= 10_000 {
            p.push("open_jitter", "must be below 100%");
        }
        let half_open_calls = self.half_open_calls.unwrap_or(d.half_open_calls);
        if !(1..=1000).contains(&half_open_calls) {
            p.push("half_open_calls", "must be between 1 and 1000");
        }
        let half_open_success = rate(p, "half_open_success", self.half_open_success).unwrap_or(d.half_open_success);
        BreakerConfig {
            enabled: self.enabled.unwrap_or(true),
            failure_on,
            consecutive_failures: self.consecutive_failures,
            failure_rate,
            slow_call,
            slow_call_rate,
            window,
            min_calls,
            open_for,
            max_open_for,
            open_jitter,
            half_open_calls,
            half_open_success,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> (BreakerConfig, Vec<(&'static str, String)>) {
        let raw: RawBreaker = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        let c = raw.check(&mut p);
        (c, p.0)
    }

    #[test]
    fn defaults_and_windows() {
        let (c, p) = check("{}");
        assert!(p.is_empty());
        assert_eq!(c, BreakerConfig::default());
        let (c, p) = check("{ window: 50 calls, min_calls: 10, consecutive_failures: 5 }");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.window, Window::Count(50));
        assert_eq!(c.failure_rate, None, "an explicit condition replaces the default rate");
    }

    #[test]
    fn rejects_impossible_combinations() {
        let (_, p) = check("{ window: 5 calls, min_calls: 10 }");
        assert_eq!(p[0].0, "window");
        let (_, p) = check("{ slow_call_rate: 50% }");
        assert_eq!(p[0].0, "slow_call_rate");
        let (_, p) = check("{ open_for: 10s, max_open_for: 5s }");
        assert_eq!(p[0].0, "max_open_for");
        let (_, p) = check("{ failure_rate: 0% }");
        assert_eq!(p[0].0, "failure_rate");
        let (_, p) = check("{ window: soon }");
        assert!(p[0].1.contains("100 calls"), "{p:?}");
    }
}
