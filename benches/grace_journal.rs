//! Grace benchmarks (not tests): the journal alone, and durable 202s end to end over HTTP.
//!
//! ```text
//! cargo bench --bench grace_journal                  # all of them
//! cargo bench --bench grace_journal -- journal       # ceiling (closed model) and latency at 20 000/s
//! cargo bench --bench grace_journal -- journal-rate  # only the fixed-rate (open model) run
//! GRACE_BENCH_RATE=30000 cargo bench --bench grace_journal -- journal-rate
//! cargo bench --bench grace_journal -- http          # durable 202s/s through HTTP, backend down
//! cargo bench --bench grace_journal -- replay        # 10 000-item backlog: rate, ramp, live latency
//! GRACE_BENCH_DIR=/var/tmp cargo bench --bench grace_journal   # journal on another disk
//! GRACE_BENCH_LOG_DIR=/mnt/wal cargo bench --bench grace_journal -- journal-rate   # its log on another
//! GRACE_BENCH_WRITERS=1024 cargo bench --bench grace_journal -- journal   # bigger groups
//! The HTTP bench's payment cluster has a breaker: once it opens (after 20 refused connects)
//! the grace trigger is `circuit_open`, as in production with a dead backend.
//! ```
//! Targets on the 2-core dev machine: journal ≥ 20 000 appends/s with p99 ≤ 5 ms (judged by the
//! fixed-rate run: a closed loop of N writers has a mean latency of N / throughput whatever the
//! journal does, so its p99 says more about N than about the commit); HTTP
//! ≥ 5 000 durable 202s/s with p99 ≤ 20 ms. Every append is a real `synchronous=FULL` commit.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lifeline::app::App;
use lifeline::config::Config;
use lifeline::grace::config::{CountAmount, GraceLimits};
use lifeline::grace::sqlite::SqliteStore;
use lifeline::grace::store::{AppendOutcome, NewItem, State, Store};
use tokio::sync::Mutex;

