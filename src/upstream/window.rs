//! A sliding window of request outcomes: a ring of time buckets of atomic counters.
//!
//! Recording is lock-free (the request path calls it) and writes only its proxy worker's own
//! ring ([`PerWorker`]); reading sums the buckets still inside the window, of every ring. Like
//! Linkerd's unified breaker, the ratio is exact per bucket, independent of request rate, and
//! expires by itself when traffic stops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::proxy::workers::PerWorker;

const BUCKETS: usize = 10;

#[derive(Debug, Default)]
struct Bucket {
    epoch: AtomicU64,
    ok: AtomicU64,
    fail: AtomicU64,
}

/// Outcome counts over the last `window`.
#[derive(Debug)]
pub struct Window {
    origin: Instant,
    bucket_ms: u64,
    rings: PerWorker<[Bucket; BUCKETS]>,
}

impl Window {
    pub fn new(window: Duration) -> Window {
        let bucket_ms = (window.as_millis() as u64 / BUCKETS as u64).max(1);
        Window { origin: Instant::now(), bucket_ms, rings: PerWorker::default() }
    }

    fn epoch(&self) -> u64 {
        // +1 so that epoch 0 marks a bucket never written.
        (crate::proxy::clock::now().saturating_duration_since(self.origin).as_millis() as u64) / self.bucket_ms + 1
    }

    pub fn record(&self, ok: bool) {
        let e = self.epoch();
        let b = &self.rings.here()[(e % BUCKETS as u64) as usize];
        if b.epoch.load(Ordering::Relaxed) != e && b.epoch.swap(e, Ordering::Relaxed) != e {
            b.ok.store(0, Ordering::Relaxed);
            b.fail.store(0, Ordering::Relaxed);
        }
        let counter = if ok { &b.ok } else { &b.fail };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets everything (an endpoint back from ejection starts with a clean record).
    pub fn reset(&self) {
        for b in self.rings.iter().flatten() {
            b.epoch.store(0, Ordering::Relaxed);
            b.ok.store(0, Ordering::Relaxed);
            b.fail.store(0, Ordering::Relaxed);
        }
    }

    /// (successes, failures) over the window.
    pub fn totals(&self) -> (u64, u64) {
        let e = self.epoch();
        self.rings
            .iter()
            .flatten()
            .filter(|b| {
                let be = b.epoch.load(Ordering::Relaxed);
                be != 0 && be + (BUCKETS as u64) > e && be <= e
            })
            .fold((0, 0), |(ok, fail), b| (ok + b.ok.load(Ordering::Relaxed), fail + b.fail.load(Ordering::Relaxed)))
    }

    /// Recent success rate, `None` without traffic in the window.
    pub fn success_rate(&self) -> Option<f64> {
        let (ok, fail) = self.totals();
        (ok + fail > 0).then(|| ok as f64 / (ok + fail) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outcomes_recorded_on_every_worker_are_summed() {
        let w = std::sync::Arc::new(Window::new(Duration::from_secs(60)));
        let workers = crate::proxy::workers::Workers::start(3).expect("workers");
        let done = workers.spawn_each(|i| {
            let w = w.clone();
            async move { (0..100).for_each(|n| w.record(n % (i + 2) != 0)) }
        });
        for d in done {
            d.await.expect("worker");
        }
        w.record(false);
        // Failures: every 2nd of 100 on worker 0, every 3rd on worker 1, every 4th on worker 2.
        assert_eq!(w.totals(), (300 - 50 - 34 - 25, 50 + 34 + 25 + 1));
        w.reset();
        assert_eq!(w.totals(), (0, 0), "reset clears every worker's ring");
    }

    #[tokio::test(start_paused = true)]
    async fn counts_expire_after_the_window() {
        let w = Window::new(Duration::from_secs(10));
        for i in 0..10 {
            w.record(i % 2 == 0);
        }
        assert_eq!(w.totals(), (5, 5));
        tokio::time::advance(Duration::from_secs(5)).await;
        w.record(false);
        assert_eq!(w.totals(), (5, 6));
        tokio::time::advance(Duration::from_millis(5500)).await;
        assert_eq!(w.totals(), (0, 1), "the first batch left the window");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(w.success_rate(), None);
    }
}
