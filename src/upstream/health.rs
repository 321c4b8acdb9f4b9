//! Active health checks: one task per endpoint probes it over HTTP or TCP and moves its
//! [`Health`] through the HAProxy/Envoy state machine.
//!
//! An endpoint flips only after `healthy` / `unhealthy` consecutive results (pingora and HAProxy
//! `rise`/`fall`), except at startup, where one pass is enough (Envoy), and while it is
//! recovering (failback hold or slow-start ramp), where a single failure sends it back at once:
//! an endpoint on probation gets no benefit of the doubt. Between checks the task waits
//! `interval`, or `transition_interval` while the endpoint is changing state or ejected (HAProxy
//! `fastinter`), plus random jitter so a fleet of sidecars does not probe in lockstep.
//!
//! A passing check reinstates an endpoint ejected for gateway failures (it was unreachable and is
//! reachable again; it then serves the same failback hold as any recovery) but not one ejected
//! for 5xx: a health endpoint that answers 200 says nothing
//! about the errors real requests got (the surprise behind envoy#24217 and friends).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::{FailoverConfig, HealthCheckConfig, HealthProbe};
use super::endpoint::{ActiveState, CheckRecord, Endpoint, Health};
use super::Shared;
use crate::telemetry::names;

/// Largest health-check body read when `body_contains` is set.
const MAX_BODY: usize = 64 << 10;

