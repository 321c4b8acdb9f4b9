//! Looks at the sidecar once a sample interval: breaker state, active priority and grace queue
//! depth, read from its admin API.
//!
//! The Prometheus text at `/metrics` is the primary source (`lifeline_breaker_state`,
//! `lifeline_failover_priority`, `lifeline_grace_queue_depth`, names fixed in DESIGN.md), with
//! the JSON endpoints (`/breakers`, `/clusters`, `/grace/status`) read when present. A sidecar
//! that lacks a feature simply reports nothing for it, and the hypotheses that need it say so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::http::Http;
use super::live::{Live, Probe, Sample};

/// `lifeline_breaker_state` encoding: 0 closed, 1 half-open, 2 open (or forced open).
fn breaker_name(v: f64) -> String {
    match v as i64 {
        0 => "closed".into(),
        1 => "half_open".into(),
        2 => "open".into(),
        n => format!("state_{n}"),
    }
}

/// One Prometheus sample line: name, labels, value.
pub fn parse_metric(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.trim_end_matches('}')),
        None => (head, ""),
    };
    let mut map = BTreeMap::new();
    for pair in labels.split(',').filter(|p| !p.is_empty()) {
        if let Some((k, v)) = pair.split_once('=') {
            map.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    Some((name, map, value))
}

/// Reads one sample.
pub async fn sample(http: &Http, admin: &str, t: f64) -> Sample {
    let mut s = Sample { t, ..Default::default() };
    let Ok(metrics) = http.get(&format!("{admin}/metrics")).await else { return s };
    s.up = metrics.ok();
    let text = metrics.text();
    let mut depth: Option<f64> = None;
    // A cluster may have several breakers (cluster and per-route): keep the most severe state.
    let mut severity: BTreeMap<String, f64> = BTreeMap::new();
    let mut managed = std::collections::BTreeSet::new();
    for (name, labels, v) in text.lines().filter_map(parse_metric) {
        let cluster = labels.get("cluster").cloned();
        match (name, cluster) {
            ("lifeline_breaker_state", Some(c)) => {
                let e = severity.entry(c).or_insert(v);
                *e = e.max(v);
            }
            ("lifeline_failover_priority", Some(c)) => {
                s.priority.insert(c, v);
            }
            ("lifeline_grace_queue_depth", _) => depth = Some(depth.unwrap_or(0.0) + v),
            ("lifeline_failovers_total", Some(c)) => *s.failovers.entry(c).or_default() += v,
            ("lifeline_endpoint_healthy", Some(c)) => {
                managed.insert(c);
            }
            // Attempts that reached (or may have reached) the upstream; not_sent ones did not.
            ("lifeline_upstream_requests_total", Some(c))
                if labels.get("result").map(String::as_str) != Some("not_sent") =>
            {
                *s.upstream.entry(c).or_default() += v
            }
            ("lifeline_requests_total", Some(c)) => *s.requests.entry(c).or_default() += v,
            _ => {}
        }
    }
    s.breaker = severity.into_iter().map(|(c, v)| (c, breaker_name(v))).collect();
    // Failover gauges and counters appear at the first change: a cluster with health state but
    // no priority yet is on its primary and has not failed over.
    for c in managed {
        s.priority.entry(c.clone()).or_insert(0.0);
        s.failovers.entry(c).or_insert(0.0);
    }
    s.grace_depth = depth;
    if s.breaker.is_empty() {
        if let Ok(a) = http.get(&format!("{admin}/breakers")).await {
            if let Some(v) = a.json().filter(|_| a.ok()) {
                collect_states(&v, &mut s.breaker);
            }
        }
    }
    if s.grace_depth.is_none() {
        if let Ok(a) = http.get(&format!("{admin}/grace/status")).await {
            s.grace_depth = a.json().filter(|_| a.ok()).and_then(|v| v.get("depth").and_then(|d| d.as_f64()));
        }
    }
    s
}

/// Finds `{cluster|name, state}` objects anywhere in a JSON document.
fn collect_states(v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => {
            let name = m.get("cluster").or_else(|| m.get("name")).and_then(|x| x.as_str());
            if let (Some(n), Some(st)) = (name, m.get("state").and_then(|x| x.as_str())) {
                out.insert(n.to_string(), st.to_ascii_lowercase().replace('-', "_"));
            }
            m.values().for_each(|x| collect_states(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_states(x, out)),
        _ => {}
    }
}

/// Samples every `every` until aborted.
pub async fn run(http: Http, admin: String, live: Arc<Live>, start: Instant, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let s = sample(&http, &admin, start.elapsed().as_secs_f64()).await;
        if let Ok(mut v) = live.samples.lock() {
            v.push(s);
        }
    }
}

/// Sends a verify with a wrong PIN through the sidecar every `every`: the only acceptable
/// answers are a refusal (401) or an error; a 2xx means authentication failed open.
pub async fn probe_auth(http: Http, proxy: String, live: Arc<Live>, start: Instant, every: Duration) {
    let body = serde_json::json!({"card_no": super::traffic::card_no(1), "pin": "000000"});
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let url = format!("{proxy}/auth/v1/verify");
        let status = http.call(http::Method::POST, &url, Some(&body), None).await.ok().map(|a| a.status);
        if let Ok(mut p) = live.probes.lock() {
            p.push(Probe { t: start.elapsed().as_secs_f64(), status });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines() {
        let (n, l, v) = parse_metric("lifeline_breaker_state{cluster=\"payment\"} 1").unwrap();
        assert_eq!((n, l.get("cluster").map(String::as_str), v), ("lifeline_breaker_state", Some("payment"), 1.0));
        assert!(parse_metric("# HELP x y").is_none());
        assert_eq!(parse_metric("lifeline_grace_queue_depth 12").unwrap().2, 12.0);
        let mut out = BTreeMap::new();
        collect_states(&serde_json::json!({"breakers": [{"cluster": "auth", "state": "Half-Open"}]}), &mut out);
        assert_eq!(out.get("auth").map(String::as_str), Some("half_open"));
    }
}
