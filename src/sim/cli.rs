//! `lifeline sim`: run any subset of the simulated services from the command line.
//!
//! Each service prints `sim <service> listening on <addr>` on stdout once bound (scripts and the
//! process-level tests read it to learn a port picked with `:0`). SIGINT/SIGTERM stop it; a
//! SIGKILL is survivable when `--ledger` is given, which is the point of that flag.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use super::{control, Latency, Mode, Service, SimOptions, SimSpec, Sims};
use crate::proxy::respond::json_response;
use crate::proxy::server::{self, ConnLimits};

/// The long help of `lifeline sim`: everything a drill author needs without reading the source.
pub const HELP: &str = "\
Services and endpoints:
  auth     POST /auth/v1/verify {\"card_no\",\"pin\"} -> 200 {token,expires_in} | 401 wrong PIN | 403 lost/frozen
           | 400 (PIN not exactly 6 digits, bad card number); GET /auth/v1/tokens/{token} -> 200 | 404
  payment  POST /payment/v1/settlements (header Idempotency-Key, 400 without)
           {\"card_no\",\"hospital_id\",\"visit_id\",\"amount_fen\":int,\"items\":[...]}
           -> 201 {settlement_id,status,fund_paid_fen,self_paid_fen,...}; same key+body -> the original 201
           (Idempotent-Replayed: true); same key, other body -> 422; decline -> 402 {reason}
           GET /payment/v1/settlements/{id} | ?idempotency_key=K -> 200 | 404
           GET /sim/ledger -> every settlement, one JSON line each (?from=N skips N)
  card     GET /card/v1/cards/{card_no} -> {status: active|lost|frozen, fund_balance_fen}
           POST /card/v1/cards/{card_no}/loss
  all      GET /healthz (follows the mode); GET /sim/mode; POST /sim/mode {\"mode\":M[,\"service\":S][,\"for\":\"10s\"]}

Modes (--mode SERVICE=MODE, POST /sim/mode):
  healthy | slow:200ms | slow:50ms..400ms | slow:p50=20ms,p99=800ms | errors:30%[:503] | reset-after:30%
  | hang | flap:2s | down
  errors fail before any effect; reset-after carries the request out, then closes the connection
  without an answer (the ambiguous case a forwarder must resolve with GET ?idempotency_key); hang never answers until the mode changes; down closes the listener
  (connection refused) and drops open connections, any other mode reopens it; flap alternates healthy/down.
  A down service is controlled through a sibling's /sim/mode with \"service\", or through --control.

Cards (fixed rules, independent of --seed):
  card_no is 18 characters: 17 digits then a digit or X (check character not verified).
  PIN is 123456 for every card. Sequence code (characters 15-17) 999 -> lost, 998 -> frozen,
  997 -> fund balance 100 yuan (10000 fen); others active with 1000000000 fen. The fund pays 70% of the
  amount rounded down to the fen, the holder the rest (fund_paid_fen + self_paid_fen == amount_fen);
  a settlement whose fund share exceeds the remaining balance is declined (402).
  Examples: active 110101199003071234, lost 11010119900307999X, frozen 110101199003079985.
  Reported losses and spent balances live in memory and are shared by the services of one process.

Ledger (--ledger FILE): one JSON line per settlement (card masked), fsync'd before the answer,
reloaded on start, so settlements and idempotency keys survive kill -9. A torn last line is dropped.

Examples:
  lifeline sim --auth 127.0.0.1:18081 --payment 127.0.0.1:18082 --card 127.0.0.1:18083
  lifeline sim --payment 127.0.0.1:18082 --ledger /tmp/ledger.jsonl --mode payment=slow:p50=20ms,p99=800ms
  curl -XPOST 127.0.0.1:18082/sim/mode -d '{\"mode\":\"down\",\"for\":\"10s\"}'";

/// Arguments of `lifeline sim`.
#[derive(Debug, clap::Args)]
#[command(after_help = HELP)]
pub struct SimArgs {
    /// Run the auth service on this address.
    #[arg(long, value_name = "ADDR")]
    pub auth: Option<SocketAddr>,
    /// Run the payment service on this address.
    #[arg(long, value_name = "ADDR")]
    pub payment: Option<SocketAddr>,
    /// Run the card service on this address.
    #[arg(long, value_name = "ADDR")]
    pub card: Option<SocketAddr>,
    /// Payment ledger file (created if missing, reloaded on start).
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
    /// Seed for latency, fault and token draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Initial fault mode of a service, e.g. `payment=errors:20%:503` (repeatable).
    #[arg(long = "mode", value_name = "SERVICE=MODE", value_parser = parse_service_mode)]
    pub modes: Vec<(Service, Mode)>,
    /// Base latency in healthy mode: `3ms`, `1ms..5ms`, `p50=3ms,p99=25ms` (the default), or `0ms`.
    #[arg(long, value_name = "LATENCY", value_parser = Latency::parse)]
    pub latency: Option<Latency>,
    /// A control port serving only /sim/* and /healthz, reachable while a service is down.
    #[arg(long, value_name = "ADDR")]
    pub control: Option<SocketAddr>,
}

fn parse_service_mode(s: &str) -> Result<(Service, Mode), String> {
    let (service, mode) = s.split_once('=').ok_or("expected SERVICE=MODE, e.g. payment=down")?;
    Ok((Service::parse(service)?, Mode::parse(mode)?))
}

/// Runs `lifeline sim` until SIGINT or SIGTERM.
pub fn run(args: SimArgs) -> ExitCode {
    let specs = match specs(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lifeline sim: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = SimOptions {
        seed: args.seed,
        ledger: args.ledger.clone(),
        latency: args.latency.unwrap_or(Latency::REALISTIC),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("lifeline-sim").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lifeline sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let sims = match Sims::start(&specs, opts).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("lifeline sim: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let mut out = std::io::stdout().lock();
        for service in Service::ALL {
            if let Some(h) = sims.get(service) {
                let _ = writeln!(out, "sim {service} listening on {}", h.addr);
            }
        }
        let _ = out.flush();
        drop(out);
        let control = match args.control {
            Some(addr) => match control(&sims, addr).await {
                Ok(task) => Some(task),
                Err(e) => {
                    eprintln!("lifeline sim: cannot listen on {addr} (--control): {e}");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        let code = match wait_for_stop().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lifeline sim: {e}");
                ExitCode::FAILURE
            }
        };
        if let Some(task) = control {
            task.abort();
        }
        sims.shutdown().await;
        code
    })
}

fn specs(args: &SimArgs) -> Result<Vec<SimSpec>, String> {
    let mut specs = Vec::new();
    for (service, addr) in [(Service::Auth, args.auth), (Service::Payment, args.payment), (Service::Card, args.card)] {
        if let Some(addr) = addr {
            let mode = args.modes.iter().rev().find(|(s, _)| *s == service).map(|(_, m)| m.clone());
            specs.push(SimSpec { service, addr, mode: mode.unwrap_or(Mode::Healthy) });
        }
    }
    if specs.is_empty() {
        return Err("nothing to run: give at least one of --auth, --payment, --card".into());
    }
    if let Some((s, _)) = args.modes.iter().find(|(s, _)| !specs.iter().any(|spec| spec.service == *s)) {
        return Err(format!("--mode {s}=...: {s} is not being started"));
    }
    if args.ledger.is_some() && args.payment.is_none() {
        return Err("--ledger needs --payment".into());
    }
    Ok(specs)
}

async fn control(sims: &Sims, addr: SocketAddr) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let Some(shared) = Service::ALL.iter().find_map(|&s| sims.get(s)).map(|h| h.shared.clone()) else {
        return Err(std::io::Error::other("no service runs"));
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // Never println!: it panics if whoever started us closed our stdout.
    let _ = writeln!(std::io::stdout(), "sim control listening on {}", listener.local_addr()?);
    let handler = move |req: http::Request<hyper::body::Incoming>, _peer| {
        let shared = shared.clone();
        async move {
            if req.uri().path() == "/healthz" {
                return Ok(json_response(StatusCode::OK, &json!({"status": "ok", "service": "control"})));
            }
            Ok(control::control(&shared, None, req).await)
        }
    };
    let stop = std::future::pending::<()>();
    Ok(tokio::spawn(server::serve(listener, handler, ConnLimits::default(), stop, Duration::ZERO, "sim-control")))
}

async fn wait_for_stop() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: SimArgs,
    }

    #[test]
    fn parses_flags_and_rejects_inconsistent_ones() {
        let t = T::try_parse_from(["x", "--payment", "127.0.0.1:0", "--mode", "payment=errors:20%:503", "--seed", "7"])
            .unwrap();
        let s = specs(&t.args).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].mode, Mode::parse("errors:20%:503").unwrap());
        let t = T::try_parse_from(["x", "--auth", "127.0.0.1:0", "--mode", "card=down"]).unwrap();
        assert!(specs(&t.args).unwrap_err().contains("not being started"));
        assert!(T::try_parse_from(["x", "--mode", "payment=sideways"]).is_err());
        let t = T::try_parse_from(["x"]).unwrap();
        assert!(specs(&t.args).unwrap_err().contains("nothing to run"));
    }
}
