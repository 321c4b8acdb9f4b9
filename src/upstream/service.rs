//! The innermost service of every route: pick an endpoint, send, count the outcome.
//!
//! A connect failure means nothing left Lifeline, so the request is re-picked at once on
//! another endpoint of the cluster (even a POST: a send that failed before its first byte
//! leaves the request whole, see [`super::SendFailure`]), up to once per endpoint. That costs
//! no retry budget: the retry layer above never sees it.
//! Every endpoint tried is appended to the request's [`TriedEndpoints`] (kept across the
//! request's retries), and the balancer avoids those when it can, so a retry lands somewhere new.

use std::sync::Arc;

use http::Response;

use super::{Cluster, SendFailure};
use crate::chaos::Faults;
use crate::classify::{classify_error, Classifier};
use crate::error::{BoxError, ErrorKind, LifelineError};
use crate::proxy::body::{ProxyBody, ProxyRequest};
use crate::proxy::stack::TriedEndpoints;

/// Sends a request to one endpoint of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterService {
    pub cluster: Arc<Cluster>,
    pub classifier: Classifier,
    /// Chaos faults, applied innermost so they look exactly like upstream faults.
    pub faults: Arc<Faults>,
    /// The route this service sends for (chaos faults may target one route).
    pub route: Option<Arc<str>>,
}

impl ClusterService {
    /// A service without chaos faults.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        ClusterService { cluster, classifier: Classifier::default(), faults: Arc::default(), route: None }
    }

    /// Sends `req` to one endpoint, re-picking on a connect failure. `tried` lists the
    /// endpoints earlier attempts of the same request went to; the pick is added to it.
    pub async fn send(
        &self,
        req: &mut ProxyRequest,
        tried: Option<&TriedEndpoints>,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let (cluster, classifier) = (&*self.cluster, self.classifier);
        cluster.wait_ready().await;
        // One list for the endpoints earlier attempts tried and those this call tries (the ones
        // from `start` on).
        let local = TriedEndpoints::default();
        let list = tried.unwrap_or(&local);
        let start = list.len();
        loop {
            let Some(endpoint) = cluster.pick_avoiding(&|key: &str| list.contains(key)) else {
                return Err(no_healthy(cluster));
            };
            if list.contains_since(start, &endpoint.key) {
                // Every usable endpoint already refused the connection in this call.
                let n = list.len() - start;
                return Err(LifelineError::new(
                    ErrorKind::ConnectFailed,
                    format!("no endpoint of cluster {} accepted a connection ({n} tried)", cluster.name()),
                )
                .with_cluster(cluster.name())
                .boxed());
            }
            list.push(&endpoint.key);
            // With chaos faults in force, the send goes through them, boxed: their timers and
            // states are not part of every request's.
            let result = if self.faults.is_empty() {
                cluster.send(&endpoint, req).await
            } else {
                Box::pin(crate::chaos::inject::send(&self.faults, cluster, self.route.as_deref(), &endpoint, req)).await
            };
            let outcome = match &result {
                Ok(resp) => classifier.status(resp.status()),
                Err(f) => classify_error(&f.error),
            };
            endpoint.record(outcome);
            match result {
                // Breaker and retry classify the answer again with the same classifier (a status
                // match costs less than carrying the verdict in the response's extensions).
                Ok(resp) => return Ok(resp),
                // Whether another endpoint is left is asked only now: a snapshot load per request
                // for the rare refused connection (~70 instructions, `bench/profile.py`).
                Err(SendFailure { error, unsent: true })
                    if LifelineError::kind_of(&error) == ErrorKind::ConnectFailed
                        && cluster.shared.endpoints.load().len() > list.len() - start =>
                {
                    tracing::debug!(cluster = cluster.name(), endpoint = %endpoint.key, "connect failed; re-picking");
                }
                Err(f) => return Err(f.error),
            }
        }
    }
}

fn no_healthy(cluster: &Cluster) -> BoxError {
    let n = cluster.shared.endpoints.load().len();
    LifelineError::new(
        ErrorKind::NoHealthyEndpoint,
        format!("cluster {} has no usable endpoint ({n} configured or resolved, none healthy)", cluster.name()),
    )
    .with_cluster(cluster.name())
    .boxed()
}
