//! Every fault mode, observed the way the sidecar (and so a caller) sees it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lifeline::sim::{Mode, Service, SimHandle, SimOptions, SimServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::active_settlement;
use crate::support::*;

fn mode(s: &str) -> Mode {
    Mode::parse(s).unwrap()
}

/// A sidecar with one `payment` cluster at `addr`, a 600 ms cluster timeout, no retries and no
/// outlier ejection (these tests observe the simulator's faults, not the sidecar's reactions).
async fn sidecar(addr: SocketAddr) -> Sidecar {
    Sidecar::start(&format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nshutdown: {{ drain_delay: 0s, grace_period: 1s }}\n\
         clusters:\n  payment:\n    endpoints:\n      - {{ address: {addr} }}\n    connect_timeout: 500ms\n    timeout: 600ms\n    outlier: {{ enabled: false }}\n\
         routes:\n  - {{ name: all, cluster: payment }}\n"
    ))
    .await
}

async fn started() -> (SimHandle, Sidecar) {
    let pay =
        SimServer::start(Service::Payment, "127.0.0.1:0".parse().unwrap(), SimOptions::for_tests()).await.unwrap();
    let sc = sidecar(pay.addr).await;
    (pay, sc)
}

async fn settle(sc: &Sidecar, key: &str) -> Got {
    post_json(&sc.url("/payment/v1/settlements"), &active_settlement(1_000), &[("idempotency-key", key)]).await
}

#[tokio::test]
async fn errors_mode_fails_the_given_share_before_any_effect() {
    let (pay, sc) = started().await;
    pay.set_mode(mode("errors:100%:503"));
    let got = settle(&sc, "e-1").await;
    assert_eq!(got.status, 503, "{}", got.text());
    assert_eq!(got.json()["error"], "sim_injected_error");
    assert_eq!(get(&sc.url("/healthz")).await.status, 503, "health follows the mode");
    assert!(pay.ledger().is_empty(), "an injected error has no effect");

    pay.set_mode(mode("errors:50%"));
    let mut by_status = std::collections::BTreeMap::new();
    for i in 0..60 {
        *by_status.entry(settle(&sc, &format!("half-{i}")).await.status.as_u16()).or_insert(0) += 1;
    }
    let (ok, failed) = (by_status.get(&201).copied().unwrap_or(0), by_status.get(&500).copied().unwrap_or(0));
    assert_eq!(ok + failed, 60, "{by_status:?}");
    assert!((10..=50).contains(&ok), "about half fail: {by_status:?}");
    assert_eq!(pay.ledger().len(), ok);

    pay.set_mode(Mode::Healthy);
    assert_eq!(settle(&sc, "e-2").await.status, 201);
}

#[tokio::test]
async fn slow_mode_delays_and_trips_the_sidecar_timeout() {
    let (pay, sc) = started().await;
    pay.set_mode(mode("slow:120ms"));
    let t = Instant::now();
    assert_eq!(settle(&sc, "s-1").await.status, 201);
    assert!(t.elapsed() >= Duration::from_millis(120), "{:?}", t.elapsed());

    pay.set_mode(mode("slow:p50=3s,p99=5s"));
    let got = get(&sc.url("/healthz")).await;
    assert_eq!(got.status, 504, "{}", got.text());
    assert!(
        matches!(got.header("x-lifeline-error"), Some("upstream_timeout" | "deadline_exceeded")),
        "{:?}",
        got.header("x-lifeline-error")
    );
    pay.set_mode(mode("slow:0ms..2ms"));
    assert_eq!(get(&sc.url("/healthz")).await.status, 200);
}

