//! Drill scenarios: validation errors located in the file, and short drills run end to end
//! against a sidecar and stand-in backends (remote mode), with verdict, reports and ledger.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use lifeline::chaos::drill::{report::Verdict, runner, validate};
use serde_json::json;

use crate::support::{self, Sidecar, Upstream};

fn errors_of(yaml: &str) -> String {
    match validate::from_yaml("chaos/x.yaml", yaml, true) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

const BASE: &str = "name: t\ntitle: test\nremote: { proxy_url: http://127.0.0.1:1, admin_url: http://127.0.0.1:2 }\n\
phases:\n  - { name: warm, duration: 10s, rate: 10/s }\n  - { name: outage, duration: 10s, rate: 10/s }\n";

#[test]
fn scenario_errors_name_file_line_and_key() {
    let e = errors_of(&format!("{BASE}hypotheses: []\ntypo: 1\n"));
    assert!(e.contains("chaos/x.yaml:") && e.contains("typo"), "{e}");

    let e = errors_of(&format!(
        "{BASE}faults:\n  - {{ id: f, at: outgae, duration: 5s, sim: {{ target: pay, mode: down }} }}\n\
         \x20 - {{ id: g, at: outage, duration: 5s, sim: {{ target: pay, mode: down }} }}\n\
         hypotheses:\n  - {{ id: h, kind: availability, tolerance: \">= 99%\" }}\n"
    ));
    assert!(e.contains("chaos/x.yaml:8:14 faults[0].at") && e.contains("outgae"), "{e}");
    assert!(e.contains("faults[1].sim.target") && e.contains("pay"), "{e}");

    let e = errors_of(&format!(
        "{BASE}hypotheses:\n  - {{ id: a, kind: latency, tolerance: \">= 99%\" }}\n\
         \x20 - {{ id: b, kind: availabilty }}\n  - {{ id: c, kind: breaker, cluster: auth }}\n\
         \x20 - {{ id: d, kind: failover_time, fault: nope, tolerance: \"<= 2s\" }}\n\
         \x20 - {{ id: d, kind: lost, tolerance: \"== 0\", phases: [nowhere] }}\n"
    ));
    for needle in [
        "hypotheses[0].tolerance: latency needs a duration",
        "hypotheses[1].kind",
        "hypotheses[2].state",
        "hypotheses[3].fault: no fault with id \"nope\"",
        "hypotheses[4].phases: no phase named \"nowhere\"",
        "hypotheses[4].id: duplicate",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
    }

    let e = errors_of(&format!(
        "{BASE}faults:\n  - {{ id: k, at: outage, process: {{ target: sidecar, signal: SIGKILL }} }}\n\
         hypotheses:\n  - {{ id: h, kind: lost, tolerance: \"== 0\" }}\n"
    ));
    assert!(e.contains("process faults need local mode"), "{e}");

    let local = "name: t\ntitle: t\nlocal:\n  sims: { pay: { service: payment } }\n  sidecar:\n    config: |\n      \
                 listen: ${sidecar.listen}\n      clusters: { payment: { endpoints: [ { address: ${sim.nope} } ] } }\n      \
                 routes: [ { cluster: payment } ]\nphases: [ { name: p, duration: 4s, rate: 1/s } ]\n\
                 hypotheses: [ { id: h, kind: lost, tolerance: \"== 0\" } ]\n";
    let e = errors_of(local);
    assert!(e.contains("local.sidecar.config") && e.contains("sim.nope"), "{e}");
    let bad_cfg = local
        .replace("${sim.nope}", "${sim.pay}")
        .replace("routes: [ { cluster: payment } ]", "routes: [ { cluster: paymnt } ]");
    let e = errors_of(&bad_cfg);
    assert!(e.contains("local.sidecar.config") && e.contains("paymnt") && e.contains("scenario line 9"), "{e}");
}

#[test]
fn short_mode_shrinks_phases_and_fault_times_follow() {
    let yaml = format!(
        "{BASE}faults:\n  - {{ id: f, at: outage+50%, until: outage+90%, sidecar: {{ cluster: payment, fault: reset }} }}\n\
         hypotheses:\n  - {{ id: h, kind: availability, phases: [outage], skip: 20%, tolerance: \">= 50%\" }}\n"
    );
    let full = validate::from_yaml("x", &yaml, false).unwrap();
    let short = validate::from_yaml("x", &yaml, true).unwrap();
    assert_eq!(full.length(), Duration::from_secs(20));
    assert_eq!(short.length(), Duration::from_secs(4));
    assert_eq!(full.faults[0].start, Duration::from_secs(15));
    assert_eq!(short.faults[0].start, Duration::from_secs(3));
    assert_eq!(short.faults[0].end, Some(Duration::from_millis(3800)));
    assert_eq!(short.hypotheses[0].from, Duration::from_millis(2400));
}

/// A stand-in for the three services, with a payment ledger served like the simulator's.
struct Backends {
    up: Upstream,
    ledger: Arc<Mutex<Vec<String>>>,
}

async fn backends() -> Backends {
    let ledger: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<String, ()>>> = Arc::default();
    let l2 = ledger.clone();
    let up = Upstream::start(Arc::new(move |req: Request<Incoming>| {
        let (ledger, seen) = (l2.clone(), seen.clone());
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(String::from);
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            match path.as_str() {
                "/auth/v1/verify" => {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if v["pin"] == "123456" {
                        support::json(StatusCode::OK, &json!({"token": "t", "expires_in": 60}))
                    } else {
                        support::json(StatusCode::UNAUTHORIZED, &json!({"error": "wrong_pin"}))
                    }
                }
                "/payment/v1/settlements" => {
                    let key = key.unwrap_or_default();
                    if seen.lock().unwrap().insert(key.clone(), ()).is_none() {
                        ledger.lock().unwrap().push(json!({"idempotency_key": key}).to_string());
                    }
                    support::json(StatusCode::CREATED, &json!({"status": "settled"}))
                }
                "/sim/ledger" => {
                    let text = ledger.lock().unwrap().join("\n");
                    let mut r = http::Response::new(lifeline::proxy::body::full(text));
                    *r.status_mut() = StatusCode::OK;
                    r
                }
                _ => support::json(StatusCode::OK, &json!({"status": "active"})),
            }
        })
    }))
    .await;
    Backends { up, ledger }
}