/// A decision to log: (kind, message, evidence).
pub type Change = (&'static str, String, serde_json::Value);

/// Probes `endpoint` until the task is aborted.
pub async fn run(shared: Arc<Shared>, endpoint: Arc<Endpoint>, hc: HealthCheckConfig) {
    // Spread the first checks, unless traffic waits for them (`wait_first_check`).
    let first = if hc.start_healthy { hc.transition_interval.min(hc.interval) } else { Duration::ZERO };
    let mut wait = Duration::from_millis(rand::rng().random_range(0..=first.as_millis() as u64));
    let pass = metrics::counter!(names::HEALTH_CHECKS_TOTAL, "cluster" => shared.name.clone(), "result" => "pass");
    let fail = metrics::counter!(names::HEALTH_CHECKS_TOTAL, "cluster" => shared.name.clone(), "result" => "fail");
    let mut checker = Checker::default();
    loop {
        checker.wait(wait).await;
        let result = checker.check(endpoint.addr, &endpoint.config.address, &hc).await;
        if result.is_ok() { &pass } else { &fail }.increment(1);
        let now = Instant::now();
        let (changes, changing, first) = {
            let mut h = endpoint.state.health();
            let first = h.last_check.is_none();
            let changes = apply(&mut h, result, now, &hc, &shared.config.policy.failover);
            // HAProxy's `fastinter`: going down, coming up, unchecked, ejected or on probation.
            // A fully down endpoint is probed at the normal interval (`downinter`).
            let changing = match h.active {
                ActiveState::Unknown => true,
                ActiveState::Unhealthy => h.passes > 0,
                ActiveState::Healthy => h.fails > 0 || h.hold_until.is_some_and(|t| now < t),
            } || h.ejection.is_some();
            (changes, changing, first)
        };
        // The first check may be what the cluster's warm-up waits for (`wait_first_check`).
        let ring = first || !changes.is_empty();
        if !changes.is_empty() {
            for (kind, message, evidence) in changes {
                if kind == "reinstated" {
                    endpoint.state.reset_consecutive();
                    endpoint.state.window.reset();
                }
                shared.event(kind, Some(&endpoint), message, evidence);
            }
        }
        if ring {
            shared.wake.notify_one();
        }
        let base = if changing { hc.transition_interval } else { hc.interval };
        let jitter = (base.as_millis() as u64 * u64::from(hc.jitter.basis_points())) / 10_000;
        wait = base + Duration::from_millis(rand::rng().random_range(0..=jitter));
    }
}

/// Moves `h` by one check result; returns what changed.
pub fn apply(
    h: &mut Health,
    result: Result<String, String>,
    now: Instant,
    hc: &HealthCheckConfig,
    fo: &FailoverConfig,
) -> Vec<Change> {
    let passed = result.is_ok();
    let detail = match result {
        Ok(d) | Err(d) => d,
    };
    h.last_check = Some(CheckRecord { at: now, passed, detail: detail.clone() });
    let mut changes = Vec::new();
    if passed {
        h.passes = h.passes.saturating_add(1);
        h.fails = 0;
        match h.active {
            ActiveState::Unknown => {
                h.active = ActiveState::Healthy;
                changes.push(("health_changed", "first health check passed".into(), json!({ "check": detail })));
            }
            ActiveState::Unhealthy if h.passes >= hc.healthy => {
                h.active = ActiveState::Healthy;
                h.hold_until = Some(now + fo.failback_hold);
                h.ramp_from = Some(now + fo.failback_hold);
                changes.push((
                    "health_changed",
                    format!(
                        "healthy after {} passing checks; takes traffic after failback_hold {:?}, then ramps over {:?}",
                        h.passes, fo.failback_hold, fo.slow_start
                    ),
                    json!({ "passes": h.passes, "threshold": hc.healthy, "check": detail,
                            "failback_hold_ms": fo.failback_hold.as_millis() as u64,
                            "slow_start_ms": fo.slow_start.as_millis() as u64 }),
                ));
            }
            _ => {}
        }
        let reachable_again = h.ejection.as_ref().is_some_and(|e| e.reason == "consecutive_gateway_failures");
        if reachable_again && h.passes >= hc.healthy && h.active == ActiveState::Healthy {
            let reason = h.ejection.take().map(|e| e.reason).unwrap_or("");
            // Back from unreachable: the same failback hold and ramp as a recovery seen by checks.
            let hold_end = now + fo.failback_hold;
            h.hold_until = Some(h.hold_until.map_or(hold_end, |t| t.max(hold_end)));
            h.ramp_from = h.hold_until;
            changes.push((
                "reinstated",
                format!(
                    "{} consecutive active checks passed; the ejection ({reason}) ends early; takes traffic after \
                     failback_hold {:?}, then ramps over {:?}",
                    h.passes, fo.failback_hold, fo.slow_start
                ),
                json!({ "passes": h.passes, "threshold": hc.healthy, "ejection_reason": reason, "check": detail }),
            ));
        }
    } else {
        h.fails = h.fails.saturating_add(1);
        h.passes = 0;
        let recovering = h.hold_until.is_some_and(|t| now < t) || h.ramp_from.is_some_and(|r| now >= r);
        let down = match h.active {
            ActiveState::Healthy => h.fails >= hc.unhealthy || recovering,
            ActiveState::Unknown => h.fails >= hc.unhealthy,
            ActiveState::Unhealthy => false,
        };
        if down {
            let why = if h.fails >= hc.unhealthy {
                format!("unhealthy after {} failed checks", h.fails)
            } else {
                "a check failed while recovering (failback hold or slow start): back to unhealthy at once".into()
            };
            h.active = ActiveState::Unhealthy;
            h.hold_until = None;
            h.ramp_from = None;
            changes.push((
                "health_changed",
                why,
                json!({ "fails": h.fails, "threshold": hc.unhealthy, "recovering": recovering, "check": detail }),
            ));
        }
    }
    changes
}

/// What an endpoint's checks keep between them: the HTTP connection, with `reuse_connection`
/// (Envoy's default). A check is then one request on an open connection instead of a connect,
/// a request and a close: for the backend, one connection per endpoint per sidecar instead of
/// one per check (with a thousand sidecars and a 1 s interval, a thousand connects a second
/// per endpoint, each leaving a `TIME_WAIT` behind). While the checker waits for the next check
/// it watches the connection, so one the backend closes (its keep-alive timeout, a restart) is
/// let go at once; any failed or timed-out check lets it go too, and the next check connects
/// afresh. What reuse gives up (as under Envoy): a backend that stops taking new connections
/// while the kept one still answers passes its checks; `reuse_connection: false` for that.
#[derive(Default)]
pub struct Checker {
    kept: Option<Kept>,
}

struct Kept {
    sender: http1::SendRequest<Empty<Bytes>>,
    conn: Pin<Box<http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>>>,
}

/// How one request on a connection went.
enum Exchange {
    /// An answer was read (or the request could not be made): the check's result, and the
    /// connection when it can carry the next check.
    Done(Result<String, String>, Option<Kept>),
    /// The connection failed before any answer. On a kept one, the backend closed it as the
    /// request went out: that says nothing about the endpoint, and the check goes on over a
    /// new connection. On a new one it is the check's failure.
    Stale(String),
}

impl Checker {
    /// One check. `Ok` carries a short description of the pass, `Err` of the failure.
    pub async fn check(&mut self, addr: SocketAddr, address: &str, hc: &HealthCheckConfig) -> Result<String, String> {
        // `check_inner` takes the kept connection and puts back only one that passed: on a
        // timeout it is dropped with the unfinished check.
        match tokio::time::timeout(hc.timeout, self.check_inner(addr, address, &hc.probe)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", hc.timeout)),
        }
    }

    /// Waits `d`; a kept connection that the backend closes (or that breaks) meanwhile is let go.
    pub async fn wait(&mut self, d: Duration) {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        if let Some(kept) = &mut self.kept {
            tokio::select! {
                () = &mut sleep => return,
                // Idle, hyper's connection ends only on the backend's close or garbage.
                _ = kept.conn.as_mut() => self.kept = None,
            }
        }
        sleep.await;
    }

    /// Whether a connection is kept for the next check.
    pub fn keeps_connection(&self) -> bool {
        self.kept.is_some()
    }

    async fn check_inner(&mut self, addr: SocketAddr, address: &str, probe: &HealthProbe) -> Result<String, String> {
        let HealthProbe::Http { reuse_connection, .. } = probe else {
            TcpStream::connect(addr).await.map_err(|e| format!("connect failed: {e}"))?;
            return Ok("tcp connect succeeded".into());
        };
        if let Some(kept) = self.kept.take() {
            match exchange(kept, probe, address, false).await {
                Exchange::Done(result, kept) => {
                    self.kept = kept;
                    return result;
                }
                Exchange::Stale(why) => {
                    tracing::debug!(%addr, why, "kept health check connection was closed; connecting afresh")
                }
            }
        }
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect failed: {e}"))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
        match exchange(Kept { sender, conn: Box::pin(conn) }, probe, address, !reuse_connection).await {
            Exchange::Done(result, kept) => {
                self.kept = kept;
                result
            }
            // On a new connection, a failure before any answer is the check's failure.
            Exchange::Stale(why) => Err(why),
        }
    }
}

/// Sends the check's request on `kept` (asking the backend to close it after the answer with
/// `close`) and judges the answer.
async fn exchange(kept: Kept, probe: &HealthProbe, address: &str, close: bool) -> Exchange {
    let HealthProbe::Http { method, path, host, expected_statuses, body_contains, .. } = probe else {
        return Exchange::Done(Err("not an HTTP check".into()), None);
    };
    let mut req = Request::builder()
        .method(method.as_str())
        .uri(path.as_str())
        .header(http::header::HOST, host.as_deref().unwrap_or(address))
        .header(http::header::USER_AGENT, "lifeline-health-check");
    if close {
        req = req.header(http::header::CONNECTION, "close");
    }
    let req = match req.body(Empty::<Bytes>::new()) {
        Ok(req) => req,
        Err(e) => return Exchange::Done(Err(format!("bad health check request: {e}")), None),
    };
    let Kept { mut sender, mut conn } = kept;
    let (outcome, conn) = {
        // `Err((false, why))`: no answer came (the connection failed first); `Err((true, why))`:
        // the answer fails the check.
        let work = async {
            sender.ready().await.map_err(|e| (false, format!("connection: {e}")))?;
            let resp = sender.send_request(req).await.map_err(|e| (false, format!("request failed: {e}")))?;
            let status = resp.status().as_u16();
            if !expected_statuses.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status)) {
                return Err((true, format!("status {status} is not expected")));
            }
            // Read to its end, so the connection can carry the next check; past `MAX_BODY` it
            // cannot (and with `body_contains` the check fails).
            let body = match http_body_util::Limited::new(resp.into_body(), MAX_BODY).collect().await {
                Ok(b) => Some(b.to_bytes()),
                Err(e) if body_contains.is_some() => return Err((true, format!("status {status}, body: {e}"))),
                Err(_) => None,
            };
            let verdict = match (body_contains, &body) {
                (None, _) => Ok(format!("status {status}")),
                (Some(needle), Some(body)) if String::from_utf8_lossy(body).contains(needle.as_str()) => {
                    Ok(format!("status {status}, body contains {needle:?}"))
                }
                (Some(needle), _) => Err(format!("status {status}, body lacks {needle:?}")),
            };
            Ok((verdict, body.is_some()))
        };
        tokio::pin!(work);
        let ended = tokio::select! {
            biased;
            r = &mut work => Err(r),
            c = conn.as_mut() => Ok(c),
        };
        match ended {
            Err(r) => (r, Some(conn)),
            // The connection ended (told to close, closed by the backend, or broken). Dropped, it
            // settles the request: its answer, if one came, else an error.
            Ok(c) => {
                drop(conn);
                let r = match (work.await, c) {
                    (Err((false, _)), Err(e)) => Err((false, format!("connection: {e}"))),
                    (r, _) => r,
                };
                (r, None)
            }
        }
    };
    match outcome {
        Ok((verdict, read_whole)) => {
            let reusable = read_whole && verdict.is_ok() && !close && !sender.is_closed();
            Exchange::Done(verdict, conn.filter(|_| reusable).map(|conn| Kept { sender, conn }))
        }
        Err((true, why)) => Exchange::Done(Err(why), None),
        Err((false, why)) => Exchange::Stale(why),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinSet;

    use super::*;
    use crate::config::Percent;

    const KEEP_ALIVE: u8 = 0;
    /// Answers, then closes the connection 20 ms later without having said so (a keep-alive
    /// timeout): after the checker has taken the answer and kept the connection.
    const ANSWER_THEN_CLOSE: u8 = 1;
    const UNAVAILABLE: u8 = 2;
    const HANG: u8 = 3;
    const LARGE_BODY: u8 = 4;

    /// A backend's health endpoint over real sockets: counts connections, keeps every request
    /// head, answers as `mode` says.
    struct Backend {
        addr: SocketAddr,
        accepts: Arc<AtomicUsize>,
        heads: Arc<Mutex<Vec<String>>>,
        mode: Arc<AtomicU8>,
        task: Option<tokio::task::JoinHandle<()>>,
    }

    impl Backend {
        async fn start() -> Backend {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (accepts, mode) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU8::new(0)));
            let heads: Arc<Mutex<Vec<String>>> = Arc::default();
            let (a, h, m) = (accepts.clone(), Arc::clone(&heads), mode.clone());
            let task = tokio::spawn(async move {
                let mut conns = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    a.fetch_add(1, Ordering::SeqCst);
                    conns.spawn(serve(stream, h.clone(), m.clone()));
                }
            });
            Backend { addr, accepts, heads, mode, task: Some(task) }
        }

        fn set(&self, mode: u8) {
            self.mode.store(mode, Ordering::SeqCst);
        }

        fn accepts(&self) -> usize {
            self.accepts.load(Ordering::SeqCst)
        }

        fn asked_to_close(&self) -> Vec<bool> {
            self.heads
                .lock()
                .expect("heads")
                .iter()
                .map(|h| h.to_ascii_lowercase().contains("connection: close"))
                .collect()
        }

        /// Closes the listener and every connection, as a killed process would.
        async fn kill(&mut self) {
            if let Some(task) = self.task.take() {
                task.abort();
                let _ = task.await;
            }
        }
    }

    async fn serve(mut stream: TcpStream, heads: Arc<Mutex<Vec<String>>>, mode: Arc<AtomicU8>) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let end = loop {
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end);
            let close = head.to_ascii_lowercase().contains("connection: close");
            heads.lock().expect("heads").push(head);
            let mode = mode.load(Ordering::SeqCst);
            let answer = match mode {
                UNAVAILABLE => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown".to_string(),
                HANG => std::future::pending().await,
                LARGE_BODY => {
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}", MAX_BODY + 1, "x".repeat(MAX_BODY + 1))
                }
                _ => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string(),
            };
            if stream.write_all(answer.as_bytes()).await.is_err() || close {
                return;
            }
            if mode == ANSWER_THEN_CLOSE {
                tokio::time::sleep(Duration::from_millis(20)).await;
                return;
            }
        }
    }

    fn hc(reuse_connection: bool) -> HealthCheckConfig {
        HealthCheckConfig {
            probe: HealthProbe::Http {
                method: "GET".into(),
                path: "/healthz".into(),
                host: None,
                expected_statuses: vec![(200, 299)],
                body_contains: None,
                reuse_connection,
            },
            interval: Duration::from_secs(1),
            jitter: Percent::from_percent(0),
            transition_interval: Duration::from_millis(250),
            timeout: Duration::from_millis(300),
            healthy: 2,
            unhealthy: 2,
            start_healthy: true,
        }
    }

    async fn check(checker: &mut Checker, backend: &Backend, hc: &HealthCheckConfig) -> Result<String, String> {
        checker.check(backend.addr, "backend", hc).await
    }

    #[tokio::test]
    async fn passing_checks_share_one_connection_unless_reuse_is_off() {
        for (reuse, connections) in [(true, 1), (false, 4)] {
            let backend = Backend::start().await;
            let (mut checker, hc) = (Checker::default(), hc(reuse));
            for _ in 0..4 {
                assert_eq!(check(&mut checker, &backend, &hc).await, Ok("status 200".into()));
                assert_eq!(checker.keeps_connection(), reuse);
                checker.wait(Duration::from_millis(10)).await;
            }
            assert_eq!(backend.accepts(), connections, "four checks, reuse_connection: {reuse}");
            assert_eq!(backend.asked_to_close(), vec![!reuse; 4], "`Connection: close` only without reuse");
        }
    }

    #[tokio::test]
    async fn a_connection_the_backend_closes_between_checks_is_let_go_while_waiting() {
        let backend = Backend::start().await;
        backend.set(ANSWER_THEN_CLOSE);
        let (mut checker, hc) = (Checker::default(), hc(true));
        assert!(check(&mut checker, &backend, &hc).await.is_ok());
        assert!(checker.keeps_connection());
        checker.wait(Duration::from_millis(100)).await;
        assert!(!checker.keeps_connection(), "the close was seen while waiting");
        assert!(check(&mut checker, &backend, &hc).await.is_ok());
        assert_eq!(backend.accepts(), 2);
    }

    #[tokio::test]
    async fn a_kept_connection_found_closed_by_the_next_check_is_replaced_not_failed() {
        let backend = Backend::start().await;
        backend.set(ANSWER_THEN_CLOSE);
        let (mut checker, hc) = (Checker::default(), hc(true));
        for _ in 0..3 {
            // Not `checker.wait`: nobody watches the connection, the check finds it closed.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(check(&mut checker, &backend, &hc).await, Ok("status 200".into()));
            assert!(checker.keeps_connection());
        }
        assert_eq!(backend.accepts(), 3);
    }

    #[tokio::test]
    async fn a_failed_or_timed_out_check_lets_the_connection_go() {
        for (mode, failure) in [(UNAVAILABLE, "status 503 is not expected"), (HANG, "no answer within 300ms")] {
            let backend = Backend::start().await;
            let (mut checker, hc) = (Checker::default(), hc(true));
            assert!(check(&mut checker, &backend, &hc).await.is_ok());
            backend.set(mode);
            assert_eq!(check(&mut checker, &backend, &hc).await, Err(failure.into()));
            assert!(!checker.keeps_connection());
            backend.set(KEEP_ALIVE);
            assert!(check(&mut checker, &backend, &hc).await.is_ok());
            assert_eq!(backend.accepts(), 2, "the check after \"{failure}\" connects afresh");
        }
    }

    #[tokio::test]
    async fn an_endpoint_that_is_gone_fails_its_check_despite_the_kept_connection() {
        let mut backend = Backend::start().await;
        let (mut checker, hc) = (Checker::default(), hc(true));
        assert!(check(&mut checker, &backend, &hc).await.is_ok());
        backend.kill().await;
        let failed = check(&mut checker, &backend, &hc).await;
        assert!(failed.as_ref().is_err_and(|e| e.starts_with("connect failed")), "{failed:?}");
        assert!(!checker.keeps_connection());
    }

    #[tokio::test]
    async fn an_answer_too_large_to_read_passes_but_is_not_reused() {
        let backend = Backend::start().await;
        backend.set(LARGE_BODY);
        let (mut checker, hc) = (Checker::default(), hc(true));
        assert_eq!(check(&mut checker, &backend, &hc).await, Ok("status 200".into()));
        assert!(!checker.keeps_connection());
        assert!(check(&mut checker, &backend, &hc).await.is_ok());
        assert_eq!(backend.accepts(), 2);
    }
}
