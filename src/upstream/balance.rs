//! Endpoint choice on the request path: read the published [`Plan`], never decide health.
//!
//! First a priority is drawn by its share; then an endpoint inside it, by
//! power-of-two-choices on least outstanding requests (Mitzenmacher, "The Power of Two Choices
//! in Randomized Load Balancing"; Envoy's LEAST_REQUEST, Linkerd's P2C) or weighted round-robin.
//! Both honour effective weights (config weight × slow-start fraction).
//!
//! Endpoints an earlier attempt of the same request already tried are avoided when any other
//! usable endpoint exists, in any priority: a retry after the only primary failed goes to DR
//! (Envoy's `previous_priorities` retry plugin does the same).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::Rng;

use super::config::LoadBalancer;
use super::endpoint::Endpoint;
use super::failover::{Level, Plan, FULL};

impl Plan {
    /// Picks an endpoint; `avoid` names endpoints to skip if possible. `None` only when the plan
    /// has no endpoint at all (fail fast).
    pub fn pick(&self, lb: LoadBalancer, avoid: &dyn Fn(&str) -> bool) -> Option<Arc<Endpoint>> {
        let level = self.draw_level()?;
        if let Some(e) = level.pick(lb, avoid) {
            return Some(e);
        }
        // Everything in the drawn priority was tried: any untried usable endpoint, best first.
        if let Some(e) = self.levels.iter().find_map(|l| l.pick(lb, avoid)) {
            return Some(e);
        }
        level.pick(lb, &|_| false)
    }

    fn draw_level(&self) -> Option<&Level> {
        let total: u32 = self.levels.iter().map(|l| l.share_bp).sum::<u32>().min(FULL);
        if total == 0 {
            return self.levels.first();
        }
        let mut taking = self.levels.iter().filter(|l| l.share_bp > 0);
        let first = taking.next();
        if total == first.map_or(0, |l| l.share_bp) {
            return first; // the common case: one priority takes everything, no draw
        }
        let mut r = rand::rng().random_range(0..total);
        for l in first.into_iter().chain(taking) {
            if r < l.share_bp {
                return Some(l);
            }
            r -= l.share_bp;
        }
        self.levels.iter().rev().find(|l| l.share_bp > 0)
    }
}

impl Level {
    fn pick(&self, lb: LoadBalancer, avoid: &dyn Fn(&str) -> bool) -> Option<Arc<Endpoint>> {
        if self.endpoints.is_empty() {
            return None;
        }
        let any_avoided = self.endpoints.iter().any(|e| avoid(&e.key));
        if !any_avoided {
            let i = match lb {
                LoadBalancer::RoundRobin => self.round_robin(),
                LoadBalancer::LeastRequest => self.two_choices(&self.cumulative, None),
            };
            return self.endpoints.get(i).cloned();
        }
        let candidates: Vec<usize> = (0..self.endpoints.len()).filter(|i| !avoid(&self.endpoints[*i].key)).collect();
        if candidates.is_empty() {
            return None;
        }
        let cumulative: Vec<u64> = candidates
            .iter()
            .scan(0u64, |acc, i| {
                *acc += self.weights[*i].max(1);
                Some(*acc)
            })
            .collect();
        let i = match lb {
            LoadBalancer::RoundRobin => candidates[weighted(&cumulative)],
            LoadBalancer::LeastRequest => self.two_choices(&cumulative, Some(&candidates)),
        };
        self.endpoints.get(i).cloned()
    }

    /// Weighted round-robin: a shared counter walks the weight line with a stride coprime to its
    /// length, so every point is visited once per cycle (exact proportions) and endpoints
    /// interleave instead of taking their whole weight in a burst.
    fn round_robin(&self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1).max(1);
        let n = self.rr.fetch_add(1, Ordering::Relaxed) as u64;
        let x = (n % total) * self.stride % total;
        self.cumulative.partition_point(|c| *c <= x).min(self.endpoints.len() - 1)
    }

    /// Two weighted random candidates; the one with fewer outstanding requests per weight wins.
    fn two_choices(&self, cumulative: &[u64], candidates: Option<&[usize]>) -> usize {
        let at = |i: usize| candidates.map(|c| c[i]).unwrap_or(i);
        let a = at(weighted(cumulative));
        if cumulative.len() == 1 {
            return a;
        }
        let mut b = at(weighted(cumulative));
        if b == a {
            b = at(weighted(cumulative));
        }
        // Outstanding requests per weight; on a tie the first (weighted) draw wins, so with no
        // load the split follows the weights.
        let load = |i: usize| self.endpoints[i].state.stats.in_flight();
        // load_a / w_a <= load_b / w_b without division.
        if u128::from(load(a)) * u128::from(self.weights[b]) <= u128::from(load(b)) * u128::from(self.weights[a]) {
            a
        } else {
            b
        }
    }
}

/// Index into a prefix-sum array, drawn proportionally to the weights.
fn weighted(cumulative: &[u64]) -> usize {
    let total = cumulative.last().copied().unwrap_or(0);
    if total == 0 {
        return 0;
    }
    let r = rand::rng().random_range(0..total);
    cumulative.partition_point(|c| *c <= r).min(cumulative.len() - 1)
}
