//! The upstream policy keys of a cluster as written: `health_check`, `outlier`, `failover`,
//! `load_balancer` and `dns_refresh`. Strict (`deny_unknown_fields`); [`super::check`] turns them
//! into [`super::UpstreamPolicy`]. Field docs become the JSON Schema descriptions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{Dur, Percent};

/// Active health checking of every endpoint of the cluster.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// `http` (default): a request whose status and body are checked; `tcp`: a connect is a pass.
    #[serde(default)]
    pub protocol: Option<String>,
    /// HTTP method of the check. Default GET.
    #[serde(default)]
    pub method: Option<String>,
    /// Path of the check. Default `/healthz`.
    #[serde(default)]
    pub path: Option<String>,
    /// `Host` header of the check. Default: the endpoint address.
    #[serde(default)]
    pub host: Option<String>,
    /// Statuses that pass, as codes or ranges: `[200, "200-299"]`. Default `["200-299"]`.
    #[serde(default)]
    pub expected_statuses: Option<Vec<RawStatus>>,
    /// The response body must contain this text. Default: the body is not checked.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// Keep the check's connection open and send the next check on it (Envoy's default), so
    /// a fleet of sidecars does not open a connection per endpoint per interval. A failed or
    /// timed-out check closes it, so the next check connects afresh; so does a backend that
    /// closes it between checks. `false`: a new connection per check (`Connection: close`),
    /// which also proves the endpoint still accepts connections. Default true.
    #[serde(default)]
    pub reuse_connection: Option<bool>,
    /// Time between checks of a stable endpoint. Default 2s.
    #[serde(default)]
    pub interval: Option<Dur>,
    /// Random extra delay added to every interval, as a share of it, so checks of many sidecars
    /// spread out. Default 10%.
    #[serde(default)]
    pub jitter: Option<Percent>,
    /// Time between checks while an endpoint is changing state (a check failed on a healthy
    /// endpoint, or passed on an unhealthy one) or is ejected. Default: interval / 4.
    #[serde(default)]
    pub transition_interval: Option<Dur>,
    /// A check that takes longer fails. Default 1s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Consecutive passes that make an unhealthy endpoint healthy. Default 2.
    #[serde(default)]
    pub healthy: Option<u32>,
    /// Consecutive failures that make a healthy endpoint unhealthy. Default 3.
    #[serde(default)]
    pub unhealthy: Option<u32>,
    /// State of an endpoint before its first check: `healthy` (default, take traffic at once) or
    /// `wait_first_check` (no traffic until one check passed).
    #[serde(default)]
    pub startup: Option<String>,
}

/// A status code (`200`) or an inclusive range (`"200-299"`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawStatus {
    Code(u16),
    Range(String),
}

/// Passive outlier detection: endpoints are ejected on what real requests experience.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Turn passive detection off. Default true (failover without ejection never moves traffic).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Eject after this many failures in a row (5xx, reset, timeout, connect failure); 0 disables.
    /// Default 5.
    #[serde(default)]
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many connect failures, resets, timeouts or 502/503/504 in a row; 0
    /// disables. Default 3.
    #[serde(default)]
    pub consecutive_gateway_failures: Option<u32>,
    /// Eject when the failure share over `failure_window` reaches this (with at least
    /// `failure_min_requests` requests). Looked at within a second of the first failure in a
    /// calm window, then every 100 ms while the window holds failures. Default: off.
    #[serde(default)]
    pub failure_percentage: Option<Percent>,
    /// Window of `failure_percentage` and of the recent success rate. Default 10s.
    #[serde(default)]
    pub failure_window: Option<Dur>,
    /// Requests needed in the window before `failure_percentage` applies. Default 20.
    #[serde(default)]
    pub failure_min_requests: Option<u32>,
    /// First ejection lasts this long; the n-th lasts n times as long. Default 10s.
    #[serde(default)]
    pub base_ejection: Option<Dur>,
    /// Ejections never last longer than this (plus jitter). Default 300s.
    #[serde(default)]
    pub max_ejection: Option<Dur>,
    /// Random extra ejection time, so many sidecars do not return an endpoint at the same instant.
    /// Default 1s.
    #[serde(default)]
    pub ejection_jitter: Option<Dur>,
    /// At most this share of the cluster's endpoints is ejected at once (at least one when above
    /// 0%). 0% detects and logs but never ejects. Default 50%.
    #[serde(default)]
    pub max_ejected_percent: Option<Percent>,
}

/// How traffic moves between priorities (0 = primary site, 1 = DR, ...).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    /// A priority with this share of healthy weight times this factor takes all of its traffic
    /// (Envoy's overprovisioning factor). Default 1.4.
    #[serde(default)]
    pub overprovisioning: Option<f64>,
    /// When no endpoint of any priority is usable: `true` spreads traffic over all endpoints
    /// anyway (panic mode); `false` (default) fails fast with `no_healthy_endpoint`.
    #[serde(default)]
    pub panic: Option<bool>,
    /// A recovered endpoint (active checks passing again) must stay healthy this long before it
    /// takes traffic again. Default 10s.
    #[serde(default)]
    pub failback_hold: Option<Dur>,
    /// Then its share ramps up linearly over this long instead of jumping to 100%. Also applies
    /// after an outlier ejection ends. 0s disables. Default 30s.
    #[serde(default)]
    pub slow_start: Option<Dur>,
}
