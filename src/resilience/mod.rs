//! Layers that keep a sick upstream from dragging callers down: deadlines, budgeted retries,
//! circuit breakers and concurrency limits.
//!
//! ```text
//! deadline  -> retry -> breaker -> limit -> attempt timeout -> cluster
//! (overall)    (budget, backoff,  (gate read   (bulkhead,     (per try; passes the
//!               replayable body)   on the path) bounded queue)  remaining budget upstream)
//! ```
//! Each is a tower layer built per route by [`crate::proxy::stack`]. The stateful parts
//! (breakers, budgets, bulkheads) live in a [`registry::Registry`] carried by the runtime
//! snapshot, so a reload that leaves a cluster's config unchanged keeps their state (design
//! invariant 8). Decisions run off the path: each breaker's policy is a background task fed
//! with classified outcomes; the path only reads its gate.

pub mod admin;
pub mod breaker;
pub mod config;
pub mod deadline;
pub mod failure;
mod guard;
pub mod limit;
pub mod registry;
pub mod retry;

pub use config::{Problems, ResilienceConfig};

use http::Response;

use crate::classify::{classify_error, Classifier, Outcome};
use crate::error::BoxError;
use crate::proxy::body::ProxyBody;

/// The future every resilience layer returns.
pub type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

/// Calls `svc` and boxes its future at once. Doing this in a plain function, not inside an
/// `async` block, sidesteps rustc's higher-ranked `Send` inference bug around `dyn Error`.
pub fn call_boxed<S>(svc: &mut S, req: http::Request<ProxyBody>) -> BoxFuture
where
    S: tower::Service<http::Request<ProxyBody>, Response = Response<ProxyBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    Box::pin(svc.call(req))
}

/// An attempt's outcome: as the cluster service classified it (carried in the response's
/// extensions), else from the status or the typed error by [`crate::classify`].
pub fn outcome_of(classifier: &Classifier, result: &Result<Response<ProxyBody>, BoxError>) -> Outcome {
    match result {
        Ok(resp) => resp.extensions().get::<Outcome>().copied().unwrap_or_else(|| classifier.status(resp.status())),
        Err(e) => classify_error(e),
    }
}
