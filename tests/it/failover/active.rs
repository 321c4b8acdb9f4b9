//! Active health checks: failover without passive detection, failback hold and slow-start
//! ramp, flapping, startup state and probe kinds.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;

const CHECKS: &str = "health_check: { path: /healthz, interval: 300ms, transition_interval: 50ms, timeout: 200ms, \
                      healthy: 2, unhealthy: 2 }";

async fn wait_event(sc: &Sidecar, kind: &str, n: usize, within: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let got = events_of(sc, kind).await;
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "no {kind} event #{n} within {within:?}: {:#?}", events(sc).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Active checks alone (outlier off) move traffic to DR within the check window; requests in
/// between are re-picked on connect failure, so none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_alone_fail_over_within_the_check_window() {
    let primary = Killable::start("primary").await;
    let dr = Killable::start("dr").await;
    let policy = format!("{CHECKS}\noutlier: {{ enabled: false }}");
    let sc = Sidecar::start(&yaml(&[(primary.addr, 0), (dr.addr, 1)], &policy)).await;
    let url = sc.url("/x");
    assert_eq!(burst(&url, 20, 2, false).await.get("primary"), 20);

    primary.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = burst(&url, 20, 2, true).await;
    assert_eq!(during.errors(), 0, "{during:?}");
    assert_eq!(during.get("dr"), 20, "connect failures re-picked: {during:?}");
    let changed = wait_event(&sc, "failover", 1, Duration::from_secs(5)).await;
    let window = killed.elapsed();
    // interval + jitter + 2 failed checks at transition_interval, each up to the timeout.
    assert!(window < Duration::from_millis(1500), "failover took {window:?}");
    let evidence = &changed[0]["evidence"]["endpoints"];
    let p = evidence.as_array().unwrap().iter().find(|e| e["endpoint"] == primary.addr.to_string()).unwrap();
    assert_eq!(p["health"], "unhealthy", "the failover names the cause: {evidence}");
    let health = events_of(&sc, "health_changed").await;
    assert!(health.iter().any(|e| e["endpoint"] == primary.addr.to_string()
        && e["message"].as_str().unwrap().contains("unhealthy after 2 failed checks")));
    let attempts = endpoint_state(&sc, primary.addr).await["requests"].as_u64().unwrap();
    assert_eq!(burst(&url, 20, 2, false).await.get("dr"), 20);
    assert_eq!(endpoint_state(&sc, primary.addr).await["requests"].as_u64().unwrap(), attempts);
}

/// A restarted primary gets nothing during `failback_hold`, then its share ramps (several
/// intermediate values, never decreasing) instead of jumping to 100%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_waits_for_the_hold_then_ramps() {
    let primary = Killable::start("primary").await;
    let dr = Killable::start("dr").await;
    let policy = format!("{CHECKS}\nfailover: {{ failback_hold: 1500ms, slow_start: 2s }}");
    let sc = Sidecar::start(&yaml(&[(primary.addr, 0), (dr.addr, 1)], &policy)).await;
    let url = sc.url("/x");
    primary.kill();
    wait_event(&sc, "failover", 1, Duration::from_secs(5)).await;

    primary.restart().await;
    let healthy = wait_event(&sc, "health_changed", 2, Duration::from_secs(5)).await;
    assert!(healthy.last().unwrap()["message"].as_str().unwrap().contains("takes traffic after failback_hold"));
    let hold_until = endpoint_state(&sc, primary.addr).await["hold_until_unix_ms"].as_u64().expect("in the hold");
    let hits = primary.hits();
    // Traffic during the hold (what the sidecar reports as its end, minus this test's own lag).
    while now_ms() + 50 < hold_until {
        let t = burst(&url, 10, 2, false).await;
        assert_eq!(t.get("dr"), 10, "all traffic stays on DR during the hold: {t:?}");
    }
    assert_eq!(primary.hits(), hits, "no request reached the primary before failback_hold");

    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        samples.push(share(&sc, 0).await);
        let _ = burst(&url, 5, 1, false).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ramp: Vec<f64> = samples.iter().copied().filter(|s| *s > 0.0 && *s < 100.0).collect();
    assert!(ramp.len() >= 3, "a ramp, not a jump: {samples:?}");
    assert!(samples.windows(2).all(|w| w[1] >= w[0]), "the share never falls back: {samples:?}");
    assert_eq!(*samples.last().unwrap(), 100.0, "{samples:?}");
    assert_eq!(burst(&url, 20, 2, false).await.get("primary"), 20, "failback complete");
    assert_eq!(events_of(&sc, "failback").await.len(), 1);
}

