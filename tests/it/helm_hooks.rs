//! The pod lifecycle hooks the chart renders, run for real against a sidecar: `lifeline drain`
//! (preStop) only starts draining — /ready fails, the proxy keeps serving — and needs the admin
//! token; `lifeline wait-ready` (legacy postStart) returns once /ready answers.

use std::process::Command;

use http::StatusCode;

use crate::support::{get, one_cluster_yaml, Sidecar, Upstream};

fn lifeline(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lifeline")).args(args).output().unwrap()
}

#[tokio::test]
async fn helm_prestop_drain_fails_ready_but_keeps_proxying() {
    let upstream = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let yaml = one_cluster_yaml(upstream.addr).replace(
        "admin: { listen: 127.0.0.1:0 }",
        &format!("admin: {{ listen: 127.0.0.1:0, token_file: {} }}", token.display()),
    );
    let sidecar = Sidecar::start(&yaml).await;
    let admin = sidecar.app.admin_addr.to_string();
    let config = sidecar.config_path.to_str().unwrap().to_string();

    // wait-ready (legacy postStart) returns at once on a ready sidecar.
    let out = tokio::task::spawn_blocking({
        let (config, admin) = (config.clone(), admin.clone());
        move || lifeline(&["wait-ready", "--config", &config, "--admin", &admin, "--wait", "10s"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A wrong token is refused and changes nothing.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "nope").unwrap();
    let out = tokio::task::spawn_blocking({
        let (config, admin, wrong) = (config.clone(), admin.clone(), wrong.clone());
        move || lifeline(&["drain", "--config", &config, "--admin", &admin, "--token-file", wrong.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get(&sidecar.admin_url("/ready")).await.status, StatusCode::OK);

    // The preStop hook: token from the config's admin.token_file.
    let out = tokio::task::spawn_blocking(move || lifeline(&["drain", "--config", &config, "--admin", &admin]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ready = get(&sidecar.admin_url("/ready")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["status"], "draining");
    let proxied = get(&sidecar.url("/still-served")).await;
    assert_eq!(proxied.status, StatusCode::OK, "draining must not stop proxying: {}", proxied.text());
    assert_eq!(upstream.hits(), 1);
}

#[test]
fn helm_prestop_drain_without_a_token_file_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lifeline.yaml");
    std::fs::write(&config, "admin: { listen: 127.0.0.1:9 }\nclusters:\n  b:\n    endpoints: [{ address: 127.0.0.1:9 }]\nroutes:\n  - cluster: b\n").unwrap();
    let out = lifeline(&["drain", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.token_file is not set"));
}
