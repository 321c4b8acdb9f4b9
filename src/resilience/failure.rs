//! Which classified outcomes a policy reacts to: the breaker's `failure_on` and retry's `retry_on`.
//!
//! Every attempt is classified once by [`crate::classify`] into an [`Outcome`]; a [`FailureSet`]
//! only answers "does this policy count that outcome?". Keeping the two apart is what lets an
//! operator say "429 trips nothing but is retried" without two layers disagreeing about what a
//! 429 *is* (research §3.5: users of Envoy, Istio and Linkerd all asked for this).

use serde::Serialize;

use crate::classify::{Classifier, FailureKind, Outcome};
use crate::error::ErrorKind;

/// A set of outcome classes: `5xx`, individual 5xx codes, `429`, `connect_error`, `timeout`, `reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailureSet {
    any_5xx: bool,
    /// Bit `n` set means status `500 + n` is in the set.
    codes_5xx: u128,
    too_many_requests: bool,
    connect_error: bool,
    timeout: bool,
    reset: bool,
}

impl FailureSet {
    /// The default failure definition: 5xx, connect errors, timeouts and resets; 4xx (including
    /// 429) are the caller's problem, not the backend's.
    pub const DEFAULT: FailureSet = FailureSet {
        any_5xx: true,
        codes_5xx: 0,
        too_many_requests: false,
        connect_error: true,
        timeout: true,
        reset: true,
    };

    /// Parses a list such as `[5xx, 429, connect_error]`. Errors name the bad entry.
    pub fn parse(items: &[String]) -> Result<FailureSet, String> {
        let mut set = FailureSet::default();
        for item in items {
            match item.trim() {
                "5xx" => set.any_5xx = true,
                "429" => set.too_many_requests = true,
                "connect_error" => set.connect_error = true,
                "timeout" => set.timeout = true,
                "reset" => set.reset = true,
                other => match other.parse::<u16>() {
                    Ok(code @ 500..=599) => set.codes_5xx |= 1u128 << (code - 500),
                    _ => {
                        return Err(format!(
                            "unknown entry {other:?}: expected 5xx, a status 500..599, 429, connect_error, timeout or reset"
                        ))
                    }
                },
            }
        }
        if set == FailureSet::default() {
            return Err("the list is empty; name at least one outcome".into());
        }
        Ok(set)
    }

    /// True when `outcome` is in the set.
    pub fn contains(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Success => false,
            Outcome::Failure(FailureKind::Status(429)) => self.too_many_requests,
            Outcome::Failure(FailureKind::Status(s @ 500..=599)) => {
                self.any_5xx || self.codes_5xx & (1u128 << (s - 500)) != 0
            }
            Outcome::Failure(FailureKind::Status(_)) => false,
            Outcome::Failure(FailureKind::Timeout) => self.timeout,
            Outcome::Failure(FailureKind::Reset) => self.reset,
            Outcome::NotSent(ErrorKind::ConnectFailed | ErrorKind::NoHealthyEndpoint) => self.connect_error,
            // Our own refusals (breaker open, overloaded) say nothing about the backend.
            Outcome::NotSent(_) | Outcome::Client(_) => false,
        }
    }

    /// The classifier an attempt must use so this set can see what it names (429 is a success
    /// unless some policy counts it).
    pub fn classifier(&self) -> Classifier {
        Classifier { failure_on_429: self.too_many_requests }
    }

    /// The set as written in config, for `GET /config`.
    pub fn to_strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.any_5xx {
            out.push("5xx".to_string());
        }
        out.extend((0..100u16).filter(|n| self.codes_5xx & (1u128 << n) != 0).map(|n| (500 + n).to_string()));
        for (on, name) in [
            (self.too_many_requests, "429"),
            (self.connect_error, "connect_error"),
            (self.timeout, "timeout"),
            (self.reset, "reset"),
        ] {
            if on {
                out.push(name.to_string());
            }
        }
        out
    }
}

impl Serialize for FailureSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_strings().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_counts_5xx_and_transport_failures_not_4xx() {
        let d = FailureSet::DEFAULT;
        assert!(d.contains(Outcome::Failure(FailureKind::Status(503))));
        assert!(d.contains(Outcome::Failure(FailureKind::Timeout)));
        assert!(d.contains(Outcome::NotSent(ErrorKind::ConnectFailed)));
        assert!(!d.contains(Outcome::Failure(FailureKind::Status(429))));
        assert!(!d.contains(Outcome::NotSent(ErrorKind::CircuitOpen)));
        assert!(!d.contains(Outcome::Success));
        assert!(!d.classifier().failure_on_429);
    }

    #[test]
    fn parses_codes_and_rejects_unknown() {
        let s = FailureSet::parse(&["503".into(), "429".into()]).unwrap();
        assert!(s.contains(Outcome::Failure(FailureKind::Status(503))));
        assert!(!s.contains(Outcome::Failure(FailureKind::Status(500))));
        assert!(s.contains(Outcome::Failure(FailureKind::Status(429))));
        assert!(s.classifier().failure_on_429);
        assert_eq!(s.to_strings(), vec!["503", "429"]);
        assert!(FailureSet::parse(&["404".into()]).unwrap_err().contains("\"404\""));
        assert!(FailureSet::parse(&[]).is_err());
    }
}
