//! A validated drill: every time resolved (for a full or a `--short` run), every name checked.
//! The runner executes this and never re-checks anything.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::scenario::RawSidecarFault;
use super::tolerance::Tolerance;
use crate::chaos::proxy::toxic::{Stream, ToxicKind};

#[derive(Debug, Clone)]
pub struct Drill {
    pub name: String,
    pub title: String,
    pub proves: String,
    pub target: Target,
    pub load: LoadPlan,
    pub phases: Vec<Phase>,
    pub faults: Vec<Fault>,
    pub hypotheses: Vec<Hypothesis>,
    pub kill_switch: Option<PathBuf>,
    pub max_duration: Duration,
    pub drain_timeout: Duration,
    pub short: bool,
}

impl Drill {
    /// Length of the load (all phases).
    pub fn length(&self) -> Duration {
        self.phases.last().map(|p| p.start + p.duration).unwrap_or_default()
    }

    pub fn phase_at(&self, t: Duration) -> Option<&Phase> {
        self.phases.iter().find(|p| t >= p.start && t < p.start + p.duration)
    }
}

#[derive(Debug, Clone)]
pub enum Target {
    Local(Local),
    Remote(Remote),
}

#[derive(Debug, Clone)]
pub struct Local {
    pub sims: Vec<SimDef>,
    pub proxies: Vec<ProxyDef>,
    /// The sidecar config with `${...}` placeholders.
    pub config: String,
}

#[derive(Debug, Clone)]
pub struct SimDef {
    pub name: String,
    /// `auth`, `payment` or `card`.
    pub service: String,
    pub mode: Option<String>,
    pub latency: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ProxyDef {
    pub name: String,
    pub upstream: String,
}

#[derive(Debug, Clone)]
pub struct Remote {
    pub proxy_url: String,
    pub admin_url: String,
    pub token_file: Option<PathBuf>,
    pub ledgers: Vec<String>,
    pub proxies: BTreeMap<String, String>,
    pub sims: BTreeMap<String, String>,
    pub environments: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// auth verify, settlement, card query.
    pub weights: [u32; 3],
    pub cards: u32,
    pub timeout: Duration,
    pub connections: usize,
}

#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub start: Duration,
    pub duration: Duration,
    pub rate: f64,
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub id: String,
    pub start: Duration,
    pub end: Option<Duration>,
    pub when: Option<When>,
    pub action: Action,
}

#[derive(Debug, Clone, Copy)]
pub struct When {
    pub grace_depth: u64,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Kill,
    Term,
    Stop,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Kill => "SIGKILL",
            Signal::Term => "SIGTERM",
            Signal::Stop => "SIGSTOP",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    Sidecar(RawSidecarFault),
    Proxy { target: String, toxic: Option<ToxicKind>, stream: Stream, toxicity: f64 },
    Partition { target: String },
    Process { target: String, signal: Signal, restart_after: Option<Duration> },
    Sim { target: String, mode: String },
    Reload { config: String },
}

impl Action {
    pub fn label(&self) -> String {
        match self {
            Action::Sidecar(f) => format!("sidecar {} on {}", f.fault.label(), f.cluster),
            Action::Proxy { target, toxic, .. } => {
                format!("proxy {target}: {}", toxic.as_ref().map(|t| t.label()).unwrap_or("toxic"))
            }
            Action::Partition { target } => format!("proxy {target}: partition"),
            Action::Process { target, signal, .. } => format!("{} {target}", signal.name()),
            Action::Sim { target, mode } => format!("sim {target}: {mode}"),
            Action::Reload { .. } => "config reload".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Availability,
    Latency,
    FailoverTime,
    Breaker,
    Priority,
    Failovers,
    GraceQueued,
    GraceDrained,
    Lost,
    Duplicated,
    AuthNeverFailsOpen,
    Amplification,
}

impl Kind {
    pub const ALL: &'static [(&'static str, Kind)] = &[
        ("availability", Kind::Availability),
        ("latency", Kind::Latency),
        ("failover_time", Kind::FailoverTime),
        ("breaker", Kind::Breaker),
        ("priority", Kind::Priority),
        ("failovers", Kind::Failovers),
        ("grace_queued", Kind::GraceQueued),
        ("grace_drained", Kind::GraceDrained),
        ("lost", Kind::Lost),
        ("duplicated", Kind::Duplicated),
        ("auth_never_fails_open", Kind::AuthNeverFailsOpen),
        ("amplification", Kind::Amplification),
    ];

    pub fn name(self) -> &'static str {
        Kind::ALL.iter().find(|(_, k)| *k == self).map(|(n, _)| *n).unwrap_or("?")
    }

    /// Checked after the run (reconciliation, drain) rather than over a window of the load.
    pub fn is_final(self) -> bool {
        matches!(self, Kind::GraceDrained | Kind::Lost | Kind::Duplicated)
    }
}

/// Which requests a hypothesis looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ops {
    All,
    Settle,
}

#[derive(Debug, Clone)]
pub struct Hypothesis {
    pub id: String,
    pub kind: Kind,
    pub from: Duration,
    pub to: Duration,
    /// `warmup..peak` as written, for the report.
    pub window: String,
    pub ops: Ops,
    pub tolerance: Option<Tolerance>,
    pub percentile: f64,
    pub cluster: Option<String>,
    pub state: Option<String>,
    pub fault: Option<String>,
    pub continuous: Option<Continuous>,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Continuous {
    pub window: Duration,
    pub failures: u32,
    pub abort: bool,
}
