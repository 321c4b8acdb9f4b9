//! Live progress on a terminal: one line per second (offered and completed rate, p50/p99, errors).
//!
//! Quiet unless a person is watching: `--quiet`, a stderr that is not a terminal, or `CI=true`
//! turn it off, so logs and CI output hold only the final summary.

use std::io::{IsTerminal, Write};

use super::report::{fmt_us, KneeStep, Second};
use super::Observer;

/// Whether progress lines should be printed.
pub fn wanted(quiet: bool) -> bool {
    let ci = std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false);
    !quiet && !ci && std::io::stderr().is_terminal()
}

/// Prints progress to stderr.
#[derive(Debug, Default)]
pub struct Progress;

impl Observer for Progress {
    fn second(&mut self, s: &Second) {
        let done = s.ok + s.failed;
        let err = if done == 0 { 0.0 } else { s.errors as f64 * 100.0 / done as f64 };
        let _ = writeln!(
            std::io::stderr().lock(),
            "{:>5}s  offered {:>7.0}/s  done {:>7}/s  p50 {:>8}  p99 {:>8}  errors {:>5.2}%",
            s.t,
            s.offered_rate,
            done,
            fmt_us(s.p50_us),
            fmt_us(s.p99_us),
            err
        );
    }

    fn knee_step(&mut self, k: &KneeStep) {
        let _ = writeln!(
            std::io::stderr().lock(),
            "step {:>7.0}/s: throughput {:.0}/s  p99 {}  errors {:.2}%  {}",
            k.offered_rate,
            k.throughput,
            fmt_us(k.p99_us),
            k.error_rate * 100.0,
            if k.held { "held" } else { "BROKE" }
        );
    }
}
