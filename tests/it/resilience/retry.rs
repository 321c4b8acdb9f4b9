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

/// Every attempt of a request carries the same request: the caller's fields (a repeated one in
/// order), one `Host` (the caller's; from `:authority` for an h2c caller), one remaining-time
/// field, and the whole body. The path below the retry layer borrows the request
/// instead of consuming a copy, so nothing one attempt wrote into it may leak into the next.
#[tokio::test]
async fn every_attempt_sends_the_same_request() {
    /// Per request: the address of the upstream that got it, its fields, its body.
    type Seen = Arc<std::sync::Mutex<Vec<(String, Vec<(String, String)>, Vec<u8>)>>>;
    /// An upstream that records what it got and answers 503 to its first request, 200 after.
    async fn recording(seen: Seen) -> Upstream {
        let me = Arc::new(std::sync::OnceLock::<String>::new());
        let me2 = me.clone();
        let up = Upstream::start(Arc::new(move |req: Request<Incoming>| {
            let (seen, me) = (seen.clone(), me2.clone());
            Box::pin(async move {
                use http_body_util::BodyExt;
                let (parts, body) = req.into_parts();
                let fields = parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                let mut seen = seen.lock().unwrap();
                let addr = me.get().cloned().unwrap_or_default();
                let first = !seen.iter().any(|(a, _, _)| *a == addr);
                seen.push((addr, fields, body));
                let status = if first { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
                json(status, &serde_json::json!({}))
            })
        }))
        .await;
        me.set(up.addr.to_string()).unwrap();
        up
    }
    let seen: Seen = Arc::default();
    let (a, b) = (recording(seen.clone()).await, recording(seen.clone()).await);
    let cfg = "retry:\n  attempts: 3\n  backoff: 1ms..2ms\n";
    let sc = Sidecar::start(&yaml(&[a.addr, b.addr], cfg, "")).await;
    let payload = br#"{"amount_fen": 1200}"#;
    let request = || {
        Request::post(sc.url("/settle"))
            .header("idempotency-key", "k-same")
            .header("x-thing", "a")
            .header("x-thing", "b")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(payload)))
            .unwrap()
    };
    for client in [http1(), http2()] {
        seen.lock().unwrap().clear();
        let got = send(&client, request()).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.header("x-lifeline-attempts"), Some("3"), "503 from each endpoint first, then 200");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for (addr, fields, body) in seen.iter() {
            let all =
                |name: &str| fields.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
            let host = all("host");
            assert_eq!(host.len(), 1, "{fields:?}");
            assert!(sc.url("/").contains(host[0]), "the caller's Host, not the endpoint's {addr}: {host:?}");
            assert_eq!(all("x-thing"), ["a", "b"], "{fields:?}");
            assert_eq!(all("idempotency-key"), ["k-same"]);
            assert_eq!(all("x-lifeline-timeout-ms").len(), 1, "{fields:?}");
            assert_eq!(body.as_slice(), payload, "the body is replayed whole");
        }
        assert_ne!(seen[0].0, seen[1].0, "the retry went to the endpoint not tried yet");
    }
}