/// A primary that flaps faster than `failback_hold` never takes traffic back: one failover,
/// no failback until it stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_primary_keeps_failovers_bounded() {
    let primary = Killable::start("primary").await;
    let dr = Killable::start("dr").await;
    let policy = format!("{CHECKS}\nfailover: {{ failback_hold: 2s, slow_start: 500ms }}");
    let sc = Sidecar::start(&yaml(&[(primary.addr, 0), (dr.addr, 1)], &policy)).await;
    let url = sc.url("/x");
    let load = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let got = burst(&url, 10, 2, true).await;
                for (k, v) in got.0 {
                    *t.0.entry(k).or_default() += v;
                }
                if t.0.values().sum::<usize>() > 100_000 {
                    return t;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    for _ in 0..6 {
        primary.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        primary.restart().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(events_of(&sc, "failover").await.len(), 1, "{:#?}", events(&sc).await);
    assert_eq!(events_of(&sc, "failback").await.len(), 0);
    wait_event(&sc, "failback", 1, Duration::from_secs(6)).await;
    load.abort();
    assert_eq!(events_of(&sc, "failover").await.len(), 1);
    let _ = url;
}

/// `startup: wait_first_check` keeps an endpoint out until a check passes; HTTP checks look at
/// the status and the body; TCP checks only connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_state_and_probe_kinds() {
    let sick = Killable::start("sick").await;
    let fine = Killable::start("fine").await;
    sick.health_status.store(503, Ordering::SeqCst);
    let policy = "health_check: { path: /healthz, interval: 200ms, transition_interval: 50ms, \
                  startup: wait_first_check, body_contains: \"in\", expected_statuses: [\"200-299\"] }";
    let sc = Sidecar::start(&yaml(&[(sick.addr, 0), (fine.addr, 0)], policy)).await;
    let t = burst(&sc.url("/x"), 30, 2, false).await;
    assert_eq!(t.get("fine"), 30, "the endpoint whose check never passed gets nothing: {t:?}");
    assert_eq!(sick.hits(), 0);
    let s = endpoint_state(&sc, sick.addr).await;
    assert!(s["last_check"]["detail"].as_str().unwrap().contains("503"), "{s}");
    assert!(s["health"] == "unknown" || s["health"] == "unhealthy", "never passed a check: {s}");

    // TCP: a dead port fails, a listening one passes.
    let dead = Killable::start("dead").await;
    dead.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let policy = "health_check: { protocol: tcp, interval: 200ms, transition_interval: 50ms, unhealthy: 1 }";
    let sc = Sidecar::start(&yaml(&[(dead.addr, 0), (fine.addr, 0)], policy)).await;
    assert!(
        eventually(Duration::from_secs(5), || async { endpoint_state(&sc, dead.addr).await["health"] == "unhealthy" })
            .await
    );
    assert_eq!(endpoint_state(&sc, fine.addr).await["health"], "healthy");
    let metrics = get(&sc.admin_url("/metrics")).await.text();
    assert!(metrics.contains("lifeline_health_checks_total"), "{metrics}");
    assert!(metrics.contains("lifeline_endpoint_healthy"));
}

/// With no endpoint of any priority healthy, `panic: false` fails fast with
/// `no_healthy_endpoint` (which grace turns into offline acceptance); `panic: true` spreads
/// traffic over all endpoints anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_healthy_fails_fast_or_panics_as_configured() {
    let a = Killable::start("a").await;
    let b = Killable::start("b").await;
    a.health_status.store(503, Ordering::SeqCst);
    b.health_status.store(503, Ordering::SeqCst);
    for panic in [false, true] {
        let policy = format!("{CHECKS}\nfailover: {{ panic: {panic} }}");
        let sc = Sidecar::start(&yaml(&[(a.addr, 0), (b.addr, 1)], &policy)).await;
        wait_event(&sc, if panic { "panic" } else { "fail_fast" }, 1, Duration::from_secs(5)).await;
        let t = burst(&sc.url("/x"), 20, 2, false).await;
        if panic {
            assert_eq!(t.get("a") + t.get("b"), 20, "panic mode spreads over all: {t:?}");
            assert!(t.get("b") > 0, "including the lower priority: {t:?}");
        } else {
            assert_eq!(t.get("error:no_healthy_endpoint"), 20, "{t:?}");
            let c = cluster_state(&sc).await;
            assert_eq!(c["mode"], "fail_fast");
            assert!(c["active_priority"].is_null());
        }
    }
}

/// Checks reuse one connection per endpoint while they pass (`reuse_connection`, on by default,
/// as Envoy's): a fleet of sidecars does not open a connection per endpoint per interval. Off,
/// every check is a connection of its own. A check that fails lets the connection go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_reuse_their_connection_unless_told_not_to() {
    for reuse in [true, false] {
        let backend = Killable::start("primary").await;
        let policy = format!(
            "health_check: {{ path: /healthz, interval: 100ms, jitter: 0%, timeout: 200ms, reuse_connection: {reuse} }}\n\
             outlier: {{ enabled: false }}"
        );
        let sc = Sidecar::start(&yaml(&[(backend.addr, 0)], &policy)).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (checks, accepts) = (backend.checks.load(Ordering::SeqCst), backend.accepts.load(Ordering::SeqCst));
        assert!(checks >= 8, "checks every 100 ms: {checks} in 1.2 s");
        if reuse {
            assert_eq!(accepts, 1, "{checks} checks on one connection");
            backend.health_status.store(503, Ordering::SeqCst);
            assert!(
                eventually(Duration::from_secs(3), || async { backend.accepts.load(Ordering::SeqCst) >= 3 }).await,
                "each failed check lets its connection go: {} connections",
                backend.accepts.load(Ordering::SeqCst)
            );
        } else {
            assert!(accepts + 1 >= checks && accepts <= checks + 1, "one connection per check: {accepts} for {checks}");
        }
        drop(sc);
    }
}
