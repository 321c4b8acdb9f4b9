//! Deadlines: one overall budget per request, shared by every attempt, and passed upstream.
//!
//! [`DeadlineLayer`] (outermost of the route stack) fixes the request's deadline: the route's
//! timeout, or the caller's `x-lifeline-timeout-ms` / `grpc-timeout` when that is shorter. It
//! covers retries, backoff and queueing; when it runs out the caller gets `deadline_exceeded`
//! (504). [`AttemptLayer`] (around each attempt) applies the per-try timeout and tells the
//! upstream how long it has left in the same header the caller used, so a chain of services
//! shares one deadline instead of each hop starting a fresh timeout (research §3.7: Envoy,
//! Istio and Linkerd users all ask for this).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::error::{BoxError, ErrorKind, LifelineError};
use crate::proxy::body::ProxyBody;
use crate::proxy::headers::X_LIFELINE_TIMEOUT_MS;
use crate::resilience::call_boxed;

pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The request's deadline, in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    /// The caller spoke gRPC: propagate as `grpc-timeout`.
    pub grpc: bool,
}

/// Parses `grpc-timeout` (`<1-8 digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if !v.is_ascii() {
        return None;
    }
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    if num.is_empty() || num.len() > 8 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The caller's own budget, if it sent one. A malformed header is the caller's error.
fn incoming_budget(headers: &HeaderMap) -> Result<Option<(Duration, bool)>, LifelineError> {
    if let Some(v) = headers.get(&X_LIFELINE_TIMEOUT_MS) {
        let ms = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
            LifelineError::new(ErrorKind::BadRequest, "x-lifeline-timeout-ms must be a whole number of milliseconds")
        })?;
        return Ok(Some((Duration::from_millis(ms), false)));
    }
    if let Some(v) = headers.get(&GRPC_TIMEOUT) {
        let d = v.to_str().ok().and_then(parse_grpc_timeout).ok_or_else(|| {
            LifelineError::new(ErrorKind::BadRequest, "grpc-timeout must be 1-8 digits and a unit (H, M, S, m, u, n)")
        })?;
        return Ok(Some((d, true)));
    }
    Ok(None)
}

/// Sets the overall deadline of a request.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    timeout: Duration,
    cluster: std::sync::Arc<str>,
}

impl DeadlineLayer {
    pub fn new(timeout: Duration, cluster: &str) -> Self {
        DeadlineLayer { timeout, cluster: cluster.into() }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> DeadlineService<S> {
        DeadlineService { inner, layer: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    layer: DeadlineLayer,
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

impl<S> Service<Request<ProxyBody>> for DeadlineService<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxFut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ProxyBody>) -> BoxFut {
        let cluster = self.layer.cluster.clone();
        let (budget, grpc, from_caller) = match incoming_budget(req.headers()) {
            Err(e) => return Box::pin(std::future::ready(Err(e.boxed()))),
            Ok(Some((d, grpc))) if d < self.layer.timeout => (d, grpc, true),
            Ok(Some((_, grpc))) => (self.layer.timeout, grpc, false),
            Ok(None) => (self.layer.timeout, false, false),
        };
        let expired = move || {
            let whose = if from_caller { "the caller's deadline" } else { "the route's timeout" };
            LifelineError::new(
                ErrorKind::DeadlineExceeded,
                format!("{whose} of {budget:?} ran out (cluster {cluster})"),
            )
            .with_cluster(&*cluster)
            .boxed()
        };
        if budget.is_zero() {
            return Box::pin(std::future::ready(Err(expired())));
        }
        let at = Instant::now() + budget;
        req.extensions_mut().insert(Deadline { at, grpc });
        let fut = call_boxed(&mut self.inner, req);
        Box::pin(async move {
            match tokio::time::timeout_at(at, fut).await {
                Ok(result) => result,
                Err(_) => Err(expired()),
            }
        })
    }
}

/// Per-attempt timeout; writes the remaining budget into the upstream request.
#[derive(Debug, Clone)]
pub struct AttemptLayer {
    per_try: Option<Duration>,
    cluster: std::sync::Arc<str>,
}

impl AttemptLayer {
    pub fn new(per_try: Option<Duration>, cluster: &str) -> Self {
        AttemptLayer { per_try, cluster: cluster.into() }
    }
}

impl<S> Layer<S> for AttemptLayer {
    type Service = AttemptService<S>;
    fn layer(&self, inner: S) -> AttemptService<S> {
        AttemptService { inner, layer: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct AttemptService<S> {
    inner: S,
    layer: AttemptLayer,
}

impl<S> Service<Request<ProxyBody>> for AttemptService<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxFut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ProxyBody>) -> BoxFut {
        let deadline = req.extensions().get::<Deadline>().copied();
        let left = deadline.map(|d| d.at.saturating_duration_since(Instant::now()));
        let budget = match (left, self.layer.per_try) {
            (Some(l), Some(p)) => Some(l.min(p)),
            (l, p) => l.or(p),
        };
        let cluster = self.layer.cluster.clone();
        if let (Some(b), Some(d)) = (budget, deadline) {
            // Decimal digits on the stack: one allocation (the header value) per attempt.
            let mut buf = [0u8; 24];
            let mut n = buf.len();
            if d.grpc {
                n -= 1;
                buf[n] = b'm';
            }
            let mut ms = b.as_millis().min(u128::from(u64::MAX)) as u64;
            loop {
                n -= 1;
                buf[n] = b'0' + (ms % 10) as u8;
                ms /= 10;
                if ms == 0 {
                    break;
                }
            }
            let name = if d.grpc { &GRPC_TIMEOUT } else { &X_LIFELINE_TIMEOUT_MS };
            if let Ok(v) = HeaderValue::from_bytes(&buf[n..]) {
                req.headers_mut().insert(name.clone(), v);
            }
        }
        let Some(budget) = budget else { return call_boxed(&mut self.inner, req) };
        if budget.is_zero() {
            let e = LifelineError::new(
                ErrorKind::DeadlineExceeded,
                format!("no time left for an attempt to cluster {cluster}"),
            )
            .with_cluster(&*cluster);
            return Box::pin(std::future::ready(Err(e.boxed())));
        }
        let per_try_binding = self.layer.per_try.is_some_and(|p| p <= budget);
        let fut = call_boxed(&mut self.inner, req);
        Box::pin(async move {
            match tokio::time::timeout(budget, fut).await {
                Ok(result) => result,
                Err(_) => {
                    let (kind, what) = if per_try_binding {
                        (ErrorKind::UpstreamTimeout, "per-try timeout")
                    } else {
                        (ErrorKind::DeadlineExceeded, "deadline")
                    };
                    Err(LifelineError::new(
                        kind,
                        format!("no answer from cluster {cluster} within the {what} of {budget:?}"),
                    )
                    .with_cluster(&*cluster)
                    .boxed())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn incoming_header_forms() {
        let mut h = HeaderMap::new();
        h.insert(&X_LIFELINE_TIMEOUT_MS, "250".parse().unwrap());
        assert_eq!(incoming_budget(&h).unwrap(), Some((Duration::from_millis(250), false)));
        h.insert(&X_LIFELINE_TIMEOUT_MS, "soon".parse().unwrap());
        assert_eq!(incoming_budget(&h).unwrap_err().kind, ErrorKind::BadRequest);
        let mut h = HeaderMap::new();
        h.insert(&GRPC_TIMEOUT, "40m".parse().unwrap());
        assert_eq!(incoming_budget(&h).unwrap(), Some((Duration::from_millis(40), true)));
    }
}
