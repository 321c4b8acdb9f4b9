//! The resilience part of a cluster's or a route's config: breaker, retry and concurrency blocks.
//!
//! A cluster's blocks apply to all its routes. A route may carry its own block of any kind; it
//! *replaces* the cluster's block of that kind (unset fields take the defaults, not the
//! cluster's values) and gets its own state: a route-level breaker, budget or bulkhead (research
//! §3.2: Linkerd refused per-route breakers; settlement vs status lookups need them).

use serde::Serialize;

use super::breaker::config::{BreakerConfig, RawBreaker};
use super::limit::{LimitConfig, RawLimit};
use super::retry::config::{RawRetry, RetryConfig};

/// Problems found while validating, as `(key, message)` under the block being checked.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<(&'static str, String)>);

impl Problems {
    pub fn push(&mut self, key: &'static str, message: impl Into<String>) {
        self.0.push((key, message.into()));
    }
}

/// Validated resilience settings of a cluster, or a route's overrides (`None` = inherit).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ResilienceConfig {
    pub breaker: Option<BreakerConfig>,
    pub retry: Option<RetryConfig>,
    pub concurrency: Option<LimitConfig>,
}

/// One problem: `(block, key, message)`, e.g. `("breaker", "window", "...")`.
pub type Problem = (&'static str, &'static str, String);

/// Validates the three raw blocks of a cluster or route.
pub fn check(
    breaker: Option<&RawBreaker>,
    retry: Option<&RawRetry>,
    concurrency: Option<&RawLimit>,
) -> (ResilienceConfig, Vec<Problem>) {
    let mut out = Vec::new();
    let mut run = |block: &'static str, f: &mut dyn FnMut(&mut Problems)| {
        let mut p = Problems::default();
        f(&mut p);
        out.extend(p.0.into_iter().map(|(k, m)| (block, k, m)));
    };
    let mut cfg = ResilienceConfig::default();
    if let Some(b) = breaker {
        run("breaker", &mut |p| cfg.breaker = Some(b.check(p)));
    }
    if let Some(r) = retry {
        run("retry", &mut |p| cfg.retry = Some(r.check(p)));
    }
    if let Some(l) = concurrency {
        run("concurrency", &mut |p| cfg.concurrency = Some(l.check(p)));
    }
    (cfg, out)
}
