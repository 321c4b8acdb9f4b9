//! The settlement mix against a stand-in for the three services that checks every request.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use lifeline::load::{self, CardPool, Plan, Workload};

use super::target;
use crate::support::{json, Upstream};

#[derive(Default)]
struct Seen {
    keys: HashSet<String>,
    by_path: BTreeMap<&'static str, u64>,
    cards: HashSet<String>,
}

fn valid_card(c: &str) -> bool {
    c.len() == 18 && c[..17].bytes().all(|b| b.is_ascii_digit())
}

/// Answers like the services would, and 400 for anything the mix should never send.
async fn service(req: Request<Incoming>, seen: Arc<Mutex<Seen>>) -> http::Response<lifeline::proxy::body::ProxyBody> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    let bad = || json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": "bad"}));
    let path = parts.uri.path().to_string();
    let mut s = seen.lock().unwrap();
    match (&parts.method, path.as_str()) {
        (&Method::POST, "/auth/v1/verify") => {
            let card = v["card_no"].as_str().unwrap_or("");
            if !valid_card(card) || v["pin"] != "123456" {
                return bad();
            }
            s.cards.insert(card.to_string());
            *s.by_path.entry("verify").or_insert(0) += 1;
            json(StatusCode::OK, &serde_json::json!({"token": "t", "expires_in": 600}))
        }
        (&Method::POST, "/payment/v1/settlements") => {
            let key = parts.headers.get("idempotency-key").and_then(|k| k.to_str().ok()).unwrap_or("");
            let items: i64 =
                v["items"].as_array().map(|a| a.iter().filter_map(|i| i["amount_fen"].as_i64()).sum()).unwrap_or(-1);
            let ok = key.len() == 36
                && valid_card(v["card_no"].as_str().unwrap_or(""))
                && v["hospital_id"].is_string()
                && v["visit_id"].is_string()
                && v["amount_fen"].as_i64() == Some(items)
                && s.keys.insert(key.to_string());
            if !ok {
                return bad();
            }
            s.cards.insert(v["card_no"].as_str().unwrap_or("").to_string());
            *s.by_path.entry("settle").or_insert(0) += 1;
            json(StatusCode::CREATED, &serde_json::json!({"status": "settled"}))
        }
        (&Method::GET, p) if p.starts_with("/card/v1/cards/") => {
            let card = &p["/card/v1/cards/".len()..];
            if !valid_card(card) {
                return bad();
            }
            s.cards.insert(card.to_string());
            *s.by_path.entry("card").or_insert(0) += 1;
            json(StatusCode::OK, &serde_json::json!({"status": "active"}))
        }
        _ => json(StatusCode::NOT_FOUND, &serde_json::json!({"error": "no such path"})),
    }
}

#[tokio::test]
async fn load_settlement_mix_sends_valid_requests_in_proportion() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    let up = Upstream::start(Arc::new(move |req| Box::pin(service(req, s2.clone())))).await;
    let mix = Workload::settlement([1, 2, 1], CardPool::new(500, 1.0, 9).unwrap()).unwrap();
    let plan = Plan::fixed(400.0, Duration::from_secs(1), mix);
    for http2 in [false, true] {
        let report = load::run(&plan, &target(up.addr, http2, 4), &mut load::Quiet).await.unwrap();
        let t = &report.totals;
        assert_eq!(t.sent, 400);
        assert_eq!(t.ok, 400, "the stand-in rejected something: {:?}", t.by_result);
        let settle = t.by_kind["settle"];
        // Proportions 1:2:1 over 400 draws: settle ≈ 200.
        assert!((150..=250).contains(&settle), "{:?}", t.by_kind);
        assert!(t.by_kind["verify"] > 50 && t.by_kind["card_query"] > 50, "{:?}", t.by_kind);
        // One record per settlement, with the status received and a distinct key.
        assert_eq!(report.settlements.len() as u64, settle);
        assert!(report.settlements.iter().all(|r| r.status == Some(201) && r.outcome == "201"));
        let keys: HashSet<&str> = report.settlements.iter().map(|r| r.idempotency_key.as_str()).collect();
        assert_eq!(keys.len() as u64, settle);
        let s = seen.lock().unwrap();
        assert!(keys.iter().all(|k| s.keys.contains(*k)), "every recorded key reached the service");
        // Card numbers in the report are masked.
        assert!(report.settlements.iter().all(|r| r.card_no.contains('*') && r.card_no.len() == 18));
    }
    // The skew: 800 draws from 500 cards touch ~400 distinct cards if uniform, ~230 with skew 1.
    let s = seen.lock().unwrap();
    assert!(s.cards.len() < 300, "{} distinct cards", s.cards.len());
    assert_eq!(s.by_path["settle"], s.keys.len() as u64);
}
