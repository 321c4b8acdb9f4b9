//! The breaker in a running sidecar: trips, fails fast without upstream traffic, probes, closes.

use std::time::Duration;

use super::*;

const BREAKER: &str =
    "breaker:\n  failure_rate: 50%\n  window: 10 calls\n  min_calls: 5\n  half_open_calls: 3\n  open_jitter: 0%\n";

#[tokio::test]
async fn opens_within_the_window_and_sends_nothing_while_open() {
    let up = Switchable::start(ERRORS).await;
    let sc = Sidecar::start(&yaml(&[up.up.addr], &format!("{BREAKER}  open_for: 30s\n"), "")).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&sc.url("/pay")).await.status);
    }
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert_eq!(up.hits(), 5, "min_calls failures reach the backend, then it trips");
    assert!(
        eventually(Duration::from_secs(5), || async { breaker_state(&sc, "payment").await["state"] == "open" }).await
    );

    for _ in 0..20 {
        let got = get(&sc.url("/pay")).await;
        assert_eq!(got.status, 503);
        assert_eq!(got.header("x-lifeline-error"), Some("circuit_open"));
        let v = got.json();
        assert_eq!(v["error"], "circuit_open");
        assert_eq!(v["cluster"], "payment");
        let after: u64 = got.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=30).contains(&after), "Retry-After comes from the next probe time: {after}");
    }
    assert_eq!(up.hits(), 5, "no request reaches the backend while the breaker is open");

    let b = breaker_state(&sc, "payment").await;
    assert_eq!(b["last_trip"]["reason"], "failure_rate", "{b}");
    assert_eq!(b["last_trip"]["evidence"]["calls"], 5, "{b}");
    assert_eq!(b["last_trip"]["evidence"]["failures"], 5, "{b}");
    assert!(b["next_probe_unix_ms"].as_u64().is_some(), "{b}");
    let metrics = get(&sc.admin_url("/metrics")).await.text();
    assert!(metrics.contains("lifeline_rejected_total{cluster=\"payment\",reason=\"circuit_open\"}"), "{metrics}");
    assert!(metrics.contains(
        "lifeline_breaker_transitions_total{cluster=\"payment\",from=\"closed\",to=\"open\",reason=\"failure_rate\"}"
    ));
}

#[tokio::test]
async fn half_open_admits_exactly_its_probes_then_closes_on_recovery() {
    let up = Switchable::start(ERRORS).await;
    let sc = Sidecar::start(&yaml(&[up.up.addr], &format!("{BREAKER}  open_for: 300ms\n"), "")).await;
    for _ in 0..5 {
        get(&sc.url("/pay")).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async { breaker_state(&sc, "payment").await["state"] == "open" }).await
    );
    // Recovered, but slowly: probes are still in flight when the other requests arrive.
    up.set(2500);
    assert!(
        eventually(Duration::from_secs(5), || async { breaker_state(&sc, "payment").await["state"] == "half_open" })
            .await
    );
    let before = up.hits();
    let calls = (0..10).map(|_| {
        let url = sc.url("/pay");
        tokio::spawn(async move { get(&url).await.status })
    });
    let statuses: Vec<StatusCode> =
        futures_util::future::join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(up.hits() - before, 3, "exactly half_open_calls probes reach the backend");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 7, "the others fail fast");
    assert!(
        eventually(Duration::from_secs(5), || async { breaker_state(&sc, "payment").await["state"] == "closed" }).await
    );
    up.set(HEALTHY);
    assert_eq!(get(&sc.url("/pay")).await.status, 200);

    let events = get(&sc.admin_url("/breakers/events?breaker=payment")).await.json();
    let path: Vec<(String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["to"].as_str().unwrap().to_string(), e["reason"].as_str().unwrap().to_string()))
        .collect();
    let expected = [("open", "failure_rate"), ("half_open", "open_elapsed"), ("closed", "probes_succeeded")];
    let expected: Vec<(String, String)> = expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(path, expected);
}

#[tokio::test]
async fn slow_calls_trip_it() {
    let up = Switchable::start(300).await;
    let cfg =
        "breaker:\n  slow_call: 100ms\n  slow_call_rate: 50%\n  window: 10 calls\n  min_calls: 4\n  open_for: 30s\n";
    let sc = Sidecar::start(&yaml(&[up.up.addr], cfg, "")).await;
    for _ in 0..4 {
        assert_eq!(get(&sc.url("/pay")).await.status, 200, "slow answers are still answers");
    }
    assert!(
        eventually(Duration::from_secs(5), || async { breaker_state(&sc, "payment").await["state"] == "open" }).await
    );
    let b = breaker_state(&sc, "payment").await;
    assert_eq!(b["last_trip"]["reason"], "slow_call_rate", "{b}");
    assert_eq!(b["last_trip"]["evidence"]["slow"], 4, "{b}");
    assert_eq!(get(&sc.url("/pay")).await.header("x-lifeline-error"), Some("circuit_open"));
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn a_route_breaker_is_separate_from_the_clusters_and_4xx_do_not_trip() {
    let up = Switchable::start(ERRORS).await;
    let bad = Upstream::fixed(404, Duration::ZERO).await;
    // Cluster breaker on consecutive failures; the route has its own, much stricter one.
    let cluster = "breaker:\n  consecutive_failures: 100\n";
    let route = "breaker:\n  consecutive_failures: 2\n  open_for: 30s\n";
    let sc = Sidecar::start(&yaml(&[up.up.addr], cluster, route)).await;
    get(&sc.url("/x")).await;
    get(&sc.url("/x")).await;
    assert!(
        eventually(Duration::from_secs(5), || async { breaker_state(&sc, "payment/all").await["state"] == "open" })
            .await
    );
    assert_eq!(breaker_state(&sc, "payment").await, serde_json::Value::Null, "unused cluster breaker is not built");

    let sc = Sidecar::start(&yaml(&[bad.addr], "breaker:\n  consecutive_failures: 2\n", "")).await;
    for _ in 0..5 {
        assert_eq!(get(&sc.url("/x")).await.status, 404);
    }
    assert_eq!(breaker_state(&sc, "payment").await["state"], "closed", "a 404 is the caller's problem");
}
