//! Value types that read like an operator writes them: `250ms`, `2s`, `1h`, `50%`, `10MiB`, `50/s`.
//!
//! Each parses from a YAML string and says exactly what it expected when it cannot.

use std::fmt;
use std::time::Duration;

use schemars::gen::SchemaGenerator;
use schemars::schema::{InstanceType, Schema, SchemaObject, StringValidation};
use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

fn string_schema(pattern: &str, description: &str) -> Schema {
    let mut obj = SchemaObject {
        instance_type: Some(InstanceType::String.into()),
        string: Some(Box::new(StringValidation { pattern: Some(pattern.to_string()), ..Default::default() })),
        ..Default::default()
    };
    obj.metadata().description = Some(description.to_string());
    Schema::Object(obj)
}

/// A duration written as `<number><unit>` with unit `us`, `ms`, `s`, `m` or `h` (e.g. `250ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let bad =
            || format!("invalid duration {s:?}: expected a number and a unit (us, ms, s, m, h), e.g. 250ms or 2s");
        if num.is_empty() {
            return Err(bad());
        }
        let n: f64 = num.parse().map_err(|_| bad())?;
        let nanos_per = match unit.trim() {
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86400e9,
            _ => return Err(bad()),
        };
        let nanos = n * nanos_per;
        if !nanos.is_finite() || nanos > 1e19 {
            return Err(format!("duration {s:?} is too large"));
        }
        Ok(Dur(Duration::from_nanos(nanos as u64)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.as_nanos();
        if n == 0 {
            return write!(f, "0s");
        }
        for (unit, per) in [
            ("h", 3_600_000_000_000u128),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ] {
            if n % per == 0 {
                return write!(f, "{}{unit}", n / per);
            }
        }
        write!(f, "{}us", n / 1000)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 250ms, 2s or 1h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!("invalid duration {v}: a unit is required, e.g. {v}ms or {v}s")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!("invalid duration {v}: a unit is required, e.g. {v}ms or {v}s")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!("invalid duration {v}: a unit is required, e.g. {v}s")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> String {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(r"^[0-9]+(\.[0-9]+)?(us|ms|s|m|h|d)$", "A duration such as 250ms, 2s, 5m or 1h")
    }
}

/// A percentage written as `50%` (stored in basis points, 1% = 100, so no float reaches a decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Percent(pub u32);

impl Percent {
    pub const fn from_percent(p: u32) -> Percent {
        Percent(p * 100)
    }
    pub fn basis_points(self) -> u32 {
        self.0
    }
    pub fn as_ratio(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
    pub fn parse(s: &str) -> Result<Percent, String> {
        let s = s.trim();
        let bad = || format!("invalid percentage {s:?}: expected a number followed by %, e.g. 50% or 2.5%");
        let num = s.strip_suffix('%').ok_or_else(bad)?.trim();
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || frac.len() > 2
        {
            return Err(bad());
        }
        let int: u32 = int.parse().map_err(|_| bad())?;
        let frac: u32 = if frac.is_empty() { 0 } else { format!("{frac:0<2}").parse().map_err(|_| bad())? };
        if int > 100 || (int == 100 && frac > 0) {
            return Err(format!("invalid percentage {s:?}: must be between 0% and 100%"));
        }
        Ok(Percent(int * 100 + frac))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 100 == 0 {
            write!(f, "{}%", self.0 / 100)
        } else {
            write!(f, "{}.{:02}%", self.0 / 100, self.0 % 100)
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a percentage such as 50%")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                Percent::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                Err(E::custom(format!("invalid percentage {v}: write it with a % sign, e.g. \"{v}%\"")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Err(E::custom(format!("invalid percentage {v}: write it with a % sign, e.g. \"{v}%\"")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Percent {
    fn schema_name() -> String {
        "Percent".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(r"^[0-9]{1,3}(\.[0-9]{1,2})?%$", "A percentage such as 50% or 2.5%")
    }
}

/// A size in bytes: a plain integer or `<n>KiB`, `<n>MiB`, `<n>GiB` (also `KB`, `MB`, `GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let bad = || format!("invalid size {s:?}: expected bytes or a number with KiB, MiB or GiB, e.g. 10MiB");
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "KB" | "k" | "K" => 1 << 10,
            "MiB" | "MB" | "M" => 1 << 20,
            "GiB" | "GB" | "G" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(Size).ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, per) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= per && self.0 % per == 0 {
                return write!(f, "{}{unit}", self.0 / per);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 65536, 64KiB or 10MiB")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v).map(Size).map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Size {
    fn schema_name() -> String {
        "Size".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(r"^[0-9]+(B|KiB|MiB|GiB|KB|MB|GB)?$", "A size in bytes, or with a unit: 64KiB, 10MiB")
    }
}

/// A rate written as `<n>/s`, `<n>/m` or `<n>/h` (events per unit of time, integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub fn parse(s: &str) -> Result<Rate, String> {
        let s = s.trim();
        let bad = || format!("invalid rate {s:?}: expected a count per unit, e.g. 50/s or 600/m");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Rate { count, per })
    }
    pub fn per_second(self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).map_err(de::Error::custom)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Rate {
    fn schema_name() -> String {
        "Rate".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(r"^[0-9]+/(s|m|h)$", "A rate such as 50/s or 600/m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("2s").unwrap().0, Duration::from_secs(2));
        assert_eq!(Dur::parse("1h").unwrap().0, Duration::from_secs(3600));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("fast").is_err());
        assert!(Dur::parse("5x").unwrap_err().contains("5x"));
        assert_eq!(Dur::parse("1500ms").unwrap().to_string(), "1500ms");
        assert_eq!(Dur::parse("2m").unwrap().to_string(), "2m");
    }

    #[test]
    fn percents() {
        assert_eq!(Percent::parse("50%").unwrap().basis_points(), 5000);
        assert_eq!(Percent::parse("2.5%").unwrap().basis_points(), 250);
        assert_eq!(Percent::parse("100%").unwrap().basis_points(), 10000);
        assert!(Percent::parse("101%").is_err());
        assert!(Percent::parse("50").is_err());
        assert!(Percent::parse("-1%").is_err());
        assert_eq!(Percent::parse("2.5%").unwrap().to_string(), "2.50%");
    }

    #[test]
    fn sizes_and_rates() {
        assert_eq!(Size::parse("10MiB").unwrap().0, 10 << 20);
        assert_eq!(Size::parse("4096").unwrap().0, 4096);
        assert!(Size::parse("10 parsecs").is_err());
        let r = Rate::parse("50/s").unwrap();
        assert_eq!((r.count, r.per), (50, Duration::from_secs(1)));
        assert!(Rate::parse("50").is_err());
    }
}
