//! Exponential backoff with full jitter, and `Retry-After`.
//!
//! Full jitter (a uniform wait in `[0, min(max, base * 2^(n-1))]`) spreads the retries of many
//! callers that failed together instead of sending them back in one wave (AWS architecture
//! blog, "Exponential Backoff And Jitter"; Envoy's `retry_back_off` does the same).

use std::time::Duration;

use http::header::RETRY_AFTER;
use http::Response;

/// The wait before retry number `retry` (1 for the first retry).
pub fn full_jitter(base: Duration, max: Duration, retry: u32) -> Duration {
    let ceiling = base.saturating_mul(1u32 << retry.saturating_sub(1).min(20)).min(max);
    let nanos = ceiling.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..=nanos))
}

/// The upstream's `Retry-After` (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date turned
/// into the wait from now on this host's clock (a date already past is no wait). Clocks can
/// differ; callers cap what they honour (`retry_after_max`), so a backend clock far ahead
/// costs a refused retry, not a stuck request. Anything else is ignored.
/// Read from the answer's map or from the backend's fields passed through.
pub fn retry_after(resp: &Response<crate::proxy::body::ProxyBody>) -> Option<Duration> {
    let v = std::str::from_utf8(crate::proxy::passthrough::response_header(resp, &RETRY_AFTER)?).ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_under_the_growing_ceiling() {
        let (base, max) = (Duration::from_millis(10), Duration::from_millis(50));
        for retry in 1..8 {
            let ceiling = Duration::from_millis(10 * (1 << (retry - 1))).min(max);
            for _ in 0..50 {
                assert!(full_jitter(base, max, retry) <= ceiling);
            }
        }
    }

    #[test]
    fn parses_delay_seconds_and_http_dates() {
        let mut r = Response::new(crate::proxy::body::empty());
        assert_eq!(retry_after(&r), None);
        let h = r.headers_mut();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&r), Some(Duration::from_secs(3)));
        let h = r.headers_mut();
        h.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&r), Some(Duration::ZERO), "a date in the past: no wait");
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        r.headers_mut().insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let wait = retry_after(&r).expect("an HTTP-date is honoured");
        // Whole seconds on the wire: 119..=120 s from now.
        assert!(wait > Duration::from_secs(118) && wait <= Duration::from_secs(120), "{wait:?}");
        for junk in ["soon", "-1", "1.5", ""] {
            r.headers_mut().insert(RETRY_AFTER, junk.parse().unwrap());
            assert_eq!(retry_after(&r), None, "{junk:?}");
        }
    }
}
