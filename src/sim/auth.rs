//! The simulated auth service: card number + 6-digit PIN in, a session token out.
//!
//! `POST /auth/v1/verify` `{"card_no", "pin"}` answers 200 `{"token", "expires_in"}` for the
//! fixture PIN (`123456`), 401 `wrong_pin` otherwise, 403 `card_not_active` for a lost or frozen
//! card, and 400 when the card number is malformed or the PIN is not exactly 6 ASCII digits.
//! `GET /auth/v1/tokens/{token}` answers 200 `{"card_no_masked", "expires_in"}` or 404.
//!
//! Tokens are drawn from the service's seeded random source, so a seeded run issues the same
//! tokens in the same order. They live in memory for [`TOKEN_TTL`]; the table is bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use rand::Rng;
use serde_json::json;
use tokio::time::Instant;

use super::fixture::{self, CardStatus};
use super::request::{self, read_json, string_field, Reject};
use super::service::Shared;
use super::Service;
use crate::proxy::body::ProxyBody;
use crate::proxy::respond::{json_error, json_response};
use crate::telemetry::redact::mask_card;

/// How long a token is valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(1800);
/// Most tokens kept; past it expired ones are purged, then the oldest half is forgotten.
const MAX_TOKENS: usize = 200_000;

/// Issued tokens: token → (masked card, expiry).
#[derive(Default)]
pub(crate) struct AuthState {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl AuthState {
    fn issue(&self, token: String, card: &str) {
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= MAX_TOKENS {
            tokens.retain(|_, (_, exp)| *exp > now);
            if tokens.len() >= MAX_TOKENS {
                let cutoff = now + TOKEN_TTL / 2;
                tokens.retain(|_, (_, exp)| *exp > cutoff);
            }
        }
        tokens.insert(token, (mask_card(card), now + TOKEN_TTL));
    }

    fn lookup(&self, token: &str) -> Option<(String, Duration)> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let (card, exp) = tokens.get(token)?;
        let left = exp.checked_duration_since(Instant::now())?;
        Some((card.clone(), left))
    }
}

pub(crate) async fn handle(shared: &Shared, service: Service, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/auth/v1/verify" {
        if method != Method::POST {
            return request::not_routed(&method, &path, true);
        }
        return match read_json(req).await {
            Ok(body) => verify(shared, service, &body).unwrap_or_else(Reject::response),
            Err(reject) => reject.response(),
        };
    }
    if let Some(token) = path.strip_prefix("/auth/v1/tokens/") {
        if method != Method::GET {
            return request::not_routed(&method, &path, true);
        }
        return match shared.auth.lookup(token) {
            Some((card, left)) => {
                json_response(StatusCode::OK, &json!({"card_no_masked": card, "expires_in": left.as_secs()}))
            }
            None => json_error(StatusCode::NOT_FOUND, "unknown_token", "no such token, or it expired"),
        };
    }
    request::not_routed(&method, &path, false)
}

fn verify(shared: &Shared, service: Service, body: &serde_json::Value) -> Result<Response<ProxyBody>, Reject> {
    let card = fixture::parse_card_no(string_field(body, "card_no", 64)?).ok_or_else(invalid_card)?;
    let pin = string_field(body, "pin", 64)?;
    if pin.len() != 6 || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::bad("invalid_pin", "the PIN must be exactly 6 digits"));
    }
    let status = shared.world.status(&card);
    if status != CardStatus::Active {
        return Ok(json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": "card_not_active", "status": status.as_str(),
                    "message": format!("the card is {}", status.as_str())}),
        ));
    }
    if pin != fixture::PIN {
        return Err(Reject::new(StatusCode::UNAUTHORIZED, "wrong_pin", "the card number and PIN do not match"));
    }
    let token =
        shared.services[&service].with_rng(|r| format!("tok_{:016x}{:016x}", r.random::<u64>(), r.random::<u64>()));
    shared.auth.issue(token.clone(), &card);
    Ok(json_response(StatusCode::OK, &json!({"token": token, "expires_in": TOKEN_TTL.as_secs()})))
}

pub(crate) fn invalid_card() -> Reject {
    Reject::bad("invalid_card_no", "card_no must be 18 characters: 17 digits then a digit or X")
}
