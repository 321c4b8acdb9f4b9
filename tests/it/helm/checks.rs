//! The checks CI runs on the chart: lint, Kubernetes schemas, rendered configs, the values schema.

use std::path::Path;
use std::process::Command;

use super::{docs, helm, kind, renders, root, run, text, tool};

#[test]
fn helm_lint_strict_passes_for_the_chart_and_every_example() {
    for r in &renders().all {
        let out = text(&r.lint);
        assert!(r.lint.status.success() && out.contains("0 chart(s) failed"), "helm lint --strict {}:\n{out}", r.name);
    }
}

#[test]
fn helm_templates_are_valid_kubernetes_1_29_and_1_33_and_legacy_1_28() {
    let renders = renders();
    let all: Vec<&Path> = renders.all.iter().map(|r| r.file.as_path()).collect();
    let old: Vec<&Path> = renders.all.iter().filter(|r| r.kube.is_some()).map(|r| r.file.as_path()).collect();
    assert!(!old.is_empty());
    for (version, files) in [("1.29.0", &all), ("1.33.0", &all), ("1.28.0", &old)] {
        let out = run(Command::new(tool(".tools/venv/bin/kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .args(files)
            .current_dir(renders.dir.path()));
        let report = text(&out);
        assert!(out.status.success(), "kubernetes-validate -k {version} failed:\n{report}");
        // Prometheus Operator kinds have no schema in kubernetes-validate; they are checked below.
        // Any other warning (an unknown kind, a typo'd apiVersion) fails here.
        for line in report.lines().filter(|l| !l.trim().is_empty()) {
            let crd = ["PodMonitor", "ServiceMonitor", "PrometheusRule"].iter().any(|k| {
                line.contains(&format!("Couldn't find schema for kind {k} with api version monitoring.coreos.com/v1"))
            });
            assert!(crd, "kubernetes-validate -k {version}: unexpected output: {line}");
        }
    }
}

#[test]
fn every_rendered_lifeline_config_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    for r in &renders().all {
        let docs = docs(&r.manifest);
        let cm = kind(&docs, "ConfigMap")
            .into_iter()
            .find(|d| d["data"]["lifeline.yaml"].is_string())
            .unwrap_or_else(|| panic!("{}: no ConfigMap with lifeline.yaml", r.name));
        let path = dir.path().join(format!("{}.lifeline.yaml", r.name));
        std::fs::write(&path, cm["data"]["lifeline.yaml"].as_str().unwrap()).unwrap();
        let out = run(Command::new(env!("CARGO_BIN_EXE_lifeline")).arg("check-config").arg(&path));
        assert!(out.status.success(), "{}: lifeline check-config rejects the rendered config:\n{}", r.name, text(&out));
    }
}

#[test]
fn embedded_config_schema_matches_lifeline_config_schema() {
    let out = run(Command::new(env!("CARGO_BIN_EXE_lifeline")).arg("config-schema"));
    assert!(out.status.success(), "{}", text(&out));
    let current: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let values_schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("helm/lifeline/values.schema.json")).unwrap())
            .unwrap();
    let mut expected = current["definitions"].as_object().cloned().unwrap_or_default();
    let mut config_root = current.as_object().cloned().unwrap();
    for k in ["$schema", "title", "definitions"] {
        config_root.remove(k);
    }
    expected.insert("LifelineConfig".into(), serde_json::Value::Object(config_root));
    assert!(
        values_schema["definitions"] == serde_json::Value::Object(expected),
        "helm/lifeline/values.schema.json embeds an outdated copy of `lifeline config-schema`: run scripts/gen-helm-schema"
    );
    assert_eq!(values_schema["properties"]["config"]["$ref"], "#/definitions/LifelineConfig");
}

#[test]
fn bad_values_fail_helm_lint_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "gateway:\n  replicas: three\n  replicaz: 2\nsidecar:\n  mode: sidecar\nconfig:\n  clusters:\n    payment:\n      timout: 2s\n",
    )
    .unwrap();
    let out = helm(&["lint", "--strict", "helm/lifeline", "-f", bad.to_str().unwrap()]);
    let report = text(&out);
    assert!(!out.status.success(), "helm lint accepted bad values:\n{report}");
    for expected in [
        "gateway: Additional property replicaz is not allowed",
        "gateway.replicas: Invalid type. Expected: integer, given: string",
        "sidecar.mode: sidecar.mode must be one of the following: \"native\", \"legacy\", \"auto\"",
        "config.clusters.payment: Additional property timout is not allowed",
    ] {
        assert!(report.contains(expected), "helm lint output lacks {expected:?}:\n{report}");
    }
}

