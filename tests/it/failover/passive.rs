//! Passive outlier detection: ejection on real traffic, its cap, and failover it triggers.

use std::time::{Duration, Instant};

use super::*;

/// The primary dies under load: connect failures are re-picked onto DR inside the cluster (no
/// client error, even for POST), the primary is ejected within a second with the cause logged,
/// and no attempt goes to it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_primary_is_ejected_and_traffic_moves_to_dr() {
    let primary = Killable::start("primary").await;
    let dr = Killable::start("dr").await;
    let sc = Sidecar::start(&yaml(&[(primary.addr, 0), (dr.addr, 1)], "outlier: { base_ejection: 30s }")).await;
    let url = sc.url("/payment/v1/settlements");

    let before = burst(&url, 40, 4, true).await;
    assert_eq!(before.get("primary"), 40, "healthy primary takes everything: {before:?}");

    primary.kill();
    let killed_at = now_ms();
    // Let the sidecar's pool notice its idle connections closed; a request already written to a
    // connection that dies is the retry layer's business (it was sent), not this layer's.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Fresh connections only: every request after the kill must reach DR with no error.
    let after = burst(&url, 60, 4, true).await;
    assert_eq!(after.get("dr"), 60, "connect failures re-picked onto DR, POST included: {after:?}");

    logged(&sc, Some("ejected")).await;
    let ejected = events_of(&sc, "ejected").await;
    assert_eq!(ejected.len(), 1, "{ejected:#?}");
    assert_eq!(ejected[0]["endpoint"], primary.addr.to_string());
    assert_eq!(ejected[0]["evidence"]["reason"], "consecutive_gateway_failures");
    let detect_ms = ejected[0]["at_unix_ms"].as_u64().unwrap().saturating_sub(killed_at);
    assert!(detect_ms < 1000, "ejected {detect_ms} ms after the kill");
    let failover = events_of(&sc, "failover").await;
    assert_eq!(failover.len(), 1, "{failover:#?}");
    assert!(failover[0]["message"].as_str().unwrap().contains("priority 0 has no usable endpoint"));

    let p = endpoint_state(&sc, primary.addr).await;
    assert_eq!(p["ejection"]["reason"], "consecutive_gateway_failures");
    let attempts = p["requests"].as_u64().unwrap();
    let more = burst(&url, 30, 3, false).await;
    assert_eq!(more.get("dr"), 30);
    let p = endpoint_state(&sc, primary.addr).await;
    assert_eq!(p["requests"].as_u64().unwrap(), attempts, "no attempt reaches an ejected endpoint");
    let c = cluster_state(&sc).await;
    assert_eq!(c["active_priority"], 1);
    let metrics = get(&sc.admin_url("/metrics")).await.text();
    for series in [
        "lifeline_ejections_total{cluster=\"pay\",reason=\"consecutive_gateway_failures\"}",
        "lifeline_failovers_total{cluster=\"pay\",direction=\"failover\"}",
        "lifeline_failover_priority{cluster=\"pay\"}",
        "lifeline_endpoint_ejected{cluster=\"pay\"",
        "lifeline_priority_load_share{cluster=\"pay\",priority=\"1\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
}

/// One of three endpoints answers 500: it is ejected for consecutive 5xx and the other two
/// carry the load; when all three fail, `max_ejected_percent` (50% of 3 → 1) holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_returning_500_is_ejected_and_the_cap_holds() {
    let ups = [Killable::start("a").await, Killable::start("b").await, Killable::start("c").await];
    let eps: Vec<_> = ups.iter().map(|u| (u.addr, 0)).collect();
    let sc = Sidecar::start(&yaml(&eps, "outlier: { consecutive_5xx: 5, base_ejection: 30s }")).await;
    let url = sc.url("/card/v1/status");
    ups[1].status.store(500, std::sync::atomic::Ordering::SeqCst);

    let t = burst(&url, 150, 3, false).await;
    logged(&sc, Some("ejected")).await;
    let ejected = events_of(&sc, "ejected").await;
    assert_eq!(ejected.len(), 1, "{ejected:#?}");
    assert_eq!(ejected[0]["endpoint"], ups[1].addr.to_string());
    assert_eq!(ejected[0]["evidence"]["reason"], "consecutive_5xx");
    assert!(t.get("status500:b") <= 8, "b is ejected after its 5th 500 in a row: {t:?}");

    let hits_b = ups[1].hits();
    let t = burst(&url, 100, 3, false).await;
    assert_eq!(t.get("a") + t.get("b") + t.get("c"), 100 - t.get("status500:b"));
    assert_eq!(ups[1].hits(), hits_b, "no request reaches the ejected endpoint");
    assert!(t.get("a") > 25 && t.get("c") > 25, "the other two share the load: {t:?}");

    for u in &ups {
        u.status.store(500, std::sync::atomic::Ordering::SeqCst);
    }
    let _ = burst(&url, 100, 3, false).await;
    let c = cluster_state(&sc).await;
    let ejected_now = c["endpoints"].as_array().unwrap().iter().filter(|e| !e["ejection"].is_null()).count();
    assert_eq!(ejected_now, 1, "max_ejected_percent 50% of 3 endpoints allows one ejection");
    let skipped = events_of(&sc, "ejection_skipped").await;
    assert!(!skipped.is_empty(), "a detection over the cap is logged, not enforced");
    assert_eq!(skipped[0]["evidence"]["allowed"], 1);
}

