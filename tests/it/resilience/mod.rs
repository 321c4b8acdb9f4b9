//! Resilience end to end: breakers, retries, deadlines and bulkheads in a real sidecar in front
//! of stand-in upstreams whose behaviour a test switches at will.

mod admin;
mod breaker;
mod config;
mod deadline;
mod limit;
mod retry;
mod sim_e2e;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;

use crate::support::*;

/// What a [`Switchable`] upstream does: `0` healthy, `1` 503 errors, `n >= 2` healthy after n ms.
pub struct Switchable {
    pub up: Upstream,
    mode: Arc<AtomicU64>,
}

pub const HEALTHY: u64 = 0;
pub const ERRORS: u64 = 1;

impl Switchable {
    pub async fn start(mode: u64) -> Switchable {
        let m = Arc::new(AtomicU64::new(mode));
        let m2 = m.clone();
        let up = Upstream::start(Arc::new(move |req: Request<Incoming>| {
            let mode = m2.load(Ordering::SeqCst);
            Box::pin(async move {
                let headers = req.headers().clone();
                drop(req);
                if mode >= 2 {
                    tokio::time::sleep(Duration::from_millis(mode)).await;
                }
                let status = if mode == ERRORS { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
                let seen: serde_json::Map<String, serde_json::Value> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.to_str().unwrap_or(""))))
                    .collect();
                json(status, &serde_json::json!({ "headers": seen }))
            })
        }))
        .await;
        Switchable { up, mode: m }
    }

    pub fn set(&self, mode: u64) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.up.hits()
    }
}

/// A sidecar with one cluster `payment` (at `addrs`) whose YAML block is `cluster_extra`
/// (indented under the cluster) and one catch-all route with `route_extra`.
pub fn yaml(addrs: &[std::net::SocketAddr], cluster_extra: &str, route_extra: &str) -> String {
    let endpoints: String = addrs.iter().map(|a| format!("      - {{ address: {a} }}\n")).collect();
    let indent = |s: &str, n: usize| s.lines().map(|l| format!("{}{l}\n", " ".repeat(n))).collect::<String>();
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nshutdown: {{ drain_delay: 0s, grace_period: 5s }}\n\
         telemetry: {{ access_log: false }}\n\
         clusters:\n  payment:\n    endpoints:\n{endpoints}{}routes:\n  - name: all\n    cluster: payment\n{}",
        indent(cluster_extra, 4),
        indent(route_extra, 4)
    )
}

/// GET with extra headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&http1(), b.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap()).await
}

/// The breaker named `name` in `GET /breakers`.
pub async fn breaker_state(sc: &Sidecar, name: &str) -> serde_json::Value {
    let all = get(&sc.admin_url("/breakers")).await.json();
    all["breakers"].as_array().unwrap().iter().find(|b| b["name"] == name).cloned().unwrap_or_default()
}
