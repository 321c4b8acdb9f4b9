//! The simulated card service: card status and loss reporting.
//!
//! `GET /card/v1/cards/{card_no}` answers 200 `{"card_no_masked", "status", "fund_balance_fen"}`
//! (status `active`, `lost` or `frozen`, by the rules in [`super::fixture`]).
//! `POST /card/v1/cards/{card_no}/loss` marks the card lost and answers 200 with the same shape;
//! reporting a lost card again is harmless. A malformed card number is a 400.
//! The number is echoed masked: responses of this service end up in callers' logs.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::auth::invalid_card;
use super::fixture;
use super::request;
use super::service::Shared;
use crate::proxy::body::ProxyBody;
use crate::proxy::respond::json_response;
use crate::telemetry::redact::mask_card;

pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let Some(rest) = path.strip_prefix("/card/v1/cards/") else {
        return request::not_routed(&method, &path, false);
    };
    let (card, loss) = match rest.strip_suffix("/loss") {
        Some(card) => (card, true),
        None => (rest, false),
    };
    if card.contains('/') {
        return request::not_routed(&method, &path, false);
    }
    let Some(card) = fixture::parse_card_no(card) else {
        return invalid_card().response();
    };
    match (loss, &method) {
        (false, &Method::GET) => view(shared, &card),
        (true, &Method::POST) => {
            shared.world.report_lost(&card);
            tracing::info!(card = %mask_card(&card), "card reported lost");
            view(shared, &card)
        }
        _ => request::not_routed(&method, &path, true),
    }
}

fn view(shared: &Shared, card: &str) -> Response<ProxyBody> {
    let status = shared.world.status(card);
    json_response(
        StatusCode::OK,
        &json!({
            "card_no_masked": mask_card(card),
            "status": status.as_str(),
            "fund_balance_fen": shared.world.balance(card),
        }),
    )
}
