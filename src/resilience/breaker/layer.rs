//! The breaker on the request path: read the gate, fail fast or call through, report the outcome.

use std::future::Future;
use std::sync::Arc;

use http::Response;
use tokio::time::Instant;

use super::gate::Admit;
use super::Breaker;
use crate::classify::{Classifier, Outcome};
use crate::error::BoxError;
use crate::proxy::body::ProxyBody;
use crate::resilience::outcome_of;

/// A breaker as one step of a route's path.
#[derive(Clone)]
pub struct BreakerStep {
    breaker: Arc<Breaker>,
    classifier: Classifier,
}

impl BreakerStep {
    /// `classifier` is the route's (it only matters for responses that lack a classified outcome).
    pub fn new(breaker: Arc<Breaker>, classifier: Classifier) -> Self {
        BreakerStep { breaker, classifier }
    }

    /// Runs `call` if the gate admits it (else fails fast, without calling it), and reports
    /// its outcome. (`call` makes the future rather than being one: an `async fn` stores its
    /// arguments and then moves them into its body, so a future passed in takes its size twice.)
    pub async fn around<F, Fut>(&self, call: F) -> Result<Response<ProxyBody>, BoxError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Response<ProxyBody>, BoxError>>,
    {
        match self.breaker.admit() {
            Admit::No { retry_after } => Err(self.breaker.open_error(retry_after)),
            Admit::Yes { record: false, .. } => call().await,
            Admit::Yes { epoch, probe, .. } => {
                let pending =
                    Pending { breaker: &self.breaker, epoch, probe, start: crate::proxy::clock::now(), done: false };
                let result = call().await;
                pending.finish(outcome_of(&self.classifier, &result));
                result
            }
        }
    }
}

/// Reports the call's outcome once; if the call is dropped first, gives a probe permit back.
/// It borrows the breaker (the route holds it): a clone of the `Arc` would write its count,
/// on a cache line every proxy worker writes, twice per request.
struct Pending<'a> {
    breaker: &'a Breaker,
    epoch: u64,
    probe: bool,
    start: Instant,
    done: bool,
}

impl Pending<'_> {
    fn finish(mut self, outcome: Outcome) {
        self.done = true;
        let cfg = &self.breaker.config;
        let counted = match outcome {
            Outcome::Success => Some(false),
            o if cfg.failure_on.contains(o) => Some(true),
            // An answer the config does not count as failure shows a working backend.
            Outcome::Failure(crate::classify::FailureKind::Status(_)) => Some(false),
            // Our own refusals and excluded transport failures say nothing either way.
            _ => None,
        };
        match counted {
            Some(failed) => {
                // One clock read for both the slow-call check and the outcome's time.
                let now = crate::proxy::clock::now();
                let slow = cfg.slow_call.is_some_and(|d| now.saturating_duration_since(self.start) >= d);
                self.breaker.record_at(self.epoch, failed, slow, self.probe, now);
            }
            None => self.breaker.cancelled(self.epoch, self.probe),
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.cancelled(self.epoch, self.probe);
        }
    }
}
