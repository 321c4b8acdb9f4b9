//! The innermost service of every route: pick an endpoint, send, count the outcome.
//!
//! A connect failure means nothing left Lifeline, so the request is re-picked at once on
//! another endpoint of the cluster (even a POST: the failed send hands the request back, see
//! [`super::SendFailure`]), up to once per endpoint. That costs no retry budget: the retry layer above never sees it.
//! Every endpoint tried is appended to the request's [`TriedEndpoints`] (shared with the retry
//! layer), and the balancer avoids those when it can, so a retry lands somewhere new.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use super::{Cluster, SendFailure};
use crate::chaos::Faults;
use crate::classify::{classify_error, Classifier};
use crate::error::{BoxError, ErrorKind, LifelineError};
use crate::proxy::body::ProxyBody;
use crate::proxy::stack::TriedEndpoints;

/// Sends a request to one endpoint of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterService {
    pub cluster: Arc<Cluster>,
    pub classifier: Classifier,
    /// Chaos faults, applied innermost so they look exactly like upstream faults.
    pub faults: Arc<Faults>,
}

impl ClusterService {
    /// A service without chaos faults.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        ClusterService { cluster, classifier: Classifier::default(), faults: Arc::default() }
    }
}

impl Service<Request<ProxyBody>> for ClusterService {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        Box::pin(dispatch(self.cluster.clone(), self.classifier, self.faults.clone(), req))
    }
}

async fn dispatch(
    cluster: Arc<Cluster>,
    classifier: Classifier,
    faults: Arc<Faults>,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, BoxError> {
    cluster.wait_ready().await;
    let tried = req.extensions().get::<TriedEndpoints>().cloned();
    let mut here: Vec<Arc<str>> = Vec::new();
    loop {
        let avoid = |key: &str| {
            here.iter().any(|k| &**k == key)
                || tried.as_ref().is_some_and(|t| t.0.lock().map(|l| l.iter().any(|k| &**k == key)).unwrap_or(false))
        };
        let Some(endpoint) = cluster.pick_avoiding(&avoid) else {
            return Err(no_healthy(&cluster));
        };
        if here.iter().any(|k| *k == endpoint.key) {
            // Every usable endpoint already refused the connection in this call.
            return Err(LifelineError::new(
                ErrorKind::ConnectFailed,
                format!("no endpoint of cluster {} accepted a connection ({} tried)", cluster.name(), here.len()),
            )
            .with_cluster(cluster.name())
            .boxed());
        }
        here.push(endpoint.key.clone());
        if let Some(t) = &tried {
            if let Ok(mut list) = t.0.lock() {
                list.push(endpoint.key.clone());
            }
        }
        let more_endpoints = cluster.shared.endpoints.load().len() > here.len();
        let result = crate::chaos::inject::send(&faults, &cluster, &endpoint, req).await;
        let outcome = match &result {
            Ok(resp) => classifier.status(resp.status()),
            Err(f) => classify_error(&f.error),
        };
        endpoint.record(outcome);
        match result {
            Ok(mut resp) => {
                // Classified once, here; breaker and retry read the verdict from the response.
                resp.extensions_mut().insert(outcome);
                return Ok(resp);
            }
            Err(SendFailure { error, unsent: Some(back) })
                if more_endpoints && LifelineError::kind_of(&error) == ErrorKind::ConnectFailed =>
            {
                tracing::debug!(cluster = cluster.name(), endpoint = %endpoint.key, "connect failed; re-picking");
                req = *back;
            }
            Err(f) => return Err(f.error),
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
