//! Wall-clock helpers for the journal: Unix milliseconds, RFC 3339 text, UTC day bounds.
//!
//! The journal stores wall-clock milliseconds (receipts and reconciliation are about calendar
//! time, and must survive restarts); pacing and backoff use `tokio::time` instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-11-22T06:55:10.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// `YYYY-MM-DD` of a timestamp (UTC).
pub fn date_of(ms: i64) -> String {
    rfc3339(ms)[..10].to_string()
}

/// Start and end (exclusive) in ms of a UTC day written `YYYY-MM-DD`.
pub fn day_bounds(date: &str) -> Option<(i64, i64)> {
    let mut parts = date.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || date.len() != 10 {
        return None;
    }
    let start = days_from_civil(y, m, d) * 86_400_000;
    Some((start, start + 86_400_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_676_110_123), "2026-11-26T06:55:10.123Z");
        let (start, end) = day_bounds("2026-11-24").unwrap();
        assert_eq!(date_of(start), "2026-11-24");
        assert_eq!(date_of(end - 1), "2026-11-24");
        assert_eq!(date_of(end), "2026-11-25");
        assert_eq!(day_bounds("2024-02-29").map(|(s, _)| date_of(s)), Some("2024-02-29".into()));
        assert!(day_bounds("2026-13-01").is_none());
        assert!(day_bounds("yesterday").is_none());
    }
}
