//! A sidecar (or any `lifeline` subcommand) as a child process, for tests where a process must
//! receive signals or die. Its stderr is collected so tests can inspect log lines.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Path of the `lifeline` binary under test.
pub fn lifeline_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lifeline")
}

/// A `lifeline run` child process started with `--log-format json`.
pub struct ChildSidecar {
    pub child: Child,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub config_path: PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl ChildSidecar {
    /// Writes `yaml` to `dir/lifeline.yaml` and runs `lifeline run -c` on it; waits for "ready".
    pub fn spawn(dir: &Path, yaml: &str) -> ChildSidecar {
        let config_path = dir.join("lifeline.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        ChildSidecar::spawn_with(&config_path)
    }

    /// Runs `lifeline run -c config_path` (the file must exist).
    pub fn spawn_with(config_path: &Path) -> ChildSidecar {
        let mut child = Command::new(lifeline_bin())
            .args(["--log-format", "json", "run", "-c"])
            .arg(config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lifeline");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addrs) = ready_addrs(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addrs);
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (proxy_addr, admin_addr) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("sidecar did not become ready; logs:\n{}", logs.lock().unwrap().join("\n"));
            }
        };
        ChildSidecar { child, proxy_addr, admin_addr, config_path: config_path.to_path_buf(), logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy_addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(self.pid(), sig);
    }

    /// Waits for the process to exit; returns its exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// All log lines so far.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    /// Current resident set size (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:")
    }
}

impl Drop for ChildSidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ready_addrs(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "lifeline ready" {
        return None;
    }
    let proxy = v.get("proxy_addr")?.as_str()?.parse().ok()?;
    let admin = v.get("admin_addr")?.as_str()?.parse().ok()?;
    Some((proxy, admin))
}

/// A field of /proc/PID/status in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
