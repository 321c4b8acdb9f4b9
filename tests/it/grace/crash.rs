//! `kill -9` of a sidecar process while 50 clients settle against a down (or slow) backend:
//! every 202 reaches the backend exactly once, nothing is charged twice (invariants 2–4).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::backend::{PayBackend, LAGGY, REFUSE_503, SLOW, UP};
use super::*;
use crate::support::{eventually, http1};

struct Proc {
    cfg: PathBuf,
    admin: String,
    child: Option<Child>,
}

impl Proc {
    async fn start(cfg: &Path, admin: &str) -> Proc {
        let mut p = Proc { cfg: cfg.to_path_buf(), admin: admin.to_string(), child: None };
        p.restart().await;
        p
    }

    async fn restart(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .args(["run", "-c"])
            .arg(&self.cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = format!("http://{}/ready", self.admin);
        let ready = eventually(Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let req = http::Request::get(&url).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
                matches!(http1().request(req).await, Ok(r) if r.status() == 200)
            }
        })
        .await;
        assert!(ready, "sidecar did not become ready");
    }

    /// SIGKILL: no drain, no flush, no destructor.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// 50 clients submitting distinct keys until `stop`; returns key → status of every answer.
fn clients(
    base: String,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<HashMap<String, u16>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..50)
        .map(|c| {
            let (base, stop, answers) = (base.clone(), stop.clone(), answers.clone());
            tokio::spawn(async move {
                let client = http1();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("k{c}-{n}");
                    let body = settlement(&format!("1101011990{c:08}"), 100 + n, &format!("H{}", c % 5));
                    if let Some((status, _)) = try_settle(&client, &base, &key, &body).await {
                        answers.lock().unwrap().insert(key, status);
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    n += 1;
                }
            })
        })
        .collect()
}

