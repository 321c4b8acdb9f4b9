//! The breaker (gate + policy task) against a reference model, on paused tokio time.
//!
//! The model is written the obvious way (a list of every call since the last state change,
//! filtered on each decision); the breaker under test uses ring buffers, atomics and a task.
//! Any sequence of calls and clock jumps must give the same admissions, states and Retry-After.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::config::{BreakerConfig, Window, TIME_BUCKETS};
use super::core::{required_successes, State};
use super::gate::{Admit, Mode};
use super::Breaker;
use crate::config::Percent;

#[derive(Debug, Clone)]
enum Op {
    Call { failed: bool, slow: bool },
    Advance(u64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MState {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, ok: u32, failed: u32 },
}

struct Model {
    cfg: BreakerConfig,
    origin: Instant,
    state: MState,
    calls: Vec<(Instant, bool, bool)>,
    consecutive: u32,
    trips: u32,
}

impl Model {
    fn tick(&mut self, now: Instant) {
        if let MState::Open { until } = self.state {
            if now >= until {
                self.state = MState::HalfOpen { admitted: 0, ok: 0, failed: 0 };
            }
        }
    }

    fn admit(&mut self, now: Instant) -> bool {
        self.tick(now);
        match &mut self.state {
            MState::Closed => true,
            MState::Open { .. } => false,
            MState::HalfOpen { admitted, .. } => {
                *admitted += 1;
                *admitted <= self.cfg.half_open_calls
            }
        }
    }

    fn in_window(&self, now: Instant) -> (u32, u32, u32) {
        let chosen: Vec<&(Instant, bool, bool)> = match self.cfg.window {
            Window::Count(n) => self.calls.iter().rev().take(n as usize).collect(),
            Window::Time(d) => {
                let width = (d / TIME_BUCKETS).as_nanos();
                let idx = |t: Instant| (t - self.origin).as_nanos() / width;
                let oldest = idx(now).saturating_sub(u128::from(TIME_BUCKETS) - 1);
                self.calls.iter().filter(|c| idx(c.0) >= oldest).collect()
            }
        };
        let n = chosen.len() as u32;
        (n, chosen.iter().filter(|c| c.1).count() as u32, chosen.iter().filter(|c| c.2).count() as u32)
    }

    fn open(&mut self, now: Instant) {
        self.trips += 1;
        let d = (self.cfg.open_for * 2u32.pow((self.trips - 1).min(30))).min(self.cfg.max_open_for);
        self.state = MState::Open { until: now + d };
        self.calls.clear();
        self.consecutive = 0;
    }

    fn record(&mut self, failed: bool, slow: bool, now: Instant) {
        match self.state {
            MState::Open { .. } => {}
            MState::Closed => {
                self.calls.push((now, failed, slow));
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                let (calls, failures, slows) = self.in_window(now);
                let over = |part: u32, p: Percent| part as f64 / calls as f64 >= p.as_ratio() - 1e-12;
                let trip = self.cfg.consecutive_failures.is_some_and(|n| self.consecutive >= n)
                    || (calls >= self.cfg.min_calls
                        && (self.cfg.failure_rate.is_some_and(|r| over(failures, r))
                            || (self.cfg.slow_call.is_some() && over(slows, self.cfg.slow_call_rate))));
                if trip {
                    self.open(now);
                }
            }
            MState::HalfOpen { admitted, mut ok, failed: mut bad } => {
                let n = self.cfg.half_open_calls;
                if ok + bad >= n {
                    return;
                }
                if failed || slow {
                    bad += 1;
                } else {
                    ok += 1;
                }
                let need = required_successes(n, self.cfg.half_open_success.basis_points());
                if bad > n - need {
                    self.open(now);
                } else if ok >= need {
                    self.state = MState::Closed;
                    self.trips = 0;
                    self.calls.clear();
                    self.consecutive = 0;
                } else {
                    self.state = MState::HalfOpen { admitted, ok, failed: bad };
                }
            }
        }
    }

    fn state(&self) -> State {
        match self.state {
            MState::Closed => State::Closed,
            MState::Open { .. } => State::Open,
            MState::HalfOpen { .. } => State::HalfOpen,
        }
    }
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        prop_oneof![
            (1u32..20).prop_map(Window::Count),
            (1u64..20).prop_map(|n| Window::Time(Duration::from_millis(n * 100)))
        ],
        1u32..10,
        proptest::option::of(1u32..6),
        proptest::option::of(10u32..=100),
        proptest::option::of(50u64..500),
        10u32..=100,
        (1u64..20, 1u32..8),
        1u32..5,
        1u32..=100,
    )
        .prop_map(|(window, min_calls, consecutive, rate, slow, slow_rate, (open, mult), probes, success)| {
            let min_calls = match window {
                Window::Count(n) => min_calls.min(n),
                Window::Time(_) => min_calls,
            };
            BreakerConfig {
                consecutive_failures: consecutive,
                failure_rate: rate.map(Percent::from_percent),
                slow_call: slow.map(Duration::from_millis),
                slow_call_rate: Percent::from_percent(slow_rate),
                window,
                min_calls,
                open_for: Duration::from_millis(open * 100),
                max_open_for: Duration::from_millis(open * 100 * u64::from(mult)),
                open_jitter: Percent(0),
                half_open_calls: probes,
                half_open_success: Percent::from_percent(success),
                ..BreakerConfig::default()
            }
        })
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        6 => (any::<bool>(), prop::bool::weighted(0.2)).prop_map(|(failed, slow)| Op::Call { failed, slow }),
        1 => (0u64..3000).prop_map(Op::Advance),
    ];
    proptest::collection::vec(op, 1..150)
}

