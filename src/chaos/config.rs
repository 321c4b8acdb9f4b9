//! The `chaos` section of the sidecar config: whether fault injection may run at all, and its
//! bounds.
//!
//! Chaos is opt-in (design invariant 9): with `enabled: false` (the default) the admin API
//! refuses every fault and the request path never consults the fault registry. `max_ttl` and
//! `max_faults` cap what a drill runner (or a mistyped curl) can do to a production sidecar.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{Checker, Dur};

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawChaos {
    /// Allow fault injection through the admin API (`/chaos/faults`, token required). Default false.
    #[serde(default)]
    pub enabled: bool,
    /// Longest TTL a fault may ask for; every fault expires by itself. Default 1h.
    #[serde(default)]
    pub max_ttl: Option<Dur>,
    /// Most faults active at once. Default 64.
    #[serde(default)]
    pub max_faults: Option<usize>,
}

/// The validated `chaos` section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChaosConfig {
    pub enabled: bool,
    #[serde(serialize_with = "ser_dur")]
    pub max_ttl: Duration,
    pub max_faults: usize,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig { enabled: false, max_ttl: Duration::from_secs(3600), max_faults: 64 }
    }
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    Dur(*d).serialize(s)
}

/// Checks the raw section; errors are located under `chaos.`.
pub(crate) fn check(c: &mut Checker, raw: &RawChaos) -> ChaosConfig {
    let d = ChaosConfig::default();
    let max_ttl = match raw.max_ttl {
        Some(Dur(t)) if t.is_zero() => {
            c.error_at("max_ttl", "must be greater than 0");
            d.max_ttl
        }
        Some(Dur(t)) if t > Duration::from_secs(24 * 3600) => {
            c.error_at("max_ttl", "must be at most 24h: a fault that outlives a working day is an outage");
            d.max_ttl
        }
        Some(Dur(t)) => t,
        None => d.max_ttl,
    };
    let max_faults = match raw.max_faults {
        Some(0) => {
            c.error_at("max_faults", "must be at least 1 (set enabled: false to turn chaos off)");
            d.max_faults
        }
        Some(n) if n > 10_000 => {
            c.error_at("max_faults", "must be at most 10000");
            d.max_faults
        }
        Some(n) => n,
        None => d.max_faults,
    };
    ChaosConfig { enabled: raw.enabled, max_ttl, max_faults }
}
