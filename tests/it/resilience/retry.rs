//! Retries: bounded by the budget, never resending what is unsafe, preferring another endpoint.

use super::*;

#[tokio::test]
async fn a_retry_storm_stays_within_the_budget() {
    let up = Switchable::start(ERRORS).await;
    // 3 attempts each would be 3x the load; the budget allows 20% + 1/s over a 10s window.
    let cfg = "retry:\n  attempts: 3\n  backoff: 1ms..2ms\n  budget: 20%\n  min_per_second: 1\n  budget_window: 10s\n";
    let sc = Sidecar::start(&yaml(&[up.up.addr], cfg, "")).await;
    let requests = 60;
    for chunk in 0..(requests / 10) {
        let calls = (0..10).map(|i| {
            let url = sc.url(&format!("/pay/{chunk}/{i}"));
            tokio::spawn(async move { get(&url).await })
        });
        for got in futures_util::future::join_all(calls).await {
            let got = got.unwrap();
            assert_eq!(got.status, 503);
            let attempts: u32 = got.header("x-lifeline-attempts").unwrap().parse().unwrap();
            assert!((1..=3).contains(&attempts));
        }
    }
    let bound = requests + requests / 5 + 10; // (1 + ratio) x requests + min_per_second x window
    let hits = up.hits();
    assert!(hits > requests, "some retries happen: {hits}");
    assert!(hits <= bound, "{hits} upstream attempts for {requests} requests exceeds the budget bound {bound}");
    let metrics = get(&sc.admin_url("/metrics")).await.text();
    assert!(metrics.contains("lifeline_retry_budget_exhausted_total{cluster=\"payment\"}"), "{metrics}");
}

#[tokio::test]
async fn a_sent_post_without_key_is_never_retried_with_a_key_it_is() {
    let up = Switchable::start(ERRORS).await;
    let cfg = "retry:\n  attempts: 3\n  backoff: 1ms..2ms\n  retry_on: [5xx, connect_error, reset]\n";
    let sc = Sidecar::start(&yaml(&[up.up.addr], cfg, "")).await;
    let body = serde_json::json!({"amount_fen": 1200});
    let got = post_json(&sc.url("/settle"), &body, &[]).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("x-lifeline-attempts"), Some("1"));
    assert_eq!(up.hits(), 1, "a POST that reached the backend is not resent without an Idempotency-Key");

    let got = post_json(&sc.url("/settle"), &body, &[("idempotency-key", "k-1")]).await;
    assert_eq!(got.header("x-lifeline-attempts"), Some("3"));
    assert_eq!(up.hits(), 4);

    let got = get(&sc.url("/status")).await;
    assert_eq!(got.header("x-lifeline-attempts"), Some("3"), "GET is idempotent");
}

#[tokio::test]
async fn a_post_that_was_never_sent_moves_to_another_endpoint() {
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let live = Upstream::echo().await;
    let sc = Sidecar::start(&yaml(&[dead, live.addr], "retry:\n  attempts: 2\n  backoff: 1ms..2ms\n", "")).await;
    for i in 0..4 {
        let got = post_json(&sc.url("/settle"), &serde_json::json!({"n": i}), &[]).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.json()["body_bytes"], 7, "the replayed body arrives whole");
        let attempts = got.header("x-lifeline-attempts").unwrap();
        assert!(attempts == "1" || attempts == "2", "{attempts}");
    }
    assert_eq!(live.hits(), 4);
}

#[tokio::test]
async fn a_retry_prefers_an_endpoint_not_tried_yet() {
    let a = Switchable::start(ERRORS).await;
    let b = Switchable::start(ERRORS).await;
    let sc = Sidecar::start(&yaml(&[a.up.addr, b.up.addr], "retry:\n  attempts: 2\n  backoff: 1ms..2ms\n", "")).await;
    for _ in 0..3 {
        assert_eq!(get(&sc.url("/x")).await.header("x-lifeline-attempts"), Some("2"));
    }
    assert_eq!((a.hits(), b.hits()), (3, 3), "each request tried both endpoints once");
}

#[tokio::test]
async fn bodies_over_the_replay_cap_are_sent_once() {
    let up = Switchable::start(ERRORS).await;
    let cfg = "retry:\n  attempts: 3\n  backoff: 1ms..2ms\n  max_replay_body: 16\n";
    let sc = Sidecar::start(&yaml(&[up.up.addr], cfg, "")).await;
    let big = serde_json::json!({"padding": "x".repeat(64)});
    let got = post_json(&sc.url("/x"), &big, &[("idempotency-key", "k")]).await;
    assert_eq!(got.header("x-lifeline-attempts"), Some("1"));
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_grace_forward_with_a_key_is_not_resent_after_it_was_sent() {
    use lifeline::proxy::stack::ResendOnlyIfNotSent;
    use tower::ServiceExt;
    let up = Switchable::start(ERRORS).await;
    let cfg = "retry:\n  attempts: 3\n  backoff: 1ms..2ms\n  retry_on: [5xx, connect_error, reset]\n";
    let sc = Sidecar::start(&yaml(&[up.up.addr], cfg, "")).await;
    let send = |marked: bool| {
        let svc = sc.app.state.runtime.load().routes[0].service.clone();
        let mut req = http::Request::post("/settle")
            .header("idempotency-key", if marked { "fwd-1" } else { "live-1" })
            .body(lifeline::proxy::body::full("{\"amount_fen\": 1200}"))
            .unwrap();
        if marked {
            req.extensions_mut().insert(ResendOnlyIfNotSent);
        }
        svc.oneshot(req)
    };
    let before = up.hits();
    let resp = send(false).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(up.hits() - before, 3, "a keyed live request is retried");
    let before = up.hits();
    let resp = send(true).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(up.hits() - before, 1, "a marked forward reached the backend once: resolve by query, not resend");
}
