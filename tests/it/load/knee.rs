//! `find_knee` against a stand-in with a known capacity.

use std::time::Duration;

use lifeline::load::{self, KneeSearch, Step, Workload};

use super::target;
use crate::support::Upstream;

#[tokio::test]
async fn load_find_knee_reports_the_last_rate_that_held() {
    // 2 HTTP/1.1 connections × 20 ms per answer: capacity ≈ 100/s. 20, 40, 80 hold (no queue);
    // at 160/s each connection falls 12.5 ms further behind per request, and the p99 of a 1 s
    // step passes 150 ms.
    let up = Upstream::fixed(200, Duration::from_millis(20)).await;
    let search = KneeSearch {
        start_rate: 20.0,
        step: Step::Mul(2.0),
        max_rate: 1000.0,
        step_duration: Duration::from_secs(1),
        max_p99: Duration::from_millis(150),
        max_error_rate: 0.01,
        workload: Workload::get("http://x/").unwrap(),
    };
    let report = load::find_knee(&search, &target(up.addr, false, 2), &mut load::Quiet).await.unwrap();
    let knee = report.knee.as_ref().unwrap();
    let rates: Vec<f64> = knee.steps.iter().map(|s| s.offered_rate).collect();
    assert_eq!(rates, vec![20.0, 40.0, 80.0, 160.0], "{knee:?}");
    assert_eq!(knee.knee_rate, Some(80.0), "{knee:?}");
    assert_eq!(knee.broke_at, Some(160.0));
    assert!(knee.reason.contains("p99"), "{}", knee.reason);
    // One phase per step, laid end to end on one timeline.
    assert_eq!(report.phases.len(), 4);
    assert!((report.phases[3].info.start_s - 3.0).abs() < 1e-9);
    assert!(report.timeline.len() >= 4);
}

#[tokio::test]
async fn load_find_knee_breaks_on_errors() {
    let up = Upstream::fixed(503, Duration::ZERO).await;
    let search = KneeSearch {
        start_rate: 20.0,
        step: Step::Add(20.0),
        max_rate: 100.0,
        step_duration: Duration::from_millis(500),
        max_p99: Duration::from_secs(1),
        max_error_rate: 0.01,
        workload: Workload::get("http://x/").unwrap(),
    };
    let report = load::find_knee(&search, &target(up.addr, false, 2), &mut load::Quiet).await.unwrap();
    let knee = report.knee.unwrap();
    assert_eq!(knee.knee_rate, None);
    assert_eq!(knee.broke_at, Some(20.0));
    assert!(knee.reason.contains("error rate"), "{}", knee.reason);
}