async fn crash_run(backend: PayBackend, during_load: u32, flap: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let (p1, p2) = (free_port(), free_port());
    let (listen, admin) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let limits = "per_settlement: 50000, per_card: { hard: { count: 1000, amount: 100000000 } }, \
                  total: { count: 1000000, amount: 100000000000 }";
    let cfg = dir.path().join("lifeline.yaml");
    std::fs::write(&cfg, yaml_on(&listen, &admin, backend.addr, &db, limits, FAST, "")).unwrap();
    let mut proc = Proc::start(&cfg, &admin).await;

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(HashMap::new()));
    let tasks = clients(format!("http://{listen}"), stop.clone(), answers.clone());
    for _ in 0..during_load {
        let wait = 150 + rand::random::<u64>() % 500;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        proc.kill9();
        tokio::time::sleep(Duration::from_millis(50)).await;
        proc.restart().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    // Recovery, then one more kill in the middle of the replay (and, if asked, a flapping backend).
    // The backend answers after 80 ms, so many forwards are in flight when the kill lands:
    // charged at the backend, not yet recorded as settled.
    backend.up().await;
    backend.set_mode(LAGGY);
    let replaying = eventually(Duration::from_secs(20), || async { backend.charges().len() >= 40 }).await;
    assert!(replaying, "replay did not start");
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 100)).await;
    proc.kill9();
    backend.set_mode(UP);
    proc.restart().await;
    if flap {
        for phase in 0..16 {
            match phase % 4 {
                0 => backend.set_mode(REFUSE_503),
                1 => backend.set_mode(LAGGY),
                2 => backend.down(),
                _ => backend.up().await,
            }
            if phase == 9 {
                proc.kill9();
                proc.restart().await;
            }
            tokio::time::sleep(Duration::from_millis(100 + rand::random::<u64>() % 100)).await;
        }
        backend.set_mode(UP);
        backend.up().await;
    }

    let accepted: Vec<String> =
        answers.lock().unwrap().iter().filter(|(_, s)| **s == 202).map(|(k, _)| k.clone()).collect();
    assert!(accepted.len() >= 50, "too few receipts to mean anything: {}", accepted.len());
    let done = eventually(Duration::from_secs(60), || async {
        let s = journal_states(&db);
        let total: i64 = s.values().sum();
        total > 0 && s.get("settled").copied().unwrap_or(0) == total
    })
    .await;
    assert!(done, "not all settled: {:?}", journal_states(&db));
    let charges = backend.charges();
    let doubles: Vec<_> = charges.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubles.is_empty(), "charged twice: {doubles:?}");
    let missing: Vec<_> = accepted.iter().filter(|k| !charges.contains_key(*k)).collect();
    assert!(missing.is_empty(), "got a 202 but never reached the backend: {missing:?}");
    let journaled: std::collections::HashSet<String> = journal_keys(&db).into_iter().collect();
    assert!(accepted.iter().all(|k| journaled.contains(k)), "a 202 without a journal entry");
    proc.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_against_a_down_backend_loses_nothing_and_charges_once() {
    crash_run(PayBackend::down_at_start().await, 3, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_against_a_slow_backend_resolves_ambiguity_by_query() {
    let backend = PayBackend::started().await;
    backend.set_mode(SLOW);
    crash_run(backend, 2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_with_a_flapping_backend_during_replay_charges_once() {
    crash_run(PayBackend::down_at_start().await, 2, true).await;
}

/// The journal's log on a directory of its own (`store.log_dir`, a volume of its own in a pod),
/// `kill -9`, then a restart whose config no longer names that directory while it is not there
/// (its volume dropped from the pod spec): the sidecar refuses to start rather than hide what
/// only that log held. With the directory back, every 202 reaches the backend exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_then_a_start_without_its_log_directory_is_refused_and_nothing_is_lost() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let wal = dir.path().join("log-volume").join("settlement");
    let (p1, p2) = (free_port(), free_port());
    let (listen, admin) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let plain = yaml_on(&listen, &admin, backend.addr, &db, ROOMY, FAST, "");
    let sqlite = format!("sqlite: {} }}", db.display());
    let with_log = plain.replace(&sqlite, &format!("sqlite: {}, log_dir: {} }}", db.display(), wal.display()));
    assert_ne!(plain, with_log);
    let cfg = dir.path().join("lifeline.yaml");
    std::fs::write(&cfg, &with_log).unwrap();
    let mut proc = Proc::start(&cfg, &admin).await;
    let client = http1();
    let base = format!("http://{listen}");
    let mut accepted = Vec::new();
    for n in 0..30 {
        let key = format!("vol-{n}");
        let body = settlement("110101199003071234", 100 + n, "H1");
        let (status, body) = try_settle(&client, &base, &key, &body).await.expect("an answer");
        assert_eq!(status, 202, "{body}");
        accepted.push(key);
    }
    // Killed right after the last 202: the applier (every 250 ms) has not copied the last
    // items from the log into the database.
    proc.kill9();

    let away = dir.path().join("unmounted");
    std::fs::rename(&wal, &away).unwrap();
    std::fs::write(&cfg, &plain).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .args(["run", "-c"])
            .arg(&cfg)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("a refused start exits")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without the log directory: {stderr}");
    assert!(stderr.contains("did not stop cleanly") && stderr.contains("log-volume/settlement"), "{stderr}");
    // Read offline meanwhile, the journal says what its view may lack.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .args(["grace", "status", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning") && stderr.contains("log-volume/settlement"), "{stderr}");

    std::fs::rename(&away, &wal).unwrap();
    std::fs::write(&cfg, &with_log).unwrap();
    proc.restart().await;
    backend.up().await;
    let done = eventually(Duration::from_secs(30), || async {
        let s = journal_states(&db);
        s.get("settled").copied().unwrap_or(0) == accepted.len() as i64
    })
    .await;
    assert!(done, "not all settled: {:?}", journal_states(&db));
    let charges = backend.charges();
    assert!(accepted.iter().all(|k| charges.get(k) == Some(&1)), "each 202 charged exactly once: {charges:?}");
    proc.kill9();
}
