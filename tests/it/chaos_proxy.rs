//! The TCP fault proxy: each toxic as a client (and the sidecar) sees it, TTLs, partition, and
//! the control API.

use std::time::{Duration, Instant};

use lifeline::chaos::proxy::{api, FaultProxy};
use serde_json::json;

use crate::chaos_faults::admin;
use crate::support::{self, Sidecar, Upstream};

struct Harness {
    up: Upstream,
    proxy: FaultProxy,
    api: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn harness(up: Upstream) -> Harness {
    let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), up.addr.to_string()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(api::serve(listener, api::Api { state: proxy.state.clone(), token_file: None }));
    Harness { up, proxy, api, task }
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.addr())
    }
    async fn toxic(&self, spec: serde_json::Value) {
        let got = admin("POST", &format!("{}/toxics", self.api), Some(spec), None).await;
        assert_eq!(got.status, 201, "{}", got.text());
    }
}

fn sidecar_yaml(addr: std::net::SocketAddr) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nshutdown: {{ drain_delay: 0s, grace_period: 5s }}\n\
         clusters:\n  payment:\n    endpoints:\n      - {{ address: {addr} }}\n    timeout: 700ms\n    connect_timeout: 300ms\n    outlier: {{ enabled: false }}\n\
         routes:\n  - {{ name: all, cluster: payment }}\n"
    )
}

#[tokio::test]
async fn passes_traffic_and_adds_latency_to_open_connections() {
    let h = harness(Upstream::echo().await).await;
    let s = Sidecar::start(&sidecar_yaml(h.proxy.addr())).await;
    assert_eq!(support::get(&s.url("/a")).await.status, 200, "pooled connection opened");
    h.toxic(json!({"name": "lat", "toxic": {"latency": {"latency": "300ms", "jitter": "20ms"}}, "ttl": "30s"})).await;
    let t = Instant::now();
    assert_eq!(support::get(&s.url("/a")).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(270), "latency on a reused connection: {:?}", t.elapsed());
    let got = admin("DELETE", &format!("{}/toxics/lat", h.api), None, None).await;
    assert_eq!(got.status, 200);
    let t = Instant::now();
    support::get(&s.url("/a")).await;
    assert!(t.elapsed() < Duration::from_millis(250), "removed: {:?}", t.elapsed());
    assert!(h.up.hits() >= 3);
}

#[tokio::test]
async fn hang_and_reset_look_like_a_dead_backend_to_the_sidecar() {
    let h = harness(Upstream::echo().await).await;
    let s = Sidecar::start(&sidecar_yaml(h.proxy.addr())).await;
    h.toxic(json!({"name": "hang", "toxic": {"timeout": {"timeout": "0s"}}, "ttl": "30s"})).await;
    let got = support::get(&s.url("/a")).await;
    // The route's overall deadline fires (no per-try timeout configured): 504 deadline_exceeded.
    assert_eq!((got.status.as_u16(), got.header("x-lifeline-error")), (504, Some("deadline_exceeded")));
    admin("DELETE", &format!("{}/toxics", h.api), None, None).await;
    assert_eq!(support::get(&s.url("/a")).await.status, 200, "healed");

    h.toxic(json!({"stream": "upstream", "toxic": {"reset_peer": {"timeout": "0s"}}, "ttl": "30s"})).await;
    let got = support::get(&s.url("/a")).await;
    // A reset that lands before the request was written is "nothing sent" (503, safe to send
    // elsewhere); one that lands after is an upstream reset (502). Which comes first is a race
    // between the toxic and the sidecar's write; both must read as a dead backend.
    let seen = (got.status.as_u16(), got.header("x-lifeline-error"));
    assert!(
        seen == (502, Some("upstream_reset")) || seen == (503, Some("upstream_connect_failed")),
        "{seen:?} {}",
        got.text()
    );
}

