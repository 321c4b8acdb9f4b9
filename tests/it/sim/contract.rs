//! The simulators' contracts, spoken to directly: idempotency, declines, auth, card, bad input.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use lifeline::sim::fixture::{EXAMPLE_ACTIVE, EXAMPLE_FROZEN, EXAMPLE_LOST, EXAMPLE_LOW_BALANCE};
use lifeline::sim::{Service, SimOptions, SimServer, Sims};
use serde_json::json;

use super::{active_settlement, settlement};
use crate::support::*;

async fn payment() -> lifeline::sim::SimHandle {
    SimServer::start(Service::Payment, "127.0.0.1:0".parse().unwrap(), SimOptions::for_tests()).await.unwrap()
}

#[tokio::test]
async fn settlement_idempotency_replay_conflict_and_missing_key() {
    let pay = payment().await;
    let url = pay.url("/payment/v1/settlements");

    let got = post_json(&url, &active_settlement(10_001), &[]).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["error"], "missing_idempotency_key");

    let first = post_json(&url, &active_settlement(10_001), &[("idempotency-key", "k-1")]).await;
    assert_eq!(first.status, 201, "{}", first.text());
    let v = first.json();
    assert_eq!(v["status"], "settled");
    assert_eq!(v["fund_paid_fen"], 7_000);
    assert_eq!(v["self_paid_fen"], 3_001);
    assert!(first.header("idempotent-replayed").is_none());

    // The same body with keys in another order is the same request.
    let mut reordered = serde_json::Map::new();
    for (k, val) in active_settlement(10_001).as_object().unwrap().iter().rev() {
        reordered.insert(k.clone(), val.clone());
    }
    let replay = post_json(&url, &serde_json::Value::Object(reordered), &[("idempotency-key", "k-1")]).await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.body, first.body, "a replay returns the original response");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));

    let conflict = post_json(&url, &active_settlement(10_002), &[("idempotency-key", "k-1")]).await;
    assert_eq!(conflict.status, 422);
    assert_eq!(conflict.json()["error"], "idempotency_key_reused");

    let id = v["settlement_id"].as_str().unwrap();
    let by_id = get(&pay.url(&format!("/payment/v1/settlements/{id}"))).await;
    assert_eq!(by_id.status, 200);
    assert_eq!(by_id.json()["idempotency_key"], "k-1");
    let by_key = get(&pay.url("/payment/v1/settlements?idempotency_key=k-1")).await;
    assert_eq!(by_key.status, 200);
    assert_eq!(by_key.json()["settlement_id"], id);
    assert_eq!(by_key.json()["card_no_masked"], "110***********1234");
    assert_eq!(get(&pay.url("/payment/v1/settlements?idempotency_key=never")).await.status, 404);
    assert_eq!(get(&pay.url("/payment/v1/settlements/stl-0-1")).await.status, 404);

    let ledger = pay.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].amount_fen, ledger[0].fund_paid_fen + ledger[0].self_paid_fen);
    let text = get(&pay.url("/sim/ledger")).await.text();
    assert_eq!(text.lines().count(), 1);
    assert!(!text.contains(EXAMPLE_ACTIVE), "the ledger must not hold the card number: {text}");
}