/// Failure percentage over a window ejects an endpoint that fails often but not in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_percentage_ejects_an_intermittent_endpoint() {
    let flaky = Killable::start("flaky").await;
    let good = Killable::start("good").await;
    let policy = "outlier: { consecutive_5xx: 0, consecutive_gateway_failures: 0, failure_percentage: 30%, \
                  failure_window: 10s, failure_min_requests: 20, base_ejection: 30s }";
    let sc = Sidecar::start(&yaml(&[(flaky.addr, 0), (good.addr, 0)], policy)).await;
    let url = sc.url("/x");
    let flip = flaky.status.clone();
    let flipper = tokio::spawn(async move {
        loop {
            flip.store(500, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(3)).await;
            flip.store(200, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    let start = Instant::now();
    let mut ejected = Vec::new();
    while ejected.is_empty() && start.elapsed() < Duration::from_secs(10) {
        let _ = burst(&url, 40, 2, false).await;
        ejected = events_of(&sc, "ejected").await;
    }
    flipper.abort();
    assert_eq!(ejected.len(), 1, "{ejected:#?}");
    assert_eq!(ejected[0]["endpoint"], flaky.addr.to_string());
    assert_eq!(ejected[0]["evidence"]["reason"], "failure_percentage");
    assert!(ejected[0]["evidence"]["evidence"]["requests"].as_u64().unwrap() >= 20);
}

/// Ejection never takes the last usable endpoint: a single sick endpoint keeps its traffic
/// (failing the whole cluster fast is the breaker's call), and the skipped ejection is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_usable_endpoint_is_never_ejected() {
    let only = Killable::start("only").await;
    only.status.store(500, std::sync::atomic::Ordering::SeqCst);
    let sc = Sidecar::start(&yaml(&[(only.addr, 0)], "outlier: { consecutive_5xx: 3 }")).await;
    let t = burst(&sc.url("/x"), 20, 1, false).await;
    assert_eq!(t.get("status500:only"), 20, "{t:?}");
    assert!(events_of(&sc, "ejected").await.is_empty());
    let skipped = events_of(&sc, "ejection_skipped").await;
    assert_eq!(skipped.len(), 1, "logged once per streak: {skipped:#?}");
    assert!(skipped[0]["message"].as_str().unwrap().contains("no other endpoint is usable"));
}

/// Callers that break off their uploads, or stream more than the route's `max_body`, get an
/// answer of their own (400 `client_aborted`, 413 `body_too_large`) and count against nothing:
/// with thresholds of two, the endpoint is not ejected, the breaker stays closed, and the next
/// request reaches it. Before, each counted as a reset of the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_body_failures_do_not_count_against_the_endpoint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ep = Killable::start("primary").await;
    let policy = "outlier: { consecutive_gateway_failures: 2, consecutive_5xx: 2, base_ejection: 30s }\n\
                  breaker: { consecutive_failures: 2, open_for: 30s }";
    let yaml = yaml(&[(ep.addr, 0)], policy)
        .replace("{ name: all, cluster: pay }", "{ name: all, cluster: pay, max_body: 1024 }");
    let sc = Sidecar::start(&yaml).await;
    let head = "POST /payment/v1/settlements HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n";
    for _ in 0..4 {
        // One chunk, then the caller goes away mid-body.
        let mut s = tokio::net::TcpStream::connect(sc.app.proxy_addr).await.unwrap();
        s.write_all(format!("{head}10\r\n0123456789abcdef\r\n").as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(s);
    }
    for _ in 0..4 {
        // 3 000 bytes in three chunks against a 1 024-byte limit (no Content-Length to refuse early).
        let mut s = tokio::net::TcpStream::connect(sc.app.proxy_addr).await.unwrap();
        let chunk = format!("3e8\r\n{}\r\n", "x".repeat(1000));
        s.write_all(format!("{head}{chunk}").as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.write_all(format!("{chunk}{chunk}0\r\n\r\n").as_bytes()).await;
        let mut out = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut out)).await.unwrap().unwrap_or(0);
        let out = String::from_utf8_lossy(&out[..n]);
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        assert!(out.contains("body_too_large"), "{out}");
    }
    // Give the aborted exchanges time to be recorded, then look.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let p = endpoint_state(&sc, ep.addr).await;
    assert!(p["ejection"].is_null(), "a healthy endpoint was ejected for its callers' bodies: {p}");
    assert!(events_of(&sc, "ejected").await.is_empty());
    let breakers = get(&sc.admin_url("/breakers")).await.json();
    let pay = breakers["breakers"].as_array().unwrap().iter().find(|b| b["name"] == "pay").cloned().unwrap();
    assert_eq!(pay["state"], "closed", "{pay}");
    let after = burst(&sc.url("/payment/v1/settlements"), 5, 1, true).await;
    assert_eq!(after.get("primary"), 5, "{after:?}");
    let metrics = get(&sc.admin_url("/metrics")).await.text();
    assert!(metrics.contains("outcome=\"client_aborted\""), "client aborts are counted as such");
}