#[tokio::test]
async fn partition_refuses_connections_until_its_ttl() {
    let h = harness(Upstream::echo().await).await;
    let s = Sidecar::start(&sidecar_yaml(h.proxy.addr())).await;
    assert_eq!(support::get(&s.url("/a")).await.status, 200);
    let got = admin("POST", &format!("{}/proxy", h.api), Some(json!({"enabled": false})), None).await;
    assert_eq!(got.status, 422, "a partition needs a ttl");
    let got = admin("POST", &format!("{}/proxy", h.api), Some(json!({"enabled": false, "ttl": "1500ms"})), None).await;
    assert_eq!(got.json()["enabled"], false);
    let got = support::get(&s.url("/a")).await;
    assert!(got.status == 503 || got.status == 502, "{} {}", got.status, got.text());
    let got = support::get(&s.url("/a")).await;
    assert_eq!(got.header("x-lifeline-error"), Some("upstream_connect_failed"), "{}", got.text());
    let healed =
        support::eventually(Duration::from_secs(5), || async { support::get(&s.url("/a")).await.status == 200 }).await;
    assert!(healed, "the partition ended by its ttl");
}

#[tokio::test]
async fn bandwidth_slicer_toxicity_and_ttl() {
    let up = Upstream::start(std::sync::Arc::new(|_req| {
        Box::pin(async move { support::json(http::StatusCode::OK, &json!({"pad": "y".repeat(4000)})) })
    }))
    .await;
    let h = harness(up).await;
    h.toxic(json!({"toxic": {"slicer": {"average_size": 100, "size_variation": 50, "delay": "1ms"}}, "ttl": "30s"}))
        .await;
    let got = support::get(&h.url("/x")).await;
    assert_eq!(got.json()["pad"].as_str().unwrap().len(), 4000, "sliced data arrives whole");
    admin("POST", &format!("{}/reset", h.api), None, None).await;

    h.toxic(json!({"toxic": {"bandwidth": {"rate": "8KiB"}}, "ttl": "30s"})).await;
    let t = Instant::now();
    support::get(&h.url("/x")).await;
    assert!(t.elapsed() >= Duration::from_millis(350), "4KB at 8KiB/s: {:?}", t.elapsed());
    admin("POST", &format!("{}/reset", h.api), None, None).await;

    h.toxic(json!({"toxicity": 0.0, "toxic": {"timeout": {"timeout": "0s"}}, "ttl": "30s"})).await;
    assert_eq!(support::get(&h.url("/x")).await.status, 200, "toxicity 0 affects no connection");
    admin("POST", &format!("{}/reset", h.api), None, None).await;

    h.toxic(json!({"toxic": {"latency": {"latency": "400ms"}}, "ttl": "300ms"})).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let t = Instant::now();
    support::get(&h.url("/x")).await;
    assert!(t.elapsed() < Duration::from_millis(350), "expired toxic no longer acts: {:?}", t.elapsed());
    let list = support::get(&format!("{}/toxics", h.api)).await.json();
    assert_eq!(list["toxics"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn api_rejects_bad_toxics_naming_the_field() {
    let h = harness(Upstream::echo().await).await;
    let url = format!("{}/toxics", h.api);
    let got = admin("POST", &url, Some(json!({"toxic": {"latency": {"latency": "1s"}}})), None).await;
    assert_eq!(got.status, 400);
    assert!(got.text().contains("ttl"), "{}", got.text());
    let got =
        admin("POST", &url, Some(json!({"toxicity": 2.0, "toxic": {"latency": {"latency": "1s"}}, "ttl": "1s"})), None)
            .await;
    assert_eq!(got.status, 422);
    assert!(got.text().contains("toxicity"), "{}", got.text());
    let got = admin("POST", &url, Some(json!({"toxic": {"latncy": {}}, "ttl": "1s"})), None).await;
    assert_eq!(got.status, 400);
    assert!(got.text().contains("latncy"), "{}", got.text());
}
