//! The drills in `chaos/`, run in short mode as CI runs them: each must pass with zero lost and
//! zero duplicated settlements; a deliberately broken config must make its drill fail with a
//! verdict naming the broken hypothesis. Drills start real processes (simulators, fault proxies,
//! the sidecar) from the `lifeline` binary, so they run one at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lifeline::chaos::drill::report::{Report, Verdict};
use lifeline::chaos::drill::{runner, validate};

/// Drills share two cores with everything else: never two at once.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("chaos").join(format!("{name}.yaml"))
}

async fn run_text(name: &str, text: &str) -> Report {
    let drill = validate::from_yaml(name, text, true).unwrap_or_else(|e| panic!("{name} invalid:\n{e}"));
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos-reports").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let opts = runner::Options {
        dir,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_lifeline")),
        quiet: true,
        sample_every: Duration::from_millis(500),
    };
    runner::run(&drill, &opts, Arc::default()).await
}

/// Runs a scenario of `chaos/` in short mode, or checks that it names the feature this build
/// lacks. Returns the report when it ran.
async fn drill(name: &str, required: &str) -> Option<Report> {
    let path = scenario(name);
    let text = std::fs::read_to_string(&path).unwrap();
    if !validate::feature_available(required) {
        let e = validate::from_yaml(&path.display().to_string(), &text, true).unwrap_err().to_string();
        assert!(e.contains("requires[0]") && e.contains(required), "{e}");
        eprintln!("{name}: not run, this build lacks {required}");
        return None;
    }
    Some(run_text(name, &text).await)
}

fn assert_passed(r: &Report) {
    assert_eq!(r.verdict, Verdict::Passed, "{}", r.summary());
    let rec = r.reconciliation.as_ref().expect("reconciled against the payment ledgers");
    assert_eq!((rec.lost, rec.duplicated), (0, 0), "{rec:?}");
    assert!(rec.acknowledged > 50, "{rec:?}");
}

#[test]
fn every_scenario_is_valid_or_names_the_feature_it_needs() {
    let mut n = 0;
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("chaos")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        n += 1;
        for short in [false, true] {
            if let Err(e) = validate::load(&path, short) {
                let text = e.to_string();
                assert!(
                    text.lines().all(|l| l.contains("requires[") && l.contains("does not have")),
                    "{}:\n{text}",
                    path.display()
                );
            }
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with('#'), "{} opens with a comment of what it proves", path.display());
    }
    assert!(n >= 6, "the six drills of the issue are in chaos/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_payment_primary_killed() {
    if let Some(r) = drill("payment-primary-killed", "failover").await {
        assert_passed(&r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_card_flapping() {
    if let Some(r) = drill("card-flapping", "failover").await {
        assert_passed(&r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_config_reload_during_drill() {
    if let Some(r) = drill("config-reload-during-drill", "failover").await {
        assert_passed(&r);
        assert!(r.events.iter().any(|e| e.kind == "fault" && e.detail.contains("config reload")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_payment_link_latency() {
    if let Some(r) = drill("payment-link-latency", "failover").await {
        assert_passed(&r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_auth_slow_and_erroring() {
    if let Some(r) = drill("auth-slow-and-erroring", "breaker").await {
        assert_passed(&r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_payment_down_sidecar_killed() {
    if let Some(r) = drill("payment-down-sidecar-killed", "grace").await {
        assert_passed(&r);
        assert!(r.events.iter().any(|e| e.detail.contains("SIGKILL sidecar")), "the sidecar was killed");
        assert!(r.reconciliation.as_ref().unwrap().accepted_offline > 0, "settlements were accepted offline");
    }
}

/// Replaces `from` (which must occur) in a scenario's text.
fn broken(name: &str, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(scenario(name)).unwrap();
    assert!(text.contains(from), "{name} no longer contains {from:?}");
    text.replace(from, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_without_hold_fails_the_flapping_drill() {
    let text = broken("card-flapping", "failback_hold: 20s, slow_start: 5s", "failback_hold: 0s, slow_start: 0s");
    let r = run_text("card-flapping-broken", &text).await;
    assert_eq!(r.verdict, Verdict::Deviated, "{}", r.summary());
    assert!(r.broken.contains(&"no-flapping-failover".to_string()), "{}", r.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_disabled_fails_the_outage_drill() {
    let name = "payment-down-sidecar-killed";
    let text = broken(name, ", grace: settlement }", " }");
    if !validate::feature_available("grace") {
        assert!(validate::from_yaml(name, &text, true).is_err(), "refused: this build lacks grace");
        return;
    }
    let r = run_text("payment-down-broken", &text).await;
    assert_ne!(r.verdict, Verdict::Passed, "{}", r.summary());
    assert!(r.broken.contains(&"settlements-accepted-in-outage".to_string()), "{}", r.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_that_never_trips_fails_the_auth_drill() {
    let name = "auth-slow-and-erroring";
    let text = broken(name, "min_calls: 10", "min_calls: 1000000");
    if !validate::feature_available("breaker") {
        assert!(validate::from_yaml(name, &text, true).is_err(), "refused: this build lacks breakers");
        return;
    }
    let r = run_text("auth-broken", &text).await;
    assert_eq!(r.verdict, Verdict::Deviated, "{}", r.summary());
    assert!(r.broken.contains(&"breaker-opens".to_string()), "{}", r.summary());
}

#[test]
fn the_published_scenario_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("chaos/scenario.schema.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lifeline")).args(["drill", "--schema"]).output().unwrap();
    assert!(out.status.success());
    let published = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        published.trim(),
        String::from_utf8_lossy(&out.stdout).trim(),
        "chaos/scenario.schema.json is stale: lifeline drill --schema > chaos/scenario.schema.json"
    );
}
