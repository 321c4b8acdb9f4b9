//! Meaning checks: raw structs in, [`Config`] out, every problem with its location.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::locate::Seg;
use super::raw::{RawCluster, RawConfig, RawMatch, RawRoute};
use super::strict::Checker;
use super::*;
use crate::proxy::h1::Limits as ClientLimits;

pub(super) fn from_yaml(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    let (raw, locator): (RawConfig, _) = super::strict::parse(file, text)?;
    let mut c = Checker::new(file, locator);
    let config = check(&mut c, raw);
    c.finish(config)
}

fn check(c: &mut Checker, raw: RawConfig) -> Config {
    let listen = c.socket_addr("listen", &raw.listen);
    let admin = c.key("admin", |c| AdminConfig {
        listen: c.socket_addr("listen", &raw.admin.listen),
        token_file: raw.admin.token_file.as_ref().map(PathBuf::from),
    });
    if admin.listen == listen && listen.port() != 0 {
        c.error_at("admin", "admin.listen must differ from listen");
    }
    let limits = c.key("limits", |c| {
        let max_header_bytes = raw.limits.max_header_bytes.map(|s| s.0).unwrap_or(32 << 10);
        if max_header_bytes < 1024 {
            c.error_at("max_header_bytes", "must be at least 1KiB");
        }
        LimitsConfig {
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
            max_body: raw.limits.max_body.map(|s| s.0).unwrap_or(10 << 20),
            client_head_timeout: c.positive(
                "client_head_timeout",
                raw.limits.client_head_timeout,
                ClientLimits::HEAD_TIMEOUT,
            ),
            client_idle_timeout: c.positive(
                "client_idle_timeout",
                raw.limits.client_idle_timeout,
                ClientLimits::IDLE_TIMEOUT,
            ),
            client_send_timeout: c.positive(
                "client_send_timeout",
                raw.limits.client_send_timeout,
                ClientLimits::SEND_TIMEOUT,
            ),
        }
    });
    let shutdown = c.key("shutdown", |c| ShutdownConfig {
        drain_delay: raw.shutdown.drain_delay.map(|d| d.0).unwrap_or(Duration::from_secs(5)),
        grace_period: c.positive("grace_period", raw.shutdown.grace_period, Duration::from_secs(30)),
    });
    let clusters = c.key("clusters", |c| {
        if raw.clusters.is_empty() {
            c.error("at least one cluster is required");
        }
        let mut out = BTreeMap::new();
        for (name, rc) in &raw.clusters {
            let cluster = c.key(name, |c| check_cluster(c, name, rc));
            out.insert(name.clone(), cluster);
        }
        out
    });
    let routes = c.key("routes", |c| {
        if raw.routes.is_empty() {
            c.error("at least one route is required");
        }
        let mut names = BTreeMap::new();
        let mut out = Vec::new();
        for (i, rr) in raw.routes.iter().enumerate() {
            let route = c.at(Seg::Index(i), |c| check_route(c, i, rr, &raw, &clusters, &limits));
            if let Some(prev) = names.insert(route.name.clone(), i) {
                c.at(Seg::Index(i), |c| {
                    c.error_at("name", format!("duplicate route name {:?} (also routes[{prev}])", route.name))
                });
            }
            out.push(route);
        }
        out
    });
    let access_log = raw.telemetry.access_log.unwrap_or(true);
    let grace = c.key("grace", |c| crate::grace::config::check_policies(c, &raw.grace));
    crate::grace::config::check_routes(c, &raw, &clusters, &grace, &routes);
    let chaos = c.key("chaos", |c| crate::chaos::config::check(c, &raw.chaos));
    Config { listen, admin, limits, shutdown, access_log, clusters, routes, chaos, grace }
}

