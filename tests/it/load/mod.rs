//! `lifeline load`: the engine against stand-in upstreams, the settlement mix, the knee search
//! and the command line.

mod cli;
mod engine;
mod knee;
mod mix;
mod sim;

use std::time::Duration;

use lifeline::load::{Plan, Target, Workload};

/// A target at `addr` with `conns` connections.
pub fn target(addr: std::net::SocketAddr, http2: bool, conns: usize) -> Target {
    Target::new(&format!("http://{addr}"), http2, conns).unwrap()
}

/// A fixed-rate GET plan.
pub fn get_plan(rate: f64, secs: f64) -> Plan {
    Plan::fixed(rate, Duration::from_secs_f64(secs), Workload::get("http://x/ping").unwrap())
}
