//! The engine: one task per connection sends the arrivals it owns at their scheduled times; the
//! caller's task folds the results and feeds the observer once per second.
//!
//! Connection `i` of `N` owns arrivals `i, i+N, …` of the [`Schedule`]. It sleeps until the next
//! one is due (a tokio timer), sends it, and keeps going while earlier requests are in flight (up
//! to one with HTTP/1.1, `max_streams` with h2c). When it is behind — the server is slow, or an
//! HTTP/1.1 connection is still busy — it sends the overdue arrival as soon as it can, and the
//! latency still counts from the scheduled time. Results travel over an unbounded channel that
//! the collector drains on a 200 ms tick (`try_recv`, so senders never wake it per request).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, Target};
use super::plan::{Plan, Schedule};
use super::stats::{Collector, Event, Outcome, PhaseInfo};
use super::workload::Workload;
use super::Observer;

/// Runs `plan` against `target` into `collector` (which may already hold earlier runs), until
/// the plan ends or `stop` fires. In-flight requests are always awaited (up to the timeout) so
/// every settlement sent has a record.
pub(crate) async fn execute(
    plan: &Plan,
    target: &Target,
    observer: &mut dyn Observer,
    stop: &CancellationToken,
    collector: &mut Collector,
) -> Result<(), String> {
    plan.validate()?;
    let schedule = Arc::new(Schedule::new(plan));
    let workloads: Arc<[Workload]> = plan.phases.iter().map(|p| p.workload.clone()).collect();
    let offset = collector.end_s();
    let mut start_s = 0.0;
    collector.begin(
        offset,
        plan.phases.iter().map(|p| {
            let info = PhaseInfo {
                name: p.name.clone(),
                start_s,
                duration_s: p.duration.as_secs_f64(),
                rate: p.rate,
                end_rate: p.end_rate,
            };
            start_s += info.duration_s;
            info
        }),
    );
    collector.offered(plan.duration().as_secs_f64(), |t| plan.rate_at(t));

    let (tx, mut rx) = mpsc::unbounded_channel();
    // A small lead so every connection task is running before the first arrival is due.
    let start = Instant::now() + Duration::from_millis(20);
    let mut lanes = tokio::task::JoinSet::new();
    for i in 0..target.connections {
        let lane = Lane {
            index: i as u64,
            stride: target.connections as u64,
            schedule: schedule.clone(),
            workloads: workloads.clone(),
            target: target.clone(),
            start,
            tx: tx.clone(),
            stop: stop.clone(),
        };
        lanes.spawn(lane.run());
    }
    drop(tx);

    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let closed = loop {
            match rx.try_recv() {
                Ok(e) => collector.record(&e, workloads.get(e.phase).and_then(Workload::cards)),
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        // Second i is reported once it is 250 ms in the past (late completions still land in it).
        let now = offset + start.elapsed().as_secs_f64();
        publish(collector, observer, (now - 0.25).floor().max(0.0) as usize);
        if closed {
            break;
        }
    }
    while lanes.join_next().await.is_some() {}
    publish(collector, observer, collector.seconds_len());
    Ok(())
}

fn publish(collector: &mut Collector, observer: &mut dyn Observer, upto: usize) {
    while collector.published < upto.min(collector.seconds_len()) {
        if let Some(s) = collector.second_report(collector.published) {
            observer.second(&s);
        }
        collector.published += 1;
    }
}

/// One connection of the pool and the arrivals it owns.
struct Lane {
    index: u64,
    stride: u64,
    schedule: Arc<Schedule>,
    workloads: Arc<[Workload]>,
    target: Target,
    start: Instant,
    tx: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
}

impl Lane {
    async fn run(self) {
        let mut rng = SmallRng::seed_from_u64(self.target.seed.wrapping_mul(0x9e37_79b9).wrapping_add(self.index));
        let max_in_flight = if self.target.origin.http2 { self.target.max_streams.max(1) } else { 1 };
        let mut in_flight = FuturesUnordered::new();
        let mut conn: Option<Conn> = None;
        let mut g = self.index;
        let mut next = self.schedule.at(g);
        loop {
            let due = next.map(|(t, _)| self.start + Duration::from_secs_f64(t));
            tokio::select! {
                biased;
                Some(event) = in_flight.next(), if !in_flight.is_empty() => {
                    let event: Event = event;
                    if !matches!(event.outcome, Outcome::Status(_)) && !self.target.origin.http2 {
                        conn = None; // an HTTP/1.1 connection in an unknown state is not reused
                    }
                    let _ = self.tx.send(event);
                }
                () = self.stop.cancelled(), if next.is_some() => next = None,
                () = tokio::time::sleep_until(due.unwrap_or(self.start).into()),
                    if due.is_some() && in_flight.len() < max_in_flight =>
                {
                    let Some((t, phase)) = next else { continue };
                    g += self.stride;
                    next = self.schedule.at(g);
                    let Some(workload) = self.workloads.get(phase) else { continue };
                    let built = match workload.build(&self.target.origin, &mut rng, g - self.stride) {
                        Ok(b) => b,
                        Err(_) => continue, // cannot happen for a validated workload; never sent
                    };
                    let mut event = Event {
                        scheduled: t,
                        done: t,
                        phase,
                        kind: built.kind,
                        outcome: Outcome::Io,
                        latency_us: 0,
                        card: built.card,
                        key: built.key,
                        amount_fen: built.amount_fen,
                    };
                    let usable = match conn.as_mut() {
                        Some(c) if !c.is_closed() => c.ready().await,
                        _ => false,
                    };
                    if !usable {
                        match Conn::open(&self.target).await {
                            Ok(c) => conn = Some(c),
                            Err(outcome) => {
                                conn = None;
                                event.outcome = outcome;
                                let _ = self.tx.send(self.finish(event));
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let exchange = c.send(built.req, self.target.timeout);
                    let start = self.start;
                    in_flight.push(async move {
                        event.outcome = exchange.await;
                        stamp(&mut event, start);
                        event
                    });
                }
                else => break,
            }
        }
    }

    fn finish(&self, mut event: Event) -> Event {
        stamp(&mut event, self.start);
        event
    }
}

/// Sets completion time and latency (from the scheduled time: coordinated-omission corrected).
fn stamp(event: &mut Event, start: Instant) {
    let done = start.elapsed().as_secs_f64();
    event.done = done;
    event.latency_us = ((done - event.scheduled).max(0.0) * 1e6) as u64;
}
