//! Where a drill runs: the processes it started (local) or the addresses it was given (remote),
//! and how each fault is applied and reverted there.
//!
//! Local mode starts every simulator (`lifeline sim`), fault proxy (`lifeline chaos proxy`)
//! and the sidecar (`lifeline run`) as child processes of this binary, on ports it picks, and
//! fills the scenario's `${...}` placeholders with them. Remote mode only talks HTTP: the
//! sidecar's admin API (with the token), fault proxy APIs and simulator controls.

mod local;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use serde_json::json;

use super::http::Http;
use super::plan::{Action, Drill, Fault, Signal, Target};
use super::procs::Procs;
use super::template;
use crate::config::Dur;

/// A running drill environment.
pub struct Env {
    pub proxy_url: String,
    pub admin_url: String,
    pub token: Option<String>,
    pub ledgers: Vec<String>,
    /// Fault proxy API base URLs by name.
    pub proxies: BTreeMap<String, String>,
    /// Simulator control base URLs by name, and the service each runs (local).
    pub sims: BTreeMap<String, (String, Option<String>)>,
    pub procs: Procs,
    pub http: Http,
    /// Local only: placeholder values, the sidecar config file, and the first config.
    values: BTreeMap<String, String>,
    config_path: Option<PathBuf>,
    first_config: Option<String>,
    local: bool,
}

impl Env {
    /// Prepares the environment the drill names. `dir` holds logs, configs, ledgers, journals.
    pub async fn start(drill: &Drill, dir: &Path, bin: &Path) -> Result<Env, String> {
        match &drill.target {
            Target::Local(_) => local::start(drill, dir, bin).await,
            Target::Remote(_) => Env::remote(drill).await,
        }
    }

    async fn remote(drill: &Drill) -> Result<Env, String> {
        let Target::Remote(r) = &drill.target else { return Err("not a remote drill".into()) };
        if !r.environments.is_empty() {
            let env = std::env::var("LIFELINE_DRILL_ENV").unwrap_or_default();
            if !r.environments.contains(&env) {
                return Err(format!(
                    "LIFELINE_DRILL_ENV={env:?} is not in the scenario's allow-list ({}); refusing to run",
                    r.environments.join(", ")
                ));
            }
        }
        let token = match &r.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read token file {}: {e}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let http = Http::new(Duration::from_secs(5));
        let ready = http.get(&format!("{}/ready", r.admin_url)).await?;
        if !ready.ok() {
            return Err(format!("the sidecar at {} is not ready: {} {}", r.admin_url, ready.status, ready.text()));
        }
        Ok(Env {
            proxy_url: r.proxy_url.clone(),
            admin_url: r.admin_url.clone(),
            token,
            ledgers: r.ledgers.clone(),
            proxies: r.proxies.clone(),
            sims: r.sims.iter().map(|(k, v)| (k.clone(), (v.trim_end_matches('/').to_string(), None))).collect(),
            procs: Procs::default(),
            http,
            values: BTreeMap::new(),
            config_path: None,
            first_config: None,
            local: false,
        })
    }

    /// Fills placeholders (local) in a value from a scenario.
    fn fill(&self, s: &str) -> Result<String, String> {
        template::fill(s, &self.values)
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let a = self.http.call(method.clone(), url, body.as_ref(), self.token.as_deref()).await?;
        if !a.ok() {
            return Err(format!("{method} {url}: {} {}", a.status, a.text()));
        }
        Ok(a.json().unwrap_or(serde_json::Value::Null))
    }

    fn api(&self, name: &str, map: &str) -> Result<String, String> {
        let m = if map == "proxy" { self.proxies.get(name).cloned() } else { self.sims.get(name).map(|s| s.0.clone()) };
        m.ok_or_else(|| format!("no {map} named {name}"))
    }

    /// Applies `fault`, which should last `ttl` (its end on the timeline).
    pub async fn apply(&mut self, fault: &Fault, ttl: Option<Duration>) -> Result<(), String> {
        let ttl = Dur(ttl.unwrap_or(Duration::from_secs(3600)).max(Duration::from_millis(100)));
        match &fault.action {
            Action::Sidecar(f) => {
                let endpoint = f.endpoint.as_ref().map(|e| self.fill(e)).transpose()?;
                let spec = serde_json::to_value(f.spec(&fault.id, ttl, endpoint)).map_err(|e| e.to_string())?;
                self.call(Method::POST, &format!("{}/chaos/faults", self.admin_url), Some(spec)).await?;
            }
            Action::Proxy { target, toxic, stream, toxicity } => {
                let body =
                    json!({"name": fault.id, "stream": stream, "toxicity": toxicity, "toxic": toxic, "ttl": ttl});
                self.call(Method::POST, &format!("{}/toxics", self.api(target, "proxy")?), Some(body)).await?;
            }
            Action::Partition { target } => {
                let body = json!({"enabled": false, "ttl": ttl});
                self.call(Method::POST, &format!("{}/proxy", self.api(target, "proxy")?), Some(body)).await?;
            }
            Action::Process { target, signal, .. } => self.procs.signal(target, *signal).await?,
            Action::Sim { target, mode } => self.sim_mode(target, mode, Some(ttl)).await?,
            Action::Reload { config } => {
                let text = self.fill(config)?;
                self.reload(&text).await?;
            }
        }
        Ok(())
    }

