//! The payment ledger survives `kill -9` of a `lifeline sim` process under load: after a restart
//! on the same port and file, every acknowledged settlement is there exactly once, idempotency
//! records still answer replays and conflicts, and the in-doubt requests reconcile.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::active_settlement;
use crate::support::*;

/// A `lifeline sim --payment` child process and the address it printed.
struct SimProcess {
    child: Child,
    addr: SocketAddr,
}

impl SimProcess {
    fn start(addr: &str, ledger: &Path) -> SimProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .args(["sim", "--payment", addr, "--latency", "0ms", "--ledger"])
            .arg(ledger)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lifeline sim");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("sim payment listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        SimProcess { child, addr }
    }

    fn kill9(&mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL).unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a client knows about one key: acknowledged with this settlement id, or in doubt.
type Outcomes = Arc<Mutex<HashMap<String, Option<String>>>>;

async fn post(addr: SocketAddr, key: &str, amount: i64) -> Result<(u16, serde_json::Value), String> {
    let req = Request::post(format!("http://{addr}/payment/v1/settlements"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(serde_json::to_vec(&active_settlement(amount)).unwrap())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), http1().request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
}

#[tokio::test]
async fn the_ledger_survives_kill_9_under_load_and_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let mut sim = SimProcess::start("127.0.0.1:0", &ledger);
    let addr = sim.addr;

    // Load: 8 clients settling distinct keys as fast as they can.
    let outcomes: Outcomes = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (outcomes, stop) = (outcomes.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("load-{c}-{i}");
                i += 1;
                outcomes.lock().unwrap().insert(key.clone(), None);
                match post(addr, &key, 100 + c).await {
                    Ok((201, v)) => {
                        let id = v["settlement_id"].as_str().unwrap().to_string();
                        outcomes.lock().unwrap().insert(key, Some(id));
                    }
                    Ok((status, v)) => panic!("{key}: unexpected {status} {v}"),
                    Err(_) => break, // in doubt: the process died around this request
                }
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            outcomes.lock().unwrap().values().filter(|v| v.is_some()).count() >= 200
        })
        .await,
        "load got going"
    );
    sim.kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let acked: HashMap<&String, &String> = outcomes.iter().filter_map(|(k, v)| v.as_ref().map(|id| (k, id))).collect();

    // Restart on the same port and file.
    let sim = SimProcess::start(&addr.to_string(), &ledger);
    assert_eq!(sim.addr, addr);
    let entries: Vec<serde_json::Value> = get(&format!("http://{addr}/sim/ledger"))
        .await
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keys: Vec<&str> = entries.iter().map(|e| e["idempotency_key"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = keys.iter().copied().collect();
    assert_eq!(unique.len(), keys.len(), "no key settled twice");
    for (key, id) in &acked {
        assert!(unique.contains(key.as_str()), "acknowledged {key} was lost");
        let got = get(&format!("http://{addr}/payment/v1/settlements?idempotency_key={key}")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.json()["settlement_id"], id.as_str());
    }
    assert!(keys.iter().all(|k| outcomes.contains_key(*k)), "nothing settled that was not sent");

    // Idempotency records survived: a replay answers the original, a different body conflicts.
    let (key, id) = acked.iter().next().unwrap();
    let amount = 100 + key.split('-').nth(1).unwrap().parse::<i64>().unwrap();
    let (status, v) = post(addr, key, amount).await.unwrap();
    assert_eq!((status, v["settlement_id"].as_str()), (201, Some(id.as_str())));
    assert_eq!(post(addr, key, amount + 1).await.unwrap().0, 422);

    // Reconcile the in-doubt keys by resending them: each ends settled exactly once.
    for key in outcomes.keys().filter(|k| !acked.contains_key(k)) {
        let amount = 100 + key.split('-').nth(1).unwrap().parse::<i64>().unwrap();
        assert_eq!(post(addr, key, amount).await.unwrap().0, 201, "{key}");
    }
    let text = get(&format!("http://{addr}/sim/ledger")).await.text();
    let mut all: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["idempotency_key"].as_str().unwrap().to_string())
        .collect();
    all.sort();
    let mut sent: Vec<String> = outcomes.keys().cloned().collect();
    sent.sort();
    assert_eq!(all, sent, "after reconciliation every key is settled exactly once");
    let file = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(file.lines().count(), sent.len());
    assert!(!file.contains(lifeline::sim::fixture::EXAMPLE_ACTIVE), "the ledger file holds no card number");
}