#[tokio::test]
async fn hang_mode_never_answers_until_released() {
    let (pay, sc) = started().await;
    pay.set_mode(Mode::Hang);
    let got = settle(&sc, "h-1").await;
    assert_eq!(got.status, 504, "{}", got.text());
    // The sidecar gave up and closed its connection; the hung request does not pile up.
    assert!(eventually(Duration::from_secs(5), || async { pay.in_flight() == 0 }).await, "{}", pay.in_flight());
    // A request hanging directly on the simulator is released (without effect) by a mode change.
    let direct = tokio::spawn({
        let url = pay.url("/healthz");
        async move { get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!direct.is_finished());
    assert_eq!(pay.in_flight(), 1);
    pay.set_mode(Mode::Healthy);
    assert_eq!(direct.await.unwrap().status, 503);
    assert!(pay.ledger().is_empty());
    assert_eq!(settle(&sc, "h-2").await.status, 201);
}

#[tokio::test]
async fn down_refuses_connections_drops_keep_alive_and_reopens() {
    let (pay, sc) = started().await;
    assert_eq!(settle(&sc, "d-1").await.status, 201);
    // A keep-alive connection open when the service goes down.
    let mut conn = tokio::net::TcpStream::connect(pay.addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    pay.set_mode(Mode::Down);
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.expect("dropped promptly");
    assert!(matches!(closed, Ok(0) | Err(_)), "the open connection is dropped: {closed:?}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            matches!(tokio::net::TcpStream::connect(pay.addr).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
        })
        .await,
        "new connections are refused"
    );
    let got = settle(&sc, "d-2").await;
    assert_eq!(got.status, 503, "{}", got.text());
    assert_eq!(got.header("x-lifeline-error"), Some("upstream_connect_failed"));

    pay.set_mode(Mode::Healthy);
    assert!(eventually(Duration::from_secs(5), || async { get(&sc.url("/healthz")).await.status == 200 }).await);
    assert_eq!(settle(&sc, "d-3").await.status, 201);
    assert_eq!(pay.ledger().len(), 2);
}

#[tokio::test]
async fn flap_alternates_between_up_and_refused() {
    let (pay, sc) = started().await;
    pay.set_mode(mode("flap:250ms"));
    let (mut up, mut down) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (up < 3 || down < 3) && Instant::now() < deadline {
        match get(&sc.url("/healthz")).await.status.as_u16() {
            200 => up += 1,
            502 | 503 => down += 1,
            other => panic!("unexpected status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(up >= 3 && down >= 3, "up {up}, down {down}");
    pay.set_mode(Mode::Healthy);
    assert!(eventually(Duration::from_secs(5), || async { get(&sc.url("/healthz")).await.status == 200 }).await);
}

#[tokio::test]
async fn a_down_service_is_healed_through_a_sibling_and_modes_can_expire() {
    let sims = lifeline::sim::Sims::local(SimOptions::for_tests()).await.unwrap();
    let (auth, pay) = (sims.auth.as_ref().unwrap(), sims.payment.as_ref().unwrap());
    let url = auth.url("/sim/mode");
    let set = |body: serde_json::Value| {
        let url = url.clone();
        async move { post_json(&url, &body, &[]).await }
    };
    let got = set(serde_json::json!({"service": "payment", "mode": "down"})).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(tokio::net::TcpStream::connect(pay.addr).await.is_err());
    assert_eq!(get(&auth.url("/sim/mode")).await.json()["modes"]["payment"], "down");
    assert_eq!(set(serde_json::json!({"service": "payment", "mode": "healthy"})).await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async { tokio::net::TcpStream::connect(pay.addr).await.is_ok() }).await
    );

    // `for`: back to healthy by itself.
    assert_eq!(set(serde_json::json!({"service": "payment", "mode": "errors:100%", "for": "200ms"})).await.status, 200);
    assert_eq!(get(&pay.url("/healthz")).await.status, 500);
    assert!(eventually(Duration::from_secs(5), || async { get(&pay.url("/healthz")).await.status == 200 }).await);
    assert_eq!(pay.mode(), Mode::Healthy);
}

#[tokio::test]
async fn reset_after_takes_effect_but_never_answers() {
    let (pay, sc) = started().await;
    pay.set_mode(mode("reset-after:100%"));
    let got = settle(&sc, "r-1").await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(got.header("x-lifeline-error"), Some("upstream_reset"));
    // It did happen: the lookup a forwarder makes before resending finds it.
    pay.set_mode(Mode::Healthy);
    let found = get(&sc.url("/payment/v1/settlements?idempotency_key=r-1")).await;
    assert_eq!(found.status, 200, "{}", found.text());
    assert_eq!(pay.ledger().len(), 1);
    // And the resend is a replay, not a second charge.
    let again = settle(&sc, "r-1").await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(pay.ledger().len(), 1);
}

#[tokio::test]
async fn the_shipped_config_runs_against_the_simulators() {
    let sims = lifeline::sim::Sims::local(SimOptions::for_tests()).await.unwrap();
    let sc = Sidecar::start(&lifeline::sim::demo::sidecar_yaml(&sims)).await;
    let card = lifeline::sim::fixture::EXAMPLE_ACTIVE;
    let verify = serde_json::json!({"card_no": card, "pin": "123456"});
    assert_eq!(post_json(&sc.url("/auth/v1/verify"), &verify, &[]).await.status, 200);
    assert_eq!(settle(&sc, "cfg-1").await.status, 201);
    assert_eq!(get(&sc.url(&format!("/card/v1/cards/{card}"))).await.json()["status"], "active");
    assert_eq!(sims.payment.as_ref().unwrap().ledger().len(), 1);
}
