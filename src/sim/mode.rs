//! Fault modes of a simulated service, and the latency distributions they draw from.
//!
//! A mode is written the same way everywhere (the `--mode SERVICE=MODE` flag, the body of
//! `POST /sim/mode`, a drill scenario), so an SRE learns one syntax:
//!
//! | mode | meaning |
//! |---|---|
//! | `healthy` | answer normally, after the service's base latency |
//! | `slow:200ms` | every answer takes exactly 200 ms |
//! | `slow:50ms..400ms` | uniform between the two bounds |
//! | `slow:p50=20ms,p99=800ms` | log-normal with that median and 99th percentile |
//! | `errors:30%` / `errors:30%:503` | that share of requests fail with 500 (default) or 503, *before* any effect |
//! | `reset-after:30%` | that share of requests *take effect*, then the connection is closed instead of answering (the ambiguous "sent, no answer" case) |
//! | `hang` | accept the connection and the request, never answer (until the mode changes) |
//! | `flap:2s` | alternate `healthy` and `down`, 2 s each, starting healthy |
//! | `down` | close the listener (connections refused) and drop open connections; reopen on any other mode |
//!
//! Latency is the only floating-point quantity in the simulators; it never touches an amount.

use std::fmt;
use std::time::Duration;

use rand::Rng;

use crate::config::{Dur, Percent};

/// What a simulated service does with the requests it gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Healthy,
    Slow(Latency),
    /// `ratio` of requests (basis points) fail with `status` (500 or 503) without any effect.
    Errors {
        ratio: Percent,
        status: u16,
    },
    /// `ratio` of requests are carried out, then the connection is closed without an answer.
    ResetAfter {
        ratio: Percent,
    },
    Hang,
    /// Up for `period`, down for `period`, repeating; the cycle starts when the mode is set.
    Flap {
        period: Duration,
    },
    Down,
}

/// A latency distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    Fixed(Duration),
    Uniform(Duration, Duration),
    /// Log-normal with this median and 99th percentile (`p99 >= p50`).
    LogNormal {
        p50: Duration,
        p99: Duration,
    },
}

/// z-score of the 99th percentile of the standard normal distribution.
const Z99: f64 = 2.326_347_874;

impl Latency {
    /// No added latency (for tests that count, not time).
    pub const ZERO: Latency = Latency::Fixed(Duration::ZERO);

    /// The default base latency of a healthy simulator: a few milliseconds with a tail
    /// (median 3 ms, p99 25 ms), like a loaded service on the same network.
    pub const REALISTIC: Latency = Latency::LogNormal { p50: Duration::from_millis(3), p99: Duration::from_millis(25) };

    /// Draws one latency.
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform(lo, hi) => {
                if hi <= lo {
                    lo
                } else {
                    let nanos = rng.random_range(lo.as_nanos() as u64..=hi.as_nanos() as u64);
                    Duration::from_nanos(nanos)
                }
            }
            Latency::LogNormal { p50, p99 } => {
                let median = p50.as_secs_f64();
                if median <= 0.0 {
                    return Duration::ZERO;
                }
                let sigma = (p99.as_secs_f64().max(median) / median).ln() / Z99;
                // Box-Muller: one standard normal draw from two uniforms.
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = rng.random::<f64>();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                // Cap the tail at 20x p99 so one draw cannot stall a test for minutes.
                let cap = p99.as_secs_f64().max(median) * 20.0;
                Duration::from_secs_f64((median * (sigma * z).exp()).min(cap))
            }
        }
    }

    /// Parses `200ms`, `50ms..400ms` or `p50=20ms,p99=800ms`.
    pub fn parse(s: &str) -> Result<Latency, String> {
        let s = s.trim();
        let dur = |v: &str| Dur::parse(v).map(|d| d.0);
        if let Some((lo, hi)) = s.split_once("..") {
            let (lo, hi) = (dur(lo)?, dur(hi)?);
            if hi < lo {
                return Err(format!("latency range {s:?}: the upper bound is below the lower bound"));
            }
            return Ok(Latency::Uniform(lo, hi));
        }
        if s.starts_with("p50=") || s.starts_with("p99=") {
            let (mut p50, mut p99) = (None, None);
            for part in s.split(',') {
                match part.trim().split_once('=') {
                    Some(("p50", v)) => p50 = Some(dur(v)?),
                    Some(("p99", v)) => p99 = Some(dur(v)?),
                    _ => return Err(format!("latency {s:?}: expected p50=DUR,p99=DUR")),
                }
            }
            let (Some(p50), Some(p99)) = (p50, p99) else {
                return Err(format!("latency {s:?}: both p50 and p99 are needed, e.g. p50=20ms,p99=800ms"));
            };
            if p99 < p50 {
                return Err(format!("latency {s:?}: p99 must be at least p50"));
            }
            return Ok(Latency::LogNormal { p50, p99 });
        }
        Ok(Latency::Fixed(dur(s)?))
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Latency::Fixed(d) => write!(f, "{}", Dur(*d)),
            Latency::Uniform(lo, hi) => write!(f, "{}..{}", Dur(*lo), Dur(*hi)),
            Latency::LogNormal { p50, p99 } => write!(f, "p50={},p99={}", Dur(*p50), Dur(*p99)),
        }
    }
}

