//! Chaos engineering: make the outages SRE teams fear happen on purpose, bounded and reversible,
//! and prove that settlements continue.
//!
//! - In the sidecar ([`fault`], [`registry`], [`inject`], [`admin`]): faults per cluster, route
//!   or endpoint (delay, abort, reset, refuse, blackhole, bandwidth) injected at the innermost
//!   step of the request path, so every resilience layer sees them as real upstream failures.
//!   Opt-in (`chaos.enabled`), token-guarded, and every fault ends by its TTL even if whoever
//!   created it is gone (design invariant 9).
//! - Between the sidecar and a backend ([`proxy`]): `lifeline chaos proxy`, a TCP fault proxy
//!   with Toxiproxy-like toxics for faults the sidecar must not know about.

pub mod admin;
pub mod cli;
pub mod config;
pub mod drill;
pub mod fault;
pub mod inject;
pub mod proxy;
pub mod registry;
pub mod throttle;

pub use registry::Faults;
