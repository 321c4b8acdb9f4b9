//! Priority failover: how much of a cluster's traffic each priority takes.
//!
//! Envoy's formula (research notes, 2.6): a priority's availability is its usable share of
//! weight times the overprovisioning factor (1.4), capped at 100%; availabilities are normalised
//! so they sum to at most 100%, and each priority in order takes its availability, the remainder
//! spilling to the next. A primary with 80% of its weight usable therefore still takes all the
//! traffic, and a dead primary sends everything to DR.
//!
//! "Usable" is the endpoint's *fraction* from [`super::endpoint::Health::fraction`]: 0 while
//! unhealthy, ejected or in the failback hold, then ramping linearly to 1 over `slow_start`. That
//! is where failback gets its hysteresis: the recovered primary's share grows smoothly instead
//! of jumping (none of Envoy, Linkerd, Istio or HAProxy holds before failback; research 4.8).
//!
//! When no priority has anything usable, [`Mode::Panic`] spreads traffic over every endpoint
//! (Envoy's panic mode) or [`Mode::FailFast`] refuses with `no_healthy_endpoint`, which the
//! settlement route turns into offline grace. The plan is computed off the request path by the
//! controller and published whole; the balancer only reads it.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::config::FailoverConfig;
use super::endpoint::Endpoint;

/// Basis points in 100%.
pub const FULL: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Normal,
    Panic,
    FailFast,
}

/// Usable endpoints of one priority and the share of traffic it takes.
#[derive(Debug)]
pub struct Level {
    pub priority: u32,
    pub share_bp: u32,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Effective weights (weight × slow-start fraction, never below 10% of weight).
    pub weights: Vec<u64>,
    /// Prefix sums of `weights`.
    pub(crate) cumulative: Vec<u64>,
    pub(crate) rr: AtomicUsize,
    /// Round-robin stride: coprime with the total weight, near its golden section.
    pub(crate) stride: u64,
}

impl Level {
    pub fn new(priority: u32, share_bp: u32, endpoints: Vec<Arc<Endpoint>>, weights: Vec<u64>) -> Level {
        // Reduced by their gcd so that round-robin cycles are as short as the weights allow
        // (weights 1:2:3 give an exact cycle of 6 picks, not 6000).
        let g = weights.iter().fold(0, |g, w| gcd(g, (*w).max(1))).max(1);
        let weights: Vec<u64> = weights.iter().map(|w| (*w).max(1) / g).collect();
        let cumulative = weights
            .iter()
            .scan(0u64, |acc, w| {
                *acc += (*w).max(1);
                Some(*acc)
            })
            .collect::<Vec<u64>>();
        let total = cumulative.last().copied().unwrap_or(1).max(1);
        let mut stride = (total as f64 * 0.618) as u64 | 1;
        while stride > 1 && gcd(stride, total) != 1 {
            stride += 1;
        }
        Level { priority, share_bp, endpoints, weights, cumulative, rr: AtomicUsize::new(0), stride: stride.max(1) }
    }
}

/// What the balancer reads: published whole by the controller.
#[derive(Debug)]
pub struct Plan {
    pub mode: Mode,
    /// Priorities with usable endpoints, in priority order (share may be 0: retries that must
    /// avoid tried endpoints may still go there).
    pub levels: Vec<Level>,
    /// Share of every configured priority, in basis points.
    pub shares: Vec<(u32, u32)>,
    /// The most preferred priority taking traffic; `None` when failing fast.
    pub active_priority: Option<u32>,
}

impl Plan {
    pub fn empty() -> Plan {
        Plan { mode: Mode::FailFast, levels: Vec::new(), shares: Vec::new(), active_priority: None }
    }

