//! The grace layer on settlement routes: try online, journal when the backend is unavailable.
//!
//! Order of checks for each request (why each comes where it does):
//! 1. `Idempotency-Key` required (400) — without it no replay can be deduplicated (invariant 4).
//! 2. Body read and its fields found by the policy's JSON pointers (400 naming the field) —
//!    the same answer whether the backend is up or down.
//! 3. In-flight claim of the key: 409 same body, 422 different body.
//! 4. Already journaled? Same body → the same receipt (or the final result); different → 422.
//! 5. Operator-forced grace journals at once, unless the card is past its soft limit (then it
//!    tries online first, EMV-style). Otherwise the request goes online; `Grace-Mode:
//!    require-online` returns the online failure as is.
//! 6. NotSent failure → journal `journaled`; sent-but-no-answer (timeout/reset) → journal
//!    `unknown`, so the forwarder asks the backend before any resend. Any answer from the
//!    backend (even a 5xx) is passed through: it was not "unavailable".

use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;

use super::engine::Engine;
use super::receipt;
use super::request::{self, Settlement};
use super::store::{AppendOutcome, Item, State};
use crate::error::{BoxError, ErrorKind, LifelineError};
use crate::proxy::body::{full, ProxyBody, ProxyRequest};
use crate::proxy::stack::HttpService;
use crate::telemetry::names;

/// The grace service around a route's stack.
#[derive(Clone)]
pub struct GraceService {
    engine: Arc<Engine>,
    inner: HttpService,
    route: Arc<str>,
}

impl GraceService {
    pub fn new(engine: Arc<Engine>, inner: HttpService, route: &str) -> Self {
        GraceService { engine, inner, route: Arc::from(route) }
    }
}

type Fut = crate::resilience::BoxFuture<'static>;

impl crate::proxy::stack::Route for GraceService {
    fn call(&self, req: ProxyRequest) -> crate::resilience::BoxFuture<'_> {
        handle(self.engine.clone(), self.inner.clone(), self.route.clone(), req)
    }
}

/// Drives the inner path.
pub(crate) fn call(svc: HttpService, req: ProxyRequest) -> Fut {
    svc.call_owned(req)
}

/// Why a request ends up in the journal.
enum Trigger {
    Forced,
    NotSent(ErrorKind, BoxError),
    Ambiguous(ErrorKind, BoxError),
}

fn handle(engine: Arc<Engine>, inner: HttpService, route: Arc<str>, req: ProxyRequest) -> Fut {
    Box::pin(async move {
        let (req, hop) = req.into_parts();
        let (parts, body) = req.into_parts();
        let key = request::idempotency_key(&parts.headers)?;
        let require_online = request::require_online(&parts.headers)?;
        let bytes = body.collect().await?.to_bytes();
        let policy = engine.policy();
        let settlement = request::settlement(&policy, &bytes)?;
        let fingerprint = super::crypto::fingerprint(&bytes);
        let _guard = engine.claim(&key, fingerprint)?;
        if let Some(item) = engine.store.by_key(key.clone()).await.map_err(internal)? {
            return replay(&engine, &item, fingerprint);
        }
        let card_ref = super::crypto::card_ref(engine.cipher.as_ref(), &settlement.card_no);
        let forced = engine.forced().is_some() && !require_online && !soft_exceeded(&engine, &card_ref, &settlement);
        let trigger = if forced {
            Trigger::Forced
        } else {
            engine.pacer.note_live();
            let online = ProxyRequest::with_hop(Request::from_parts(parts.clone(), full(bytes.clone())), hop);
            match inner.serve(online).await {
                Ok(resp) => return Ok(resp),
                Err(err) => {
                    let kind = LifelineError::kind_of(&err);
                    if require_online {
                        return Err(err);
                    }
                    if kind.not_sent() {
                        Trigger::NotSent(kind, err)
                    } else if matches!(
                        kind,
                        ErrorKind::UpstreamTimeout | ErrorKind::UpstreamReset | ErrorKind::DeadlineExceeded
                    ) {
                        Trigger::Ambiguous(kind, err)
                    } else {
                        return Err(err);
                    }
                }
            }
        };
        journal(&engine, &route, &parts, &bytes, key, fingerprint, card_ref, settlement, trigger).await
    })
}

