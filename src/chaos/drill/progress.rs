//! The live progress display: phase, elapsed time, arrival rate, success rate and p99, and the
//! faults in force, on one line rewritten each second on a terminal; a line every ten seconds
//! when stderr is not a terminal; nothing but events in CI (`CI=true`) or with `--quiet`.

use std::io::{IsTerminal, Write};

use super::live::Live;
use super::plan::Drill;

pub struct Progress {
    quiet: bool,
    tty: bool,
    length: f64,
    phases: Vec<(String, f64, f64)>,
}

impl Progress {
    pub fn new(quiet: bool, drill: &Drill) -> Progress {
        let ci = std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false);
        Progress {
            quiet: quiet || ci,
            tty: std::io::stderr().is_terminal(),
            length: drill.length().as_secs_f64(),
            phases: drill
                .phases
                .iter()
                .map(|p| (p.name.clone(), p.start.as_secs_f64(), (p.start + p.duration).as_secs_f64()))
                .collect(),
        }
    }

    /// An event line (always shown).
    pub fn line(&self, msg: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty && !self.quiet {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{msg}");
    }

    /// The status line, once a second.
    pub fn tick(&self, ts: f64, live: &Live, active: &[&str]) {
        if self.quiet || (!self.tty && (ts as u64) % 10 != 0) {
            return;
        }
        let phase = self.phases.iter().find(|(_, a, b)| ts >= *a && ts < *b).map(|p| p.0.as_str()).unwrap_or("-");
        let secs = live.seconds();
        let recent: Vec<_> = secs.iter().rev().take(3).collect();
        let sent: u64 = recent.iter().map(|s| s.sent).sum();
        let ok: u64 = recent.iter().map(|s| s.sent - s.errors.min(s.sent)).sum();
        let p99 = recent.iter().map(|s| s.p99_us).max().unwrap_or(0);
        let rate = sent as f64 / recent.len().max(1) as f64;
        let success = if sent > 0 { format!("{:.2}%", ok as f64 * 100.0 / sent as f64) } else { "-".into() };
        let faults = if active.is_empty() { "none".to_string() } else { active.join(",") };
        let text = format!(
            "[{phase}] {ts:>5.0}s/{:.0}s  rate {rate:.0}/s  ok {success}  p99 {:.0}ms  faults: {faults}",
            self.length,
            p99 as f64 / 1000.0
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{text}");
            let _ = err.flush();
        } else {
            let _ = writeln!(err, "{text}");
        }
    }

    pub fn done(&self) {
        if self.tty && !self.quiet {
            let _ = writeln!(std::io::stderr());
        }
    }
}
