//! The fault proxy's control API (Toxiproxy-like, with TTLs).
//!
//! ```text
//! GET    /proxy            listen, upstream, enabled, connections, toxics
//! POST   /proxy            {"enabled": false, "ttl": "30s"} partition; {"enabled": true} heal
//! GET    /toxics           toxics in force
//! POST   /toxics           add a toxic (ToxicSpec; ttl required)
//! DELETE /toxics/{name}    remove one toxic
//! DELETE /toxics           remove every toxic
//! POST   /reset            heal and remove every toxic (the drill abort)
//! ```
//! With `--token-file`, every state-changing call needs `Authorization: Bearer <token>`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::toxic::{self, ToxicSpec};
use super::ProxyState;
use crate::config::Dur;
use crate::proxy::body::ProxyBody;
use crate::proxy::respond::{json_error, json_response};

/// The API's view of the proxy.
#[derive(Clone)]
pub struct Api {
    pub state: Arc<ProxyState>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetEnabled {
    enabled: bool,
    #[serde(default)]
    ttl: Option<Dur>,
}

impl Api {
    /// Serves one API request.
    pub async fn handle(self, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        if method != Method::GET {
            if let Err(resp) = self.authorize(&req) {
                return Ok(*resp);
            }
        }
        let toxics = &self.state.toxics;
        let resp = match (method, path.as_str()) {
            (Method::GET, "/proxy") => json_response(StatusCode::OK, &self.describe()),
            (Method::POST, "/proxy") => match body::<SetEnabled>(req).await {
                Err(resp) => resp,
                Ok(SetEnabled { enabled: true, .. }) => {
                    toxics.set_disabled(None);
                    json_response(StatusCode::OK, &self.describe())
                }
                Ok(SetEnabled { enabled: false, ttl: Some(ttl) }) if !ttl.0.is_zero() && ttl.0 <= toxic::MAX_TTL => {
                    toxics.set_disabled(Some(ttl.0));
                    json_response(StatusCode::OK, &self.describe())
                }
                Ok(SetEnabled { enabled: false, .. }) => json_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request",
                    "ttl: disabling the proxy needs a ttl between 1ms and 24h",
                ),
            },
            (Method::GET, "/toxics") => json_response(StatusCode::OK, &json!({ "toxics": self.toxic_list() })),
            (Method::POST, "/toxics") => match body::<ToxicSpec>(req).await {
                Err(resp) => resp,
                Ok(spec) => match toxic::validate(&spec) {
                    Err(errors) => json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &json!({"error": "invalid_toxic", "message": errors.join("; "), "errors": errors}),
                    ),
                    Ok(()) => {
                        let t = toxics.add(spec);
                        json_response(StatusCode::CREATED, &t.describe(tokio::time::Instant::now()))
                    }
                },
            },
            (Method::DELETE, "/toxics") => {
                json_response(StatusCode::OK, &json!({ "removed": toxics.remove_where(|_| true) }))
            }
            (Method::DELETE, p) if p.starts_with("/toxics/") => {
                let name = &p["/toxics/".len()..];
                match toxics.remove_where(|t| t.name == name) {
                    0 => json_error(StatusCode::NOT_FOUND, "no_such_toxic", format!("no toxic {name:?}")),
                    n => json_response(StatusCode::OK, &json!({ "removed": n })),
                }
            }
            (Method::POST, "/reset") => {
                let removed = toxics.remove_where(|_| true);
                toxics.set_disabled(None);
                json_response(StatusCode::OK, &json!({ "removed": removed, "enabled": true }))
            }
            (m, p) => json_error(StatusCode::NOT_FOUND, "not_found", format!("no endpoint {m} {p}")),
        };
        Ok(resp)
    }

    fn toxic_list(&self) -> Vec<serde_json::Value> {
        let now = tokio::time::Instant::now();
        self.state.toxics.active().iter().map(|t| t.describe(now)).collect()
    }

    fn describe(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering;
        json!({
            "listen": self.state.listen.to_string(),
            "upstream": self.state.upstream,
            "enabled": !self.state.toxics.disabled(),
            "connections": self.state.connections.load(Ordering::Relaxed),
            "accepted": self.state.accepted.load(Ordering::Relaxed),
            "toxics": self.toxic_list(),
        })
    }

    fn authorize<B>(&self, req: &Request<B>) -> Result<(), Box<Response<ProxyBody>>> {
        let Some(file) = &self.token_file else { return Ok(()) };
        let expected = std::fs::read_to_string(file).map(|t| t.trim().to_string()).unwrap_or_default();
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        let same = expected.len() == given.len()
            && expected.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !expected.is_empty() && same {
            Ok(())
        } else {
            Err(Box::new(json_error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "Authorization: Bearer <token> is required",
            )))
        }
    }
}

#[allow(clippy::result_large_err)] // consumed at once by the caller's match
async fn body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<ProxyBody>> {
    let bytes = Limited::new(req.into_body(), 64 << 10)
        .collect()
        .await
        .map_err(|_| json_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "at most 64KiB of JSON"))?
        .to_bytes();
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        json_error(StatusCode::BAD_REQUEST, "invalid_request", format!("{at}: {}", e.into_inner()))
    })
}

/// Serves the API on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, api: Api) {
    let handler = move |req, _peer| api.clone().handle(req);
    crate::proxy::server::serve(
        listener,
        handler,
        crate::proxy::server::ConnLimits::default(),
        std::future::pending(),
        std::time::Duration::from_secs(1),
        "fault_proxy_api",
    )
    .await;
}
