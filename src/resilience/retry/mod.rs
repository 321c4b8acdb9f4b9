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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;

use self::body::Replay;
use self::budget::Budget;
use self::config::RetryConfig;
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

    /// How long to wait before another attempt, or `None` to give this result to the caller.
    fn next(
        &self,
        attempt: u32,
        outcome: Outcome,
        result: &Result<Response<ProxyBody>, BoxError>,
        resend_safe: bool,
        replayable: bool,
        deadline: Option<Instant>,
    ) -> Option<Duration> {
        let c = &self.config;
        if attempt >= c.attempts || !c.retry_on.contains(outcome) || !replayable {
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
        if deadline.is_some_and(|at| Instant::now() + wait >= at) {
            return None;
        }
        if !self.budget.withdraw() {
            self.exhausted.increment(1);
            tracing::debug!(cluster = %self.cluster, "retry budget exhausted; returning the failure");
            return None;
        }
        Some(wait)
    }

    /// Runs `attempt` until an answer may go to the caller: the first success, or a failure
    /// that another attempt may not or need not follow (see [`RetryPolicy::next`]).
    pub async fn run<F, Fut>(
        &self,
        mut req: ProxyRequest,
        deadline: Option<Instant>,
        mut attempt: F,
    ) -> Result<Response<ProxyBody>, BoxError>
    where
        F: FnMut(ProxyRequest) -> Fut,
        Fut: Future<Output = Result<Response<ProxyBody>, BoxError>>,
    {
        self.budget.deposit();
        let resend_safe = (crate::proxy::headers::idempotent(req.method())
            || req.headers().contains_key(&IDEMPOTENCY_KEY))
            && req.extensions().get::<crate::proxy::stack::ResendOnlyIfNotSent>().is_none();
        if self.config.attempts <= 1 {
            return with_attempts(attempt(req).await, 1);
        }
        let body = std::mem::replace(req.body_mut(), crate::proxy::body::empty());
        let mut replay = Replay::prepare(body, req.headers(), self.config.max_replay_body).await?;
        // The first attempt takes the request itself: its header map has room for what the
        // path adds (an exact-size copy reallocated on the next insert). Later attempts get a
        // request rebuilt from the head as it is now, before anything is added.
        let head = Head::of(&req);
        let mut first = Some(req);
        let mut n = 1u32;
        loop {
            let mut req = first.take().unwrap_or_else(|| Box::new(head.request()));
            *req.body_mut() = replay.take().unwrap_or_else(crate::proxy::body::empty);
            let result = attempt(req).await;
            let outcome = outcome_of(&self.classifier, &result);
            match self.next(n, outcome, &result, resend_safe, replay.can_replay(), deadline) {
                None => return with_attempts(result, n),
                Some(wait) => {
                    drop(result);
                    metrics::counter!(names::RETRIES_TOTAL, "cluster" => self.cluster.clone(), "reason" => outcome.label()).increment(1);
                    tokio::time::sleep(wait).await;
                    n += 1;
                }
            }
        }
    }
}

/// A request's head (method, target, version, fields, extensions) as the first attempt got it,
/// for the attempts after it. The fields are kept in a list, not a map: every request pays
/// for this copy and few retry, and a map's clone allocates twice (callgrind, session 13: the
/// map's copy was 1.3k of 30k instructions per request; as a list a request costs 0.3k less).
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    fields: smallvec::SmallVec<[(http::HeaderName, HeaderValue); 4]>,
    extensions: http::Extensions,
}

impl Head {
    fn of<B>(req: &Request<B>) -> Head {
        Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            // Every value of a repeated field, in order (the map's iterator repeats the name).
            fields: req.headers().iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
            extensions: req.extensions().clone(),
        }
    }

    /// A request with this head and an empty body.
    fn request(&self) -> Request<ProxyBody> {
        let mut req = Request::new(crate::proxy::body::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        let headers = req.headers_mut();
        // Room for what the path adds, as the first attempt's map has.
        headers.reserve(self.fields.len() + 4);
        for (name, value) in &self.fields {
            headers.append(name.clone(), value.clone());
        }
        *req.extensions_mut() = self.extensions.clone();
        req
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
    use super::{attempts_value, Head};

    #[test]
    fn attempt_counts_render_as_decimal() {
        for n in [0u32, 1, 2, 9, 10, 12, 300] {
            assert_eq!(attempts_value(n), n.to_string().as_str());
        }
    }

    #[test]
    fn a_retry_gets_the_head_the_first_attempt_got_repeated_fields_and_all() {
        let mut first = http::Request::put("http://b/pay?x=1")
            .version(http::Version::HTTP_11)
            .header("idempotency-key", "k1")
            .header("set-thing", "a")
            .header("set-thing", "b")
            .body(())
            .unwrap();
        first.extensions_mut().insert(7u32);
        let head = Head::of(&first);
        // What the path adds to the first attempt is not in the retry's head.
        first.headers_mut().insert("x-lifeline-timeout-ms", http::HeaderValue::from_static("800"));
        let again = head.request();
        assert_eq!(again.method(), http::Method::PUT);
        assert_eq!(again.uri(), "http://b/pay?x=1");
        assert_eq!(again.version(), http::Version::HTTP_11);
        assert_eq!(again.headers()["idempotency-key"], "k1");
        assert_eq!(again.headers().get_all("set-thing").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(again.headers().get("x-lifeline-timeout-ms").is_none());
        assert_eq!(again.extensions().get::<u32>(), Some(&7));
        assert!(http_body::Body::is_end_stream(again.body()));
    }
}
