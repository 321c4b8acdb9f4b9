//! Lifecycle of the sidecar: streaming, hot reload under load, graceful drain, admin, metrics,
//! and personal data kept out of logs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::Signal;

use crate::support::process::ChildSidecar;
use crate::support::*;

fn child_yaml(upstream: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{extra}\
         clusters:\n  backend:\n    endpoints:\n      - {{ address: {upstream} }}\n    timeout: 60s\n\
         routes:\n  - {{ name: all, cluster: backend, max_body: 1GiB }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100mb_upload_streams_through_with_flat_memory() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = ChildSidecar::spawn(dir.path(), &child_yaml(up.addr, ""));
    // Warm up so the baseline includes pools and buffers.
    let _ = get(&sc.url("/warm")).await;
    let baseline = sc.rss_kib();

    const CHUNK: usize = 64 << 10;
    const TOTAL: usize = 100 << 20;
    let chunks = futures_util::stream::iter(
        (0..TOTAL / CHUNK).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![7u8; CHUNK])))),
    );
    let body = StreamBody::new(chunks).boxed();
    let client: Client<HttpConnector, _> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::post(sc.url("/upload")).body(body).unwrap();
    let resp = client.request(req).await.expect("upload");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["body_bytes"].as_u64(), Some(TOTAL as u64), "every byte reached the upstream");
    let peak = sc.peak_rss_kib();
    // Buffering the body would add 100 MiB; streaming adds a few frames.
    assert!(peak < baseline + 24 * 1024, "peak RSS {peak} KiB vs baseline {baseline} KiB: the body was buffered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_half_invalid_under_load_fail_no_request() {
    let up = Upstream::echo().await;
    let base = one_cluster_yaml(up.addr);
    let sc = Sidecar::start(&base).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), sc.url("/load"));
        tasks.push(tokio::spawn(async move {
            let client = http1();
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed.lock().unwrap().push(format!("status {}", r.status())),
                    Err(e) => failed.lock().unwrap().push(format!("error {e}")),
                }
            }
        }));
    }
    let mut generations = Vec::new();
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if i % 2 == 0 {
            // Valid: change the cluster (a new pool) and the route timeout.
            let yaml = base.replace(
                "routes:\n  - { name: all, cluster: backend }",
                &format!("routes:\n  - {{ name: all, cluster: backend, timeout: {}s }}", 5 + i),
            );
            sc.write_config(&yaml);
            generations.push(sc.app.reload("test").await.expect("valid config reloads"));
        } else {
            sc.write_config(&base.replace("clusters:", "clusterz:"));
            let err = sc.app.reload("test").await.expect_err("invalid config is rejected");
            assert!(err.contains("clusterz"), "{err}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failures = failed.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests failed during reloads: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "load kept flowing");
    assert!(generations.windows(2).all(|w| w[1] > w[0]), "each valid reload swapped a new snapshot: {generations:?}");

    // The last reload was invalid: /config shows its error, metrics count it.
    let cfg = get(&sc.admin_url("/config")).await.json();
    assert_eq!(cfg["last_reload"]["result"], "error");
    assert!(cfg["last_reload"]["error"].as_str().unwrap().contains("clusterz"));
    let metrics = get(&sc.admin_url("/metrics")).await.text();
    assert!(metrics.contains("lifeline_config_reloads_total{result=\"error\"}"), "{metrics}");
}

use std::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_200_in_flight_slow_requests_finish() {
    // Slow enough that all 200 are still in flight when SIGTERM lands, even on a loaded machine.
    let up = Upstream::fixed(200, Duration::from_millis(5000)).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = child_yaml(up.addr, "shutdown: { drain_delay: 500ms, grace_period: 20s }\n");
    let mut sc = ChildSidecar::spawn(dir.path(), &yaml);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = sc.url(&format!("/slow/{i}"));
        tasks.push(tokio::spawn(async move {
            // One connection per request, as 200 independent callers.
            let client = http1();
            let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
            match client.request(req).await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            }
        }));
    }
    assert!(eventually(Duration::from_secs(30), || async { up.hits() >= 200 }).await, "only {} in flight", up.hits());
    sc.signal(Signal::SIGTERM);
    // Readiness drops at once.
    assert!(
        eventually(Duration::from_secs(4), || async { get(&sc.admin_url("/ready")).await.status == 503 }).await,
        "/ready did not turn 503 while draining"
    );
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(failed.is_empty(), "{} of 200 in-flight requests failed: {:?}", failed.len(), failed);
    let code = tokio::task::spawn_blocking(move || sc.wait_exit(Duration::from_secs(20))).await.unwrap();
    assert_eq!(code, Some(Some(0)), "sidecar exits 0 after draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_personal_data_stays_out_of_logs() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = ChildSidecar::spawn(dir.path(), &child_yaml(up.addr, ""));
    let id = "110101199003071234";
    let card = "A12345678";
    let got = get(&sc.url(&format!("/card/v1/cards/{id}?owner={card}&id2=44010219851212001X"))).await;
    assert_eq!(got.status, 200);
    // An error message that would carry the path: connect failure on a dead route is covered by
    // the no-route answer, whose message includes the path.
    let yaml = child_yaml(up.addr, "").replace(
        "{ name: all, cluster: backend, max_body: 1GiB }",
        "{ name: api, match: { path_prefix: /api/ }, cluster: backend }",
    );
    std::fs::write(&sc.config_path, yaml).unwrap();
    sc.signal(Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let cfg = get(&sc.admin_url("/config")).await.json();
            cfg["generation"].as_u64() == Some(2)
        })
        .await,
        "SIGHUP (or the file watcher) reloaded the config"
    );
    let got = get(&sc.url(&format!("/card/v1/cards/{id}"))).await;
    assert_eq!(got.status, 404, "the new config has no route for /card/");
    assert!(!got.text().contains(id), "error body leaks the ID number: {}", got.text());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = sc.log_text();
    assert!(logs.contains("lifeline::access"), "access log lines expected:\n{logs}");
    for secret in [id, card, "44010219851212001X"] {
        assert!(!logs.contains(secret), "{secret} reached the logs:\n{logs}");
    }
    assert!(logs.contains("**************1234"), "masked form expected in the access log:\n{logs}");
}