fn check_cluster(c: &mut Checker, name: &str, rc: &RawCluster) -> ClusterConfig {
    if !name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') || name.is_empty() {
        c.error("cluster names may only contain letters, digits, '-' and '_'");
    }
    let endpoints = c.key("endpoints", |c| {
        if rc.endpoints.is_empty() {
            c.error("a cluster needs at least one endpoint");
        }
        let mut seen = std::collections::HashSet::new();
        rc.endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                c.at(Seg::Index(i), |c| {
                    if let Err(msg) = check_address(&e.address) {
                        c.error_at("address", msg);
                    }
                    if !seen.insert(e.address.clone()) {
                        c.error_at("address", format!("duplicate endpoint {:?}", e.address));
                    }
                    if e.weight == 0 || e.weight > 1000 {
                        c.error_at("weight", "must be between 1 and 1000");
                    }
                    EndpointConfig { address: e.address.clone(), priority: e.priority, weight: e.weight }
                })
            })
            .collect()
    });
    ClusterConfig {
        name: name.to_string(),
        endpoints,
        connect_timeout: c.positive("connect_timeout", rc.connect_timeout, Duration::from_secs(1)),
        timeout: c.positive("timeout", rc.timeout, Duration::from_secs(15)),
        max_idle_per_endpoint: rc.max_idle_per_endpoint.unwrap_or(64),
        idle_timeout: c.positive("idle_timeout", rc.idle_timeout, Duration::from_secs(90)),
        role: rc.role.unwrap_or_else(|| crate::grace::config::ClusterRole::from_name(name)),
        policy: crate::upstream::config::check(c, rc),
        resilience: resilience(c, rc.breaker.as_ref(), rc.retry.as_ref(), rc.concurrency.as_ref()),
    }
}

/// The breaker, retry and concurrency blocks, checked by `crate::resilience::config`.
fn resilience(
    c: &mut Checker,
    breaker: Option<&crate::resilience::breaker::config::RawBreaker>,
    retry: Option<&crate::resilience::retry::config::RawRetry>,
    concurrency: Option<&crate::resilience::limit::RawLimit>,
) -> crate::resilience::ResilienceConfig {
    let (config, problems) = crate::resilience::config::check(breaker, retry, concurrency);
    for (block, key, message) in problems {
        c.key(block, |c| c.error_at(key, message));
    }
    config
}

/// `host:port` with a non-empty host and a port in 1..=65535.
pub(crate) fn check_address(address: &str) -> Result<(), String> {
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("{address:?} is not host:port (e.g. payment-primary:8080 or 10.0.0.7:8080)");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || host.is_empty() {
        return Err(bad());
    }
    let valid_host = host.split('.').all(|label| {
        !label.is_empty() && label.len() <= 63 && label.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
    });
    if !valid_host {
        return Err(bad());
    }
    Ok(())
}

fn check_route(
    c: &mut Checker,
    index: usize,
    rr: &RawRoute,
    raw: &RawConfig,
    clusters: &BTreeMap<String, ClusterConfig>,
    limits: &LimitsConfig,
) -> RouteConfig {
    let name = rr.name.clone().unwrap_or_else(|| format!("{}-{index}", rr.cluster));
    if name.is_empty() || !name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) {
        c.error_at("name", "route names may only contain letters, digits, '-', '_' and '.'");
    }
    let cluster_timeout = match clusters.get(&rr.cluster) {
        Some(cl) => cl.timeout,
        None => {
            let known: Vec<&str> = raw.clusters.keys().map(String::as_str).collect();
            c.error_at("cluster", format!("no cluster named {:?} (known: {})", rr.cluster, known.join(", ")));
            Duration::from_secs(15)
        }
    };
    let matcher = c.key("match", |c| check_match(c, &rr.matcher));
    RouteConfig {
        name,
        matcher,
        cluster: rr.cluster.clone(),
        timeout: c.positive("timeout", rr.timeout, cluster_timeout),
        max_body: rr.max_body.map(|s| s.0).unwrap_or(limits.max_body),
        grace: rr.grace.clone(),
        resilience: resilience(c, rr.breaker.as_ref(), rr.retry.as_ref(), rr.concurrency.as_ref()),
    }
}

fn check_match(c: &mut Checker, m: &RawMatch) -> MatchConfig {
    let method = m.method.as_ref().and_then(|s| match http::Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
        Ok(m) => Some(m),
        Err(_) => {
            c.error_at("method", format!("{s:?} is not an HTTP method"));
            None
        }
    });
    for (key, value) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
        if let Some(p) = value {
            if !p.starts_with('/') {
                c.error_at(key, format!("{p:?} must start with '/'"));
            }
        }
    }
    if m.path.is_some() && m.path_prefix.is_some() {
        c.error_at("path_prefix", "set either path or path_prefix, not both");
    }
    MatchConfig {
        host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
        method,
        path: m.path.clone(),
        path_prefix: m.path_prefix.clone(),
    }
}
