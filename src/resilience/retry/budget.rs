//! The retry budget: retries may add at most `ratio` of the requests, plus a floor per second.
//!
//! Finagle's design, as tower's `TpsBudget` and Linkerd's ServiceProfiles use it: every request
//! deposits `ratio` of a token, every retry withdraws a whole one, and deposits expire after
//! `window` (kept in ten slots, so the budget follows the current traffic). A reserve of
//! `min_per_second * window` tokens lets a quiet client retry at all. When everything fails,
//! retries are therefore bounded by `ratio * requests + min_per_second * window` per window,
//! however many attempts each request is allowed: a brown-out cannot become a retry storm.
//! Why not just "max attempts"? Because 3 attempts per request triples the load exactly when
//! the backend is least able to take it (tower's budget documentation makes the same case).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const SLOTS: usize = 10;
/// Fixed-point unit: one retry is worth this much (so a 20% ratio deposits 2_000 per request).
const ONE: i64 = 10_000;

#[derive(Debug)]
struct Slots {
    /// Net balance deposited/withdrawn in each slot.
    values: [i64; SLOTS],
    /// Index (since `origin`) of the slot currently written.
    current: u64,
}

/// A retry budget shared by every request of one scope (cluster, or route with its own block).
#[derive(Debug)]
pub struct Budget {
    slots: Mutex<Slots>,
    origin: Instant,
    slot_width: Duration,
    deposit: i64,
    reserve: i64,
}

impl Budget {
    /// `ratio_bp`: basis points of a retry each request earns.
    pub fn new(ratio_bp: u32, min_per_second: u32, window: Duration) -> Budget {
        let window = window.max(Duration::from_secs(1));
        Budget {
            slots: Mutex::new(Slots { values: [0; SLOTS], current: 0 }),
            origin: Instant::now(),
            slot_width: window / SLOTS as u32,
            deposit: i64::from(ratio_bp),
            reserve: i64::from(min_per_second) * window.as_secs() as i64 * ONE,
        }
    }

    fn with_slots<T>(&self, f: impl FnOnce(&mut Slots) -> T) -> Option<T> {
        let index = (Instant::now().saturating_duration_since(self.origin).as_nanos()
            / self.slot_width.as_nanos().max(1)) as u64;
        let mut s = self.slots.lock().ok()?;
        // Expire the slots we moved past (all of them after a long quiet spell).
        let steps = index.saturating_sub(s.current).min(SLOTS as u64);
        for i in 1..=steps {
            let slot = ((s.current + i) % SLOTS as u64) as usize;
            s.values[slot] = 0;
        }
        s.current = s.current.max(index);
        Some(f(&mut s))
    }

    /// Every request earns its share of a retry.
    pub fn deposit(&self) {
        let deposit = self.deposit;
        self.with_slots(|s| s.values[(s.current % SLOTS as u64) as usize] += deposit);
    }

    /// Takes one retry if the budget has it.
    pub fn withdraw(&self) -> bool {
        let reserve = self.reserve;
        self.with_slots(|s| {
            let balance: i64 = s.values.iter().sum::<i64>() + reserve;
            if balance >= ONE {
                s.values[(s.current % SLOTS as u64) as usize] -= ONE;
                true
            } else {
                false
            }
        })
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_ratio_plus_reserve_then_refills() {
        let b = Budget::new(2_000, 1, Duration::from_secs(10));
        for _ in 0..100 {
            b.deposit();
        }
        // 20% of 100 requests + 1/s * 10s.
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 30);
        // Deposits (and withdrawals) expire with the window: the reserve is there again.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!((0..100).filter(|_| b.withdraw()).count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ratio_and_zero_floor_never_retries() {
        let b = Budget::new(0, 0, Duration::from_secs(10));
        b.deposit();
        assert!(!b.withdraw());
    }
}
