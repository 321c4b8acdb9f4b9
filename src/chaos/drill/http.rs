//! The drill runner's small HTTP client: JSON to and from admin APIs, fault proxies and
//! simulators, each call with a timeout so a hung target can never hang the runner.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A pooled HTTP/1.1 client.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// Status and body of an answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl Http {
    pub fn new(timeout: Duration) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Http { client: Client::builder(TokioExecutor::new()).build(connector), timeout }
    }

    /// Sends one request; `Err` says why no answer came.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
        token: Option<&str>,
    ) -> Result<Answer, String> {
        let mut b = Request::builder().method(method.clone()).uri(url);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(v).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        let req = b.body(Full::new(bytes)).map_err(|e| format!("{method} {url}: {e}"))?;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| format!("{method} {url}: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(|e| format!("{method} {url}: {e}"))?.to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| format!("{method} {url}: no answer in {:?}", self.timeout))?
    }

    pub async fn get(&self, url: &str) -> Result<Answer, String> {
        self.call(Method::GET, url, None, None).await
    }
}
