//! Meaning checks of a scenario: raw structs in, a [`Drill`] out, every problem located.
//!
//! Phase names, fault ids, hypothesis ids, proxy and sim names must resolve; every time must fall
//! inside the load; each hypothesis kind gets the fields and the tolerance unit it needs; the
//! embedded sidecar config must itself be valid (with placeholders filled with stand-ins).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

mod fault;
mod hypothesis;

use super::plan::*;
use super::scenario::*;
use super::template;
use crate::config::strict::{self, Checker};
use crate::config::{Config, ConfigErrors, Dur};

/// Reads and validates a scenario file for a full (`short = false`) or a CI run.
pub fn load(path: &std::path::Path, short: bool) -> Result<Drill, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![crate::config::ConfigError {
            file: name.clone(),
            line: None,
            column: None,
            path: String::new(),
            message: format!("cannot read scenario: {e}"),
        }])
    })?;
    from_yaml(&name, &text, short)
}

/// Validates scenario text; `file` is used in error messages.
pub fn from_yaml(file: &str, text: &str, short: bool) -> Result<Drill, ConfigErrors> {
    let (raw, locator): (RawScenario, _) = strict::parse(file, text)?;
    let mut c = Checker::new(file, locator);
    let drill = check(&mut c, raw, short);
    c.finish(drill)
}

pub(super) fn ident_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
}

/// Features a scenario may require, and where they come from.
pub const FEATURES: &[(&str, &str)] = &[
    ("failover", "health checks, outlier ejection and priority failover"),
    ("breaker", "circuit breakers"),
    ("retry", "budgeted retries"),
    ("grace", "offline grace for settlements"),
];

/// True when this build's config schema has the feature's config section.
pub fn feature_available(feature: &str) -> bool {
    let schema = crate::config::json_schema();
    match feature {
        "grace" => schema["properties"].get("grace").is_some(),
        "failover" | "breaker" | "retry" => schema["definitions"]["RawCluster"]["properties"].get(feature).is_some(),
        _ => false,
    }
}

/// The scenario's required features this build lacks (unknown names are errors).
fn missing_features(c: &mut Checker, requires: &[String]) -> Vec<String> {
    let mut missing = Vec::new();
    c.key("requires", |c| {
        for (i, f) in requires.iter().enumerate() {
            match FEATURES.iter().find(|(n, _)| n == f) {
                None => {
                    let known: Vec<&str> = FEATURES.iter().map(|(n, _)| *n).collect();
                    c.index(i, |c| c.error(format!("{f:?}: one of {}", known.join(", "))));
                }
                Some((name, what)) if !feature_available(name) => {
                    c.index(i, |c| {
                        c.error(format!("this drill needs {what} ({name}), which this build of lifeline does not have"))
                    });
                    missing.push(name.to_string());
                }
                Some(_) => {}
            }
        }
    });
    missing
}

fn check(c: &mut Checker, raw: RawScenario, short: bool) -> Drill {
    if !ident_ok(&raw.name) {
        c.error_at("name", "1 to 64 letters, digits, '-' or '_'");
    }
    // Without a required feature the embedded config cannot validate: say that, and only that.
    let missing = missing_features(c, &raw.requires);
    let raw = if missing.is_empty() {
        raw
    } else {
        let mut r = raw;
        if let Some(l) = r.local.as_mut() {
            l.sidecar.config = String::new();
        }
        for f in &mut r.faults {
            f.reload = f.reload.take().map(|_| RawSidecar { config: String::new() });
        }
        r
    };
    let target = match (&raw.local, &raw.remote) {
        (Some(l), None) => Target::Local(c.key("local", |c| check_local(c, l))),
        (None, Some(r)) => Target::Remote(c.key("remote", |c| check_remote(c, r))),
        _ => {
            c.error("set exactly one of local (start everything here) or remote (target a running sidecar)");
            Target::Local(Local { sims: vec![], proxies: vec![], config: String::new() })
        }
    };
    let load = c.key("load", |c| check_load(c, &raw.load));
    let phases = c.key("phases", |c| check_phases(c, &raw.phases, short));
    let length = phases.last().map(|p: &Phase| p.start + p.duration).unwrap_or_default();
    let faults = c.key("faults", |c| {
        let mut ids = BTreeSet::new();
        let mut out = Vec::new();
        for (i, f) in raw.faults.iter().enumerate() {
            if let Some(f) = c.index(i, |c| fault::check_fault(c, f, &phases, &target, length)) {
                if !ids.insert(f.id.clone()) {
                    c.index(i, |c| c.error_at("id", format!("duplicate fault id {:?}", f.id)));
                }
                out.push(f);
            }
        }
        out
    });
    let hypotheses = c.key("hypotheses", |c| {
        if raw.hypotheses.is_empty() {
            c.error("a drill without hypotheses proves nothing: add at least one");
        }
        let mut ids = BTreeSet::new();
        let mut out = Vec::new();
        for (i, h) in raw.hypotheses.iter().enumerate() {
            if let Some(h) = c.index(i, |c| hypothesis::check_hypothesis(c, h, &phases, &faults)) {
                if !ids.insert(h.id.clone()) {
                    c.index(i, |c| c.error_at("id", format!("duplicate hypothesis id {:?}", h.id)));
                }
                out.push(h);
            }
        }
        out
    });
    let max_duration = raw.abort.max_duration.map(|d| d.0).unwrap_or(length * 2 + Duration::from_secs(120));
    if max_duration < length {
        c.key("abort", |c| c.error_at("max_duration", format!("shorter than the load ({})", Dur(length))));
    }
    Drill {
        name: raw.name,
        title: raw.title,
        proves: raw.proves.unwrap_or_default(),
        target,
        load,
        phases,
        faults,
        hypotheses,
        kill_switch: raw.abort.kill_switch.map(PathBuf::from),
        max_duration,
        drain_timeout: raw.drain_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(60)),
        short,
    }
}

