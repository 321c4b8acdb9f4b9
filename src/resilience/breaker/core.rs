//! The breaker's decision logic as a plain state machine: outcomes and time in, transitions out.
//!
//! No atomics, no tasks, no clock of its own, so it can be checked against a reference model
//! (see `tests.rs`). The policy task owns one `Core` and mirrors its state into the gate.
//!
//! Closed: every call goes into the sliding window; the breaker trips on N consecutive
//! failures, or (once `min_calls` calls are in the window) on the failure rate or the slow-call
//! rate reaching its threshold. Open: for `open_for`, doubled on every trip that follows a failed
//! probe, capped at `max_open_for`, shortened by up to `open_jitter`. Half-open: exactly
//! `half_open_calls` probes; it closes once enough of them succeeded (`half_open_success`) and
//! reopens as soon as too many failed to reach that share. A slow probe counts as failed.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::config::BreakerConfig;
use super::window::{Figures, Sliding};

/// How soon the policy task takes uncounted successes that may decide the state (see
/// [`Core::successes_due`]).
pub const SOON: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// Why a transition happened (a bounded set: it is a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    ConsecutiveFailures,
    FailureRate,
    SlowCallRate,
    OpenElapsed,
    ProbesSucceeded,
    ProbeFailed,
    Operator,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::ConsecutiveFailures => "consecutive_failures",
            Reason::FailureRate => "failure_rate",
            Reason::SlowCallRate => "slow_call_rate",
            Reason::OpenElapsed => "open_elapsed",
            Reason::ProbesSucceeded => "probes_succeeded",
            Reason::ProbeFailed => "probe_failed",
            Reason::Operator => "operator",
        }
    }
}

/// What the breaker saw when it decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Evidence {
    #[serde(flatten)]
    pub window: Figures,
    pub failure_rate_bp: u32,
    pub slow_call_rate_bp: u32,
    pub consecutive_failures: u32,
    pub probes_succeeded: u32,
    pub probes_failed: u32,
}

/// One state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
    pub evidence: Evidence,
    /// When the breaker opened: for how long.
    pub open_for: Option<Duration>,
}

/// The breaker's state machine.
pub struct Core {
    cfg: BreakerConfig,
    state: State,
    open_until: Instant,
    window: Sliding,
    consecutive: u32,
    /// Trips since the breaker was last closed; drives the exponential open time.
    trips: u32,
    probes_ok: u32,
    probes_failed: u32,
    /// Returns a number in `0..10_000` (basis points of the jitter to apply).
    jitter: Box<dyn FnMut() -> u32 + Send>,
}

impl Core {
    pub fn new(cfg: BreakerConfig, now: Instant, jitter: Box<dyn FnMut() -> u32 + Send>) -> Core {
        let window = Sliding::new(cfg.window, now);
        Core {
            cfg,
            state: State::Closed,
            open_until: now,
            window,
            consecutive: 0,
            trips: 0,
            probes_ok: 0,
            probes_failed: 0,
            jitter,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// When the breaker will next change on its own (the end of the open period).
    pub fn next_deadline(&self) -> Option<Instant> {
        (self.state == State::Open).then_some(self.open_until)
    }

    /// When the policy task must next take the successes the path counted without ringing it
    /// ([`super::Successes`]), and whether that moment is the end of a time bucket (what was
    /// counted before it belongs in that bucket). `None`: nothing is lost by waiting for the
    /// next failure, probe or operator command.
    ///
    /// While closed, a success only lowers the rates, except the one that brings the window to
    /// `min_calls` with failures or slow calls already in it: it may trip the breaker, so those
    /// are taken [`SOON`]. Otherwise a time window needs its successes at each bucket's end, so
    /// that they count in the bucket they happened in, and a count window needs them with the
    /// next failure only (the path sends those with the successes before them). Half-open or
    /// open (in dry run calls still pass), each success may decide: [`SOON`] as well.
    pub fn successes_due(&self, now: Instant) -> Option<(Instant, bool)> {
        if self.state == State::Closed {
            let f = self.window.figures(now);
            if f.calls >= self.cfg.min_calls || (f.failures == 0 && f.slow == 0) {
                return self.window.bucket_end(now).map(|end| (end, true));
            }
        }
        Some((now + SOON, false))
    }

    /// The figures right now.
    pub fn evidence(&self, now: Instant) -> Evidence {
        let window = self.window.figures(now);
        Evidence {
            window,
            failure_rate_bp: Figures::rate_bp(window.failures, window.calls),
            slow_call_rate_bp: Figures::rate_bp(window.slow, window.calls),
            consecutive_failures: self.consecutive,
            probes_succeeded: self.probes_ok,
            probes_failed: self.probes_failed,
        }
    }

    /// Open → half-open once the open period is over.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        if self.state != State::Open || now < self.open_until {
            return None;
        }
        self.probes_ok = 0;
        self.probes_failed = 0;
        Some(self.go(State::HalfOpen, Reason::OpenElapsed, now))
    }