    /// Same traffic split (used to skip republishing an identical plan).
    pub fn same_as(&self, other: &Plan) -> bool {
        self.mode == other.mode
            && self.shares == other.shares
            && self.levels.len() == other.levels.len()
            && self.levels.iter().zip(&other.levels).all(|(a, b)| {
                a.weights == b.weights
                    && a.endpoints.len() == b.endpoints.len()
                    && a.endpoints.iter().zip(&b.endpoints).all(|(x, y)| Arc::ptr_eq(x, y))
            })
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Per-priority load in basis points from availabilities (Envoy's normalisation), or `None`
/// when nothing is available.
pub fn priority_loads(availability_bp: &[u32]) -> Option<Vec<u32>> {
    let total = availability_bp.iter().map(|a| u64::from(*a)).sum::<u64>().min(u64::from(FULL));
    if total == 0 {
        return None;
    }
    let mut remaining = FULL;
    let mut loads: Vec<u32> = availability_bp
        .iter()
        .map(|a| {
            let l = ((u64::from(*a) * u64::from(FULL)) / total).min(u64::from(remaining)) as u32;
            remaining -= l;
            l
        })
        .collect();
    if remaining > 0 {
        if let Some(i) = availability_bp.iter().position(|a| *a > 0) {
            loads[i] += remaining;
        }
    }
    Some(loads)
}

/// Builds the plan from each endpoint's usable fraction.
pub fn compute(endpoints: &[(Arc<Endpoint>, f64)], cfg: &FailoverConfig) -> Plan {
    let mut by_priority: BTreeMap<u32, Vec<&(Arc<Endpoint>, f64)>> = BTreeMap::new();
    for e in endpoints {
        by_priority.entry(e.0.priority()).or_default().push(e);
    }
    let availability: Vec<u32> = by_priority
        .values()
        .map(|eps| {
            let total: f64 = eps.iter().map(|(e, _)| f64::from(e.config.weight)).sum();
            let usable: f64 = eps.iter().map(|(e, f)| f64::from(e.config.weight) * f).sum();
            if total <= 0.0 {
                return 0;
            }
            ((usable / total) * cfg.overprovisioning * f64::from(FULL)).round().min(f64::from(FULL)) as u32
        })
        .collect();
    let Some(loads) = priority_loads(&availability) else {
        let shares = by_priority.keys().map(|p| (*p, 0)).collect();
        if cfg.panic && !endpoints.is_empty() {
            let all: Vec<Arc<Endpoint>> = endpoints.iter().map(|(e, _)| e.clone()).collect();
            let weights = all.iter().map(|e| u64::from(e.config.weight) * 1000).collect();
            let priority = by_priority.keys().next().copied().unwrap_or(0);
            let level = Level::new(priority, FULL, all, weights);
            return Plan { mode: Mode::Panic, levels: vec![level], shares, active_priority: Some(priority) };
        }
        return Plan { mode: Mode::FailFast, levels: Vec::new(), shares, active_priority: None };
    };
    let mut levels = Vec::new();
    let mut shares = Vec::new();
    for ((priority, eps), share) in by_priority.iter().zip(&loads) {
        shares.push((*priority, *share));
        let usable: Vec<&&(Arc<Endpoint>, f64)> = eps.iter().filter(|(_, f)| *f > 0.0).collect();
        if usable.is_empty() {
            continue;
        }
        let weights =
            usable.iter().map(|(e, f)| ((f64::from(e.config.weight) * 1000.0 * f.max(0.1)) as u64).max(1)).collect();
        let list = usable.iter().map(|(e, _)| e.clone()).collect();
        levels.push(Level::new(*priority, *share, list, weights));
    }
    let active_priority = shares.iter().find(|(_, s)| *s > 0).map(|(p, _)| *p);
    Plan { mode: Mode::Normal, levels, shares, active_priority }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_priority_loads() {
        // Healthy primary takes everything.
        assert_eq!(priority_loads(&[10_000, 10_000]), Some(vec![10_000, 0]));
        // 80% healthy × 1.4 = 112% → capped: still all traffic on the primary.
        assert_eq!(priority_loads(&[(8_000 * 14 / 10).min(FULL), 10_000]), Some(vec![10_000, 0]));
        // Half of the primary healthy: 70% stays, 30% spills to DR.
        assert_eq!(priority_loads(&[7_000, 10_000]), Some(vec![7_000, 3_000]));
        // Dead primary: all to DR.
        assert_eq!(priority_loads(&[0, 10_000]), Some(vec![0, 10_000]));
        // Degraded everywhere: normalised up to 100%.
        assert_eq!(priority_loads(&[3_500, 0]), Some(vec![10_000, 0]));
        assert_eq!(priority_loads(&[2_000, 3_000]), Some(vec![4_000, 6_000]));
        assert_eq!(priority_loads(&[0, 0]), None);
    }
}
