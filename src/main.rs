//! The `lifeline` command line. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lifeline::app::{self, App, EXIT_INVALID_CONFIG};
use lifeline::telemetry::{self, LogFormat};

const EXAMPLES: &str = "\
Examples:
  lifeline run                              run with the embedded default config
  lifeline run -c config/lifeline.yaml      run with a config file (reloads on change and SIGHUP)
  lifeline check-config config/lifeline.yaml
  lifeline config-schema > lifeline.schema.json
  lifeline demo                             simulators + sidecar on local ports, with curl lines to try
  lifeline sim --payment 127.0.0.1:18082    a simulated backend (see lifeline sim --help)
  lifeline drain                            start draining a running Lifeline (Kubernetes preStop hook)

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 64 invalid config.";

#[derive(Parser)]
#[command(name = "lifeline", version, about = "Resilience and failover sidecar for the social-security card services", after_help = EXAMPLES)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run {
        /// Config file. Without it, the embedded default (config/lifeline.yaml) is used.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Proxy worker threads, each with its own event loop and upstream connection pools.
        /// Default: one per CPU the process may use (its cgroup CPU limit included).
        #[arg(long, env = "LIFELINE_WORKERS", value_parser = clap::value_parser!(u16).range(1..=256))]
        workers: Option<u16>,
    },
    /// Validate a config file and exit (0 valid, 64 invalid).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the JSON Schema of the config file.
    ConfigSchema,
    /// Offline grace journal tools: status, items, reconcile (work on a copied file), verify, keygen.
    #[command(subcommand)]
    Grace(lifeline::grace::cli::GraceCmd),
    /// Run simulated auth, payment and card services (test doubles, with faults on command).
    Sim(lifeline::sim::cli::SimArgs),
    /// Run the three simulators and the sidecar on local ports, and print what to try.
    Demo(lifeline::sim::demo::DemoArgs),
    /// Ask a running Lifeline to start draining (the Kubernetes preStop hook; needs the admin token).
    Drain(lifeline::admin::client::HookArgs),
    /// Wait until a running Lifeline answers /ready (the legacy-mode postStart hook).
    WaitReady(lifeline::admin::client::HookArgs),
    /// Open-model load generator (fixed rate, ramp, steps, --find-knee; plain or settlement mix).
    #[command(after_help = lifeline::load::cli::EXAMPLES)]
    Load(Box<lifeline::load::cli::LoadArgs>),
    /// Chaos tools: the TCP fault proxy.
    #[command(subcommand)]
    Chaos(lifeline::chaos::cli::ChaosCommand),
    /// Run chaos drills (scenarios in chaos/) and report whether continuity held.
    Drill(lifeline::chaos::cli::DrillArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::ConfigSchema => {
            let schema = lifeline::config::json_schema();
            println!("{}", serde_json::to_string_pretty(&schema).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Run { config, workers } => run(config, workers.map(usize::from)),
        Command::Grace(cmd) => lifeline::grace::cli::run(cmd),
        Command::Sim(args) => lifeline::sim::cli::run(args),
        Command::Demo(args) => lifeline::sim::demo::run(args),
        Command::Drain(args) => lifeline::admin::client::run_hook(args, true),
        Command::WaitReady(args) => lifeline::admin::client::run_hook(args, false),
        Command::Load(args) => lifeline::load::cli::main(*args),
        Command::Chaos(cmd) => lifeline::chaos::cli::run(cmd),
        Command::Drill(args) => lifeline::chaos::cli::drill(args),
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match app::load_config(Some(file)) {
        Ok(config) => {
            println!("{}: ok ({} clusters, {} routes)", file.display(), config.clusters.len(), config.routes.len());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_INVALID_CONFIG as u8)
        }
    }
}

fn run(config_path: Option<PathBuf>, workers: Option<usize>) -> ExitCode {
    let config = match app::load_config(config_path.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_INVALID_CONFIG as u8);
        }
    };
    // Requests run on the proxy workers; this runtime has the control plane (admin API, health
    // checks, breaker and outlier decisions, the grace forwarder), which one thread carries.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("lifeline")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let workers = workers.unwrap_or_else(lifeline::proxy::workers::default_count);
    rt.block_on(async move {
        // Install the handlers before anything can report ready: an early SIGHUP must reload,
        // not kill the process with the default action.
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("lifeline: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let app = match App::start_with(config, config_path, workers).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("lifeline: {e}");
                return ExitCode::FAILURE;
            }
        };
        match signals.run(&app).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lifeline: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// SIGHUP reloads; the first SIGTERM/SIGINT drains; a second one exits at once.
    async fn run(mut self, app: &App) -> std::io::Result<()> {
        loop {
            tokio::select! {
                _ = self.hup.recv() => { let _ = app.reload("sighup").await; }
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
            }
        }
        tracing::info!("shutdown signal received; draining (send it again to exit at once)");
        tokio::select! {
            () = app.shutdown() => Ok(()),
            _ = self.term.recv() => {
                tracing::warn!("second signal: exiting without draining");
                std::process::exit(1);
            }
            _ = self.int.recv() => {
                tracing::warn!("second signal: exiting without draining");
                std::process::exit(1);
            }
        }
    }
}
