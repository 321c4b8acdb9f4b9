//! What the resilience stack costs on the hot path: throughput with every layer on (deadline,
//! retry with budget and replayable body, breaker gate, bulkhead, attempt timeout) versus off,
//! same process, same upstream, same run; plus the latency of a fast-fail answer.
//!
//! Not a test: it measures. Run once, in release, on a quiet machine:
//!
//! ```text
//! cargo bench --bench resilience_overhead
//! LIFELINE_BENCH_REQUESTS=40000 LIFELINE_BENCH_CONNS=32 cargo bench --bench resilience_overhead
//! ```
//!
//! On a shared machine, count instructions instead of time: `LIFELINE_BENCH_SIDE=off|on` (and
//! `LIFELINE_BENCH_POST=1`) runs one side only, so `perf stat -e instructions:u` on each gives
//! the instructions per request that the layers add, whatever else the machine is doing.
//!
//! Method: an in-process upstream answers `200 ok` at once; two sidecars (layers off / on) point
//! at it. For each, a fixed number of requests is sent over N keep-alive connections; the runs
//! alternate off/on five times. Two figures per side: the best throughput (the run least
//! disturbed by other load), and the median process CPU time per request (from
//! `/proc/self/stat`), which a busy machine disturbs far less than wall-clock throughput. Client,
//! upstream and sidecar share the process, so `on - off` CPU per request is what the layers add.
//! "Off" still has the deadline and attempt layers (they replace the old route timeout and are
//! always present). Then the breaker is forced open and its 503 answers are timed end to end.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lifeline::app::App;
use lifeline::config::Config;
use lifeline::resilience::breaker::gate::Mode;
use tokio::net::TcpListener;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

const ON: &str =
    "    breaker: { failure_rate: 50%, slow_call: 1s, slow_call_rate: 80%, window: 10s, min_calls: 20 }\n    \
                  retry: { attempts: 2, budget: 20%, min_per_second: 10, per_try_timeout: 1s }\n    \
                  concurrency: { max_in_flight: 4096, max_pending: 0 }\n";

async fn sidecar(upstream: SocketAddr, layers: &str) -> App {
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\ntelemetry: {{ access_log: false }}\n\
         clusters:\n  backend:\n    endpoints:\n      - {{ address: {upstream} }}\n    timeout: 5s\n{layers}\
         routes:\n  - {{ name: all, cluster: backend }}\n"
    );
    let config = Config::from_yaml("bench.yaml", &yaml).unwrap();
    App::start(config, None).await.unwrap()
}

/// Sends `total` requests over `conns` connections; returns requests per second and latencies.
async fn run(addr: SocketAddr, total: usize, conns: usize, post: bool) -> (f64, Vec<Duration>) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            tokio::spawn(async move {
                let client: Client<HttpConnector, Full<Bytes>> =
                    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1).build(HttpConnector::new());
                let mut lat = Vec::with_capacity(total / conns);
                for i in 0..total / conns {
                    let req = if post {
                        let body = format!("{{\"card_no\":\"x\",\"amount_fen\":{i},\"pad\":\"{}\"}}", "p".repeat(200));
                        Request::post(format!("http://{addr}/payment/v1/settlements"))
                            .header("idempotency-key", format!("k-{c}-{i}"))
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                    } else {
                        Request::get(format!("http://{addr}/card/v1/cards/{i}")).body(Full::new(Bytes::new()))
                    };
                    let t = Instant::now();
                    let resp = client.request(req.unwrap()).await.unwrap();
                    let _ = resp.into_body().collect().await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all.len() as f64 / started.elapsed().as_secs_f64(), all)
}

/// CPU time (user + system) this process used so far, in seconds (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name. USER_HZ is 100.
    (ticks(11) + ticks(12)) / 100.0
}

/// One measured run: (requests per second, CPU microseconds per request).
async fn measured(addr: SocketAddr, total: usize, conns: usize, post: bool) -> (f64, f64) {
    let cpu = cpu_seconds();
    let (rate, lat) = run(addr, total, conns, post).await;
    (rate, (cpu_seconds() - cpu) * 1e6 / lat.len() as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e6
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let total = env("LIFELINE_BENCH_REQUESTS", 20_000);
        let conns = env("LIFELINE_BENCH_CONNS", 16);
        let up = upstream().await;
        let off = sidecar(up, "").await;
        let on = sidecar(up, ON).await;
        if let Ok(side) = std::env::var("LIFELINE_BENCH_SIDE") {
            let addr = if side == "on" { on.proxy_addr } else { off.proxy_addr };
            let post = std::env::var("LIFELINE_BENCH_POST").is_ok_and(|v| v == "1");
            run(addr, total / 10, conns, post).await;
            let (rate, mut lat) = run(addr, total, conns, post).await;
            lat.sort();
            let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
            println!("side {side} post={post}: {total} requests, {rate:.0} req/s, p50 {p50:.0}us p99 {p99:.0}us");
            return;
        }
        println!("resilience overhead: {total} requests over {conns} connections, 5 alternating runs per side");
        for (name, post) in [("GET", false), ("POST 256B + Idempotency-Key", true)] {
            run(off.proxy_addr, total / 10, conns, post).await; // warm-up: pools, allocator
            run(on.proxy_addr, total / 10, conns, post).await;
            let (mut best_off, mut best_on, mut cpu_off, mut cpu_on) = (0f64, 0f64, Vec::new(), Vec::new());
            for _ in 0..5 {
                let (r, c) = measured(off.proxy_addr, total, conns, post).await;
                best_off = best_off.max(r);
                cpu_off.push(c);
                let (r, c) = measured(on.proxy_addr, total, conns, post).await;
                best_on = best_on.max(r);
                cpu_on.push(c);
            }
            let (cpu_off, cpu_on) = (median(cpu_off), median(cpu_on));
            println!(
                "{name:<28} best req/s off {best_off:>7.0} on {best_on:>7.0} (on/off {:.3})   \
                 CPU/request off {cpu_off:.1}us on {cpu_on:.1}us (on/off {:.3}, +{:.1}us)",
                best_on / best_off,
                cpu_on / cpu_off,
                cpu_on - cpu_off
            );
        }
        // Fast fail: force the breaker open and time its answers end to end (client included).
        for b in on.state.runtime.load().resilience.breakers() {
            b.set_mode(Mode::ForcedOpen, "benchmark").await;
        }
        let (rate, mut lat) = run(on.proxy_addr, total, conns, false).await;
        lat.sort();
        let (_, mut base) = run(off.proxy_addr, total, conns, false).await;
        base.sort();
        println!(
            "fast-fail 503 (breaker open): {rate:.0} req/s, p50 {:.0}us p99 {:.0}us  (proxied 200 through the same sidecar: p50 {:.0}us p99 {:.0}us)",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&base, 0.5),
            pct(&base, 0.99)
        );
    });
}