    /// Records one finished call admitted in the current state.
    pub fn record(&mut self, failed: bool, slow: bool, now: Instant) -> Option<Transition> {
        match self.state {
            State::Open => None,
            State::HalfOpen => self.record_probe(!failed && !slow, now),
            State::Closed => {
                self.window.record(failed, slow, now);
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                let reason = self.trip_reason(now)?;
                Some(self.trip(reason, now))
            }
        }
    }

    /// Records `n` calls that succeeded in time, all at `now`: the transition `n` calls of
    /// [`Core::record`] would make (up to the first: the rest were admitted in the epoch it
    /// ended), at the cost of three. While closed, a success ends any run of failures and lowers
    /// every rate, so among calls at the same instant only two can trip the breaker: the first
    /// (the window may have moved since the last call, leaving a higher rate) and the one that
    /// brings the window to `min_calls`. The checks are made there, and at the end.
    pub fn record_successes(&mut self, n: u64, now: Instant) -> Option<Transition> {
        if self.state != State::Closed {
            // Half-open: each is a probe's answer (or, in dry-run, one past the probes).
            for _ in 0..n {
                if let Some(t) = self.record(false, false, now) {
                    return Some(t);
                }
            }
            return None;
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if n == 0 {
            return None;
        }
        self.consecutive = 0;
        let short = self.cfg.min_calls.saturating_sub(self.window.figures(now).calls);
        let mut done = 0;
        for upto in [1, short.clamp(1, n), n] {
            if upto <= done {
                continue;
            }
            self.window.record_successes(upto - done, now);
            done = upto;
            if let Some(reason) = self.trip_reason(now) {
                return Some(self.trip(reason, now));
            }
        }
        None
    }

    /// Back to closed with an empty window (an operator restored normal operation).
    pub fn reset(&mut self, now: Instant) -> Option<Transition> {
        self.trips = 0;
        let t = (self.state != State::Closed).then(|| self.go(State::Closed, Reason::Operator, now));
        self.window.clear();
        self.consecutive = 0;
        t
    }

    fn trip_reason(&self, now: Instant) -> Option<Reason> {
        if self.cfg.consecutive_failures.is_some_and(|n| self.consecutive >= n) {
            return Some(Reason::ConsecutiveFailures);
        }
        let f = self.window.figures(now);
        if f.calls < self.cfg.min_calls {
            return None;
        }
        let reached = |part: u32, bp: u32| u64::from(part) * 10_000 >= u64::from(bp) * u64::from(f.calls);
        if self.cfg.failure_rate.is_some_and(|r| reached(f.failures, r.basis_points())) {
            return Some(Reason::FailureRate);
        }
        if self.cfg.slow_call.is_some() && reached(f.slow, self.cfg.slow_call_rate.basis_points()) {
            return Some(Reason::SlowCallRate);
        }
        None
    }

    fn record_probe(&mut self, ok: bool, now: Instant) -> Option<Transition> {
        let n = self.cfg.half_open_calls;
        if self.probes_ok + self.probes_failed >= n {
            return None; // dry-run mode lets more than n calls through; only n are probes
        }
        if ok {
            self.probes_ok += 1;
        } else {
            self.probes_failed += 1;
        }
        let required = required_successes(n, self.cfg.half_open_success.basis_points());
        if self.probes_failed > n - required {
            Some(self.trip(Reason::ProbeFailed, now))
        } else if self.probes_ok >= required {
            self.trips = 0;
            let t = self.go(State::Closed, Reason::ProbesSucceeded, now);
            self.window.clear();
            self.consecutive = 0;
            Some(t)
        } else {
            None
        }
    }

    fn trip(&mut self, reason: Reason, now: Instant) -> Transition {
        self.trips += 1;
        let open_for = self.open_duration();
        self.open_until = now + open_for;
        let mut t = self.go(State::Open, reason, now);
        t.open_for = Some(open_for);
        self.window.clear();
        self.consecutive = 0;
        t
    }

    /// `open_for * 2^(trips-1)`, capped, minus up to `open_jitter` of it.
    fn open_duration(&mut self) -> Duration {
        let exp = self.trips.saturating_sub(1).min(30);
        let base = self.cfg.open_for.saturating_mul(1u32 << exp).min(self.cfg.max_open_for);
        let jitter_bp = u128::from(self.cfg.open_jitter.basis_points());
        if jitter_bp == 0 {
            return base;
        }
        let u = u128::from((self.jitter)() % 10_000);
        let cut = base.as_nanos() * jitter_bp * u / 100_000_000;
        base.saturating_sub(Duration::from_nanos(cut as u64))
    }

    fn go(&mut self, to: State, reason: Reason, now: Instant) -> Transition {
        let evidence = self.evidence(now);
        let from = std::mem::replace(&mut self.state, to);
        Transition { from, to, reason, evidence, open_for: None }
    }
}

/// Probes that must succeed: `ceil(n * bp / 10000)`, at least one.
pub fn required_successes(n: u32, bp: u32) -> u32 {
    ((u64::from(n) * u64::from(bp)).div_ceil(10_000) as u32).clamp(1, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Percent;

    #[tokio::test(start_paused = true)]
    async fn open_time_grows_with_jitter_under_the_cap() {
        let cfg = BreakerConfig {
            consecutive_failures: Some(1),
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(5),
            open_jitter: Percent::from_percent(50),
            half_open_calls: 1,
            ..BreakerConfig::default()
        };
        let mut seq = [9_999u32, 0, 5_000, 0, 0].into_iter().cycle();
        let mut core = Core::new(cfg, Instant::now(), Box::new(move || seq.next().unwrap_or(0)));
        let mut got = Vec::new();
        for _ in 0..5 {
            let now = Instant::now();
            let t = core.record(true, false, now).or_else(|| core.record(true, false, now)).unwrap();
            got.push(t.open_for.unwrap());
            tokio::time::advance(t.open_for.unwrap()).await;
            assert_eq!(core.tick(Instant::now()).unwrap().to, State::HalfOpen);
        }
        let ms: Vec<u128> = got.iter().map(|d| d.as_millis()).collect();
        // 1s cut by 49.99%, 2s, 4s cut by 25%, 5s (cap), 5s.
        assert_eq!(ms, vec![500, 2000, 3000, 5000, 5000]);
    }

    proptest::proptest! {
        /// Runs of successes recorded at once leave the breaker as recording them one by one does
        /// (up to the first transition: the rest were admitted in the epoch it ended).
        #[test]
        fn successes_at_once_match_one_by_one(
            count in proptest::option::of(1u32..30),
            min_calls in 1u32..30,
            rate in 1u32..=100,
            slow_rate in 1u32..=100,
            consecutive in proptest::option::of(1u32..6),
            runs in proptest::collection::vec((0u64..40, proptest::bool::ANY, proptest::bool::ANY, 0u64..700), 1..40),
        ) {
            let window = match count {
                Some(n) => crate::resilience::breaker::config::Window::Count(n),
                None => crate::resilience::breaker::config::Window::Time(Duration::from_secs(2)),
            };
            let min_calls = match window {
                crate::resilience::breaker::config::Window::Count(n) => min_calls.min(n),
                _ => min_calls,
            };
            let cfg = BreakerConfig {
                window,
                min_calls,
                failure_rate: Some(Percent::from_percent(rate)),
                slow_call: Some(Duration::from_secs(1)),
                slow_call_rate: Percent::from_percent(slow_rate),
                consecutive_failures: consecutive,
                open_jitter: Percent(0),
                ..BreakerConfig::default()
            };
            let t0 = Instant::now();
            let mut one = Core::new(cfg.clone(), t0, Box::new(|| 0));
            let mut bulk = Core::new(cfg, t0, Box::new(|| 0));
            let mut now = t0;
            for (successes, failed, slow, advance_ms) in runs {
                now += Duration::from_millis(advance_ms);
                let a = one.tick(now).map(|t| t.to);
                let b = bulk.tick(now).map(|t| t.to);
                proptest::prop_assert_eq!(a, b);
                let mut a = None;
                for _ in 0..successes {
                    a = one.record(false, false, now).map(|t| (t.to, t.reason.name()));
                    if a.is_some() {
                        break;
                    }
                }
                let b = bulk.record_successes(successes, now).map(|t| (t.to, t.reason.name()));
                proptest::prop_assert_eq!(a, b, "after {} successes", successes);
                proptest::prop_assert_eq!(one.evidence(now), bulk.evidence(now));
                let a = one.record(failed, slow, now).map(|t| t.to);
                let b = bulk.record(failed, slow, now).map(|t| t.to);
                proptest::prop_assert_eq!(a, b);
                proptest::prop_assert_eq!(one.state(), bulk.state());
            }
        }
    }

    #[test]
    fn required_probe_successes() {
        assert_eq!(required_successes(3, 10_000), 3);
        assert_eq!(required_successes(3, 5_000), 2);
        assert_eq!(required_successes(1, 100), 1);
    }
}
