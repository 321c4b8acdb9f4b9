//! Retries that are safe, budgeted and never a storm.
//!
//! Each request may be attempted up to `attempts` times, but only when another attempt cannot do
//! harm: the method is idempotent, the request carries an `Idempotency-Key`, or the failure
//! happened before anything was sent (design invariant 7). Only outcomes in `retry_on` are
//! retried; every retry is paid from the scope's [`budget::Budget`]; waits use full-jitter
//! backoff or the upstream's `Retry-After` (up to a cap); no retry starts that the request's
//! deadline could not cover; the body is replayed only when it fit the replay cap. Each attempt
//! goes through the route's [`TriedEndpoints`](crate::proxy::stack::TriedEndpoints) list, so
//! the balancer prefers an endpoint not tried yet.
//! The response says how many attempts it took (`x-lifeline-attempts`).

pub mod backoff;
pub mod body;
pub mod budget;
pub mod config;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response};
use tokio::time::Instant;

use self::body::Replay;
use self::budget::Budget;
use self::config::RetryConfig;
use super::deadline::{self, Deadline};
use super::outcome_of;
use crate::classify::{Classifier, Outcome};
use crate::error::{BoxError, LifelineError};
use crate::proxy::body::{ProxyBody, ProxyRequest};
use crate::proxy::headers::{IDEMPOTENCY_KEY, X_LIFELINE_ATTEMPTS};
use crate::telemetry::names;

/// Everything the retry layer of one route needs.
#[derive(Debug)]
pub struct RetryPolicy {
    pub config: RetryConfig,
    pub budget: Arc<Budget>,
    pub cluster: String,
    pub classifier: Classifier,
    exhausted: metrics::Counter,
}

impl RetryPolicy {
    pub fn new(config: RetryConfig, budget: Arc<Budget>, cluster: &str, classifier: Classifier) -> Arc<Self> {
        let exhausted = metrics::counter!(names::RETRY_BUDGET_EXHAUSTED_TOTAL, "cluster" => cluster.to_string());
        Arc::new(RetryPolicy { config, budget, cluster: cluster.to_string(), classifier, exhausted })
    }

    /// How long to wait before another attempt, or `None` to give this result to the caller
    /// (attempt `attempt` was not the last allowed: [`Attempts::after`] looked).
    fn next(
        &self,
        attempt: u32,
        outcome: Outcome,
        result: &Result<Response<ProxyBody>, BoxError>,
        resend_safe: bool,
        replayable: bool,
        deadline: Instant,
    ) -> Option<Duration> {
        let c = &self.config;
        if !c.retry_on.contains(outcome) || !replayable {
            return None;
        }
        // A request that may have reached the backend is resent only if that is harmless.
        if !matches!(outcome, Outcome::NotSent(_)) && !resend_safe {
            return None;
        }
        let hinted = result.as_ref().ok().and_then(backoff::retry_after);
        let wait = match hinted {
            Some(d) if d > c.retry_after_max => return None,
            Some(d) => d,
            None => backoff::full_jitter(c.backoff_base, c.backoff_max, attempt),
        };
        if Instant::now() + wait >= deadline {
            return None;
        }
        if !self.budget.withdraw() {
            self.exhausted.increment(1);
            tracing::debug!(cluster = %self.cluster, "retry budget exhausted; returning the failure");
            return None;
        }
        Some(wait)
    }

    /// Starts one request's attempts: pays into the budget, decides whether a resend could be
    /// harmless, and reads a body that fits the replay cap into memory. The request itself
    /// stays with the caller for every attempt (the path below borrows it, and a send that
    /// failed before its first byte leaves it whole), so its head is never copied; each
    /// attempt's body comes from [`Attempts::prepare`]. Reading the body ends at `deadline`.
    pub async fn begin(&self, req: &mut ProxyRequest, deadline: &Deadline) -> Result<Attempts<'_>, BoxError> {
        self.budget.deposit();
        let resend_safe = (crate::proxy::headers::idempotent(req.method())
            || crate::proxy::headers::has_field(req.headers(), &IDEMPOTENCY_KEY))
            && req.extensions().get::<crate::proxy::stack::ResendOnlyIfNotSent>().is_none();
        let replay = if self.config.attempts <= 1 {
            // One attempt: the body stays where it is, streamed as it comes.
            Replay::Once(None)
        } else {
            let body = std::mem::replace(req.body_mut(), crate::proxy::body::empty());
            let bodyless = http_body::Body::is_end_stream(&body);
            let read = Replay::prepare(body, req.headers(), self.config.max_replay_body);
            if bodyless {
                // Nothing to wait for (no timer armed).
                read.await?
            } else {
                deadline::bounded(deadline, &self.cluster, read).await?
            }
        };
        Ok(Attempts { policy: self, replay, resend_safe, deadline: deadline.at, n: 0 })
    }
}

/// The attempts of one request ([`RetryPolicy::begin`]). The caller loops: [`Attempts::prepare`]
/// the request, send it, and hand the result to [`Attempts::after`], which says whether it is
/// the answer or how long to wait before the next attempt.
pub struct Attempts<'p> {
    policy: &'p RetryPolicy,
    replay: Replay,
    resend_safe: bool,
    deadline: Instant,
    /// Attempts started so far.
    n: u32,
}

impl Attempts<'_> {
    /// Gives `req` the body for the next attempt.
    pub fn prepare(&mut self, req: &mut ProxyRequest) {
        self.n += 1;
        if let Some(body) = self.replay.take() {
            *req.body_mut() = body;
        }
    }

    /// `Break` with the answer for the caller (the first success, or a failure that another
    /// attempt may not or need not follow, see [`RetryPolicy::next`]), marked with the number
    /// of attempts; or `Continue` with the wait before another attempt.
    pub fn after(
        &mut self,
        result: Result<Response<ProxyBody>, BoxError>,
    ) -> ControlFlow<Result<Response<ProxyBody>, BoxError>, Duration> {
        let p = self.policy;
        // The last allowed attempt's result is the answer, whatever it is (not classified).
        if self.n >= p.config.attempts {
            return ControlFlow::Break(with_attempts(result, self.n));
        }
        let outcome = outcome_of(&p.classifier, &result);
        match p.next(self.n, outcome, &result, self.resend_safe, self.replay.can_replay(), self.deadline) {
            None => ControlFlow::Break(with_attempts(result, self.n)),
            Some(wait) => {
                metrics::counter!(names::RETRIES_TOTAL, "cluster" => p.cluster.clone(), "reason" => outcome.label())
                    .increment(1);
                ControlFlow::Continue(wait)
            }
        }
    }
}

/// The `x-lifeline-attempts` value: a static string for the usual counts (this runs on every
/// answer; `HeaderValue::from(u32)` allocates twice).
fn attempts_value(attempts: u32) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(attempts as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(attempts),
    }
}

/// Tells the caller how many attempts the answer took.
fn with_attempts(
    result: Result<Response<ProxyBody>, BoxError>,
    attempts: u32,
) -> Result<Response<ProxyBody>, BoxError> {
    match result {
        Ok(mut resp) => {
            crate::proxy::passthrough::set_header(&mut resp, X_LIFELINE_ATTEMPTS.clone(), attempts_value(attempts));
            Ok(resp)
        }
        Err(err) => match err.downcast::<LifelineError>() {
            Ok(le) => Err(Box::new(le.with_attempts(attempts))),
            Err(other) => Err(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::attempts_value;

    #[test]
    fn attempt_counts_render_as_decimal() {
        for n in [0u32, 1, 2, 9, 10, 12, 300] {
            assert_eq!(attempts_value(n), n.to_string().as_str());
        }
    }
}
