//! Thread-per-core request path.
//!
//! The proxy listener is served by `n` worker threads, each running its own single-threaded
//! tokio runtime. Every worker accepts from the same listening socket (a `dup` of it, registered
//! in the worker's own epoll), so a connection is accepted, parsed, routed, forwarded upstream
//! and answered on one thread: no work stealing, no cross-thread wake-ups between the client
//! connection task and the upstream connection task, and upstream connections pooled per worker
//! (see [`current`]). This is the nginx/HAProxy model (one event loop per core) on tokio.
//!
//! A shared socket rather than `SO_REUSEPORT`: a second process could join a reuse-port group
//! by mistake and silently take half the traffic; with one socket a port conflict stays an
//! error at start.
//!
//! Control-plane work (health checks, outlier detection, breaker decisions, the grace forwarder,
//! the admin API) stays on the main runtime. A worker runtime lives until [`Workers`] is dropped.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the proxy worker running on this thread, `None` off the workers (main runtime,
/// blocking pool, tests).
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Stripes of a [`PerWorker`]: proxy worker `w` writes stripe `(w + 1) % STRIPES`, every other
/// thread stripe 0. More workers than stripes share some (still correct, only slower).
pub const STRIPES: usize = 8;

/// One `T` per proxy worker, each on cache lines of its own, for what every request writes and
/// something else reads now and then (counters summed on read). A value both workers write
/// moves its cache line from one core to the other on every request; a stripe stays in its
/// worker's cache.
#[derive(Debug)]
pub struct PerWorker<T> {
    stripes: [Padded<T>; STRIPES],
}

/// 128 bytes: a cache line and the one the adjacent-line prefetcher pairs it with.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T: Default> Default for PerWorker<T> {
    fn default() -> Self {
        PerWorker { stripes: std::array::from_fn(|_| Padded::default()) }
    }
}

impl<T> PerWorker<T> {
    /// This thread's stripe.
    pub fn here(&self) -> &T {
        &self.stripes[current().map_or(0, |w| (w + 1) % STRIPES)].0
    }

    /// Every stripe (to sum them).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.stripes.iter().map(|p| &p.0)
    }
}

/// The largest worker count any [`Workers::start`] asked for in this process: per-worker
/// structures built afterwards (upstream connection pools) get one slot per worker.
static MOST_STARTED: AtomicUsize = AtomicUsize::new(0);

pub fn most_started() -> usize {
    MOST_STARTED.load(Ordering::Relaxed)
}

/// How many workers to run when not told: one per CPU the process may use (cgroup quota
/// included, as `std::thread::available_parallelism` reads it).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Spreads accepted connections over the workers that share one listening socket.
///
/// Every worker is woken when a connection arrives and the first to call `accept` takes it, so
/// a burst tends to land on whichever worker happens to be running (the kernel's wake-up order,
/// not load). nginx corrects this with `accept_disabled`; this does the same: a worker holding
/// more than its share of open connections lets the others go first, briefly.
#[derive(Debug)]
pub struct Balance {
    open: Box<[AtomicUsize]>,
    /// The most connections open at once since [`Balance::take_peak`] last read it.
    peak: AtomicUsize,
}

/// One worker's seat at a [`Balance`].
#[derive(Debug, Clone)]
pub struct Seat {
    balance: std::sync::Arc<Balance>,
    me: usize,
}

impl Balance {
    pub fn new(workers: usize) -> std::sync::Arc<Balance> {
        std::sync::Arc::new(Balance {
            open: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            peak: AtomicUsize::new(0),
        })
    }

    pub fn seat(self: &std::sync::Arc<Self>, me: usize) -> Seat {
        Seat { balance: self.clone(), me }
    }

    /// Connections open on all workers.
    pub fn open(&self) -> usize {
        self.open.iter().map(|o| o.load(Ordering::Relaxed)).sum()
    }

    /// The most connections open at once since the last call (from when each was accepted),
    /// and starts the next period at those open now.
    pub fn take_peak(&self) -> usize {
        let open = self.open();
        self.peak.swap(open, Ordering::Relaxed).max(open)
    }
}

