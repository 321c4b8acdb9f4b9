//! Load balancing inside a priority, and the balancer's cooperation with the retry layer.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use lifeline::config::Config;
use lifeline::proxy::stack::TriedEndpoints;
use lifeline::upstream::{resolve, Cluster, ClusterService};

use super::*;

fn weighted_yaml(eps: &[(SocketAddr, u32, u32)], lb: &str) -> String {
    let mut s = String::from(
        "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\ntelemetry: { access_log: false }\n\
         clusters:\n  pay:\n    connect_timeout: 300ms\n",
    );
    s += &format!("    load_balancer: {lb}\n    endpoints:\n");
    for (addr, prio, weight) in eps {
        s += &format!("      - {{ address: {addr}, priority: {prio}, weight: {weight} }}\n");
    }
    s += "routes:\n  - { name: all, cluster: pay }\n";
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_honours_weights_exactly() {
    let ups = [Killable::start("a").await, Killable::start("b").await, Killable::start("c").await];
    let eps = [(ups[0].addr, 0, 1), (ups[1].addr, 0, 2), (ups[2].addr, 0, 3)];
    let sc = Sidecar::start(&weighted_yaml(&eps, "round_robin")).await;
    let t = burst(&sc.url("/x"), 600, 1, false).await;
    assert_eq!((t.get("a"), t.get("b"), t.get("c")), (100, 200, 300), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_honours_weights_and_avoids_the_slow_endpoint() {
    let ups = [Killable::start("a").await, Killable::start("b").await];
    let eps = [(ups[0].addr, 0, 1), (ups[1].addr, 0, 3)];
    let sc = Sidecar::start(&weighted_yaml(&eps, "least_request")).await;
    let t = burst(&sc.url("/x"), 800, 1, false).await;
    let (a, b) = (t.get("a") as f64, t.get("b") as f64);
    assert!((b / (a + b) - 0.75).abs() < 0.08, "weight 1:3 → about 25%/75%: {t:?}");

    // A slow endpoint accumulates outstanding requests; P2C sends new ones elsewhere.
    let slow = Upstream::fixed(200, Duration::from_millis(150)).await;
    let fast = Upstream::fixed(200, Duration::ZERO).await;
    let sc = Sidecar::start(&weighted_yaml(&[(slow.addr, 0, 1), (fast.addr, 0, 1)], "least_request")).await;
    let t = burst(&sc.url("/x"), 300, 16, false).await;
    assert_eq!(t.get("ok"), 300, "{t:?}");
    assert!(fast.hits() > 3 * slow.hits(), "fast {} vs slow {}", fast.hits(), slow.hits());
}

async fn cluster(yaml: &str) -> Arc<Cluster> {
    let config = Config::from_yaml("test.yaml", yaml).unwrap();
    let c = Cluster::build(&config.clusters["pay"], None, resolve::system());
    c.start();
    c
}

async fn call(c: &Arc<Cluster>, tried: &TriedEndpoints) -> String {
    let req = Request::post("/x").body(lifeline::proxy::body::full("{}")).unwrap();
    let resp = ClusterService::new(c.clone())
        .send(&mut lifeline::proxy::body::ProxyRequest::new(req), Some(tried))
        .await
        .unwrap();
    // The backend's fields pass through the client unparsed (`Passthrough`).
    let name = http::HeaderName::from_static("x-upstream");
    let v = lifeline::proxy::passthrough::response_header(&resp, &name).expect("the backend names itself");
    String::from_utf8(v.to_vec()).unwrap()
}

/// Retries prefer endpoints not tried yet, across priorities; the balancer records its picks in
/// the shared list the retry layer reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_prefer_untried_endpoints_even_in_another_priority() {
    let ups = [Killable::start("a").await, Killable::start("b").await, Killable::start("dr").await];
    let c =
        cluster(&weighted_yaml(&[(ups[0].addr, 0, 1), (ups[1].addr, 0, 1), (ups[2].addr, 1, 1)], "round_robin")).await;
    for _ in 0..10 {
        let tried = TriedEndpoints::default();
        let first = call(&c, &tried).await;
        let second = call(&c, &tried).await;
        let third = call(&c, &tried).await;
        assert_ne!(first, second);
        assert!(first != "dr" && second != "dr", "the primary priority serves first attempts");
        assert_eq!(third, "dr", "both primaries tried: the retry goes to DR");
        assert_eq!(tried.len(), 3);
    }
}

/// A connect failure is re-picked inside the cluster service: the caller (and the retry
/// layer) sees one successful answer, and both endpoints are in the tried list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_repicked_on_another_endpoint() {
    let dead = Killable::start("dead").await;
    let live = Killable::start("live").await;
    dead.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = cluster(&weighted_yaml(&[(dead.addr, 0, 1), (live.addr, 0, 1)], "round_robin")).await;
    let mut repicked = 0;
    for _ in 0..4 {
        let tried = TriedEndpoints::default();
        assert_eq!(call(&c, &tried).await, "live");
        repicked += usize::from(tried.len() == 2);
    }
    assert!(repicked >= 1, "round-robin hit the dead endpoint at least once and re-picked");
}
