//! The `lifeline load` command: flags → [`Plan`] / [`KneeSearch`] → run → summary, JSON, HTML.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::knee::{find_knee, KneeSearch, Step};
use super::plan::{Phase, Plan};
use super::progress::{self, Progress};
use super::workload::{SettlementMix, Workload};
use super::{html, run, CardPool, Observer, Quiet, Report, Target};
use crate::config::{Dur, Percent};

pub const EXAMPLES: &str = "\
Examples:
  lifeline load http://127.0.0.1:8080/ --rate 5000 --duration 30s -c 64
  lifeline load http://127.0.0.1:15001 --mix settlement --rate 500 --duration 1m --json out.json --html out.html
  lifeline load http://127.0.0.1:15001 --mix settlement --ramp 100..3000 --duration 2m
  lifeline load http://127.0.0.1:15001 --mix settlement --steps 500,1000,2000 --step-duration 20s
  lifeline load http://127.0.0.1:15001 --mix settlement --find-knee --start 200 --step x1.25 --p99 50ms --max-errors 1%

Latency counts from each request's scheduled send time (coordinated omission corrected).
Exit codes: 0 done, 1 the run failed, 2 bad arguments.";

/// Flags of `lifeline load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Target URL. Plain workloads request exactly this URL; `--mix settlement` uses its host and
    /// port (Lifeline's listener, or a service) with the settlement paths.
    pub url: String,
    /// What to send: the same request every time, or the settlement-peak mix.
    #[arg(long, value_enum, default_value_t = Mix::Plain)]
    pub mix: Mix,
    /// Settlement mix proportions verify:settle:card-query.
    #[arg(long, default_value = "1:1:1")]
    pub weights: String,
    /// Cards in the pool of the settlement mix.
    #[arg(long, default_value_t = 10_000)]
    pub cards: usize,
    /// Zipf skew of card draws (0 = uniform; 1 = the k-th card drawn ∝ 1/k).
    #[arg(long, default_value_t = 1.0)]
    pub skew: f64,
    /// PIN sent with every verify.
    #[arg(long, default_value = "123456")]
    pub pin: String,
    /// Method of a plain request.
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// Header of a plain request, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Body of a plain request.
    #[arg(short = 'd', long)]
    pub body: Option<String>,
    /// Offered requests per second (fixed-rate profile).
    #[arg(short, long, default_value_t = 100.0)]
    pub rate: f64,
    /// Length of a fixed-rate or ramp run.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Ramp profile: the rate moves linearly from FROM to TO over --duration.
    #[arg(long, value_name = "FROM..TO")]
    pub ramp: Option<String>,
    /// Steps profile: these rates, each for --step-duration.
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<f64>,
    /// Length of each step (steps and --find-knee).
    #[arg(long, default_value = "10s")]
    pub step_duration: String,
    /// Raise the rate step by step until --p99 or --max-errors breaks; report the last rate that held.
    #[arg(long)]
    pub find_knee: bool,
    /// First rate of --find-knee.
    #[arg(long, default_value_t = 100.0)]
    pub start: f64,
    /// Growth between knee steps: +N (add) or xF (multiply).
    #[arg(long, default_value = "x1.25")]
    pub step: String,
    /// Highest rate --find-knee tries.
    #[arg(long, default_value_t = 200_000.0)]
    pub max_rate: f64,
    /// Knee objective: p99 latency at most this.
    #[arg(long, default_value = "100ms")]
    pub p99: String,
    /// Knee objective: error rate (5xx, 429, transport) at most this.
    #[arg(long, default_value = "1%")]
    pub max_errors: String,
    /// Connections in the pool (each carries an equal share of the rate).
    #[arg(short, long, default_value_t = 32)]
    pub connections: usize,
    /// Use HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    pub http2: bool,
    /// Concurrent streams per h2c connection.
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// Request timeout.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
    /// Seed for card draws and amounts (idempotency keys are always fresh).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker threads of the generator (keep it small next to what it measures).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Write the JSON report here (`-` for stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// No live progress (also automatic when stderr is not a terminal or CI=true).
    #[arg(short, long)]
    pub quiet: bool,
}

/// Which workload to send.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    Plain,
    Settlement,
}

enum Job {
    Plan(Plan),
    Knee(KneeSearch),
}

