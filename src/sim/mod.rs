//! Simulated auth, payment and card services: test doubles for the user's backends.
//!
//! Every later capability (breakers, failover, offline grace, drills, capacity tests) needs
//! backends that behave like the real electronic social-security-card services, fail on command,
//! and keep a ledger that proves what was settled. They are built into the binary
//! (`lifeline sim`, `lifeline demo`) so an SRE can drill in staging without the real services,
//! and into the library so tests start them in-process on `127.0.0.1:0`:
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use lifeline::sim::{Mode, Service, SimOptions, SimServer};
//! let payment = SimServer::start(Service::Payment, "127.0.0.1:0".parse()?, SimOptions::for_tests()).await?;
//! // ... point a sidecar at payment.addr ...
//! payment.set_mode(Mode::parse("errors:50%:503").map_err(anyhow::Error::msg)?);
//! assert!(payment.ledger().is_empty());
//! payment.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Endpoints (all JSON; bad input is a 400 `{"error": code, "message": ...}`, never a panic):
//!
//! * auth: `POST /auth/v1/verify` `{"card_no","pin"}` → 200 `{"token","expires_in"}`, 401 wrong
//!   PIN, 403 card lost or frozen, 400 when the PIN is not exactly 6 digits;
//!   `GET /auth/v1/tokens/{token}` → 200 or 404.
//! * payment: `POST /payment/v1/settlements` (see [`payment`] for the idempotency rules);
//!   `GET /payment/v1/settlements/{settlement_id}` and `GET /payment/v1/settlements?idempotency_key=K`
//!   → 200 or 404.
//! * card: `GET /card/v1/cards/{card_no}` → `{"status": active|lost|frozen, "fund_balance_fen"}`;
//!   `POST /card/v1/cards/{card_no}/loss` → the card is lost from now on.
//! * every service: `GET /healthz` (follows the fault mode); `GET|POST /sim/mode` (see [`mode`]);
//!   payment: `GET /sim/ledger` (one JSON settlement per line, `?from=N` skips the first N).
//!
//! The card rules (PIN, lost/frozen numbers, balances) are in [`fixture`]. Services started
//! together ([`Sims::start`], `lifeline sim`) share one card world, so a loss reported to the
//! card service declines the next settlement on the payment service.
//!
//! Cheap on CPU by design (they run beside load tests on two cores): latency is a timer, the
//! ledger is written by one thread with group commit, state is a few hash maps.

pub mod auth;
mod book;
pub mod card;
pub mod cli;
mod control;
pub mod demo;
pub mod fixture;
pub mod ledger;
pub mod mode;
pub mod payment;
mod request;
mod server;
mod service;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use ledger::LedgerEntry;
pub use mode::{Latency, Mode};

use service::{ServiceCell, Shared};

/// One of the three simulated services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Auth,
    Payment,
    Card,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Auth, Service::Payment, Service::Card];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Auth => "auth",
            Service::Payment => "payment",
            Service::Card => "card",
        }
    }

    pub fn parse(s: &str) -> Result<Service, String> {
        match s.trim() {
            "auth" => Ok(Service::Auth),
            "payment" => Ok(Service::Payment),
            "card" => Ok(Service::Card),
            other => Err(format!("unknown service {other:?}: expected auth, payment or card")),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options shared by the services started together.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Seeds latency, fault and token draws: the same seed and the same request order give the
    /// same answers and delays.
    pub seed: u64,
    /// The payment ledger file (append + fsync, reloaded on start). `None`: memory only.
    pub ledger: Option<PathBuf>,
    /// Base latency of every answer in `healthy` mode (and under `errors`).
    pub latency: Latency,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions { seed: 0, ledger: None, latency: Latency::REALISTIC }
    }
}

impl SimOptions {
    /// No base latency, no ledger file: for tests that count rather than time.
    pub fn for_tests() -> SimOptions {
        SimOptions { latency: Latency::ZERO, ..SimOptions::default() }
    }
}

/// What to start: a service, where, and in which mode.
#[derive(Debug, Clone)]
pub struct SimSpec {
    pub service: Service,
    pub addr: SocketAddr,
    pub mode: Mode,
}

/// A running simulated service. Dropping the handle stops it (as [`SimHandle::shutdown`] does,
/// without waiting).
pub struct SimHandle {
    pub service: Service,
    /// The bound address (the real port when started on port 0). Stays the same across `down`.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// `http://{addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Switches the fault mode now (as `POST /sim/mode` does).
    pub fn set_mode(&self, mode: Mode) {
        self.cell().set_mode(mode, None);
    }

