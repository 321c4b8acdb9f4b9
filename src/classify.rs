//! One verdict for every upstream attempt.
//!
//! Breaker, retry, outlier detection, grace and metrics all need to know the same thing about an
//! attempt: did it succeed, fail, or never leave Lifeline? Deciding that once, here, keeps them
//! from disagreeing (a 429 counted as a failure by one and a success by another).

use http::Response;

use crate::error::{BoxError, ErrorKind, LifelineError};

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with a status that counts as success.
    Success,
    /// The request reached (or may have reached) the upstream and failed.
    Failure(FailureKind),
    /// The request never left Lifeline; replaying it cannot cause a duplicate.
    NotSent(ErrorKind),
    /// The caller's side failed mid-request (its body broke off or ran over `max_body`): the
    /// request may be half sent, so it is not replayed, and the upstream is neither credited
    /// nor blamed (a client that aborts uploads must not eject a healthy endpoint).
    Client(ErrorKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The upstream answered with this failing status (5xx, or 429 when configured).
    Status(u16),
    /// No answer in time.
    Timeout,
    /// The connection broke mid-request.
    Reset,
}

impl Outcome {
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// A short, bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure(FailureKind::Status(429)) => "status_429",
            Outcome::Failure(FailureKind::Status(_)) => "status_5xx",
            Outcome::Failure(FailureKind::Timeout) => "timeout",
            Outcome::Failure(FailureKind::Reset) => "reset",
            Outcome::NotSent(_) => "not_sent",
            Outcome::Client(_) => "client",
        }
    }
}

/// Which answers count as failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Classifier {
    /// Count 429 Too Many Requests as a failure (default: success, the caller was throttled).
    pub failure_on_429: bool,
}

impl Classifier {
    /// Classifies a status code.
    pub fn status(&self, status: http::StatusCode) -> Outcome {
        if status.is_server_error() || (self.failure_on_429 && status == http::StatusCode::TOO_MANY_REQUESTS) {
            Outcome::Failure(FailureKind::Status(status.as_u16()))
        } else {
            Outcome::Success
        }
    }

    /// Classifies a finished attempt.
    pub fn classify<B>(&self, result: &Result<Response<B>, BoxError>) -> Outcome {
        match result {
            Ok(resp) => self.status(resp.status()),
            Err(err) => classify_error(err),
        }
    }
}

/// Classifies an attempt that produced no response.
pub fn classify_error(err: &BoxError) -> Outcome {
    match LifelineError::find(err.as_ref()) {
        Some(le) if le.kind.not_sent() => Outcome::NotSent(le.kind),
        Some(le) if matches!(le.kind, ErrorKind::ClientAborted | ErrorKind::BodyTooLarge) => Outcome::Client(le.kind),
        Some(le) if matches!(le.kind, ErrorKind::UpstreamTimeout | ErrorKind::DeadlineExceeded) => {
            Outcome::Failure(FailureKind::Timeout)
        }
        Some(le) if le.kind == ErrorKind::InjectedFault => match le.status {
            Some(s) => Outcome::Failure(FailureKind::Status(s.as_u16())),
            None => Outcome::Failure(FailureKind::Reset),
        },
        _ => Outcome::Failure(FailureKind::Reset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let c = Classifier::default();
        assert_eq!(c.status(http::StatusCode::OK), Outcome::Success);
        assert_eq!(c.status(http::StatusCode::NOT_FOUND), Outcome::Success);
        assert_eq!(c.status(http::StatusCode::TOO_MANY_REQUESTS), Outcome::Success);
        assert_eq!(c.status(http::StatusCode::BAD_GATEWAY), Outcome::Failure(FailureKind::Status(502)));
        let strict = Classifier { failure_on_429: true };
        assert!(!strict.status(http::StatusCode::TOO_MANY_REQUESTS).is_success());
    }

    #[test]
    fn errors() {
        let e = LifelineError::new(ErrorKind::ConnectFailed, "refused").boxed();
        assert_eq!(classify_error(&e), Outcome::NotSent(ErrorKind::ConnectFailed));
        let e = LifelineError::new(ErrorKind::UpstreamTimeout, "slow").boxed();
        assert_eq!(classify_error(&e), Outcome::Failure(FailureKind::Timeout));
        let e: BoxError = "broken pipe".into();
        assert_eq!(classify_error(&e), Outcome::Failure(FailureKind::Reset));
        let e = LifelineError::new(ErrorKind::ClientAborted, "caller went away").boxed();
        assert_eq!(classify_error(&e), Outcome::Client(ErrorKind::ClientAborted));
        let e = LifelineError::new(ErrorKind::BodyTooLarge, "too big").boxed();
        assert_eq!(classify_error(&e), Outcome::Client(ErrorKind::BodyTooLarge));
    }
}
