//! Exponential backoff with full jitter, and `Retry-After`.
//!
//! Full jitter (a uniform wait in `[0, min(max, base * 2^(n-1))]`) spreads the retries of many
//! callers that failed together instead of sending them back in one wave (AWS architecture
//! blog, "Exponential Backoff And Jitter"; Envoy's `retry_back_off` does the same).

use std::time::Duration;

use http::header::RETRY_AFTER;
use http::HeaderMap;

/// The wait before retry number `retry` (1 for the first retry).
pub fn full_jitter(base: Duration, max: Duration, retry: u32) -> Duration {
    let ceiling = base.saturating_mul(1u32 << retry.saturating_sub(1).min(20)).min(max);
    let nanos = ceiling.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..=nanos))
}

/// The upstream's `Retry-After` in delay-seconds form (an HTTP date is ignored: clocks differ).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
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
    fn parses_delay_seconds_only() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
