//! Deadlines: one overall budget per request, shared by every attempt, and passed upstream.
//!
//! [`begin`] (at the top of the route's path) fixes the request's deadline: the route's
//! timeout, or the caller's `x-lifeline-timeout-ms` / `grpc-timeout` when that is shorter. It
//! covers retries, backoff and queueing; when it runs out the caller gets `deadline_exceeded`
//! (504). [`attempt`] (at the start of each attempt) applies the per-try timeout and tells the
//! upstream how long it has left in the same header the caller used, so a chain of services
//! shares one deadline instead of each hop starting a fresh timeout (research §3.7: Envoy,
//! Istio and Linkerd users all ask for this).
//!
//! The deadline is one instant, not a timer around the whole path: every wait on the path
//! ends by it on its own (the attempt's timer, the bulkhead's queue, the read of a body kept
//! for a replay; a backoff that would cross it is not started). So a request arms one timer,
//! where a timer around the path and one around the attempt were both armed and polled on
//! every wake of the request (callgrind, session 21: ~300 instructions per request fewer).

use std::future::Future;
use std::time::Duration;

use http::header::HeaderName;
use http::HeaderMap;
use tokio::time::Instant;

use crate::error::{BoxError, ErrorKind, LifelineError};
use crate::proxy::body::{Budget, ProxyRequest};
use crate::proxy::headers::X_LIFELINE_TIMEOUT_MS;

pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The request's deadline, shared by all of its attempts.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    /// The caller spoke gRPC: propagate as `grpc-timeout`.
    pub grpc: bool,
    /// The caller's own budget was shorter than the route's timeout.
    from_caller: bool,
    budget: Duration,
}

impl Deadline {
    /// The answer for a request whose deadline ran out outside an attempt (`deadline_exceeded`).
    pub fn expired(&self, cluster: &str) -> BoxError {
        let whose = if self.from_caller { "the caller's deadline" } else { "the route's timeout" };
        LifelineError::new(
            ErrorKind::DeadlineExceeded,
            format!("{whose} of {:?} ran out (cluster {cluster})", self.budget),
        )
        .with_cluster(cluster)
        .boxed()
    }
}

/// Parses `grpc-timeout` (`<1-8 digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if !v.is_ascii() {
        return None;
    }
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    if num.is_empty() || num.len() > 8 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The caller's own budget, if it sent one. A malformed header is the caller's error.
/// `x-lifeline-timeout-ms` wins over `grpc-timeout` when both came; one walk of the fields
/// finds either (two lookups walked them twice: ~100 instructions per request).
fn incoming_budget(headers: &HeaderMap) -> Result<Option<(Duration, bool)>, LifelineError> {
    let (ours, grpc) = crate::proxy::headers::field_pair(headers, &X_LIFELINE_TIMEOUT_MS, &GRPC_TIMEOUT);
    if let Some(v) = ours {
        let ms = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
            LifelineError::new(ErrorKind::BadRequest, "x-lifeline-timeout-ms must be a whole number of milliseconds")
        })?;
        return Ok(Some((Duration::from_millis(ms), false)));
    }
    if let Some(v) = grpc {
        let d = v.to_str().ok().and_then(parse_grpc_timeout).ok_or_else(|| {
            LifelineError::new(ErrorKind::BadRequest, "grpc-timeout must be 1-8 digits and a unit (H, M, S, m, u, n)")
        })?;
        return Ok(Some((d, true)));
    }
    Ok(None)
}

/// Fixes the request's overall deadline: the route's `timeout`, or the caller's own budget
/// when that is shorter. Every attempt shares it and ends every wait by it (see the module's
/// notes); when it runs out, the caller gets `deadline_exceeded`. A malformed budget is the
/// caller's error (400), a zero one runs out at once.
///
/// A plain function the route's path calls at its top, not an `async fn` around the rest of
/// the path: each `async fn` step stores its arguments twice and its own state beside the
/// next step's future, all of it written per request.
pub fn begin(timeout: Duration, cluster: &str, headers: &HeaderMap) -> Result<Deadline, BoxError> {
    let (budget, grpc, from_caller) = match incoming_budget(headers) {
        Err(e) => return Err(e.boxed()),
        Ok(Some((d, grpc))) if d < timeout => (d, grpc, true),
        Ok(Some((_, grpc))) => (timeout, grpc, false),
        Ok(None) => (timeout, false, false),
    };
    let deadline = Deadline { at: crate::proxy::clock::now() + budget, grpc, from_caller, budget };
    if budget.is_zero() {
        return Err(deadline.expired(cluster));
    }
    Ok(deadline)
}

