//! Keep-alive connections to one endpoint, pooled per proxy worker.
//!
//! Each endpoint keeps one idle list per worker thread ([`crate::proxy::workers`]) plus one for
//! every other thread. A worker only ever takes connections it opened, so a connection's socket
//! is registered with the reactor of the thread that uses it, and the list's mutex is never
//! contended on the path.
//!
//! The exchange itself is [`super::h1`]: the request's task writes the request and reads the
//! response head, the response body reads the rest as the downstream connection polls it, and
//! the connection comes back here when the body has been read to the end (HTTP/1.1 carries one
//! exchange at a time). A body dropped half-read, an error, or `Connection: close` retires it.
//! Idle connections are taken newest first, after a check that the backend has not closed them
//! ([`Conn::is_usable`]; skipped for idempotent requests without a body, which are sent again
//! instead, see [`ConnPool::send`]), and closed after `idle_timeout`, or once the backend has
//! closed them, by the cluster controller's sweep ([`ConnPool::evict_idle`]), off the request
//! path.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Response;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::h1::{self, Conn, Failure};
use crate::proxy::body::{ProxyBody, ProxyRequest};
use crate::proxy::workers;

struct Idle {
    conn: Conn,
    /// When it came back to the pool.
    since: Instant,
    /// When the sweep last asked the kernel about it (`since` until then).
    checked: Instant,
}

/// The sweep asks the kernel about a connection once it has been idle this long, and again
/// each time this much more has passed. Under load a connection is taken again well within it
/// (and a request that must not be sent twice asks itself, [`ConnPool::send`]); after a burst,
/// hundreds of idle connections are asked about every few seconds instead of every second, and
/// a worker returning or taking one no longer waits on its list's lock for hundreds of syscalls.
const CHECK_EVERY: Duration = Duration::from_secs(5);

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
    /// No connection could be opened: nothing was sent, and the request is as it was.
    Connect(String),
    /// A connection failed before one byte of the request was written (e.g. reset right after
    /// the handshake): nothing was sent either. `true` when the request is whole again (its
    /// body could be rebuilt).
    NotSent(String, bool),
    /// The connection failed during the exchange (the request may have reached the endpoint).
    Exchange(String),
    /// The caller's request body failed mid-send ([`h1::Failure::Body`]): not the endpoint's fault.
    Body(crate::error::BoxError),
}

/// The idle connections of one endpoint.
pub struct ConnPool {
    addr: SocketAddr,
    /// `Host` for a request that has none: the endpoint's address.
    host: Box<str>,
    cfg: PoolConfig,
    /// `[0]`: threads that are not proxy workers; `[i + 1]`: worker `i`.
    slots: Box<[Arc<Slot>]>,
}

/// One thread's idle connections, and where a response body hands its connection back (it
/// holds the slot, not the pool). Its own allocation on its own cache lines: its lock, and the
/// count of the body's handle, are written on every request. With the lists packed side by
/// side and the bodies holding the pool, both workers wrote the same lines on every request.
#[repr(align(128))]
struct Slot {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool").field("addr", &self.addr).field("idle", &self.idle_count()).finish()
    }
}

impl h1::Release for Slot {
    fn release(&self, conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        let mut list = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < self.max_idle {
            let now = crate::proxy::clock::now();
            list.push(Idle { conn, since: now, checked: now });
        }
    }
}

impl ConnPool {
    pub fn new(addr: SocketAddr, cfg: PoolConfig) -> Arc<ConnPool> {
        let n = 1 + workers::most_started();
        Arc::new(ConnPool {
            addr,
            host: addr.to_string().into(),
            cfg,
            slots: (0..n).map(|_| Arc::new(Slot { idle: Mutex::new(Vec::new()), max_idle: cfg.max_idle })).collect(),
        })
    }

    fn slot(&self) -> &Arc<Slot> {
        let i = workers::current().map_or(0, |w| w + 1);
        self.slots.get(i).unwrap_or(&self.slots[0])
    }

