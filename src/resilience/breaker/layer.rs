//! The breaker on the request path: read the gate, fail fast or call through, report the outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::gate::Admit;
use super::Breaker;
use crate::classify::{Classifier, Outcome};
use crate::error::BoxError;
use crate::proxy::body::ProxyBody;
use crate::resilience::{call_boxed, outcome_of};

#[derive(Clone)]
pub struct BreakerLayer {
    breaker: Arc<Breaker>,
    classifier: Classifier,
}

impl BreakerLayer {
    /// `classifier` is the route's (it only matters for responses that lack a classified outcome).
    pub fn new(breaker: Arc<Breaker>, classifier: Classifier) -> Self {
        BreakerLayer { breaker, classifier }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;
    fn layer(&self, inner: S) -> BreakerService<S> {
        BreakerService { inner, breaker: self.breaker.clone(), classifier: self.classifier }
    }
}

#[derive(Clone)]
pub struct BreakerService<S> {
    inner: S,
    breaker: Arc<Breaker>,
    classifier: Classifier,
}

/// Reports the call's outcome once; if the call is dropped first, gives a probe permit back.
struct Pending {
    breaker: Arc<Breaker>,
    epoch: u64,
    probe: bool,
    start: Instant,
    done: bool,
}

impl Pending {
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
                let slow = cfg.slow_call.is_some_and(|d| self.start.elapsed() >= d);
                self.breaker.record(self.epoch, failed, slow, self.probe);
            }
            None => self.breaker.cancelled(self.epoch, self.probe),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.cancelled(self.epoch, self.probe);
        }
    }
}

impl<S> Service<Request<ProxyBody>> for BreakerService<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        match self.breaker.admit() {
            Admit::No { retry_after } => {
                let err = self.breaker.open_error(retry_after);
                Box::pin(std::future::ready(Err(err)))
            }
            Admit::Yes { record: false, .. } => call_boxed(&mut self.inner, req),
            Admit::Yes { epoch, probe, .. } => {
                let pending =
                    Pending { breaker: self.breaker.clone(), epoch, probe, start: Instant::now(), done: false };
                let fut = call_boxed(&mut self.inner, req);
                let classifier = self.classifier;
                Box::pin(async move {
                    let result = fut.await;
                    pending.finish(outcome_of(&classifier, &result));
                    result
                })
            }
        }
    }
}
