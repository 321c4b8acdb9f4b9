//! Failover, health checks, outlier ejection and load balancing (issue 5), end to end through
//! a sidecar on loopback with stand-in upstreams that can be killed and restarted on the same
//! port; `process` drives real `lifeline sim` processes killed with SIGKILL.

mod active;
mod balance;
mod config;
mod passive;
mod process;
mod reload;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lifeline::proxy::body;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::support::*;

/// A stand-in backend that can die like a killed process (listener and every connection
/// closed at once) and come back on the same port. Answers `x-upstream: <name>`, with the status
/// in `status` (and `/healthz` with `health_status`).
pub struct Killable {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub status: Arc<AtomicU16>,
    pub health_status: Arc<AtomicU16>,
    /// Connections accepted and `/healthz` requests answered.
    pub accepts: Arc<AtomicUsize>,
    pub checks: Arc<AtomicUsize>,
    server: Mutex<Option<JoinSet<()>>>,
}

impl Killable {
    pub async fn start(name: &'static str) -> Arc<Killable> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let k = Arc::new(Killable {
            name,
            addr: listener.local_addr().unwrap(),
            hits: Arc::new(AtomicUsize::new(0)),
            status: Arc::new(AtomicU16::new(200)),
            health_status: Arc::new(AtomicU16::new(200)),
            accepts: Arc::default(),
            checks: Arc::default(),
            server: Mutex::new(None),
        });
        k.serve(listener);
        k
    }

    fn serve(&self, listener: TcpListener) {
        let mut set = JoinSet::new();
        let (name, hits, status, health) =
            (self.name, self.hits.clone(), self.status.clone(), self.health_status.clone());
        let (accepts, checks) = (self.accepts.clone(), self.checks.clone());
        set.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                accepts.fetch_add(1, Ordering::SeqCst);
                let (hits, status, health, checks) = (hits.clone(), status.clone(), health.clone(), checks.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let code = if req.uri().path() == "/healthz" {
                            checks.fetch_add(1, Ordering::SeqCst);
                            health.load(Ordering::SeqCst)
                        } else {
                            hits.fetch_add(1, Ordering::SeqCst);
                            status.load(Ordering::SeqCst)
                        };
                        async move {
                            let _ = req.into_body().collect().await;
                            let mut r = Response::new(body::full(name));
                            *r.status_mut() = StatusCode::from_u16(code).unwrap();
                            r.headers_mut().insert("x-upstream", name.parse().unwrap());
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        *self.server.lock().unwrap() = Some(set);
    }

    /// Closes the listener and every connection at once, as SIGKILL would.
    pub fn kill(&self) {
        // Dropping the JoinSet aborts the accept loop, which drops (aborts) its connections.
        self.server.lock().unwrap().take();
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Sidecar config with one cluster `pay` (the given endpoint lines and policy lines) and a
/// catch-all route.
pub fn yaml(endpoints: &[(SocketAddr, u32)], policy: &str) -> String {
    let mut s = String::from(
        "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\nshutdown: { drain_delay: 0s, grace_period: 2s }\n\
         telemetry: { access_log: false }\nclusters:\n  pay:\n    connect_timeout: 300ms\n    endpoints:\n",
    );
    for (addr, prio) in endpoints {
        s += &format!("      - {{ address: {addr}, priority: {prio} }}\n");
    }
    for line in policy.lines().filter(|l| !l.trim().is_empty()) {
        s += &format!("    {line}\n");
    }
    s += "routes:\n  - { name: all, cluster: pay }\n";
    s
}

/// Outcome counts of a stream of requests: by `x-upstream` or by `x-lifeline-error`.
#[derive(Debug, Default, Clone)]
pub struct Tally(pub HashMap<String, usize>);

impl Tally {
    pub fn get(&self, k: &str) -> usize {
        self.0.get(k).copied().unwrap_or(0)
    }
    pub fn errors(&self) -> usize {
        self.0.iter().filter(|(k, _)| k.starts_with("error:")).map(|(_, v)| *v).sum()
    }
}

/// One request through the sidecar: `x-upstream` of the answer, or `error:<code>`.
pub async fn one(client: &Client, url: &str, post: bool) -> String {
    let req = if post {
        Request::post(url).header("content-type", "application/json").body(Full::new(Bytes::from_static(b"{\"a\":1}")))
    } else {
        Request::get(url).body(Full::new(Bytes::new()))
    }
    .unwrap();
    match client.request(req).await {
        Ok(resp) => {
            let up = resp.headers().get("x-upstream").and_then(|v| v.to_str().ok()).map(str::to_string);
            let err = resp.headers().get("x-lifeline-error").and_then(|v| v.to_str().ok()).map(str::to_string);
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            match (up, err) {
                (Some(u), _) if status.is_success() => u,
                (Some(u), _) => format!("status{}:{u}", status.as_u16()),
                (None, Some(e)) => format!("error:{e}"),
                (None, None) if status.is_success() => "ok".into(),
                (None, None) => format!("error:status{}", status.as_u16()),
            }
        }
        Err(e) => format!("error:client:{e}"),
    }
}

pub type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Sends `n` requests, `concurrency` at a time, and tallies the answers.
pub async fn burst(url: &str, n: usize, concurrency: usize, post: bool) -> Tally {
    let client = http1();
    let mut tally = Tally::default();
    let mut set = JoinSet::new();
    let mut sent = 0;
    while sent < n || !set.is_empty() {
        while sent < n && set.len() < concurrency {
            let (c, u) = (client.clone(), url.to_string());
            set.spawn(async move { one(&c, &u, post).await });
            sent += 1;
        }
        if let Some(Ok(k)) = set.join_next().await {
            *tally.0.entry(k).or_default() += 1;
        }
    }
    tally
}

/// `GET /clusters` → the cluster named `pay`.
pub async fn cluster_state(sc: &Sidecar) -> serde_json::Value {
    let v = get(&sc.admin_url("/clusters")).await.json();
    v["clusters"].as_array().unwrap().iter().find(|c| c["name"] == "pay").cloned().unwrap()
}

/// The endpoint `addr` of cluster `pay`.
pub async fn endpoint_state(sc: &Sidecar, addr: SocketAddr) -> serde_json::Value {
    let c = cluster_state(sc).await;
    c["endpoints"].as_array().unwrap().iter().find(|e| e["address"] == addr.to_string()).cloned().unwrap()
}

/// `GET /clusters/events?cluster=pay`.
pub async fn events(sc: &Sidecar) -> Vec<serde_json::Value> {
    get(&sc.admin_url("/clusters/events?cluster=pay")).await.json()["events"].as_array().unwrap().clone()
}

/// Events of `kind`.
pub async fn events_of(sc: &Sidecar, kind: &str) -> Vec<serde_json::Value> {
    events(sc).await.into_iter().filter(|e| e["kind"] == kind).collect()
}

/// Waits until the cluster's controller has logged an event (of `kind`, if given). The request
/// path only wakes the controller, which decides and logs on its own task: on a busy machine
/// that can be after the answers of the requests that woke it are back.
pub async fn logged(sc: &Sidecar, kind: Option<&str>) {
    let found = eventually(Duration::from_secs(5), || async {
        events(sc).await.iter().any(|e| kind.is_none_or(|k| e["kind"] == k))
    })
    .await;
    assert!(found, "no {} event logged: {:#?}", kind.unwrap_or("cluster"), events(sc).await);
}

/// Share (percent) of priority `p` in the published plan.
pub async fn share(sc: &Sidecar, p: u64) -> f64 {
    let c = cluster_state(sc).await;
    c["priorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["priority"] == p)
        .map(|x| x["share_percent"].as_f64().unwrap())
        .unwrap_or(0.0)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}
