//! The bulkhead: a fixed number in flight, a short bounded queue, the rest shed at once.

use super::*;

#[tokio::test]
async fn over_the_limit_requests_are_shed_with_503_overloaded() {
    let up = Switchable::start(1500).await;
    let cfg = "concurrency:\n  max_in_flight: 2\n  max_pending: 1\n  queue_timeout: 50ms\n";
    let sc = Sidecar::start(&yaml(&[up.up.addr], cfg, "")).await;
    let calls = (0..6).map(|_| {
        let url = sc.url("/x");
        tokio::spawn(async move { get(&url).await })
    });
    let got: Vec<Got> = futures_util::future::join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();
    let ok = got.iter().filter(|g| g.status == 200).count();
    let shed: Vec<&Got> = got.iter().filter(|g| g.status == 503).collect();
    assert_eq!((ok, shed.len()), (2, 4), "{:?}", got.iter().map(|g| g.status).collect::<Vec<_>>());
    for g in shed {
        assert_eq!(g.header("x-lifeline-error"), Some("overloaded"));
        assert_eq!(g.json()["cluster"], "payment");
        assert!(g.header("retry-after").is_some());
    }
    assert_eq!(up.hits(), 2);
    let metrics = get(&sc.admin_url("/metrics")).await.text();
    assert!(metrics.contains("lifeline_rejected_total{cluster=\"payment\",reason=\"queue_timeout\"}"), "{metrics}");
}
