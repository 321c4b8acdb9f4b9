//! The time of the current poll of a connection task, read once.
//!
//! A proxied request reads the clock about nine times (its arrival, its deadline, the breaker's
//! call start and end, the attempt's remaining budget, the endpoint's latency, the retry
//! budget's slot, the pool's idle stamp, its duration), nearly all of them in two polls of its
//! connection's task: when the request is read and when the answer comes. Each read is a vDSO
//! call and ~45 instructions. Within one poll the clock moves by what the poll costs (a few
//! microseconds), far below what any of those readings is used for (milliseconds: timeouts,
//! slow-call thresholds, latency buckets), so a connection's task reads it once per poll, the
//! first time it is asked, and every later reading in that poll gets the same instant. Envoy's
//! `Dispatcher::approximateMonotonicTime` is the same idea, per event-loop iteration.
//!
//! [`Polled`] marks the polls whose readings may be shared; everywhere else (the control plane,
//! tests, tasks not wrapped) [`now`] reads the clock every time.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;

thread_local! {
    /// Inside a [`Polled`] poll: `Some`, holding the instant once read.
    static POLL: Cell<Option<Option<Instant>>> = const { Cell::new(None) };
}

/// The current instant: within a [`Polled`] poll, the one read first in that poll.
///
/// A `tokio::time::Instant`, so that tests with a paused tokio clock see their time.
pub fn now() -> Instant {
    POLL.with(|p| match p.get() {
        Some(Some(at)) => at,
        Some(None) => {
            let at = Instant::now();
            p.set(Some(Some(at)));
            at
        }
        None => Instant::now(),
    })
}

pin_project_lite::pin_project! {
    /// `inner`, with the clock read at most once per poll ([`now`]).
    pub struct Polled<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Polled<F> {
    pub fn new(inner: F) -> Polled<F> {
        Polled { inner }
    }
}

impl<F: Future> Future for Polled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        /// Puts back what the poll found (nothing, or an enclosing poll's reading), also when
        /// the inner future panics.
        struct Restore(Option<Option<Instant>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                POLL.with(|p| p.set(self.0));
            }
        }
        let _restore = Restore(POLL.with(|p| p.replace(Some(None))));
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Spins until the clock has visibly moved (so an equal reading can only be a shared one).
    fn let_time_pass() {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(2) {
            std::hint::spin_loop();
        }
    }

    #[tokio::test]
    async fn readings_in_one_poll_are_one_and_the_next_poll_reads_again() {
        let (first, second, third) = Polled::new(async {
            let first = now();
            let_time_pass();
            let second = now();
            tokio::task::yield_now().await; // a new poll
            (first, second, now())
        })
        .await;
        assert_eq!(first, second, "one poll, one reading");
        assert!(third >= second + Duration::from_millis(2), "the next poll read the clock again");
    }

    #[tokio::test]
    async fn outside_a_polled_task_every_reading_is_fresh() {
        let first = now();
        let_time_pass();
        assert!(now() >= first + Duration::from_millis(2));
        // And after a polled future finished, nothing of it is left behind.
        Polled::new(async { now() }).await;
        let before = now();
        let_time_pass();
        assert!(now() >= before + Duration::from_millis(2));
    }

    #[tokio::test]
    async fn a_nested_poll_has_its_own_reading_and_gives_back_the_outer_one() {
        let (outer, inner, after) = Polled::new(async {
            let outer = now();
            let_time_pass();
            let inner = Polled::new(async { now() }).await;
            (outer, inner, now())
        })
        .await;
        assert!(inner >= outer + Duration::from_millis(2), "the inner poll read the clock itself");
        assert_eq!(after, outer, "the outer poll's reading is back after the inner one");
    }

    #[test]
    fn a_panicking_poll_leaves_no_reading_behind() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(Polled::new(async {
                now();
                panic!("inside the poll");
            }))
        }));
        assert!(caught.is_err());
        assert_eq!(POLL.with(Cell::get), None, "the panic unwound through the restore");
    }
}