async fn sidecar(b: &Backends, dir: &tempfile::TempDir) -> Sidecar {
    let token = dir.path().join("token");
    std::fs::write(&token, "tok").unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, token_file: {} }}\nshutdown: {{ drain_delay: 0s, grace_period: 2s }}\n\
         telemetry: {{ access_log: false }}\nchaos: {{ enabled: true }}\n\
         clusters:\n  auth: {{ endpoints: [ {{ address: {a} }} ] }}\n  payment: {{ endpoints: [ {{ address: {a} }} ], outlier: {{ enabled: false }} }}\n  card: {{ endpoints: [ {{ address: {a} }} ] }}\n\
         routes:\n  - {{ name: auth, match: {{ path_prefix: /auth/ }}, cluster: auth }}\n  - {{ name: settle, match: {{ path_prefix: /payment/ }}, cluster: payment }}\n  - {{ name: card, cluster: card }}\n",
        token.display(),
        a = b.up.addr
    );
    Sidecar::start(&yaml).await
}

fn remote_scenario(s: &Sidecar, b: &Backends, dir: &tempfile::TempDir, hypotheses: &str) -> String {
    format!(
        "name: remote-test\ntitle: Payment aborted for a while\nremote:\n  proxy_url: {}\n  admin_url: {}\n  token_file: {}\n  ledgers: [ http://{}/sim/ledger ]\n\
         load: {{ mix: {{ auth: 1, settle: 3, card: 1 }}, timeout: 2s }}\n\
         phases:\n  - {{ name: warm, duration: 2s, rate: 40/s }}\n  - {{ name: outage, duration: 2s, rate: 40/s }}\n  - {{ name: recovery, duration: 2s, rate: 40/s }}\n\
         faults:\n  - {{ id: payment-503, at: outage, until: recovery, sidecar: {{ cluster: payment, fault: {{ abort: {{ status: 503 }} }} }} }}\n\
         hypotheses:\n{hypotheses}",
        s.url(""),
        s.admin_url(""),
        dir.path().join("token").display(),
        b.up.addr
    )
}

