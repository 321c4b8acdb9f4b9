//! The runtime snapshot: everything the request path reads, swapped whole on reload.
//!
//! A [`Runtime`] is built from a validated [`Config`] and, on reload, from the previous runtime:
//! clusters whose config did not change are carried over as the same `Arc`, so their pools and
//! live state survive (design invariant 8). The proxy loads the current snapshot once per
//! request; in-flight requests keep the snapshot they started with.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use crate::config::{Config, RouteConfig};
use crate::error::{BoxError, ErrorKind};
use crate::proxy::stack::{self, HttpService};
use crate::telemetry::names;
use crate::upstream::Cluster;

fn resolver() -> Arc<dyn crate::upstream::resolve::Resolve> {
    crate::upstream::resolve::system()
}

/// One route, ready to serve.
pub struct RouteEntry {
    pub config: RouteConfig,
    pub service: HttpService,
    pub metrics: RouteMetrics,
}

/// Metric handles cached per route so the hot path does not build label sets.
pub struct RouteMetrics {
    pub by_class: [metrics::Counter; 5],
    pub duration: metrics::Histogram,
    /// Answers Lifeline gave itself, by error kind, made on first use: a burst of them (a
    /// breaker failing fast) built the label set, two `String`s and a key, per answer.
    by_error: [OnceLock<metrics::Counter>; ERROR_KINDS],
}

/// How many `ErrorKind`s there are (checked below: the last one's index + 1).
const ERROR_KINDS: usize = 19;
const _: () = assert!(ErrorKind::ClientAborted as usize + 1 == ERROR_KINDS);

impl RouteMetrics {
    fn new(route: &str, cluster: &str) -> Self {
        let class = |c: &'static str| metrics::counter!(names::REQUESTS_TOTAL, "route" => route.to_string(), "cluster" => cluster.to_string(), "outcome" => c);
        RouteMetrics {
            by_class: [class("1xx"), class("2xx"), class("3xx"), class("4xx"), class("5xx")],
            duration: metrics::histogram!(names::REQUEST_DURATION_SECONDS, "route" => route.to_string(), "cluster" => cluster.to_string()),
            by_error: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Counts an upstream answer by status class.
    pub fn count_status(&self, status: http::StatusCode) {
        let i = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[i].increment(1);
    }

    /// Counts an answer Lifeline gave itself on `route` (its `outcome` label is the error's code).
    pub fn count_error(&self, kind: ErrorKind, route: &RouteConfig) {
        let counter = self.by_error[kind as usize].get_or_init(|| {
            metrics::counter!(names::REQUESTS_TOTAL, "route" => route.name.clone(), "cluster" => route.cluster.clone(), "outcome" => kind.code())
        });
        counter.increment(1);
    }
}

/// Everything the request path reads, for one config generation.
pub struct Runtime {
    pub config: Arc<Config>,
    pub routes: Vec<RouteEntry>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Breakers, bulkheads and retry budgets (carried over for unchanged scopes).
    pub resilience: Arc<crate::resilience::registry::Registry>,
    pub generation: u64,
    /// Offline grace engines (journals, forwarders), carried across reloads.
    pub grace: Arc<crate::grace::Engines>,
    /// Active chaos faults; the same set across reloads (cleared when chaos is disabled).
    pub faults: Arc<crate::chaos::Faults>,
}

impl Runtime {
    /// Builds a runtime, reusing clusters of `previous` whose config is unchanged (and its grace
    /// engines, which take the new limits).
    pub fn build(config: Arc<Config>, previous: Option<&Runtime>) -> Result<Runtime, BoxError> {
        let grace = previous.map(|p| p.grace.clone()).unwrap_or_default();
        Runtime::build_with(config, previous, grace)
    }

    /// Builds a runtime with these grace engines (opened by `App::start`).
    pub fn build_with(
        config: Arc<Config>,
        previous: Option<&Runtime>,
        grace: Arc<crate::grace::Engines>,
    ) -> Result<Runtime, BoxError> {
        grace.check(&config)?;
        let faults = previous.map(|p| p.faults.clone()).unwrap_or_default();
        if !config.chaos.enabled {
            faults.clear();
        }
        let mut clusters = BTreeMap::new();
        for (name, cc) in &config.clusters {
            let reused = previous.and_then(|p| p.clusters.get(name)).filter(|c| c.config == *cc).cloned();
            let cluster = match reused {
                Some(c) => c,
                // Changed config: endpoint health and ejections carry over by address.
                None => Cluster::build(cc, previous.and_then(|p| p.clusters.get(name)).map(|c| &**c), resolver()),
            };
            clusters.insert(name.clone(), cluster);
        }
        let resilience =
            Arc::new(crate::resilience::registry::Registry::build(&config, previous.map(|p| &*p.resilience))?);
        let mut routes = Vec::with_capacity(config.routes.len());
        for rc in &config.routes {
            let cluster = clusters
                .get(&rc.cluster)
                .ok_or_else(|| format!("route {} names unknown cluster {}", rc.name, rc.cluster))?;
            routes.push(RouteEntry {
                config: rc.clone(),
                service: crate::grace::wrap(
                    rc,
                    stack::build(rc, cluster, resilience.for_route(rc, &config), &faults),
                    &grace,
                )?,
                metrics: RouteMetrics::new(&rc.name, &rc.cluster),
            });
        }
        let generation = previous.map(|p| p.generation + 1).unwrap_or(1);
        grace.apply(&config);
        Ok(Runtime { config, routes, clusters, resilience, generation, faults, grace })
    }

    /// The first route matching the request.
    pub fn route(&self, head: &impl crate::proxy::route::RequestHead) -> Option<&RouteEntry> {
        self.routes.iter().find(|r| crate::proxy::route::matches(&r.config.matcher, head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_lifeline_gave_itself_are_counted_by_error_code() {
        let prom = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = prom.handle();
        let yaml = "clusters:\n  payment:\n    endpoints:\n      - { address: 127.0.0.1:9 }\nroutes:\n  - { name: pay, cluster: payment }\n";
        let config = Config::from_yaml("t.yaml", yaml).unwrap();
        let route = &config.routes[0];
        metrics::with_local_recorder(&prom, || {
            let m = RouteMetrics::new(&route.name, &route.cluster);
            m.count_error(ErrorKind::CircuitOpen, route);
            m.count_error(ErrorKind::CircuitOpen, route);
            m.count_error(ErrorKind::ClientAborted, route);
            m.count_status(http::StatusCode::OK);
        });
        let text = handle.render();
        let value = |outcome: &str| {
            let series = format!("lifeline_requests_total{{route=\"pay\",cluster=\"payment\",outcome=\"{outcome}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(series.as_str())).map(str::to_string)
        };
        assert_eq!(value("circuit_open").as_deref(), Some("2"), "{text}");
        assert_eq!(value("client_aborted").as_deref(), Some("1"), "{text}");
        assert_eq!(value("2xx").as_deref(), Some("1"), "{text}");
        assert_eq!(value("overloaded"), None, "made on first use only: {text}");
    }
}
