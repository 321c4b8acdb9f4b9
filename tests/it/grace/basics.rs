//! The request path: key and body checks, durable signed receipts, replays, opt-out, limits.

use super::backend::PayBackend;
use super::*;
use crate::support::{get, Sidecar};

#[tokio::test]
async fn settlement_requests_need_a_key_and_well_formed_fields() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let sc = Sidecar::start(&yaml(backend.addr, &db, ROOMY, FAST, "")).await;
    let base = sc.url("");

    let r = settle(&base, "", &settlement("110101199003071234", 100, "H1"), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "idempotency_key_missing");

    let r = settle(&base, "k1", &serde_json::json!({"amount_fen": 100, "hospital_id": "H1"}), &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("/card_no"), "{}", r.text());

    for bad in [serde_json::json!(12.5), serde_json::json!("100"), serde_json::json!(-3)] {
        let body = serde_json::json!({"card_no": "110101199003071234", "amount_fen": bad, "hospital_id": "H1"});
        let r = settle(&base, "k2", &body, &[]).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.json()["message"].as_str().unwrap().contains("/amount_fen"), "{}", r.text());
    }
    assert!(journal_states(&db).is_empty(), "nothing journaled for bad requests");
}

#[tokio::test]
async fn backend_down_gives_a_durable_signed_receipt_and_the_same_one_again() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let sc = Sidecar::start(&yaml(backend.addr, &db, ROOMY, FAST, "")).await;
    let base = sc.url("");
    let body = settlement("110101199003071234", 12345, "H-0001");

    let r = settle(&base, "visit-1", &body, &[]).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("grace-status"), Some("provisional"));
    assert_eq!(r.header("grace-reason"), Some("upstream_connect_failed"));
    let v = r.json();
    let receipt = &v["receipt"];
    let id = receipt["receipt_id"].as_str().unwrap().to_string();
    assert_eq!(r.header("location"), Some(format!("/grace/receipts/{id}").as_str()));
    assert_eq!(receipt["card"], "110***********1234");
    assert_eq!(receipt["amount_fen"], 12345);
    assert_eq!(receipt["institution"], "H-0001");
    assert_eq!(receipt["idempotency_key"], "visit-1");
    assert_eq!(receipt["remaining_card_limits"]["count"], 99);
    assert!(receipt["notice"].as_str().unwrap().contains("not a final settlement"));
    assert!(!r.text().contains("110101199003071234"), "card number must not be in the receipt");
    lifeline::grace::receipt::verify(&v, None).expect("signature verifies offline");
    let mut tampered = v.clone();
    tampered["receipt"]["amount_fen"] = 99.into();
    assert!(lifeline::grace::receipt::verify(&tampered, None).is_err());

    // On disk before the answer (a separate connection sees it). The forwarder's canary may
    // already have found the backend still down (retry_wait).
    let states = journal_states(&db);
    assert_eq!(states.values().sum::<i64>(), 1);
    assert!(!states.contains_key("settled"), "{states:?}");

    // Same key, same body: the same receipt, byte for byte. Different body: 422.
    let again = settle(&base, "visit-1", &body, &[]).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body, r.body);
    let other = settle(&base, "visit-1", &settlement("110101199003071234", 999, "H-0001"), &[]).await;
    assert_eq!(other.status, 422, "{}", other.text());
    assert_eq!(journal_states(&db).values().sum::<i64>(), 1);

    // The hospital polls the receipt on the proxy port.
    let status = get(&sc.url(&format!("/grace/receipts/{id}"))).await;
    assert_eq!(status.status, 200, "{}", status.text());
    let state = status.json()["state"].as_str().unwrap().to_string();
    assert!(["journaled", "forwarding", "retry_wait"].contains(&state.as_str()), "{state}");
    assert_eq!(get(&sc.url("/grace/receipts/nope")).await.status, 404);
}

#[tokio::test]
async fn backend_up_answers_online_and_require_online_opts_out() {
    let backend = PayBackend::started().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let sc = Sidecar::start(&yaml(backend.addr, &db, ROOMY, FAST, "")).await;
    let base = sc.url("");
    let r = settle(&base, "online-1", &settlement("110101199003071234", 500, "H1"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["settlement_id"], "S-online-1");
    assert!(journal_states(&db).is_empty());

    backend.down();
    let r =
        settle(&base, "online-2", &settlement("110101199003071234", 500, "H1"), &[("grace-mode", "require-online")])
            .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(journal_states(&db).is_empty(), "require-online never journals");
    let r = settle(&base, "online-3", &settlement("110101199003071234", 500, "H1"), &[("grace-mode", "yolo")]).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn limits_refuse_with_problem_json_naming_the_limit() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let limits = "per_settlement: 1000, per_card: { hard: { count: 2, amount: 1500 } }, \
                  per_institution: { count: 3 }, total: { count: 4, amount: 100000 }";
    let sc = Sidecar::start(&yaml(backend.addr, &db, limits, FAST, "")).await;
    let base = sc.url("");
    let r = settle(&base, "big", &settlement("C0000000001", 1001, "H1"), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["limit"], "per_settlement");
    assert_eq!(r.json()["status"], 403);

    assert_eq!(settle(&base, "a1", &settlement("C0000000001", 1000, "H1"), &[]).await.status, 202);
    let r = settle(&base, "a2", &settlement("C0000000001", 600, "H1"), &[]).await;
    assert_eq!((r.status.as_u16(), r.json()["limit"].as_str()), (403, Some("per_card_amount")), "{}", r.text());
    assert_eq!(settle(&base, "a3", &settlement("C0000000001", 100, "H1"), &[]).await.status, 202);
    let r = settle(&base, "a4", &settlement("C0000000001", 100, "H1"), &[]).await;
    assert_eq!(r.json()["limit"], "per_card_count");
    assert_eq!(settle(&base, "b1", &settlement("C0000000002", 100, "H1"), &[]).await.status, 202);
    let r = settle(&base, "b2", &settlement("C0000000003", 100, "H1"), &[]).await;
    assert_eq!(r.json()["limit"], "per_institution_count");
    assert_eq!(settle(&base, "c1", &settlement("C0000000004", 100, "H2"), &[]).await.status, 202);
    let r = settle(&base, "c2", &settlement("C0000000005", 100, "H3"), &[]).await;
    assert_eq!(r.json()["limit"], "total_count");
    assert_eq!(journal_states(&db).values().sum::<i64>(), 4);
}

#[tokio::test]
async fn bodies_are_encrypted_at_rest_with_a_key_file() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let key = dir.path().join("body.key");
    std::fs::write(&key, "42".repeat(32)).unwrap();
    let extra = format!("    body_key_file: {}\n", key.display());
    let sc = Sidecar::start(&yaml(backend.addr, &db, ROOMY, FAST, &extra)).await;
    let r = settle(&sc.url(""), "enc-1", &settlement("110101199003071234", 700, "H1"), &[]).await;
    assert_eq!(r.status, 202);
    sc.app.shutdown().await;
    let mut raw = std::fs::read(&db).unwrap();
    raw.extend(std::fs::read(db.with_extension("db-wal")).unwrap_or_default());
    assert!(!raw.windows(18).any(|w| w == b"110101199003071234"), "plain card number on disk");
    assert!(!raw.windows(11).any(|w| w == b"consultation"), "plain body on disk");
}
