//! The child processes of a local drill: simulators, fault proxies and the sidecar.
//!
//! The runner owns them: it starts them, signals them (SIGKILL, SIGTERM, SIGSTOP/SIGCONT),
//! restarts them with the same arguments (same ports, same ledger and journal files, so a
//! restart is the crash-recovery a real pod goes through), and always reaps them, on success,
//! on abort and on error (`kill_on_drop` is the last line of defence).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal as NixSignal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::plan::Signal;

struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

/// Every process a local drill started.
#[derive(Default)]
pub struct Procs {
    list: Vec<Proc>,
}

impl Procs {
    /// Starts `program args`, output appended to `log`.
    pub fn spawn(&mut self, name: &str, program: &Path, args: Vec<String>, log: PathBuf) -> Result<(), String> {
        let mut p = Proc { name: name.into(), program: program.into(), args, log, child: None, stopped: false };
        p.child = Some(start(&p)?);
        self.list.push(p);
        Ok(())
    }

    fn get(&mut self, name: &str) -> Result<&mut Proc, String> {
        self.list.iter_mut().find(|p| p.name == name).ok_or_else(|| format!("no process named {name}"))
    }

    pub fn pid(&mut self, name: &str) -> Option<u32> {
        self.get(name).ok()?.child.as_ref()?.id()
    }

    /// Sends `signal`; a killed or terminated process is reaped (waited for) before returning.
    pub async fn signal(&mut self, name: &str, signal: Signal) -> Result<(), String> {
        let p = self.get(name)?;
        let Some(child) = p.child.as_mut() else { return Err(format!("{name} is not running")) };
        let pid = child.id().ok_or_else(|| format!("{name} has already exited"))?;
        let sig = match signal {
            Signal::Kill => NixSignal::SIGKILL,
            Signal::Term => NixSignal::SIGTERM,
            Signal::Stop => NixSignal::SIGSTOP,
        };
        kill(Pid::from_raw(pid as i32), sig).map_err(|e| format!("kill -{sig} {name} ({pid}): {e}"))?;
        match signal {
            Signal::Stop => p.stopped = true,
            Signal::Kill | Signal::Term => {
                // SIGTERM drains; give it the sidecar's grace period, then make sure.
                if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_err() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                p.child = None;
            }
        }
        Ok(())
    }

    /// SIGCONT after SIGSTOP.
    pub fn resume(&mut self, name: &str) -> Result<(), String> {
        let p = self.get(name)?;
        if let (true, Some(pid)) = (p.stopped, p.child.as_ref().and_then(|c| c.id())) {
            kill(Pid::from_raw(pid as i32), NixSignal::SIGCONT).map_err(|e| format!("kill -CONT {name}: {e}"))?;
        }
        p.stopped = false;
        Ok(())
    }

    /// Starts a process again with its original arguments (no-op if it is running).
    pub fn restart(&mut self, name: &str) -> Result<bool, String> {
        let p = self.get(name)?;
        if let Some(c) = p.child.as_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                return Ok(false);
            }
        }
        p.child = Some(start(p)?);
        Ok(true)
    }

    /// Names of processes that are not running (crashed, or killed and not yet restarted).
    pub fn dead(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.list.iter_mut() {
            let running = p.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if !running {
                out.push(p.name.clone());
            }
        }
        out
    }

    /// Stops everything: SIGCONT what is stopped, SIGTERM, then SIGKILL after `grace`; reaps all.
    pub async fn shutdown(&mut self, grace: Duration) {
        for p in self.list.iter_mut().rev() {
            let Some(child) = p.child.as_mut() else { continue };
            if let Some(pid) = child.id() {
                let pid = Pid::from_raw(pid as i32);
                if p.stopped {
                    let _ = kill(pid, NixSignal::SIGCONT);
                }
                let _ = kill(pid, NixSignal::SIGTERM);
            }
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            p.child = None;
        }
    }
}

fn start(p: &Proc) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)
        .map_err(|e| format!("cannot open {}: {e}", p.log.display()))?;
    let err = log.try_clone().map_err(|e| format!("{}: {e}", p.log.display()))?;
    Command::new(&p.program)
        .args(&p.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {} ({}): {e}", p.name, p.program.display()))
}
