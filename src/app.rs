//! The running sidecar: listeners, the runtime snapshot, reload, and shutdown.
//!
//! [`App::start`] binds both listeners before it reports ready, so `/ready` never lies.
//! [`App::reload`] validates a new config fully and swaps one whole [`Runtime`] with a single
//! `ArcSwap::store`; a bad file never replaces a good one. [`App::shutdown`] drains: `/ready`
//! fails at once, the proxy keeps accepting for `drain_delay`, then stops accepting and waits for
//! in-flight requests for at most `grace_period`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigErrors};
use crate::proxy::server::{self, ConnLimits};
use crate::proxy::workers::{self, Workers};
use crate::proxy::Proxy;
use crate::runtime::Runtime;
use crate::telemetry::{self, names};

/// How the last reload went, shown by `GET /config`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    pub result: &'static str,
    pub trigger: String,
    pub error: Option<String>,
    pub at_unix_ms: u64,
    pub generation: u64,
}

/// State shared by the proxy, the admin API and background tasks.
pub struct AppState {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub ready: AtomicBool,
    pub draining: Arc<AtomicBool>,
    pub config_path: Option<PathBuf>,
    pub last_reload: Mutex<Option<ReloadStatus>>,
    reload_lock: tokio::sync::Mutex<()>,
    access_log: Arc<AtomicBool>,
}

impl AppState {
    /// The config currently in force.
    pub fn config(&self) -> Arc<Config> {
        self.runtime.load().config.clone()
    }

    /// Marks the sidecar as draining: `/ready` answers 503 from now on; the proxy keeps serving.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
        metrics::gauge!(names::READY).set(0.0);
    }

    /// Re-reads the config file and swaps the runtime if it is valid.
    pub async fn reload(&self, trigger: &str) -> Result<u64, String> {
        let _guard = self.reload_lock.lock().await;
        let result = self.try_reload();
        let generation = self.runtime.load().generation;
        let status = ReloadStatus {
            result: if result.is_ok() { "ok" } else { "error" },
            trigger: trigger.to_string(),
            error: result.as_ref().err().cloned(),
            at_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            generation,
        };
        metrics::counter!(names::CONFIG_RELOADS_TOTAL, "result" => status.result).increment(1);
        metrics::gauge!(names::CONFIG_LAST_RELOAD_SUCCESS).set(if result.is_ok() { 1.0 } else { 0.0 });
        match &result {
            Ok(g) => tracing::info!(generation = g, trigger, "config reloaded"),
            Err(e) => tracing::error!(trigger, error = %e, "config reload rejected; still serving the previous config"),
        }
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some(status);
        }
        result
    }

    fn try_reload(&self) -> Result<u64, String> {
        let path =
            self.config_path.as_ref().ok_or("running on the embedded default config; there is no file to reload")?;
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let current = self.runtime.load_full();
        if config.listen != current.config.listen || config.admin.listen != current.config.admin.listen {
            return Err("listen and admin.listen cannot change on reload; restart Lifeline to move them".into());
        }
        if *current.config == config {
            return Ok(current.generation);
        }
        let runtime = Runtime::build(Arc::new(config), Some(&current)).map_err(|e| e.to_string())?;
        let generation = runtime.generation;
        crate::upstream::activate(&runtime.clusters, Some(&current.clusters));
        self.access_log.store(runtime.config.access_log, Ordering::Relaxed);
        self.runtime.store(Arc::new(runtime));
        Ok(generation)
    }
}

/// A started sidecar.
pub struct App {
    pub state: Arc<AppState>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    stop_proxy: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    proxy_task: Mutex<Option<JoinHandle<()>>>,
    admin_task: Mutex<Option<JoinHandle<()>>>,
    background: Vec<JoinHandle<()>>,
    /// The proxy's worker runtimes; dropped with the app.
    workers: Workers,
}

/// Accept queue of the proxy listener. tokio's `bind` uses 128; a burst of callers past the
/// queue has its SYNs dropped and retried a second later (the kernel counts ListenOverflows).
/// 1024 as HAProxy and nginx use for busy listeners (the kernel caps it at `somaxconn`).
const PROXY_BACKLOG: u32 = 1024;

fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

