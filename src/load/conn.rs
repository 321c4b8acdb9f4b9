//! The target and one connection of the generator's fixed pool.
//!
//! Each connection task owns one hyper client connection (`client::conn`, no pool lookups, no
//! locks): HTTP/1.1 carries one request at a time, h2c multiplexes up to `max_streams`. A
//! connection that fails is replaced on the next arrival; a refused connect is an outcome
//! (`connect_error`) of that arrival, so a dead backend is measured at the offered rate rather
//! than stalling the run.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::stats::Outcome;
use super::workload::Origin;

/// Where and how to send: the address, protocol, pool size and timeouts.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port` as given.
    pub url: String,
    pub addr: SocketAddr,
    pub origin: Origin,
    /// Connections in the pool; each carries `1/connections` of the offered rate.
    pub connections: usize,
    /// Concurrent streams per connection with h2c (HTTP/1.1 always has one).
    pub max_streams: usize,
    /// Per request, from the moment it is written to the end of the response body.
    pub timeout: Duration,
    /// Seeds card draws and amounts (idempotency keys are always fresh).
    pub seed: u64,
}

impl Target {
    /// Parses `http://host:port[/...]` (the path is ignored here) and resolves the host once.
    pub fn new(url: &str, http2: bool, connections: usize) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(s) => {
                return Err(format!("{url}: only http:// is supported (got {s}://); TLS is not the sidecar's hop"))
            }
            None => return Err(format!("{url}: expected an absolute URL such as http://127.0.0.1:15001/")),
        }
        let authority = uri.authority().cloned().ok_or_else(|| format!("{url}: no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = (authority.host(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", authority.host()))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", authority.host()))?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| format!("{url}: bad host: {e}"))?;
        if connections == 0 {
            return Err("at least one connection is needed".into());
        }
        Ok(Target {
            url: format!("http://{authority}"),
            addr,
            origin: Origin { authority, host, http2 },
            connections,
            max_streams: 100,
            timeout: Duration::from_secs(10),
            seed: 1,
        })
    }

    pub fn protocol(&self) -> &'static str {
        if self.origin.http2 {
            "h2c"
        } else {
            "http/1.1"
        }
    }
}

/// One open client connection and the task driving it.
pub struct Conn {
    sender: Sender,
    driver: JoinHandle<()>,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    /// Opens a connection within the target's timeout.
    pub async fn open(target: &Target) -> Result<Conn, Outcome> {
        let connect = async {
            let stream = TcpStream::connect(target.addr).await.map_err(|_| Outcome::Connect)?;
            let _ = stream.set_nodelay(true);
            let io = TokioIo::new(stream);
            if target.origin.http2 {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.map_err(|_| Outcome::Connect)?;
                Ok(Conn { sender: Sender::H2(sender), driver: tokio::spawn(async move { drop(conn.await) }) })
            } else {
                let (sender, conn) = http1::handshake(io).await.map_err(|_| Outcome::Connect)?;
                Ok(Conn { sender: Sender::H1(sender), driver: tokio::spawn(async move { drop(conn.await) }) })
            }
        };
        tokio::time::timeout(target.timeout, connect).await.unwrap_or(Err(Outcome::Timeout))
    }

    /// Waits until the connection can take a request; false if it is closed.
    pub async fn ready(&mut self) -> bool {
        match &mut self.sender {
            Sender::H1(s) => s.ready().await.is_ok(),
            Sender::H2(s) => s.ready().await.is_ok(),
        }
    }

    pub fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Sends `req`; the future reads the whole response body and yields its status.
    pub fn send(
        &mut self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        let fut = match &mut self.sender {
            Sender::H1(s) => Either::Left(s.send_request(req)),
            Sender::H2(s) => Either::Right(s.send_request(req)),
        };
        async move {
            let exchange = async {
                let resp = fut.await?;
                let status: StatusCode = resp.status();
                let mut body = resp.into_body();
                while let Some(frame) = body.frame().await {
                    frame?;
                }
                Ok::<_, hyper::Error>(status)
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(status)) => Outcome::Status(status.as_u16()),
                Ok(Err(_)) => Outcome::Io,
                Err(_) => Outcome::Timeout,
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
