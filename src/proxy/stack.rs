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
//! The whole path of a request is one future ([`RoutePath`]): two `async fn`s, the request's
//! (deadline, retries) and one attempt's (breaker, bulkhead, timer, send), with the steps
//! that only decide or record (the deadline, the breaker's gate and report, a free bulkhead
//! slot) as plain calls in them. The handler calls one [`HttpService`] whatever steps a route
//! enables. (Until session 6 each step was a tower `Layer` with a boxed future of its own:
//! about a dozen allocations per request. Until session 30 each was an `async fn` awaiting
//! the next, and each stored its arguments twice and its state beside the next one's future:
//! at 256 connections that state did not stay in the cache. BENCHMARKS.md.)

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{Request, Response};
use smallvec::SmallVec;

use super::body::{ProxyBody, ProxyRequest};
use crate::chaos::Faults;
use crate::config::RouteConfig;
use crate::error::BoxError;
use crate::resilience::breaker::layer::BreakerStep;
use crate::resilience::deadline::{self, Deadline};
use crate::resilience::limit::Limiter;
use crate::resilience::registry::RoutePolicies;
use crate::resilience::retry::RetryPolicy;
use crate::resilience::BoxFuture;
use crate::upstream::Cluster;
pub use crate::upstream::ClusterService;

/// What a route resolves to: its whole path as one boxed future per request. The future
/// borrows the route (the caller holds the runtime snapshot the route lives in), so a request
/// does not touch a reference count that every worker shares.
pub trait Route: Send + Sync + 'static {
    fn call(&self, req: ProxyRequest) -> BoxFuture<'_>;
}

/// The service every route resolves to (cheap to clone). It is also a `tower::Service`, so
/// tower's utilities can drive it.
///
/// A plain route's path is awaited inline ([`HttpService::serve`]): its future lives in the
/// caller's (the connection's task, allocated once per connection), so a request allocates
/// and copies no route future. Boxing it was a 3 KB allocation and copy per request (9 KB
/// before [`ProxyRequest`]). Other routes (the grace layer) keep a boxed future.
#[derive(Clone)]
pub struct HttpService(Kind);

#[derive(Clone)]
enum Kind {
    Path(Arc<RoutePath>),
    Dyn(Arc<dyn Route>),
}

impl HttpService {
    pub fn new(route: impl Route) -> Self {
        HttpService(Kind::Dyn(Arc::new(route)))
    }

    fn path(route: RoutePath) -> Self {
        HttpService(Kind::Path(Arc::new(route)))
    }

    /// Runs one request down the route's path. Not an `async fn`: the future is the path's
    /// own (or the boxed one), without a step of its own around it.
    pub fn serve(&self, req: ProxyRequest) -> impl Future<Output = Result<Response<ProxyBody>, BoxError>> + Send + '_ {
        match &self.0 {
            Kind::Path(path) => Either::Left(path.serve(req)),
            Kind::Dyn(route) => Either::Right(route.call(req)),
        }
    }

    /// [`HttpService::serve`] as a boxed future that owns its route (for spawned work).
    pub fn call_owned(&self, req: ProxyRequest) -> BoxFuture<'static> {
        let svc = self.clone();
        Box::pin(async move { svc.serve(req).await })
    }
}

impl tower::Service<Request<ProxyBody>> for HttpService {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Back-pressure is the bulkhead's job (a bounded queue, then 503), not readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ProxyBody>) -> BoxFuture<'static> {
        self.call_owned(ProxyRequest::new(req))
    }
}

/// Endpoints already tried by earlier attempts of the same request. The route's path keeps one
/// list per request across its retries; the balancer appends the endpoint it picks and prefers
/// endpoints not yet in the list, so a retry lands somewhere new.
///
/// The list holds a 64-bit hash of each key, not the key: cloning the endpoint's `Arc<str>`
/// wrote its count, on a cache line every proxy worker writes, on every request. Two keys of
/// one cluster hashing alike (odds about 2^-64) would only make the balancer treat an endpoint
/// as tried.
///
/// Its length is also kept outside the lock: a request's first attempt asks twice whether an
/// endpoint was tried before any was (the balancer, then the re-pick check), and answers from
/// the length alone, without locking or hashing (about 250 of the 400 instructions the list
/// cost per request, `bench/profile.py --top`, session 26).
#[derive(Debug, Default)]
pub struct TriedEndpoints {
    len: std::sync::atomic::AtomicUsize,
    list: std::sync::Mutex<SmallVec<[u64; 4]>>,
}

impl TriedEndpoints {
    pub fn contains(&self, key: &str) -> bool {
        self.contains_since(0, key)
    }

    /// Whether `key` is among the endpoints tried from the `start`-th on.
    pub fn contains_since(&self, start: usize, key: &str) -> bool {
        if self.len() <= start {
            return false;
        }
        let h = key_hash(key);
        self.list.lock().map(|l| l.iter().skip(start).any(|k| *k == h)).unwrap_or(false)
    }

    /// How many endpoints were tried so far.
    pub fn len(&self) -> usize {
        self.len.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&self, key: &str) {
        let h = key_hash(key);
        if let Ok(mut l) = self.list.lock() {
            l.push(h);
            self.len.store(l.len(), std::sync::atomic::Ordering::Release);
        }
    }
}

