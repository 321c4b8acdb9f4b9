//! What a fault is: the wire and YAML form ([`FaultSpec`]) and its validation against the
//! running config.
//!
//! The same struct is posted to `POST /chaos/faults` and written in drill scenarios, so a fault
//! means the same thing in both places. Targets are a cluster, optionally narrowed to one route
//! and/or one endpoint address; a fault fires on `percent` of matching attempts.
//!
//! ```yaml
//! { cluster: payment, fault: { delay: { fixed: 200ms } }, percent: 50%, ttl: 60s }
//! { cluster: payment, endpoint: 10.0.0.7:8080, fault: { abort: { status: 503 } }, ttl: 30s }
//! { cluster: auth, route: auth, fault: reset, ttl: 30s }
//! ```

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::config::ChaosConfig;
use crate::config::{Config, Dur, Percent, Size};

/// One fault as requested.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Optional name (letters, digits, `-`, `_`); generated when absent. Reusing the name of an
    /// active fault replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The cluster whose upstream attempts are affected.
    pub cluster: String,
    /// Only attempts made for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Only attempts sent to this endpoint (`host:port` as in the cluster's config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// What happens to an affected attempt.
    #[serde(deserialize_with = "via_json")]
    pub fault: FaultKind,
    /// Share of matching attempts affected. Default 100%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Percent>,
    /// The fault removes itself after this long, whatever happens to whoever created it.
    pub ttl: Dur,
}

/// Deserializes through a JSON value, so externally tagged enums read the same from YAML
/// (`{ delay: { fixed: 1s } }`, `reset`) as from JSON; serde_yaml alone wants `!delay` tags.
pub fn via_json<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    serde_json::from_value(v).map_err(serde::de::Error::custom)
}

/// What an affected attempt experiences. Each looks to the layers above exactly like the real
/// upstream failure it imitates.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// Wait before sending (then send normally): a slow network or a slow backend.
    Delay(DelaySpec),
    /// Answer with this status instead of the upstream (the request never reaches it).
    Abort { status: u16 },
    /// The connection breaks before an answer: `upstream_reset`, an ambiguous outcome.
    Reset,
    /// Send the request, let the upstream process it, then lose the answer (`upstream_reset`).
    /// The outcome the idempotency machinery exists for.
    ResetAfterSend,
    /// The connection is refused (`upstream_connect_failed`; nothing was sent).
    Refuse,
    /// Never answer; only the timeouts above end the attempt.
    Blackhole,
    /// Stream the response body at most this many bytes per second.
    Bandwidth { rate: Size },
}

/// How long a delay lasts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DelaySpec {
    Fixed(Dur),
    /// Uniformly between `min` and `max`.
    Uniform {
        min: Dur,
        max: Dur,
    },
    /// Log-normal with this median and 99th percentile: the long tail real backends have.
    Lognormal {
        median: Dur,
        p99: Dur,
    },
}

impl FaultKind {
    /// Bounded label for metrics and reports.
    pub fn label(&self) -> &'static str {
        match self {
            FaultKind::Delay(_) => "delay",
            FaultKind::Abort { .. } => "abort",
            FaultKind::Reset => "reset",
            FaultKind::ResetAfterSend => "reset_after_send",
            FaultKind::Refuse => "refuse",
            FaultKind::Blackhole => "blackhole",
            FaultKind::Bandwidth { .. } => "bandwidth",
        }
    }
}

/// The longest single injected delay; longer "delays" are blackholes and should say so.
pub const MAX_DELAY: Duration = Duration::from_secs(600);