/// Runs the command.
pub fn main(args: LoadArgs) -> ExitCode {
    let (job, target) = match prepare(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lifeline load: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .thread_name("lifeline-load")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lifeline load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut observer: Box<dyn Observer> =
        if progress::wanted(args.quiet) { Box::new(Progress) } else { Box::new(Quiet) };
    let result = rt.block_on(async {
        match &job {
            Job::Plan(plan) => run(plan, &target, observer.as_mut()).await,
            Job::Knee(search) => find_knee(search, &target, observer.as_mut()).await,
        }
    });
    match result.and_then(|report| write_outputs(&args, &report)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lifeline load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_outputs(args: &LoadArgs, report: &Report) -> Result<(), String> {
    let json_to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if json_to_stdout {
        println!("{}", report.to_json());
        eprint!("{}", report.text());
    } else {
        print!("{}", report.text());
    }
    if let Some(path) = args.json.as_ref().filter(|_| !json_to_stdout) {
        std::fs::write(path, report.to_json()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::render(report)).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn dur(flag: &str, s: &str) -> Result<Duration, String> {
    Dur::parse(s).map(|d| d.0).map_err(|e| format!("--{flag}: {e}"))
}

fn prepare(a: &LoadArgs) -> Result<(Job, Target), String> {
    let mut target = Target::new(&a.url, a.http2, a.connections)?;
    target.timeout = dur("timeout", &a.timeout)?;
    target.max_streams = a.streams.max(1);
    target.seed = a.seed;
    let workload = workload(a)?;
    let profiles = [a.ramp.is_some(), !a.steps.is_empty(), a.find_knee].iter().filter(|&&b| b).count();
    if profiles > 1 {
        return Err("choose one profile: --rate (default), --ramp, --steps or --find-knee".into());
    }
    let job = if a.find_knee {
        Job::Knee(KneeSearch {
            start_rate: a.start,
            step: Step::parse(&a.step)?,
            max_rate: a.max_rate,
            step_duration: dur("step-duration", &a.step_duration)?,
            max_p99: dur("p99", &a.p99)?,
            max_error_rate: Percent::parse(&a.max_errors).map_err(|e| format!("--max-errors: {e}"))?.as_ratio(),
            workload,
        })
    } else if let Some(r) = &a.ramp {
        let (from, to) =
            r.split_once("..").ok_or_else(|| format!("--ramp {r:?}: expected FROM..TO, e.g. 100..5000"))?;
        let num = |s: &str| s.trim().parse::<f64>().map_err(|_| format!("--ramp {r:?}: {s:?} is not a rate"));
        Job::Plan(Plan { phases: vec![Phase::ramp(dur("duration", &a.duration)?, num(from)?, num(to)?, workload)] })
    } else if !a.steps.is_empty() {
        Job::Plan(Plan::steps(&a.steps, dur("step-duration", &a.step_duration)?, workload))
    } else {
        Job::Plan(Plan::fixed(a.rate, dur("duration", &a.duration)?, workload))
    };
    if let Job::Plan(p) = &job {
        p.validate()?;
    }
    Ok((job, target))
}

fn workload(a: &LoadArgs) -> Result<Workload, String> {
    match a.mix {
        Mix::Settlement => {
            let w: Vec<u32> = a
                .weights
                .split(':')
                .map(|s| s.trim().parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("--weights {:?}: expected verify:settle:query, e.g. 1:1:1", a.weights))?;
            let [v, s, q] = w[..] else {
                return Err(format!("--weights {:?}: expected three numbers verify:settle:query", a.weights));
            };
            if a.pin.len() != 6 || !a.pin.bytes().all(|b| b.is_ascii_digit()) {
                return Err("--pin must be exactly 6 digits".into());
            }
            let mut mix = SettlementMix::new([v, s, q], CardPool::new(a.cards, a.skew, a.seed)?)?;
            mix.pin = a.pin.clone();
            Ok(Workload::Settlement(std::sync::Arc::new(mix)))
        }
        Mix::Plain => {
            let method =
                Method::from_bytes(a.method.as_bytes()).map_err(|_| format!("-X {:?}: not a method", a.method))?;
            let mut headers = HeaderMap::new();
            for h in &a.headers {
                let (n, v) = h.split_once(':').ok_or_else(|| format!("-H {h:?}: expected 'Name: value'"))?;
                let name =
                    HeaderName::from_bytes(n.trim().as_bytes()).map_err(|_| format!("-H {h:?}: bad header name"))?;
                let value = HeaderValue::from_str(v.trim()).map_err(|_| format!("-H {h:?}: bad header value"))?;
                headers.append(name, value);
            }
            let body = a.body.clone().map(Bytes::from).unwrap_or_default();
            Workload::plain(method, &a.url, headers, body)
        }
    }
}
