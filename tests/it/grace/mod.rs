//! Offline grace: durable journal, receipts, limits, idempotency, forwarding, operators, crashes.

pub mod backend;
mod basics;
mod concurrency;
mod config;
mod crash;
mod forwarding;
mod operators;
mod sim;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::{http1, send, Got};

/// Default limits for tests: roomy, so tests that are not about limits never hit one.
pub const ROOMY: &str =
    "per_settlement: 50000, per_card: { soft: { count: 50 }, hard: { count: 100, amount: 5000000 } }, \
    per_institution: { count: 100000, amount: 100000000 }, total: { count: 100000, amount: 1000000000 }";

/// A sidecar config with a grace policy on `POST /payment/v1/settlements` in front of `backend`.
pub fn yaml(backend: SocketAddr, db: &Path, limits: &str, forward: &str, extra: &str) -> String {
    yaml_on("127.0.0.1:0", "127.0.0.1:0", backend, db, limits, forward, extra)
}

pub fn yaml_on(
    listen: &str,
    admin: &str,
    backend: SocketAddr,
    db: &Path,
    limits: &str,
    forward: &str,
    extra: &str,
) -> String {
    format!(
        "listen: {listen}\nadmin: {{ listen: {admin} }}\nshutdown: {{ drain_delay: 0s, grace_period: 5s }}\n\
         telemetry: {{ access_log: false }}\n\
         clusters:\n  payment:\n    endpoints:\n      - {{ address: {backend} }}\n    connect_timeout: 200ms\n    timeout: 400ms\n\
         routes:\n  - name: settle\n    match: {{ method: POST, path: /payment/v1/settlements }}\n    cluster: payment\n    grace: settlement\n\
         \x20 - {{ name: payment, match: {{ path_prefix: /payment/ }}, cluster: payment }}\n\
         grace:\n  settlement:\n    store: {{ sqlite: {db} }}\n    card_no: /card_no\n    amount_fen: /amount_fen\n    hospital_id: /hospital_id\n\
         \x20   limits: {{ {limits} }}\n    forward: {{ {forward} }}\n{extra}",
        db = db.display()
    )
}

/// Fast forwarding for tests.
pub const FAST: &str =
    "rate: 500/s, ramp: 200ms, probe_interval: 100ms, backoff: 20ms, max_backoff: 200ms, concurrency: 16";

pub fn settlement(card: &str, amount: i64, hospital: &str) -> serde_json::Value {
    serde_json::json!({ "card_no": card, "amount_fen": amount, "hospital_id": hospital, "items": ["consultation"] })
}

/// POSTs a settlement with an Idempotency-Key (and extra headers).
pub async fn settle(base: &str, key: &str, body: &serde_json::Value, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::post(format!("{base}/payment/v1/settlements")).header("content-type", "application/json");
    if !key.is_empty() {
        b = b.header("idempotency-key", key);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&http1(), b.body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap()))).unwrap()).await
}

/// Same as [`settle`] but a connection error is `None` instead of a panic (the sidecar may die).
pub async fn try_settle(
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    base: &str,
    key: &str,
    body: &serde_json::Value,
) -> Option<(u16, serde_json::Value)> {
    use http_body_util::BodyExt;
    let req = Request::post(format!("{base}/payment/v1/settlements"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await.ok()?.ok()?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&bytes).unwrap_or_default()))
}

/// Counts journal rows by state straight from the SQLite file (what is on disk).
/// The journal as an operator reads it offline: the database file plus the items that are so far
/// only in its log (an append is durable, and answered, once it is in the log).
pub fn journal_states(db: &Path) -> std::collections::BTreeMap<String, i64> {
    let conn = lifeline::grace::sqlite::schema::open_offline(db, None).unwrap();
    let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM items GROUP BY state").unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).unwrap().map(|r| r.unwrap()).collect()
}

pub fn journal_keys(db: &Path) -> Vec<String> {
    let conn = lifeline::grace::sqlite::schema::open_offline(db, None).unwrap();
    let mut stmt = conn.prepare("SELECT idem_key FROM items").unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0)).unwrap().map(|r| r.unwrap()).collect()
}

/// A free loopback port (bound then released) below the ephemeral range, so no outgoing
/// connection takes it before the child binds it (see `chaos/drill/env/local.rs`).
pub fn free_port() -> u16 {
    use rand::Rng;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = rand::rng().random_range(32_000..32_700);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}
