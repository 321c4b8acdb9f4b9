//! Configuration: strict YAML in, validated domain types out.
//!
//! Loading is two steps. [`raw`] deserializes with `deny_unknown_fields`, so a typo is an error
//! rather than a silently ignored key (pingora's trap). [`validate`] then checks meaning (routes
//! point at existing clusters, timeouts are positive, auth never gets offline grace) and builds
//! [`Config`]. Every error names the file, the line and column, and the key path.

pub mod locate;
pub mod raw;
pub mod strict;
pub mod units;
mod validate;
pub use strict::Checker;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use units::{Dur, Percent, Rate, Size};

/// A fully validated configuration. Cheap to share (`Arc`), never mutated after load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin: AdminConfig,
    pub limits: LimitsConfig,
    pub shutdown: ShutdownConfig,
    pub access_log: bool,
    pub clusters: BTreeMap<String, ClusterConfig>,
    pub routes: Vec<RouteConfig>,
    pub grace: BTreeMap<String, crate::grace::config::GracePolicy>,
    pub chaos: crate::chaos::config::ChaosConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitsConfig {
    pub max_header_bytes: usize,
    pub max_body: u64,
    #[serde(serialize_with = "ser_dur")]
    pub client_head_timeout: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub client_idle_timeout: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub client_send_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShutdownConfig {
    #[serde(serialize_with = "ser_dur")]
    pub drain_delay: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub grace_period: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    #[serde(serialize_with = "ser_dur")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub timeout: Duration,
    pub max_idle_per_endpoint: usize,
    #[serde(serialize_with = "ser_dur")]
    pub idle_timeout: Duration,
    pub role: crate::grace::config::ClusterRole,
    /// Health checks, outlier detection, failover and load balancing (`src/upstream/config`).
    #[serde(flatten)]
    pub policy: crate::upstream::config::UpstreamPolicy,
    pub resilience: crate::resilience::ResilienceConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct EndpointConfig {
    /// `host:port` as written.
    pub address: String,
    pub priority: u32,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: MatchConfig,
    pub cluster: String,
    #[serde(serialize_with = "ser_dur")]
    pub timeout: Duration,
    pub max_body: u64,
    /// Name of the grace policy, when the route has offline grace.
    pub grace: Option<String>,
    /// The route's own resilience blocks (`None` fields inherit the cluster's).
    pub resilience: crate::resilience::ResilienceConfig,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct MatchConfig {
    /// Lower-cased host without port.
    pub host: Option<String>,
    #[serde(serialize_with = "ser_method")]
    pub method: Option<http::Method>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    Dur(*d).serialize(s)
}

fn ser_method<S: serde::Serializer>(m: &Option<http::Method>, s: S) -> Result<S::Ok, S::Error> {
    m.as_ref().map(|m| m.as_str()).serialize(s)
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Key path such as `clusters.payment.endpoints[1].address`; empty for the document itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if self.path.is_empty() {
            write!(f, " {}", self.message)
        } else {
            write!(f, " {}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config file (validation does not stop at the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: name.clone(),
                line: None,
                column: None,
                path: String::new(),
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        Config::from_yaml(&name, &text)
    }

    /// Validates config text; `file` is only used in error messages.
    pub fn from_yaml(file: &str, text: &str) -> Result<Config, ConfigErrors> {
        validate::from_yaml(file, text)
    }

    /// The config Lifeline runs with when no file is given: the three simulated services of
    /// `lifeline demo` on their fixed local ports.
    pub fn embedded_default() -> &'static str {
        include_str!("../../config/lifeline.yaml")
    }
}

/// JSON Schema of the config file, for editors and CI.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(raw::RawConfig);
    serde_json::to_value(schema).unwrap_or(serde_json::Value::Null)
}
