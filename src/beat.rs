//! The control plane's housekeeping beat: periodic work lands on one grid of instants.
//!
//! An idle sidecar's cost is its wake-ups: on a virtual machine each one costs the thread about
//! 100 µs of CPU (BENCHMARKS.md, session 33), on every pod. The control plane has several
//! once-a-second chores (the pool sweep, the memory-release check, the config-file poll, the
//! breakers' bucket ends). Each on its own phase, every one of them woke the thread on its own,
//! and twice: tokio's timer wheel files a timer a second away in 64 ms slots and wakes at the
//! slot's start before it fires the timer. On one grid their deadlines are the same instant,
//! which the wheel fires in one pass.
//!
//! The grid is the points `ORIGIN + k × period`, `ORIGIN` taken once per process, so tasks with
//! the same period share their deadlines, and a period that divides another's shares every
//! point of the longer one. Health checks stay off it: their jitter is what keeps a fleet of
//! sidecars from probing a backend in lockstep.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The period of the control plane's once-a-second chores.
pub const SECOND: Duration = Duration::from_secs(1);

static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();

/// How far `at` is past the last grid point of `period` at or before it.
fn into_period(at: Instant, period: Duration) -> Duration {
    into_period_from(*ORIGIN.get_or_init(std::time::Instant::now), at.into_std(), period)
}

fn into_period_from(origin: std::time::Instant, at: std::time::Instant, period: Duration) -> Duration {
    let p = period.as_nanos().max(1);
    // A paused tokio clock (tests) may read earlier than the origin: the grid extends back.
    let into = match at.checked_duration_since(origin) {
        Some(d) => d.as_nanos() % p,
        None => (p - origin.duration_since(at).as_nanos() % p) % p,
    };
    Duration::from_nanos(u64::try_from(into).unwrap_or(0))
}

/// The last grid point of `period` at or before `at`.
pub fn floor(at: Instant, period: Duration) -> Instant {
    at - into_period(at, period)
}

/// The first grid point of `period` after `at`.
pub fn next_after(at: Instant, period: Duration) -> Instant {
    floor(at, period) + period.max(Duration::from_nanos(1))
}

/// An interval ticking on the grid of `period`; the first tick is the next grid point. A
/// tick missed (the thread was busy) is skipped, so later ticks stay on the grid.
pub fn interval(period: Duration) -> Interval {
    let mut tick = tokio::time::interval_at(next_after(Instant::now(), period), period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    tick
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test]
    async fn points_of_one_period_are_the_same_instants_whoever_asks_and_when() {
        let t0 = Instant::now();
        let a = next_after(t0, SECOND);
        let b = next_after(t0 + ms(300), SECOND);
        let c = next_after(t0 + ms(1_700), SECOND);
        assert!(a > t0 && a <= t0 + SECOND, "the next point is within one period");
        // Within the same second (or a whole number of them apart) the points agree exactly.
        if b <= a {
            assert_eq!(b, a);
        } else {
            assert_eq!(b, a + SECOND, "300 ms later crossed one point");
        }
        assert_eq!(into_period(c, SECOND), Duration::ZERO, "a grid point is on the grid");
        assert_eq!(into_period(a + ms(250), ms(500)), ms(250), "a shorter period that divides it shares its points");
        assert_eq!(floor(a + ms(999), SECOND), a);
        assert_eq!(floor(a, SECOND), a, "a point is its own floor");
        assert_eq!(next_after(a, SECOND), a + SECOND, "and the next one is a period on");
    }

    #[test]
    fn a_clock_before_the_origin_is_on_the_same_grid() {
        // A paused tokio clock may read earlier than the origin the first caller set.
        let origin = std::time::Instant::now() + Duration::from_secs(10);
        let at = |back: u64| origin - ms(back);
        assert_eq!(into_period_from(origin, at(250), SECOND), ms(750));
        assert_eq!(into_period_from(origin, at(1_000), SECOND), Duration::ZERO);
        assert_eq!(into_period_from(origin, at(3_100), SECOND), ms(900));
        assert_eq!(into_period_from(origin, origin + ms(3_100), SECOND), ms(100));
    }

    #[tokio::test(start_paused = true)]
    async fn an_interval_ticks_on_the_grid_and_skips_what_it_missed() {
        let mut tick = interval(SECOND);
        let first = tick.tick().await;
        assert_eq!(into_period(first, SECOND), Duration::ZERO);
        tokio::time::advance(ms(2_500)).await;
        let late = tick.tick().await;
        let next = tick.tick().await;
        assert_eq!(into_period(next, SECOND), Duration::ZERO, "after a late tick the next is back on the grid");
        assert!(next > late, "missed ticks are skipped, not fired in a burst");
        assert!(next.duration_since(first) >= ms(3_000));
    }
}
