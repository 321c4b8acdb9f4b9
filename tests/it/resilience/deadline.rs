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

/// The deadline is an instant every wait on the path ends by, not a timer around the path: a
/// request queued at the bulkhead leaves the queue when its deadline comes, not when a slot is
/// freed or the (longer) queue timeout passes.
#[tokio::test]
async fn a_request_queued_at_the_bulkhead_leaves_when_its_deadline_comes() {
    let up = Switchable::start(1500).await;
    let cfg = "timeout: 10s\nconcurrency:\n  max_in_flight: 1\n  max_pending: 4\n  queue_timeout: 5s\n";
    let sc = Sidecar::start(&yaml(&[up.up.addr], cfg, "")).await;
    let url = sc.url("/holds-the-slot");
    let holder = tokio::spawn(async move { get(&url).await });
    assert!(eventually(Duration::from_secs(2), || async { up.hits() == 1 }).await);
    let started = Instant::now();
    let got = get_with(&sc.url("/queued"), &[("x-lifeline-timeout-ms", "300")]).await;
    let waited = started.elapsed();
    assert_eq!(got.status, 504, "{}", got.text());
    assert_eq!(got.header("x-lifeline-error"), Some("deadline_exceeded"));
    assert!(got.json()["message"].as_str().unwrap().contains("the caller's deadline"), "{}", got.text());
    assert!(waited < Duration::from_millis(1000), "left the queue at its deadline, not when the slot came: {waited:?}");
    assert_eq!(up.hits(), 1, "the queued request never reached the backend");
    assert_eq!(holder.await.unwrap().status, 200);
}

/// A body read into memory for replay is read within the deadline: a caller that stops sending
/// in the middle of its body gets 504 when the deadline comes.
#[tokio::test]
async fn a_body_read_for_replay_ends_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Switchable::start(HEALTHY).await;
    let cfg = "timeout: 300ms\nretry:\n  attempts: 3\n  backoff: 1ms..2ms\n";
    let sc = Sidecar::start(&yaml(&[up.up.addr], cfg, "")).await;
    let addr = sc.url("/").trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    conn.write_all(b"PUT /x HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc").await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut answer)).await.expect("answered").unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("deadline_exceeded"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(up.hits(), 0, "nothing was sent: the body never arrived whole");
}
