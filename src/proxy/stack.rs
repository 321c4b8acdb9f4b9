//! THE composition of the per-route request path.
//!
//! ```text
//! (proxy handler: request id, limits, route match, respond, telemetry)
//!   -> deadline        overall route timeout across retries (resilience)
//!   -> grace           settlement routes only: backend unavailable -> journal -> 202 (grace);
//!                      wrapped around this whole stack by `grace::wrap` (runtime.rs), outside the
//!                      deadline, so a timeout is an outcome it journals, not a cancellation
//!   -> retry           budgeted; idempotent, Idempotency-Key, or NotSent only (resilience)
//!   -> breaker         per cluster / route: open -> fast fail (resilience)
//!   -> limit           concurrency cap + bounded pending queue (resilience)
//!   -> cluster         pick an endpoint by priority/health, pooled HTTP client (upstream)
//!        -> attempt timeout, fault injection (chaos), client
//! ```
//! Resilience layers are present only when the route's (or its cluster's) config has the block;
//! the deadline and attempt layers are always there.
//! Each layer is a tower `Layer`; the result is boxed once per route so the handler calls one
//! `HttpService` regardless of which layers a route enables.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

use super::body::ProxyBody;
use crate::chaos::Faults;
use crate::config::RouteConfig;
use crate::error::BoxError;
use crate::resilience::deadline::{AttemptLayer, DeadlineLayer};
use crate::resilience::registry::RoutePolicies;
use crate::upstream::Cluster;
pub use crate::upstream::ClusterService;

/// The service every route resolves to.
pub type HttpService = BoxCloneSyncService<Request<ProxyBody>, Response<ProxyBody>, BoxError>;

/// What every layer may want to know about the request, carried in its extensions.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub request_id: HeaderValue,
    pub route: Arc<str>,
    pub cluster: Arc<str>,
    pub received: Instant,
}

/// Endpoints already tried by earlier attempts of the same request. The retry layer inserts one
/// shared list into every attempt's extensions; the balancer appends the endpoint it picks and
/// prefers endpoints not yet in the list.
#[derive(Debug, Clone, Default)]
pub struct TriedEndpoints(pub Arc<std::sync::Mutex<Vec<Arc<str>>>>);

/// Marks a request that may be resent only if it was never sent (a failure classified
/// `NotSent`), even when it carries an `Idempotency-Key`. The grace forwarder sets it: an
/// ambiguous forward must be resolved by asking the backend before any resend (design
/// invariant 4), never by the retry layer resending on its own.
#[derive(Debug, Clone, Copy)]
pub struct ResendOnlyIfNotSent;

/// Builds the service for one route.
pub fn build(
    route: &RouteConfig,
    cluster: &Arc<Cluster>,
    policies: RoutePolicies,
    faults: &Arc<Faults>,
) -> HttpService {
    let svc = ServiceBuilder::new()
        .layer(DeadlineLayer::new(route.timeout, cluster.name()))
        .option_layer(policies.retry)
        .option_layer(policies.breaker)
        .option_layer(policies.limit)
        .layer(AttemptLayer::new(policies.per_try_timeout, cluster.name()))
        .service(ClusterService { cluster: cluster.clone(), classifier: policies.classifier, faults: faults.clone() });
    BoxCloneSyncService::new(svc)
}
