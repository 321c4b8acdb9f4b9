//! Integration tests: real sockets on 127.0.0.1:0, real processes where one must die.
//!
//! One test binary (one link) for all areas; each area is a module.

#![allow(clippy::unwrap_used)]

mod support;

mod build_scripts;
mod chaos_drill;
mod chaos_faults;
mod chaos_proxy;
mod chaos_scenarios;
mod core_config;
mod core_lifecycle;
mod core_proxy;
mod failover;
mod grace;
mod helm;
mod helm_hooks;
mod load;
mod resilience;
mod sim;
mod upstream_pool;
