//! What to send and when: a [`Plan`] of [`Phase`]s, and the exact arrival schedule it implies.
//!
//! The schedule is *open*: arrival `g` (0, 1, 2, …) happens at the time when the cumulative
//! offered rate reaches `g`, whatever happened to earlier requests. Within a phase the rate moves
//! linearly from `rate` to `end_rate` (equal for a constant phase), so the cumulative count is
//! `A(t) = r0·t + (r1 − r0)·t² / 2D` and arrival times come from solving that quadratic — exact,
//! with no drift from adding up intervals. Connection `i` of `N` owns arrivals `i, i+N, i+2N, …`,
//! which spreads the sends evenly across connections (wrk2 does the same).

use std::time::Duration;

use super::workload::Workload;

/// A sequence of phases, run back to back.
#[derive(Debug, Clone)]
pub struct Plan {
    pub phases: Vec<Phase>,
}

/// One stretch of the run: a duration, an offered rate (constant or a linear ramp) and a workload.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Shown in reports (`"1000/s"`, `"ramp 100→5000/s"`, or a drill's step name).
    pub name: String,
    pub duration: Duration,
    /// Offered requests per second at the start of the phase.
    pub rate: f64,
    /// Offered requests per second at the end (the same as `rate` for a constant phase).
    pub end_rate: f64,
    pub workload: Workload,
}

impl Phase {
    /// A constant-rate phase.
    pub fn constant(duration: Duration, rate: f64, workload: Workload) -> Phase {
        Phase { name: format!("{}/s", fmt_rate(rate)), duration, rate, end_rate: rate, workload }
    }

    /// A phase whose rate moves linearly from `from` to `to`.
    pub fn ramp(duration: Duration, from: f64, to: f64, workload: Workload) -> Phase {
        Phase {
            name: format!("ramp {}→{}/s", fmt_rate(from), fmt_rate(to)),
            duration,
            rate: from,
            end_rate: to,
            workload,
        }
    }

    /// Renames the phase (drills name their steps).
    pub fn named(mut self, name: impl Into<String>) -> Phase {
        self.name = name.into();
        self
    }

    /// Offered arrivals over the whole phase.
    pub fn arrivals(&self) -> f64 {
        (self.rate + self.end_rate) / 2.0 * self.duration.as_secs_f64()
    }
}

impl Plan {
    /// One constant-rate phase.
    pub fn fixed(rate: f64, duration: Duration, workload: Workload) -> Plan {
        Plan { phases: vec![Phase::constant(duration, rate, workload)] }
    }

    /// One linear ramp.
    pub fn ramp(from: f64, to: f64, duration: Duration, workload: Workload) -> Plan {
        Plan { phases: vec![Phase::ramp(duration, from, to, workload)] }
    }

    /// Constant-rate steps of equal duration.
    pub fn steps(rates: &[f64], each: Duration, workload: Workload) -> Plan {
        Plan { phases: rates.iter().map(|&r| Phase::constant(each, r, workload.clone())).collect() }
    }

    /// Checks rates and durations; the engine relies on these.
    pub fn validate(&self) -> Result<(), String> {
        if self.phases.is_empty() {
            return Err("the plan has no phase".into());
        }
        for (i, p) in self.phases.iter().enumerate() {
            let ok = |r: f64| r.is_finite() && r >= 0.0;
            if !ok(p.rate) || !ok(p.end_rate) {
                return Err(format!("phase {i} ({}): rates must be finite and not negative", p.name));
            }
            if p.duration.is_zero() {
                return Err(format!("phase {i} ({}): duration must be positive", p.name));
            }
        }
        Ok(())
    }

    pub fn duration(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }

    /// Offered rate at `t` seconds from the start (for charts).
    pub fn rate_at(&self, t: f64) -> f64 {
        let mut start = 0.0;
        for p in &self.phases {
            let d = p.duration.as_secs_f64();
            if t < start + d {
                return p.rate + (p.end_rate - p.rate) * (t - start) / d;
            }
            start += d;
        }
        0.0
    }
}