    /// Switches the fault mode for `duration`, then back to `healthy`.
    pub fn set_mode_for(&self, mode: Mode, duration: Duration) {
        self.cell().set_mode(mode, Some(duration));
    }

    /// The current fault mode.
    pub fn mode(&self) -> Mode {
        self.cell().mode()
    }

    /// Every settlement applied so far, in the order applied (empty unless this is payment).
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        match (&self.shared.payment, self.service) {
            (Some(p), Service::Payment) => p.entries(),
            _ => Vec::new(),
        }
    }

    /// Requests being served right now, hung ones included.
    pub fn in_flight(&self) -> usize {
        self.cell().in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many settlements the ledger holds (cheaper than [`SimHandle::ledger`] for polling).
    pub fn settled_count(&self) -> usize {
        match (&self.shared.payment, self.service) {
            (Some(p), Service::Payment) => p.len(),
            _ => 0,
        }
    }

    fn cell(&self) -> &ServiceCell {
        // Shared always holds a cell for every started service.
        &self.shared.services[&self.service]
    }

    /// Stops the service: the listener closes and open connections are dropped.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a single service with its own card world.
pub struct SimServer;

impl SimServer {
    pub async fn start(service: Service, addr: SocketAddr, opts: SimOptions) -> anyhow::Result<SimHandle> {
        let mut sims = Sims::start(&[SimSpec { service, addr, mode: Mode::Healthy }], opts).await?;
        sims.take(service).ok_or_else(|| anyhow::anyhow!("{service} did not start"))
    }
}

/// Services started together, sharing one card world.
pub struct Sims {
    pub auth: Option<SimHandle>,
    pub payment: Option<SimHandle>,
    pub card: Option<SimHandle>,
}

impl Sims {
    /// Binds every spec'd service (all binds happen before any serves, so a taken port fails the
    /// whole start) and starts serving. With `opts.ledger`, the payment ledger is reloaded first.
    pub async fn start(specs: &[SimSpec], opts: SimOptions) -> anyhow::Result<Sims> {
        let mut listeners = BTreeMap::new();
        for spec in specs {
            if listeners.contains_key(&spec.service) {
                anyhow::bail!("{} is given twice", spec.service);
            }
            let listener = server::bind(spec.addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {} for {}: {e}", spec.addr, spec.service))?;
            listeners.insert(spec.service, (listener, spec.mode.clone()));
        }
        let shared = Arc::new(Shared::new(&listeners, &opts)?);
        let mut sims = Sims { auth: None, payment: None, card: None };
        for (service, (listener, mode)) in listeners {
            let addr = listener.local_addr()?;
            shared.services[&service].set_mode(mode, None);
            let stop = CancellationToken::new();
            let task = tokio::spawn(server::run(shared.clone(), service, listener, stop.clone()));
            let handle = SimHandle { service, addr, shared: shared.clone(), stop, task: Some(task) };
            tracing::info!(service = service.as_str(), %addr, "simulator listening");
            match service {
                Service::Auth => sims.auth = Some(handle),
                Service::Payment => sims.payment = Some(handle),
                Service::Card => sims.card = Some(handle),
            }
        }
        Ok(sims)
    }

    /// All three services on `127.0.0.1:0`, healthy.
    pub async fn local(opts: SimOptions) -> anyhow::Result<Sims> {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        let specs: Vec<SimSpec> =
            Service::ALL.iter().map(|&service| SimSpec { service, addr: any, mode: Mode::Healthy }).collect();
        Sims::start(&specs, opts).await
    }

    /// The handle of `service`, if it was started.
    pub fn get(&self, service: Service) -> Option<&SimHandle> {
        match service {
            Service::Auth => self.auth.as_ref(),
            Service::Payment => self.payment.as_ref(),
            Service::Card => self.card.as_ref(),
        }
    }

    fn take(&mut self, service: Service) -> Option<SimHandle> {
        match service {
            Service::Auth => self.auth.take(),
            Service::Payment => self.payment.take(),
            Service::Card => self.card.take(),
        }
    }

    /// Stops every service.
    pub async fn shutdown(mut self) {
        for service in Service::ALL {
            if let Some(h) = self.take(service) {
                h.shutdown().await;
            }
        }
    }
}
