//! Health and ejection state across config reloads, and DNS names as endpoints.

use std::time::Duration;

use super::*;

/// An ejected endpoint stays ejected when its cluster's config changes (another key, then a
/// new endpoint), and the event log keeps its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_survives_a_reload_that_changes_the_cluster() {
    let a = Killable::start("a").await;
    let b = Killable::start("b").await;
    let policy = "outlier: { base_ejection: 60s }";
    let sc = Sidecar::start(&yaml(&[(a.addr, 0), (b.addr, 0)], policy)).await;
    a.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = burst(&sc.url("/x"), 30, 1, true).await;
    assert_eq!(t.get("b"), 30, "{t:?}");
    let before = endpoint_state(&sc, a.addr).await;
    assert_eq!(before["ejection"]["reason"], "consecutive_gateway_failures");

    sc.write_config(&yaml(&[(a.addr, 0), (b.addr, 0)], &format!("{policy}\ntimeout: 3s")));
    sc.app.reload("test").await.unwrap();
    let after = endpoint_state(&sc, a.addr).await;
    assert!(same_end(&after, &before), "{after}");
    assert_eq!(after["ejections_total"], 1);

    let c = Killable::start("c").await;
    sc.write_config(&yaml(&[(a.addr, 0), (b.addr, 0), (c.addr, 0)], policy));
    sc.app.reload("test").await.unwrap();
    let after = endpoint_state(&sc, a.addr).await;
    assert!(same_end(&after, &before), "{after}");
    let t = burst(&sc.url("/x"), 40, 1, false).await;
    assert_eq!(t.get("b") + t.get("c"), 40, "{t:?}");
    assert!(t.get("c") > 5, "the new endpoint takes traffic: {t:?}");
    assert_eq!(events_of(&sc, "ejected").await.len(), 1, "history kept, no re-ejection");
}

/// The same ejection end in two answers of the admin API, to the millisecond (it renders the
/// end, a monotonic instant, against one anchor while the wall clock keeps step; one read per
/// answer made two answers differ by a millisecond of rounding now and then).
fn same_end(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let end = |v: &serde_json::Value| v["ejection"]["until_unix_ms"].as_u64();
    matches!((end(a), end(b)), (Some(x), Some(y)) if x == y)
}

/// A DNS name becomes one endpoint per record (real resolution of `localhost`); requests
/// succeed even when a record (`::1`) has nothing listening, since connect failures re-pick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_name_expands_to_its_records() {
    let up = Killable::start("up").await;
    let port = up.addr.port();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\ntelemetry: {{ access_log: false }}\n\
         clusters:\n  pay:\n    dns_refresh: 200ms\n    endpoints:\n      - {{ address: \"localhost:{port}\" }}\n\
         routes:\n  - {{ name: all, cluster: pay }}\n"
    );
    let sc = Sidecar::start(&yaml).await;
    let t = burst(&sc.url("/x"), 20, 2, true).await;
    assert_eq!(t.get("up"), 20, "{t:?}");
    let c = cluster_state(&sc).await;
    let eps = c["endpoints"].as_array().unwrap();
    assert!(eps.iter().any(|e| e["address"] == format!("127.0.0.1:{port}")), "{c}");
    assert!(eps.iter().all(|e| e["configured_as"] == format!("localhost:{port}")));
}

/// `GET /clusters/events` pages with `since`, filters by cluster, and names bad parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_query_parameters() {
    let a = Killable::start("a").await;
    let b = Killable::start("b").await;
    let sc = Sidecar::start(&yaml(&[(a.addr, 0), (b.addr, 0)], "")).await;
    a.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = burst(&sc.url("/x"), 20, 1, false).await;
    logged(&sc, None).await;
    let all = events(&sc).await;
    let last = all.last().unwrap()["seq"].as_u64().unwrap();
    let newer = get(&sc.admin_url(&format!("/clusters/events?since={last}"))).await.json();
    assert_eq!(newer["events"].as_array().unwrap().len(), 0);
    let one = get(&sc.admin_url("/clusters/events?limit=1")).await.json();
    assert_eq!(one["events"].as_array().unwrap().len(), 1);
    let bad = get(&sc.admin_url("/clusters/events?since=yesterday")).await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("since"), "{}", bad.text());
    let missing = get(&sc.admin_url("/clusters/events?cluster=nope")).await;
    assert_eq!(missing.status, 404);
    assert!(missing.text().contains("known: pay"), "{}", missing.text());
}

