//! The typed errors that travel through the request path.
//!
//! Every layer that refuses, fails or gives up returns a [`LifelineError`] boxed as
//! [`BoxError`]. Exactly one place, [`crate::proxy::respond`], turns it into an HTTP status, a JSON
//! body and an `x-lifeline-error` header. Layers that want to react to a failure (retry, grace,
//! breaker accounting) downcast and match on [`ErrorKind`] instead of parsing strings.

use std::time::Duration;

/// The error type of every service on the request path.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a request did not get an upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No route matched the request.
    NoRoute,
    /// The request could not be understood (bad header value, bad JSON, missing field).
    BadRequest,
    /// The request body exceeded the route's `max_body`.
    BodyTooLarge,
    /// The request headers exceeded `limits.max_header_bytes`.
    HeadersTooLarge,
    /// The caller started a request and did not finish its head in time.
    RequestTimeout,
    /// The TCP connection to the endpoint could not be established (the request was not sent).
    ConnectFailed,
    /// The endpoint did not answer within the per-attempt or overall timeout.
    UpstreamTimeout,
    /// The overall deadline (route timeout or the caller's `x-lifeline-timeout-ms`) ran out.
    DeadlineExceeded,
    /// The connection broke after the request was (possibly) sent.
    UpstreamReset,
    /// The cluster's circuit breaker is open (the request was not sent).
    CircuitOpen,
    /// The cluster's concurrency limit and pending queue are full (the request was not sent).
    Overloaded,
    /// No endpoint of any priority is healthy (the request was not sent).
    NoHealthyEndpoint,
    /// A chaos fault answered instead of the upstream.
    InjectedFault,
    /// A settlement request lacks the `Idempotency-Key` header.
    IdempotencyKeyMissing,
    /// The same idempotency key was used with a different body.
    IdempotencyConflict,
    /// The same idempotency key is still being processed.
    IdempotencyInFlight,
    /// Offline grace refused the request because a limit would be exceeded.
    GraceLimitExceeded,
    /// Lifeline itself failed (journal I/O, a bug). Never the caller's fault.
    Internal,
    /// The caller's request body failed while it was being forwarded: the caller went away or
    /// broke its framing. Says nothing about the upstream.
    ClientAborted,
}

impl ErrorKind {
    /// The machine-readable code used in JSON bodies, `x-lifeline-error` and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::ConnectFailed => "upstream_connect_failed",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::UpstreamReset => "upstream_reset",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::NoHealthyEndpoint => "no_healthy_endpoint",
            ErrorKind::InjectedFault => "injected_fault",
            ErrorKind::IdempotencyKeyMissing => "idempotency_key_missing",
            ErrorKind::IdempotencyConflict => "idempotency_key_conflict",
            ErrorKind::IdempotencyInFlight => "idempotency_key_in_flight",
            ErrorKind::GraceLimitExceeded => "grace_limit_exceeded",
            ErrorKind::Internal => "internal_error",
            ErrorKind::ClientAborted => "client_aborted",
        }
    }

    /// The HTTP status this kind of failure answers with.
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ErrorKind::NoRoute => S::NOT_FOUND,
            ErrorKind::BadRequest | ErrorKind::IdempotencyKeyMissing | ErrorKind::ClientAborted => S::BAD_REQUEST,
            ErrorKind::BodyTooLarge => S::PAYLOAD_TOO_LARGE,
            ErrorKind::HeadersTooLarge => S::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::RequestTimeout => S::REQUEST_TIMEOUT,
            ErrorKind::ConnectFailed
            | ErrorKind::CircuitOpen
            | ErrorKind::Overloaded
            | ErrorKind::NoHealthyEndpoint => S::SERVICE_UNAVAILABLE,
            ErrorKind::UpstreamTimeout | ErrorKind::DeadlineExceeded => S::GATEWAY_TIMEOUT,
            ErrorKind::UpstreamReset => S::BAD_GATEWAY,
            ErrorKind::InjectedFault => S::SERVICE_UNAVAILABLE,
            ErrorKind::IdempotencyConflict => S::UNPROCESSABLE_ENTITY,
            ErrorKind::IdempotencyInFlight => S::CONFLICT,
            ErrorKind::GraceLimitExceeded => S::FORBIDDEN,
            ErrorKind::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// True when the failure happened before any byte of the request reached an upstream, so
    /// the request may be replayed even if it is not idempotent (design invariant 7).
    pub fn not_sent(self) -> bool {
        matches!(
            self,
            ErrorKind::ConnectFailed | ErrorKind::CircuitOpen | ErrorKind::Overloaded | ErrorKind::NoHealthyEndpoint
        )
    }
}

/// A failure on the request path, with what the caller needs to know about it.
#[derive(Debug, Clone)]
pub struct LifelineError {
    pub kind: ErrorKind,
    /// Human-readable explanation. Must never contain personal data unmasked.
    pub message: String,
    /// The cluster involved, when there is one.
    pub cluster: Option<String>,
    /// Suggested wait before retrying, sent as `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Override of the status code (an injected abort answers with the status it was told to).
    pub status: Option<http::StatusCode>,
    /// Extra machine-readable fields for the JSON body (e.g. which grace limit refused).
    pub detail: Option<serde_json::Value>,
    /// Upstream attempts made before giving up (sent as `x-lifeline-attempts`).
    pub attempts: Option<u32>,
}

impl LifelineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        LifelineError {
            kind,
            message: message.into(),
            cluster: None,
            retry_after: None,
            status: None,
            attempts: None,
            detail: None,
        }
    }

    pub fn with_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = Some(cluster.into());
        self
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn with_status(mut self, status: http::StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Adds fields to the JSON body; grace refusals use it to name the limit.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = Some(attempts);
        self
    }

    pub fn boxed(self) -> BoxError {
        Box::new(self)
    }

    /// Find a `LifelineError` in a boxed error (or its source chain).
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a LifelineError> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(le) = e.downcast_ref::<LifelineError>() {
                return Some(le);
            }
            cur = e.source();
        }
        None
    }

    /// The kind of a boxed error; anything that is not ours is an upstream reset.
    pub fn kind_of(err: &BoxError) -> ErrorKind {
        LifelineError::find(err.as_ref()).map(|e| e.kind).unwrap_or(ErrorKind::UpstreamReset)
    }
}

impl std::fmt::Display for LifelineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl std::error::Error for LifelineError {}
