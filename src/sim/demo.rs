//! `lifeline demo`: the three simulators plus the sidecar with the embedded default config, on
//! the fixed local ports that config names, so a newcomer sees Lifeline work with one command
//! (`cargo run --release -- demo`) and can then break a backend and watch what happens.

use std::net::SocketAddr;
use std::process::ExitCode;

use super::fixture::{EXAMPLE_ACTIVE, PIN};
use super::{Latency, Mode, Service, SimOptions, SimSpec, Sims};
use crate::app::{self, App};
use crate::config::Config;

/// Where the demo runs each simulator: the endpoints of `config/lifeline.yaml`.
pub const DEMO_PORTS: [(Service, u16); 3] = [(Service::Auth, 18081), (Service::Payment, 18082), (Service::Card, 18083)];

/// Arguments of `lifeline demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Seed for the simulators' latency, fault and token draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bind every listener on a free port instead of the fixed ones (when those are taken, and
    /// for tests); the printed lines name the ports actually used.
    #[arg(long)]
    pub any_port: bool,
}

/// Runs the demo until Ctrl-C.
pub fn run(args: DemoArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("lifeline").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lifeline demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let specs: Vec<SimSpec> = DEMO_PORTS
            .iter()
            .map(|&(service, port)| SimSpec {
                service,
                addr: SocketAddr::from(([127, 0, 0, 1], if args.any_port { 0 } else { port })),
                mode: Mode::Healthy,
            })
            .collect();
        let opts = SimOptions { seed: args.seed, ledger: None, latency: Latency::REALISTIC };
        let sims = match Sims::start(&specs, opts).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("lifeline demo: {e:#} (is another demo running? --any-port avoids the fixed ports)");
                return ExitCode::FAILURE;
            }
        };
        let config = if args.any_port {
            Config::from_yaml("<embedded lifeline.yaml>", &sidecar_yaml(&sims))
        } else {
            app::load_config(None)
        };
        let config = match config {
            Ok(c) => c,
            Err(e) => {
                eprintln!("lifeline demo: the embedded config is invalid:\n{e}");
                sims.shutdown().await;
                return ExitCode::FAILURE;
            }
        };
        let app = match App::start(config, None).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!(
                    "lifeline demo: {e:#} (is another demo or sidecar running? --any-port avoids the fixed ports)"
                );
                sims.shutdown().await;
                return ExitCode::FAILURE;
            }
        };
        println!("{}", instructions(app.proxy_addr, app.admin_addr, &sims));
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("lifeline demo: cannot wait for Ctrl-C: {e}");
        }
        println!("stopping...");
        app.shutdown().await;
        sims.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// The embedded `config/lifeline.yaml` pointed at `sims` instead of the demo ports, with the
/// sidecar's own listeners on `127.0.0.1:0` and no drain delay: what tests use to run the
/// shipped config against in-process simulators.
pub fn sidecar_yaml(sims: &Sims) -> String {
    let mut yaml = crate::config::Config::embedded_default()
        .replace("listen: 127.0.0.1:15001", "listen: 127.0.0.1:0")
        .replace("listen: 127.0.0.1:15000", "listen: 127.0.0.1:0")
        .replace("drain_delay: 2s", "drain_delay: 0s")
        // A grace journal of this process only, so runs never see each other's settlements.
        .replace(
            "/tmp/lifeline/grace-settlement.db",
            &std::env::temp_dir()
                .join(format!("lifeline-demo-{}", std::process::id()))
                .join("grace.db")
                .display()
                .to_string(),
        );
    for (service, port) in DEMO_PORTS {
        if let Some(h) = sims.get(service) {
            yaml = yaml.replace(&format!("127.0.0.1:{port}"), &h.addr.to_string());
        }
    }
    yaml
}

/// What the demo prints: one curl line per route, the admin URLs, and how to break things.
pub fn instructions(proxy: SocketAddr, admin: SocketAddr, sims: &Sims) -> String {
    let p = format!("http://{proxy}");
    let addr = |service| sims.get(service).map(|h| h.addr.to_string()).unwrap_or_else(|| "(not running)".into());
    let (a, pay, c) = (addr(Service::Auth), addr(Service::Payment), addr(Service::Card));
    format!(
        "\
Lifeline demo: sidecar on {p}, admin on http://{admin}
simulated services: auth {a}, payment {pay}, card {c} (see `lifeline sim --help`)

Try, through the sidecar:
  curl -s {p}/auth/v1/verify -H 'content-type: application/json' -d '{{\"card_no\":\"{card}\",\"pin\":\"{PIN}\"}}'
  curl -s {p}/payment/v1/settlements -H 'content-type: application/json' -H 'Idempotency-Key: demo-1' \\
       -d '{{\"card_no\":\"{card}\",\"hospital_id\":\"H001\",\"visit_id\":\"V001\",\"amount_fen\":12345,\"items\":[]}}'
  curl -s '{p}/payment/v1/settlements?idempotency_key=demo-1'
  curl -s {p}/card/v1/cards/{card}
  curl -s -XPOST {p}/card/v1/cards/{lost}/loss

Admin:
  curl -s http://{admin}/ready
  curl -s http://{admin}/clusters
  curl -s http://{admin}/metrics

Break the payment backend and try again (modes: healthy, slow:200ms, errors:30%:503, hang, flap:2s, down):
  curl -s -XPOST {pay}/sim/mode -d '{{\"mode\":\"errors:50%:503\"}}'
  curl -s -XPOST {a}/sim/mode -d '{{\"service\":\"payment\",\"mode\":\"down\",\"for\":\"15s\"}}'
  curl -s {pay}/sim/ledger

Ctrl-C stops everything.",
        card = EXAMPLE_ACTIVE,
        lost = "110101198507150011",
    )
}
