//! The final reconciliation: every settlement the clients were told succeeded (200/201) or was
//! accepted (202) must be in the backends' ledgers exactly once.
//!
//! The client half is the load's record of every settlement with its Idempotency-Key and
//! answer; the backend half is each payment simulator's `/sim/ledger` (one JSON settlement per
//! line). Keys applied on two backends (primary and DR) count as duplicates: a settlement
//! charged twice is charged twice wherever it happened.

use std::collections::BTreeMap;

use serde::Serialize;

use super::http::Http;
use super::live::Settlement;

/// What the comparison found. Counts are exact.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reconciliation {
    /// Settlements sent by the load.
    pub sent: usize,
    /// Answered 200/201/202.
    pub acknowledged: usize,
    /// Of those, answered 202 (offline grace receipts).
    pub accepted_offline: usize,
    /// Drill settlements found in the ledgers (distinct keys).
    pub applied: usize,
    /// Acknowledged but in no ledger.
    pub lost: usize,
    /// Keys applied more than once across all ledgers.
    pub duplicated: usize,
    /// Applied although the client got no success (timeouts, resets): not an error, a fact.
    pub applied_unacknowledged: usize,
    /// Up to 20 example keys of each problem.
    pub lost_keys: Vec<String>,
    pub duplicated_keys: Vec<String>,
    pub ledgers: Vec<String>,
}

/// Fetches every ledger and compares.
pub async fn run(http: &Http, ledgers: &[String], settlements: &[Settlement]) -> Result<Reconciliation, String> {
    let mut applied: BTreeMap<String, usize> = BTreeMap::new();
    for url in ledgers {
        let a = http.get(url).await?;
        if !a.ok() {
            return Err(format!("GET {url}: {} {}", a.status, a.text()));
        }
        for (i, line) in a.text().lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("{url} line {}: not JSON: {e}", i + 1))?;
            let key = v
                .get("idempotency_key")
                .and_then(|k| k.as_str())
                .ok_or_else(|| format!("{url} line {}: no idempotency_key", i + 1))?;
            *applied.entry(key.to_string()).or_default() += 1;
        }
    }
    Ok(compare(&applied, settlements, ledgers))
}

/// The comparison itself (separate so it is testable without a backend).
pub fn compare(applied: &BTreeMap<String, usize>, settlements: &[Settlement], ledgers: &[String]) -> Reconciliation {
    let mut r = Reconciliation { sent: settlements.len(), ledgers: ledgers.to_vec(), ..Default::default() };
    let ours: std::collections::BTreeSet<&str> = settlements.iter().map(|s| s.idempotency_key.as_str()).collect();
    for s in settlements {
        let n = applied.get(&s.idempotency_key).copied().unwrap_or(0);
        if s.acknowledged() {
            r.acknowledged += 1;
            if s.status == Some(202) {
                r.accepted_offline += 1;
            }
            if n == 0 {
                r.lost += 1;
                if r.lost_keys.len() < 20 {
                    r.lost_keys.push(s.idempotency_key.clone());
                }
            }
        } else if n > 0 {
            r.applied_unacknowledged += 1;
        }
    }
    for (key, n) in applied.iter().filter(|(k, _)| ours.contains(k.as_str())) {
        r.applied += 1;
        if *n > 1 {
            r.duplicated += 1;
            if r.duplicated_keys.len() < 20 {
                r.duplicated_keys.push(key.clone());
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(key: &str, status: Option<u16>) -> Settlement {
        Settlement { idempotency_key: key.into(), status, outcome: String::new(), sent_at_s: 0.0, latency_us: 0 }
    }

    #[test]
    fn counts_lost_duplicated_and_unacknowledged() {
        let mut applied = BTreeMap::new();
        applied.insert("a".to_string(), 1);
        applied.insert("b".to_string(), 2);
        applied.insert("d".to_string(), 1);
        applied.insert("other-traffic".to_string(), 3);
        let sent = [s("a", Some(201)), s("b", Some(202)), s("c", Some(202)), s("d", None), s("e", Some(503))];
        let r = compare(&applied, &sent, &[]);
        assert_eq!((r.sent, r.acknowledged, r.accepted_offline), (5, 3, 2));
        assert_eq!((r.lost, r.duplicated, r.applied_unacknowledged, r.applied), (1, 1, 1, 3));
        assert_eq!(r.lost_keys, vec!["c"]);
        assert_eq!(r.duplicated_keys, vec!["b"]);
    }
}
