//! Counters and histograms that every request writes, kept per proxy worker and handed to the
//! Prometheus exporter when the metrics are read.
//!
//! The exporter's counter is one atomic per series and its histogram one shared list of
//! samples: each worker's request wrote the same cache lines, so they moved between the cores
//! on every request (a route's status counter and duration histogram, the endpoint's
//! outcome counter: three lines per request, besides the work itself). Envoy records its
//! histograms per worker thread and merges them when it flushes stats, for the same reason;
//! here counters go the same way. A counter adds to its worker's own stripe and a histogram
//! sample goes into its worker's own batch; [`flush`] (run before every render and by the
//! exporter's upkeep) adds what the stripes gathered to the exporter's series. A batch full
//! before that goes to the exporter at once, so memory stays bounded whoever reads. Gauges are
//! set, not added to, and stay the exporter's own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

use crate::proxy::workers::PerWorker;

/// Samples a worker holds per histogram before it hands them to the exporter itself.
const BATCH: usize = 256;

type Map<T> = RwLock<HashMap<Key, Arc<T>>>;

/// The series this process registered, to flush before the exporter renders them.
#[derive(Default)]
struct Series {
    counters: Map<StripedCounter>,
    histograms: Map<StripedHistogram>,
}

/// The series of every [`Striped`] recorder made in this process (one; tests make more).
static ALL: Mutex<Vec<Arc<Series>>> = Mutex::new(Vec::new());

/// A recorder in front of `inner`: counters and histograms per worker, gauges as they are.
pub struct Striped<R> {
    inner: R,
    series: Arc<Series>,
}

impl<R: Recorder> Striped<R> {
    /// Wraps `inner`. [`flush`] hands the stripes of every `Striped` recorder made in this
    /// process to its exporter.
    pub fn new(inner: R) -> Self {
        let series = Arc::new(Series::default());
        ALL.lock().unwrap_or_else(PoisonError::into_inner).push(series.clone());
        Striped { inner, series }
    }
}

/// Adds what every worker counted and sampled since the last flush to the exporter's series.
pub fn flush() {
    let all: Vec<_> = ALL.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for series in all {
        series.flush();
    }
}

impl Series {
    fn flush(&self) {
        let counters: Vec<_> = self.counters.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        for c in counters {
            c.flush();
        }
        let histograms: Vec<_> =
            self.histograms.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        for h in histograms {
            h.flush();
        }
    }
}

impl<R: Recorder> Recorder for Striped<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(series_of(&self.series.counters, key, || StripedCounter {
            stripes: PerWorker::default(),
            flushed: Mutex::new(0),
            inner: self.inner.register_counter(key, metadata),
        }))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(series_of(&self.series.histograms, key, || StripedHistogram {
            stripes: PerWorker::default(),
            inner: self.inner.register_histogram(key, metadata),
        }))
    }
}

/// The series of `key`, made on first use. `counter!` with labels built per call (an error
/// answer's outcome, a retry's reason) comes here every time: a read lock and no copy of the
/// key when the series exists.
fn series_of<T>(map: &Map<T>, key: &Key, make: impl FnOnce() -> T) -> Arc<T> {
    if let Some(s) = map.read().unwrap_or_else(PoisonError::into_inner).get(key) {
        return s.clone();
    }
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    map.entry(key.clone()).or_insert_with(|| Arc::new(make())).clone()
}

/// A counter: one running total per worker; the exporter gets the sum's growth.
struct StripedCounter {
    stripes: PerWorker<AtomicU64>,
    /// The sum the exporter already has (the lock keeps two flushes from both adding it).
    flushed: Mutex<u64>,
    inner: Counter,
}

impl StripedCounter {
    fn flush(&self) {
        let mut flushed = self.flushed.lock().unwrap_or_else(PoisonError::into_inner);
        let sum = self.stripes.iter().fold(0u64, |s, c| s.wrapping_add(c.load(Ordering::Relaxed)));
        let grown = sum.wrapping_sub(*flushed);
        if grown > 0 {
            self.inner.increment(grown);
            *flushed = sum;
        }
    }
}

