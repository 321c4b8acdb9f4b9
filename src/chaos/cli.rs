//! The chaos subcommands of the `lifeline` CLI: `lifeline chaos proxy` (and `lifeline drill`,
//! see [`crate::chaos::drill`]). `main.rs` only delegates here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write;

use clap::{Args, Subcommand};

use super::proxy::{api, FaultProxy};

#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// A TCP fault proxy between the sidecar and a backend, controlled over HTTP.
    Proxy(ProxyArgs),
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Address to accept connections on (point the sidecar's endpoint here).
    #[arg(long)]
    pub listen: SocketAddr,
    /// The backend, host:port.
    #[arg(long)]
    pub upstream: String,
    /// Address of the control API.
    #[arg(long, default_value = "127.0.0.1:8474")]
    pub api: SocketAddr,
    /// Require `Authorization: Bearer <token>` with the token in this file for changes.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// Runs a chaos subcommand to completion.
pub fn run(cmd: ChaosCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cmd {
        ChaosCommand::Proxy(args) => rt.block_on(proxy(args)),
    }
}

async fn proxy(args: ProxyArgs) -> ExitCode {
    let proxy = match FaultProxy::start(args.listen, args.upstream.clone()).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lifeline chaos proxy: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.api).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lifeline chaos proxy: cannot listen on {} (--api): {e}", args.api);
            return ExitCode::FAILURE;
        }
    };
    let api_addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    // One line on stdout so a parent process (the drill runner) can learn the ports.
    println!("fault proxy listening on {} -> {}, api on {api_addr}", proxy.addr(), args.upstream);
    let api = api::Api { state: proxy.state.clone(), token_file: args.token_file };
    tokio::select! {
        () = api::serve(listener, api) => {}
        _ = tokio::signal::ctrl_c() => {}
        () = terminate() => {}
    }
    ExitCode::SUCCESS
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// Arguments of `lifeline drill`.
#[derive(Debug, Args)]
#[command(after_help = DRILL_HELP)]
pub struct DrillArgs {
    /// Scenario files (YAML, see chaos/README.md). Several run one after the other.
    #[arg(required_unless_present = "schema")]
    pub files: Vec<PathBuf>,
    /// Print the JSON Schema of scenario files and exit.
    #[arg(long)]
    pub schema: bool,
    /// Report directory. With one file: exactly this directory; with several: one subdirectory
    /// per scenario. Default `reports/<name>/<unix time>`.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Use the scenarios' short durations (CI).
    #[arg(long)]
    pub short: bool,
    /// Only validate the scenarios.
    #[arg(long)]
    pub check: bool,
    /// No live progress line (also when CI=true).
    #[arg(long)]
    pub quiet: bool,
    /// The lifeline binary local drills start (default: this one).
    #[arg(long, hide = true)]
    pub lifeline_bin: Option<PathBuf>,
}

const DRILL_HELP: &str = "\
Exit codes: 0 passed, 1 deviated (a hypothesis failed), 2 aborted (kill switch, Ctrl-C, a hypothesis
failing badly, max duration), 3 errored (runner or injector failure, or a hypothesis could not be
evaluated), 64 invalid scenario. With several files, the highest code wins.

Examples:
  lifeline drill chaos/payment-primary-killed.yaml
  lifeline drill --short --report target/drills chaos/*.yaml
  lifeline drill --check chaos/*.yaml";

/// Runs `lifeline drill`.
pub fn drill(args: DrillArgs) -> ExitCode {
    use super::drill::{runner, validate};
    if args.schema {
        let schema = schemars::schema_for!(super::drill::scenario::RawScenario);
        let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
        // `| head` closes the pipe early: that is not an error worth a panic.
        let _ = writeln!(std::io::stdout(), "{text}");
        return ExitCode::SUCCESS;
    }
    let mut drills = Vec::new();
    let mut invalid = false;
    for f in &args.files {
        match validate::load(f, args.short) {
            Ok(d) => drills.push(d),
            Err(e) => {
                eprintln!("{e}");
                invalid = true;
            }
        }
    }
    if invalid {
        return ExitCode::from(crate::app::EXIT_INVALID_CONFIG as u8);
    }
    if args.check {
        for d in &drills {
            println!(
                "{}: ok ({} phases, {} faults, {} hypotheses)",
                d.name,
                d.phases.len(),
                d.faults.len(),
                d.hypotheses.len()
            );
        }
        return ExitCode::SUCCESS;
    }
    let bin = match args.lifeline_bin.clone().map(Ok).unwrap_or_else(std::env::current_exe) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("lifeline drill: cannot find the lifeline binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let several = drills.len() > 1;
    let mut worst = 0u8;
    rt.block_on(async {
        let flag = interrupted.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = terminate() => {}
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        for d in &drills {
            if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let dir = match (&args.report, several) {
                (Some(r), false) => r.clone(),
                (Some(r), true) => r.join(&d.name),
                (None, _) => PathBuf::from("reports").join(&d.name).join(stamp.to_string()),
            };
            let opts = runner::Options {
                dir: dir.clone(),
                bin: bin.clone(),
                quiet: args.quiet,
                sample_every: std::time::Duration::from_millis(500),
            };
            let report = runner::run(d, &opts, interrupted.clone()).await;
            print!("{}", report.summary());
            println!("  report: {}", dir.join("report.html").display());
            worst = worst.max(report.exit_code);
        }
    });
    ExitCode::from(worst)
}
