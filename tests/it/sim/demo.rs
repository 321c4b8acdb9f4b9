//! `lifeline demo`, used as a newcomer would: start it, run the curl lines it prints, break the
//! payment backend as it suggests, and stop it with Ctrl-C.
//!
//! It runs with `--any-port`: the machine is shared, and the fixed demo ports may be taken by
//! someone else's demo. Everything else is the path `lifeline demo` takes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Runs one printed curl line, returning its output and the HTTP status curl saw.
fn curl(line: &str) -> (String, u16) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{line} --max-time 10 -w ' HTTP%{{http_code}}'"))
        .output()
        .expect("run sh (and curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.rsplit(" HTTP").next().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    (text, status)
}

#[test]
fn the_demo_prints_curl_lines_that_work() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .args(["demo", "--any-port"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn lifeline demo");
    let pid = Pid::from_raw(child.id() as i32);
    // A failing assertion must not leave the demo running after the test process exits.
    struct KillOnDrop(Pid);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGKILL);
        }
    }
    let _guard = KillOnDrop(pid);
    // Watchdog: a hung demo must fail the test, not hang it.
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while std::time::Instant::now() < deadline {
            if kill(pid, None).is_err() {
                return;
            }
            std::thread::park_timeout(Duration::from_millis(200));
        }
        let _ = kill(pid, Signal::SIGKILL);
    });
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("the demo exited early; it printed:\n{}", lines.join(""));
        }
        lines.push(line.clone());
        if line.starts_with("Ctrl-C stops everything") {
            break;
        }
    }
    let text = lines.concat().replace("\\\n", " ");
    let commands: Vec<&str> = text.lines().map(str::trim).filter(|l| l.starts_with("curl ")).collect();
    assert!(commands.len() >= 10, "{text}");
    let (try_lines, rest) = commands.split_at(commands.iter().position(|c| c.contains("/sim/mode")).unwrap());
    for line in try_lines {
        let (out, status) = curl(line);
        assert!((200..300).contains(&status), "{line}\n -> {out}");
    }
    let settle = try_lines.iter().find(|l| l.contains("Idempotency-Key")).unwrap();
    assert!(curl(settle).0.contains("settlement_id"), "replays the original answer");

    // Take payment down as the demo suggests: the settle route has offline grace, so the
    // settlement is journaled and answered 202 with a provisional receipt; a lookup (no grace)
    // answers 503 with its cause.
    let down = rest.iter().find(|l| l.contains("\"down\"")).unwrap();
    assert_eq!(curl(down).1, 200);
    // The settlement route has offline grace: the sidecar journals the settlement and answers
    // 202 with a provisional receipt that names the cause.
    let (out, status) = curl(&settle.replace("demo-1", "demo-2"));
    assert_eq!(status, 202, "{out}");
    assert!(out.contains("upstream_connect_failed") && out.contains("not a final settlement"), "{out}");

    kill(pid, Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "the demo stops cleanly on Ctrl-C: {status}");
}