/// How far above the least loaded worker one may go before it defers (connections).
const SLACK: usize = 2;

impl Seat {
    /// True while this worker holds more than its share: it should let the others accept.
    pub fn over_share(&self) -> bool {
        let open = &self.balance.open;
        let mine = open[self.me].load(Ordering::Relaxed);
        let least = open.iter().map(|o| o.load(Ordering::Relaxed)).min().unwrap_or(0);
        mine > least + SLACK
    }

    /// Counts one open connection of this worker until the guard drops.
    pub fn opened(&self) -> OpenConn {
        self.balance.open[self.me].fetch_add(1, Ordering::Relaxed);
        self.balance.peak.fetch_max(self.balance.open(), Ordering::Relaxed);
        OpenConn(self.clone())
    }
}

/// An open connection, counted on its worker's seat.
#[derive(Debug)]
pub struct OpenConn(Seat);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.balance.open[self.0.me].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The worker threads and their runtimes.
pub struct Workers {
    handles: Vec<Handle>,
    /// Dropping a sender lets its worker thread return, which drops its runtime.
    _keep: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("count", &self.handles.len()).finish()
    }
}

impl Workers {
    /// Starts `n` (at least one) worker threads named `lifeline-worker-{i}`.
    pub fn start(n: usize) -> io::Result<Workers> {
        let n = n.max(1);
        MOST_STARTED.fetch_max(n, Ordering::Relaxed);
        let mut handles = Vec::with_capacity(n);
        let mut keep = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            keep.push(tx);
            std::thread::Builder::new().name(format!("lifeline-worker-{i}")).spawn(move || {
                WORKER.with(|w| w.set(Some(i)));
                super::timers::open();
                // The runtime runs its tasks while the thread is inside `block_on`.
                let _ = rt.block_on(rx);
                // Kept timers belong to this runtime: they go first.
                super::timers::close();
                // Dropping the runtime cancels what is left (connections of a dropped app).
                drop(rt);
            })?;
        }
        Ok(Workers { handles, _keep: keep })
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `make(i)` on every worker; the handles can be awaited from any runtime.
    pub fn spawn_each<F, Fut>(&self, mut make: F) -> Vec<JoinHandle<Fut::Output>>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.handles.iter().enumerate().map(|(i, h)| h.spawn(make(i))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_worker_runs_on_its_own_thread_and_knows_its_index() {
        let w = Workers::start(3).expect("workers");
        assert_eq!(current(), None, "the test runtime is not a worker");
        let mut seen = Vec::new();
        for h in w.spawn_each(|i| async move { (i, current(), std::thread::current().name().map(String::from)) }) {
            seen.push(h.await.expect("joined"));
        }
        for (i, idx, name) in seen {
            assert_eq!(idx, Some(i));
            assert_eq!(name.as_deref(), Some(format!("lifeline-worker-{i}").as_str()));
        }
    }

    #[test]
    fn a_worker_over_its_share_defers_until_the_others_catch_up() {
        let b = Balance::new(2);
        let (a, other) = (b.seat(0), b.seat(1));
        let mut held: Vec<OpenConn> = (0..SLACK).map(|_| a.opened()).collect();
        assert!(!a.over_share(), "within the slack");
        held.push(a.opened());
        assert!(a.over_share(), "{} open against 0", SLACK + 1);
        assert!(!other.over_share());
        let _o = other.opened();
        assert!(!a.over_share(), "the other worker caught up to within the slack");
        held.truncate(1);
        assert!(!a.over_share() && !other.over_share());
    }

    #[tokio::test]
    async fn dropping_the_workers_stops_their_tasks() {
        let w = Workers::start(1).expect("workers");
        let (tx, rx) = oneshot::channel::<()>();
        let mut tx = Some(tx);
        let task = w.spawn_each(move |_| {
            let tx = tx.take();
            async move {
                let _tx = tx; // dropped when the runtime cancels this task
                std::future::pending::<()>().await;
            }
        });
        drop(w);
        assert!(rx.await.is_err(), "the pending task was dropped with its runtime");
        assert!(task.into_iter().next().expect("one").await.is_err());
    }
}