/// Past the card's soft limit, forced grace still tries online first (EMV LCOL).
fn soft_exceeded(engine: &Engine, card_ref: &str, s: &Settlement) -> bool {
    let soft = engine.limits().card_soft;
    let (count, fen) = engine.store.card_exposure(card_ref);
    soft.count.is_some_and(|l| count + 1 > l)
        || soft.amount.is_some_and(|l| u64::try_from(fen + s.amount_fen).unwrap_or(u64::MAX) > l)
}

fn internal(e: super::store::StoreError) -> BoxError {
    LifelineError::new(ErrorKind::Internal, e.to_string()).boxed()
}

/// Same key again: the same receipt, the final result, or 422 for a different body.
fn replay(engine: &Engine, item: &Item, fingerprint: [u8; 32]) -> Result<Response<ProxyBody>, BoxError> {
    if item.fingerprint != fingerprint {
        return Err(LifelineError::new(
            ErrorKind::IdempotencyConflict,
            "this Idempotency-Key was already used for a settlement with a different body",
        )
        .boxed());
    }
    metrics::counter!(names::GRACE_DUPLICATES_SUPPRESSED_TOTAL, "policy" => engine.name.clone()).increment(1);
    Ok(receipt::final_result(item).unwrap_or_else(|| receipt::accepted(engine, item)))
}

#[allow(clippy::too_many_arguments)]
async fn journal(
    engine: &Arc<Engine>,
    route: &str,
    parts: &http::request::Parts,
    bytes: &[u8],
    key: String,
    fingerprint: [u8; 32],
    card_ref: String,
    settlement: Settlement,
    trigger: Trigger,
) -> Result<Response<ProxyBody>, BoxError> {
    let (reason, state, upstream) = match trigger {
        Trigger::Forced => ("operator_forced", State::Journaled, None),
        Trigger::NotSent(kind, err) => (kind.code(), State::Journaled, Some(err)),
        Trigger::Ambiguous(kind, err) => (kind.code(), State::Unknown, Some(err)),
    };
    let item =
        match request::new_item(engine, route, parts, bytes, key, fingerprint, card_ref, &settlement, reason, state) {
            Ok(item) => item,
            Err(e) => return Err(unavailable(e, upstream)),
        };
    match engine.store.append(item, engine.limits()).await {
        Ok(AppendOutcome::Accepted(item)) => {
            engine.note_trigger(reason);
            engine.wake.notify_one();
            metrics::counter!(names::GRACE_ACCEPTED_TOTAL, "policy" => engine.name.clone(), "reason" => reason)
                .increment(1);
            if state == State::Unknown {
                metrics::counter!(names::GRACE_UNKNOWN_OUTCOMES_TOTAL, "policy" => engine.name.clone()).increment(1);
            }
            Ok(receipt::accepted(engine, &item))
        }
        Ok(AppendOutcome::Existing(item)) => replay(engine, &item, fingerprint),
        Ok(AppendOutcome::Refused { limit, message }) => {
            metrics::counter!(names::GRACE_REFUSED_TOTAL, "policy" => engine.name.clone(), "limit" => limit)
                .increment(1);
            let mut detail = serde_json::json!({ "limit": limit, "policy": engine.name, "trigger": reason });
            if state == State::Unknown {
                detail["note"] = "the online attempt timed out and may have reached the backend; retry with the same \
                                  Idempotency-Key"
                    .into();
            }
            Err(LifelineError::new(ErrorKind::GraceLimitExceeded, format!("offline grace refused: {message}"))
                .with_detail(detail)
                .boxed())
        }
        Err(e) => Err(unavailable(e.to_string(), upstream)),
    }
}

/// The journal could not take the item: answer with the original failure, never a receipt.
fn unavailable(reason: String, upstream: Option<BoxError>) -> BoxError {
    tracing::error!(error = %reason, "grace journal failed; answering with the backend failure");
    match upstream {
        Some(err) => err,
        None => LifelineError::new(ErrorKind::Internal, format!("offline grace unavailable: {reason}")).boxed(),
    }
}
