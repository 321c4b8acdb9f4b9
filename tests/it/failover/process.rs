//! Process-level failover: real `lifeline sim` payment processes as primary and DR, killed with
//! SIGKILL under steady load of GETs and keyed POSTs, restarted on the same port, flapping.
//! Each test prints its measurements (`cargo test --test it failover::process -- --nocapture`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::*;

/// A `lifeline sim --payment` child process.
struct Sim {
    child: Child,
    addr: SocketAddr,
}

impl Sim {
    fn spawn(addr: &str) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .args(["sim", "--payment", addr, "--latency", "1ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lifeline sim");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // Keep draining so the sim never writes into a closed pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("sim said {line:?}"));
        Sim { child, addr }
    }

    /// SIGKILL, as an OOM killer or a dead host would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The same service on the same port again.
    fn restart(&mut self) {
        self.kill();
        *self = Sim::spawn(&self.addr.to_string());
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One answer seen by a client: when, GET or POST, and `ok` or `err:<cause>`.
#[derive(Debug, Clone)]
struct Seen {
    at_ms: u64,
    post: bool,
    outcome: String,
}

/// Steady load: `workers` clients alternating a GET and a POST with a fresh Idempotency-Key.
fn steady_load(sc: &Sidecar, workers: usize, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Seen>> {
    let base = sc.url("/payment/v1/settlements");
    tokio::spawn(async move {
        let mut set = JoinSet::new();
        for w in 0..workers {
            let (base, stop) = (base.clone(), stop.clone());
            set.spawn(async move {
                let client = http1();
                let mut seen = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let post = n % 2 == 0;
                    let req = if post {
                        let body = serde_json::json!({ "card_no": "110101199003071234", "hospital_id": "H1",
                            "visit_id": format!("v{w}-{n}"), "amount_fen": 1000 });
                        Request::post(&base)
                            .header("content-type", "application/json")
                            .header("idempotency-key", format!("k-{w}-{n}-{}", now_ms()))
                            .body(Full::new(Bytes::from(body.to_string())))
                    } else {
                        Request::get(format!("{base}/unknown-{n}")).body(Full::new(Bytes::new()))
                    }
                    .unwrap();
                    let outcome = match client.request(req).await {
                        Ok(resp) => {
                            let err = resp.headers().get("x-lifeline-error").map(|v| v.to_str().unwrap().to_string());
                            let status = resp.status();
                            let _ = resp.into_body().collect().await;
                            match err {
                                Some(e) => format!("err:{e}"),
                                None if status.is_server_error() => format!("err:{status}"),
                                None => "ok".into(),
                            }
                        }
                        Err(e) => format!("err:client:{e}"),
                    };
                    seen.push(Seen { at_ms: now_ms(), post, outcome });
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen
            });
        }
        let mut all = Vec::new();
        while let Some(Ok(v)) = set.join_next().await {
            all.extend(v);
        }
        all
    })
}

/// Samples (time, attempts on primary) from `GET /clusters` until stopped.
fn attempts_sampler(
    sc: &Sidecar,
    primary: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u64, u64)>> {
    let url = sc.admin_url("/clusters");
    tokio::spawn(async move {
        let mut out = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let v = get(&url).await.json();
            let eps = v["clusters"][0]["endpoints"].as_array().unwrap().clone();
            let p = eps.iter().find(|e| e["address"] == primary.to_string()).unwrap();
            out.push((now_ms(), p["requests"].as_u64().unwrap()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out
    })
}

/// Kills the primary under load and returns (ms until no attempt reaches it, errors after the
/// kill, requests after the kill, the cluster's events).
async fn kill_under_load(policy: &str) -> (u64, Vec<Seen>, usize, Vec<serde_json::Value>) {
    let mut primary = Sim::spawn("127.0.0.1:0");
    let dr = Sim::spawn("127.0.0.1:0");
    let sc = Sidecar::start(&yaml(&[(primary.addr, 0), (dr.addr, 1)], policy)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&sc, 4, stop.clone());
    let sampler = attempts_sampler(&sc, primary.addr, stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    primary.kill();
    let killed = now_ms();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = load.await.unwrap();
    let samples = sampler.await.unwrap();
    let final_count = samples.last().unwrap().1;
    let last_increase = samples.iter().find(|(_, n)| *n == final_count).map(|(t, _)| *t).unwrap();
    let after: Vec<&Seen> = seen.iter().filter(|s| s.at_ms >= killed).collect();
    let errors: Vec<Seen> = after.iter().filter(|s| s.outcome != "ok").map(|s| (*s).clone()).collect();
    let before_ok = seen.iter().filter(|s| s.at_ms < killed && s.outcome == "ok").count();
    assert!(before_ok > 50, "steady load before the kill: {before_ok}");
    (last_increase.saturating_sub(killed), errors, after.len(), events(&sc).await)
}

fn report(name: &str, to_dr_ms: u64, errors: &[Seen], total: usize) {
    let posts = errors.iter().filter(|e| e.post).count();
    let mut causes: HashMap<&str, usize> = HashMap::new();
    for e in errors {
        *causes.entry(&e.outcome).or_default() += 1;
    }
    println!(
        "[{name}] all traffic on DR {to_dr_ms} ms after SIGKILL; client-visible errors after the kill: {} of {total} \
         ({posts} POST, {} GET) {causes:?}",
        errors.len(),
        errors.len() - posts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_primary_passive_detection_moves_all_traffic_within_a_second() {
    let (to_dr, errors, total, events) = kill_under_load("outlier: { base_ejection: 30s }").await;
    report("passive", to_dr, &errors, total);
    assert!(to_dr < 1000, "all traffic on DR {to_dr} ms after the kill");
    let ejected: Vec<_> = events.iter().filter(|e| e["kind"] == "ejected").collect();
    assert_eq!(ejected.len(), 1, "{events:#?}");
    assert_eq!(ejected[0]["evidence"]["reason"], "consecutive_gateway_failures");
    assert!(events.iter().any(|e| e["kind"] == "failover"));
    // Only requests already written to the primary when it died can fail (one per client at
    // most); connect failures never reach the client. Retrying those is the retry layer's job.
    assert!(errors.len() <= 4, "{errors:?}");
    assert!(errors.iter().all(|e| e.outcome == "err:upstream_reset"), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_primary_active_checks_only_move_traffic_within_the_check_window() {
    let policy = "health_check: { interval: 500ms, transition_interval: 100ms, timeout: 200ms, unhealthy: 2 }\n\
                  outlier: { enabled: false }";
    let (to_dr, errors, total, events) = kill_under_load(policy).await;
    report("active only", to_dr, &errors, total);
    // Window: interval + 10% jitter, then 2 failed checks at transition_interval.
    assert!(to_dr < 500 + 50 + 2 * 100 + 2 * 200 + 500, "all traffic on DR {to_dr} ms after the kill");
    let failover = events.iter().find(|e| e["kind"] == "failover").expect("failover logged");
    let cause = failover["evidence"]["endpoints"].as_array().unwrap().iter().find(|e| e["priority"] == 0).unwrap();
    assert_eq!(cause["health"], "unhealthy", "{failover}");
    assert!(errors.len() <= 4, "{errors:?}");
    assert!(errors.iter().all(|e| e.outcome == "err:upstream_reset"), "{errors:?}");
}

/// With the retry layer on (resets and gateway errors retried for GETs and keyed POSTs, which
/// prefer an endpoint not tried yet), the kill costs no client-visible error at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_no_retry_safe_request_fails() {
    let policy = "outlier: { base_ejection: 30s }\n\
                  retry: { attempts: 3, retry_on: [connect_error, reset, 502, 503, 504], budget: 100%, min_per_second: 1000 }";
    let (to_dr, errors, total, _) = kill_under_load(policy).await;
    report("passive + retry", to_dr, &errors, total);
    assert!(to_dr < 1000, "all traffic on DR {to_dr} ms after the kill");
    assert!(errors.is_empty(), "{errors:?}");
}

/// Restarted primary: nothing before `failback_hold`, then the share of real traffic ramps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_primary_fails_back_after_the_hold_with_a_ramp() {
    let mut primary = Sim::spawn("127.0.0.1:0");
    let dr = Sim::spawn("127.0.0.1:0");
    let policy =
        "health_check: { interval: 300ms, transition_interval: 100ms, timeout: 200ms, healthy: 2, unhealthy: 2 }\n\
                  failover: { failback_hold: 2s, slow_start: 3s }";
    let sc = Sidecar::start(&yaml(&[(primary.addr, 0), (dr.addr, 1)], policy)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&sc, 2, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    primary.kill();
    assert!(eventually(Duration::from_secs(5), || async { !events_of(&sc, "failover").await.is_empty() }).await);
    primary.restart();
    // Back reachable: either active checks saw it down and up again, or they reinstated its
    // passive ejection early; both start the failback hold.
    assert!(
        eventually(Duration::from_secs(5), || async {
            endpoint_state(&sc, primary.addr).await["health"] == "failback_hold"
        })
        .await,
        "{:#?}",
        events(&sc).await
    );
    let hold_until = endpoint_state(&sc, primary.addr).await["hold_until_unix_ms"].as_u64().expect("in the hold");
    let healthy_at = Instant::now();
    let sampler = attempts_sampler(&sc, primary.addr, stop.clone());
    let mut shares = Vec::new();
    while healthy_at.elapsed() < Duration::from_millis(6500) {
        shares.push((healthy_at.elapsed().as_millis() as u64, share(&sc, 0).await));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = load.await.unwrap();
    let samples = sampler.await.unwrap();
    let during_hold: Vec<u64> = samples.iter().filter(|(t, _)| *t < hold_until).map(|(_, n)| *n).collect();
    assert!(during_hold.len() > 10, "sampled during the hold: {during_hold:?}");
    println!("[failback] share of priority 0 over time (ms after healthy, %): {shares:?}");
    assert!(
        during_hold.windows(2).all(|w| w[0] == w[1]),
        "traffic reached the primary during the hold: {during_hold:?}"
    );
    let ramp: Vec<f64> = shares.iter().map(|(_, s)| *s).filter(|s| *s > 0.0 && *s < 100.0).collect();
    assert!(ramp.len() >= 5, "a ramp, not a jump: {shares:?}");
    assert!(shares.windows(2).all(|w| w[1].1 >= w[0].1), "{shares:?}");
    assert_eq!(shares.last().unwrap().1, 100.0);
    let grew = samples.last().unwrap().1 - during_hold.last().copied().unwrap_or(0);
    assert!(grew > 20, "real traffic returned to the primary: {grew}");
}

/// Kills and restarts the primary `cycles` times (`down`, then `up`) under load with the given
/// `failback_hold`; returns (failovers, failbacks) while flapping, and the client errors.
async fn flap(cycles: usize, down: Duration, up: Duration, hold: &str) -> (usize, usize, usize, usize) {
    let mut primary = Sim::spawn("127.0.0.1:0");
    let dr = Sim::spawn("127.0.0.1:0");
    let policy = format!(
        "health_check: {{ interval: 300ms, transition_interval: 100ms, timeout: 200ms, healthy: 2, unhealthy: 2 }}\n\
         failover: {{ failback_hold: {hold}, slow_start: 1s }}"
    );
    let sc = Sidecar::start(&yaml(&[(primary.addr, 0), (dr.addr, 1)], &policy)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&sc, 2, stop.clone());
    for _ in 0..cycles {
        primary.kill();
        tokio::time::sleep(down).await;
        primary.restart();
        tokio::time::sleep(up).await;
    }
    let (failovers, failbacks) = (events_of(&sc, "failover").await.len(), events_of(&sc, "failback").await.len());
    assert!(eventually(Duration::from_secs(10), || async { events_of(&sc, "failback").await.len() > failbacks }).await);
    stop.store(true, Ordering::SeqCst);
    let seen = load.await.unwrap();
    let errors: Vec<&Seen> = seen.iter().filter(|s| s.outcome != "ok").collect();
    assert!(errors.iter().all(|s| s.outcome == "err:upstream_reset"), "{errors:?}");
    (failovers, failbacks, errors.len(), seen.len())
}

/// A primary killed and restarted every second for 8 s, with `failback_hold: 3s`: one failover,
/// no failback while it flaps, one failback once it stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_primary_process_causes_one_failover() {
    let (failovers, failbacks, errors, total) = flap(4, Duration::from_secs(1), Duration::from_secs(1), "3s").await;
    println!("[flapping] 4 cycles of 1 s down / 1 s up: {failovers} failover(s), {failbacks} failback(s), {errors} of {total} client errors");
    assert_eq!((failovers, failbacks), (1, 0));
}

/// The scenario at full length: down 2 s, up 2 s for a minute, `failback_hold: 10s`.
/// It takes a minute, which the CI budget (20 minutes, ~10 used) affords: it runs beside the
/// other tests, so the suite takes about 30 s longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_for_a_minute() {
    let (failovers, failbacks, errors, total) = flap(15, Duration::from_secs(2), Duration::from_secs(2), "10s").await;
    println!("[flapping 60 s] {failovers} failover(s), {failbacks} failback(s), {errors} of {total} client errors");
    assert_eq!((failovers, failbacks), (1, 0));
}