/// Health checkers are owned: they stop when the app shuts down, and a reload that replaces the
/// cluster does not leave the old generation's checkers running beside the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checkers_stop_on_shutdown_and_are_not_duplicated_by_reloads() {
    let checks = Arc::new(AtomicUsize::new(0));
    let seen = checks.clone();
    let up = Upstream::start(Arc::new(move |req: Request<hyper::body::Incoming>| {
        if req.uri().path() == "/healthz" {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async { Response::new(body::full("ok")) })
    }))
    .await;
    let policy = "health_check: { interval: 100ms, jitter: 0% }";
    let sc = Sidecar::start(&yaml(&[(up.addr, 0)], policy)).await;
    let rate = |c: &Arc<AtomicUsize>| {
        let c = c.clone();
        async move {
            let before = c.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1000)).await;
            c.load(Ordering::SeqCst) - before
        }
    };
    let first = rate(&checks).await;
    assert!((5..=12).contains(&first), "about 10 checks a second: {first}");
    for timeout in ["3s", "4s"] {
        sc.write_config(&yaml(&[(up.addr, 0)], &format!("{policy}\ntimeout: {timeout}")));
        sc.app.reload("test").await.unwrap();
    }
    let after_reloads = rate(&checks).await;
    assert!(after_reloads <= 12, "one checker per endpoint after two reloads: {after_reloads}");
    sc.app.shutdown().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rate(&checks).await, 0, "no health check after shutdown");
}

/// Switching active checks off on reload does not leave an endpoint stuck in the last verdict
/// they gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_health_checks_off_releases_their_verdict() {
    let a = Killable::start("a").await;
    a.health_status.store(503, Ordering::SeqCst);
    let b = Killable::start("b").await;
    let checks = "health_check: { interval: 100ms, transition_interval: 50ms, unhealthy: 1 }";
    let sc = Sidecar::start(&yaml(&[(a.addr, 0), (b.addr, 0)], checks)).await;
    assert!(
        eventually(Duration::from_secs(5), || async { endpoint_state(&sc, a.addr).await["health"] == "unhealthy" })
            .await
    );
    sc.write_config(&yaml(&[(a.addr, 0), (b.addr, 0)], ""));
    sc.app.reload("test").await.unwrap();
    assert_eq!(endpoint_state(&sc, a.addr).await["health"], "healthy");
    let t = burst(&sc.url("/x"), 40, 1, false).await;
    assert!(t.get("a") > 5, "a takes traffic again: {t:?}");
}

/// An operator can eject an endpoint and end an ejection early (token required); both are
/// logged decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_ejects_and_reinstates_an_endpoint() {
    let a = Killable::start("a").await;
    let b = Killable::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let yaml = yaml(&[(a.addr, 0), (b.addr, 0)], "").replace(
        "admin: { listen: 127.0.0.1:0 }",
        &format!("admin: {{ listen: 127.0.0.1:0, token_file: {} }}", token.display()),
    );
    let sc = Sidecar::start(&yaml).await;
    let url = |action: &str| sc.admin_url(&format!("/clusters/pay/endpoints/{}/{action}", a.addr));
    let auth = [("authorization", "Bearer s3cret")];
    assert_eq!(post_json(&url("eject"), &serde_json::json!({}), &[]).await.status, 401);
    let got = post_json(&(url("eject") + "?for=1h"), &serde_json::json!({}), &auth).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(endpoint_state(&sc, a.addr).await["ejection"]["reason"], "operator");
    assert_eq!(burst(&sc.url("/x"), 20, 1, false).await.get("b"), 20);
    let got = post_json(&url("reinstate"), &serde_json::json!({}), &auth).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(endpoint_state(&sc, a.addr).await["ejection"].is_null());
    assert_eq!(post_json(&url("reinstate"), &serde_json::json!({}), &auth).await.status, 409);
    let bad = post_json(&sc.admin_url("/clusters/pay/endpoints/10.9.9.9:1/eject"), &serde_json::json!({}), &auth).await;
    assert_eq!(bad.status, 404);
    assert!(bad.text().contains("known:"), "{}", bad.text());
    let kinds: Vec<String> = events(&sc).await.iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect();
    assert!(kinds.ends_with(&["ejected".to_string(), "reinstated".to_string()]), "{kinds:?}");
}
