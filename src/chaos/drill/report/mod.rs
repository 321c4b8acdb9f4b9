//! The drill's verdict and its reports: `report.json` (everything, machine-readable),
//! `junit.xml` (one testcase per hypothesis, so CI shows each) and `report.html` (charts over
//! time with the fault windows shaded; one self-contained file, no scripts, opens offline).

mod html;
mod junit;
mod svg;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::hypothesis::Outcome;
use super::live::{Event, Live, Sample, Sec};
use super::plan::Drill;
use super::reconcile::Reconciliation;

/// How the drill ended. Exit codes follow the research format (A5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every hypothesis held.
    Passed,
    /// A hypothesis failed; the drill itself ran cleanly.
    Deviated,
    /// An abort condition fired (kill switch, Ctrl-C, a hypothesis failing badly, max duration).
    Aborted,
    /// The runner or an injector failed, or a hypothesis could not be evaluated.
    Errored,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Passed => 0,
            Verdict::Deviated => 1,
            Verdict::Aborted => 2,
            Verdict::Errored => 3,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Deviated => "deviated",
            Verdict::Aborted => "aborted",
            Verdict::Errored => "errored",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseRow {
    pub name: String,
    pub start_s: f64,
    pub end_s: f64,
    pub rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultRow {
    pub id: String,
    pub action: String,
    pub planned_start_s: f64,
    pub planned_end_s: Option<f64>,
    pub started_s: Option<f64>,
    pub ended_s: Option<f64>,
}

/// Everything a drill produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub title: String,
    pub proves: String,
    pub short: bool,
    pub verdict: Verdict,
    pub exit_code: u8,
    /// Hypotheses that failed or could not be evaluated, by id.
    pub broken: Vec<String>,
    pub started_unix_ms: u64,
    pub errors: Vec<String>,
    pub phases: Vec<PhaseRow>,
    pub faults: Vec<FaultRow>,
    pub hypotheses: Vec<Outcome>,
    /// Weighted share of hypotheses that passed (Litmus' resilience score); never the verdict.
    pub score: f64,
    pub reconciliation: Option<Reconciliation>,
    pub events: Vec<Event>,
    pub seconds: Vec<Sec>,
    pub samples: Vec<Sample>,
    #[serde(skip)]
    pub windows: BTreeMap<String, (f64, Option<f64>)>,
}

impl Report {
    pub fn new(drill: &Drill) -> Report {
        Report {
            name: drill.name.clone(),
            title: drill.title.clone(),
            proves: drill.proves.clone(),
            short: drill.short,
            verdict: Verdict::Errored,
            exit_code: 3,
            broken: Vec::new(),
            started_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            errors: Vec::new(),
            phases: drill
                .phases
                .iter()
                .map(|p| PhaseRow {
                    name: p.name.clone(),
                    start_s: p.start.as_secs_f64(),
                    end_s: (p.start + p.duration).as_secs_f64(),
                    rate: p.rate,
                })
                .collect(),
            faults: drill
                .faults
                .iter()
                .map(|f| FaultRow {
                    id: f.id.clone(),
                    action: f.action.label(),
                    planned_start_s: f.start.as_secs_f64(),
                    planned_end_s: f.end.map(|e| e.as_secs_f64()),
                    started_s: None,
                    ended_s: None,
                })
                .collect(),
            hypotheses: Vec::new(),
            score: 0.0,
            reconciliation: None,
            events: Vec::new(),
            seconds: Vec::new(),
            samples: Vec::new(),
            windows: BTreeMap::new(),
        }
    }

    pub fn error(&mut self, e: String) {
        self.errors.push(e);
    }

    /// Fills in the outcome and writes the three files into `dir`.
    pub fn finish(
        mut self,
        verdict: Verdict,
        reconciliation: Option<Reconciliation>,
        results: &[Outcome],
        live: &Live,
        dir: &Path,
    ) -> Report {
        self.verdict = verdict;
        self.exit_code = verdict.exit_code();
        self.hypotheses = results.to_vec();
        self.broken = results.iter().filter(|r| r.result != "passed").map(|r| r.id.clone()).collect();
        let total: u32 = results.iter().map(|r| r.weight).sum();
        let passed: u32 = results.iter().filter(|r| r.result == "passed").map(|r| r.weight).sum();
        self.score = if total > 0 { f64::from(passed) / f64::from(total) } else { 0.0 };
        self.reconciliation = reconciliation;
        self.events = live.events.lock().map(|e| e.clone()).unwrap_or_default();
        self.seconds = live.seconds();
        self.samples = live.samples();
        for f in &mut self.faults {
            if let Some((s, e)) = self.windows.get(&f.id) {
                f.started_s = Some(*s);
                f.ended_s = *e;
            }
        }
        if let Err(e) = self.write(dir) {
            self.errors.push(format!("cannot write the report: {e}"));
            eprintln!("lifeline drill: cannot write the report into {}: {e}", dir.display());
        }
        self
    }

    fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("report.json"), json)?;
        std::fs::write(dir.join("junit.xml"), junit::render(self))?;
        std::fs::write(dir.join("report.html"), html::render(self))?;
        Ok(())
    }

    /// The end-of-run summary for the terminal.
    pub fn summary(&self) -> String {
        let mut out = format!("drill {}: {}\n", self.name, self.verdict.as_str().to_uppercase());
        for h in &self.hypotheses {
            out.push_str(&format!(
                "  {:<8} {:<28} {:<22} observed {:<10} tolerance {}\n",
                h.result, h.id, h.kind, h.observed, h.tolerance
            ));
            if h.result != "passed" && !h.detail.is_empty() {
                out.push_str(&format!("           {}\n", h.detail));
            }
        }
        if let Some(r) = &self.reconciliation {
            out.push_str(&format!(
                "  ledger: {} settlements sent, {} acknowledged ({} offline), lost {}, duplicated {}\n",
                r.sent, r.acknowledged, r.accepted_offline, r.lost, r.duplicated
            ));
        }
        for e in &self.errors {
            out.push_str(&format!("  error: {e}\n"));
        }
        if !self.broken.is_empty() {
            out.push_str(&format!("  broken hypotheses: {}\n", self.broken.join(", ")));
        }
        out
    }
}

/// Escapes text for HTML and XML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}
