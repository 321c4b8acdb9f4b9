//! Bulkhead: a cap on in-flight requests per cluster, with a small bounded pending queue.
//!
//! Sits inside the breaker, around each attempt. A request takes a permit and keeps it until its
//! response body ends (a slow download still occupies the backend). When all permits are taken
//! it may wait in the pending queue for at most `queue_timeout`; when the queue is full too, it
//! is shed at once with `overloaded` (503). Never an unbounded queue: Linkerd's failfast queue
//! and Envoy's `max_pending_requests` are the models (research §1A).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::deadline::Deadline;
use super::Problems;
use crate::config::Dur;
use crate::error::{BoxError, ErrorKind, LifelineError};
use crate::telemetry::names;

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// Requests in flight to this cluster at most. Required.
    pub max_in_flight: u32,
    /// Requests allowed to wait for a slot; beyond that they are shed. Default 0 (no queue).
    #[serde(default)]
    pub max_pending: Option<u32>,
    /// How long a request may wait in the queue. Default 100ms.
    #[serde(default)]
    pub queue_timeout: Option<Dur>,
}

/// A validated bulkhead.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitConfig {
    pub max_in_flight: u32,
    pub max_pending: u32,
    pub queue_timeout: Dur,
}

impl RawLimit {
    pub fn check(&self, p: &mut Problems) -> LimitConfig {
        if !(1..=1_000_000).contains(&self.max_in_flight) {
            p.push("max_in_flight", "must be between 1 and 1000000");
        }
        let max_pending = self.max_pending.unwrap_or(0);
        if max_pending > 100_000 {
            p.push("max_pending", "must be at most 100000 (shed load instead of queueing it)");
        }
        let queue_timeout = self.queue_timeout.unwrap_or(Dur(Duration::from_millis(100)));
        if max_pending > 0 && queue_timeout.0.is_zero() {
            p.push("queue_timeout", "must be greater than 0 when max_pending is set");
        }
        LimitConfig { max_in_flight: self.max_in_flight.max(1), max_pending, queue_timeout }
    }
}

/// The live bulkhead of one scope (a cluster, or a route with its own block).
#[derive(Debug)]
pub struct Limiter {
    pub config: LimitConfig,
    cluster: String,
    slots: Arc<Slots>,
    pending: AtomicU32,
    rejected_full: metrics::Counter,
    rejected_wait: metrics::Counter,
}

/// The slots: a count taken with one compare-and-swap and given back with one subtraction.
///
/// Until session 20 a tokio `Semaphore`: its permit cloned the semaphore's `Arc` and giving a
/// permit back always locked the semaphore's waiter list, even with nobody waiting, on every
/// request. Here only a request that finds the slots full goes near the waiters: it waits for
/// [`Slots::freed`], and a slot given back rings it only while someone is waiting. While anyone
/// waits, newcomers queue behind them rather than take a freed slot first (the queue is served
/// in order, as the semaphore's was).
#[derive(Debug)]
struct Slots {
    taken: AtomicU32,
    max: u32,
    waiting: AtomicU32,
    freed: Notify,
}

impl Slots {
    fn try_take(&self) -> bool {
        self.taken.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.max).then_some(n + 1)).is_ok()
    }
}

/// A slot, given back when dropped.
#[derive(Debug)]
pub struct Permit(Arc<Slots>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::SeqCst);
        // A waiter counts itself before it looks at the slots: either it sees this one free,
        // or this sees it waiting.
        if self.0.waiting.load(Ordering::SeqCst) > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// A request in the queue: counted in `pending` and `waiting` until dropped.
struct Queued<'a>(&'a Limiter);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.slots.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limiter {
    pub fn new(cluster: &str, config: LimitConfig) -> Arc<Limiter> {
        let reject = |reason: &'static str| metrics::counter!(names::REJECTED_TOTAL, "cluster" => cluster.to_string(), "reason" => reason);
        Arc::new(Limiter {
            slots: Arc::new(Slots {
                taken: AtomicU32::new(0),
                max: config.max_in_flight,
                waiting: AtomicU32::new(0),
                freed: Notify::new(),
            }),
            pending: AtomicU32::new(0),
            rejected_full: reject("overloaded"),
            rejected_wait: reject("queue_timeout"),
            cluster: cluster.to_string(),
            config,
        })
    }

    /// Requests currently holding a slot.
    pub fn in_flight(&self) -> u32 {
        self.slots.taken.load(Ordering::Relaxed)
    }

    fn overloaded(&self, why: &str) -> BoxError {
        LifelineError::new(
            ErrorKind::Overloaded,
            format!("cluster {} is at its concurrency limit: {why}", self.cluster),
        )
        .with_cluster(&self.cluster)
        .with_retry_after(Duration::from_secs(1))
        .boxed()
    }