/// Runs `wait` (a wait outside an attempt: a body read for a replay) until the deadline.
pub async fn bounded<T, Fut>(deadline: &Deadline, cluster: &str, wait: Fut) -> Result<T, BoxError>
where
    Fut: Future<Output = Result<T, BoxError>>,
{
    match tokio::time::timeout_at(deadline.at, wait).await {
        Ok(result) => result,
        Err(_) => Err(deadline.expired(cluster)),
    }
}

/// One attempt's time: until the per-try timeout or what is left of the request's deadline,
/// whichever comes first ([`attempt`]).
#[derive(Debug, Clone, Copy)]
pub struct Try {
    /// When the attempt's timer fires.
    pub until: Instant,
    budget: Duration,
    /// The per-try timeout, not the deadline, is what ends the attempt.
    per_try_binding: bool,
}

impl Try {
    /// The answer for an attempt whose time ran out.
    pub fn expired(&self, cluster: &str) -> BoxError {
        let (kind, what) = if self.per_try_binding {
            (ErrorKind::UpstreamTimeout, "per-try timeout")
        } else {
            (ErrorKind::DeadlineExceeded, "deadline")
        };
        LifelineError::new(kind, format!("no answer from cluster {cluster} within the {what} of {:?}", self.budget))
            .with_cluster(cluster)
            .boxed()
    }
}

/// Starts one attempt: its time is the per-try timeout or what is left of `deadline`, and the
/// upstream is told how long it has, in the header the caller used (set, not added: every
/// attempt of a request sends the same request). The caller runs the send until
/// [`Try::until`] and answers [`Try::expired`] if it did not finish by then. `Err` when no
/// time is left for an attempt at all.
pub fn attempt(
    per_try: Option<Duration>,
    cluster: &str,
    deadline: &Deadline,
    req: &mut ProxyRequest,
) -> Result<Try, BoxError> {
    let now = crate::proxy::clock::now();
    let left = deadline.at.saturating_duration_since(now);
    let budget = per_try.map_or(left, |p| left.min(p));
    let ms = budget.as_millis().min(u128::from(u64::MAX)) as u64;
    // Written by the upstream client as it encodes the head (`body::Hop`).
    req.hop_mut().budget = Some(Budget { ms, grpc: deadline.grpc });
    if budget.is_zero() {
        return Err(LifelineError::new(
            ErrorKind::DeadlineExceeded,
            format!("no time left for an attempt to cluster {cluster}"),
        )
        .with_cluster(cluster)
        .boxed());
    }
    Ok(Try { until: now + budget, budget, per_try_binding: per_try.is_some_and(|p| p <= budget) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn incoming_header_forms() {
        let mut h = HeaderMap::new();
        h.insert(&X_LIFELINE_TIMEOUT_MS, "250".parse().unwrap());
        assert_eq!(incoming_budget(&h).unwrap(), Some((Duration::from_millis(250), false)));
        h.insert(&X_LIFELINE_TIMEOUT_MS, "soon".parse().unwrap());
        assert_eq!(incoming_budget(&h).unwrap_err().kind, ErrorKind::BadRequest);
        let mut h = HeaderMap::new();
        h.insert(&GRPC_TIMEOUT, "40m".parse().unwrap());
        assert_eq!(incoming_budget(&h).unwrap(), Some((Duration::from_millis(40), true)));
        // Both: Lifeline's own header wins, whichever came first.
        h.insert(&X_LIFELINE_TIMEOUT_MS, "90".parse().unwrap());
        assert_eq!(incoming_budget(&h).unwrap(), Some((Duration::from_millis(90), false)));
        // A map past the walking size (12 fields) is looked up by hash; the answers are the same.
        for i in 0..12 {
            h.insert(http::HeaderName::try_from(format!("x-filler-{i}")).unwrap(), "1".parse().unwrap());
        }
        assert_eq!(incoming_budget(&h).unwrap(), Some((Duration::from_millis(90), false)));
        h.remove(&X_LIFELINE_TIMEOUT_MS);
        assert_eq!(incoming_budget(&h).unwrap(), Some((Duration::from_millis(40), true)));
        h.insert(&GRPC_TIMEOUT, "forever".parse().unwrap());
        assert_eq!(incoming_budget(&h).unwrap_err().kind, ErrorKind::BadRequest);
        h.remove(&GRPC_TIMEOUT);
        assert_eq!(incoming_budget(&h).unwrap(), None);
    }
}
