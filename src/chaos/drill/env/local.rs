//! Local mode: every simulator, fault proxy and the sidecar as child processes of the runner,
//! on ports it picks, each waited for until ready; a failed start stops what already started.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::super::http::Http;
use super::super::plan::{Drill, Target};
use super::super::procs::Procs;
use super::super::template;
use super::{wait_ok, Env};

/// Ports for the drill's processes are picked below Linux's ephemeral range (32768–60999 by
/// default). A port from `bind(:0)` is itself ephemeral: between the runner releasing it and the
/// child binding it, any outgoing connection on the machine may take it as its local port (seen
/// in CI: a simulator that never came up). Below the range only another listener can collide.
const PICK_FROM: std::ops::Range<u16> = 20_000..32_000;

fn free_port() -> Result<u16, String> {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(PICK_FROM);
        // Not one handed out recently (it is free again until its process binds it).
        if given.contains(&port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        if given.len() >= 512 {
            given.remove(0);
        }
        given.push(port);
        return Ok(port);
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot pick a port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect()
}

pub(super) async fn start(drill: &Drill, dir: &Path, bin: &Path) -> Result<Env, String> {
    let mut procs = Procs::default();
    match start_in(drill, dir, bin, &mut procs).await {
        Ok(mut env) => {
            env.procs = procs;
            Ok(env)
        }
        Err(e) => {
            // Never leave a half-started environment behind.
            procs.shutdown(Duration::from_secs(5)).await;
            Err(e)
        }
    }
}

async fn start_in(drill: &Drill, dir: &Path, bin: &Path, procs: &mut Procs) -> Result<Env, String> {
    let Target::Local(l) = &drill.target else { return Err("not a local drill".into()) };
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    let http = Http::new(Duration::from_secs(5));
    let mut values = BTreeMap::new();
    let mut sims = BTreeMap::new();
    let mut ledgers = Vec::new();
    for (i, s) in l.sims.iter().enumerate() {
        let (port, control) = (free_port()?, free_port()?);
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec![
            "sim".to_string(),
            format!("--{}", s.service),
            addr.clone(),
            "--control".into(),
            format!("127.0.0.1:{control}"),
            "--seed".into(),
            (i + 1).to_string(),
        ];
        if s.service == "payment" {
            args.push("--ledger".into());
            args.push(dir.join(format!("{}.ledger", s.name)).display().to_string());
            ledgers.push(format!("http://127.0.0.1:{control}/sim/ledger"));
        }
        if let Some(m) = &s.mode {
            args.push("--mode".into());
            args.push(format!("{}={m}", s.service));
        }
        if let Some(lat) = &s.latency {
            args.push("--latency".into());
            args.push(lat.clone());
        }
        procs.spawn(&s.name, bin, args, logs.join(format!("{}.log", s.name)))?;
        values.insert(format!("sim.{}", s.name), addr);
        sims.insert(s.name.clone(), (format!("http://127.0.0.1:{control}"), Some(s.service.clone())));
    }
    for (name, (control, _)) in &sims {
        wait_ok(&http, &format!("{control}/healthz"), &format!("sim {name}")).await?;
    }
    let mut proxies = BTreeMap::new();
    for p in &l.proxies {
        let (port, api) = (free_port()?, free_port()?);
        let upstream = values.get(&format!("sim.{}", p.upstream)).cloned().unwrap_or_default();
        let args = vec![
            "chaos".to_string(),
            "proxy".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--upstream".into(),
            upstream,
            "--api".into(),
            format!("127.0.0.1:{api}"),
        ];
        procs.spawn(&p.name, bin, args, logs.join(format!("{}.log", p.name)))?;
        values.insert(format!("proxy.{}", p.name), format!("127.0.0.1:{port}"));
        proxies.insert(p.name.clone(), format!("http://127.0.0.1:{api}"));
    }
    for (name, api) in &proxies {
        wait_ok(&http, &format!("{api}/proxy"), &format!("fault proxy {name}")).await?;
    }
    let token = token();
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, &token).map_err(|e| format!("cannot write {}: {e}", token_file.display()))?;
    let (listen, admin) = (free_port()?, free_port()?);
    values.insert("sidecar.listen".into(), format!("127.0.0.1:{listen}"));
    values.insert("sidecar.admin".into(), format!("127.0.0.1:{admin}"));
    values.insert("sidecar.token_file".into(), token_file.display().to_string());
    values.insert("dir".into(), dir.display().to_string());
    let config = template::fill(&l.config, &values)?;
    let config_path = dir.join("sidecar.yaml");
    std::fs::write(&config_path, &config).map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let args = vec!["run".to_string(), "-c".into(), config_path.display().to_string()];
    procs.spawn("sidecar", bin, args, logs.join("sidecar.log"))?;
    let admin_url = format!("http://127.0.0.1:{admin}");
    wait_ok(&http, &format!("{admin_url}/ready"), "the sidecar").await?;
    Ok(Env {
        proxy_url: format!("http://127.0.0.1:{listen}"),
        admin_url,
        token: Some(token),
        ledgers,
        proxies,
        sims,
        procs: Procs::default(),
        http,
        values,
        config_path: Some(config_path),
        first_config: Some(config),
        local: true,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn picked_ports_are_below_the_ephemeral_range_and_distinct() {
        let ports: Vec<u16> = (0..50).map(|_| super::free_port().expect("a port")).collect();
        assert!(ports.iter().all(|p| super::PICK_FROM.contains(p)), "{ports:?}");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "no port handed out twice");
    }
}
