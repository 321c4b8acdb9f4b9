//! Validation of `grace:` policies and of `grace:` on routes (raw config in, [`GracePolicy`] out).
//!
//! Limits must bound exposure: a per-settlement cap, a hard per-card cap and both total caps are
//! required (research §0: no anchor lets cumulative exposure be unbounded). Routes may only use
//! an existing policy and never one on an auth cluster (design invariant 1).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::config::*;
use crate::config::locate::Seg;
use crate::config::raw::RawConfig;
use crate::config::{ClusterConfig, Dur, Rate, RouteConfig};

type Checker = crate::config::Checker;

/// Validates every policy under `grace:`.
pub(crate) fn check_policies(c: &mut Checker, raw: &BTreeMap<String, RawGracePolicy>) -> BTreeMap<String, GracePolicy> {
    let mut out = BTreeMap::new();
    let mut stores: BTreeMap<String, String> = BTreeMap::new();
    let mut logs: BTreeMap<PathBuf, String> = BTreeMap::new();
    for (name, p) in raw {
        let policy = c.key(name, |c| check_policy(c, name, p));
        if let Some(other) = stores.insert(p.store.sqlite.clone(), name.clone()) {
            c.key(name, |c| {
                c.key("store", |c| c.error_at("sqlite", format!("policy {other:?} uses the same journal")))
            });
        }
        if let Some(other) = logs.insert(policy.log_dir.clone(), name.clone()) {
            c.key(name, |c| {
                c.key("store", |c| c.error_at("log_dir", format!("policy {other:?} uses the same log directory")))
            });
        }
        out.insert(name.clone(), policy);
    }
    out
}

fn pointer(c: &mut Checker, key: &str, p: &str) {
    if !p.starts_with('/') || p.len() < 2 {
        c.error_at(key, format!("{p:?} is not a JSON pointer to a field, e.g. /{key}"));
    }
}

fn count_amount(raw: Option<&RawCountAmount>) -> CountAmount {
    raw.map(|r| CountAmount { count: r.count, amount: r.amount }).unwrap_or_default()
}

fn check_policy(c: &mut Checker, name: &str, p: &RawGracePolicy) -> GracePolicy {
    pointer(c, "card_no", &p.card_no);
    pointer(c, "amount_fen", &p.amount_fen);
    pointer(c, "hospital_id", &p.hospital_id);
    if p.store.sqlite.trim().is_empty() {
        c.key("store", |c| c.error_at("sqlite", "journal path must not be empty"));
    }
    if p.store.log_dir.as_deref().is_some_and(|d| d.trim().is_empty()) {
        c.key("store", |c| c.error_at("log_dir", "must not be empty (leave it out for <sqlite>-log)"));
    }
    let limits = c.key("limits", |c| {
        let l = &p.limits;
        if l.per_settlement == 0 {
            c.error_at("per_settlement", "must be greater than 0 fen");
        }
        let card_hard = count_amount(Some(&l.per_card.hard));
        let total = count_amount(Some(&l.total));
        if card_hard.count.is_none() && card_hard.amount.is_none() {
            c.key("per_card", |c| c.error_at("hard", "set count and/or amount: card exposure must be bounded"));
        }
        if total.count.is_none() || total.amount.is_none() {
            c.error_at("total", "set both count and amount: total exposure must be bounded");
        }
        let card_soft = count_amount(l.per_card.soft.as_ref());
        GraceLimits {
            per_settlement: l.per_settlement,
            card_soft,
            card_hard,
            institution: count_amount(l.per_institution.as_ref()),
            total,
            journal_bytes: l.journal_size.map(|s| s.0).unwrap_or(1 << 30),
            max_age: c.key("max_age", |c| match l.max_age {
                Some(Dur(d)) if d.is_zero() => {
                    c.error("must be greater than 0");
                    d
                }
                Some(Dur(d)) => d,
                None => Duration::from_secs(72 * 3600),
            }),
        }
    });
    let forward = c.key("forward", |c| check_forward(c, &p.forward));
    GracePolicy {
        name: name.to_string(),
        store: PathBuf::from(&p.store.sqlite),
        log_dir: match &p.store.log_dir {
            Some(dir) => PathBuf::from(dir),
            None => super::sqlite::log::dir_for(std::path::Path::new(&p.store.sqlite)),
        },
        card_no: p.card_no.clone(),
        amount_fen: p.amount_fen.clone(),
        hospital_id: p.hospital_id.clone(),
        limits,
        forward,
        body_key_file: p.body_key_file.as_ref().map(PathBuf::from),
        signing_key_file: p.signing_key_file.as_ref().map(PathBuf::from),
    }
}

fn check_forward(c: &mut Checker, f: &RawForward) -> ForwardConfig {
    let rate = f.rate.unwrap_or(Rate { count: 50, per: Duration::from_secs(1) });
    if rate.count == 0 {
        c.error_at("rate", "must be greater than 0");
    }
    let positive = |c: &mut Checker, key: &str, d: Option<Dur>, default: Duration| match d {
        Some(Dur(d)) if d.is_zero() => {
            c.error_at(key, "must be greater than 0");
            default
        }
        Some(Dur(d)) => d,
        None => default,
    };
    let max_attempts = f.max_attempts.unwrap_or(20);
    if max_attempts == 0 {
        c.error_at("max_attempts", "must be at least 1");
    }
    let concurrency = f.concurrency.unwrap_or(8);
    if concurrency == 0 || concurrency > 1024 {
        c.error_at("concurrency", "must be between 1 and 1024");
    }
    let query_path = f.query_path.clone().unwrap_or_else(|| "/payment/v1/settlements".into());
    if !query_path.starts_with('/') || query_path.contains('?') {
        c.error_at("query_path", "must be a path starting with '/' and without a query string");
    }
    let backoff = positive(c, "backoff", f.backoff, Duration::from_millis(500));
    let max_backoff = positive(c, "max_backoff", f.max_backoff, Duration::from_secs(60));
    if max_backoff < backoff {
        c.error_at("max_backoff", "must not be smaller than backoff");
    }
    ForwardConfig {
        rate,
        ramp: f.ramp.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
        max_attempts,
        concurrency,
        backoff,
        max_backoff,
        probe_interval: positive(c, "probe_interval", f.probe_interval, Duration::from_secs(2)),
        query_path,
    }
}

/// Checks `grace:` on every route: the policy exists and the cluster is not the auth service.
pub(crate) fn check_routes(
    c: &mut Checker,
    raw: &RawConfig,
    clusters: &BTreeMap<String, ClusterConfig>,
    policies: &BTreeMap<String, GracePolicy>,
    routes: &[RouteConfig],
) {
    c.key("routes", |c| {
        for (i, route) in routes.iter().enumerate() {
            let Some(policy) = raw.routes.get(i).and_then(|r| r.grace.as_ref()) else { continue };
            c.at(Seg::Index(i), |c| {
                if !policies.contains_key(policy) {
                    let known: Vec<&str> = policies.keys().map(String::as_str).collect();
                    c.error_at("grace", format!("no grace policy named {policy:?} (known: {})", known.join(", ")));
                }
                if clusters.get(&route.cluster).is_some_and(|cl| cl.role == ClusterRole::Auth) {
                    c.error_at(
                        "grace",
                        format!(
                            "offline grace is not allowed on a route to cluster {:?}, which is the auth service: \
                             authentication never fails open",
                            route.cluster
                        ),
                    );
                }
            });
        }
    });
}