#[tokio::test]
async fn admin_mutations_need_the_token_and_never_fail_open() {
    let up = Upstream::echo().await;
    let sc = Sidecar::start(&one_cluster_yaml(up.addr)).await;
    // No token file configured: disabled, not open.
    let client = http1();
    let post = |url: String, token: Option<&str>| {
        let mut b = Request::post(url);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let got = send(&client, post(sc.admin_url("/reload"), Some("anything"))).await;
    assert_eq!(got.status, 403);
    assert_eq!(got.json()["error"], "admin_token_not_configured");

    let token_path = sc.dir.path().join("token");
    std::fs::write(&token_path, "s3cret\n").unwrap();
    let yaml = one_cluster_yaml(up.addr).replace(
        "admin: { listen: 127.0.0.1:0 }",
        &format!("admin: {{ listen: 127.0.0.1:0, token_file: {} }}", token_path.display()),
    );
    sc.write_config(&yaml);
    sc.app.reload("test").await.expect("reload with token file");
    assert_eq!(send(&client, post(sc.admin_url("/reload"), None)).await.status, 401);
    assert_eq!(send(&client, post(sc.admin_url("/reload"), Some("wrong"))).await.status, 401);
    let got = send(&client, post(sc.admin_url("/reload"), Some("s3cret"))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    // The token file disappearing closes the door.
    std::fs::remove_file(&token_path).unwrap();
    assert_eq!(send(&client, post(sc.admin_url("/reload"), Some("s3cret"))).await.status, 403);
    // /config never shows the token itself.
    let cfg = get(&sc.admin_url("/config")).await.text();
    assert!(!cfg.contains("s3cret"));
}

/// `lifeline_requests_in_flight` counts a request while it is served (the counters are per
/// worker and summed when the metrics are read). Other tests in this process may add their own
/// requests to the gauge, never take ours away: so at least one while ours is slow upstream.
#[tokio::test]
async fn in_flight_requests_show_on_the_gauge_while_they_are_served() {
    let up = Upstream::fixed(200, Duration::from_millis(1500)).await;
    let sc = Sidecar::start(&one_cluster_yaml(up.addr)).await;
    let url = sc.url("/slow");
    let slow = tokio::spawn(async move { get(&url).await.status });
    let gauge = || async {
        let text = get(&sc.admin_url("/metrics")).await.text();
        text.lines()
            .find_map(|l| l.strip_prefix("lifeline_requests_in_flight "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(1), || async { gauge().await >= 1.0 }).await,
        "the slow request shows as in flight"
    );
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text() {
    let up = Upstream::echo().await;
    let sc = Sidecar::start(&one_cluster_yaml(up.addr)).await;
    for _ in 0..5 {
        assert_eq!(get(&sc.url("/x")).await.status, 200);
    }
    let text = get(&sc.admin_url("/metrics")).await.text();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parses as Prometheus text");
    let requests: f64 = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "lifeline_requests_total"
                && s.labels.get("route") == Some("all")
                && s.labels.get("outcome") == Some("2xx")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert!(requests >= 5.0, "lifeline_requests_total counted the requests: {requests}\n{text}");
    assert!(scrape.samples.iter().any(|s| s.metric.starts_with("lifeline_request_duration_seconds")), "{text}");
    assert!(scrape.docs.contains_key("lifeline_requests_total"), "HELP text registered");
    // Every sample line is `name{labels} value`.
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN", "bad sample line: {line}");
        assert!(line.starts_with("lifeline_"), "metric without the lifeline_ prefix: {line}");
    }
}

/// Write syscalls (`write`, `writev`, `pwrite`; not socket sends) the process has made so far,
/// from its own I/O accounting.
fn write_syscalls(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines().find_map(|l| l.strip_prefix("syscw:")).and_then(|v| v.trim().parse().ok()).expect("syscw")
}

/// A sidecar (access log off) in front of an echo backend, warmed up with 20 requests, for
/// tests that send requests one at a time and count what the process does per request.
struct OneAtATime {
    sidecar: ChildSidecar,
    client: Client<HttpConnector, Full<Bytes>>,
    dir: tempfile::TempDir,
    _backend: Upstream,
}

impl OneAtATime {
    async fn start() -> OneAtATime {
        let backend = Upstream::echo().await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = child_yaml(backend.addr, "telemetry: { access_log: false }\n");
        let sidecar = ChildSidecar::spawn(dir.path(), &yaml);
        let one = OneAtATime { sidecar, client: http1(), dir, _backend: backend };
        for n in 0..20 {
            one.get(n).await;
        }
        one
    }

    async fn get(&self, n: u32) {
        let req = Request::get(self.sidecar.url(&format!("/one/{n}"))).body(Full::new(Bytes::new())).unwrap();
        assert_eq!(send(&self.client, req).await.status, 200);
    }
}

/// tokio wakes its I/O driver with a `write` to an eventfd whenever a timer is registered with a
/// deadline earlier than the driver's next wake, even from the runtime's own running thread
/// (tokio-rs/tokio#5207), and every proxied request registers two (its deadline and its
/// attempt's timeout). Each worker keeps a nearer timer registered while it has connections
/// (`server::hold_timer_horizon`), so a request makes no `write` syscall at all; two that
/// leapfrog, so re-arming one makes none either (a single one re-armed made 20 a second).
/// Requests here come one at a time with a pause between them, so each finds its worker
/// asleep: without the horizon timer that was 1.5–2 writes per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_request_makes_no_write_syscall() {
    let one = OneAtATime::start().await;
    let sc = &one.sidecar;
    // The control plane writes a few times a second on its own (its timers on the main
    // runtime), so the same time spent idle is the baseline.
    let (started, before) = (tokio::time::Instant::now(), write_syscalls(sc.child.id()));
    const N: u64 = 300;
    for n in 0..N as u32 {
        one.get(n).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let busy = write_syscalls(sc.child.id()) - before;
    let took = started.elapsed();
    let before = write_syscalls(sc.child.id());
    tokio::time::sleep(took).await;
    let idle = write_syscalls(sc.child.id()) - before;
    assert!(
        busy.saturating_sub(idle) < 12,
        "{busy} write syscalls for {N} requests in {took:?}, {idle} in as long idle"
    );
    // And the timer that does it sleeps with the traffic: a second after the last request it
    // is gone, and the workers sleep until the next one, the keep-alive connection still open
    // (they woke twice a second each with a one-second timer, 40 times at 50 ms).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = worker_wakeups(sc.child.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let woke = worker_wakeups(sc.child.id()) - before;
    assert!(woke == 0, "proxy workers woke {woke} times in 2 s with no requests");
    // The next request wakes the one that serves it, and takes up the horizon timer again (the
    // first request's own timers, registered before it, may write).
    let before = write_syscalls(sc.child.id());
    for n in 0..N as u32 {
        one.get(n).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let busy = write_syscalls(sc.child.id()) - before;
    assert!(busy.saturating_sub(idle) < 12, "{busy} write syscalls for {N} requests after the workers slept");
}

/// An answer waits for the end of its worker's round by going to the back of the worker's
/// queue, not by `yield_now`, which tokio resumes only after a zero-timeout poll of the reactor
/// (`h1::Conn::write_response`). Requests here come one at a time, so each answer is alone in
/// its round: with the yield, the workers made one zero-timeout `epoll_wait` per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_answer_costs_no_extra_poll_of_the_reactor() {
    let one = OneAtATime::start().await;
    let sc = &one.sidecar;
    let pid = sc.child.id();
    let workers = worker_threads(pid);
    assert!(!workers.is_empty(), "no lifeline-worker threads in /proc/{pid}/task");
    let trace = one.dir.path().join("epoll.trace");
    // scripts/install-deps installs strace.
    let strace = std::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=epoll_wait", "-o"])
        .arg(&trace)
        .args(["-p", &pid.to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace");
    // Attached when the first traced call is written (the workers' timer wakes them at least
    // once a second).
    let attached = tokio::time::Instant::now();
    while std::fs::metadata(&trace).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(attached.elapsed() < Duration::from_secs(10), "strace wrote nothing in 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    const N: u32 = 200;
    for n in 0..N {
        one.get(n).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(strace.id() as i32), Signal::SIGINT).unwrap();
    let out = strace.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&trace).unwrap();
    // Lines read `TID epoll_wait(FD, [EVENTS], 1024, TIMEOUT) = N`, or, when another thread's
    // call came in between, `TID epoll_wait(FD,  <unfinished ...>` and later
    // `TID <... epoll_wait resumed>[EVENTS], 1024, TIMEOUT) = N`.
    let (mut polls, mut zero_timeout) = (0u32, 0u32);
    for line in text.lines() {
        let Some((tid, call)) = line.split_once(' ') else { continue };
        if !workers.iter().any(|w| w == tid) {
            continue;
        }
        let call = call.trim_start();
        if call.starts_with("epoll_wait(") {
            polls += 1;
        } else if !call.starts_with("<... epoll_wait resumed>") {
            continue;
        }
        let timeout = call.rsplit_once(')').and_then(|(args, _)| args.rsplit(',').next()).map(str::trim);
        if timeout == Some("0") {
            zero_timeout += 1;
        }
    }
    assert!(
        polls >= N,
        "strace saw {polls} epoll_wait calls of the workers for {N} requests: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(zero_timeout < N / 10, "{zero_timeout} zero-timeout polls (of {polls}) for {N} lone requests");
}

/// An idle sidecar sleeps. Its control plane runs on timers (each cluster's controller, breaker
/// policy and health checks, the memory release, the config watch, the metrics upkeep); with
/// nothing to do they wake the process a few times a second in all (42 times in these 3 s),
/// and the proxy workers not at all. Each cluster's controller used to look ten times a second
/// and its breaker's policy twenty, whatever happened: 222 times in 3 s here, and 4.4 ms of
/// CPU a second with the benchmark's one cluster (BENCHMARKS.md, Session 31); then 58, each
/// chore on its own phase and the workers' timers twice a second each (Session 33: the chores
/// on one beat, `lifeline::beat`, and workers that sleep until a request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sidecar_wakes_a_few_times_a_second() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = "health_check: { path: /healthz, interval: 1s, timeout: 500ms }\n\
                  outlier: { consecutive_5xx: 5, failure_percentage: 50% }\n\
                  breaker: { failure_rate: 50%, window: 10s, min_calls: 20, open_for: 5s }\n\
                  retry: { attempts: 2, per_try_timeout: 800ms }";
    let sc = quiet_sidecar(dir.path(), up.addr, &["auth", "card", "pay"], policy).await;
    let pid = sc.child.id();
    let (before, workers_before) = (wakeups(pid, |_| true), worker_wakeups(pid));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let woke = wakeups(pid, |_| true) - before;
    let workers = worker_wakeups(pid) - workers_before;
    assert!(woke < 50, "the idle sidecar's threads woke {woke} times in 3 s");
    assert_eq!(workers, 0, "the idle sidecar's proxy workers woke {workers} times in 3 s");
}

/// The control plane's once-a-second chores (each cluster's pool sweep and breaker buckets, the
/// memory release, the config watch) run on one beat (`lifeline::beat`): with no health
/// checks, an idle sidecar's threads wake three or four times a second in all (the timer
/// wheel's slot, the beat, the config read coming back from the blocking pool): 10–12 times in
/// these 3 s. Each on its own phase, every chore woke the thread twice (the wheel's slot, then
/// the timer): 20 times with the two clusters here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_control_planes_chores_share_one_beat() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = "breaker: { failure_rate: 50%, window: 10s, min_calls: 20, open_for: 5s }";
    let sc = quiet_sidecar(dir.path(), up.addr, &["auth", "pay"], policy).await;
    let pid = sc.child.id();
    let before = wakeups(pid, |_| true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let woke = wakeups(pid, |_| true) - before;
    assert!(woke <= 15, "the idle sidecar's threads woke {woke} times in 3 s");
}

/// A sidecar with a cluster per name (one endpoint, `up`; `policy`'s lines under each) and a
/// route to each (`/NAME/`, the last one for the rest), once a request has gone through each
/// and 1.5 s have passed (the workers' horizon timer lasts a second past the last request).
async fn quiet_sidecar(dir: &std::path::Path, up: std::net::SocketAddr, names: &[&str], policy: &str) -> ChildSidecar {
    let mut yaml = String::from(
        "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\ntelemetry: { access_log: false }\nclusters:\n",
    );
    for name in names {
        yaml += &format!("  {name}:\n    endpoints:\n      - {{ address: {up} }}\n");
        for line in policy.lines() {
            yaml += &format!("    {}\n", line.trim());
        }
    }
    yaml += "routes:\n";
    for (i, name) in names.iter().enumerate() {
        if i + 1 < names.len() {
            yaml += &format!("  - {{ name: {name}, match: {{ path_prefix: /{name}/ }}, cluster: {name} }}\n");
        } else {
            yaml += &format!("  - {{ name: {name}, cluster: {name} }}\n");
        }
    }
    let sc = ChildSidecar::spawn(dir, &yaml);
    for name in names {
        assert_eq!(get(&sc.url(&format!("/{name}/x"))).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    sc
}

/// Thread ids (as text) of the process's proxy worker threads.
fn worker_threads(pid: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks").flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("lifeline-worke") {
            ids.push(task.file_name().to_string_lossy().into_owned());
        }
    }
    ids
}

/// Times the process's proxy worker threads went to sleep and woke (voluntary context switches).
fn worker_wakeups(pid: u32) -> u64 {
    wakeups(pid, |comm| comm.starts_with("lifeline-worke"))
}

/// Times the process's threads whose name passes `which` went to sleep and woke.
fn wakeups(pid: u32, which: impl Fn(&str) -> bool) -> u64 {
    let mut n = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks").flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !which(&comm) {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        n += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    n
}

/// After a burst of connections closes, the sidecar gives the memory they held back to the
/// system (`proxy::release`): glibc keeps freed memory in its arenas, so without the release
/// the process would stay at the burst's size. The burst here is 256 client connections, each
/// with its request in flight at once (the backend holds every answer until all 256 have
/// arrived, so the peak does not depend on how fast a busy machine serves them), and as many
/// connections to the backend (the pool keeps 4 idle). glibc only: elsewhere there is nothing
/// to release.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_held_by_a_burst_of_connections_goes_back_after_it() {
    use http::Response;
    use hyper::body::Incoming;
    use lifeline::proxy::body;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BURST: usize = 256;
    let (open_gate, gate) = tokio::sync::watch::channel(false);
    let up = Upstream::start(Arc::new(move |req: Request<Incoming>| {
        let mut gate = gate.clone();
        Box::pin(async move {
            // Read the whole body, then wait for the gate.
            let mut body = req.into_body();
            while let Some(Ok(_)) = body.frame().await {}
            let _ = gate.wait_for(|open| *open).await;
            Response::new(body::full("held"))
        })
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\ntelemetry: {{ access_log: false }}\n\
         clusters:\n  backend:\n    endpoints:\n      - {{ address: {} }}\n    max_idle_per_endpoint: 4\n\
         routes:\n  - {{ name: all, cluster: backend, timeout: 60s }}\n",
        up.addr
    );
    let sc = ChildSidecar::spawn(dir.path(), &yaml);
    open_gate.send_replace(true);
    assert_eq!(get(&sc.url("/warm")).await.status, 200);
    open_gate.send_replace(false);
    let addr = sc.url("/").trim_start_matches("http://").trim_end_matches('/').to_string();
    let releases = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("lifeline_memory_releases_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let before = releases(&get(&sc.admin_url("/metrics")).await.text());
    let baseline = sc.rss_kib();
    let hits_before = up.hits();

    let burst = (0..BURST).map(|i| {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
            // A 4 KiB body, so every connection fills its buffers.
            let body = vec![b'x'; 4096];
            let head = format!("POST /b/{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).await.expect("send head");
            s.write_all(&body).await.expect("send body");
            let mut got = Vec::new();
            let mut buf = [0u8; 8192];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.expect("read answer");
                assert!(n > 0, "connection {i} closed before its answer");
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
            s
        })
    });
    let burst: Vec<_> = burst.collect();
    let all_in_flight = eventually(Duration::from_secs(30), || {
        let n = up.hits() - hits_before;
        async move { n >= BURST }
    })
    .await;
    assert!(all_in_flight, "only {} of {BURST} requests reached the backend", up.hits() - hits_before);
    let peak = sc.rss_kib();
    open_gate.send_replace(true);
    let mut open = Vec::with_capacity(BURST);
    for task in burst {
        open.push(task.await.expect("a burst connection failed"));
    }
    assert!(peak > baseline + 2048, "{BURST} requests in flight added only {} KiB", peak.saturating_sub(baseline));
    drop(open);

    // Checked once a second by the sidecar; give it a few.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let now = sc.rss_kib();
        let released = releases(&get(&sc.admin_url("/metrics")).await.text()) - before;
        if released >= 1.0 && now <= baseline + (peak - baseline) / 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after the burst: {now} KiB resident (baseline {baseline}, peak {peak}), {released} releases"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