    /// Takes a slot, waiting in the bounded queue when allowed.
    pub async fn acquire(&self) -> Result<Permit, BoxError> {
        self.acquire_until(None).await
    }

    /// A free slot, taken without waiting, when nobody is queued for one (a request never
    /// overtakes the queue). `None`: [`Limiter::acquire_until`] queues or sheds.
    pub fn try_acquire(&self) -> Option<Permit> {
        let slots = &self.slots;
        (slots.waiting.load(Ordering::SeqCst) == 0 && slots.try_take()).then(|| Permit(slots.clone()))
    }

    /// [`Limiter::acquire`], waiting no longer than the request's `deadline` when that comes
    /// before the queue timeout (then the answer is the deadline's, `deadline_exceeded`).
    pub async fn acquire_until(&self, deadline: Option<&Deadline>) -> Result<Permit, BoxError> {
        if let Some(permit) = self.try_acquire() {
            return Ok(permit);
        }
        let slots = &self.slots;
        let queued = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.config.max_pending).then_some(n + 1));
        if queued.is_err() {
            self.rejected_full.increment(1);
            return Err(self.overloaded(&format!("{} in flight and the queue is full", self.config.max_in_flight)));
        }
        // Counted out when this ends, also when the caller goes away while it waits.
        slots.waiting.fetch_add(1, Ordering::SeqCst);
        let _queued = Queued(self);
        let queue_end = tokio::time::Instant::now() + self.config.queue_timeout.0;
        let until = deadline.map_or(queue_end, |d| d.at.min(queue_end));
        let taken = loop {
            let freed = slots.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a slot given back after the look rings it.
            freed.as_mut().enable();
            if slots.try_take() {
                break true;
            }
            if tokio::time::timeout_at(until, freed).await.is_err() {
                break slots.try_take();
            }
        };
        if taken {
            return Ok(Permit(slots.clone()));
        }
        match deadline {
            Some(d) if d.at < queue_end => Err(d.expired(&self.cluster)),
            _ => {
                self.rejected_wait.increment(1);
                Err(self.overloaded(&format!("no slot freed within {}", self.config.queue_timeout)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: u32, pending: u32) -> Arc<Limiter> {
        Limiter::new(
            "t",
            LimitConfig { max_in_flight: max, max_pending: pending, queue_timeout: Dur(Duration::from_millis(100)) },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn sheds_when_full_and_queue_times_out() {
        let l = limiter(1, 1);
        let held = l.acquire().await.unwrap();
        assert_eq!(l.in_flight(), 1);
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
        tokio::task::yield_now().await;
        // The queue (1) is taken by the waiter: the next one is shed at once.
        let err = l.acquire().await.unwrap_err();
        assert_eq!(LifelineError::kind_of(&err), ErrorKind::Overloaded);
        // The waiter gives up after queue_timeout.
        let err = waiter.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("no slot freed"), "{err}");
        drop(held);
        assert!(l.acquire().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_gone_from_the_queue_leaves_no_trace() {
        let l = limiter(1, 1);
        let held = l.acquire().await.unwrap();
        // Waits in the queue, then its caller goes away.
        assert!(tokio::time::timeout(Duration::from_millis(10), l.acquire()).await.is_err());
        drop(held);
        // The queue is free again, and with nobody waiting a free slot is taken at once.
        let again = l.acquire().await.unwrap();
        assert_eq!(l.in_flight(), 1);
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
        tokio::task::yield_now().await;
        drop(again);
        assert!(waiter.await.unwrap().is_ok(), "the queue had room for one");
    }

    #[tokio::test]
    async fn slots_are_never_over_taken_and_all_come_back() {
        // 4 slots, 200 requests from 4 threads with a queue: never more than 4 at once.
        let l = Limiter::new(
            "t",
            LimitConfig { max_in_flight: 4, max_pending: 1_000, queue_timeout: Dur(Duration::from_secs(30)) },
        );
        let peak = Arc::new(AtomicU32::new(0));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (l, peak) = (l.clone(), peak.clone());
                rt.spawn(async move {
                    let p = l.acquire().await.expect("a slot within 30 s");
                    peak.fetch_max(l.in_flight(), Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    drop(p);
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        rt.shutdown_background();
        assert!(peak.load(Ordering::SeqCst) <= 4, "peak {}", peak.load(Ordering::SeqCst));
        assert_eq!(l.in_flight(), 0);
        assert_eq!(l.pending.load(Ordering::SeqCst), 0);
        assert_eq!(l.slots.waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_gets_the_freed_slot() {
        let l = limiter(1, 4);
        let held = l.acquire().await.unwrap();
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        assert!(waiter.await.unwrap().is_ok());
    }
}
