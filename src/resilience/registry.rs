//! The live resilience state of one runtime generation: breakers, bulkheads and retry budgets.
//!
//! Built with the runtime snapshot. A breaker, bulkhead or budget whose scope and config are
//! unchanged is carried over from the previous generation as the same `Arc`, so a reload keeps
//! an open breaker open and a spent budget spent (design invariant 8). A breaker rebuilt because
//! its config changed keeps its operator mode: a forced-open breaker stays forced open.
//!
//! Scopes: a cluster's blocks make one instance named after the cluster, shared by its routes; a
//! route with its own block gets an instance named `cluster/route`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::breaker::gate::Mode;
use super::breaker::layer::BreakerStep;
use super::breaker::Breaker;
use super::limit::Limiter;
use super::retry::budget::Budget;
use super::retry::RetryPolicy;
use crate::classify::Classifier;
use crate::config::{Config, RouteConfig};
use crate::error::BoxError;

/// The budget parameters that, when unchanged, let a budget survive a reload.
type BudgetKey = (u32, u32, Duration);

#[derive(Default)]
pub struct Registry {
    breakers: BTreeMap<String, Arc<Breaker>>,
    limiters: BTreeMap<String, Arc<Limiter>>,
    budgets: BTreeMap<String, (BudgetKey, Arc<Budget>)>,
}

/// The resilience steps of one route.
pub struct RoutePolicies {
    pub breaker: Option<BreakerStep>,
    pub limit: Option<Arc<Limiter>>,
    pub retry: Option<Arc<RetryPolicy>>,
    pub per_try_timeout: Option<Duration>,
    /// Classifies the route's attempts (429 is a failure if any of its policies names it).
    pub classifier: Classifier,
}

/// The effective block of one kind for a route: its own (scope `cluster/route`) or the cluster's.
fn pick<'a, T>(own: Option<&'a T>, cluster: Option<&'a T>, route: &RouteConfig) -> Option<(&'a T, String)> {
    match own {
        Some(t) => Some((t, format!("{}/{}", route.cluster, route.name))),
        None => cluster.map(|t| (t, route.cluster.clone())),
    }
}

impl Registry {
    /// Builds the state for `config`, reusing what `previous` has for unchanged scopes.
    pub fn build(config: &Config, previous: Option<&Registry>) -> Result<Registry, BoxError> {
        let mut reg = Registry::default();
        for route in &config.routes {
            let Some(cluster) = config.clusters.get(&route.cluster) else { continue };
            let (own, shared) = (&route.resilience, &cluster.resilience);
            if let Some((cfg, scope)) = pick(own.breaker.as_ref(), shared.breaker.as_ref(), route) {
                if cfg.enabled && !reg.breakers.contains_key(&scope) {
                    let prev = previous.and_then(|p| p.breakers.get(&scope));
                    let b = match prev {
                        Some(b) if b.config == *cfg && b.cluster == route.cluster => b.clone(),
                        _ => {
                            if tokio::runtime::Handle::try_current().is_err() {
                                return Err("circuit breakers need a tokio runtime".into());
                            }
                            let mode = prev.map(|b| b.mode()).unwrap_or(Mode::Normal);
                            let history = prev.map(|b| b.events()).unwrap_or_default();
                            Breaker::spawn(&scope, &route.cluster, cfg.clone(), mode, history)
                        }
                    };
                    reg.breakers.insert(scope, b);
                }
            }
            if let Some((cfg, scope)) = pick(own.concurrency.as_ref(), shared.concurrency.as_ref(), route) {
                let prev = previous.and_then(|p| p.limiters.get(&scope)).filter(|l| l.config == *cfg).cloned();
                let l = prev.unwrap_or_else(|| Limiter::new(&route.cluster, cfg.clone()));
                reg.limiters.entry(scope).or_insert(l);
            }
            if let Some((cfg, scope)) = pick(own.retry.as_ref(), shared.retry.as_ref(), route) {
                let key = (cfg.budget.basis_points(), cfg.min_per_second, cfg.budget_window);
                let prev = previous.and_then(|p| p.budgets.get(&scope)).filter(|(k, _)| *k == key).cloned();
                let entry = prev.unwrap_or_else(|| (key, Arc::new(Budget::new(key.0, key.1, key.2))));
                reg.budgets.entry(scope).or_insert(entry);
            }
        }
        Ok(reg)
    }

    /// The steps `route` runs with.
    pub fn for_route(&self, route: &RouteConfig, config: &Config) -> RoutePolicies {
        let empty = Default::default();
        let shared = config.clusters.get(&route.cluster).map(|c| &c.resilience).unwrap_or(&empty);
        let own = &route.resilience;
        let breaker_cfg = pick(own.breaker.as_ref(), shared.breaker.as_ref(), route).filter(|(c, _)| c.enabled);
        let retry_cfg = pick(own.retry.as_ref(), shared.retry.as_ref(), route).filter(|(c, _)| c.enabled);
        let failure_on_429 = breaker_cfg.as_ref().is_some_and(|(c, _)| c.failure_on.classifier().failure_on_429)
            || retry_cfg.as_ref().is_some_and(|(c, _)| c.retry_on.classifier().failure_on_429);
        let classifier = Classifier { failure_on_429 };
        let breaker = breaker_cfg
            .and_then(|(_, scope)| self.breakers.get(&scope))
            .map(|b| BreakerStep::new(b.clone(), classifier));
        let limit = pick(own.concurrency.as_ref(), shared.concurrency.as_ref(), route)
            .and_then(|(_, scope)| self.limiters.get(&scope))
            .cloned();
        let per_try_timeout = retry_cfg.as_ref().and_then(|(c, _)| c.per_try_timeout);
        let retry = retry_cfg.and_then(|(cfg, scope)| {
            let (_, budget) = self.budgets.get(&scope)?;
            Some(RetryPolicy::new(cfg.clone(), budget.clone(), &route.cluster, classifier))
        });
        RoutePolicies { breaker, limit, retry, per_try_timeout, classifier }
    }

    /// Every breaker, by name.
    pub fn breakers(&self) -> impl Iterator<Item = &Arc<Breaker>> {
        self.breakers.values()
    }

    pub fn breaker(&self, name: &str) -> Option<&Arc<Breaker>> {
        self.breakers.get(name)
    }

    /// Stops every policy task (shutdown).
    pub fn stop(&self) {
        self.breakers.values().for_each(|b| b.stop());
    }
}