fn dir() -> tempfile::TempDir {
    match std::env::var("GRACE_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

/// Writes every dirty page on the machine out before a timed run. A build just before (a
/// release build leaves a few hundred MB in the page cache, written back ~30 s later) or the
/// run before would otherwise reach the disk during this one, and the log's `fdatasync` waits
/// behind it: the journal's p99 read 7.1 ms in a `bench/run.sh --lifeline-only` that had just
/// rebuilt this bench, 3.5–4.2 ms in the same sequence run alone (BENCHMARKS.md, session 15).
fn settle_disk() {
    let synced = std::process::Command::new("sync").status();
    assert!(synced.as_ref().is_ok_and(|s| s.success()), "sync(1) failed: {synced:?}");
}

fn report(name: &str, n: u64, elapsed: Duration, h: &Histogram<u64>) {
    println!(
        "{name}: {n} in {:.2}s = {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    );
}

fn item(i: u64) -> NewItem {
    NewItem {
        // Receipt ids are time-ordered (as `new_receipt_id` makes them); idempotency keys come
        // from the callers, as random UUIDs would: they land anywhere in their index.
        receipt_id: format!("r-{i:012}"),
        idem_key: format!("{:032x}", rand::random::<u128>()),
        fingerprint: [7; 32],
        policy: "bench".into(),
        route: "settle".into(),
        // 5 000 cards; a card's reference is 32 hex digits, as `crypto::card_ref` makes them
        // (a short one would make the card-lane index smaller than a deployment's).
        card_ref: format!("{:032x}", u128::from(i % 5000).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)),
        card_masked: "110***********1234".into(),
        institution: format!("H{}", i % 50),
        amount_fen: 1234,
        reason: "circuit_open".into(),
        state: State::Journaled,
        method: "POST".into(),
        path: "/payment/v1/settlements".into(),
        payload: vec![b'x'; 400],
        encrypted: false,
        accepted_ms: 0,
        deadline_ms: i64::MAX / 2,
        next_attempt_ms: 0,
    }
}

/// A fresh journal in its own directory, and with `GRACE_BENCH_LOG_DIR` its log in a fresh
/// directory under that one (`store.log_dir`); the returned guards keep both.
fn open_store(name: &str) -> (Vec<tempfile::TempDir>, Arc<SqliteStore>) {
    let d = dir();
    let path = d.path().join(name);
    let (store, guards) = match std::env::var("GRACE_BENCH_LOG_DIR") {
        Ok(base) => {
            let log = tempfile::tempdir_in(base).unwrap();
            (SqliteStore::open_with_log(&path, log.path()).unwrap().0, vec![d, log])
        }
        Err(_) => (SqliteStore::open(&path).unwrap().0, vec![d]),
    };
    (guards, Arc::new(store))
}

fn unlimited() -> Arc<GraceLimits> {
    let unlimited = CountAmount { count: Some(u64::MAX / 4), amount: Some(u64::MAX / 4) };
    Arc::new(GraceLimits {
        per_settlement: 1 << 40,
        card_soft: CountAmount::default(),
        card_hard: unlimited,
        institution: unlimited,
        total: unlimited,
        journal_bytes: u64::MAX,
        max_age: Duration::from_secs(3600),
    })
}

/// Closed model: `GRACE_BENCH_WRITERS` tasks each append 400 items back to back. Gives the
/// ceiling; its latency is the queue those writers build (Little's law: writers / throughput).
async fn journal() {
    settle_disk();
    let (_dir, store) = open_store("bench.db");
    let limits = unlimited();
    let writers: u64 = std::env::var("GRACE_BENCH_WRITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    const PER: u64 = 400;
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, limits, hist) = (store.clone(), limits.clone(), hist.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).unwrap();
            for j in 0..PER {
                let t = Instant::now();
                let out = store.append(item(w * PER + j), limits.clone()).await.unwrap();
                assert!(matches!(out, AppendOutcome::Accepted(_)));
                local.record(t.elapsed().as_micros() as u64).unwrap();
            }
            hist.lock().await.add(&local).unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    report(
        &format!("journal appends ({writers} concurrent writers, fsync per group)"),
        writers * PER,
        elapsed,
        &*hist.lock().await,
    );
    store.close();
}

async fn http() {
    settle_disk();
    let d = dir();
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nshutdown: {{ drain_delay: 0s }}\ntelemetry: {{ access_log: false }}\n\
         clusters:\n  payment:\n    endpoints: [{{ address: {down} }}]\n    connect_timeout: 200ms\n\
         \x20   breaker: {{ failure_rate: 50%, window: 10s, min_calls: 20, open_for: 60s }}\n\
         routes:\n  - {{ name: settle, match: {{ method: POST, path: /payment/v1/settlements }}, cluster: payment, grace: settlement }}\n\
         grace:\n  settlement:\n    store: {{ sqlite: {} }}\n    card_no: /card_no\n    amount_fen: /amount_fen\n    hospital_id: /hospital_id\n\
         \x20   limits: {{ per_settlement: 50000, per_card: {{ hard: {{ count: 1000000 }} }}, total: {{ count: 100000000, amount: 1000000000000000 }} }}\n\
         \x20   forward: {{ probe_interval: 1s }}\n",
        d.path().join("http.db").display()
    );
    let app = App::start(Config::from_yaml("bench.yaml", &yaml).unwrap(), None).await.unwrap();
    let url = format!("http://{}/payment/v1/settlements", app.proxy_addr);
    const CLIENTS: u64 = 64;
    let run_for = Duration::from_secs(10);
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (url, hist) = (url.clone(), hist.clone());
        tasks.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let mut local = Histogram::<u64>::new(3).unwrap();
            let mut n = 0u64;
            while start.elapsed() < run_for {
                let body = format!(
                    "{{\"card_no\":\"1101011990{c:08}\",\"amount_fen\":{},\"hospital_id\":\"H{}\"}}",
                    100 + n % 900,
                    c % 20
                );
                let req = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("b-{c}-{n}"))
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let t = Instant::now();
                let resp = client.request(req).await.unwrap();
                let status = resp.status();
                let _ = resp.into_body().collect().await.unwrap();
                assert_eq!(status, 202);
                local.record(t.elapsed().as_micros() as u64).unwrap();
                n += 1;
            }
            hist.lock().await.add(&local).unwrap();
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let elapsed = start.elapsed();
    report(
        &format!("durable 202s over HTTP/1.1 ({CLIENTS} keep-alive clients, backend down)"),
        total,
        elapsed,
        &*hist.lock().await,
    );
    app.shutdown().await;
}

/// CPU time by kind from `/proc/stat`'s first line: (steal, all), in clock ticks.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    Some((*fields.get(7)?, fields.iter().take(8).sum()))
}

/// How late the machine wakes a thread during the run: a thread of its own asks to sleep 1 ms,
/// over and over, and records how late it wakes (cyclictest's measurement). The lateness is the
/// host's steal and the run's own load on the two cores together; any thread of the journal
/// waits as long to be woken, so it is part of every latency measured in the same seconds.
struct Jitter {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Histogram<u64>>,
    ticks: Option<(u64, u64)>,
}

