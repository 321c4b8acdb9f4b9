//! The end-to-end checks against the simulated payment and card services (`lifeline::sim`):
//! payment switched to errors 100% under steady load, then healthy; slow beyond `slow_call`; a
//! retry storm; a non-idempotent POST.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeline::sim::{Mode, Service, SimHandle, SimOptions, SimServer};

use super::*;
use crate::sim::active_settlement;

async fn sim(service: Service, mode: &str) -> SimHandle {
    let h = SimServer::start(service, "127.0.0.1:0".parse().unwrap(), SimOptions::for_tests()).await.unwrap();
    h.set_mode(Mode::parse(mode).unwrap());
    h
}

/// Attempts the sidecar sent to the cluster's endpoints (what reached, or tried to reach, the backend).
async fn upstream_attempts(sc: &Sidecar) -> u64 {
    let v = get(&sc.admin_url("/clusters")).await.json();
    v["clusters"][0]["endpoints"].as_array().unwrap().iter().map(|e| e["requests"].as_u64().unwrap()).sum()
}

/// One settlement (unique key) every `every`, until stopped; records (status, error, latency).
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(u16, String, Duration)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(sc: &Sidecar, every: Duration) -> Load {
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (s2, seen2, url) = (stop.clone(), seen.clone(), sc.url("/payment/v1/settlements"));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            for i in 0.. {
                tick.tick().await;
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                let started = Instant::now();
                let got = post_json(&url, &active_settlement(100), &[("idempotency-key", &format!("load-{i}"))]).await;
                let error = got.header("x-lifeline-error").unwrap_or("").to_string();
                seen2.lock().unwrap().push((got.status.as_u16(), error, started.elapsed()));
            }
        });
        Load { stop, seen, task }
    }

    async fn stop(self) -> Vec<(u16, String, Duration)> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let seen = self.seen.lock().unwrap().clone();
        seen
    }
}

async fn events(sc: &Sidecar) -> Vec<serde_json::Value> {
    get(&sc.admin_url("/breakers/events")).await.json()["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn payment_errors_open_the_breaker_then_healthy_closes_it_through_half_open() {
    let pay = sim(Service::Payment, "healthy").await;
    let cfg =
        "breaker:\n  failure_rate: 50%\n  window: 2s\n  min_calls: 10\n  open_for: 500ms\n  max_open_for: 500ms\n  \
               half_open_calls: 3\n  open_jitter: 0%\n";
    let sc = Sidecar::start(&yaml(&[pay.addr], cfg, "")).await;
    let load = Load::start(&sc, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(200)).await;

    pay.set_mode(Mode::parse("errors:100%:503").unwrap());
    let failing_since = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async { breaker_state(&sc, "payment").await["state"] != "closed" })
            .await
    );
    assert!(failing_since.elapsed() < Duration::from_secs(5), "opens within the window (2s) plus scheduling slack");
    // Let calls admitted before the trip finish, then count what reaches the backend from here on.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first_seq = events(&sc).await.last().unwrap()["seq"].as_u64().unwrap();
    let after_trip = upstream_attempts(&sc).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let sent_while_open = upstream_attempts(&sc).await - after_trip;
    let half_opens =
        events(&sc).await.iter().filter(|e| e["seq"].as_u64() >= Some(first_seq) && e["to"] == "half_open").count();
    assert!(half_opens >= 1, "the breaker probes after open_for");
    assert!(
        sent_while_open <= 3 * half_opens as u64,
        "only half-open probes reach the backend: {sent_while_open} attempts, {half_opens} half-open periods"
    );

    pay.set_mode(Mode::Healthy);
    assert!(
        eventually(Duration::from_secs(10), || async { breaker_state(&sc, "payment").await["state"] == "closed" })
            .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = load.stop().await;

    let last = events(&sc).await;
    let closing = last.iter().rev().find(|e| e["to"] == "closed").unwrap();
    assert_eq!((closing["from"].as_str(), closing["reason"].as_str()), (Some("half_open"), Some("probes_succeeded")));
    assert_eq!(closing["evidence"]["probes_succeeded"], 3);
    let fast: Vec<Duration> = seen.iter().filter(|s| s.1 == "circuit_open").map(|s| s.2).collect();
    assert!(fast.len() >= 50, "steady load met the open breaker: {}", fast.len());
    let mut sorted = fast.clone();
    sorted.sort();
    // The < 1 ms overhead target is measured by the benchmark; here only that it is fast.
    assert!(sorted[sorted.len() / 2] < Duration::from_millis(50), "fast-fail median {:?}", sorted[sorted.len() / 2]);
    assert_eq!(seen.last().unwrap().0, 201, "settlements flow again");
}

