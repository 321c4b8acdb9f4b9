//! Attempt timers reused on the worker that made them.
//!
//! Every attempt upstream runs under a timeout ([`crate::resilience::deadline::attempt`]), and
//! nearly every one is answered long before it. A fresh `tokio::time::Sleep` per attempt is
//! filed in the worker's timer wheel on its first poll (the driver's lock and an insert) and
//! taken out when the attempt ends (the lock again and an unlink). A `Sleep` reset to a
//! deadline later than the one it is filed at only moves its deadline forward (one
//! compare-and-swap, tokio's `TimerEntry::reset`): the wheel finds out when the old deadline
//! comes and files it again, without a wake-up. So each worker keeps the timers of finished
//! attempts and hands them to the next ones. Under one route timeout the next deadline is
//! always the later one, and the wheel sees each timer about once per timeout instead of
//! twice per request. A deadline earlier than the filed one (a route with a shorter timeout, a
//! caller's budget) is filed again, as a fresh timer would be.
//!
//! Measured (`bench/profile.py --by-crate`, session 27, old and new builds alternated): tokio's
//! share of a request fell from 3 029–3 056 instructions to 2 864–2 893 (under 1% of the
//! request; level in wall-clock time), and two lock round trips per request are gone.
//!
//! What a kept timer costs: its memory (`KEEP` at most per worker), and until it is reused or
//! its old deadline passes it holds the waker of the task that last waited on it (that task's
//! allocation outlives it by at most one timeout). A timer whose old deadline passes while
//! kept wakes that task once, for nothing: a spurious wake-up, which every future tolerates.
//!
//! Only proxy workers keep timers: [`open`] when the worker starts, [`close`] before its
//! runtime goes (a timer belongs to the runtime that made it). Elsewhere (the main runtime,
//! tests) [`sleep_until`] is a plain `Sleep` dropped after use.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// Timers a worker keeps at most: enough for one per attempt in flight at 256 connections
/// per worker and then some.
pub const KEEP: usize = 512;

thread_local! {
    /// `None` off the workers and after [`close`].
    static KEPT: RefCell<Option<Vec<Pin<Box<Sleep>>>>> = const { RefCell::new(None) };
}

/// Starts keeping this thread's finished timers (a proxy worker, as it starts).
pub fn open() {
    KEPT.with(|k| *k.borrow_mut() = Some(Vec::new()));
}

/// Drops the kept timers and keeps no more: before the worker's runtime is dropped.
pub fn close() {
    let kept = KEPT.with(|k| k.borrow_mut().take());
    drop(kept);
}

/// Timers kept on this thread (tests).
pub fn kept() -> usize {
    KEPT.with(|k| k.borrow().as_ref().map_or(0, Vec::len))
}

/// Completes at `at`, on a kept timer when this worker has one.
pub fn sleep_until(at: Instant) -> Timer {
    let reused = KEPT.with(|k| k.borrow_mut().as_mut().and_then(Vec::pop));
    let sleep = match reused {
        Some(mut sleep) => {
            sleep.as_mut().reset(at);
            sleep
        }
        None => Box::pin(tokio::time::sleep_until(at)),
    };
    Timer { sleep: Some(sleep), home: super::workers::current() }
}

/// A timer from [`sleep_until`]; goes back to its worker when dropped.
#[derive(Debug)]
pub struct Timer {
    /// `Some` until dropped.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The worker it was made or taken on: kept again only there (a timer belongs to its
    /// worker's runtime, and a request's future never moves, but nothing else enforces it).
    home: Option<usize>,
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else { return };
        // Off the workers (`home` None) nothing is kept anyway: [`open`] was not called there.
        if self.home != super::workers::current() {
            return;
        }
        // `try_with`: a timer dropped while the thread's locals are torn down is just dropped.
        let _ = KEPT.try_with(|k| {
            if let Ok(mut k) = k.try_borrow_mut() {
                if let Some(kept) = k.as_mut().filter(|v| v.len() < KEEP) {
                    kept.push(sleep);
                }
            }
        });
    }
}

/// Runs `fut` until `at`: `Err(())` when the deadline came first. The timer is polled after
/// `fut`, and without tokio's task budget when `fut` used the last of it (as
/// `tokio::time::Timeout` does), so a busy attempt still times out.
pub fn until<F: Future>(at: Instant, fut: F) -> Until<F> {
    Until { fut, timer: sleep_until(at) }
}

pin_project_lite::pin_project! {
    /// The future of [`until`]: a struct, not an `async fn`, so `fut` is moved once (into it)
    /// rather than again into the async body's state on the first poll.
    #[derive(Debug)]
    pub struct Until<F> {
        #[pin]
        fut: F,
        timer: Timer,
    }
}

