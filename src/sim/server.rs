//! The listener life cycle of one simulated service.
//!
//! `down` must look like a dead process to the sidecar: new connections are refused (the listener
//! is closed, not just ignored) and pooled keep-alive connections break (every connection task is
//! cancelled, which drops its socket). Any other mode rebinds the same address, so a sidecar's
//! endpoint comes back exactly as a restarted backend would. `flap` is the same switch on a timer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::mode::Mode;
use super::service::{self, Shared};
use super::Service;

/// Binds with `SO_REUSEADDR`, so a service can reopen its port right after `down` (or a restart)
/// while old connections sit in TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves `service` until `stop`, opening and closing the listener as the mode says.
pub(crate) async fn run(shared: Arc<Shared>, service: Service, first: TcpListener, stop: CancellationToken) {
    let Ok(addr) = first.local_addr() else { return };
    let cell = &shared.services[&service];
    let mut modes = cell.mode.subscribe();
    let mut listener = Some(first);
    let mut conns = stop.child_token();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    builder.http2().max_concurrent_streams(1024);
    loop {
        let state = modes.borrow_and_update().clone();
        let now = Instant::now();
        if state.revert_at.is_some_and(|at| at <= now) {
            cell.set_mode(Mode::Healthy, None);
            continue;
        }
        let (mode, mut wake) = state.effective(now);
        if mode == Mode::Down {
            if listener.take().is_some() {
                conns.cancel();
                conns = stop.child_token();
                tracing::info!(service = service.as_str(), %addr, "simulator down: listener closed, connections dropped");
            }
        } else if listener.is_none() {
            match bind(addr) {
                Ok(l) => {
                    tracing::info!(service = service.as_str(), %addr, "simulator listening again");
                    listener = Some(l);
                }
                Err(e) => {
                    tracing::warn!(service = service.as_str(), %addr, error = %e, "cannot reopen; retrying");
                    wake = Some(now + Duration::from_millis(100));
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            changed = modes.changed() => if changed.is_err() { break },
            () = sleep_until(wake) => {}
            accepted = accept(listener.as_ref()) => {
                let Ok((stream, _peer)) = accepted else {
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let svc = service_fn(move |req| service::handle(shared.clone(), service, req));
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let token = conns.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = conn => {}
                        // Dropping the connection closes the socket mid-whatever: that is the point.
                        () = token.cancelled() => {}
                    }
                });
            }
        }
    }
    conns.cancel();
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}