    async fn sim_mode(&self, target: &str, mode: &str, ttl: Option<Dur>) -> Result<(), String> {
        let (url, service) = self.sims.get(target).cloned().ok_or_else(|| format!("no sim named {target}"))?;
        let mut body = json!({"mode": mode});
        if let Some(s) = service {
            body["service"] = s.into();
        }
        if let Some(t) = ttl {
            body["for"] = t.to_string().into();
        }
        self.call(Method::POST, &format!("{url}/sim/mode"), Some(body)).await.map(|_| ())
    }

    async fn reload(&self, text: &str) -> Result<(), String> {
        let path = self.config_path.as_ref().ok_or("config reloads need local mode")?;
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
        self.call(Method::POST, &format!("{}/reload", self.admin_url), None).await.map(|_| ())
    }

    /// Ends `fault`: removes it, heals, continues or restarts what it stopped or killed.
    pub async fn revert(&mut self, fault: &Fault) -> Result<(), String> {
        match &fault.action {
            Action::Sidecar(_) => {
                let url = format!("{}/chaos/faults/{}", self.admin_url, fault.id);
                match self.http.call(Method::DELETE, &url, None, self.token.as_deref()).await {
                    Ok(a) if a.ok() || a.status == 404 => Ok(()),
                    Ok(a) => Err(format!("DELETE {url}: {} {}", a.status, a.text())),
                    Err(e) => Err(e),
                }
            }
            Action::Proxy { target, .. } => {
                let url = format!("{}/toxics/{}", self.api(target, "proxy")?, fault.id);
                match self.http.call(Method::DELETE, &url, None, None).await {
                    Ok(a) if a.ok() || a.status == 404 => Ok(()),
                    Ok(a) => Err(format!("DELETE {url}: {} {}", a.status, a.text())),
                    Err(e) => Err(e),
                }
            }
            Action::Partition { target } => {
                let url = format!("{}/proxy", self.api(target, "proxy")?);
                self.call(Method::POST, &url, Some(json!({"enabled": true}))).await.map(|_| ())
            }
            Action::Process { target, signal: Signal::Stop, .. } => self.procs.resume(target),
            Action::Process { target, .. } => self.restart(target).await,
            Action::Sim { target, .. } => self.sim_mode(target, "healthy", None).await,
            Action::Reload { .. } => match self.first_config.clone() {
                Some(c) => self.reload(&c).await,
                None => Ok(()),
            },
        }
    }

    /// Restarts a killed process and waits until it is ready again.
    pub async fn restart(&mut self, target: &str) -> Result<(), String> {
        self.procs.restart(target)?;
        if target == "sidecar" {
            wait_ok(&self.http, &format!("{}/ready", self.admin_url), "the restarted sidecar").await
        } else if let Some((control, _)) = self.sims.get(target) {
            wait_ok(&self.http, &format!("{control}/healthz"), target).await
        } else if let Some(api) = self.proxies.get(target) {
            wait_ok(&self.http, &format!("{api}/proxy"), target).await
        } else {
            Ok(())
        }
    }

    /// The abort and the final rollback: every fault of every kind, at once. Returns what
    /// could not be reverted.
    pub async fn revert_all(&mut self, faults: &[Fault]) -> Vec<String> {
        let mut problems = Vec::new();
        let url = format!("{}/chaos/faults", self.admin_url);
        let (clear, proxies, sims) = {
            let clear = self.http.call(Method::DELETE, &url, None, self.token.as_deref());
            let resets: Vec<String> = self.proxies.values().map(|api| format!("{api}/reset")).collect();
            let proxies = futures_util::future::join_all(
                resets.iter().map(|u| self.http.call(Method::POST, u, None, None)).collect::<Vec<_>>(),
            );
            let sims =
                futures_util::future::join_all(self.sims.keys().map(|name| self.sim_mode(name, "healthy", None)));
            tokio::join!(clear, proxies, sims)
        };
        if let Err(e) = clear {
            problems.push(format!("sidecar faults: {e}"));
        }
        problems.extend(proxies.into_iter().filter_map(|r| r.err()));
        problems.extend(sims.into_iter().filter_map(|r| r.err()));
        for f in faults {
            if let Action::Process { target, signal: Signal::Stop, .. } = &f.action {
                if let Err(e) = self.procs.resume(target) {
                    problems.push(e);
                }
            }
        }
        if self.local {
            for name in self.procs.dead() {
                if let Err(e) = self.restart(&name).await {
                    problems.push(format!("restart {name}: {e}"));
                }
            }
        }
        problems
    }

    /// Stops every process this drill started (local), and reaps them.
    pub async fn shutdown(&mut self) {
        self.procs.shutdown(Duration::from_secs(10)).await;
    }
}

/// Polls `url` until it answers 2xx (30 s at most).
pub(super) async fn wait_ok(http: &Http, url: &str, what: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match http.get(url).await {
            Ok(a) if a.ok() => return Ok(()),
            Ok(a) => last = format!("{} {}", a.status, a.text()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{what} did not become ready within 30s ({url}: {last})"))
}