#[tokio::test]
async fn payment_slower_than_slow_call_trips_on_slow_call_rate() {
    let pay = sim(Service::Payment, "slow:250ms").await;
    let cfg = "breaker:\n  slow_call: 100ms\n  slow_call_rate: 60%\n  window: 10s\n  min_calls: 5\n  open_for: 30s\n";
    let sc = Sidecar::start(&yaml(&[pay.addr], cfg, "")).await;
    for i in 0..5 {
        let got = post_json(
            &sc.url("/payment/v1/settlements"),
            &active_settlement(100),
            &[("idempotency-key", &format!("s-{i}"))],
        )
        .await;
        assert_eq!(got.status, 201, "{}", got.text());
    }
    assert!(
        eventually(Duration::from_secs(5), || async { breaker_state(&sc, "payment").await["state"] == "open" }).await
    );
    assert_eq!(breaker_state(&sc, "payment").await["last_trip"]["reason"], "slow_call_rate");
    let got =
        post_json(&sc.url("/payment/v1/settlements"), &active_settlement(100), &[("idempotency-key", "s-x")]).await;
    assert_eq!(got.header("x-lifeline-error"), Some("circuit_open"));
    assert_eq!(pay.ledger().len(), 5, "nothing reached the ledger after the trip");
}

#[tokio::test]
async fn retry_storm_against_failing_payment_stays_within_budget() {
    let pay = sim(Service::Payment, "errors:100%:503").await;
    let cfg = "retry:\n  attempts: 3\n  backoff: 1ms..5ms\n  budget: 20%\n  min_per_second: 1\n  budget_window: 10s\n";
    let sc = Sidecar::start(&yaml(&[pay.addr], cfg, "")).await;
    let requests = 100u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut calls = Vec::new();
    for i in 0..requests {
        tick.tick().await;
        let url = sc.url(&format!("/payment/v1/settlements/st-{i}"));
        calls.push(tokio::spawn(async move { get(&url).await.status }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 503);
    }
    let attempts = upstream_attempts(&sc).await;
    let bound = requests + requests / 5 + 10;
    assert!(attempts > requests && attempts <= bound, "{attempts} attempts for {requests} requests (bound {bound})");
}

#[tokio::test]
async fn a_card_loss_post_without_key_is_sent_once() {
    let card = sim(Service::Card, "errors:100%:503").await;
    let cfg = "retry:\n  attempts: 3\n  backoff: 1ms..2ms\n  retry_on: [5xx, connect_error, reset, timeout]\n";
    let sc = Sidecar::start(&yaml(&[card.addr], cfg, "")).await;
    let card_no = lifeline::sim::fixture::EXAMPLE_ACTIVE;
    let got = post_json(&sc.url(&format!("/card/v1/cards/{card_no}/loss")), &serde_json::json!({}), &[]).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("x-lifeline-attempts"), Some("1"));
    assert_eq!(upstream_attempts(&sc).await, 1, "sent once, never resent");
    let got = get(&sc.url(&format!("/card/v1/cards/{card_no}"))).await;
    assert_eq!(got.header("x-lifeline-attempts"), Some("3"), "the idempotent status read is retried");
}
