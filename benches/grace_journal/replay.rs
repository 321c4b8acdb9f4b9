//! Replay of a 10 000-item backlog: forwards per second over time (the ramp, the ceiling) and
//! the latency of live settlements while the backlog drains, against a baseline without one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lifeline::app::App;
use lifeline::config::Config;
use lifeline::proxy::body;
use tokio::net::TcpListener;

const BACKLOG: usize = 10_000;
const RATE: u32 = 500;

/// A payment stand-in: answers every POST 200 (after 2 ms of "work"), every query 404.
/// The backend's tasks (listener and connections): aborting them all takes it down for real.
struct Backend(Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>);

impl Backend {
    fn abort(&self) {
        for t in self.0.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn backend(addr: std::net::SocketAddr, replays: Arc<Mutex<Vec<Instant>>>) -> Backend {
    let listener = TcpListener::bind(addr).await.unwrap();
    let tasks = Arc::new(Mutex::new(Vec::new()));
    let conns = tasks.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let replays = replays.clone();
            let conn = tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let replays = replays.clone();
                    async move {
                        let replay = req.headers().contains_key("x-lifeline-grace-receipt");
                        let get = req.method() == http::Method::GET;
                        let _ = req.into_body().collect().await;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        if replay && !get {
                            replays.lock().unwrap().push(Instant::now());
                        }
                        let mut r =
                            http::Response::new(body::full(if get { "{}" } else { "{\"settlement_id\":\"S\"}" }));
                        *r.status_mut() = if get { http::StatusCode::NOT_FOUND } else { http::StatusCode::OK };
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
            conns.lock().unwrap().push(conn);
        }
    });
    tasks.lock().unwrap().push(accept);
    Backend(tasks)
}

fn request(url: &str, key: &str, card: usize) -> http::Request<Full<Bytes>> {
    let body = format!("{{\"card_no\":\"C{card:09}\",\"amount_fen\":100,\"hospital_id\":\"H{}\"}}", card % 20);
    http::Request::post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// 20 live settlements per second for `d`; returns their latency histogram (µs).
async fn live(url: &str, d: Duration, tag: &str, statuses: &AtomicUsize) -> Histogram<u64> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut h = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < d {
        let t = Instant::now();
        let resp = client.request(request(url, &format!("live-{tag}-{i}"), 900_000 + i)).await.unwrap();
        if resp.status() == 200 {
            statuses.fetch_add(1, Ordering::Relaxed);
        }
        let _ = resp.into_body().collect().await;
        h.record(t.elapsed().as_micros() as u64).unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(50).saturating_sub(t.elapsed())).await;
    }
    h
}

pub async fn run() {
    let d = super::dir();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nshutdown: {{ drain_delay: 0s }}\ntelemetry: {{ access_log: false }}\n\
         clusters:\n  payment:\n    endpoints: [{{ address: {addr} }}]\n    connect_timeout: 200ms\n    timeout: 2s\n\
         routes:\n  - {{ name: settle, match: {{ method: POST, path: /payment/v1/settlements }}, cluster: payment, grace: settlement }}\n\
         grace:\n  settlement:\n    store: {{ sqlite: {} }}\n    card_no: /card_no\n    amount_fen: /amount_fen\n    hospital_id: /hospital_id\n\
         \x20   limits: {{ per_settlement: 50000, per_card: {{ hard: {{ count: 100 }} }}, total: {{ count: 1000000, amount: 1000000000000 }} }}\n\
         \x20   forward: {{ rate: {RATE}/s, ramp: 5s, concurrency: 32, probe_interval: 200ms }}\n",
        d.path().join("replay.db").display()
    );
    let app = App::start(Config::from_yaml("bench.yaml", &yaml).unwrap(), None).await.unwrap();
    let url = format!("http://{}/payment/v1/settlements", app.proxy_addr);
    let replays = Arc::new(Mutex::new(Vec::new()));
    let ok = AtomicUsize::new(0);

    // Baseline: live settlements with the backend up and no backlog.
    let up = backend(addr, replays.clone()).await;
    let base = live(&url, Duration::from_secs(3), "base", &ok).await;
    up.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Backend down: journal the backlog.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..BACKLOG).step_by(32) {
                let resp = client.request(request(&url, &format!("bl-{i}"), i)).await.unwrap();
                assert_eq!(resp.status(), 202);
                let _ = resp.into_body().collect().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Backend up: replay while live traffic continues.
    let up = backend(addr, replays.clone()).await;
    let t0 = Instant::now();
    let during = live(&url, Duration::from_secs(8), "during", &ok).await;
    while replays.lock().unwrap().len() < BACKLOG && t0.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let times = replays.lock().unwrap().clone();
    let first = times.first().copied().unwrap_or(t0);
    let mut per_sec = vec![0usize; 1 + times.last().map(|t| t.duration_since(first).as_secs() as usize).unwrap_or(0)];
    for t in &times {
        per_sec[t.duration_since(first).as_secs() as usize] += 1;
    }
    println!("replay of {} items at rate {RATE}/s, ramp 5s: forwards per second = {per_sec:?}", times.len());
    let total = times.last().map(|t| t.duration_since(first).as_secs_f64()).unwrap_or(0.0);
    println!(
        "replay: {} forwarded in {total:.1}s (max {} in one second)",
        times.len(),
        per_sec.iter().max().unwrap_or(&0)
    );
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "live settlements (20/s): baseline p50 {:.2} ms p99 {:.2} ms; during replay p50 {:.2} ms p99 {:.2} ms; {} answered 200",
        ms(&base, 0.5),
        ms(&base, 0.99),
        ms(&during, 0.5),
        ms(&during, 0.99),
        ok.load(Ordering::Relaxed)
    );
    up.abort();
    app.shutdown().await;
}
