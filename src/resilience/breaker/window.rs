//! The breaker's sliding window: the last N calls, or the last T in ten buckets.
//!
//! Both keep running totals so a recorded call costs O(1) (count) or O(buckets) (time). They run
//! in the policy task, never on the request path.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::config::{Window, TIME_BUCKETS};

/// Totals over the window at one moment: the evidence a decision is based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Figures {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

impl Figures {
    /// `part / calls` in basis points (0 when empty).
    pub fn rate_bp(part: u32, calls: u32) -> u32 {
        if calls == 0 {
            0
        } else {
            ((u64::from(part) * 10_000) / u64::from(calls)) as u32
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Bucket {
    index: u64,
    figures: Figures,
}

/// Adds a call to a count window of `size`, the oldest leaving when it is full.
fn push_call(size: usize, calls: &mut VecDeque<(bool, bool)>, totals: &mut Figures, failed: bool, slow: bool) {
    if calls.len() == size {
        if let Some((f, s)) = calls.pop_front() {
            totals.calls -= 1;
            totals.failures -= u32::from(f);
            totals.slow -= u32::from(s);
        }
    }
    calls.push_back((failed, slow));
    totals.calls += 1;
    totals.failures += u32::from(failed);
    totals.slow += u32::from(slow);
}

/// A sliding window of call outcomes.
#[derive(Debug)]
pub enum Sliding {
    Count { size: usize, calls: VecDeque<(bool, bool)>, totals: Figures },
    Time { width: Duration, origin: Instant, buckets: Vec<Bucket> },
}

impl Sliding {
    pub fn new(window: Window, origin: Instant) -> Sliding {
        match window {
            Window::Count(n) => Sliding::Count { size: n as usize, calls: VecDeque::new(), totals: Figures::default() },
            Window::Time(d) => Sliding::Time {
                width: (d / TIME_BUCKETS).max(Duration::from_millis(1)),
                origin,
                buckets: vec![Bucket::default(); TIME_BUCKETS as usize],
            },
        }
    }

    /// Index of the time bucket `now` falls in (shared with the reference model in tests).
    pub fn bucket_index(origin: Instant, width: Duration, now: Instant) -> u64 {
        (now.saturating_duration_since(origin).as_nanos() / width.as_nanos().max(1)) as u64
    }

    /// Adds one call.
    pub fn record(&mut self, failed: bool, slow: bool, now: Instant) {
        match self {
            Sliding::Count { size, calls, totals } => push_call(*size, calls, totals, failed, slow),
            Sliding::Time { width, origin, buckets } => {
                let index = Self::bucket_index(*origin, *width, now);
                let slot = &mut buckets[(index % u64::from(TIME_BUCKETS)) as usize];
                if slot.index != index {
                    *slot = Bucket { index, figures: Figures::default() };
                }
                slot.figures.calls += 1;
                slot.figures.failures += u32::from(failed);
                slot.figures.slow += u32::from(slow);
            }
        }
    }

    /// Adds `n` calls that succeeded in time, all at `now`: what `n` calls of
    /// [`Sliding::record`] would leave, in O(min(n, size)) or O(1).
    pub fn record_successes(&mut self, n: u32, now: Instant) {
        if n == 0 {
            return;
        }
        match self {
            Sliding::Count { size, calls, totals } => {
                if n as usize >= *size {
                    // Every call in the window is one of these.
                    calls.clear();
                    calls.resize(*size, (false, false));
                    *totals = Figures { calls: *size as u32, failures: 0, slow: 0 };
                    return;
                }
                for _ in 0..n {
                    push_call(*size, calls, totals, false, false);
                }
            }
            Sliding::Time { width, origin, buckets } => {
                let index = Self::bucket_index(*origin, *width, now);
                let slot = &mut buckets[(index % u64::from(TIME_BUCKETS)) as usize];
                if slot.index != index {
                    *slot = Bucket { index, figures: Figures::default() };
                }
                slot.figures.calls += n;
            }
        }
    }

    /// Totals over the window as of `now`.
    pub fn figures(&self, now: Instant) -> Figures {
        match self {
            Sliding::Count { totals, .. } => *totals,
            Sliding::Time { width, origin, buckets } => {
                let current = Self::bucket_index(*origin, *width, now);
                let oldest = current.saturating_sub(u64::from(TIME_BUCKETS) - 1);
                let mut sum = Figures::default();
                for b in buckets.iter().filter(|b| b.figures.calls > 0 && b.index >= oldest && b.index <= current) {
                    sum.calls += b.figures.calls;
                    sum.failures += b.figures.failures;
                    sum.slow += b.figures.slow;
                }
                sum
            }
        }
    }

    /// The end of the time bucket `now` falls in; `None` for a count window, which has no time.
    pub fn bucket_end(&self, now: Instant) -> Option<Instant> {
        match self {
            Sliding::Count { .. } => None,
            Sliding::Time { width, origin, .. } => {
                let w = width.as_nanos().max(1);
                let into = now.saturating_duration_since(*origin).as_nanos() % w;
                now.checked_add(Duration::from_nanos(u64::try_from(w - into).unwrap_or(u64::MAX)))
            }
        }
    }

    /// Forgets every call (on each state change, so a new period is judged on its own calls).
    pub fn clear(&mut self) {
        match self {
            Sliding::Count { calls, totals, .. } => {
                calls.clear();
                *totals = Figures::default();
            }
            Sliding::Time { buckets, .. } => buckets.iter_mut().for_each(|b| *b = Bucket::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn count_window_keeps_the_last_n() {
        let now = Instant::now();
        let mut w = Sliding::new(Window::Count(3), now);
        for failed in [true, true, false, false] {
            w.record(failed, false, now);
        }
        assert_eq!(w.figures(now), Figures { calls: 3, failures: 1, slow: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn time_window_forgets_old_buckets() {
        let t0 = Instant::now();
        let mut w = Sliding::new(Window::Time(Duration::from_secs(10)), t0);
        w.record(true, true, t0);
        w.record(false, false, t0 + Duration::from_secs(5));
        assert_eq!(w.figures(t0 + Duration::from_secs(9)).calls, 2);
        assert_eq!(w.figures(t0 + Duration::from_secs(10)), Figures { calls: 1, failures: 0, slow: 0 });
        assert_eq!(w.figures(t0 + Duration::from_secs(15)).calls, 0);
        // A slot reused by a later bucket starts from zero.
        w.record(true, false, t0 + Duration::from_secs(20));
        assert_eq!(w.figures(t0 + Duration::from_secs(20)), Figures { calls: 1, failures: 1, slow: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_ends_where_the_next_begins() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let w = Sliding::new(Window::Time(Duration::from_secs(10)), t0);
        assert_eq!(w.bucket_end(t0), Some(t0 + ms(1_000)));
        assert_eq!(w.bucket_end(t0 + ms(2_300)), Some(t0 + ms(3_000)));
        assert_eq!(w.bucket_end(t0 + ms(2_999)), Some(t0 + ms(3_000)));
        assert_eq!(w.bucket_end(t0 + ms(3_000)), Some(t0 + ms(4_000)), "the end is the next bucket's start");
        let end = t0 + ms(3_000);
        let last = end - Duration::from_nanos(1);
        assert_eq!(Sliding::bucket_index(t0, ms(1_000), last), 2, "a call just before the end is in the bucket");
        assert_eq!(Sliding::new(Window::Count(5), t0).bucket_end(t0), None);
    }
}