#[tokio::test]
async fn fifty_concurrent_duplicates_make_exactly_one_settlement() {
    // With a ledger file, so the claim is in flight (being fsync'd) while the duplicates arrive.
    let dir = tempfile::tempdir().unwrap();
    let opts = SimOptions { ledger: Some(dir.path().join("ledger.jsonl")), ..SimOptions::for_tests() };
    let pay = SimServer::start(Service::Payment, "127.0.0.1:0".parse().unwrap(), opts).await.unwrap();
    let url = Arc::new(pay.url("/payment/v1/settlements"));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            post_json(&url, &active_settlement(4_321), &[("idempotency-key", "dup-1")]).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, 201, "{}", got.text());
        ids.insert(got.json()["settlement_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "every duplicate got the same settlement: {ids:?}");
    assert_eq!(pay.settled_count(), 1);
    assert_eq!(pay.ledger()[0].idempotency_key, "dup-1");
    assert_eq!(std::fs::read_to_string(dir.path().join("ledger.jsonl")).unwrap().lines().count(), 1);
}

#[tokio::test]
async fn business_declines_are_402_with_a_reason_and_claim_nothing() {
    let sims = Sims::local(SimOptions::for_tests()).await.unwrap();
    let pay = sims.payment.as_ref().unwrap();
    let card = sims.card.as_ref().unwrap();
    let url = pay.url("/payment/v1/settlements");
    for (card_no, amount, reason) in [
        (EXAMPLE_LOST, 100, "card_lost"),
        (EXAMPLE_FROZEN, 100, "card_frozen"),
        (EXAMPLE_LOW_BALANCE, 20_000, "insufficient_fund_balance"),
    ] {
        let got = post_json(&url, &settlement(card_no, amount), &[("idempotency-key", reason)]).await;
        assert_eq!(got.status, 402, "{reason}: {}", got.text());
        assert_eq!(got.json()["reason"], reason);
        assert_eq!(get(&pay.url(&format!("/payment/v1/settlements?idempotency_key={reason}"))).await.status, 404);
    }
    // The low-balance card can still pay what its fund covers, under the same (unclaimed) key.
    let got = post_json(&url, &settlement(EXAMPLE_LOW_BALANCE, 10_000), &[("idempotency-key", "low")]).await;
    assert_eq!(got.status, 201, "{}", got.text());

    // A loss reported to the card service declines the next settlement on the payment service.
    let other = "110101198507150011";
    let lost = post_json(&card.url(&format!("/card/v1/cards/{other}/loss")), &json!({}), &[]).await;
    assert_eq!(lost.status, 200);
    assert_eq!(lost.json()["status"], "lost");
    assert!(!lost.text().contains(other));
    let got = post_json(&url, &settlement(other, 100), &[("idempotency-key", "after-loss")]).await;
    assert_eq!(got.status, 402);
    assert_eq!(got.json()["reason"], "card_lost");
    assert_eq!(get(&card.url(&format!("/card/v1/cards/{EXAMPLE_FROZEN}"))).await.json()["status"], "frozen");
    assert_eq!(pay.ledger().len(), 1);
}

#[tokio::test]
async fn auth_verifies_pins_and_tokens() {
    let auth = SimServer::start(Service::Auth, "127.0.0.1:0".parse().unwrap(), SimOptions::for_tests()).await.unwrap();
    let url = auth.url("/auth/v1/verify");
    let ok = post_json(&url, &json!({"card_no": EXAMPLE_ACTIVE, "pin": "123456"}), &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let token = ok.json()["token"].as_str().unwrap().to_string();
    assert!(ok.json()["expires_in"].as_u64().unwrap() > 0);
    assert_eq!(get(&auth.url(&format!("/auth/v1/tokens/{token}"))).await.status, 200);
    assert_eq!(get(&auth.url("/auth/v1/tokens/tok_nope")).await.status, 404);
    let h2 = send(&http2(), Request::get(auth.url("/healthz")).body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(h2.status, 200, "h2c works too");
    for (body, status, code) in [
        (json!({"card_no": EXAMPLE_ACTIVE, "pin": "654321"}), 401, "wrong_pin"),
        (json!({"card_no": EXAMPLE_ACTIVE, "pin": "12345"}), 400, "invalid_pin"),
        (json!({"card_no": EXAMPLE_ACTIVE, "pin": "12345a"}), 400, "invalid_pin"),
        (json!({"card_no": EXAMPLE_ACTIVE, "pin": 123456}), 400, "invalid_field"),
        (json!({"card_no": "12345", "pin": "123456"}), 400, "invalid_card_no"),
        (json!({"pin": "123456"}), 400, "missing_field"),
        (json!({"card_no": EXAMPLE_LOST, "pin": "123456"}), 403, "card_not_active"),
    ] {
        let got = post_json(&url, &body, &[]).await;
        assert_eq!(got.status, status, "{body}: {}", got.text());
        assert_eq!(got.json()["error"], code, "{body}");
    }
}

#[tokio::test]
async fn bad_input_is_a_json_400_never_a_crash() {
    let sims = Sims::local(SimOptions::for_tests()).await.unwrap();
    let client = http1();
    for service in Service::ALL {
        let h = sims.get(service).unwrap();
        for (path, body) in [
            ("/payment/v1/settlements", "{not json"),
            ("/payment/v1/settlements", "[1,2]"),
            ("/auth/v1/verify", "\u{0}\u{ff}"),
            ("/sim/mode", r#"{"mode": "sideways"}"#),
            ("/sim/mode", r#"{"mode": "down", "for": 5}"#),
        ] {
            let req = Request::post(h.url(path))
                .header("idempotency-key", "bad-1")
                .body(Full::new(Bytes::from(body.as_bytes().to_vec())))
                .unwrap();
            let got = send(&client, req).await;
            if (path.starts_with("/payment") && service != Service::Payment)
                || (path.starts_with("/auth") && service != Service::Auth)
            {
                assert_eq!(got.status, 404, "{service} {path}");
            } else {
                assert_eq!(got.status, 400, "{service} {path} {body}: {}", got.text());
            }
            assert!(got.json()["error"].is_string());
        }
        assert_eq!(get(&h.url("/card/v1/cards/1234")).await.status, if service == Service::Card { 400 } else { 404 });
        assert_eq!(get(&h.url("/healthz")).await.status, 200);
    }
    assert_eq!(sims.payment.as_ref().unwrap().ledger().len(), 0);
}

/// The statuses of 30 settlements under `errors:50%` and three auth tokens, for `seed`.
async fn seeded_run(seed: u64) -> (Vec<u16>, Vec<String>) {
    let sims = Sims::local(SimOptions { seed, ..SimOptions::for_tests() }).await.unwrap();
    let (auth, pay) = (sims.auth.as_ref().unwrap(), sims.payment.as_ref().unwrap());
    pay.set_mode(lifeline::sim::Mode::parse("errors:50%").unwrap());
    let mut statuses = Vec::new();
    for i in 0..30 {
        let key = format!("seed-{i}");
        let got =
            post_json(&pay.url("/payment/v1/settlements"), &active_settlement(100), &[("idempotency-key", &key)]).await;
        statuses.push(got.status.as_u16());
    }
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let got =
            post_json(&auth.url("/auth/v1/verify"), &json!({"card_no": EXAMPLE_ACTIVE, "pin": "123456"}), &[]).await;
        tokens.push(got.json()["token"].as_str().unwrap().to_string());
    }
    (statuses, tokens)
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults_and_tokens() {
    let a = seeded_run(7).await;
    assert!(a.0.contains(&201) && a.0.contains(&500), "{:?}", a.0);
    assert_eq!(a, seeded_run(7).await);
    assert_ne!(a, seeded_run(8).await);
}
