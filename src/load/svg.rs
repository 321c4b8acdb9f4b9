//! Minimal inline-SVG line charts for the HTML report (no scripts, no external resources).

use std::fmt::Write as _;

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 760.0;
const H: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

/// A chart with a title, axis labels, nice ticks and a legend. `fmt_y` renders y tick labels.
pub fn line_chart(title: &str, x_label: &str, series: &[Series], fmt_y: &dyn Fn(f64) -> String) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1) = all().fold((f64::MAX, f64::MIN), |(lo, hi), &(x, _)| (lo.min(x), hi.max(x)));
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let y1 = nice(all().fold(0.0f64, |m, &(_, y)| m.max(y)).max(1e-9) * 1.05);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - y / y1 * (H - TOP - BOTTOM);

    let mut s = String::with_capacity(4096);
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}">"#,
        t = esc(title)
    );
    let _ = write!(s, r#"<text x="{LEFT}" y="18" class="title">{}</text>"#, esc(title));
    for i in 0..=4 {
        let y = y1 * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py(y) + 4.0,
            esc(&fmt_y(y)),
            py = py(y)
        );
    }
    for i in 0..=5 {
        let x = x0 + (x1 - x0) * f64::from(i) / 5.0;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"#,
            px(x),
            H - BOTTOM + 16.0,
            short(x)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 6.0,
        esc(x_label)
    );
    let mut lx = LEFT + 10.0;
    for ser in series {
        let pts: Vec<String> = ser
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
            esc(ser.color),
            pts.join(" ")
        );
        if ser.points.len() <= 40 {
            for p in &pts {
                if let Some((x, y)) = p.split_once(',') {
                    let _ = write!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#, esc(ser.color));
                }
            }
        }
        let _ = write!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="3" fill="{c}"/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"#,
            TOP - 6.0,
            lx + 16.0,
            TOP - 2.0,
            esc(ser.name),
            c = esc(ser.color)
        );
        // Next legend entry after this one's label (about 6.5 px per character at 11 px).
        lx += 36.0 + 6.5 * ser.name.chars().count() as f64;
    }
    s.push_str("</svg>");
    s
}

/// The next "nice" number (1, 2, 2.5, 5 × 10^k) at or above `v`.
fn nice(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn short(x: f64) -> String {
    if x.abs() >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else if x.fract().abs() < 1e-9 || x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_finite_and_escaped() {
        let s = line_chart(
            "a<b",
            "t",
            &[Series { name: "p99", color: "#c00", points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0)] }],
            &|y| format!("{y}"),
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("a&lt;b"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
        let empty = line_chart("e", "t", &[], &|y| format!("{y}"));
        assert!(!empty.contains("NaN"));
        assert_eq!(nice(7.3), 10.0);
        assert_eq!(nice(0.21), 0.25);
    }
}
