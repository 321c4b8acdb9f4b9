//! The forwarder: exactly-once replay, per-card order, query-before-resend, flapping, pacing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::{PayBackend, REFUSE_503, REFUSE_503_FOR_A_DAY, SLOW, UP};
use super::*;
use crate::support::{eventually, get, Sidecar};

async fn all_settled(db: &std::path::Path, n: i64, within: Duration) -> bool {
    eventually(within, || async {
        journal_states(db).get("settled").copied().unwrap_or(0)
            + journal_states(db).get("declined").copied().unwrap_or(0)
            == n
    })
    .await
}

/// A backend in maintenance answers 503 with `Retry-After` a day ahead (an HTTP-date): replay
/// pauses, but no longer than `forward.max_backoff`, so the item settles soon after the backend
/// is back rather than tomorrow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_a_day_pauses_replay_no_longer_than_max_backoff() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let sc = Sidecar::start(&yaml(backend.addr, &db, ROOMY, FAST, "")).await;
    let r = settle(&sc.url(""), "maint-1", &settlement("110101199003070011", 120, "H1"), &[]).await;
    assert_eq!(r.status, 202, "{}", r.text());
    backend.set_mode(REFUSE_503_FOR_A_DAY);
    backend.up().await;
    assert!(
        eventually(Duration::from_secs(10), || async { backend.posts.load(std::sync::atomic::Ordering::SeqCst) >= 1 })
            .await,
        "the forwarder never reached the backend"
    );
    backend.set_mode(UP);
    let back = Instant::now();
    // FAST has max_backoff 200ms and probe_interval 100ms: the pause is at most ~250 ms plus
    // the forwarder's own pacing; a day's pause would never settle here.
    assert!(all_settled(&db, 1, Duration::from_secs(5)).await, "{:?}", journal_states(&db));
    assert_eq!(backend.charges()["maint-1"], 1);
    println!("[retry-after a day] settled {:?} after the backend came back", back.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_reaches_the_backend_exactly_once_in_card_order() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let sc = Sidecar::start(&yaml(backend.addr, &db, ROOMY, FAST, "")).await;
    let base = sc.url("");
    let mut receipts = Vec::new();
    for n in 0..3 {
        for card in 0..10 {
            let key = format!("c{card}-{n}");
            let r = settle(&base, &key, &settlement(&format!("1101011990030700{card:02}"), 100 + n, "H1"), &[]).await;
            assert_eq!(r.status, 202, "{}", r.text());
            receipts.push(r.json()["receipt"]["receipt_id"].as_str().unwrap().to_string());
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(backend.charges().is_empty());
    backend.up().await;
    assert!(all_settled(&db, 30, Duration::from_secs(20)).await, "{:?}", journal_states(&db));
    let charges = backend.charges();
    assert_eq!(charges.len(), 30);
    assert!(charges.values().all(|n| *n == 1), "double charge: {charges:?}");
    let order = backend.order();
    for card in 0..10 {
        let lane: Vec<&String> = order.iter().filter(|k| k.starts_with(&format!("c{card}-"))).collect();
        assert_eq!(lane, vec![&format!("c{card}-0"), &format!("c{card}-1"), &format!("c{card}-2")], "FIFO per card");
    }
    // The receipt now shows the final state; the same key answers with the final result.
    let g = get(&sc.url(&format!("/grace/receipts/{}", receipts[0]))).await.json();
    assert_eq!(g["state"], "settled");
    assert_eq!(g["backend_ref"], "S-c0-0");
    let r = settle(&base, "c0-0", &settlement("110101199003070000", 100, "H1"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("grace-status"), Some("settled"));
    assert_eq!(backend.charges()["c0-0"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_timeouts_are_resolved_by_query_not_by_resend() {
    let backend = PayBackend::started().await;
    backend.set_mode(SLOW);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let sc = Sidecar::start(&yaml(backend.addr, &db, ROOMY, FAST, "")).await;
    let base = sc.url("");
    for i in 0..5 {
        let r = settle(&base, &format!("amb-{i}"), &settlement("110101199003071234", 100, "H1"), &[]).await;
        assert_eq!(r.status, 202, "{}", r.text());
        // Sent, no answer within the route's deadline: an ambiguous outcome.
        let reason = r.header("grace-reason").unwrap_or("");
        assert!(["upstream_timeout", "deadline_exceeded"].contains(&reason), "{reason}");
    }
    // Declined-by-business items and never-processed items resolve differently; here all were charged.
    backend.set_mode(UP);
    assert!(all_settled(&db, 5, Duration::from_secs(20)).await, "{:?}", journal_states(&db));
    let charges = backend.charges();
    assert_eq!(charges.len(), 5);
    assert!(charges.values().all(|n| *n == 1), "resent after an ambiguous timeout: {charges:?}");
    assert!(backend.queries.load(std::sync::atomic::Ordering::SeqCst) >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_backend_during_replay_still_charges_each_key_once() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let sc = Sidecar::start(&yaml(backend.addr, &db, ROOMY, FAST, "")).await;
    let base = sc.url("");
    for i in 0..60 {
        let card = format!("1101011990030{:05}", i % 20);
        let amount = if i == 7 { 4040 } else { 100 + i };
        assert_eq!(settle(&base, &format!("flap-{i}"), &settlement(&card, amount, "H1"), &[]).await.status, 202);
    }
    backend.up().await;
    let start = Instant::now();
    let mut phase = 0u32;
    while start.elapsed() < Duration::from_secs(3) {
        match phase % 4 {
            0 => backend.set_mode(REFUSE_503),
            1 => backend.set_mode(UP),
            2 => backend.down(),
            _ => backend.up().await,
        }
        phase += 1;
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    backend.set_mode(UP);
    if phase % 4 == 3 {
        backend.up().await;
    }
    assert!(all_settled(&db, 60, Duration::from_secs(30)).await, "{:?}", journal_states(&db));
    let states = journal_states(&db);
    assert_eq!(states.get("declined"), Some(&1), "{states:?}");
    let charges = backend.charges();
    assert_eq!(charges.len(), 59);
    assert!(charges.values().all(|n| *n == 1), "double charge: {charges:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_backlog_keeps_to_the_rate_and_ramps_up() {
    const N: usize = 1000;
    const RATE: f64 = 250.0;
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let forward = "rate: 250/s, ramp: 2s, probe_interval: 100ms, backoff: 20ms, max_backoff: 200ms, concurrency: 16";
    let sc = Sidecar::start(&yaml(backend.addr, &db, ROOMY, forward, "")).await;
    let base = Arc::new(sc.url(""));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..N).step_by(16) {
                let r = settle(&base, &format!("bl-{i}"), &settlement(&format!("C{i:08}"), 100, "H1"), &[]).await;
                assert_eq!(r.status, 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    backend.up().await;
    assert!(all_settled(&db, N as i64, Duration::from_secs(60)).await, "{:?}", journal_states(&db));
    let times = backend.charge_times();
    assert_eq!(times.len(), N);
    let t0 = times[0];
    let secs: Vec<f64> = times.iter().map(|t| t.duration_since(t0).as_secs_f64()).collect();
    // Never above the rate: any 1 s window holds at most rate + a small burst.
    let mut max_window = 0;
    let mut j = 0;
    for i in 0..secs.len() {
        while secs[i] - secs[j] >= 1.0 {
            j += 1;
        }
        max_window = max_window.max(i - j + 1);
    }
    assert!(max_window as f64 <= RATE * 1.1 + 16.0, "{max_window} in one second");
    // Slow start: the first half second is far below the full rate (125 without a ramp).
    let first = secs.iter().filter(|s| **s < 0.5).count();
    assert!(first <= 60, "{first} forwards in the first 500ms of a 2s ramp");
    // And it does not crawl: the whole backlog took less than the ramp at the floor rate.
    let total = secs.last().copied().unwrap_or(0.0);
    assert!(total >= (N as f64 - 300.0) / RATE, "too fast: {total:.2}s");
}
