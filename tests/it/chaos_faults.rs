//! The sidecar's fault layer: each fault kind as a caller and the upstream see it, targeting,
//! TTL expiry, stop-all, the token and the opt-in.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

use crate::support::{self, Sidecar, Upstream};

const TOKEN: &str = "drill-token-123";

/// A sidecar with chaos on (or off), a token file, and routes `settle` and `other` to `payment`.
async fn sidecar(addr: std::net::SocketAddr, enabled: bool, dir: &tempfile::TempDir) -> Sidecar {
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token_file: {} }}\n\
         shutdown: {{ drain_delay: 0s, grace_period: 5s }}\nchaos: {{ enabled: {enabled}, max_ttl: 10m }}\n\
         clusters:\n  payment:\n    endpoints:\n      - {{ address: {addr} }}\n    timeout: 800ms\n\
         routes:\n  - {{ name: settle, match: {{ path_prefix: /settle }}, cluster: payment }}\n\
         \x20 - {{ name: other, cluster: payment }}\n",
        token.display()
    );
    Sidecar::start(&yaml).await
}

pub async fn admin(method: &str, url: &str, body: Option<serde_json::Value>, token: Option<&str>) -> support::Got {
    let mut b = Request::builder().method(method).uri(url).header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map(|v| Bytes::from(serde_json::to_vec(&v).unwrap())).unwrap_or_default();
    support::send(&support::http1(), b.body(Full::new(body)).unwrap()).await
}

async fn inject(s: &Sidecar, spec: serde_json::Value) -> serde_json::Value {
    let got = admin("POST", &s.admin_url("/chaos/faults"), Some(spec), Some(TOKEN)).await;
    assert_eq!(got.status, 201, "{}", got.text());
    got.json()
}

#[tokio::test]
async fn chaos_is_opt_in_and_needs_the_token() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar(up.addr, false, &dir).await;
    let spec = json!({"cluster": "payment", "fault": "reset", "ttl": "10s"});
    let got = admin("POST", &s.admin_url("/chaos/faults"), Some(spec.clone()), Some(TOKEN)).await;
    assert_eq!(got.status, 403);
    assert_eq!(got.json()["error"], "chaos_disabled");

    let dir2 = tempfile::tempdir().unwrap();
    let s = sidecar(up.addr, true, &dir2).await;
    let got = admin("POST", &s.admin_url("/chaos/faults"), Some(spec.clone()), None).await;
    assert_eq!(got.status, 401);
    let got = admin("POST", &s.admin_url("/chaos/faults"), Some(spec.clone()), Some("wrong")).await;
    assert_eq!(got.status, 401);
    let got = admin("DELETE", &s.admin_url("/chaos/faults"), None, None).await;
    assert_eq!(got.status, 401, "stop-all also needs the token");
    assert_eq!(support::get(&s.url("/x")).await.status, 200, "nothing was injected");
}

#[tokio::test]
async fn invalid_faults_are_refused_with_the_field_named() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar(up.addr, true, &dir).await;
    let cases = [
        (json!({"cluster": "payment", "fault": "reset"}), 400, "ttl"),
        (json!({"cluster": "payment", "fault": "reset", "ttl": "10s", "typo": 1}), 400, "typo"),
        (json!({"cluster": "nope", "fault": "reset", "ttl": "10s"}), 422, "cluster"),
        (json!({"cluster": "payment", "route": "nope", "fault": "reset", "ttl": "10s"}), 422, "route"),
        (json!({"cluster": "payment", "endpoint": "10.9.9.9:1", "fault": "reset", "ttl": "10s"}), 422, "endpoint"),
        (json!({"cluster": "payment", "fault": "reset", "ttl": "11m"}), 422, "max_ttl"),
        (json!({"cluster": "payment", "fault": {"abort": {"status": 42}}, "ttl": "10s"}), 422, "status"),
        (json!({"cluster": "payment", "fault": "reset", "ttl": "0s"}), 422, "ttl"),
    ];
    for (spec, status, needle) in cases {
        let got = admin("POST", &s.admin_url("/chaos/faults"), Some(spec.clone()), Some(TOKEN)).await;
        assert_eq!(got.status, status, "{spec}: {}", got.text());
        assert!(got.text().contains(needle), "{spec}: {} should name {needle}", got.text());
    }
    let list = support::get(&s.admin_url("/chaos/faults")).await.json();
    assert_eq!(list["faults"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn abort_reset_refuse_look_like_upstream_failures() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar(up.addr, true, &dir).await;
    let f = inject(
        &s,
        json!({"id": "ab", "cluster": "payment", "route": "settle", "fault": {"abort": {"status": 503}}, "ttl": "60s"}),
    )
    .await;
    assert_eq!(f["id"], "ab");
    let got = support::get(&s.url("/settle")).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("x-lifeline-error"), Some("injected_fault"));
    assert_eq!(up.hits(), 0, "an abort never reaches the upstream");
    assert_eq!(support::get(&s.url("/other")).await.status, 200, "route targeting");
    assert_eq!(up.hits(), 1);

    let got = admin("DELETE", &s.admin_url("/chaos/faults/ab"), None, Some(TOKEN)).await;
    assert_eq!(got.status, 200);
    assert_eq!(admin("DELETE", &s.admin_url("/chaos/faults/ab"), None, Some(TOKEN)).await.status, 404);

    inject(&s, json!({"id": "r", "cluster": "payment", "fault": "reset", "ttl": "60s"})).await;
    let got = support::get(&s.url("/settle")).await;
    assert_eq!((got.status.as_u16(), got.header("x-lifeline-error")), (502, Some("upstream_reset")));
    admin("DELETE", &s.admin_url("/chaos/faults/r"), None, Some(TOKEN)).await;

    inject(&s, json!({"cluster": "payment", "endpoint": up.addr.to_string(), "fault": "refuse", "ttl": "60s"})).await;
    let got = support::get(&s.url("/settle")).await;
    assert_eq!((got.status.as_u16(), got.header("x-lifeline-error")), (503, Some("upstream_connect_failed")));

    let list = support::get(&s.admin_url("/chaos/faults")).await.json();
    assert_eq!(list["faults"][0]["injected"], 1);
    assert_eq!(list["faults"][0]["kind"], "refuse");
    let metrics = support::get(&s.admin_url("/metrics")).await.text();
    assert!(metrics.contains("lifeline_faults_injected_total{kind=\"refuse\"}"), "{metrics}");
}

