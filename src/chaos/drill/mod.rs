//! `lifeline drill`: run a chaos drill from a scenario file and say, with evidence, whether
//! continuity held.
//!
//! scenario ([`scenario`], [`validate`]) -> environment ([`env`]: local child processes or a
//! remote sidecar) -> load + fault timeline + sampler ([`runner`]) -> hypotheses
//! ([`hypothesis`]) and ledger reconciliation ([`reconcile`]) -> verdict and reports
//! ([`report`]).

pub mod env;
pub mod http;
pub mod hypothesis;
pub mod live;
pub mod plan;
pub mod procs;
pub mod progress;
pub mod reconcile;
pub mod report;
pub mod runner;
pub mod sampler;
pub mod scenario;
pub mod template;
pub mod tolerance;
pub mod traffic;
pub mod validate;
