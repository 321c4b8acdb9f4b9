//! Request dispatch shared by the three simulators, and the state they share.
//!
//! Every request first passes the fault gate ([`fault`]), which delays, fails or holds it as the
//! service's mode says; then `/healthz` or the service's own handler answers. `/sim/*` goes to
//! [`super::control`] before the gate. The listener side of `down` and `flap` is in
//! [`super::server`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::fixture::World;
use super::mode::{Latency, Mode};
use super::payment::PaymentState;
use super::{auth, card, payment, Service, SimOptions};
use crate::proxy::body::ProxyBody;
use crate::proxy::respond::{json_error, json_response};

/// A mode and when it was set (flap phases count from then), with an optional automatic return
/// to `healthy`.
#[derive(Debug, Clone)]
pub(crate) struct ModeState {
    pub mode: Mode,
    pub since: Instant,
    pub revert_at: Option<Instant>,
}

impl ModeState {
    /// The mode in force at `now`: a flap is `healthy` or `down` depending on its phase.
    /// Also returns when that answer can next change.
    pub fn effective(&self, now: Instant) -> (Mode, Option<Instant>) {
        let (mode, flip) = match &self.mode {
            Mode::Flap { period } => {
                let n = (now.saturating_duration_since(self.since).as_nanos() / period.as_nanos().max(1)) as u32;
                let next = self.since + *period * (n + 1);
                (if n % 2 == 0 { Mode::Healthy } else { Mode::Down }, Some(next))
            }
            m => (m.clone(), None),
        };
        let wake = match (flip, self.revert_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (mode, wake)
    }
}

/// Per-service state: address, mode, random source, base latency.
pub(crate) struct ServiceCell {
    service: Service,
    pub mode: watch::Sender<ModeState>,
    rng: Mutex<SmallRng>,
    latency: Latency,
    /// Requests being served right now (a hung request counts until it is released or dropped).
    pub in_flight: AtomicUsize,
}

/// Counts a request in flight until dropped (also when hyper drops it because the caller left).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServiceCell {
    pub fn set_mode(&self, mode: Mode, duration: Option<Duration>) {
        let now = Instant::now();
        tracing::info!(service = self.service.as_str(), mode = %mode, ?duration, "simulator mode set");
        self.mode.send_replace(ModeState { mode, since: now, revert_at: duration.map(|d| now + d) });
    }

    pub fn mode(&self) -> Mode {
        self.mode.borrow().mode.clone()
    }

    /// Runs `f` with this service's seeded random source.
    pub fn with_rng<T>(&self, f: impl FnOnce(&mut SmallRng) -> T) -> T {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut rng)
    }
}

/// Everything the services started together share.
pub(crate) struct Shared {
    pub world: World,
    pub services: BTreeMap<Service, ServiceCell>,
    pub auth: auth::AuthState,
    pub payment: Option<PaymentState>,
}

impl Shared {
    pub fn new(listeners: &BTreeMap<Service, (TcpListener, Mode)>, opts: &SimOptions) -> anyhow::Result<Shared> {
        let mut services = BTreeMap::new();
        let mut payment = None;
        for (&service, (listener, _)) in listeners {
            // One independent stream per service, so auth traffic does not shift payment's draws.
            let seed = opts.seed ^ (service as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let (mode, _) = watch::channel(ModeState { mode: Mode::Healthy, since: Instant::now(), revert_at: None });
            let cell = ServiceCell {
                service,
                mode,
                rng: Mutex::new(SmallRng::seed_from_u64(seed)),
                latency: opts.latency,
                in_flight: AtomicUsize::new(0),
            };
            services.insert(service, cell);
            if service == Service::Payment {
                let state = PaymentState::open(listener.local_addr()?.port(), opts.ledger.clone());
                let ledger = opts.ledger.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
                payment = Some(state.map_err(|e| anyhow::anyhow!("ledger {ledger}: {e}"))?);
            }
        }
        Ok(Shared { world: World::new(), services, auth: auth::AuthState::default(), payment })
    }
}

/// Returned instead of an answer under `reset-after`: hyper then closes the connection (HTTP/1)
/// or resets the stream (HTTP/2), so the caller sees a request that was sent but not answered.
#[derive(Debug)]
pub(crate) struct ResetAfter;

impl std::fmt::Display for ResetAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated reset after the request took effect")
    }
}

impl std::error::Error for ResetAfter {}

/// Serves one request to `service`.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    service: Service,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ResetAfter> {
    if req.uri().path().starts_with("/sim/") {
        return Ok(super::control::control(&shared, Some(service), req).await);
    }
    let _in_flight = InFlight::new(&shared.services[&service].in_flight);
    let reset_after = match fault(&shared, service).await {
        Ok(reset_after) => reset_after,
        Err(resp) => return Ok(resp),
    };
    let resp = match (service, req.uri().path()) {
        (_, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok", "service": service.as_str()})),
        (Service::Auth, _) => auth::handle(&shared, service, req).await,
        (Service::Payment, _) => payment::handle(&shared, req).await,
        (Service::Card, _) => card::handle(&shared, req).await,
    };
    if reset_after {
        return Err(ResetAfter);
    }
    Ok(resp)
}

/// The fault gate: waits, then either answers instead of the service (`Err`) or lets the request
/// through (`Ok`), saying whether to drop the answer once the service has acted.
async fn fault(shared: &Shared, service: Service) -> Result<bool, Response<ProxyBody>> {
    let cell = &shared.services[&service];
    let state = cell.mode.borrow().clone();
    let (mode, _) = state.effective(Instant::now());
    let draw = |r: &mut SmallRng, ratio: &crate::config::Percent| r.random_range(0..10_000u32) < ratio.basis_points();
    let (delay, fail, reset) = match &mode {
        Mode::Healthy => (cell.with_rng(|r| cell.latency.sample(r)), None, false),
        Mode::Slow(l) => (cell.with_rng(|r| l.sample(r)), None, false),
        Mode::Errors { ratio, status } => cell.with_rng(|r| {
            let fail = draw(r, ratio);
            (cell.latency.sample(r), fail.then_some(*status), false)
        }),
        Mode::ResetAfter { ratio } => cell.with_rng(|r| {
            let reset = draw(r, ratio);
            (cell.latency.sample(r), None, reset)
        }),
        Mode::Hang => {
            let mut rx = cell.mode.subscribe();
            let _ = rx.wait_for(|s| !matches!(s.mode, Mode::Hang)).await;
            let msg = "the request hung until the mode changed; it had no effect";
            return Err(json_error(StatusCode::SERVICE_UNAVAILABLE, "sim_hang_released", msg));
        }
        Mode::Down | Mode::Flap { .. } => {
            // Only on a connection that raced the listener closing; it is being dropped.
            return Err(json_error(StatusCode::SERVICE_UNAVAILABLE, "sim_down", "the service is down"));
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fail {
        None => Ok(reset),
        Some(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let msg = format!("injected by mode {mode}; the request had no effect");
            Err(json_error(status, "sim_injected_error", msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flap_alternates_from_when_it_was_set() {
        let since = Instant::now();
        let s = ModeState { mode: Mode::Flap { period: Duration::from_secs(2) }, since, revert_at: None };
        assert_eq!(s.effective(since).0, Mode::Healthy);
        assert_eq!(s.effective(since + Duration::from_millis(2500)).0, Mode::Down);
        assert_eq!(
            s.effective(since + Duration::from_millis(4100)),
            (Mode::Healthy, Some(since + Duration::from_secs(6)))
        );
    }
}
