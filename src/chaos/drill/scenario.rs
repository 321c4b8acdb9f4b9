//! The drill scenario file as written: serde structs that reject unknown keys.
//!
//! One YAML file per drill under `chaos/`. The shape is a simplified version of the format
//! proposed in `shared/research/chaos-k8s.md` A5 (Chaos Toolkit's hypothesis / method /
//! rollback, Chaos Mesh's timed faults, FIS stop conditions); `chaos/README.md` documents every
//! key and lists what was left out. Nothing here is trusted: [`super::validate`] checks meaning
//! and builds the [`super::plan::Drill`] the runner executes.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::chaos::fault::FaultSpec;
use crate::config::{Dur, Rate};

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    /// Short name: letters, digits, `-`; names the report directory.
    pub name: String,
    /// One line for humans.
    pub title: String,
    /// What continuity property this drill proves, and how.
    #[serde(default)]
    pub proves: Option<String>,
    /// Sidecar features the drill needs (`breaker`, `retry`, `failover`, `grace`). A build
    /// without one refuses the scenario with a clear error instead of a confusing config error.
    #[serde(default)]
    pub requires: Vec<String>,
    /// Start everything locally (simulators, sidecar, fault proxies as child processes).
    #[serde(default)]
    pub local: Option<RawLocal>,
    /// Target a running sidecar (staging, Kubernetes).
    #[serde(default)]
    pub remote: Option<RawRemote>,
    /// What the load looks like (the rate is per phase).
    #[serde(default)]
    pub load: RawLoad,
    /// Named time windows in order; the load runs through all of them.
    pub phases: Vec<RawPhase>,
    /// The fault timeline.
    #[serde(default)]
    pub faults: Vec<RawFault>,
    /// Steady-state hypotheses, checked before, during and after the faults.
    pub hypotheses: Vec<RawHypothesis>,
    /// Stop conditions.
    #[serde(default)]
    pub abort: RawAbort,
    /// After the load: how long to wait for the grace queue to drain before reconciling.
    #[serde(default)]
    pub drain_timeout: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLocal {
    /// Simulated backends by name, each a `lifeline sim` child process.
    #[serde(default)]
    pub sims: BTreeMap<String, RawSim>,
    /// Fault proxies by name, each a `lifeline chaos proxy` child process in front of a sim.
    #[serde(default)]
    pub proxies: BTreeMap<String, RawLocalProxy>,
    /// The sidecar's config, with `${...}` placeholders the runner fills in (see README).
    pub sidecar: RawSidecar,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSim {
    /// `auth`, `payment` or `card`.
    pub service: String,
    /// Initial fault mode (`healthy`, `slow:200ms`, `errors:30%:503`, `hang`, `flap:2s`, `down`).
    #[serde(default)]
    pub mode: Option<String>,
    /// Base latency in healthy mode, e.g. `p50=3ms,p99=25ms`.
    #[serde(default)]
    pub latency: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLocalProxy {
    /// The sim this proxy forwards to.
    pub upstream: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSidecar {
    /// The config text, with placeholders.
    pub config: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRemote {
    /// Base URL the load is sent to (the sidecar's listener), e.g. `http://10.0.3.7:15001`.
    pub proxy_url: String,
    /// Base URL of the sidecar's admin API.
    pub admin_url: String,
    /// File with the admin bearer token (needed for sidecar faults and reloads).
    #[serde(default)]
    pub token_file: Option<String>,
    /// Payment ledgers to reconcile against (`.../sim/ledger` of each payment simulator).
    #[serde(default)]
    pub ledgers: Vec<String>,
    /// Fault proxy APIs by name.
    #[serde(default)]
    pub proxies: BTreeMap<String, String>,
    /// Simulator control URLs by name (for `sim` faults).
    #[serde(default)]
    pub sims: BTreeMap<String, String>,
    /// Allow-list: the runner refuses to start unless `LIFELINE_DRILL_ENV` is one of these.
    #[serde(default)]
    pub environments: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLoad {
    /// Relative weights of auth verify, settlement and card query. Default 20/60/20.
    #[serde(default)]
    pub mix: Option<RawMix>,
    /// Number of distinct cards. Default 2000.
    #[serde(default)]
    pub cards: Option<u32>,
    /// Per-request client timeout. Default 5s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Client connections. Default 32.
    #[serde(default)]
    pub connections: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMix {
    pub auth: u32,
    pub settle: u32,
    pub card: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPhase {
    pub name: String,
    /// Length of the phase in a full drill.
    pub duration: Dur,
    /// Length with `--short` (CI). Default: a fifth of `duration`, at least 2s.
    #[serde(default)]
    pub short: Option<Dur>,
    /// Constant arrival rate during the phase, e.g. `200/s`.
    pub rate: Rate,
    /// Rate with `--short`. Default: `rate`.
    #[serde(default)]
    pub short_rate: Option<Rate>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    pub id: String,
    /// When: `<phase>` (its start) or `<phase>+<offset>` with a duration (`+5s`) or a share of
    /// the phase (`+50%`).
    pub at: String,
    /// Until (same syntax); or give `duration`. Process kills without either are not restarted.
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub duration: Option<Dur>,
    /// Fire only once this holds (checked every sample), or abort after its timeout.
    #[serde(default)]
    pub when: Option<RawWhen>,
    /// A fault in the sidecar (the `/chaos/faults` body without `ttl`).
    #[serde(default)]
    pub sidecar: Option<RawSidecarFault>,
    /// A toxic or a partition in a fault proxy.
    #[serde(default)]
    pub proxy: Option<RawProxyFault>,
    /// A signal to a local process: a sim or the sidecar.
    #[serde(default)]
    pub process: Option<RawProcessFault>,
    /// A fault mode of a simulator (`POST /sim/mode`).
    #[serde(default)]
    pub sim: Option<RawSimFault>,
    /// Replace the sidecar config (placeholders allowed) and reload it.
    #[serde(default)]
    pub reload: Option<RawSidecar>,
}

/// `FaultSpec` without the TTL, which the timeline sets.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSidecarFault {
    pub cluster: String,
    #[serde(default)]
    pub route: Option<String>,
    /// Endpoint `host:port`, or `${sim.NAME}` / `${proxy.NAME}` in local mode.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(deserialize_with = "crate::chaos::fault::via_json")]
    pub fault: crate::chaos::fault::FaultKind,
    #[serde(default)]
    pub percent: Option<crate::config::Percent>,
}

impl RawSidecarFault {
    pub fn spec(&self, id: &str, ttl: Dur, endpoint: Option<String>) -> FaultSpec {
        FaultSpec {
            id: Some(id.to_string()),
            cluster: self.cluster.clone(),
            route: self.route.clone(),
            endpoint,
            fault: self.fault.clone(),
            percent: self.percent,
            ttl,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProxyFault {
    /// The proxy's name.
    pub target: String,
    /// A toxic (as `POST /toxics`, without `ttl` and `name`).
    #[serde(default, deserialize_with = "opt_via_json")]
    pub toxic: Option<crate::chaos::proxy::toxic::ToxicKind>,
    #[serde(default)]
    pub stream: Option<crate::chaos::proxy::toxic::Stream>,
    #[serde(default)]
    pub toxicity: Option<f64>,
    /// Cut the link: refuse new connections, reset open ones.
    #[serde(default)]
    pub partition: bool,
}

fn opt_via_json<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    crate::chaos::fault::via_json(d).map(Some)
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProcessFault {
    /// `sidecar` or a sim's name.
    pub target: String,
    /// `SIGKILL`, `SIGTERM` or `SIGSTOP` (continued with SIGCONT at the fault's end).
    pub signal: String,
    /// Restart a killed process this long after the signal. Default: at the fault's end.
    #[serde(default)]
    pub restart_after: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSimFault {
    pub target: String,
    /// The mode, e.g. `down`, `errors:50%:503`, `flap:2s`.
    pub mode: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    /// Fire once the sidecar's grace queue holds at least this many settlements.
    pub grace_depth_at_least: u64,
    /// Give up (abort the drill) if it has not held by then. Default 30s.
    #[serde(default)]
    pub timeout: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHypothesis {
    pub id: String,
    /// What is measured; see README for each kind.
    pub kind: String,
    /// Phases whose span is checked (default: all). `before`-style checks name the early phases.
    #[serde(default)]
    pub phases: Option<Vec<String>>,
    /// Skip this much of the window's start (settling time), a duration or a share (`20%`).
    #[serde(default)]
    pub skip: Option<String>,
    /// Which requests: `all` (default), `settle`.
    #[serde(default)]
    pub ops: Option<String>,
    /// The pass condition, e.g. `>= 99.5%`, `<= 800ms`, `== 0`.
    #[serde(default)]
    pub tolerance: Option<String>,
    /// For `latency`: the percentile (default 99).
    #[serde(default)]
    pub percentile: Option<f64>,
    /// For `breaker`, `priority`, `failover_time`: the cluster.
    #[serde(default)]
    pub cluster: Option<String>,
    /// For `breaker`: the state that must be seen (`open`).
    #[serde(default)]
    pub state: Option<String>,
    /// For `failover_time`: the fault whose start the clock starts at.
    #[serde(default)]
    pub fault: Option<String>,
    /// Also evaluate every second over a sliding window; failing `failures` times in a row fails
    /// the hypothesis (and aborts the drill when `abort: true`).
    #[serde(default)]
    pub continuous: Option<RawContinuous>,
    /// Weight in the resilience score. Default 1.
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawContinuous {
    /// Sliding window. Default 5s.
    #[serde(default)]
    pub window: Option<Dur>,
    /// Consecutive failing evaluations that fail it. Default 3.
    #[serde(default)]
    pub failures: Option<u32>,
    /// Abort the drill when it fails (a hypothesis failing badly).
    #[serde(default)]
    pub abort: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAbort {
    /// Abort when this file exists (default `<report dir>/STOP`).
    #[serde(default)]
    pub kill_switch: Option<String>,
    /// Abort a drill that runs longer than this (default: planned length × 2 + 2m).
    #[serde(default)]
    pub max_duration: Option<Dur>,
}
