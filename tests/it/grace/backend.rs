//! A stand-in payment backend with a ledger (test double for the user's settlement service).
//!
//! Deliberately does NOT deduplicate by Idempotency-Key: every POST it processes is a charge.
//! So "each key charged exactly once" proves the sidecar never resends blind — it must ask
//! (`GET /payment/v1/settlements?idempotency_key=K`) before resending an ambiguous item.
//! It can be down (port closed, connections cut), refusing (503 without processing), slow
//! (processes, then answers late), and declines amount 4040 with 422.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lifeline::proxy::body::{self, ProxyBody};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const UP: u8 = 0;
pub const REFUSE_503: u8 = 1;
pub const SLOW: u8 = 2;
/// Processes, then answers after 80 ms (within the timeout): many forwards are in flight at once.
pub const LAGGY: u8 = 3;
/// 503 without processing, with `Retry-After` an HTTP-date a day ahead (a maintenance page).
pub const REFUSE_503_FOR_A_DAY: u8 = 4;

#[derive(Default)]
pub struct Ledger {
    /// Charges per idempotency key (more than 1 is a double charge).
    pub charges: HashMap<String, u32>,
    pub amounts: HashMap<String, i64>,
    /// When each charge happened (for pacing checks).
    pub at: Vec<Instant>,
    /// Keys in the order they were charged.
    pub order: Vec<String>,
}

pub struct PayBackend {
    pub addr: SocketAddr,
    pub ledger: Arc<Mutex<Ledger>>,
    pub mode: Arc<AtomicU8>,
    pub posts: Arc<AtomicUsize>,
    pub queries: Arc<AtomicUsize>,
    pub slow: Duration,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl PayBackend {
    /// A backend whose port is reserved but closed (connect refused) until [`PayBackend::up`].
    pub async fn down_at_start() -> PayBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        PayBackend {
            addr,
            ledger: Arc::default(),
            mode: Arc::new(AtomicU8::new(UP)),
            posts: Arc::default(),
            queries: Arc::default(),
            slow: Duration::from_secs(2),
            tasks: Mutex::default(),
            conns: Arc::default(),
        }
    }

    pub async fn started() -> PayBackend {
        let b = PayBackend::down_at_start().await;
        b.up().await;
        b
    }

    pub fn set_mode(&self, m: u8) {
        self.mode.store(m, Ordering::SeqCst);
    }

    /// Starts listening on the reserved port.
    pub async fn up(&self) {
        if !self.tasks.lock().unwrap().is_empty() {
            return;
        }
        let mut listener = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let listener = listener.expect("rebind backend port");
        let (ledger, mode, posts, queries, slow, conns) = (
            self.ledger.clone(),
            self.mode.clone(),
            self.posts.clone(),
            self.queries.clone(),
            self.slow,
            self.conns.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (ledger, mode, posts, queries) = (ledger.clone(), mode.clone(), posts.clone(), queries.clone());
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (ledger, mode, posts, queries) =
                            (ledger.clone(), mode.clone(), posts.clone(), queries.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(handle(req, &ledger, &mode, &posts, &queries, slow).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                conns.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(task);
    }

    /// Closes the port and cuts every open connection.
    pub fn down(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn charges(&self) -> HashMap<String, u32> {
        self.ledger.lock().unwrap().charges.clone()
    }

    pub fn order(&self) -> Vec<String> {
        self.ledger.lock().unwrap().order.clone()
    }

    pub fn charge_times(&self) -> Vec<Instant> {
        self.ledger.lock().unwrap().at.clone()
    }
}

impl Drop for PayBackend {
    fn drop(&mut self) {
        self.down();
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(serde_json::to_vec(&v).unwrap()));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r
}

async fn handle(
    req: Request<Incoming>,
    ledger: &Mutex<Ledger>,
    mode: &AtomicU8,
    posts: &AtomicUsize,
    queries: &AtomicUsize,
    slow: Duration,
) -> Response<ProxyBody> {
    let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if req.method() == http::Method::GET {
        queries.fetch_add(1, Ordering::SeqCst);
        let q = req.uri().query().unwrap_or("").strip_prefix("idempotency_key=").unwrap_or("").to_string();
        let key = percent_decode(&q);
        if mode.load(Ordering::SeqCst) == REFUSE_503 {
            return json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": "maintenance"}));
        }
        let l = ledger.lock().unwrap();
        return match l.charges.get(&key) {
            Some(_) => json(
                StatusCode::OK,
                serde_json::json!({"settlement_id": format!("S-{key}"), "amount_fen": l.amounts[&key], "idempotency_key": key}),
            ),
            None => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "not_found"})),
        };
    }
    posts.fetch_add(1, Ordering::SeqCst);
    let m = mode.load(Ordering::SeqCst);
    if m == REFUSE_503 {
        return json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": "maintenance"}));
    }
    if m == REFUSE_503_FOR_A_DAY {
        let mut r = json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": "maintenance"}));
        let tomorrow = std::time::SystemTime::now() + Duration::from_secs(86_400);
        r.headers_mut().insert("retry-after", httpdate::fmt_http_date(tomorrow).parse().unwrap());
        return r;
    }
    let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let amount = v["amount_fen"].as_i64().unwrap_or(0);
    if amount == 4040 {
        return json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"error": "declined", "reason": "not covered"}),
        );
    }
    {
        let mut l = ledger.lock().unwrap();
        *l.charges.entry(key.clone()).or_default() += 1;
        l.amounts.insert(key.clone(), amount);
        l.at.push(Instant::now());
        l.order.push(key.clone());
    }
    if m == SLOW {
        tokio::time::sleep(slow).await;
    }
    if m == LAGGY {
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    json(
        StatusCode::OK,
        serde_json::json!({"settlement_id": format!("S-{key}"), "amount_fen": amount, "idempotency_key": key}),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
