//! `lifeline drain` and `lifeline wait-ready`: the admin API seen from the pod's lifecycle hooks.
//!
//! Kubernetes runs a container's `preStop` and `postStart` hooks inside the container, and the
//! runtime image is distroless (no shell, no curl), so the hooks exec the `lifeline` binary itself.
//! - `drain` is the `preStop` hook. It only *starts* draining (`POST /drain`: `/ready` fails, the
//!   proxy keeps serving) and returns, because a native sidecar that exits in `preStop` is simply
//!   restarted (KEP-753); the process exits later on SIGTERM, after the application has stopped.
//!   `--wait` then holds the hook, which is what the legacy (ordinary container) mode needs: there
//!   SIGTERM reaches every container at once, so the sidecar must outlive the app's last calls.
//! - `wait-ready` is the legacy mode's `postStart` hook: the kubelet does not start the next
//!   container until it returns, so the application never starts before its proxy is ready.
//!
//! Both read `admin.listen` and `admin.token_file` from the same config file Lifeline runs with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use std::process::ExitCode;

use crate::app::AppState;
use crate::proxy::body::ProxyBody;
use crate::proxy::respond::json_response;

/// Answers `POST /drain` (already authorized): starts draining and says so.
pub fn drain_endpoint(state: &AppState) -> Response<ProxyBody> {
    let already = state.draining.load(std::sync::atomic::Ordering::SeqCst);
    state.begin_drain();
    if !already {
        tracing::info!("drain requested through the admin API (preStop); /ready now fails, the proxy keeps serving");
    }
    json_response(StatusCode::OK, &json!({"status": "draining", "already_draining": already}))
}

/// Where to reach the admin API and with which token.
#[derive(Debug, Clone)]
pub struct Target {
    pub admin: SocketAddr,
    pub token_file: Option<PathBuf>,
}

impl Target {
    /// Reads the admin address and token file from `config`; `admin` and `token_file` override it.
    pub fn resolve(config: &Path, admin: Option<SocketAddr>, token_file: Option<PathBuf>) -> Result<Target, String> {
        let (mut addr, mut token) = (admin, token_file);
        if addr.is_none() || token.is_none() {
            let cfg = crate::config::Config::load(config).map_err(|e| e.to_string())?;
            addr = addr.or(Some(cfg.admin.listen));
            token = token.or(cfg.admin.token_file.clone());
        }
        let admin = addr.map(loopback_for).ok_or("no admin address")?;
        Ok(Target { admin, token_file: token })
    }
}

/// A wildcard listen address is reached through loopback from inside the pod.
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

async fn call(target: &Target, method: Method, path: &str, timeout: Duration) -> Result<(StatusCode, String), String> {
    let mut builder = Request::builder().method(method).uri(format!("http://{}{path}", target.admin));
    if let Some(file) = &target.token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the admin token file {}: {e}", file.display()))?;
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {}", token.trim()));
    }
    let req = builder.body(Full::new(bytes::Bytes::new())).map_err(|e| e.to_string())?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| format!("no answer from {} within {timeout:?}", target.admin))?
        .map_err(|e| format!("cannot reach the admin API at {}: {e}", target.admin))?;
    let status = resp.status();
    let body = tokio::time::timeout(timeout, resp.into_body().collect())
        .await
        .map_err(|_| "the admin API stopped answering mid-body".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `lifeline drain`: starts draining, then optionally holds for `wait` (legacy mode).
pub async fn drain(target: &Target, wait: Option<Duration>) -> Result<String, String> {
    if target.token_file.is_none() {
        return Err("admin.token_file is not set: POST /drain needs the admin token".into());
    }
    let (status, body) = call(target, Method::POST, "/drain", Duration::from_secs(5)).await?;
    if !status.is_success() {
        return Err(format!("POST /drain answered {status}: {body}"));
    }
    if let Some(wait) = wait {
        tokio::time::sleep(wait).await;
    }
    Ok(body)
}

/// `lifeline wait-ready`: polls `GET /ready` until it answers 200 or `timeout` passes.
pub async fn wait_ready(target: &Target, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match call(target, Method::GET, "/ready", Duration::from_secs(1)).await {
            Ok((StatusCode::OK, _)) => return Ok(()),
            Ok((status, body)) => format!("{status}: {body}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("not ready after {timeout:?} (last answer: {last})"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where the lifecycle hooks find the admin API: from the config file unless overridden.
#[derive(Debug, clap::Args)]
pub struct HookArgs {
    /// The config file Lifeline runs with (admin.listen and admin.token_file are read from it).
    #[arg(short, long, default_value = "/etc/lifeline/lifeline.yaml")]
    pub config: PathBuf,
    /// Admin API address, overriding admin.listen.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Admin token file, overriding admin.token_file.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// drain: keep the hook running this long after draining starts; wait-ready: give up after this long.
    #[arg(long, value_parser = parse_dur)]
    pub wait: Option<Duration>,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    crate::config::units::Dur::parse(s).map(|d| d.0)
}

/// Runs `lifeline drain` (`drain = true`) or `lifeline wait-ready`; exit 0 on success, 1 otherwise.
pub fn run_hook(args: HookArgs, drain: bool) -> ExitCode {
    let result = Target::resolve(&args.config, args.admin, args.token_file).and_then(|target| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            if drain {
                self::drain(&target, args.wait).await
            } else {
                wait_ready(&target, args.wait.unwrap_or(Duration::from_secs(120))).await.map(|()| "ready".to_string())
            }
        })
    });
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lifeline: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_admin_address_is_reached_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:15000".parse().unwrap();
        assert_eq!(loopback_for(v4).to_string(), "127.0.0.1:15000");
        let v6: SocketAddr = "[::]:15000".parse().unwrap();
        assert_eq!(loopback_for(v6).to_string(), "[::1]:15000");
        let pod: SocketAddr = "10.1.2.3:15000".parse().unwrap();
        assert_eq!(loopback_for(pod), pod);
    }
}
