//! Logs and metrics.
//!
//! Logs go through `tracing` (text or JSON), one access-log line per request under the
//! `lifeline::access` target. Metrics go through the `metrics` facade into a Prometheus recorder
//! installed once per process; the admin API renders it at `/metrics`.

pub mod names;
pub mod redact;
pub mod striped;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the tracing subscriber. `RUST_LOG` overrides the default filter (`info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: fine below 10 ms where a sidecar's own cost lives, coarse above.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The process-wide Prometheus handle; installs the recorder on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        // The exporter stamps every histogram sample with quanta's clock, which calibrates
        // itself on first use (some milliseconds): here, not in the first request's path.
        let _ = quanta::Instant::now();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); we still render ours.
        let _ = metrics::set_global_recorder(striped::Striped::new(recorder));
        for (name, help) in names::ALL {
            metrics::describe_counter!(*name, *help);
        }
        handle
    })
}

/// The metrics as Prometheus text, with what the workers counted since the last read.
pub fn render() -> String {
    striped::flush();
    prometheus().render()
}

/// Periodic upkeep the exporter needs (histogram buckets draining). Runs until dropped.
pub async fn upkeep() {
    let mut tick = crate::beat::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        striped::flush();
        prometheus().run_upkeep();
    }
}
