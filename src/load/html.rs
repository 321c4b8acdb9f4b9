//! The report as one self-contained HTML page: tables and inline SVG charts, no scripts, no
//! external resources, so it opens offline and can be attached to a capacity review as is.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::report::{fmt_us, Report, Summary};
use super::svg::{esc, line_chart, Series};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.title{font-size:14px;font-weight:600}\
.tick{font-size:11px;fill:#555}svg{display:block;margin:10px 0 18px}.knee{font-size:18px;font-weight:600}";

fn ms(us: f64) -> f64 {
    us / 1000.0
}

/// Renders `report` as a complete HTML document.
pub fn render(report: &Report) -> String {
    let mut h = String::with_capacity(64 << 10);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>lifeline load: {t}</title><style>{STYLE}</style></head><body>\
         <h1>lifeline load</h1><p>{t} · {p} · {c} connections · {d:.1} s · started {s} (unix ms)</p>",
        t = esc(&report.target),
        p = report.protocol,
        c = report.connections,
        d = report.duration_s,
        s = report.started_unix_ms
    );
    if let Some(k) = &report.knee {
        let rate = k.knee_rate.map(|r| format!("{r:.0} req/s")).unwrap_or_else(|| "none".into());
        let _ = write!(
            h,
            "<p class=\"knee\">Knee: {}</p><p>{} (objective: p99 ≤ {}, errors ≤ {:.2}%)</p>",
            esc(&rate),
            esc(&k.reason),
            fmt_us(k.objective_p99_us),
            k.objective_error_rate * 100.0
        );
    }
    h.push_str("<h2>Summary</h2><table><tr><th></th><th>sent</th><th>ok</th><th>failed</th><th>errors</th><th>req/s</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    summary_row(&mut h, "total", &report.totals);
    for p in &report.phases {
        summary_row(&mut h, &p.info.name, &p.summary);
    }
    h.push_str("</table>");
    counts_table(&mut h, "Results", &report.totals.by_result);
    counts_table(&mut h, "Requests by kind", &report.totals.by_kind);

    let tl = &report.timeline;
    let pts = |f: &dyn Fn(&super::report::Second) -> f64| tl.iter().map(|s| (s.t as f64, f(s))).collect::<Vec<_>>();
    h.push_str("<h2>Over time</h2>");
    h.push_str(&line_chart(
        "Latency from scheduled send (ms)",
        "seconds",
        &[
            Series { name: "p50", color: "#1f77b4", points: pts(&|s| ms(s.p50_us as f64)) },
            Series { name: "p90", color: "#ff7f0e", points: pts(&|s| ms(s.p90_us as f64)) },
            Series { name: "p99", color: "#d62728", points: pts(&|s| ms(s.p99_us as f64)) },
        ],
        &|y| format!("{y:.1}"),
    ));
    h.push_str(&line_chart(
        "Throughput (req/s)",
        "seconds",
        &[
            Series { name: "offered", color: "#999", points: pts(&|s| s.offered_rate) },
            Series { name: "completed", color: "#2ca02c", points: pts(&|s| (s.ok + s.failed) as f64) },
            Series { name: "ok", color: "#1f77b4", points: pts(&|s| s.ok as f64) },
        ],
        &|y| format!("{y:.0}"),
    ));
    h.push_str(&line_chart(
        "Errors (per second)",
        "seconds",
        &[
            Series { name: "errors (5xx, 429, transport)", color: "#d62728", points: pts(&|s| s.errors as f64) },
            Series { name: "not ok (incl. 4xx)", color: "#9467bd", points: pts(&|s| s.failed as f64) },
        ],
        &|y| format!("{y:.0}"),
    ));
    if let Some(k) = &report.knee {
        let by_rate = |f: &dyn Fn(&super::report::KneeStep) -> f64| {
            k.steps.iter().map(|s| (s.offered_rate, f(s))).collect::<Vec<_>>()
        };
        h.push_str("<h2>Latency vs offered rate</h2>");
        h.push_str(&line_chart(
            "Latency by step (ms)",
            "offered req/s",
            &[
                Series { name: "p50", color: "#1f77b4", points: by_rate(&|s| ms(s.p50_us as f64)) },
                Series { name: "p99", color: "#d62728", points: by_rate(&|s| ms(s.p99_us as f64)) },
                Series { name: "objective p99", color: "#999", points: by_rate(&|_| ms(k.objective_p99_us as f64)) },
            ],
            &|y| format!("{y:.1}"),
        ));
        h.push_str(&line_chart(
            "Throughput by step (req/s)",
            "offered req/s",
            &[
                Series { name: "offered", color: "#999", points: by_rate(&|s| s.offered_rate) },
                Series { name: "completed", color: "#2ca02c", points: by_rate(&|s| s.throughput) },
            ],
            &|y| format!("{y:.0}"),
        ));
    }
    if !report.settlements.is_empty() {
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for r in &report.settlements {
            *by.entry(r.outcome.clone()).or_insert(0) += 1;
        }
        counts_table(&mut h, &format!("Settlements sent ({})", report.settlements.len()), &by);
    }
    h.push_str("<p>Latency counts from each request's scheduled send time (corrected for coordinated omission).</p></body></html>\n");
    h
}

fn summary_row(h: &mut String, name: &str, s: &Summary) {
    let l = &s.latency;
    let _ = write!(
        h,
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({:.2}%)</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(name),
        s.sent,
        s.ok,
        s.failed,
        s.errors,
        s.error_rate * 100.0,
        s.throughput,
        fmt_us(l.p50_us),
        fmt_us(l.p90_us),
        fmt_us(l.p99_us),
        fmt_us(l.p999_us),
        fmt_us(l.max_us)
    );
}

fn counts_table(h: &mut String, title: &str, counts: &BTreeMap<String, u64>) {
    let _ = write!(h, "<h2>{}</h2><table><tr><th>result</th><th>count</th></tr>", esc(title));
    for (k, v) in counts {
        let _ = write!(h, "<tr><td>{}</td><td>{v}</td></tr>", esc(k));
    }
    h.push_str("</table>");
}
