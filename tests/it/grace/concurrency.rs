//! Races: limits under concurrent requests (invariant 5) and duplicate storms (invariant 4).

use std::sync::Arc;

use super::backend::PayBackend;
use super::*;
use crate::support::Sidecar;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_for_one_card_never_exceed_its_hard_limit() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let limits = "per_settlement: 50000, per_card: { hard: { count: 4, amount: 100000 } }, \
                  total: { count: 100000, amount: 1000000000 }";
    let sc = Sidecar::start(&yaml(backend.addr, &db, limits, FAST, "")).await;
    let base = Arc::new(sc.url(""));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let r = settle(&base, &format!("storm-{i}"), &settlement("110101199003071234", 100, "H1"), &[]).await;
            (r.status.as_u16(), r.json()["limit"].as_str().map(String::from))
        }));
    }
    let mut accepted = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            (202, _) => accepted += 1,
            (403, Some(limit)) if limit == "per_card_count" => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((accepted, refused), (4, 196));
    assert_eq!(journal_states(&db).values().sum::<i64>(), 4);

    // The amount axis holds the same way: 150 requests of 1 000 fen against 20 000 fen.
    let limits =
        "per_settlement: 50000, per_card: { hard: { amount: 20000 } }, total: { count: 100000, amount: 1000000000 }";
    let dir2 = tempfile::tempdir().unwrap();
    let db2 = dir2.path().join("g.db");
    let sc2 = Sidecar::start(&yaml(backend.addr, &db2, limits, FAST, "")).await;
    let base = Arc::new(sc2.url(""));
    let mut tasks = Vec::new();
    for i in 0..150 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            settle(&base, &format!("amt-{i}"), &settlement("110101199003071234", 1000, "H1"), &[]).await.status.as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 202 {
            ok += 1;
        }
    }
    assert_eq!(ok, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_duplicates_of_one_key_make_one_journal_entry() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let sc = Sidecar::start(&yaml(backend.addr, &db, ROOMY, FAST, "")).await;
    let base = Arc::new(sc.url(""));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let r = settle(&base, "same-key", &settlement("110101199003071234", 100, "H1"), &[]).await;
            (r.status.as_u16(), r.body.clone())
        }));
    }
    let mut receipts = std::collections::HashSet::new();
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        *statuses.entry(status).or_insert(0) += 1;
        if status == 202 {
            receipts.insert(body);
        }
        assert!(status == 202 || status == 409, "unexpected {status}");
    }
    assert!(statuses.get(&202).copied().unwrap_or(0) >= 1, "{statuses:?}");
    assert_eq!(receipts.len(), 1, "every 202 is the same receipt");
    assert_eq!(journal_keys(&db), vec!["same-key".to_string()]);
}