#[tokio::test]
async fn reset_after_send_reaches_the_upstream_and_loses_the_answer() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar(up.addr, true, &dir).await;
    inject(&s, json!({"cluster": "payment", "fault": "reset_after_send", "ttl": "60s"})).await;
    let got = support::get(&s.url("/settle")).await;
    assert_eq!(got.status, 502);
    assert_eq!(up.hits(), 1, "the upstream did the work");
}

#[tokio::test]
async fn delay_blackhole_and_bandwidth() {
    let up = Upstream::start(std::sync::Arc::new(|_req| {
        Box::pin(async move { support::json(http::StatusCode::OK, &json!({"pad": "x".repeat(3000)})) })
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar(up.addr, true, &dir).await;
    inject(&s, json!({"id": "d", "cluster": "payment", "fault": {"delay": {"fixed": "300ms"}}, "ttl": "60s"})).await;
    let t = Instant::now();
    assert_eq!(support::get(&s.url("/a")).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
    admin("DELETE", &s.admin_url("/chaos/faults/d"), None, Some(TOKEN)).await;

    inject(&s, json!({"id": "b", "cluster": "payment", "fault": "blackhole", "ttl": "60s"})).await;
    let got = support::get(&s.url("/a")).await;
    // The route's overall deadline fires (no per-try timeout configured): 504 deadline_exceeded.
    assert_eq!((got.status.as_u16(), got.header("x-lifeline-error")), (504, Some("deadline_exceeded")));
    admin("DELETE", &s.admin_url("/chaos/faults/b"), None, Some(TOKEN)).await;

    inject(&s, json!({"cluster": "payment", "fault": {"bandwidth": {"rate": "10KiB"}}, "ttl": "60s"})).await;
    let t = Instant::now();
    let got = support::get(&s.url("/a")).await;
    assert_eq!(got.body.len(), 3010);
    assert!(t.elapsed() >= Duration::from_millis(250), "3KB at 10KiB/s takes ~0.3s: {:?}", t.elapsed());
}

#[tokio::test]
async fn faults_expire_by_ttl_and_stop_all_clears_everything() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar(up.addr, true, &dir).await;
    inject(&s, json!({"cluster": "payment", "fault": {"abort": {"status": 500}}, "ttl": "400ms"})).await;
    assert_eq!(support::get(&s.url("/a")).await.status, 500);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(support::get(&s.url("/a")).await.status, 200, "expired by itself");
    let gone = support::eventually(Duration::from_secs(3), || async {
        support::get(&s.admin_url("/chaos/faults")).await.json()["faults"].as_array().unwrap().is_empty()
    })
    .await;
    assert!(gone);

    for i in 0..3 {
        inject(
            &s,
            json!({"id": format!("f{i}"), "cluster": "payment", "fault": "reset", "percent": "50%", "ttl": "60s"}),
        )
        .await;
    }
    let got = admin("DELETE", &s.admin_url("/chaos/faults"), None, Some(TOKEN)).await;
    assert_eq!(got.json()["removed"], 3);
    for _ in 0..5 {
        assert_eq!(support::get(&s.url("/a")).await.status, 200);
    }
}

#[tokio::test]
async fn disabling_chaos_on_reload_clears_faults() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar(up.addr, true, &dir).await;
    inject(&s, json!({"cluster": "payment", "fault": {"abort": {"status": 500}}, "ttl": "60s"})).await;
    let yaml = std::fs::read_to_string(&s.config_path).unwrap().replace("enabled: true", "enabled: false");
    s.write_config(&yaml);
    s.app.reload("test").await.unwrap();
    assert_eq!(support::get(&s.url("/a")).await.status, 200);
}
