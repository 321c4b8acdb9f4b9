//! `lifeline load` as a user runs it: a real process, JSON and HTML files.

use std::process::Command;
use std::time::Duration;

use crate::support::Upstream;

fn lifeline() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeline"));
    c.env("CI", "true");
    c
}

#[tokio::test]
async fn load_cli_writes_a_json_report_and_an_offline_html_page() {
    let up = Upstream::fixed(200, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let (json, html) = (dir.path().join("r.json"), dir.path().join("r.html"));
    let url = format!("http://{}/x", up.addr);
    let out = tokio::task::spawn_blocking(move || {
        lifeline()
            .args(["load", &url, "--steps", "50,100", "--step-duration", "1s", "-c", "4"])
            .arg("--json")
            .arg(&json)
            .arg("--html")
            .arg(&html)
            .output()
            .map(|o| (o, json, html))
    })
    .await
    .unwrap()
    .unwrap();
    let (out, json, html) = out;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("sent 150"), "{stdout}");
    assert!(out.stderr.is_empty(), "no progress without a terminal: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    assert_eq!(v["totals"]["sent"], 150);
    assert_eq!(v["phases"].as_array().unwrap().len(), 2);
    assert!(v["timeline"].as_array().unwrap().len() >= 2);
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<svg") && page.contains("<polyline"));
    assert!(!page.contains("<script") && !page.contains("<link") && !page.contains("src="), "self-contained");
}

#[test]
fn load_cli_rejects_bad_arguments_with_exit_2() {
    for args in [
        vec!["load", "ftp://127.0.0.1:1/"],
        vec!["load", "http://127.0.0.1:1/", "--duration", "10"],
        vec!["load", "http://127.0.0.1:1/", "--ramp", "5"],
        vec!["load", "http://127.0.0.1:1/", "--mix", "settlement", "--weights", "1:1"],
        vec!["load", "http://127.0.0.1:1/", "--steps", "1,2", "--find-knee"],
    ] {
        let out = lifeline().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("lifeline load: "), "{args:?}");
    }
}
