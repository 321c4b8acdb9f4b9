//! JUnit XML: one testcase per hypothesis (failures and errors as JUnit has them), plus one
//! testcase for the run itself when it aborted or errored, so CI shows why.

use super::{esc, Report, Verdict};

pub fn render(r: &Report) -> String {
    let failures = r.hypotheses.iter().filter(|h| h.result == "failed").count();
    let mut errors = r.hypotheses.iter().filter(|h| h.result == "errored").count();
    let run_case = matches!(r.verdict, Verdict::Aborted | Verdict::Errored) && !r.errors.is_empty()
        || r.verdict == Verdict::Aborted;
    if run_case {
        errors += 1;
    }
    let tests = r.hypotheses.len() + usize::from(run_case);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites><testsuite name=\"drill.{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\">\n",
        esc(&r.name)
    ));
    out.push_str(&format!(
        "  <properties><property name=\"verdict\" value=\"{}\"/><property name=\"short\" value=\"{}\"/></properties>\n",
        r.verdict.as_str(),
        r.short
    ));
    for h in &r.hypotheses {
        out.push_str(&format!("  <testcase classname=\"drill.{}\" name=\"{}\">", esc(&r.name), esc(&h.id)));
        let msg =
            format!("{} over {}: observed {} (tolerance {}). {}", h.kind, h.window, h.observed, h.tolerance, h.detail);
        match h.result {
            "failed" => out.push_str(&format!("<failure message=\"{}\">{}</failure>", esc(&msg), esc(&msg))),
            "errored" => out.push_str(&format!("<error message=\"{}\">{}</error>", esc(&msg), esc(&msg))),
            _ => out.push_str(&format!("<system-out>{}</system-out>", esc(&msg))),
        }
        out.push_str("</testcase>\n");
    }
    if run_case {
        let msg = format!("verdict {}: {}", r.verdict.as_str(), r.errors.join("; "));
        let abort =
            r.events.iter().filter(|e| e.kind == "abort").map(|e| e.detail.clone()).collect::<Vec<_>>().join("; ");
        let msg = if abort.is_empty() { msg } else { format!("{msg} (abort: {abort})") };
        out.push_str(&format!(
            "  <testcase classname=\"drill.{}\" name=\"run\"><error message=\"{}\">{}</error></testcase>\n",
            esc(&r.name),
            esc(&msg),
            esc(&msg)
        ));
    }
    out.push_str("</testsuite></testsuites>\n");
    out
}