/// FNV-1a: a few instructions per byte of an `ip:port` key, no state to seed.
fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Marks a request that may be resent only if it was never sent (a failure classified
/// `NotSent`), even when it carries an `Idempotency-Key`. The grace forwarder sets it: an
/// ambiguous forward must be resolved by asking the backend before any resend (design
/// invariant 4), never by the retry layer resending on its own.
#[derive(Debug, Clone, Copy)]
pub struct ResendOnlyIfNotSent;

/// One route's path: a request's whole path is one state machine, in its connection's task
/// ([`HttpService::serve`]).
pub struct RoutePath {
    timeout: Duration,
    per_try: Option<Duration>,
    cluster: Arc<str>,
    retry: Option<Arc<RetryPolicy>>,
    breaker: Option<BreakerStep>,
    limit: Option<Arc<Limiter>>,
    target: ClusterService,
}

impl RoutePath {
    /// The request's path: its deadline, then its attempts. The request stays here, in this
    /// frame, for all of them: each attempt borrows it, so a retry needs no copy of it (a copy
    /// of the head per request was ~450 instructions, BENCHMARKS.md session 18).
    async fn serve(&self, mut req: ProxyRequest) -> Result<Response<ProxyBody>, BoxError> {
        let d = deadline::begin(self.timeout, &self.cluster, req.headers())?;
        let Some(retry) = &self.retry else {
            return self.attempt(&mut req, &d, None).await;
        };
        let tried = TriedEndpoints::default();
        let mut attempts = retry.begin(&mut req, &d).await?;
        loop {
            attempts.prepare(&mut req);
            let result = self.attempt(&mut req, &d, Some(&tried)).await;
            match attempts.after(result) {
                ControlFlow::Break(answer) => return answer,
                ControlFlow::Continue(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// One attempt: the breaker's gate, a bulkhead slot, then the send within the attempt's
    /// time; the outcome goes back to the breaker. One `async fn` with plain calls for the
    /// steps around the send: each step an `async fn` of its own (around a closure making the
    /// next) stored its arguments twice and its state beside the next step's future, and every
    /// request wrote all of it (session 30: four steps gone, BENCHMARKS.md). A breaker that
    /// fails fast or a full bulkhead never starts the send.
    async fn attempt(
        &self,
        req: &mut ProxyRequest,
        d: &Deadline,
        tried: Option<&TriedEndpoints>,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let pending = match &self.breaker {
            Some(breaker) => breaker.admit()?,
            None => None,
        };
        let result = 'call: {
            // The slot is kept until the response body ends or is dropped: a slow download
            // still occupies the backend.
            let permit = match &self.limit {
                None => None,
                Some(limit) => match limit.try_acquire() {
                    Some(permit) => Some(permit),
                    // Queued (or shed): boxed, so its timer and waiter are not part of every
                    // request's state.
                    None => match Box::pin(limit.acquire_until(Some(d))).await {
                        Ok(permit) => Some(permit),
                        Err(e) => break 'call Err(e),
                    },
                },
            };
            let time = match deadline::attempt(self.per_try, &self.cluster, d, req) {
                Ok(time) => time,
                Err(e) => break 'call Err(e),
            };
            match crate::proxy::timers::until(time.until, self.target.send(req, tried)).await {
                Ok(Ok(mut resp)) => {
                    if let Some(permit) = permit {
                        resp.body_mut().hold(permit);
                    }
                    Ok(resp)
                }
                Ok(Err(e)) => Err(e),
                Err(()) => Err(time.expired(&self.cluster)),
            }
        };
        if let Some(breaker) = &self.breaker {
            breaker.report(pending, &result);
        }
        result
    }
}

/// Builds the service for one route.
pub fn build(
    route: &RouteConfig,
    cluster: &Arc<Cluster>,
    policies: RoutePolicies,
    faults: &Arc<Faults>,
) -> HttpService {
    HttpService::path(RoutePath {
        timeout: route.timeout,
        per_try: policies.per_try_timeout,
        cluster: cluster.name().into(),
        retry: policies.retry,
        breaker: policies.breaker,
        limit: policies.limit,
        target: ClusterService {
            cluster: cluster.clone(),
            classifier: policies.classifier,
            faults: faults.clone(),
            route: Some(route.name.as_str().into()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::TriedEndpoints;

    #[test]
    fn tried_endpoints_are_found_by_key_and_since_a_start() {
        let tried = TriedEndpoints::default();
        assert!(tried.is_empty());
        assert!(!tried.contains("10.0.0.1:8080"), "nothing tried yet");
        tried.push("10.0.0.1:8080");
        tried.push("10.0.0.2:8080");
        assert!(tried.contains("10.0.0.1:8080") && tried.contains("10.0.0.2:8080"));
        assert!(!tried.contains("10.0.0.3:8080"));
        assert!(!tried.contains("10.0.0.1:808"), "a prefix is another key");
        assert!(!tried.contains_since(1, "10.0.0.1:8080"), "tried before this call");
        assert!(tried.contains_since(1, "10.0.0.2:8080"));
        assert!(!tried.contains_since(2, "10.0.0.2:8080"), "none tried from the third on");
        assert_eq!(tried.len(), 2);
    }
}