/// Checks a spec against the config in force. Returns every problem, each naming its field.
pub fn validate(spec: &FaultSpec, config: &Config) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    check_limits(spec, &config.chaos, &mut errors);
    if let Some(id) = &spec.id {
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            errors.push("id: 1 to 64 letters, digits, '-' or '_'".to_string());
        }
    }
    match config.clusters.get(&spec.cluster) {
        None => {
            let known: Vec<&str> = config.clusters.keys().map(String::as_str).collect();
            errors.push(format!("cluster: no cluster named {:?} (known: {})", spec.cluster, known.join(", ")));
        }
        Some(cluster) => {
            if let Some(ep) = &spec.endpoint {
                if !cluster.endpoints.iter().any(|e| &e.address == ep) {
                    errors.push(format!("endpoint: {ep:?} is not an endpoint of cluster {}", spec.cluster));
                }
            }
        }
    }
    if let Some(route) = &spec.route {
        match config.routes.iter().find(|r| &r.name == route) {
            None => errors.push(format!("route: no route named {route:?}")),
            Some(r) if r.cluster != spec.cluster => {
                errors.push(format!("route: route {route:?} goes to cluster {}, not {}", r.cluster, spec.cluster))
            }
            Some(_) => {}
        }
    }
    check_kind(&spec.fault, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn check_limits(spec: &FaultSpec, chaos: &ChaosConfig, errors: &mut Vec<String>) {
    if spec.ttl.0.is_zero() {
        errors.push("ttl: must be greater than 0".into());
    } else if spec.ttl.0 > chaos.max_ttl {
        errors.push(format!("ttl: {} is longer than chaos.max_ttl ({})", spec.ttl, Dur(chaos.max_ttl)));
    }
}

/// Checks the parts of a fault that do not depend on the config.
pub fn check_kind(kind: &FaultKind, errors: &mut Vec<String>) {
    match kind {
        FaultKind::Abort { status } if !(200..=599).contains(status) => {
            errors.push(format!("fault.abort.status: {status} is not an HTTP status between 200 and 599"))
        }
        FaultKind::Bandwidth { rate } if rate.0 == 0 => {
            errors.push("fault.bandwidth.rate: must be at least 1 byte per second (use blackhole)".into())
        }
        FaultKind::Delay(d) => match d {
            DelaySpec::Fixed(t) if t.0 > MAX_DELAY => {
                errors.push(format!("fault.delay.fixed: at most {}", Dur(MAX_DELAY)))
            }
            DelaySpec::Uniform { min, max } if min > max => {
                errors.push("fault.delay.uniform: min must not exceed max".into())
            }
            DelaySpec::Uniform { max, .. } if max.0 > MAX_DELAY => {
                errors.push(format!("fault.delay.uniform.max: at most {}", Dur(MAX_DELAY)))
            }
            DelaySpec::Lognormal { median, p99 } if median.0.is_zero() || p99 < median => {
                errors.push("fault.delay.lognormal: median must be > 0 and p99 >= median".into())
            }
            DelaySpec::Lognormal { p99, .. } if p99.0 > MAX_DELAY => {
                errors.push(format!("fault.delay.lognormal.p99: at most {}", Dur(MAX_DELAY)))
            }
            _ => {}
        },
        _ => {}
    }
}

impl DelaySpec {
    /// Draws one delay. `u` and `z` are a uniform [0,1) and a standard normal draw, passed in so
    /// the distribution is testable without a random generator.
    pub fn sample(&self, u: f64, z: f64) -> Duration {
        let d = match self {
            DelaySpec::Fixed(t) => t.0,
            DelaySpec::Uniform { min, max } => min.0 + (max.0 - min.0).mul_f64(u.clamp(0.0, 1.0)),
            DelaySpec::Lognormal { median, p99 } => {
                // ln(X) ~ N(mu, sigma): median = e^mu, p99 = e^(mu + 2.326 sigma).
                let mu = median.0.as_secs_f64().ln();
                let sigma = ((p99.0.as_secs_f64() / median.0.as_secs_f64()).ln() / 2.326).max(0.0);
                Duration::try_from_secs_f64((mu + sigma * z).exp()).unwrap_or(MAX_DELAY)
            }
        };
        d.min(MAX_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<FaultSpec, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    #[test]
    fn yaml_and_json_forms() {
        let s = parse("{ cluster: payment, fault: { delay: { fixed: 200ms } }, percent: 50%, ttl: 60s }").unwrap();
        assert_eq!(s.fault, FaultKind::Delay(DelaySpec::Fixed(Dur(Duration::from_millis(200)))));
        assert_eq!(s.percent, Some(Percent(5000)));
        let s = parse("{ cluster: auth, fault: reset, ttl: 1s }").unwrap();
        assert_eq!(s.fault, FaultKind::Reset);
        let s: FaultSpec =
            serde_json::from_str(r#"{"cluster":"c","fault":{"abort":{"status":503}},"ttl":"5s"}"#).unwrap();
        assert_eq!(s.fault, FaultKind::Abort { status: 503 });
        assert!(parse("{ cluster: c, fault: reset, ttl: 1s, typo: 1 }").is_err());
        assert!(parse("{ cluster: c, fault: { delay: { fixd: 1s } }, ttl: 1s }").is_err());
        assert!(parse("{ cluster: c, fault: reset }").is_err(), "ttl is required");
    }

    #[test]
    fn kind_checks() {
        let mut e = Vec::new();
        check_kind(&FaultKind::Abort { status: 42 }, &mut e);
        check_kind(&FaultKind::Bandwidth { rate: Size(0) }, &mut e);
        let (a, b) = (Dur(Duration::from_secs(2)), Dur(Duration::from_secs(1)));
        check_kind(&FaultKind::Delay(DelaySpec::Uniform { min: a, max: b }), &mut e);
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn lognormal_median_and_tail() {
        let d = DelaySpec::Lognormal { median: Dur(Duration::from_millis(50)), p99: Dur(Duration::from_millis(500)) };
        let median = d.sample(0.0, 0.0).as_secs_f64();
        assert!((median - 0.05).abs() < 1e-6);
        let p99 = d.sample(0.0, 2.326).as_secs_f64();
        assert!((p99 - 0.5).abs() < 1e-3, "{p99}");
        let u = DelaySpec::Uniform { min: Dur(Duration::from_millis(10)), max: Dur(Duration::from_millis(20)) };
        assert_eq!(u.sample(0.5, 0.0), Duration::from_millis(15));
    }
}