impl CounterFn for StripedCounter {
    fn increment(&self, value: u64) {
        self.stripes.here().fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        // Whatever was added before the absolute value is set is part of it.
        self.flush();
        self.inner.absolute(value);
    }
}

/// A histogram: a batch of samples per worker, handed to the exporter when full or flushed.
struct StripedHistogram {
    stripes: PerWorker<Mutex<Vec<f64>>>,
    inner: Histogram,
}

impl StripedHistogram {
    fn flush(&self) {
        for stripe in self.stripes.iter() {
            let mut batch = stripe.lock().unwrap_or_else(PoisonError::into_inner);
            self.hand_over(&mut batch);
        }
    }

    fn hand_over(&self, batch: &mut Vec<f64>) {
        for v in batch.drain(..) {
            self.inner.record(v);
        }
    }
}

impl HistogramFn for StripedHistogram {
    fn record(&self, value: f64) {
        let mut batch = self.stripes.here().lock().unwrap_or_else(PoisonError::into_inner);
        if batch.capacity() == 0 {
            batch.reserve_exact(BATCH);
        }
        batch.push(value);
        if batch.len() >= BATCH {
            self.hand_over(&mut batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[tokio::test]
    async fn what_workers_and_other_threads_count_reaches_the_exporter_once() {
        let prom = PrometheusBuilder::new().set_buckets(&[0.001, 0.01, 0.1]).expect("buckets").build_recorder();
        let handle = prom.handle();
        let rec = Arc::new(Striped::new(prom));
        let key = Key::from_parts("striped_test_total", vec![metrics::Label::new("route", "r")]);
        let meta = Metadata::new("test", metrics::Level::INFO, None);
        let counter = rec.register_counter(&key, &meta);
        let again = rec.register_counter(&key, &meta);
        let hist = rec.register_histogram(&Key::from_name("striped_test_seconds"), &meta);

        // 3 workers and 2 other threads, 1 000 increments and 300 samples each.
        let workers = crate::proxy::workers::Workers::start(3).expect("workers");
        let on_workers = workers.spawn_each(|_| {
            let (c, h) = (counter.clone(), hist.clone());
            async move {
                for i in 0..1_000u32 {
                    c.increment(1);
                    if i < 300 {
                        h.record(0.005);
                    }
                }
            }
        });
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (c, h) = (again.clone(), hist.clone());
                std::thread::spawn(move || {
                    (0..1_000).for_each(|_| c.increment(1));
                    (0..300).for_each(|_| h.record(0.05));
                })
            })
            .collect();
        for h in on_workers {
            h.await.expect("worker");
        }
        for t in threads {
            t.join().expect("thread");
        }

        flush();
        let text = handle.render();
        assert_eq!(value_of(&text, "striped_test_total{route=\"r\"}"), Some(5_000.0), "{text}");
        assert_eq!(value_of(&text, "striped_test_seconds_count"), Some(1_500.0), "{text}");
        assert_eq!(value_of(&text, "striped_test_seconds_bucket{le=\"0.01\"}"), Some(900.0), "{text}");
        // A second flush adds nothing that was not counted since.
        flush();
        counter.increment(2);
        flush();
        let text = handle.render();
        assert_eq!(value_of(&text, "striped_test_total{route=\"r\"}"), Some(5_002.0), "{text}");
        assert_eq!(value_of(&text, "striped_test_seconds_count"), Some(1_500.0), "{text}");
    }

    #[test]
    fn a_full_batch_reaches_the_exporter_without_a_flush() {
        let prom = PrometheusBuilder::new().build_recorder();
        let handle = prom.handle();
        let rec = Striped::new(prom);
        let meta = Metadata::new("test", metrics::Level::INFO, None);
        let hist = rec.register_histogram(&Key::from_name("striped_batch_seconds"), &meta);
        for _ in 0..BATCH {
            hist.record(1.0);
        }
        let text = handle.render();
        assert_eq!(value_of(&text, "striped_batch_seconds_count"), Some(BATCH as f64), "{text}");
    }
}
