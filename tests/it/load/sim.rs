//! The settlement mix through a sidecar to the simulated services, reconciled with the ledger.

use std::collections::HashSet;
use std::time::Duration;

use lifeline::load::{self, CardPool, Plan, Workload};
use lifeline::sim::{SimOptions, Sims};

use super::target;
use crate::support::Sidecar;

fn yaml(sims: &Sims) -> String {
    let addr = |s: &Option<lifeline::sim::SimHandle>| s.as_ref().map(|h| h.addr.to_string()).unwrap_or_default();
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nshutdown: {{ drain_delay: 0s, grace_period: 5s }}\n\
         clusters:\n  auth: {{ endpoints: [ {{ address: {} }} ] }}\n  payment: {{ endpoints: [ {{ address: {} }} ] }}\n  \
         card: {{ endpoints: [ {{ address: {} }} ] }}\n\
         routes:\n  - {{ name: auth, match: {{ path_prefix: /auth/ }}, cluster: auth }}\n  \
         - {{ name: settle, match: {{ method: POST, path: /payment/v1/settlements }}, cluster: payment }}\n  \
         - {{ name: card, match: {{ path_prefix: /card/ }}, cluster: card }}\n",
        addr(&sims.auth),
        addr(&sims.payment),
        addr(&sims.card)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_settlement_mix_through_lifeline_reconciles_with_the_sim_ledger() {
    let sims = Sims::local(SimOptions::for_tests()).await.unwrap();
    let sc = Sidecar::start(&yaml(&sims)).await;
    let mix = Workload::settlement([1, 2, 1], CardPool::new(2_000, 1.0, 5).unwrap()).unwrap();
    let plan = Plan::fixed(200.0, Duration::from_millis(1500), mix);
    let report = load::run(&plan, &target(sc.app.proxy_addr, false, 4), &mut load::Quiet).await.unwrap();

    let t = &report.totals;
    assert_eq!(t.sent, 300);
    assert_eq!(t.errors, 0, "{:?}", t.by_result);
    // Answers the sim gives for the cards a pool draws: 200/201, and 402/403 for the few cards
    // whose sequence code marks them lost, frozen or low on funds.
    for code in t.by_result.keys() {
        assert!(["200", "201", "402", "403"].contains(&code.as_str()), "{:?}", t.by_result);
    }
    assert!(t.by_result.get("201").copied().unwrap_or(0) > 100, "{:?}", t.by_result);

    // Reconciliation: exactly the settlements answered 201 are in the ledger, once each.
    let ledger = sims.payment.as_ref().unwrap().ledger();
    let in_ledger: HashSet<&str> = ledger.iter().map(|e| e.idempotency_key.as_str()).collect();
    assert_eq!(in_ledger.len(), ledger.len(), "no key applied twice");
    let settled: HashSet<&str> =
        report.settlements.iter().filter(|r| r.status == Some(201)).map(|r| r.idempotency_key.as_str()).collect();
    assert_eq!(settled, in_ledger);
    for r in &report.settlements {
        if let Some(e) = ledger.iter().find(|e| e.idempotency_key == r.idempotency_key) {
            assert_eq!(e.amount_fen as u64, r.amount_fen);
            assert_eq!(e.card_no_masked, r.card_no, "both sides mask the same way");
        }
    }
}
