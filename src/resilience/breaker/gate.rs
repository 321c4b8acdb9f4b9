//! What the request path reads: the breaker's state as atomics, written only by the policy task.
//!
//! One `u64` word packs the epoch (bumped on every change), the operator mode and the state, so a
//! request reads all three at once. The epoch travels with the call and back with its outcome;
//! the policy ignores outcomes admitted under an earlier epoch (a slow call admitted while
//! closed must not count as a half-open probe).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::core::State;

/// Operator override of a breaker (Resilience4j's special states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The breaker decides and blocks.
    Normal,
    /// Always admit, record nothing.
    Disabled,
    /// Always refuse.
    ForcedOpen,
    /// Decide and report, never block (a dry run).
    MetricsOnly,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Disabled => "disabled",
            Mode::ForcedOpen => "forced_open",
            Mode::MetricsOnly => "metrics_only",
        }
    }
    fn bits(self) -> u64 {
        match self {
            Mode::Normal => 0,
            Mode::Disabled => 1,
            Mode::ForcedOpen => 2,
            Mode::MetricsOnly => 3,
        }
    }
    fn from_bits(b: u64) -> Mode {
        match b {
            1 => Mode::Disabled,
            2 => Mode::ForcedOpen,
            3 => Mode::MetricsOnly,
            _ => Mode::Normal,
        }
    }
}

fn state_bits(s: State) -> u64 {
    match s {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
    }
}

fn state_from_bits(b: u64) -> State {
    match b {
        1 => State::Open,
        2 => State::HalfOpen,
        _ => State::Closed,
    }
}

/// The path's verdict for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead; report the outcome with this epoch (`record` false: report nothing).
    Yes { epoch: u64, record: bool, probe: bool },
    /// Fail fast; the caller may try again after this long.
    No { retry_after: Duration },
}

/// The shared atomics.
#[derive(Debug)]
pub struct Gate {
    word: AtomicU64,
    probes: AtomicU32,
    /// Milliseconds after `origin` when the breaker will admit probes again.
    next_probe_ms: AtomicU64,
    origin: Instant,
    /// Suggested wait when no probe time is known (half-open full, forced open).
    fallback: Duration,
}

impl Gate {
    pub fn new(fallback: Duration) -> Gate {
        Gate {
            word: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            next_probe_ms: AtomicU64::new(0),
            origin: Instant::now(),
            fallback,
        }
    }

    /// `(epoch, mode, state)` as the path sees them.
    pub fn load(&self) -> (u64, Mode, State) {
        let w = self.word.load(Ordering::Acquire);
        (w >> 8, Mode::from_bits((w >> 4) & 0xf), state_from_bits(w & 0xf))
    }

    /// The policy task publishes a new state (and the number of probes for half-open).
    pub fn publish(&self, epoch: u64, mode: Mode, state: State, probes: u32, next_probe: Option<Instant>) {
        if let Some(at) = next_probe {
            let ms = at.saturating_duration_since(self.origin).as_millis() as u64;
            self.next_probe_ms.store(ms, Ordering::Release);
        }
        // Probes first, so a request that sees the half-open word finds its permits.
        self.probes.store(probes, Ordering::Release);
        self.word.store(epoch << 8 | mode.bits() << 4 | state_bits(state), Ordering::Release);
    }

    /// Time until the next probe, for `Retry-After`.
    pub fn retry_after(&self) -> Duration {
        let at = self.origin + Duration::from_millis(self.next_probe_ms.load(Ordering::Acquire));
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.fallback
        } else {
            left
        }
    }

    /// The request path's only question: may this call go?
    pub fn admit(&self) -> Admit {
        let (epoch, mode, state) = self.load();
        match (mode, state) {
            (Mode::Disabled, _) => Admit::Yes { epoch, record: false, probe: false },
            (Mode::ForcedOpen, _) => Admit::No { retry_after: self.fallback },
            (Mode::MetricsOnly, s) => Admit::Yes { epoch, record: true, probe: s == State::HalfOpen },
            (Mode::Normal, State::Closed) => Admit::Yes { epoch, record: true, probe: false },
            (Mode::Normal, State::Open) => Admit::No { retry_after: self.retry_after() },
            (Mode::Normal, State::HalfOpen) => {
                let took = self.probes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
                match took {
                    Ok(_) => Admit::Yes { epoch, record: true, probe: true },
                    Err(_) => Admit::No { retry_after: self.fallback },
                }
            }
        }
    }

    /// A probe that ended without an outcome (cancelled) gives its permit back.
    pub fn return_probe(&self, epoch: u64) {
        if self.load().0 == epoch {
            self.probes.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_its_probes() {
        let g = Gate::new(Duration::from_secs(1));
        g.publish(3, Mode::Normal, State::HalfOpen, 2, None);
        let admitted = (0..5).filter(|_| matches!(g.admit(), Admit::Yes { probe: true, epoch: 3, .. })).count();
        assert_eq!(admitted, 2);
        g.return_probe(3);
        assert!(matches!(g.admit(), Admit::Yes { .. }));
        g.return_probe(2); // stale epoch: ignored
        assert!(matches!(g.admit(), Admit::No { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn open_answers_with_time_to_next_probe() {
        let g = Gate::new(Duration::from_secs(1));
        g.publish(1, Mode::Normal, State::Open, 0, Some(Instant::now() + Duration::from_millis(2500)));
        assert_eq!(g.admit(), Admit::No { retry_after: Duration::from_millis(2500) });
        g.publish(2, Mode::MetricsOnly, State::Open, 0, None);
        assert!(matches!(g.admit(), Admit::Yes { record: true, .. }));
        g.publish(3, Mode::ForcedOpen, State::Closed, 0, None);
        assert!(matches!(g.admit(), Admit::No { .. }));
    }
}
