//! The config file as written: serde structs that reject unknown keys.
//!
//! Nothing here is trusted. [`super::validate`] turns a `RawConfig` into a [`super::Config`]
//! whose types cannot hold an invalid value. Field docs become the JSON Schema descriptions that
//! `lifeline config-schema` prints, so write them for the operator.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::{Dur, Size};

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address the proxy listens on for the application's traffic (HTTP/1.1 and h2c).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The admin API (health, metrics, config, operator actions).
    #[serde(default)]
    pub admin: RawAdmin,
    /// Request size limits applied before routing.
    #[serde(default)]
    pub limits: RawLimits,
    /// What happens on SIGTERM.
    #[serde(default)]
    pub shutdown: RawShutdown,
    /// Logging switches.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// Named groups of upstream endpoints.
    pub clusters: BTreeMap<String, RawCluster>,
    /// Routes, tried in order; the first match wins.
    pub routes: Vec<RawRoute>,
    /// Offline grace policies for settlement routes (see `grace:` on a route).
    #[serde(default)]
    pub grace: BTreeMap<String, crate::grace::config::RawGracePolicy>,
    /// Fault injection for drills (off unless enabled).
    #[serde(default)]
    pub chaos: crate::chaos::config::RawChaos,
}

fn default_listen() -> String {
    "127.0.0.1:15001".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address of the admin API. Keep it on loopback or a pod-internal port.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// File holding the bearer token that operator actions require. Without it, every
    /// state-changing admin endpoint answers 403.
    #[serde(default)]
    pub token_file: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin { listen: default_admin_listen(), token_file: None }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:15000".into()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Total size of request headers; larger requests get 431. Default 32KiB.
    #[serde(default)]
    pub max_header_bytes: Option<Size>,
    /// Default request body limit for routes that do not set `max_body`; larger bodies get 413.
    /// Default 10MiB.
    #[serde(default)]
    pub max_body: Option<Size>,
    /// A caller's request head must arrive whole within this of its first byte (or of the
    /// connection's accept); else 408 and the connection closes. Default 30s.
    #[serde(default)]
    pub client_head_timeout: Option<Dur>,
    /// A caller's connection with no request for this long (up to twice as long) is closed
    /// (h2c: GOAWAY). Default 1h.
    #[serde(default)]
    pub client_idle_timeout: Option<Dur>,
    /// A caller that takes none of its answer for this long is cut off, which lets the answer's
    /// upstream go (nginx's `send_timeout`); over h2c, a stream left without flow-control
    /// window this long is reset with CANCEL. Default 60s.
    #[serde(default)]
    pub client_send_timeout: Option<Dur>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// One log line per request (route, cluster, status, duration, request id; never bodies).
    /// Default true.
    #[serde(default)]
    pub access_log: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    /// After SIGTERM, keep accepting for this long so endpoint controllers see /ready fail.
    /// Default 5s.
    #[serde(default)]
    pub drain_delay: Option<Dur>,
    /// Then wait at most this long for in-flight requests. Default 30s.
    #[serde(default)]
    pub grace_period: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Upstream endpoints of this cluster.
    pub endpoints: Vec<RawEndpoint>,
    /// TCP connect timeout per attempt. Default 1s.
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
    /// Default overall timeout of requests to this cluster (routes may override). Default 15s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Idle keep-alive connections kept per endpoint. Default 64.
    #[serde(default)]
    pub max_idle_per_endpoint: Option<usize>,
    /// Idle connections are closed after this long. Default 90s.
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    /// What this cluster serves: auth, payment, card or other. Default from the name (`auth` in
    /// the name means auth). Routes to an auth cluster can never use offline grace.
    #[serde(default)]
    pub role: Option<crate::grace::config::ClusterRole>,
    /// Active health checks of every endpoint. Default: none (passive detection only).
    #[serde(default)]
    pub health_check: Option<crate::upstream::config::raw::RawHealthCheck>,
    /// Passive outlier detection (ejection on real traffic). Default: on.
    #[serde(default)]
    pub outlier: Option<crate::upstream::config::raw::RawOutlier>,
    /// Failover across priorities and failback.
    #[serde(default)]
    pub failover: Option<crate::upstream::config::raw::RawFailover>,
    /// `least_request` (default, power of two choices) or `round_robin`.
    #[serde(default)]
    pub load_balancer: Option<String>,
    /// DNS names in endpoint addresses are re-resolved this often. Default 5s.
    #[serde(default)]
    pub dns_refresh: Option<Dur>,
    /// Circuit breaker shared by the cluster's routes.
    #[serde(default)]
    pub breaker: Option<crate::resilience::breaker::config::RawBreaker>,
    /// Retries (with a budget) for the cluster's routes.
    #[serde(default)]
    pub retry: Option<crate::resilience::retry::config::RawRetry>,
    /// Bulkhead: in-flight cap and bounded pending queue, shared by the cluster's routes.
    #[serde(default)]
    pub concurrency: Option<crate::resilience::limit::RawLimit>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    /// `host:port` (IP address or DNS name).
    pub address: String,
    /// 0 is the primary site, 1 the disaster-recovery site, and so on. Default 0.
    #[serde(default)]
    pub priority: u32,
    /// Relative share inside its priority. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Name used in metrics and logs. Default `<cluster>-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// What the request must look like. An empty match matches everything.
    #[serde(default, rename = "match")]
    pub matcher: RawMatch,
    /// The cluster that serves this route.
    pub cluster: String,
    /// Overall timeout for this route, covering retries. Default: the cluster's `timeout`.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Largest request body accepted on this route. Default: `limits.max_body`.
    #[serde(default)]
    pub max_body: Option<Size>,
    /// Offline grace policy (a key of `grace:`) for settlement routes. Never on auth routes.
    #[serde(default)]
    pub grace: Option<String>,
    /// This route's own circuit breaker (replaces the cluster's for this route).
    #[serde(default)]
    pub breaker: Option<crate::resilience::breaker::config::RawBreaker>,
    /// This route's own retry policy and budget (replaces the cluster's).
    #[serde(default)]
    pub retry: Option<crate::resilience::retry::config::RawRetry>,
    /// This route's own bulkhead (replaces the cluster's).
    #[serde(default)]
    pub concurrency: Option<crate::resilience::limit::RawLimit>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Exact `Host` (or `:authority`) without port, case-insensitive.
    #[serde(default)]
    pub host: Option<String>,
    /// HTTP method, e.g. POST.
    #[serde(default)]
    pub method: Option<String>,
    /// Exact path (query string excluded).
    #[serde(default)]
    pub path: Option<String>,
    /// Path prefix, e.g. `/auth/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
}