async fn check(cfg: BreakerConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let breaker = Breaker::spawn("t", "t", cfg.clone(), Mode::Normal, Vec::new());
    // A time window's buckets start on the housekeeping beat.
    let origin = crate::beat::floor(Instant::now(), crate::beat::SECOND);
    let mut model = Model { cfg, origin, state: MState::Closed, calls: Vec::new(), consecutive: 0, trips: 0 };
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
            Op::Call { failed, slow } => {
                let now = Instant::now();
                let expected = model.admit(now);
                match breaker.admit() {
                    Admit::Yes { epoch, probe, .. } => {
                        prop_assert!(expected, "op {i}: admitted, model refuses in {:?}", model.state);
                        breaker.record(epoch, failed, slow, probe);
                        model.record(failed, slow, now);
                    }
                    Admit::No { retry_after } => {
                        prop_assert!(!expected, "op {i}: refused, model admits in {:?}", model.state);
                        if let MState::Open { until } = model.state {
                            prop_assert_eq!(retry_after, until - now, "op {}: Retry-After", i);
                        }
                    }
                }
            }
        }
        breaker.sync().await;
        model.tick(Instant::now());
        prop_assert_eq!(breaker.gate.load().2, model.state(), "op {}: state", i);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn breaker_matches_reference_model(cfg in config(), ops in ops()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(check(cfg, ops))?;
    }
}

#[tokio::test(start_paused = true)]
async fn operator_modes() {
    let cfg = BreakerConfig { consecutive_failures: Some(1), ..BreakerConfig::default() };
    let b = Breaker::spawn("p", "p", cfg, Mode::Normal, Vec::new());
    b.set_mode(Mode::ForcedOpen, "drill").await;
    assert!(matches!(b.admit(), Admit::No { .. }));
    b.set_mode(Mode::MetricsOnly, "tuning").await;
    let Admit::Yes { epoch, .. } = b.admit() else { panic!("metrics_only never blocks") };
    b.record(epoch, true, false, false);
    b.sync().await;
    assert_eq!(b.gate.load().2, State::Open, "it still decides");
    assert!(matches!(b.admit(), Admit::Yes { .. }), "but never blocks");
    b.set_mode(Mode::Disabled, "maintenance").await;
    assert!(matches!(b.admit(), Admit::Yes { record: false, .. }));
    b.set_mode(Mode::Normal, "done").await;
    assert_eq!(b.gate.load().2, State::Closed);
    let events = b.events();
    assert!(events.iter().any(|e| e.dry_run && e.to == "open" && e.reason == "consecutive_failures"), "{events:?}");
    assert_eq!(events.iter().filter(|e| e.reason == "operator").count(), 4);
    assert!(events.last().unwrap().note.as_deref().unwrap().contains("disabled -> normal: done"));
}

#[tokio::test(start_paused = true)]
async fn cancelled_probe_returns_its_permit_and_stale_outcomes_are_ignored() {
    let cfg = BreakerConfig {
        consecutive_failures: Some(1),
        open_for: Duration::from_secs(1),
        open_jitter: Percent(0),
        half_open_calls: 1,
        ..BreakerConfig::default()
    };
    let b = Breaker::spawn("p", "p", cfg, Mode::Normal, Vec::new());
    let Admit::Yes { epoch: closed_epoch, .. } = b.admit() else { panic!() };
    let Admit::Yes { epoch, .. } = b.admit() else { panic!() };
    b.record(epoch, true, false, false);
    b.sync().await;
    // A straggler admitted while closed reports after the trip: ignored.
    b.record(closed_epoch, false, false, false);
    tokio::time::advance(Duration::from_secs(1)).await;
    b.sync().await;
    assert_eq!(b.gate.load().2, State::HalfOpen);
    let Admit::Yes { epoch, probe: true, .. } = b.admit() else { panic!() };
    assert!(matches!(b.admit(), Admit::No { .. }), "only one probe");
    b.cancelled(epoch, true);
    let Admit::Yes { epoch, .. } = b.admit() else { panic!("the permit came back") };
    b.record(epoch, false, false, true);
    b.sync().await;
    assert_eq!(b.gate.load().2, State::Closed);
}

