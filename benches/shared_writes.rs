//! What a write every request makes costs when both proxy workers make it to the same cache
//! line, against each worker writing a line of its own (`PerWorker` stripes, session 20).
//!
//! Not a test: it measures. Run in release on an otherwise quiet machine:
//!
//! ```text
//! cargo bench --bench shared_writes
//! LIFELINE_BENCH_OPS=20000000 cargo bench --bench shared_writes
//! ```
//!
//! Each line runs the same operation on one proxy worker alone, then on two at once (two
//! worker threads, as `lifeline run` starts on this 2-core machine), and prints nanoseconds
//! per operation as each worker saw it. A write to a line the other core also writes has to
//! take the line from that core first: on two cores the shared version's time per operation
//! grows with the second worker, the striped one's should not. Pairs:
//! - a counter: the Prometheus exporter's own (one atomic per series) against the striped
//!   recorder's (`lifeline::telemetry::striped`);
//! - a histogram sample: the exporter's (a shared list of samples) against the striped one's
//!   (a batch per worker);
//! - an endpoint's outcome (`Endpoint::record` of a success: its counters, success window and
//!   metrics), which is what the proxy path calls, and a plain shared `AtomicU64` for scale.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use lifeline::classify::Outcome;
use lifeline::config::Config;
use lifeline::proxy::workers::{PerWorker, Workers};
use lifeline::telemetry::striped::Striped;
use lifeline::upstream::Cluster;
use metrics::{Key, Level, Metadata, Recorder};
use metrics_exporter_prometheus::PrometheusBuilder;

type Op = Arc<dyn Fn() + Send + Sync>;

/// Nanoseconds per operation on each of `n` workers running `ops` operations at once.
async fn per_op(workers: &Workers, n: usize, ops: u64, op: &Op) -> Vec<f64> {
    let start = Arc::new(Barrier::new(n));
    let handles = workers.spawn_each(|i| {
        let (op, start) = (op.clone(), start.clone());
        async move {
            if i >= n {
                return None;
            }
            // Both begin together: the point is the overlap.
            start.wait();
            let t = Instant::now();
            for _ in 0..ops {
                op();
            }
            Some(t.elapsed().as_nanos() as f64 / ops as f64)
        }
    });
    let mut out = Vec::new();
    for h in handles {
        if let Some(ns) = h.await.unwrap() {
            out.push(ns);
        }
    }
    out
}

async fn line(workers: &Workers, ops: u64, name: &str, op: Op) {
    // A warm-up pass, then the measured ones.
    per_op(workers, 1, ops / 10, &op).await;
    let alone = per_op(workers, 1, ops, &op).await;
    let both = per_op(workers, 2, ops, &op).await;
    let fmt = |v: &[f64]| v.iter().map(|ns| format!("{ns:6.1}")).collect::<Vec<_>>().join(" ");
    println!("{name:<44} one worker {} ns   two workers {} ns", fmt(&alone), fmt(&both));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let ops: u64 = std::env::var("LIFELINE_BENCH_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000_000);
    let workers = Workers::start(2).unwrap();
    let meta = Metadata::new("bench", Level::INFO, None);
    println!("shared_writes: {ops} operations per worker and run; nanoseconds per operation, per worker");

    let shared = Arc::new(AtomicU64::new(0));
    line(
        &workers,
        ops,
        "AtomicU64::fetch_add, one for both",
        Arc::new(move || {
            shared.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .await;
    let striped = Arc::new(PerWorker::<AtomicU64>::default());
    line(
        &workers,
        ops,
        "AtomicU64::fetch_add, PerWorker stripe",
        Arc::new(move || {
            striped.here().fetch_add(1, Ordering::Relaxed);
        }),
    )
    .await;

    let exporter = PrometheusBuilder::new().build_recorder();
    let c = exporter.register_counter(&Key::from_name("bench_shared_total"), &meta);
    line(&workers, ops, "counter, the exporter's", Arc::new(move || c.increment(1))).await;
    let h = exporter.register_histogram(&Key::from_name("bench_shared_seconds"), &meta);
    line(&workers, ops, "histogram sample, the exporter's", Arc::new(move || h.record(0.000_5))).await;

    let recorder = Striped::new(PrometheusBuilder::new().build_recorder());
    let c = recorder.register_counter(&Key::from_name("bench_striped_total"), &meta);
    line(&workers, ops, "counter, striped", Arc::new(move || c.increment(1))).await;
    let h = recorder.register_histogram(&Key::from_name("bench_striped_seconds"), &meta);
    line(&workers, ops, "histogram sample, striped", Arc::new(move || h.record(0.000_5))).await;
    lifeline::telemetry::striped::flush();

    // The process's recorder, as `lifeline run` installs it: the endpoint's metrics go there.
    lifeline::telemetry::prometheus();
    let yaml = "clusters:\n  pay:\n    endpoints:\n      - { address: 127.0.0.1:9 }\nroutes:\n  - { cluster: pay }\n";
    let config = Config::from_yaml("bench.yaml", yaml).unwrap();
    let cluster = Cluster::build(&config.clusters["pay"], None, lifeline::upstream::resolve::system());
    let endpoint = cluster.endpoints()[0].clone();
    line(&workers, ops, "Endpoint::record(Success)", Arc::new(move || endpoint.record(Outcome::Success))).await;
}