/// Which answers counted as errors, by second (for failure messages).
fn errors_by_second(r: &lifeline::chaos::drill::report::Report) -> Vec<(u64, std::collections::BTreeMap<String, u64>)> {
    r.seconds.iter().filter(|s| s.errors > 0).map(|s| (s.t, s.by_result.clone())).collect()
}

fn options(dir: &tempfile::TempDir) -> runner::Options {
    runner::Options {
        dir: dir.path().join("report"),
        bin: std::path::PathBuf::from(env!("CARGO_BIN_EXE_lifeline")),
        quiet: true,
        sample_every: Duration::from_millis(250),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_that_holds_passes_and_reconciles_exactly() {
    let b = backends().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar(&b, &dir).await;
    let hyps = "  - { id: baseline, kind: availability, phases: [warm], tolerance: \">= 95%\" }\n\
                \x20 - { id: recovered, kind: availability, phases: [recovery], skip: 500ms, tolerance: \">= 99%\" }\n\
                \x20 - { id: auth-closed, kind: auth_never_fails_open }\n\
                \x20 - { id: no-lost, kind: lost, tolerance: \"== 0\" }\n\
                \x20 - { id: no-dup, kind: duplicated, tolerance: \"== 0\" }\n";
    let drill = validate::from_yaml("remote.yaml", &remote_scenario(&s, &b, &dir, hyps), false).unwrap();
    let report = runner::run(&drill, &options(&dir), Arc::default()).await;
    assert_eq!(report.verdict, Verdict::Passed, "{}{:?}", report.summary(), errors_by_second(&report));
    let rec = report.reconciliation.as_ref().unwrap();
    assert!(rec.acknowledged > 20, "{rec:?}");
    assert_eq!(rec.applied, b.ledger.lock().unwrap().len());
    assert_eq!((rec.lost, rec.duplicated), (0, 0));
    let f = &report.faults[0];
    assert!(f.started_s.is_some() && f.ended_s.is_some(), "{f:?}");
    let out = dir.path().join("report");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("payment-503") && !html.contains("<script"));
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase").count(), 5, "{junit}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["verdict"], "passed");
    assert!(support::get(&s.admin_url("/chaos/faults")).await.json()["faults"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_expectation_deviates_and_names_the_hypothesis() {
    let b = backends().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar(&b, &dir).await;
    // Without offline grace (not configured here) an aborted payment backend fails settlements.
    let hyps =
        "  - { id: settlements-continue, kind: availability, ops: settle, phases: [outage], tolerance: \">= 99%\" }\n\
                \x20 - { id: no-lost, kind: lost, tolerance: \"== 0\" }\n";
    let drill = validate::from_yaml("remote.yaml", &remote_scenario(&s, &b, &dir, hyps), false).unwrap();
    let report = runner::run(&drill, &options(&dir), Arc::default()).await;
    assert_eq!(report.verdict, Verdict::Deviated, "{}", report.summary());
    assert_eq!(report.exit_code, 1);
    assert_eq!(report.broken, vec!["settlements-continue".to_string()]);
    let junit = std::fs::read_to_string(dir.path().join("report/junit.xml")).unwrap();
    assert!(junit.contains("<failure") && junit.contains("settlements-continue"), "{junit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_aborts_and_reverts_every_fault() {
    let b = backends().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar(&b, &dir).await;
    let switch = dir.path().join("STOP");
    let hyps = "  - { id: no-lost, kind: lost, tolerance: \"== 0\" }\n";
    let yaml = remote_scenario(&s, &b, &dir, hyps).replace(
        "faults:\n",
        &format!("abort: {{ kill_switch: {} }}\nfaults:\n  - {{ id: long, at: warm, until: recovery+90%, sidecar: {{ cluster: card, fault: {{ delay: {{ fixed: 1ms }} }} }} }}\n", switch.display()),
    );
    let drill = validate::from_yaml("remote.yaml", &yaml, false).unwrap();
    let flip = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        std::fs::write(&switch, "stop").unwrap();
    });
    let report = runner::run(&drill, &options(&dir), Arc::default()).await;
    flip.await.unwrap();
    assert_eq!(report.verdict, Verdict::Aborted, "{}", report.summary());
    assert!(report.events.iter().any(|e| e.kind == "abort" && e.detail.contains("kill switch")));
    assert!(support::get(&s.admin_url("/chaos/faults")).await.json()["faults"].as_array().unwrap().is_empty());
    assert_eq!(report.reconciliation.as_ref().unwrap().lost, 0, "reconciled even after the abort");
}

/// The browser the report check uses (`scripts/install-deps` installs it).
fn chromium() -> std::path::PathBuf {
    let candidates = [
        std::env::var("CHROMIUM").unwrap_or_default(),
        "chromium".into(),
        "chromium-browser".into(),
        "google-chrome".into(),
    ];
    for c in candidates.iter().filter(|c| !c.is_empty()) {
        if std::process::Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return c.into();
        }
    }
    panic!("no Chromium found: run scripts/install-deps (apt-get install -y chromium) or set CHROMIUM");
}

/// Screenshots `url` in a fresh headless profile; returns the PNG size and the console lines.
fn screenshot(url: &str, png: &std::path::Path, profile: &std::path::Path) -> (u64, Vec<String>) {
    let out = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1000,2600",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .expect("chromium runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let console: Vec<String> = stderr.lines().filter(|l| l.contains(":CONSOLE")).map(String::from).collect();
    (std::fs::metadata(png).map(|m| m.len()).unwrap_or(0), console)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_opens_offline_in_headless_chromium() {
    let b = backends().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar(&b, &dir).await;
    let hyps = "  - { id: no-lost, kind: lost, tolerance: \"== 0\" }\n  - { id: ok, kind: availability, phases: [warm], tolerance: \">= 95%\" }\n";
    let drill = validate::from_yaml("remote.yaml", &remote_scenario(&s, &b, &dir, hyps), false).unwrap();
    let report = runner::run(&drill, &options(&dir), Arc::default()).await;
    assert_eq!(report.verdict, Verdict::Passed, "{}{:?}", report.summary(), errors_by_second(&report));
    let html_path = dir.path().join("report/report.html");
    let html = std::fs::read_to_string(&html_path).unwrap();
    for external in ["src=\"http", "href=\"http", "<script", "@import", "url("] {
        assert!(!html.contains(external), "the report must be self-contained, found {external}");
    }
    let blank = dir.path().join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let (blank_size, _) = tokio::task::spawn_blocking({
        let (b, p, u) = (blank.clone(), dir.path().join("blank.png"), dir.path().join("profile-blank"));
        move || screenshot(&format!("file://{}", b.display()), &p, &u)
    })
    .await
    .unwrap();
    let (size, console) = tokio::task::spawn_blocking({
        let (p, u) = (dir.path().join("report.png"), dir.path().join("profile"));
        move || screenshot(&format!("file://{}", html_path.display()), &p, &u)
    })
    .await
    .unwrap();
    if let Ok(keep) = std::env::var("LIFELINE_KEEP_REPORT") {
        let _ = std::fs::copy(dir.path().join("report.png"), format!("{keep}.png"));
        let _ = std::fs::copy(dir.path().join("report/report.html"), format!("{keep}.html"));
    }
    assert!(console.is_empty(), "console messages: {console:?}");
    assert!(blank_size > 0, "the blank page rendered");
    assert!(size > blank_size * 5, "the report renders content: {size} bytes vs {blank_size} for a blank page");
}
