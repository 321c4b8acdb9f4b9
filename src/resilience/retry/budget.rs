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
//!
//! Every request deposits, few withdraw: a deposit takes no lock and writes only its proxy
//! worker's own cache line (one stripe of slots per worker, as the in-flight counters are).
//! Until session 19 every deposit locked one mutex that all workers shared, so each request
//! moved that line from the other core. Withdrawals and the slot turning over (once per
//! `window / 10`) take the lock; a withdrawal reads every stripe.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::proxy::workers::PerWorker;

const SLOTS: usize = 10;
/// Fixed-point unit: one retry is worth this much (so a 20% ratio deposits 2_000 per request).
const ONE: i64 = 10_000;

/// A retry budget shared by every request of one scope (cluster, or route with its own block).
#[derive(Debug)]
pub struct Budget {
    /// Per worker, the net balance deposited/withdrawn in each slot.
    stripes: PerWorker<[AtomicI64; SLOTS]>,
    /// Index (since `origin`) of the slot currently written: slots after it were zeroed when
    /// it became current.
    current: AtomicU64,
    /// Held to turn slots over and to withdraw.
    turn: Mutex<()>,
    origin: Instant,
    slot_nanos: u64,
    deposit: i64,
    reserve: i64,
}

impl Budget {
    /// `ratio_bp`: basis points of a retry each request earns.
    pub fn new(ratio_bp: u32, min_per_second: u32, window: Duration) -> Budget {
        let window = window.max(Duration::from_secs(1));
        Budget {
            stripes: PerWorker::default(),
            current: AtomicU64::new(0),
            turn: Mutex::new(()),
            origin: Instant::now(),
            slot_nanos: u64::try_from((window / SLOTS as u32).as_nanos()).unwrap_or(u64::MAX).max(1),
            deposit: i64::from(ratio_bp),
            reserve: i64::from(min_per_second) * window.as_secs() as i64 * ONE,
        }
    }

    /// The index of the slot this instant falls in.
    fn index_now(&self) -> u64 {
        let since = crate::proxy::clock::now().saturating_duration_since(self.origin);
        // In u64 nanoseconds (585 years): a u128 division per request costs a library call.
        let nanos = since.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(since.subsec_nanos()));
        nanos / self.slot_nanos
    }

    /// Makes `index` current if it is later, zeroing the slots moved past (all of them after a
    /// long quiet spell). The caller holds `turn`.
    fn turn_to(&self, index: u64) -> u64 {
        let current = self.current.load(Ordering::Relaxed);
        if index <= current {
            return current;
        }
        for i in 1..=(index - current).min(SLOTS as u64) {
            let slot = ((current + i) % SLOTS as u64) as usize;
            for stripe in self.stripes.iter() {
                stripe[slot].store(0, Ordering::Relaxed);
            }
        }
        // Release: a deposit that sees the new index also sees its slot zeroed.
        self.current.store(index, Ordering::Release);
        index
    }

    /// Every request earns its share of a retry.
    pub fn deposit(&self) {
        let index = self.index_now();
        if index > self.current.load(Ordering::Acquire) {
            let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
            self.turn_to(index);
        }
        // A deposit that raced a turn still lands in a slot of the window (its own slot, or
        // after a stall of a whole window, whichever slot that index maps to now).
        self.stripes.here()[(index % SLOTS as u64) as usize].fetch_add(self.deposit, Ordering::Relaxed);
    }

    /// Takes one retry if the budget has it.
    pub fn withdraw(&self) -> bool {
        let index = self.index_now();
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.turn_to(index);
        let balance: i64 = self.stripes.iter().flatten().map(|v| v.load(Ordering::Relaxed)).sum::<i64>() + self.reserve;
        if balance < ONE {
            return false;
        }
        self.stripes.here()[(current % SLOTS as u64) as usize].fetch_sub(ONE, Ordering::Relaxed);
        true
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

    #[tokio::test]
    async fn deposits_from_every_worker_and_thread_add_up() {
        // 3 proxy workers (stripes of their own) and 2 other threads (sharing stripe 0),
        // 1 000 deposits each at 20%: 1 000 retries, not one more (no reserve).
        let b = std::sync::Arc::new(Budget::new(2_000, 0, Duration::from_secs(60)));
        let workers = crate::proxy::workers::Workers::start(3).expect("workers");
        let on_workers = workers.spawn_each(|_| {
            let b = b.clone();
            async move {
                for _ in 0..1_000 {
                    b.deposit();
                }
            }
        });
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1_000).for_each(|_| b.deposit()))
            })
            .collect();
        for h in on_workers {
            h.await.expect("worker deposits");
        }
        for t in threads {
            t.join().expect("thread deposits");
        }
        let used: Vec<usize> = b
            .stripes
            .iter()
            .enumerate()
            .filter(|(_, s)| s.iter().any(|v| v.load(Ordering::Relaxed) != 0))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(used, [0, 1, 2, 3], "each worker wrote its own stripe, the other threads stripe 0");
        assert_eq!((0..2_000).filter(|_| b.withdraw()).count(), 1_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_spell_longer_than_the_window_expires_everything() {
        let b = Budget::new(10_000, 0, Duration::from_secs(10));
        for _ in 0..5 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        b.deposit();
        // Slots turn as time passes: after 8 s more the first 5 have expired, the last one not.
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(b.withdraw());
        assert!(!b.withdraw());
        tokio::time::advance(Duration::from_secs(60)).await;
        b.deposit();
        assert!(b.withdraw(), "a deposit after a long spell counts");
        assert!(!b.withdraw());
    }
}
