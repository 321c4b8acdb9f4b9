//! The breaker on the request path: read the gate, fail fast or call through, report the outcome.

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

    /// Reads the gate: `Err` (fail fast, the call is not made) when it is open, else what to
    /// report the call's outcome to ([`BreakerStep::report`]; `None` when this call is not
    /// recorded). Two plain calls around the attempt rather than an `async fn` wrapping it:
    /// a step of its own stored its state and the call's future again, per request.
    pub fn admit(&self) -> Result<Option<Pending<'_>>, BoxError> {
        match self.breaker.admit() {
            Admit::No { retry_after } => Err(self.breaker.open_error(retry_after)),
            Admit::Yes { record: false, .. } => Ok(None),
            Admit::Yes { epoch, probe, .. } => Ok(Some(Pending {
                breaker: &self.breaker,
                epoch,
                probe,
                start: crate::proxy::clock::now(),
                done: false,
            })),
        }
    }

    /// Reports the outcome of a call the gate admitted. A call dropped before it ends (the
    /// caller went away) reports nothing and gives a probe permit back (`Pending`'s drop).
    pub fn report(&self, pending: Option<Pending<'_>>, result: &Result<Response<ProxyBody>, BoxError>) {
        if let Some(pending) = pending {
            pending.finish(outcome_of(&self.classifier, result));
        }
    }
}

/// Reports the call's outcome once; if the call is dropped first, gives a probe permit back.
/// It borrows the breaker (the route holds it): a clone of the `Arc` would write its count,
/// on a cache line every proxy worker writes, twice per request.
pub struct Pending<'a> {
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