#[test]
fn values_the_schema_cannot_judge_fail_rendering_with_a_reason() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--set", "terminationGracePeriodSeconds=20"],
            "terminationGracePeriodSeconds (20) must be above Lifeline's shutdown budget of 25 s",
        ),
        (&["--set", "config.listen=0.0.0.0:9"], "config.listen is set by the chart"),
        (&["--set", "securityContext.readOnlyRootFilesystem=false"], "securityContext.readOnlyRootFilesystem"),
        // Refused by the embedded config schema until the config has a chaos section, then by the
        // template ("fault injection is switched on with the top-level chaos.enabled").
        (&["--set", "config.chaos.enabled=true"], "chaos"),
        // The grace log volume (graceJournal.logVolume): as persistent as the journal, apart from
        // it, and every policy's log_dir on it.
        (
            &["--set", "graceJournal.logVolume.enabled=true", "--set", "graceJournal.storage.type=persistentVolumeClaim"],
            "graceJournal.logVolume.storage.type is emptyDir but graceJournal.storage.type is persistentVolumeClaim: set graceJournal.logVolume.storage.type to persistentVolumeClaim",
        ),
        (
            &["--set", "graceJournal.logVolume.enabled=true", "--set", "graceJournal.logVolume.storage.type=persistentVolumeClaim"],
            "graceJournal.logVolume.storage.type is persistentVolumeClaim but graceJournal.storage.type is emptyDir",
        ),
        (
            &["--set", "graceJournal.logVolume.enabled=true", "--set", "graceJournal.logVolume.mountPath=/var/lib/lifeline/"],
            "graceJournal.logVolume.mountPath (/var/lib/lifeline/) must be a directory apart from graceJournal.mountPath (/var/lib/lifeline)",
        ),
        (
            &["--set", "graceJournal.logVolume.enabled=true", "--set", "graceJournal.logVolume.mountPath=/var/lib/lifeline/log"],
            "graceJournal.logVolume.mountPath (/var/lib/lifeline/log) must be a directory apart from graceJournal.mountPath",
        ),
        (
            &["--set", "graceJournal.logVolume.enabled=true", "--set", "graceJournal.logVolume.mountPath=/var"],
            "graceJournal.logVolume.mountPath (/var) must be a directory apart from graceJournal.mountPath",
        ),
        (
            &[
                "-f",
                "helm/examples/gateway-separate-log.yaml",
                "--set",
                "config.grace.settlement.store.log_dir=/var/lib/lifeline/settlement-log",
            ],
            "config.grace.settlement.store.log_dir (/var/lib/lifeline/settlement-log) must be a directory under graceJournal.logVolume.mountPath (/var/lib/lifeline-log)",
        ),
        (
            &["-f", "helm/examples/gateway-separate-log.yaml", "--set", "config.grace.settlement.store.log_dir=/var/lib/lifeline-log"],
            "config.grace.settlement.store.log_dir (/var/lib/lifeline-log) must be a directory under graceJournal.logVolume.mountPath",
        ),
        (
            &["-f", "helm/examples/gateway-separate-log.yaml", "--set", "config.grace.settlement.store.sqlite=/var/lib/lifeline-log/g.db"],
            "config.grace.settlement.store.sqlite (/var/lib/lifeline-log/g.db) must be an absolute path under graceJournal.mountPath",
        ),
        (
            &[
                "-f",
                "helm/examples/gateway-separate-log.yaml",
                "--set",
                "graceJournal.logVolume.enabled=false",
                "--set",
                "config.grace.settlement.store.log_dir=/var/lib/lifeline-log/settlement",
            ],
            "config.grace.settlement.store.log_dir (/var/lib/lifeline-log/settlement) is on no volume of the pod",
        ),
    ];
    for (args, expected) in cases {
        let out = helm(&[&["template", "rel", "helm/lifeline"], *args].concat());
        let report = text(&out);
        assert!(!out.status.success() && report.contains(expected), "{args:?}: expected {expected:?} in:\n{report}");
    }
}

#[test]
fn grace_log_volume_mistakes_fail_application_charts_too_and_policies_never_share_a_log_dir() {
    let dir = tempfile::tempdir().unwrap();
    // A second policy whose log_dir is the one the chart gives the first.
    let shared = dir.path().join("shared.yaml");
    std::fs::write(
        &shared,
        "config:\n  grace:\n    refund:\n      store: { sqlite: /var/lib/lifeline/refund.db, log_dir: /var/lib/lifeline-log/settlement }\n      card_no: /card_no\n      amount_fen: /amount_fen\n      hospital_id: /hospital_id\n      limits:\n        per_settlement: 50000\n        per_card: { hard: { count: 4 } }\n        total: { count: 100, amount: 5000000 }\n",
    )
    .unwrap();
    let shared = shared.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["helm/lifeline", "-f", "helm/examples/gateway-separate-log.yaml", "-f", shared],
            "config.grace.settlement.store.log_dir (/var/lib/lifeline-log/settlement) is also policy refund's log directory",
        ),
        (
            &[
                "helm/examples/app",
                "-f",
                "helm/examples/app-separate-log.yaml",
                "--set",
                "lifeline.graceJournal.logVolume.storage.type=emptyDir",
            ],
            "set graceJournal.logVolume.storage.type to persistentVolumeClaim",
        ),
        (
            &[
                "helm/examples/app",
                "-f",
                "helm/examples/app-separate-log.yaml",
                "--set",
                "lifeline.config.grace.settlement.store.log_dir=/var/lib/lifeline/settlement-log",
            ],
            "config.grace.settlement.store.log_dir (/var/lib/lifeline/settlement-log) must be a directory under graceJournal.logVolume.mountPath (/var/lib/lifeline-wal)",
        ),
    ];
    for (args, expected) in cases {
        let out = helm(&[&["template", "rel"], *args].concat());
        let report = text(&out);
        assert!(!out.status.success() && report.contains(expected), "{args:?}: expected {expected:?} in:\n{report}");
    }
}

#[test]
fn chaos_enabled_reaches_the_rendered_config() {
    let out = helm(&["template", "rel", "helm/lifeline", "--set", "chaos.enabled=true"]);
    assert!(out.status.success(), "{}", text(&out));
    let docs = docs(&String::from_utf8(out.stdout).unwrap());
    let cm = kind(&docs, "ConfigMap").into_iter().find(|d| d["data"]["lifeline.yaml"].is_string()).unwrap();
    let yaml = cm["data"]["lifeline.yaml"].as_str().unwrap();
    let config: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(config["chaos"]["enabled"].as_bool(), Some(true));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lifeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_lifeline")).arg("check-config").arg(&path));
    assert!(out.status.success(), "lifeline check-config rejects chaos.enabled=true:\n{}", text(&out));
}
