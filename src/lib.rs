//! # Lifeline
//!
//! A resilience and failover sidecar for the electronic social-security card services (auth,
//! payment settlement, card management). It sits beside the callers and in front of those
//! services, and keeps settlements flowing when a backend slows down or fails.
//!
//! ## The request path (outermost first)
//!
//! ```text
//! client -> proxy::h1              HTTP/1.1 server connection of our own (h2c -> hyper)
//!        -> proxy::Proxy::handle   request id, header/body limits, route match,
//!                                  respond (errors -> JSON), access log, metrics
//!        -> grace                  settlement routes only: backend unavailable -> journal -> 202
//!        -> proxy::stack           the route's path, one future per request:
//!             deadline             overall budget (route timeout or the caller's, if shorter)
//!             retry                budgeted; idempotent, Idempotency-Key or never-sent only
//!             breaker              reads the gate; open -> 503 circuit_open, nothing sent
//!             limit                bulkhead: in-flight cap, bounded queue, else 503 overloaded
//!             attempt              per-try timeout; remaining budget passed upstream
//!             cluster              endpoint choice from the published failover plan
//!                                  (priority shares, P2C/round-robin), connect failures
//!                                  re-picked at once, pooled HTTP/1.1 client
//!                                  of our own (upstream::h1)
//! ```
//!
//! Off the path, owned by [`app::App`]: the grace journal writers and forwarders, the config
//! watcher (hot reload with one `ArcSwap` store), metrics upkeep, one policy task per circuit
//! breaker (stopped on shutdown, carried over by reloads that leave it unchanged), per cluster a
//! controller (outlier ejection, failover plan, failback hold and slow start), active health
//! checkers and a DNS follower ([`upstream`]), the chaos fault reaper, and graceful drain. Their
//! once-a-second chores share one beat ([`beat`]), so an idle sidecar wakes for them together.
//!
//! Invariants the design holds to are listed in `DESIGN.md` at the repository root's sibling
//! `shared/`; each has a test that fails if it breaks.

pub mod admin;
pub mod app;
pub mod beat;
pub mod chaos;
pub mod classify;
pub mod config;
pub mod error;
pub mod grace;
pub mod http1;
pub mod load;
pub mod proxy;
pub mod resilience;
pub mod runtime;
pub mod sim;
pub mod telemetry;
pub mod upstream;
