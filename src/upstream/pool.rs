//! Keep-alive connections to one endpoint, pooled per proxy worker.
//!
//! Each endpoint keeps one idle list per worker thread ([`crate::proxy::workers`]) plus one for
//! every other thread. A worker only ever takes connections it opened, so the connection task
//! (spawned on the worker's runtime) and the request that uses it run on the same thread: no
//! cross-thread wake-up per request, and the list's mutex is never contended on the path.
//!
//! A connection goes back to its list when the response body has been read to the end (HTTP/1.1
//! carries one exchange at a time); a body dropped half-read, an error, or `Connection: close`
//! retires it. Idle connections are taken newest first and closed after `idle_timeout` by the
//! cluster controller's sweep ([`ConnPool::evict_idle`]), off the request path. hyper's legacy
//! pooled client, which this replaces, spawned a task per request to return the connection and
//! shared one pool across threads.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::proxy::body::ProxyBody;
use crate::proxy::workers;

type Sender = http1::SendRequest<ProxyBody>;

struct Idle {
    tx: Sender,
    since: Instant,
}

/// Pool settings (from the cluster's config).
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(String),
    /// A fresh connection failed before the request was written (e.g. reset right after the
    /// handshake): nothing was sent either.
    NotSent(String),
    /// The connection failed during the exchange (the request may have reached the endpoint).
    Exchange(hyper::Error),
}

/// The idle connections of one endpoint.
pub struct ConnPool {
    addr: SocketAddr,
    cfg: PoolConfig,
    /// `[0]`: threads that are not proxy workers; `[i + 1]`: worker `i`.
    slots: Box<[Mutex<Vec<Idle>>]>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool").field("addr", &self.addr).field("idle", &self.idle_count()).finish()
    }
}

impl ConnPool {
    pub fn new(addr: SocketAddr, cfg: PoolConfig) -> Arc<ConnPool> {
        let n = 1 + workers::most_started();
        Arc::new(ConnPool { addr, cfg, slots: (0..n).map(|_| Mutex::new(Vec::new())).collect() })
    }

    fn slot(&self) -> &Mutex<Vec<Idle>> {
        let i = workers::current().map_or(0, |w| w + 1);
        self.slots.get(i).unwrap_or(&self.slots[0])
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut list = self.slot().lock().unwrap_or_else(|p| p.into_inner());
        while let Some(idle) = list.pop() {
            if !idle.tx.is_closed() {
                return Some(idle.tx);
            }
        }
        None
    }

    fn put_back(&self, tx: Sender) {
        if tx.is_closed() || self.cfg.max_idle == 0 {
            return;
        }
        let mut list = self.slot().lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < self.cfg.max_idle {
            list.push(Idle { tx, since: Instant::now() });
        }
    }

    /// Idle connections over all threads (admin API, tests).
    pub fn idle_count(&self) -> usize {
        self.slots.iter().map(|s| s.lock().map(|l| l.len()).unwrap_or(0)).sum()
    }

    /// Closes connections idle for longer than `idle_timeout` or already closed by the peer.
    pub fn evict_idle(&self) {
        let now = Instant::now();
        for slot in self.slots.iter() {
            let mut list = slot.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|i| !i.tx.is_closed() && now.duration_since(i.since) < self.cfg.idle_timeout);
        }
    }

    async fn connect(&self) -> Result<Sender, SendError> {
        let open = async {
            let stream = TcpStream::connect(self.addr).await.map_err(|e| SendError::Connect(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let (tx, conn) =
                http1::handshake(TokioIo::new(stream)).await.map_err(|e| SendError::Connect(e.to_string()))?;
            // Driven on this thread's runtime (the worker's own, on the proxy path).
            tokio::spawn(async move {
                if let Err(err) = conn.await {
                    tracing::debug!(error = %err, "upstream connection ended with an error");
                }
            });
            Ok(tx)
        };
        match tokio::time::timeout(self.cfg.connect_timeout, open).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Connect(format!("connect timed out after {:?}", self.cfg.connect_timeout))),
        }
    }

    /// Sends `req` (origin-form URI, Host set) on an idle connection or a new one.
    ///
    /// A pooled connection the endpoint closed while it sat idle hands the request back unsent;
    /// it is then sent on the next idle connection or a fresh one, never twice.
    pub async fn send(self: &Arc<Self>, mut req: Request<ProxyBody>) -> Result<Response<ProxyBody>, SendError> {
        loop {
            let (mut tx, reused) = match self.take_idle() {
                Some(tx) => (tx, true),
                None => (self.connect().await?, false),
            };
            if tx.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(SendError::NotSent("the new connection closed before it could be used".into()));
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, tx)),
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    Some(_) => return Err(SendError::NotSent(e.into_error().to_string())),
                    None => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }

    fn wrap(self: &Arc<Self>, resp: Response<Incoming>, tx: Sender) -> Response<ProxyBody> {
        let keep = !closes(&resp);
        resp.map(|body| {
            let mut pooled = PooledBody { body, ret: keep.then(|| (tx, self.clone())) };
            if pooled.body.is_end_stream() {
                pooled.release();
            }
            crate::proxy::body::boxed(pooled)
        })
    }
}

/// True when the response ends its connection (`Connection: close`).
fn closes(resp: &Response<Incoming>) -> bool {
    resp.headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))))
}

/// A response body that returns its connection to the pool once read to the end.
struct PooledBody {
    body: Incoming,
    ret: Option<(Sender, Arc<ConnPool>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((tx, pool)) = self.ret.take() {
            pool.put_back(tx);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            // An error retires the connection (dropping its sender).
            Poll::Ready(Some(Err(_))) => this.ret = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