impl App {
    /// Binds the listeners and starts serving. `config_path` enables reload from that file.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<App> {
        App::start_with(config, config_path, workers::default_count()).await
    }

    /// [`App::start`] with `workers` proxy worker threads (see [`crate::proxy::workers`]).
    pub async fn start_with(config: Config, config_path: Option<PathBuf>, workers: usize) -> anyhow::Result<App> {
        let config = Arc::new(config);
        // The recorder must exist before the runtime caches its metric handles (per-route and
        // per-endpoint counters), or those handles record into nothing.
        telemetry::prometheus();
        // Before any cluster is built: connection pools size their per-worker lists from it.
        let workers = Workers::start(workers)?;
        let engines = crate::grace::Engines::open(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let runtime = Runtime::build_with(config.clone(), None, engines.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::upstream::activate(&runtime.clusters, None);
        let proxy_listener = listen(config.listen, PROXY_BACKLOG)
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (listen): {e}", config.listen))?;
        let admin_listener = TcpListener::bind(config.admin.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin.listen): {e}", config.admin.listen))?;
        let proxy_addr = proxy_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        telemetry::prometheus();

        let access_log = Arc::new(AtomicBool::new(config.access_log));
        let state = Arc::new(AppState {
            runtime: Arc::new(ArcSwap::from_pointee(runtime)),
            ready: AtomicBool::new(false),
            draining: Arc::new(AtomicBool::new(false)),
            config_path,
            last_reload: Mutex::new(None),
            reload_lock: tokio::sync::Mutex::new(()),
            access_log: access_log.clone(),
        });

        let (stop_proxy, proxy_rx) = watch::channel(false);
        let limits = ConnLimits {
            max_buf_size: (config.limits.max_header_bytes * 2).max(64 << 10),
            max_header_list_size: u32::try_from(config.limits.max_header_bytes * 2).unwrap_or(u32::MAX),
        };
        let grace = config.shutdown.grace_period;
        // Every worker serves a dup of the one listening socket on its own runtime, with a
        // `Proxy` of its own: each request clones the handler's `Arc<Proxy>`, and a count only
        // one core writes stays in that core's cache.
        let shared_listener = proxy_listener.into_std()?;
        let balance = workers::Balance::new(workers.count());
        let serving = workers.spawn_each(|i| {
            let listener = shared_listener.try_clone();
            let proxy = Arc::new(Proxy::new(state.runtime.clone(), state.draining.clone(), access_log.clone()));
            let (rx, seat) = (proxy_rx.clone(), balance.seat(i));
            async move {
                match listener.and_then(TcpListener::from_std) {
                    Ok(l) => server::serve_proxy(l, proxy, limits, stopped(rx), grace, Some(seat)).await,
                    Err(e) => tracing::error!(worker = i, error = %e, "worker cannot serve the proxy listener"),
                }
            }
        });
        drop(shared_listener);
        let proxy_task = tokio::spawn(async move {
            for worker in serving {
                let _ = worker.await;
            }
        });

        let (stop_admin, admin_rx) = watch::channel(false);
        let admin_state = state.clone();
        let admin_handler = move |req, _peer| crate::admin::handle(admin_state.clone(), req);
        let admin_task = tokio::spawn(server::serve(
            admin_listener,
            admin_handler,
            ConnLimits::default(),
            stopped(admin_rx),
            Duration::from_secs(1),
            "admin",
        ));

        let mut background =
            vec![tokio::spawn(telemetry::upkeep()), tokio::spawn(crate::proxy::release::after_bursts(balance.clone()))];
        engines.start();
        let faults = state.runtime.load().faults.clone();
        background.push(tokio::spawn(tracing::Instrument::instrument(
            faults.reap(),
            tracing::info_span!("chaos_fault_reaper"),
        )));
        if state.config_path.is_some() {
            background.push(tokio::spawn(watch_config_file(state.clone())));
        }
        state.ready.store(true, Ordering::SeqCst);
        metrics::gauge!(names::READY).set(1.0);
        tracing::info!(%proxy_addr, %admin_addr, workers = workers.count(), "lifeline ready");
        Ok(App {
            state,
            proxy_addr,
            admin_addr,
            stop_proxy,
            stop_admin,
            proxy_task: Mutex::new(Some(proxy_task)),
            admin_task: Mutex::new(Some(admin_task)),
            background,
            workers,
        })
    }

    /// How many proxy worker threads serve the listener.
    pub fn worker_count(&self) -> usize {
        self.workers.count()
    }

    /// Reloads the config file (as SIGHUP does).
    pub async fn reload(&self, trigger: &str) -> Result<u64, String> {
        self.state.reload(trigger).await
    }

    /// Marks the sidecar as draining: `/ready` answers 503 from now on.
    pub fn begin_drain(&self) {
        self.state.begin_drain();
    }

    /// Graceful shutdown: drain delay, stop accepting, wait for in-flight requests.
    pub async fn shutdown(&self) {
        self.begin_drain();
        let shutdown = self.state.config().shutdown.clone();
        tracing::info!(drain_delay = ?shutdown.drain_delay, grace_period = ?shutdown.grace_period, "draining");
        tokio::time::sleep(shutdown.drain_delay).await;
        let _ = self.stop_proxy.send(true);
        let task = self.proxy_task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        let _ = self.stop_admin.send(true);
        let task = self.admin_task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        for task in &self.background {
            task.abort();
        }
        // After the proxy stopped: no new journal entries; forwarders stop, journals close.
        self.state.runtime.load().grace.shutdown().await;
        crate::upstream::deactivate(&self.state.runtime.load().clusters);
        self.state.runtime.load().resilience.stop();
        tracing::info!("shutdown complete");
    }
}

/// Reloads when the config file's content changes. Polling (rather than inotify) follows the
/// symlink swap Kubernetes uses to update a mounted ConfigMap.
async fn watch_config_file(state: Arc<AppState>) {
    let Some(path) = state.config_path.clone() else { return };
    let mut last = tokio::fs::read(&path).await.ok();
    let mut tick = crate::beat::interval(crate::beat::SECOND);
    loop {
        tick.tick().await;
        let now = tokio::fs::read(&path).await.ok();
        if now.is_some() && now != last {
            last = now;
            let _ = state.reload("file_change").await;
        }
    }
}

/// Exit code for an invalid config (EX_DATAERR).
pub const EXIT_INVALID_CONFIG: i32 = 64;

/// Loads a config for `run`/`check-config`, printing every problem.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Config, ConfigErrors> {
    match path {
        Some(p) => Config::load(p),
        None => Config::from_yaml("<embedded lifeline.yaml>", Config::embedded_default()),
    }
}