    /// The newest idle connection; with `peek`, one the kernel says the backend has not closed.
    fn take_idle(&self, peek: bool) -> Option<Conn> {
        let mut list = self.slot().idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(idle) = list.pop() {
            if if peek { idle.conn.is_usable() } else { idle.conn.is_quiet() } {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Idle connections over all threads (admin API, tests).
    pub fn idle_count(&self) -> usize {
        self.slots.iter().map(|s| s.idle.lock().map(|l| l.len()).unwrap_or(0)).sum()
    }

    /// Closes connections idle for longer than `idle_timeout`, and those the peer has closed
    /// among the ones not asked about for [`CHECK_EVERY`].
    pub fn evict_idle(&self) {
        let now = crate::proxy::clock::now();
        for slot in self.slots.iter() {
            let mut list = slot.idle.lock().unwrap_or_else(|p| p.into_inner());
            list.retain_mut(|i| {
                if now.duration_since(i.since) >= self.cfg.idle_timeout {
                    return false;
                }
                if now.duration_since(i.checked) < CHECK_EVERY {
                    return true;
                }
                i.checked = now;
                i.conn.is_usable()
            });
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let open = async {
            let stream = TcpStream::connect(self.addr).await.map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            Ok(Conn::new(stream))
        };
        match tokio::time::timeout(self.cfg.connect_timeout, open).await {
            Ok(r) => r,
            Err(_) => Err(format!("connect timed out after {:?}", self.cfg.connect_timeout)),
        }
    }

    /// Sends `req` (origin-form URI, Host set) on an idle connection or a new one.
    ///
    /// Before a request that must not be sent twice goes into an idle connection, the kernel
    /// is asked whether the backend has closed it ([`Conn::is_usable`], one syscall), and a closed
    /// one is skipped. If one still fails before the first byte of the request is out (the backend
    /// reset it in between), the request comes back and goes out on the next idle connection or
    /// a fresh one: never twice.
    ///
    /// An idempotent request without a body (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT,
    /// DELETE) skips that syscall, as nginx and HAProxy do: if the connection turns out closed
    /// before one byte of an answer, it is sent again, once, on a connection checked the careful
    /// way (RFC 9112 §9.3.1 allows this for idempotent requests).
    pub async fn send(&self, req: &mut ProxyRequest) -> Result<Response<ProxyBody>, SendError> {
        let mut blind = crate::proxy::headers::idempotent(req.method()) && http_body::Body::is_end_stream(req.body());
        loop {
            let (conn, reused) = match self.take_idle(!blind) {
                Some(conn) => (conn, true),
                None => match self.connect().await {
                    Ok(conn) => (conn, false),
                    Err(why) => return Err(SendError::Connect(why)),
                },
            };
            // The body hands the connection back to this thread's list.
            let home = self.slot().clone();
            match h1::exchange(conn, req, &self.host, home, reused && blind).await {
                Ok(resp) => return Ok(resp),
                Err(Failure::Stale(why)) => {
                    tracing::debug!(endpoint = %self.addr, %why, "kept-alive connection was closed; sending the idempotent request again");
                    blind = false;
                }
                Err(Failure::NotSent(_, true)) if reused => {}
                Err(Failure::NotSent(e, whole)) => return Err(SendError::NotSent(e.to_string(), whole)),
                Err(Failure::Exchange(why)) => return Err(SendError::Exchange(why)),
                Err(Failure::Body(e)) => return Err(SendError::Body(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::h1::Release;
    use super::*;

    #[tokio::test]
    async fn the_sweep_asks_about_a_connection_only_once_it_has_been_idle_a_while() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cfg =
            PoolConfig { connect_timeout: Duration::from_secs(1), idle_timeout: Duration::from_secs(60), max_idle: 8 };
        let pool = ConnPool::new(addr, cfg);
        let mut backend_side = Vec::new();
        for _ in 0..4 {
            let conn = pool.connect().await.expect("connect");
            backend_side.push(Some(listener.accept().await.expect("accept").0));
            pool.slot().release(conn);
        }
        // The backend closes two of the four.
        backend_side[0] = None;
        backend_side[1] = None;
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::time::pause();
        pool.evict_idle();
        assert_eq!(pool.idle_count(), 4, "idle for less than CHECK_EVERY: not asked about yet");
        tokio::time::advance(CHECK_EVERY).await;
        pool.evict_idle();
        assert_eq!(pool.idle_count(), 2, "asked about once idle a while: the two the backend closed are gone");
        backend_side[2] = None;
        // Real time for its close to arrive, then the paused clock one second on.
        tokio::time::resume();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(1)).await;
        pool.evict_idle();
        assert_eq!(pool.idle_count(), 2, "asked about a second ago: not again until CHECK_EVERY has passed");
        tokio::time::advance(CHECK_EVERY).await;
        pool.evict_idle();
        assert_eq!(pool.idle_count(), 1);
        tokio::time::advance(cfg.idle_timeout).await;
        pool.evict_idle();
        assert_eq!(pool.idle_count(), 0, "past idle_timeout, open or not");
    }
}
