//! Config files: every shipped file parses; broken files name the line and the key.

use std::path::Path;

use lifeline::config::Config;

#[test]
fn every_file_in_config_dir_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{} is invalid:\n{e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "expected lifeline.yaml and minimal.yaml, found {n} files");
}

fn errors_of(yaml: &str) -> String {
    Config::from_yaml("test.yaml", yaml).expect_err("config must be rejected").to_string()
}

const BASE: &str =
    "clusters:\n  payment:\n    endpoints:\n      - { address: 127.0.0.1:9 }\nroutes:\n  - cluster: payment\n";

#[test]
fn unknown_key_names_line_and_path() {
    let yaml = "clusters:\n  payment:\n    endpoints:\n      - { address: 127.0.0.1:9 }\n    timout: 2s\nroutes:\n  - cluster: payment\n";
    let e = errors_of(yaml);
    assert!(e.starts_with("test.yaml:5:5 clusters.payment.timout: unknown field `timout`"), "{e}");
}

#[test]
fn bad_duration_names_line_and_path() {
    let yaml =
        BASE.replace("routes:\n  - cluster: payment\n", "routes:\n  - cluster: payment\n    timeout: 5 seconds\n");
    let e = errors_of(&yaml);
    assert!(e.starts_with("test.yaml:7:14 routes[0].timeout: invalid duration \"5 seconds\""), "{e}");
}

#[test]
fn duplicate_cluster_is_rejected() {
    let yaml = format!(
        "{}  payment:\n    endpoints:\n      - {{ address: 127.0.0.1:10 }}\n",
        BASE.replace("routes:\n  - cluster: payment\n", "")
    ) + "routes:\n  - cluster: payment\n";
    let e = errors_of(&yaml);
    assert!(e.contains("test.yaml:5:3 clusters.payment: duplicate key \"payment\""), "{e}");
}

#[test]
fn route_to_missing_cluster_is_rejected() {
    let e = errors_of(&BASE.replace("  - cluster: payment", "  - cluster: paymnt"));
    assert!(e.contains("test.yaml:6:5 routes[0].cluster: no cluster named \"paymnt\" (known: payment)"), "{e}");
}

#[test]
fn unparsable_yaml_names_the_position() {
    let e = errors_of("clusters:\n  payment: {\n    endpoints: [\n");
    assert!(e.starts_with("test.yaml:"), "{e}");
    let (pos, _) = e.split_once(' ').unwrap();
    assert!(pos.split(':').count() == 3, "line and column expected: {e}");
}

#[test]
fn bad_endpoint_address_points_at_the_item() {
    let yaml = BASE.replace(
        "      - { address: 127.0.0.1:9 }\n",
        "      - { address: 127.0.0.1:9 }\n      - { address: \"not an address\" }\n",
    );
    let e = errors_of(&yaml);
    assert!(e.contains("test.yaml:5:11 clusters.payment.endpoints[1].address:"), "{e}");
}

#[test]
fn several_errors_are_all_reported() {
    let yaml = BASE.replace("  - cluster: payment", "  - cluster: nope\n    timeout: 0s");
    let e = errors_of(&yaml);
    assert_eq!(e.lines().count(), 2, "{e}");
}

#[test]
fn check_config_cli_exits_64_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, BASE.replace("routes:", "extra: 1\nroutes:")).unwrap();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_lifeline")).arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.yaml:5:1 extra: unknown field `extra`"), "{stderr}");

    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .arg("check-config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lifeline.yaml"))
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
}

#[test]
fn config_schema_is_json_schema_rejecting_unknown_keys() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lifeline")).arg("config-schema").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["additionalProperties"], serde_json::Value::Bool(false));
    assert!(v["properties"]["clusters"].is_object());
}

#[test]
fn client_connection_timeouts_have_defaults_and_zero_is_rejected() {
    let c = Config::from_yaml("test.yaml", BASE).unwrap();
    let secs = std::time::Duration::from_secs;
    assert_eq!(
        (c.limits.client_head_timeout, c.limits.client_idle_timeout, c.limits.client_send_timeout),
        (secs(30), secs(3600), secs(60))
    );
    let c = Config::from_yaml("test.yaml", &format!("limits: {{ client_send_timeout: 5s }}\n{BASE}")).unwrap();
    assert_eq!(c.limits.client_send_timeout, secs(5));
    let e = errors_of(&format!("limits:\n  client_idle_timeout: 0s\n{BASE}"));
    assert!(e.contains("test.yaml:2:") && e.contains("limits.client_idle_timeout: must be greater than 0"), "{e}");
}
