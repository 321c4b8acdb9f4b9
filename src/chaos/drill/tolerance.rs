//! Pass conditions of hypotheses: `>= 99.5%`, `<= 800ms`, `== 0`.
//!
//! A tolerance has a unit so a typo cannot compare a latency with a ratio: percentages compare
//! ratios (0..1), durations compare seconds, plain numbers compare counts.

use std::fmt;

use crate::config::Dur;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Ratio,
    Seconds,
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub op: Op,
    /// Ratio (0..1), seconds, or a count.
    pub value: f64,
    pub unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ge,
    Le,
    Gt,
    Lt,
    Eq,
}

impl Tolerance {
    pub fn parse(s: &str) -> Result<Tolerance, String> {
        let s = s.trim();
        let (op, rest) = [(">=", Op::Ge), ("<=", Op::Le), ("==", Op::Eq), (">", Op::Gt), ("<", Op::Lt)]
            .iter()
            .find_map(|(p, op)| s.strip_prefix(p).map(|r| (*op, r.trim())))
            .ok_or_else(|| format!("{s:?}: start with >=, <=, ==, > or <, e.g. \">= 99.5%\" or \"<= 800ms\""))?;
        if let Some(p) = rest.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| format!("{s:?}: {rest:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{s:?}: a percentage is between 0% and 100%"));
            }
            return Ok(Tolerance { op, value: v / 100.0, unit: Unit::Ratio });
        }
        if rest.ends_with(|c: char| c.is_ascii_alphabetic()) {
            let d = Dur::parse(rest).map_err(|e| format!("{s:?}: {e}"))?;
            return Ok(Tolerance { op, value: d.0.as_secs_f64(), unit: Unit::Seconds });
        }
        let v: f64 =
            rest.parse().map_err(|_| format!("{s:?}: {rest:?} is not a number, a percentage or a duration"))?;
        Ok(Tolerance { op, value: v, unit: Unit::Count })
    }

    pub fn holds(&self, observed: f64) -> bool {
        match self.op {
            Op::Ge => observed >= self.value,
            Op::Le => observed <= self.value,
            Op::Gt => observed > self.value,
            Op::Lt => observed < self.value,
            Op::Eq => (observed - self.value).abs() < 1e-9,
        }
    }

    /// Formats an observed value in this tolerance's unit.
    pub fn show(&self, v: f64) -> String {
        show(self.unit, v)
    }
}

pub fn show(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Ratio => format!("{:.2}%", v * 100.0),
        Unit::Seconds if v < 1.0 => format!("{:.0}ms", v * 1000.0),
        Unit::Seconds => format!("{v:.2}s"),
        Unit::Count if v.fract() != 0.0 => format!("{v:.2}"),
        Unit::Count => format!("{v}"),
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Lt => "<",
            Op::Eq => "==",
        };
        write!(f, "{op} {}", self.show(self.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_compares() {
        let t = Tolerance::parse(">= 99.5%").unwrap();
        assert_eq!((t.unit, t.value), (Unit::Ratio, 0.995));
        assert!(t.holds(0.996) && !t.holds(0.99));
        let t = Tolerance::parse("<= 800ms").unwrap();
        assert_eq!(t.unit, Unit::Seconds);
        assert!(t.holds(0.8) && !t.holds(0.81));
        let t = Tolerance::parse("== 0").unwrap();
        assert!(t.holds(0.0) && !t.holds(1.0));
        assert_eq!(t.to_string(), "== 0");
        assert!(Tolerance::parse("99%").is_err());
        assert!(Tolerance::parse(">= 120%").is_err());
        assert!(Tolerance::parse("<= 5 parsecs").is_err());
    }
}
