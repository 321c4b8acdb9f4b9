//! Layers that keep a sick upstream from dragging callers down: deadlines, budgeted retries,
//! circuit breakers and concurrency limits.
//!
//! ```text
//! deadline  -> retry -> breaker -> limit -> attempt timeout -> cluster
//! (overall)    (budget, backoff,  (gate read   (bulkhead,     (per try; passes the
//!               replayable body)   on the path) bounded queue)  remaining budget upstream)
//! ```
//! Each is a step of the route's path, composed by [`crate::proxy::stack`] into one future per
//! request (an `async fn` calling the next, so the whole path is one state machine and one
//! allocation, not a boxed future per layer). The stateful parts
//! (breakers, budgets, bulkheads) live in a [`registry::Registry`] carried by the runtime
//! snapshot, so a reload that leaves a cluster's config unchanged keeps their state (design
//! invariant 8). Decisions run off the path: each breaker's policy is a background task fed
//! with classified outcomes; the path only reads its gate.

pub mod admin;
pub mod breaker;
pub mod config;
pub mod deadline;
pub mod failure;
pub mod limit;
pub mod registry;
pub mod retry;

pub use config::{Problems, ResilienceConfig};

use http::Response;

use crate::classify::{classify_error, Classifier, Outcome};
use crate::error::BoxError;
use crate::proxy::body::ProxyBody;

/// The future a route's whole path returns.
pub type BoxFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<ProxyBody>, BoxError>> + Send + 'a>>;

/// An attempt's outcome: from the status (with the route's classifier, as the cluster service
/// classified it for outlier detection) or from the typed error, by [`crate::classify`].
pub fn outcome_of(classifier: &Classifier, result: &Result<Response<ProxyBody>, BoxError>) -> Outcome {
    match result {
        Ok(resp) => classifier.status(resp.status()),
        Err(e) => classify_error(e),
    }
}
