//! Inline SVG line charts for the HTML report: time on x, fault windows shaded, no scripts.

use super::esc;

const W: f64 = 900.0;
const H: f64 = 190.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 28.0;
const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"];

/// A named series of (seconds, value) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A shaded time window with a label (a fault).
pub struct Shade {
    pub from: f64,
    pub to: f64,
    pub label: String,
}

/// Renders one chart. `y_labels` names integer levels (e.g. breaker states) instead of numbers.
pub fn chart(title: &str, unit: &str, series: &[Series], x_max: f64, shades: &[Shade], y_labels: &[&str]) -> String {
    let x_max = x_max.max(1.0);
    let has_data = series.iter().any(|s| !s.points.is_empty());
    let (mut y_min, mut y_max) = (0.0f64, 1.0f64);
    for p in series.iter().flat_map(|s| &s.points) {
        if p.1.is_finite() {
            y_min = y_min.min(p.1);
            y_max = y_max.max(p.1);
        }
    }
    if !y_labels.is_empty() {
        y_max = y_max.max((y_labels.len() - 1) as f64);
    }
    if y_max <= y_min {
        y_max = y_min + 1.0;
    }
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |t: f64| LEFT + (t / x_max).clamp(0.0, 1.0) * pw;
    let y = |v: f64| TOP + ph - ((v - y_min) / (y_max - y_min)).clamp(0.0, 1.0) * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    s.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"16\" class=\"t\">{} <tspan class=\"u\">{}</tspan></text>",
        esc(title),
        esc(unit)
    ));
    for sh in shades {
        let (a, b) = (x(sh.from), x(sh.to.max(sh.from)));
        s.push_str(&format!(
            "<rect x=\"{a:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{ph}\" class=\"shade\"><title>{}</title></rect>",
            (b - a).max(1.0),
            esc(&sh.label)
        ));
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"sl\">{}</text>",
            a + 2.0,
            TOP + 10.0,
            esc(&sh.label)
        ));
    }
    s.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" class=\"ax\"/><line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{:.1}\" class=\"ax\"/>",
        TOP + ph,
        LEFT + pw,
        TOP + ph,
        TOP + ph
    ));
    let ticks: Vec<f64> = if y_labels.is_empty() {
        vec![y_min, (y_min + y_max) / 2.0, y_max]
    } else {
        (0..y_labels.len()).map(|i| i as f64).collect()
    };
    for v in ticks {
        let label =
            if y_labels.is_empty() { fmt_num(v) } else { y_labels.get(v as usize).copied().unwrap_or("").to_string() };
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"yl\">{}</text>",
            LEFT - 4.0,
            y(v) + 4.0,
            esc(&label)
        ));
        s.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" class=\"grid\"/>",
            y(v),
            LEFT + pw,
            y(v)
        ));
    }
    let step = nice_step(x_max);
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        s.push_str(&format!("<text x=\"{:.1}\" y=\"{:.1}\" class=\"xl\">{}s</text>", x(t), H - 8.0, fmt_num(t)));
        t += step;
    }
    if !has_data {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"nd\">no data: the sidecar does not report this</text>",
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        ));
    }
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> =
            ser.points.iter().filter(|p| p.1.is_finite()).map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1))).collect();
        if !pts.is_empty() {
            s.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.6\" points=\"{}\"/>",
                pts.join(" ")
            ));
        }
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"16\" fill=\"{color}\" class=\"lg\">\u{25A0} {}</text>",
            W - RIGHT - 150.0 * (series.len() - i) as f64 + 20.0,
            esc(&ser.name)
        ));
    }
    s.push_str("</svg>");
    s
}

fn nice_step(max: f64) -> f64 {
    for s in [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0] {
        if max / s <= 12.0 {
            return s;
        }
    }
    1200.0
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
