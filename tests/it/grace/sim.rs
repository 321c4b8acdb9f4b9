//! Against the simulated payment service (`lifeline::sim`, issue 3): every 202 reaches the sim's
//! ledger exactly once — down, slow past the timeout (ambiguous), and flapping during replay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lifeline::sim::mode::Mode;
use lifeline::sim::{Service, SimHandle, SimOptions, SimServer};

use super::*;
use crate::support::{eventually, Sidecar};

fn body(card: &str, amount: i64, visit: &str) -> serde_json::Value {
    serde_json::json!({ "card_no": card, "amount_fen": amount, "hospital_id": "H001", "visit_id": visit, "items": [] })
}

/// 50 concurrent clients, 3 settlements each (one card per client); returns key → status.
async fn submit(base: &str) -> HashMap<String, u16> {
    let base = Arc::new(base.to_string());
    let mut tasks = Vec::new();
    for c in 0..50 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let client = crate::support::http1();
            let mut out = Vec::new();
            for n in 0..3 {
                let key = format!("sim-{c}-{n}");
                // Client 7 uses a lost card: the sim declines it once it is back (402).
                let card = if c == 7 { "11010119900307999X".to_string() } else { format!("1101011990030{c:04}1") };
                let got = try_settle(&client, &base, &key, &body(&card, 1000 + n, &key)).await;
                out.push((key, got.map(|g| g.0).unwrap_or(0)));
            }
            out
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn check_ledger(sim: &SimHandle, db: &std::path::Path, answers: &HashMap<String, u16>) {
    let accepted: Vec<&String> = answers.iter().filter(|(_, s)| **s == 202).map(|(k, _)| k).collect();
    assert!(accepted.len() >= 100, "{answers:?}");
    let done = eventually(Duration::from_secs(60), || async {
        let s = journal_states(db);
        s.keys().all(|k| k == "settled" || k == "declined")
    })
    .await;
    assert!(done, "{:?}", journal_states(db));
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for e in sim.ledger() {
        *per_key.entry(e.idempotency_key).or_default() += 1;
    }
    for key in accepted {
        let lost_card = key.starts_with("sim-7-");
        let n = per_key.get(key).copied().unwrap_or(0);
        assert_eq!(n, usize::from(!lost_card), "{key}: {n} ledger entries");
    }
    assert!(per_key.values().all(|n| *n == 1));
    assert_eq!(journal_states(db).get("declined"), Some(&3), "the lost card's settlements are declined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn down_then_flapping_sim_gets_every_receipt_exactly_once() {
    let sim =
        SimServer::start(Service::Payment, "127.0.0.1:0".parse().unwrap(), SimOptions::for_tests()).await.unwrap();
    sim.set_mode(Mode::parse("down").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let sc = Sidecar::start(&yaml(sim.addr, &db, ROOMY, FAST, "")).await;
    let answers = submit(&sc.url("")).await;
    assert!(answers.values().all(|s| *s == 202), "{answers:?}");
    sim.set_mode(Mode::parse("flap:150ms").unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sim.set_mode(Mode::parse("healthy").unwrap());
    check_ledger(&sim, &db, &answers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_sim_past_the_timeout_is_resolved_without_double_settlement() {
    let sim =
        SimServer::start(Service::Payment, "127.0.0.1:0".parse().unwrap(), SimOptions::for_tests()).await.unwrap();
    sim.set_mode(Mode::parse("slow:1s").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let sc = Sidecar::start(&yaml(sim.addr, &db, ROOMY, FAST, "")).await;
    let answers = submit(&sc.url("")).await;
    sim.set_mode(Mode::parse("healthy").unwrap());
    check_ledger(&sim, &db, &answers).await;
}
