//! `lifeline chaos proxy`: a TCP fault proxy between the sidecar and a backend.
//!
//! Some faults must happen where the sidecar cannot see them: a slow or lossy network to the
//! payment site, a backend that accepts connections and then hangs, a partition. The proxy
//! listens on `--listen`, forwards every connection to `--upstream`, and applies the toxics
//! ([`toxic`]) set through its HTTP API ([`api`]). Disabling it is a partition: the listener
//! closes (new connections are refused) and open connections are reset. Toxics and the
//! partition carry TTLs and end by themselves.

pub mod api;
pub mod pipe;
pub mod toxic;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use pipe::End;
use toxic::{Stream, Toxics};

/// Shared state of one fault proxy.
#[derive(Debug)]
pub struct ProxyState {
    pub listen: SocketAddr,
    pub upstream: String,
    pub toxics: Arc<Toxics>,
    pub connections: AtomicU64,
    pub accepted: AtomicU64,
}

/// A running fault proxy; dropping it stops everything it started.
pub struct FaultProxy {
    pub state: Arc<ProxyState>,
    tasks: Vec<JoinHandle<()>>,
}

impl FaultProxy {
    /// Binds `listen` (port 0 picks one) and starts forwarding to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: String) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await?;
        let listen = listener.local_addr()?;
        let state = Arc::new(ProxyState {
            listen,
            upstream,
            toxics: Arc::new(Toxics::default()),
            connections: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let tasks = vec![
            tokio::spawn(tracing::Instrument::instrument(
                run(state.clone(), listener),
                tracing::info_span!("fault_proxy", %listen),
            )),
            tokio::spawn(state.toxics.clone().reap()),
        ];
        Ok(FaultProxy { state, tasks })
    }

    pub fn addr(&self) -> SocketAddr {
        self.state.listen
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Accepts while enabled; while disabled, holds no listener so connects are refused.
async fn run(state: Arc<ProxyState>, first: TcpListener) {
    let mut listener = Some(first);
    let mut disabled = state.toxics.disabled_until.subscribe();
    loop {
        let generation = CancellationToken::new();
        let _cancel_on_exit = generation.clone().drop_guard();
        if listener.is_none() {
            listener = rebind(state.listen).await;
        }
        let Some(l) = listener.as_ref() else { return };
        loop {
            tokio::select! {
                accepted = l.accept() => {
                    if let Ok((client, _)) = accepted {
                        state.accepted.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(connection(state.clone(), client, generation.child_token()));
                    }
                }
                _ = disabled.changed() => {
                    if state.toxics.disabled() { break; }
                }
            }
        }
        // Partition: refuse new connections and cut the open ones.
        listener = None;
        drop(_cancel_on_exit);
        while state.toxics.disabled() {
            if disabled.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Re-binds the listen address after a partition (the port may take a moment to be free).
async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "fault proxy cannot re-bind yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::error!(%addr, "fault proxy gave up re-binding its listen address");
    None
}

async fn connection(state: Arc<ProxyState>, mut client: TcpStream, cancel: CancellationToken) {
    let mut upstream = match TcpStream::connect(&state.upstream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(upstream = %state.upstream, error = %e, "fault proxy cannot reach the upstream");
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    state.connections.fetch_add(1, Ordering::Relaxed);
    let end = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let conn = cancel.child_token();
        let up = pipe::pipe(cr, uw, Stream::Upstream, &state.toxics, &conn);
        let down = pipe::pipe(ur, cw, Stream::Downstream, &state.toxics, &conn);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let (end, is_up) = tokio::select! {
                e = &mut up, if !up_done => (e, true),
                e = &mut down, if !down_done => (e, false),
            };
            if end != End::Eof {
                conn.cancel();
                break end;
            }
            if is_up {
                up_done = true;
            } else {
                down_done = true;
            }
            if up_done && down_done {
                break End::Eof;
            }
        }
    };
    if end == End::Reset {
        reset(&client);
        reset(&upstream);
    }
    state.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Makes the coming close a TCP RST ("connection reset by peer").
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
