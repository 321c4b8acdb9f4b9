//! The engine: exact schedule, coordinated-omission correction, outcomes, h2c, cancellation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use lifeline::load::{self, Observer, Second};
use lifeline::proxy::body;
use tokio_util::sync::CancellationToken;

use super::{get_plan, target};
use crate::support::Upstream;

#[tokio::test]
async fn load_fixed_rate_sends_exactly_the_schedule() {
    let up = Upstream::fixed(200, Duration::ZERO).await;
    let report = load::run(&get_plan(200.0, 1.0), &target(up.addr, false, 4), &mut load::Quiet).await.unwrap();
    assert_eq!(report.totals.sent, 200);
    assert_eq!(report.totals.ok, 200);
    assert_eq!(report.totals.by_result.get("200"), Some(&200));
    assert_eq!(up.hits(), 200);
    assert_eq!(report.timeline.iter().map(|s| s.sent).sum::<u64>(), 200);
    assert_eq!(report.phases.len(), 1);
    assert!(report.settlements.is_empty());
}

#[tokio::test]
async fn load_measures_latency_from_the_scheduled_time() {
    // One HTTP/1.1 connection, 20 arrivals in 1 s, 100 ms per answer: the server can only do
    // 10/s, so the last arrival (due at 0.95 s) is answered after about 2 s. A generator that
    // measured from the send would report ~100 ms for every request.
    let up = Upstream::fixed(200, Duration::from_millis(100)).await;
    let report = load::run(&get_plan(20.0, 1.0), &target(up.addr, false, 1), &mut load::Quiet).await.unwrap();
    assert_eq!(report.totals.ok, 20);
    let l = report.totals.latency;
    assert!(l.max_us > 900_000, "max {} µs should include the queueing", l.max_us);
    assert!(l.p50_us > 300_000, "p50 {} µs should include the queueing", l.p50_us);
}

#[tokio::test]
async fn load_counts_refused_connections_at_the_offered_rate() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let report = load::run(&get_plan(50.0, 1.0), &target(closed, false, 2), &mut load::Quiet).await.unwrap();
    assert_eq!(report.totals.sent, 50);
    assert_eq!(report.totals.errors, 50);
    assert_eq!(report.totals.by_result.get("connect_error"), Some(&50));
    assert!((report.totals.error_rate - 1.0).abs() < 1e-9);
}

#[tokio::test]
async fn load_timeouts_are_an_outcome() {
    let up = Upstream::fixed(200, Duration::from_secs(5)).await;
    let mut t = target(up.addr, false, 2);
    t.timeout = Duration::from_millis(200);
    let started = Instant::now();
    let report = load::run(&get_plan(10.0, 0.5), &t, &mut load::Quiet).await.unwrap();
    assert_eq!(report.totals.sent, 5);
    assert_eq!(report.totals.by_result.get("timeout"), Some(&5));
    assert!(started.elapsed() < Duration::from_secs(4), "the run waits for the timeout, not the server");
}

#[tokio::test]
async fn load_h2c_multiplexes_on_one_connection() {
    // 50 ms per answer on ONE connection at 200/s: only multiplexing keeps up.
    let up = Upstream::start(Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let ok = req.version() == http::Version::HTTP_2;
            let mut r = Response::new(body::full("ok"));
            *r.status_mut() = if ok { StatusCode::OK } else { StatusCode::HTTP_VERSION_NOT_SUPPORTED };
            r
        })
    }))
    .await;
    let report = load::run(&get_plan(200.0, 1.0), &target(up.addr, true, 1), &mut load::Quiet).await.unwrap();
    assert_eq!(report.protocol, "h2c");
    assert_eq!(report.totals.by_result.get("200"), Some(&200), "{:?}", report.totals.by_result);
    assert!(
        report.totals.latency.p99_us < 800_000,
        "p99 {} µs: streams were not multiplexed",
        report.totals.latency.p99_us
    );
}

#[derive(Default)]
struct Seen(Vec<Second>);

impl Observer for Seen {
    fn second(&mut self, s: &Second) {
        self.0.push(s.clone());
    }
}

#[tokio::test]
async fn load_observer_sees_every_second_and_cancel_stops_early() {
    let up = Upstream::fixed(200, Duration::ZERO).await;
    let mut seen = Seen::default();
    let report = load::run(&get_plan(100.0, 2.0), &target(up.addr, false, 2), &mut seen).await.unwrap();
    assert_eq!(seen.0.len(), report.timeline.len());
    assert!(seen.0.len() >= 2);
    assert_eq!(report.totals.sent, 200);

    let stop = CancellationToken::new();
    let s2 = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s2.cancel();
    });
    let started = Instant::now();
    let report =
        load::run_until(&get_plan(100.0, 30.0), &target(up.addr, false, 2), &mut load::Quiet, &stop).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(report.totals.sent > 5 && report.totals.sent < 300, "sent {}", report.totals.sent);
    assert_eq!(report.totals.sent, report.totals.ok, "every sent request completed");
}