fn check_local(c: &mut Checker, l: &RawLocal) -> Local {
    let mut sims = Vec::new();
    c.key("sims", |c| {
        for (name, s) in &l.sims {
            c.key(name, |c| {
                if !ident_ok(name) {
                    c.error("sim names: 1 to 64 letters, digits, '-' or '_'");
                }
                if !["auth", "payment", "card"].contains(&s.service.as_str()) {
                    c.error_at("service", format!("{:?}: one of auth, payment, card", s.service));
                }
            });
            sims.push(SimDef {
                name: name.clone(),
                service: s.service.clone(),
                mode: s.mode.clone(),
                latency: s.latency.clone(),
            });
        }
    });
    let mut proxies = Vec::new();
    c.key("proxies", |c| {
        for (name, p) in &l.proxies {
            if !l.sims.contains_key(&p.upstream) {
                c.key(name, |c| c.error_at("upstream", format!("no sim named {:?}", p.upstream)));
            }
            proxies.push(ProxyDef { name: name.clone(), upstream: p.upstream.clone() });
        }
    });
    let config = l.sidecar.config.clone();
    c.key("sidecar", |c| check_sidecar_config(c, "config", &config, &sims, &proxies));
    Local { sims, proxies, config }
}

/// Checks the embedded config with stand-in values for its placeholders.
pub(super) fn check_sidecar_config(c: &mut Checker, key: &str, text: &str, sims: &[SimDef], proxies: &[ProxyDef]) {
    if text.is_empty() {
        return;
    }
    let values = stand_ins(sims, proxies);
    let filled = match template::fill(text, &values) {
        Ok(t) => t,
        Err(e) => return c.error_at(key, e),
    };
    if let Err(errors) = Config::from_yaml("sidecar config", &filled) {
        let base = c.line_of(key).unwrap_or(0);
        for e in errors.0 {
            let at = e.line.map(|l| format!(" (scenario line {})", base + l)).unwrap_or_default();
            c.error_at(key, format!("{}{at}: {}", e.path, e.message));
        }
    }
}

/// Stand-in values for validation; the runner fills real ones.
pub fn stand_ins(sims: &[SimDef], proxies: &[ProxyDef]) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("sidecar.listen".into(), "127.0.0.1:0".into());
    v.insert("sidecar.admin".into(), "127.0.0.1:0".into());
    v.insert("sidecar.token_file".into(), "/nonexistent/token".into());
    v.insert("dir".into(), "/tmp".into());
    for (i, s) in sims.iter().enumerate() {
        v.insert(format!("sim.{}", s.name), format!("127.0.0.1:{}", 20000 + i));
    }
    for (i, p) in proxies.iter().enumerate() {
        v.insert(format!("proxy.{}", p.name), format!("127.0.0.1:{}", 21000 + i));
    }
    v
}

fn check_remote(c: &mut Checker, r: &RawRemote) -> Remote {
    for (key, url) in [("proxy_url", &r.proxy_url), ("admin_url", &r.admin_url)] {
        if !url.starts_with("http://") {
            c.error_at(key, format!("{url:?}: an http:// URL"));
        }
    }
    Remote {
        proxy_url: r.proxy_url.trim_end_matches('/').to_string(),
        admin_url: r.admin_url.trim_end_matches('/').to_string(),
        token_file: r.token_file.as_ref().map(PathBuf::from),
        ledgers: r.ledgers.clone(),
        proxies: r.proxies.clone(),
        sims: r.sims.clone(),
        environments: r.environments.clone(),
    }
}

fn check_load(c: &mut Checker, l: &RawLoad) -> LoadPlan {
    let weights = l.mix.as_ref().map(|m| [m.auth, m.settle, m.card]).unwrap_or([20, 60, 20]);
    if weights.iter().sum::<u32>() == 0 {
        c.error_at("mix", "at least one weight must be positive");
    }
    let connections = l.connections.unwrap_or(32);
    if connections == 0 || connections > 4096 {
        c.error_at("connections", "between 1 and 4096");
    }
    LoadPlan {
        weights,
        cards: l.cards.unwrap_or(2000).max(1),
        timeout: l.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(5)),
        connections,
    }
}

fn check_phases(c: &mut Checker, raw: &[RawPhase], short: bool) -> Vec<Phase> {
    if raw.is_empty() {
        c.error("at least one phase is required");
    }
    let mut start = Duration::ZERO;
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        c.index(i, |c| {
            if !ident_ok(&p.name) || ["before", "after"].contains(&p.name.as_str()) {
                c.error_at("name", "1 to 64 letters, digits, '-' or '_' (not before/after)");
            }
            if !names.insert(p.name.clone()) {
                c.error_at("name", format!("duplicate phase {:?}", p.name));
            }
            let duration = match (short, p.short) {
                (true, Some(s)) => s.0,
                (true, None) => (p.duration.0 / 5).max(Duration::from_secs(2)).min(p.duration.0),
                (false, _) => p.duration.0,
            };
            if duration.is_zero() {
                c.error_at("duration", "must be greater than 0");
            }
            let rate = if short { p.short_rate.unwrap_or(p.rate) } else { p.rate };
            if rate.per_second() > 20_000.0 {
                c.error_at("rate", "at most 20000/s");
            }
            out.push(Phase { name: p.name.clone(), start, duration, rate: rate.per_second() });
            start += duration;
        });
    }
    out
}