impl<F: Future> Future for Until<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.project();
        let had_budget = tokio::task::coop::has_budget_remaining();
        if let Poll::Ready(out) = me.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let timer = Pin::new(me.timer);
        let fired = if had_budget && !tokio::task::coop::has_budget_remaining() {
            Pin::new(&mut tokio::task::coop::unconstrained(timer)).poll(cx)
        } else {
            timer.poll(cx)
        };
        fired.map(|()| Err(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proxy::workers::Workers;

    /// Polls `t` once: whether it completed.
    async fn ready(t: &mut Timer) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *t).poll(cx).is_ready())).await
    }

    /// Runs `f` on a proxy worker and returns what it returned.
    async fn on_worker<F, Fut, T>(f: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let w = Workers::start(1).expect("worker");
        let mut f = Some(f);
        let h = w.spawn_each(|_| f.take().expect("one worker")()).pop().expect("one handle");
        h.await.expect("the worker's task ran")
    }

    #[tokio::test]
    async fn off_the_workers_nothing_is_kept() {
        let t = sleep_until(Instant::now() + Duration::from_millis(5));
        t.await;
        assert_eq!(kept(), 0);
        let t = sleep_until(Instant::now() + Duration::from_secs(5));
        drop(t);
        assert_eq!(kept(), 0);
    }

    #[tokio::test]
    async fn a_worker_hands_a_finished_timer_to_the_next_attempt() {
        let (first, second, kept_after) = on_worker(|| async {
            let mut t = sleep_until(Instant::now() + Duration::from_secs(30));
            // Polled once: filed in the wheel, as an attempt's timer is.
            assert!(!ready(&mut t).await);
            let first = t.sleep.as_ref().map(|s| &**s as *const Sleep as usize);
            drop(t);
            assert_eq!(kept(), 1);
            let t = sleep_until(Instant::now() + Duration::from_secs(31));
            let second = t.sleep.as_ref().map(|s| &**s as *const Sleep as usize);
            drop(t);
            (first, second, kept())
        })
        .await;
        assert_eq!(first, second, "the same timer, reset");
        assert_eq!(kept_after, 1);
    }

    /// The deadline a reused timer is reset to is the one it keeps, whether later (moved
    /// forward without the wheel) or earlier (filed again) than the one it had.
    #[tokio::test]
    async fn a_reused_timer_completes_at_its_new_deadline_not_the_old_one() {
        let (later_early, later_at, earlier_at) = on_worker(|| async {
            let start = Instant::now();
            let mut t = sleep_until(start + Duration::from_millis(30));
            assert!(!ready(&mut t).await);
            drop(t);
            // Later: not done at the old deadline.
            let mut t = sleep_until(start + Duration::from_millis(400));
            tokio::time::sleep_until(start + Duration::from_millis(100)).await;
            let later_early = ready(&mut t).await;
            t.await;
            let later_at = start.elapsed();
            // The fired timer is filed again at 60 s, then reset to 50 ms, earlier than where
            // it is filed: filed again there, it fires on time.
            let again = Instant::now();
            let mut t = sleep_until(again + Duration::from_secs(60));
            assert!(!ready(&mut t).await);
            drop(t);
            let t = sleep_until(again + Duration::from_millis(50));
            assert_eq!(kept(), 0, "taken");
            t.await;
            (later_early, later_at, again.elapsed())
        })
        .await;
        assert!(!later_early, "done at the old deadline");
        assert!(later_at >= Duration::from_millis(400), "done early: {later_at:?}");
        assert!(earlier_at >= Duration::from_millis(50), "done early: {earlier_at:?}");
        assert!(earlier_at < Duration::from_secs(30), "kept waiting for the old deadline: {earlier_at:?}");
    }

    #[tokio::test]
    async fn until_returns_the_future_or_the_deadline() {
        let (fast, slow) = on_worker(|| async {
            let fast = until(Instant::now() + Duration::from_secs(5), async { 7 }).await;
            let slow = until(Instant::now() + Duration::from_millis(20), std::future::pending::<u8>()).await;
            (fast, slow)
        })
        .await;
        assert_eq!(fast, Ok(7));
        assert_eq!(slow, Err(()));
    }

    /// An attempt that uses up the task's budget on every poll (a body streaming from memory)
    /// still times out: the timer is polled outside the budget.
    #[tokio::test]
    async fn a_future_that_spends_the_whole_budget_still_times_out() {
        let out = on_worker(|| async {
            let busy = async {
                loop {
                    tokio::task::coop::consume_budget().await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), until(Instant::now() + Duration::from_millis(20), busy)).await
        })
        .await;
        assert_eq!(out, Ok(Err(())), "the attempt's own deadline, not the test's");
    }

    #[tokio::test]
    async fn a_timer_dropped_on_another_worker_is_not_kept_there() {
        let w = Workers::start(2).expect("workers");
        let mut made =
            w.spawn_each(|i| async move { (i == 0).then(|| sleep_until(Instant::now() + Duration::from_secs(30))) });
        let timer = made.remove(0).await.expect("worker 0 ran").expect("worker 0 made one");
        assert_eq!(timer.home, Some(0));
        let mut timer = Some(timer);
        let kept = w.spawn_each(move |i| {
            let t = if i == 1 { timer.take() } else { None };
            async move {
                drop(t);
                kept()
            }
        });
        for (i, h) in kept.into_iter().enumerate() {
            assert_eq!(h.await.expect("ran"), 0, "worker {i} kept a timer it did not make");
        }
    }

    #[tokio::test]
    async fn a_worker_keeps_no_more_than_keep() {
        let kept_most = on_worker(|| async {
            let at = Instant::now() + Duration::from_secs(30);
            let many: Vec<Timer> = (0..KEEP + 10).map(|_| sleep_until(at)).collect();
            drop(many);
            kept()
        })
        .await;
        assert_eq!(kept_most, KEEP);
    }
}
