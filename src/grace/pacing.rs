//! Replay pacing: a token bucket whose rate ramps up after recovery and which live traffic
//! drains first.
//!
//! Slow start follows Envoy's formula with aggression 1: the rate grows linearly from 10 % to
//! `forward.rate` over `forward.ramp` after the canary succeeds, so a backend that just came back
//! is not hit by the whole backlog at once (research §2.18, §5.6). Live priority: every live
//! settlement on the route takes a token from the same bucket without waiting (the balance may go
//! negative, down to one second's worth), so live + replay together stay within `forward.rate`
//! and the backlog only gets what live traffic leaves.
//! Rates are requests per second (floats are fine here: no money is involved).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How much unused budget may pile up, in time at the current rate. Timers wake late (tokio's
/// have a 1 ms tick, and a loaded host adds more), so a bucket that holds at most one token
/// loses the budget of every late wake-up: at 500/s, sleeps of 2 ms that last 3 ms replayed at
/// 320/s (measured: `cargo bench --bench grace_journal -- replay`). 20 ms of budget absorbs
/// that and is still smooth at any scale a backend notices.
const BURST: Duration = Duration::from_millis(20);

/// The share of the full rate the ramp starts at.
pub const RAMP_FLOOR: f64 = 0.1;

/// The rate `elapsed` into a ramp of length `ramp` towards `max` per second.
pub fn ramped_rate(max: f64, elapsed: Duration, ramp: Duration) -> f64 {
    if ramp.is_zero() {
        return max;
    }
    let f = (elapsed.as_secs_f64() / ramp.as_secs_f64()).clamp(RAMP_FLOOR, 1.0);
    max * f
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    last: Instant,
}

/// A token bucket shared by the forwarder (waits for tokens) and live requests (take without
/// waiting).
#[derive(Debug)]
pub struct Pacer {
    bucket: Mutex<Bucket>,
}

impl Pacer {
    pub fn new(rate: f64) -> Pacer {
        Pacer { bucket: Mutex::new(Bucket { tokens: 0.0, rate: rate.max(0.001), last: Instant::now() }) }
    }

    fn refill(b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * b.rate).min((b.rate * BURST.as_secs_f64()).max(1.0));
        b.last = now;
    }

    /// Sets the current rate (ramp step or operator override).
    pub fn set_rate(&self, rate: f64) {
        if let Ok(mut b) = self.bucket.lock() {
            Self::refill(&mut b, Instant::now());
            b.rate = rate.max(0.001);
        }
    }

    pub fn rate(&self) -> f64 {
        self.bucket.lock().map(|b| b.rate).unwrap_or(0.0)
    }

    /// Takes a token for a replay; otherwise how long until one is available.
    pub fn try_take(&self) -> Result<(), Duration> {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&self, now: Instant) -> Result<(), Duration> {
        let Ok(mut b) = self.bucket.lock() else { return Err(Duration::from_millis(100)) };
        Self::refill(&mut b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(((1.0 - b.tokens) / b.rate).clamp(0.0005, 5.0)))
        }
    }

    /// A live request went to the backend: it uses the budget first.
    pub fn note_live(&self) {
        self.note_live_at(Instant::now())
    }

    fn note_live_at(&self, now: Instant) {
        if let Ok(mut b) = self.bucket.lock() {
            Self::refill(&mut b, now);
            b.tokens = (b.tokens - 1.0).max(-b.rate.max(1.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_is_linear_from_the_floor() {
        let ramp = Duration::from_secs(10);
        assert_eq!(ramped_rate(100.0, Duration::ZERO, ramp), 10.0);
        assert_eq!(ramped_rate(100.0, Duration::from_secs(5), ramp), 50.0);
        assert_eq!(ramped_rate(100.0, Duration::from_secs(60), ramp), 100.0);
        assert_eq!(ramped_rate(100.0, Duration::ZERO, Duration::ZERO), 100.0);
    }

    /// Drives the bucket with a simulated clock: `live_every` adds live requests; every sleep
    /// lasts `late` longer than asked, as real timers do.
    fn replayed_in_10s(p: &Pacer, live_every: Option<Duration>) -> u32 {
        replayed_in_10s_late(p, live_every, Duration::ZERO)
    }

    fn replayed_in_10s_late(p: &Pacer, live_every: Option<Duration>, late: Duration) -> u32 {
        let start = Instant::now();
        let mut now = start;
        let mut next_live = start;
        let mut taken = 0;
        while now < start + Duration::from_secs(10) {
            if let Some(every) = live_every {
                while next_live <= now {
                    p.note_live_at(now);
                    next_live += every;
                }
            }
            match p.try_take_at(now) {
                Ok(()) => taken += 1,
                Err(wait) => now += wait.min(Duration::from_millis(50)) + late,
            }
        }
        taken
    }

    #[test]
    fn bucket_keeps_to_the_rate_and_live_traffic_goes_first() {
        let p = Pacer::new(10.0);
        let taken = replayed_in_10s(&p, None);
        assert!((99..=101).contains(&taken), "{taken}");
        // 5 live requests per second leave the replay about half of the 10/s budget.
        let p = Pacer::new(10.0);
        let taken = replayed_in_10s(&p, Some(Duration::from_millis(200)));
        assert!((45..=56).contains(&taken), "{taken}");
    }

    #[test]
    fn timers_that_wake_late_do_not_lower_the_rate() {
        // 500/s asks for 2 ms sleeps; they last 3 ms. The budget of the lost millisecond stays.
        let p = Pacer::new(500.0);
        let taken = replayed_in_10s_late(&p, None, Duration::from_millis(1));
        assert!((4_950..=5_010).contains(&taken), "{taken} in 10 s at 500/s");
        // And it never runs ahead: a whole second of idle time buys at most 20 ms of burst.
        let p = Pacer::new(500.0);
        let later = Instant::now() + Duration::from_secs(1);
        let burst = std::iter::from_fn(|| p.try_take_at(later).ok()).take(1000).count();
        assert_eq!(burst, 10);
    }
}