#[tokio::test]
async fn successes_counted_on_every_worker_and_thread_reach_the_window() {
    // 50% failure rate over the last 1 000 calls: 400 successes from 3 workers and a thread,
    // then 399 failures stay under it and the 400th trips, only if every success was counted.
    let cfg = BreakerConfig {
        failure_rate: Some(Percent::from_percent(50)),
        window: Window::Count(1_000),
        min_calls: 1,
        consecutive_failures: None,
        open_jitter: Percent(0),
        ..BreakerConfig::default()
    };
    let b = Breaker::spawn("s", "s", cfg, Mode::Normal, Vec::new());
    let Admit::Yes { epoch, .. } = b.admit() else { panic!("closed") };
    let workers = crate::proxy::workers::Workers::start(3).expect("workers");
    let on_workers = workers.spawn_each(|_| {
        let b = b.clone();
        async move { (0..100).for_each(|_| b.record(epoch, false, false, false)) }
    });
    for h in on_workers {
        h.await.expect("worker");
    }
    let other = b.clone();
    std::thread::spawn(move || (0..100).for_each(|_| other.record(epoch, false, false, false))).join().expect("thread");
    for _ in 0..399 {
        b.record(epoch, true, false, false);
    }
    b.sync().await;
    assert_eq!(b.gate.load().2, State::Closed, "399 of 799 failed");
    b.record(epoch, true, false, false);
    b.sync().await;
    assert_eq!(b.gate.load().2, State::Open, "400 of 800 failed");
}

#[test]
fn a_success_of_an_older_epoch_never_replaces_newer_ones() {
    let s = super::Successes::default();
    (0..3).for_each(|_| s.count(5));
    s.count(4);
    assert_eq!(s.take_all(5), 3);
    assert_eq!(s.take_all(5), 0, "taken");
    s.count(5);
    s.count(6);
    assert_eq!(s.take_all(5), 0, "the epoch moved on: what epoch 5 held is not counted");
    s.count(7);
    s.count(7);
    // A late failure of an older epoch takes nothing, and leaves epoch 7's successes.
    assert_eq!(s.take_here(6), 0);
    assert_eq!(s.take_here(7), 2);
    s.count(7);
    assert_eq!(s.take_all(7), 1);
    // The packed epoch wraps at 2^32: the one after it is still newer.
    s.count(u64::from(u32::MAX));
    s.count(u64::from(u32::MAX) + 1);
    assert_eq!(s.take_all(u64::from(u32::MAX) + 1), 1);
}

/// Calls in the breaker's window, as `GET /breakers` shows them.
async fn window_calls(b: &Breaker) -> u64 {
    let snap = b.snapshot().await;
    snap["window"]["calls"].as_u64().unwrap_or_else(|| panic!("no window figures in {snap}"))
}

/// Lets the policy task run what the clock made due.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn successes_nobody_rang_about_count_in_the_bucket_they_happened_in() {
    // 10 s in 1 s buckets. The successes at 0.3 s are taken by the task on its own (no sync,
    // no failure rings it) and belong to the first bucket: in the window until 10 s, not after.
    // Started on a beat, where its buckets start.
    let t0 = crate::beat::next_after(Instant::now(), crate::beat::SECOND);
    tokio::time::sleep_until(t0).await;
    let b = Breaker::spawn("w", "w", BreakerConfig::default(), Mode::Normal, Vec::new());
    assert_eq!(crate::beat::floor(Instant::now(), crate::beat::SECOND), t0, "the timer's millisecond past it, no more");
    tokio::time::advance(Duration::from_millis(300)).await;
    let Admit::Yes { epoch, .. } = b.admit() else { panic!("closed") };
    (0..100).for_each(|_| b.record(epoch, false, false, false));
    tokio::time::advance(Duration::from_millis(1_200)).await;
    settle().await;
    assert_eq!(b.successes.take_all(epoch), 0, "taken at the end of their bucket, without a ring");
    tokio::time::sleep_until(t0 + Duration::from_millis(9_999)).await;
    assert_eq!(window_calls(&b).await, 100);
    tokio::time::sleep_until(t0 + Duration::from_secs(10)).await;
    assert_eq!(window_calls(&b).await, 0, "counted in the bucket of 0.3 s, which has left the window");
}

#[tokio::test(start_paused = true)]
async fn a_success_that_fills_the_window_to_min_calls_still_trips_soon() {
    // Two failures, then two successes bring the window to its four calls at 50%: the second
    // success trips it. Successes do not ring the task, but with failures short of `min_calls`
    // in the window it takes them within `SOON`, not at the end of the bucket.
    let cfg = BreakerConfig { min_calls: 4, open_jitter: Percent(0), ..BreakerConfig::default() };
    let b = Breaker::spawn("m", "m", cfg, Mode::Normal, Vec::new());
    let Admit::Yes { epoch, .. } = b.admit() else { panic!("closed") };
    b.record(epoch, true, false, false);
    b.record(epoch, true, false, false);
    b.sync().await;
    assert_eq!(b.gate.load().2, State::Closed, "2 calls, under min_calls");
    b.record(epoch, false, false, false);
    b.record(epoch, false, false, false);
    tokio::time::advance(super::core::SOON + Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(b.gate.load().2, State::Open, "4 calls, 2 failed");
}
