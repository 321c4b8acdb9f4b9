//! `report.html`: verdict, hypotheses, reconciliation, the timeline of events, and charts over
//! time (request rate, success rate, p99 latency, breaker state, active priority, grace queue
//! depth) with every fault window shaded. One file, inline CSS and SVG, no scripts, no fetches.

use std::collections::BTreeSet;

use super::svg::{chart, Series, Shade};
use super::{esc, Report};

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:960px}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}\
.v{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}\
.passed{background:#2e7d32}.deviated{background:#c62828}.aborted{background:#ef6c00}.errored{background:#6a1b9a}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}\
td.r-passed{color:#2e7d32;font-weight:600}td.r-failed{color:#c62828;font-weight:600}td.r-errored{color:#6a1b9a;font-weight:600}\
svg{display:block;margin:8px 0}.t{font-weight:600;font-size:13px}.u{font-weight:400;fill:#666}\
.shade{fill:#e53935;fill-opacity:.12}.sl{font-size:10px;fill:#b71c1c}.ax{stroke:#444}.grid{stroke:#eee}\
.yl{font-size:10px;text-anchor:end;fill:#555}.xl{font-size:10px;text-anchor:middle;fill:#555}.lg{font-size:11px}\
.nd{font-size:12px;fill:#999;text-anchor:middle}.muted{color:#666}";

pub fn render(r: &Report) -> String {
    let mut h = String::from("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str(&format!(
        "<title>Drill {} — {}</title><style>{CSS}</style></head><body>",
        esc(&r.name),
        r.verdict.as_str()
    ));
    h.push_str(&format!(
        "<h1>{}</h1><p><span class=\"v {}\">{}</span> &nbsp;drill <b>{}</b>{} &nbsp;·&nbsp; resilience score {:.0}%</p>",
        esc(&r.title),
        r.verdict.as_str(),
        r.verdict.as_str().to_uppercase(),
        esc(&r.name),
        if r.short { " (short mode)" } else { "" },
        r.score * 100.0
    ));
    if !r.proves.is_empty() {
        h.push_str(&format!("<p class=\"muted\">{}</p>", esc(&r.proves)));
    }
    if !r.broken.is_empty() {
        h.push_str(&format!("<p><b>Broken hypotheses:</b> {}</p>", esc(&r.broken.join(", "))));
    }
    for e in &r.errors {
        h.push_str(&format!("<p><b>Error:</b> {}</p>", esc(e)));
    }
    h.push_str("<h2>Hypotheses</h2><table><tr><th>id</th><th>kind</th><th>window</th><th>tolerance</th><th>observed</th><th>result</th><th>detail</th></tr>");
    for x in &r.hypotheses {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"r-{}\">{}</td><td>{}</td></tr>",
            esc(&x.id),
            esc(x.kind),
            esc(&x.window),
            esc(&x.tolerance),
            esc(&x.observed),
            x.result,
            x.result,
            esc(&x.detail)
        ));
    }
    h.push_str("</table>");
    if let Some(rec) = &r.reconciliation {
        h.push_str(&format!(
            "<h2>Ledger reconciliation</h2><p>{} settlements sent; {} acknowledged ({} accepted offline, 202); {} applied. \
             <b>Lost: {}</b>. <b>Duplicated: {}</b>. Applied without a success answer: {}.</p>",
            rec.sent, rec.acknowledged, rec.accepted_offline, rec.applied, rec.lost, rec.duplicated, rec.applied_unacknowledged
        ));
    }
    h.push_str("<h2>Over time</h2>");
    h.push_str(&charts(r));
    h.push_str("<h2>Timeline</h2><table><tr><th>t</th><th>event</th><th>detail</th></tr>");
    for e in &r.events {
        h.push_str(&format!("<tr><td>{:.1}s</td><td>{}</td><td>{}</td></tr>", e.t, esc(&e.kind), esc(&e.detail)));
    }
    h.push_str("</table><h2>Phases</h2><table><tr><th>phase</th><th>from</th><th>to</th><th>rate</th></tr>");
    for p in &r.phases {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{:.0}s</td><td>{:.0}s</td><td>{:.0}/s</td></tr>",
            esc(&p.name),
            p.start_s,
            p.end_s,
            p.rate
        ));
    }
    h.push_str("</table></body></html>\n");
    h
}

fn charts(r: &Report) -> String {
    let x_max = r
        .seconds
        .last()
        .map(|s| s.t as f64 + 1.0)
        .unwrap_or(0.0)
        .max(r.samples.last().map(|s| s.t).unwrap_or(0.0))
        .max(r.phases.last().map(|p| p.end_s).unwrap_or(0.0));
    let shades: Vec<Shade> = r
        .faults
        .iter()
        .filter_map(|f| {
            let from = f.started_s?;
            Some(Shade { from, to: f.ended_s.unwrap_or(x_max), label: f.id.clone() })
        })
        .collect();
    let pts = |f: &dyn Fn(&crate::chaos::drill::live::Sec) -> Option<f64>| -> Vec<(f64, f64)> {
        r.seconds.iter().filter_map(|s| f(s).map(|v| (s.t as f64 + 0.5, v))).collect()
    };
    let mut out = String::new();
    let rate = Series { name: "sent/s".into(), points: pts(&|s| Some(s.sent as f64)) };
    let ok = Series { name: "errors/s".into(), points: pts(&|s| Some(s.errors as f64)) };
    out.push_str(&chart("Request rate", "requests per second", &[rate, ok], x_max, &shades, &[]));
    let ok_share = |s: &crate::chaos::drill::live::Sec| (s.sent - s.errors.min(s.sent)) as f64 * 100.0 / s.sent as f64;
    let succ = Series { name: "success".into(), points: pts(&|s| (s.sent > 0).then(|| ok_share(s))) };
    let what = "% answered without an error (5xx, 429, timeout, connection)";
    out.push_str(&chart("Success rate", what, &[succ], x_max, &shades, &[]));
    let p99 = Series { name: "p99".into(), points: pts(&|s| (s.sent > 0).then(|| s.p99_us as f64 / 1000.0)) };
    out.push_str(&chart("p99 latency", "ms", &[p99], x_max, &shades, &[]));
    let clusters: BTreeSet<String> = r.samples.iter().flat_map(|s| s.breaker.keys().cloned()).collect();
    let states = ["closed", "half_open", "open"];
    let breaker: Vec<Series> = clusters
        .iter()
        .map(|c| Series {
            name: c.clone(),
            points: r
                .samples
                .iter()
                .filter_map(|s| {
                    s.breaker.get(c).map(|st| (s.t, states.iter().position(|x| x == st).unwrap_or(2) as f64))
                })
                .collect(),
        })
        .collect();
    out.push_str(&chart("Breaker state", "per cluster", &breaker, x_max, &shades, &states));
    let pclusters: BTreeSet<String> = r.samples.iter().flat_map(|s| s.priority.keys().cloned()).collect();
    let prio: Vec<Series> = pclusters
        .iter()
        .map(|c| Series {
            name: c.clone(),
            points: r.samples.iter().filter_map(|s| s.priority.get(c).map(|v| (s.t, *v))).collect(),
        })
        .collect();
    out.push_str(&chart("Active priority", "0 = primary site", &prio, x_max, &shades, &[]));
    let depth = Series {
        name: "depth".into(),
        points: r.samples.iter().filter_map(|s| s.grace_depth.map(|d| (s.t, d))).collect(),
    };
    out.push_str(&chart("Grace queue depth", "settlements waiting", &[depth], x_max, &shades, &[]));
    let up = Series {
        name: "admin up".into(),
        points: r.samples.iter().map(|s| (s.t, if s.up { 1.0 } else { 0.0 })).collect(),
    };
    out.push_str(&chart("Sidecar reachable", "1 = admin API answered", &[up], x_max, &shades, &[]));
    out
}