impl Jitter {
    fn start() -> Jitter {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut h = Histogram::<u64>::new(3).unwrap();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let asked = Instant::now();
                // The probe measures the OS's own sleep on a thread of its own, not the runtime's.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(1));
                let late = asked.elapsed().saturating_sub(Duration::from_millis(1));
                h.record((late.as_micros() as u64).max(1)).unwrap();
            }
            h
        });
        Jitter { stop, thread, ticks: cpu_ticks() }
    }

    /// One line: the machine's wake-up lateness and CPU steal over the probe's lifetime.
    fn finish(self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let h = self.thread.join().unwrap();
        let steal = match (self.ticks, cpu_ticks()) {
            (Some((s0, a0)), Some((s1, a1))) if a1 > a0 => {
                format!("{:.0}% of CPU time stolen by the host", 100.0 * (s1 - s0) as f64 / (a1 - a0) as f64)
            }
            _ => "steal unknown (no /proc/stat)".to_string(),
        };
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "machine during the run: {steal}; a thread sleeping 1 ms woke late by p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(0.5),
            ms(0.99),
            h.max() as f64 / 1000.0
        )
    }
}

/// The host's own preemption, measured before the run with nothing of ours running: one thread
/// reads the clock in a loop for `secs`, and every gap between two reads over 100 µs is time
/// the vCPU was taken away (or an interrupt ran). No code in the guest can answer faster than
/// its vCPU runs, so these gaps are part of any p99 measured on the machine.
fn host_gaps(secs: f64) -> String {
    let start = Instant::now();
    let mut last = start;
    let (mut lost, mut over_ms, mut over_3ms, mut max) = (Duration::ZERO, 0u32, 0u32, Duration::ZERO);
    while last.duration_since(start).as_secs_f64() < secs {
        let now = Instant::now();
        let gap = now.duration_since(last);
        last = now;
        if gap > Duration::from_micros(100) {
            lost += gap;
            over_ms += u32::from(gap > Duration::from_millis(1));
            over_3ms += u32::from(gap > Duration::from_millis(3));
            max = max.max(gap);
        }
    }
    format!(
        "machine before the run: a thread spinning on the clock for {secs:.0} s was stopped for {:.1}% \
         of it in gaps over 0.1 ms ({over_ms} over 1 ms, {over_3ms} over 3 ms, longest {:.2} ms)",
        100.0 * lost.as_secs_f64() / start.elapsed().as_secs_f64(),
        max.as_secs_f64() * 1000.0
    )
}

/// Open model: appends arrive at a constant `GRACE_BENCH_RATE` per second (default 20 000) for
/// 5 s, each as its own task, however slowly earlier ones commit; latency runs from the
/// scheduled arrival (no coordinated omission). This is "p99 commit latency at 20 000/s".
/// After it, the machine's own lines ([`Jitter`], [`host_gaps`]) say what the host allowed.
async fn journal_rate() {
    settle_disk();
    let gaps = host_gaps(3.0);
    let (_dir, store) = open_store("rate.db");
    let jitter = Jitter::start();
    let limits = unlimited();
    let rate: u64 = std::env::var("GRACE_BENCH_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let total = rate * 5;
    // (from the scheduled arrival, from the call, from the arrival to the call)
    let new = || Histogram::<u64>::new(3).unwrap();
    let hist = Arc::new(std::sync::Mutex::new((new(), new(), new())));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut next = 0u64;
    while next < total {
        // Everything due by now is sent now, stamped with its own due time.
        let due_by = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
        while next < due_by {
            let due = start + Duration::from_secs_f64(next as f64 / rate as f64);
            let (store, limits, hist) = (store.clone(), limits.clone(), hist.clone());
            let i = next;
            tasks.push(tokio::spawn(async move {
                let called = Instant::now();
                let out = store.append(item(i), limits).await.unwrap();
                assert!(matches!(out, AppendOutcome::Accepted(_)));
                let done = Instant::now();
                let us = |d: Duration| (d.as_micros() as u64).max(1);
                let mut h = hist.lock().unwrap();
                h.0.record(us(done.saturating_duration_since(due))).unwrap();
                h.1.record(us(done.saturating_duration_since(called))).unwrap();
                h.2.record(us(called.saturating_duration_since(due))).unwrap();
            }));
            next += 1;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let h = hist.lock().unwrap().clone();
    report(&format!("journal appends at a fixed {rate}/s (open model, fsync per group)"), total, elapsed, &h.0);
    // The same appends split in two: what the journal took once called, and how late the
    // generator and the runtime got to calling it (both on the same 2 cores).
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  of which in the journal (call to durable answer): p50 {:.2} ms, p99 {:.2} ms; \
         arrival to call: p50 {:.2} ms, p99 {:.2} ms",
        ms(&h.1, 0.5),
        ms(&h.1, 0.99),
        ms(&h.2, 0.5),
        ms(&h.2, 0.99)
    );
    println!("  {}", jitter.finish());
    println!("  {gaps}");
    store.close();
}

#[path = "grace_journal/replay.rs"]
mod replay;

fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let want = |name: &str| which.is_empty() || which.iter().any(|w| name.contains(w.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if want("journal") {
        rt.block_on(journal());
    }
    if want("journal-rate") {
        rt.block_on(journal_rate());
    }
    if want("http") {
        rt.block_on(http());
    }
    if want("replay") {
        rt.block_on(replay::run());
    }
}
