//! Shared test support: an in-process sidecar from a YAML string, stand-in upstreams (test
//! doubles for the user's backends), and HTTP/1.1 and h2c clients.

#![allow(dead_code)]
#![allow(clippy::disallowed_methods)] // std::thread::sleep is fine in test helpers that poll processes

pub mod process;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lifeline::app::App;
use lifeline::config::Config;
use lifeline::proxy::body::{self, ProxyBody};
use tokio::net::TcpListener;

/// A sidecar running in this process, with its config in a temp file (so reload works).
pub struct Sidecar {
    pub app: App,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Sidecar {
    /// Starts a sidecar from YAML. Use `127.0.0.1:0` for `listen` and `admin.listen`
    /// (the defaults are fixed ports, so tests should always set both).
    pub async fn start(yaml: &str) -> Sidecar {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("lifeline.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let app = App::start(config, Some(config_path.clone())).await.expect("sidecar starts");
        Sidecar { app, dir, config_path }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.app.proxy_addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.app.admin_addr, path)
    }

    /// Writes a new config file (the watcher or `reload()` picks it up).
    pub fn write_config(&self, yaml: &str) {
        // Write then rename, as a ConfigMap update does, so the watcher never reads half a file.
        let tmp = self.dir.path().join("lifeline.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }
}

/// What a stand-in upstream does with a request.
pub type Handler =
    Arc<dyn Fn(Request<Incoming>) -> futures_util::future::BoxFuture<'static, Response<ProxyBody>> + Send + Sync>;

/// A stand-in for one of the user's backends, on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream that answers every request with `handler`.
    pub async fn start(handler: Handler) -> Upstream {
        // A deep accept queue, as real backends have: tokio's `bind` listens with a backlog of
        // 128, and a burst of connects past it is dropped (the SYN is retried after 1 s).
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind upstream");
        let listener = socket.listen(1024).expect("listen");
        Upstream::serve(listener, handler)
    }

    /// Serves on an already bound listener (to restart on the same port).
    pub fn serve(listener: TcpListener, handler: Handler) -> Upstream {
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let h2 = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let handler = handler.clone();
                let hits = h2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, hits, task }
    }

    /// An upstream that echoes method, path, headers and body size as JSON.
    pub async fn echo() -> Upstream {
        Upstream::start(Arc::new(|req: Request<Incoming>| {
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let mut n = 0usize;
                let mut body = body;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => n += f.data_ref().map(|d| d.len()).unwrap_or(0),
                        Err(_) => break,
                    }
                }
                let headers: serde_json::Map<String, serde_json::Value> = parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.to_str().unwrap_or(""))))
                    .collect();
                let v = serde_json::json!({
                    "method": parts.method.as_str(),
                    "path": parts.uri.path(),
                    "version": format!("{:?}", parts.version),
                    "headers": headers,
                    "body_bytes": n,
                });
                json(StatusCode::OK, &v)
            })
        }))
        .await
    }

    /// An upstream that answers `status` after `delay`.
    pub async fn fixed(status: u16, delay: Duration) -> Upstream {
        Upstream::start(Arc::new(move |_req| {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                let mut r = Response::new(body::full("ok"));
                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                r
            })
        }))
        .await
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting (existing connections keep running until their tasks end).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(serde_json::to_vec(v).unwrap()));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r
}

/// A pooled HTTP/1.1 client.
pub fn http1() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An h2c (prior knowledge) client.
pub fn http2() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).http2_only(true).build(HttpConnector::new())
}

/// A collected response.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `req` and collects the whole response.
pub async fn send(client: &Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Got {
    let resp = client.request(req).await.expect("request sent");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Got { status: parts.status, headers: parts.headers, body }
}

pub async fn get(url: &str) -> Got {
    send(&http1(), Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
}

pub async fn post_json(url: &str, v: &serde_json::Value, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::post(url).header("content-type", "application/json");
    for (k, val) in headers {
        b = b.header(*k, *val);
    }
    send(&http1(), b.body(Full::new(Bytes::from(serde_json::to_vec(v).unwrap()))).unwrap()).await
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Minimal config with one cluster `backend` at `addr` and a catch-all route.
pub fn one_cluster_yaml(addr: SocketAddr) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nshutdown: {{ drain_delay: 0s, grace_period: 5s }}\n\
         clusters:\n  backend:\n    endpoints:\n      - {{ address: {addr} }}\nroutes:\n  - {{ name: all, cluster: backend }}\n"
    )
}