impl Mode {
    /// Parses a mode as written in the table of the module docs.
    pub fn parse(s: &str) -> Result<Mode, String> {
        let s = s.trim();
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let no_arg = |m: Mode| match arg {
            None => Ok(m),
            Some(_) => Err(format!("mode {name:?} takes no argument (got {s:?})")),
        };
        match name {
            "healthy" => no_arg(Mode::Healthy),
            "hang" => no_arg(Mode::Hang),
            "down" => no_arg(Mode::Down),
            "slow" => {
                let arg = arg.ok_or("mode slow needs a latency: slow:200ms, slow:50ms..400ms or slow:p50=20ms,p99=800ms")?;
                Ok(Mode::Slow(Latency::parse(arg)?))
            }
            "errors" => {
                let arg = arg.ok_or("mode errors needs a ratio: errors:30% or errors:30%:503")?;
                let (ratio, status) = match arg.split_once(':') {
                    Some((r, st)) => (r, st.trim()),
                    None => (arg, "500"),
                };
                let status = match status {
                    "500" => 500,
                    "503" => 503,
                    other => return Err(format!("mode errors: status must be 500 or 503, not {other:?}")),
                };
                Ok(Mode::Errors { ratio: Percent::parse(ratio)?, status })
            }
            "reset-after" => {
                let arg = arg.ok_or("mode reset-after needs a ratio: reset-after:30%")?;
                Ok(Mode::ResetAfter { ratio: Percent::parse(arg)? })
            }
            "flap" => {
                let arg = arg.ok_or("mode flap needs a period: flap:2s")?;
                let period = Dur::parse(arg)?.0;
                if period < Duration::from_millis(10) {
                    return Err("mode flap: the period must be at least 10ms".into());
                }
                Ok(Mode::Flap { period })
            }
            other => Err(format!(
                "unknown mode {other:?}: expected healthy, slow:LATENCY, errors:RATIO[:STATUS], reset-after:RATIO, hang, \
                 flap:PERIOD or down"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Healthy => write!(f, "healthy"),
            Mode::Slow(l) => write!(f, "slow:{l}"),
            Mode::Errors { ratio, status } => write!(f, "errors:{ratio}:{status}"),
            Mode::ResetAfter { ratio } => write!(f, "reset-after:{ratio}"),
            Mode::Hang => write!(f, "hang"),
            Mode::Flap { period } => write!(f, "flap:{}", Dur(*period)),
            Mode::Down => write!(f, "down"),
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn parses_every_mode_and_prints_it_back() {
        for s in [
            "healthy",
            "slow:200ms",
            "slow:50ms..400ms",
            "slow:p50=20ms,p99=800ms",
            "errors:30%:500",
            "errors:12.50%:503",
            "reset-after:30%",
            "hang",
            "flap:2s",
            "down",
        ] {
            let m = Mode::parse(s).unwrap();
            assert_eq!(m.to_string(), s);
            assert_eq!(Mode::parse(&m.to_string()).unwrap(), m);
        }
        assert_eq!(Mode::parse("errors:30%").unwrap(), Mode::Errors { ratio: Percent(3000), status: 500 });
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        for (s, want) in [
            ("sloww", "unknown mode"),
            ("slow", "needs a latency"),
            ("errors:30%:404", "500 or 503"),
            ("errors:130%", "between 0% and 100%"),
            ("slow:400ms..50ms", "upper bound"),
            ("slow:p50=20ms", "both p50 and p99"),
            ("flap:1ms", "at least 10ms"),
            ("down:5s", "takes no argument"),
        ] {
            let err = Mode::parse(s).unwrap_err();
            assert!(err.contains(want), "{s}: {err}");
        }
    }

    #[test]
    fn log_normal_has_the_requested_median_and_tail() {
        let l = Latency::LogNormal { p50: Duration::from_millis(20), p99: Duration::from_millis(200) };
        let mut rng = SmallRng::seed_from_u64(7);
        let mut v: Vec<Duration> = (0..20_000).map(|_| l.sample(&mut rng)).collect();
        v.sort();
        let p50 = v[v.len() / 2].as_secs_f64() * 1e3;
        let p99 = v[v.len() * 99 / 100].as_secs_f64() * 1e3;
        assert!((17.0..23.0).contains(&p50), "p50 {p50}ms");
        assert!((160.0..250.0).contains(&p99), "p99 {p99}ms");
    }

    #[test]
    fn uniform_stays_in_bounds_and_same_seed_same_draws() {
        let l = Latency::Uniform(Duration::from_millis(5), Duration::from_millis(9));
        let draws = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..100).map(|_| l.sample(&mut rng)).collect::<Vec<_>>()
        };
        let a = draws(1);
        assert!(a.iter().all(|d| (Duration::from_millis(5)..=Duration::from_millis(9)).contains(d)));
        assert_eq!(a, draws(1));
        assert_ne!(a, draws(2));
    }
}
