//! Deadlines: the caller's shorter budget wins, covers retries, and travels upstream.

use std::time::{Duration, Instant};

use super::*;

fn ms(v: &serde_json::Value, name: &str) -> u64 {
    v["headers"][name].as_str().unwrap_or_else(|| panic!("upstream did not get {name}: {v}")).parse().unwrap()
}

#[tokio::test]
async fn the_remaining_budget_travels_upstream_in_the_callers_header() {
    let up = Switchable::start(HEALTHY).await;
    let sc = Sidecar::start(&yaml(&[up.up.addr], "timeout: 2s\n", "")).await;

    let v = get(&sc.url("/x")).await.json();
    let left = ms(&v, "x-lifeline-timeout-ms");
    assert!((1..=2000).contains(&left), "route timeout bounds it: {left}");

    let v = get_with(&sc.url("/x"), &[("x-lifeline-timeout-ms", "500")]).await.json();
    let left = ms(&v, "x-lifeline-timeout-ms");
    assert!((1..=500).contains(&left), "a shorter caller budget wins: {left}");

    let v = get_with(&sc.url("/x"), &[("x-lifeline-timeout-ms", "60000")]).await.json();
    assert!(ms(&v, "x-lifeline-timeout-ms") <= 2000, "a longer caller budget does not extend the route's");

    let v = get_with(&sc.url("/x"), &[("grpc-timeout", "300m")]).await.json();
    let grpc = v["headers"]["grpc-timeout"].as_str().unwrap();
    let left: u64 = grpc.strip_suffix('m').unwrap().parse().unwrap();
    assert!((1..=300).contains(&left), "gRPC callers get grpc-timeout back: {grpc}");
    assert!(v["headers"].get("x-lifeline-timeout-ms").is_none());

    let got = get_with(&sc.url("/x"), &[("x-lifeline-timeout-ms", "soon")]).await;
    assert_eq!(got.status, 400);
    assert!(got.json()["message"].as_str().unwrap().contains("x-lifeline-timeout-ms"));
}

#[tokio::test]
async fn an_expired_budget_answers_504_and_covers_every_retry() {
    let up = Switchable::start(800).await;
    let cfg =
        "timeout: 10s\nretry:\n  attempts: 5\n  per_try_timeout: 150ms\n  backoff: 1ms..2ms\n  retry_on: [timeout]\n";
    let sc = Sidecar::start(&yaml(&[up.up.addr], cfg, "")).await;
    let started = Instant::now();
    let got = get_with(&sc.url("/x"), &[("x-lifeline-timeout-ms", "400")]).await;
    assert_eq!(got.status, 504, "{}", got.text());
    assert_eq!(got.header("x-lifeline-error"), Some("deadline_exceeded"));
    assert!(started.elapsed() < Duration::from_secs(5), "the caller's 400ms budget ended it");
    assert!(up.hits() <= 3, "no attempt starts after the deadline: {}", up.hits());

    let got = get_with(&sc.url("/x"), &[("x-lifeline-timeout-ms", "0")]).await;
    assert_eq!(got.status, 504, "an already spent budget is not sent at all");
}