/// Arrival times of a plan, computed on demand.
#[derive(Debug, Clone)]
pub struct Schedule {
    phases: Vec<Span>,
    total: f64,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: f64,
    duration: f64,
    r0: f64,
    r1: f64,
    /// Arrivals in all earlier phases.
    before: f64,
}

impl Schedule {
    pub fn new(plan: &Plan) -> Schedule {
        let mut phases = Vec::with_capacity(plan.phases.len());
        let (mut start, mut before) = (0.0, 0.0);
        for p in &plan.phases {
            let duration = p.duration.as_secs_f64();
            phases.push(Span { start, duration, r0: p.rate, r1: p.end_rate, before });
            start += duration;
            before += p.arrivals();
        }
        Schedule { phases, total: before }
    }

    /// Total arrivals of the plan (rounded up: arrival `g` exists for every `g < total`).
    pub fn len(&self) -> u64 {
        self.total.ceil() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When arrival `g` is due (seconds from the start) and in which phase, or `None` past the end.
    pub fn at(&self, g: u64) -> Option<(f64, usize)> {
        let x = g as f64;
        if x >= self.total {
            return None;
        }
        // The last phase whose first arrival is at or before g (phases with no arrivals are skipped
        // because the next phase has the same `before`).
        let idx = self.phases.partition_point(|s| s.before <= x).checked_sub(1)?;
        let s = self.phases[idx];
        let local = x - s.before;
        // Solve r0·t + a·t² = local with a = (r1 − r0) / 2D, in the form that stays stable when
        // a is 0 or negative: t = 2x / (r0 + sqrt(r0² + 4a·x)).
        let a = (s.r1 - s.r0) / (2.0 * s.duration);
        let disc = (s.r0 * s.r0 + 4.0 * a * local).max(0.0);
        let denom = s.r0 + disc.sqrt();
        let t = if denom > 0.0 { 2.0 * local / denom } else { 0.0 };
        Some((s.start + t.min(s.duration), idx))
    }
}

/// `1000`, `12.5`: rates without a trailing `.0`.
pub fn fmt_rate(r: f64) -> String {
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> Workload {
        Workload::get("http://127.0.0.1:1/").unwrap()
    }

    #[test]
    fn constant_phase_has_exact_evenly_spaced_arrivals() {
        let s = Schedule::new(&Plan::fixed(200.0, Duration::from_secs(1), w()));
        assert_eq!(s.len(), 200);
        assert!(s.at(199).is_some());
        assert!(s.at(200).is_none());
        let (t, p) = s.at(100).unwrap();
        assert!((t - 0.5).abs() < 1e-9 && p == 0);
    }

    #[test]
    fn ramp_arrivals_follow_the_rate() {
        // 0 → 100/s over 10 s: 500 arrivals; half of them by t = 10/√2.
        let s = Schedule::new(&Plan::ramp(0.0, 100.0, Duration::from_secs(10), w()));
        assert_eq!(s.len(), 500);
        let (t, _) = s.at(250).unwrap();
        assert!((t - 10.0 / 2f64.sqrt()).abs() < 1e-6, "{t}");
        // Ramp down is the mirror image: monotone and inside the phase.
        let s = Schedule::new(&Plan::ramp(100.0, 0.0, Duration::from_secs(10), w()));
        let times: Vec<f64> = (0..s.len()).map(|g| s.at(g).unwrap().0).collect();
        assert!(times.windows(2).all(|p| p[0] <= p[1]));
        assert!(*times.last().unwrap() <= 10.0);
    }

    #[test]
    fn steps_continue_across_phases_and_skip_silent_ones() {
        let plan = Plan::steps(&[10.0, 0.0, 20.0], Duration::from_secs(1), w());
        let s = Schedule::new(&plan);
        assert_eq!(s.len(), 30);
        assert_eq!(s.at(9).unwrap().1, 0);
        let (t, p) = s.at(10).unwrap();
        assert_eq!(p, 2);
        assert!((t - 2.0).abs() < 1e-9);
        assert!(plan.validate().is_ok());
        assert!(Plan::fixed(-1.0, Duration::from_secs(1), w()).validate().is_err());
        assert!(Plan::fixed(1.0, Duration::ZERO, w()).validate().is_err());
    }
}
