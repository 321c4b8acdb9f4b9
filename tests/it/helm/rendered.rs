//! What the rendered manifests contain: the sidecar shapes, storage, shutdown budget, security,
//! alerts and the README's values table.

use serde_yaml::Value;

use super::{docs, helm, kind, one, rendered, renders, root, text};

#[test]
fn gateway_defaults_hide_admin_port_and_budget_the_shutdown() {
    let docs = rendered("gateway-defaults");
    let deploy = one(&docs, "Deployment");
    assert!(kind(&docs, "StatefulSet").is_empty());
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["name"], "lifeline");
    // drain_delay 5s + grace_period 20s in values.yaml, plus a margin.
    assert_eq!(pod["terminationGracePeriodSeconds"].as_u64(), Some(35));
    let pre_stop: Vec<&str> =
        c["lifecycle"]["preStop"]["exec"]["command"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(pre_stop, ["/usr/local/bin/lifeline", "drain", "--config", "/etc/lifeline/lifeline.yaml"]);
    let sc = &c["securityContext"];
    assert_eq!((sc["runAsNonRoot"].as_bool(), sc["readOnlyRootFilesystem"].as_bool()), (Some(true), Some(true)));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/ready");
    assert!(deploy["spec"]["template"]["metadata"]["annotations"]["checksum/lifeline-config"].is_string());
    for svc in kind(&docs, "Service").into_iter().filter(|s| s["spec"]["clusterIP"] != "None") {
        let ports: Vec<&Value> = svc["spec"]["ports"].as_sequence().unwrap().iter().collect();
        assert!(ports.iter().all(|p| p["targetPort"] != "lifeline-admin" && p["port"] != 15000), "{svc:?}");
    }
    assert_eq!(one(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"].as_u64(), Some(1));
    let config = one_config(&docs);
    assert!(config.get("chaos").is_none(), "chaos must stay off unless chaos.enabled is set");
    assert_eq!(config["admin"]["token_file"], "/var/run/lifeline/secrets/admin-token");
}

fn one_config(docs: &[Value]) -> Value {
    let cm = kind(docs, "ConfigMap").into_iter().find(|d| d["data"]["lifeline.yaml"].is_string()).unwrap();
    serde_yaml::from_str(cm["data"]["lifeline.yaml"].as_str().unwrap()).unwrap()
}

#[test]
fn persistent_grace_makes_a_statefulset_with_a_claim_per_pod() {
    let docs = rendered("gateway-persistent");
    assert!(kind(&docs, "Deployment").is_empty());
    let sts = one(&docs, "StatefulSet");
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "lifeline-grace");
    assert_eq!(sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"], "Retain");
    assert!(kind(&docs, "Secret").is_empty(), "secrets.create=false must not render a Secret");

    let app = rendered("app-persistent");
    let sts = one(&app, "StatefulSet");
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "lifeline-grace");
    let volumes = sts["spec"]["template"]["spec"]["volumes"].as_sequence().unwrap();
    assert!(volumes.iter().all(|v| v["name"] != "lifeline-grace"), "the claim replaces the emptyDir");
}

/// The names and mount paths of a container's volume mounts.
fn mounts(container: &Value) -> Vec<(&str, &str)> {
    container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap()))
        .collect()
}

fn names<'a>(list: &'a Value, what: &str) -> Vec<&'a str> {
    list.as_sequence().unwrap_or_else(|| panic!("no {what}")).iter().map(|v| v["name"].as_str().unwrap()).collect()
}

fn claim_names(sts: &Value) -> Vec<&str> {
    sts["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect()
}

/// Each grace policy's `store.log_dir` in the rendered config.
fn log_dirs(config: &Value) -> Vec<(String, String)> {
    config["grace"]
        .as_mapping()
        .expect("the rendered config has grace policies")
        .iter()
        .map(|(k, p)| (k.as_str().unwrap().to_string(), p["store"]["log_dir"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[test]
fn separate_grace_log_gets_a_second_claim_a_mount_and_every_log_dir() {
    let docs = rendered("gateway-separate-log");
    assert!(kind(&docs, "Deployment").is_empty());
    let sts = one(&docs, "StatefulSet");
    assert_eq!(claim_names(sts), ["lifeline-grace", "lifeline-grace-log"]);
    let log_claim = &sts["spec"]["volumeClaimTemplates"][1]["spec"];
    assert_eq!(log_claim["storageClassName"], "local-nvme");
    assert_eq!(log_claim["resources"]["requests"]["storage"], "2Gi");
    assert_eq!(log_claim["accessModes"][0], "ReadWriteOncePod");
    assert_eq!(sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"], "Retain");
    let pod = &sts["spec"]["template"]["spec"];
    let m = mounts(&pod["containers"][0]);
    assert!(m.contains(&("lifeline-grace", "/var/lib/lifeline")), "{m:?}");
    assert!(m.contains(&("lifeline-grace-log", "/var/lib/lifeline-log")), "{m:?}");
    let volumes = names(&pod["volumes"], "volumes");
    assert!(!volumes.iter().any(|v| v.starts_with("lifeline-grace")), "the claims replace the emptyDirs: {volumes:?}");
    // The example leaves log_dir out: the chart puts it under the log mount, one per policy.
    assert_eq!(
        log_dirs(&one_config(&docs)),
        [("settlement".to_string(), "/var/lib/lifeline-log/settlement".to_string())]
    );

    let app = rendered("app-separate-log");
    let sts = one(&app, "StatefulSet");
    assert_eq!(claim_names(sts), ["lifeline-grace", "lifeline-grace-log"]);
    assert_eq!(sts["spec"]["volumeClaimTemplates"][1]["spec"]["storageClassName"], "local-nvme");
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "lifeline");
    let m = mounts(&pod["initContainers"][0]);
    assert!(m.contains(&("lifeline-grace", "/var/lib/lifeline")), "{m:?}");
    assert!(m.contains(&("lifeline-grace-log", "/var/lib/lifeline-wal")), "{m:?}");
    assert!(pod["containers"][0]["volumeMounts"].is_null(), "the app itself mounts no grace volume");
    // Written out in the example, and kept.
    assert_eq!(
        log_dirs(&one_config(&app)),
        [("settlement".to_string(), "/var/lib/lifeline-wal/settlement".to_string())]
    );
}

#[test]
fn grace_log_volume_off_renders_nothing_and_on_emptydir_renders_a_second_emptydir() {
    for r in &renders().all {
        let on = r.name.ends_with("separate-log");
        assert_eq!(r.manifest.contains("lifeline-grace-log"), on, "{}: lifeline-grace-log only with logVolume", r.name);
        if !on {
            assert!(!r.manifest.contains("log_dir"), "{}: no log_dir unless logVolume sets it", r.name);
        }
    }

    let grace = "config:\n  grace:\n    settlement:\n      store: { sqlite: /var/lib/lifeline/settlement.db }\n      card_no: /card_no\n      amount_fen: /amount_fen\n      hospital_id: /hospital_id\n      limits:\n        per_settlement: 50000\n        per_card: { hard: { count: 4 } }\n        total: { count: 100, amount: 5000000 }\n    refund:\n      store: { sqlite: /var/lib/lifeline/refund.db }\n      card_no: /card_no\n      amount_fen: /amount_fen\n      hospital_id: /hospital_id\n      limits:\n        per_settlement: 50000\n        per_card: { hard: { count: 4 } }\n        total: { count: 100, amount: 5000000 }\n";
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("grace.yaml");
    std::fs::write(&values, grace).unwrap();
    let values = values.to_str().unwrap();
    let args = ["--set", "graceJournal.logVolume.enabled=true", "--set", "graceJournal.logVolume.mountPath=/wal/"];
    let docs = render(&[&["helm/lifeline", "-f", values], args.as_slice()].concat());
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert!(mounts(&pod["containers"][0]).contains(&("lifeline-grace-log", "/wal/")));
    let log = pod["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == "lifeline-grace-log").unwrap();
    assert_eq!(log["emptyDir"]["sizeLimit"], "1Gi");
    assert_eq!(
        log_dirs(&one_config(&docs)),
        [("refund".to_string(), "/wal/refund".to_string()), ("settlement".to_string(), "/wal/settlement".to_string())]
    );

    // A legacy sidecar (an ordinary container) mounts it too.
    let legacy = render(&[
        "helm/examples/app",
        "-f",
        "helm/examples/app-legacy-sidecar.yaml",
        "--kube-version",
        "1.28.0",
        "--set",
        "lifeline.graceJournal.logVolume.enabled=true",
    ]);
    let pod = &one(&legacy, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["name"], "lifeline");
    assert!(mounts(&pod["containers"][0]).contains(&("lifeline-grace-log", "/var/lib/lifeline-log")));
    assert!(names(&pod["volumes"], "volumes").contains(&"lifeline-grace-log"));
}

fn render(args: &[&str]) -> Vec<Value> {
    let out = helm(&[&["template", "rel", "--namespace", "sscard"], args].concat());
    assert!(out.status.success(), "helm template {args:?}:\n{}", text(&out));
    docs(&String::from_utf8(out.stdout).unwrap())
}

#[test]
fn app_gets_a_native_sidecar_or_a_legacy_container() {
    let native = rendered("app-native");
    let pod = &one(&native, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "lifeline");
    assert_eq!(pod["initContainers"][0]["restartPolicy"], "Always");
    let names: Vec<&str> = pod["containers"].as_sequence().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["app"]);
    assert_eq!(one_config(&native)["listen"], "127.0.0.1:15001", "a sidecar listens on loopback only");

    let legacy = rendered("app-legacy");
    let pod = &one(&legacy, "Deployment")["spec"]["template"]["spec"];
    assert!(pod["initContainers"].is_null());
    let names: Vec<&str> = pod["containers"].as_sequence().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["lifeline", "app"], "legacy: Lifeline first, held ready by postStart");
    assert!(pod["containers"][0]["restartPolicy"].is_null());
    assert_eq!(pod["containers"][0]["lifecycle"]["postStart"]["exec"]["command"][1], "wait-ready");
    // 5s + 20s of Lifeline's shutdown, the 20 s legacy preStop wait, and the margin.
    assert_eq!(pod["terminationGracePeriodSeconds"].as_u64(), Some(55));
}

/// Metrics the alerts and the dashboard use that parallel work adds to src/telemetry/names.rs
/// (breakers: issue 4, failover: issue 5, grace: issue 6). Everything else must already be there.
const ASSUMED_METRICS: &[&str] = &[];

fn metric_names(s: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("lifeline_") {
        let tail = &rest[i..];
        let end =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())).unwrap_or(tail.len());
        let name = tail[..end].trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum");
        names.push(name.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn alerts_and_dashboard_use_known_metric_names() {
    let names_rs = std::fs::read_to_string(root().join("src/telemetry/names.rs")).unwrap();
    let docs = rendered("gateway-example");
    let rule = one(&docs, "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let rules = rule["spec"]["groups"][0]["rules"].as_sequence().unwrap();
    let alerts: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for a in [
        "LifelineBreakerOpen",
        "LifelineClusterFailedOver",
        "LifelineClusterUnavailable",
        "LifelineGraceQueueDeep",
        "LifelineGraceOldestItemAged",
        "LifelineGraceNeedsReview",
        "LifelineGraceCommitSlow",
        "LifelineConfigReloadFailed",
    ] {
        assert!(alerts.contains(&a), "alert {a} missing from {alerts:?}");
    }
    assert!(rules.iter().all(|r| r["expr"].is_string() && r["labels"]["severity"].is_string()));
    let monitor = one(&docs, "PodMonitor");
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "lifeline-admin");

    let mut used: Vec<String> = rules.iter().flat_map(|r| metric_names(r["expr"].as_str().unwrap())).collect();
    let dashboard = std::fs::read_to_string(root().join("helm/lifeline/dashboards/lifeline.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is valid JSON");
    used.extend(metric_names(&dashboard));
    used.sort();
    used.dedup();
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        let known = names_rs.contains(&format!("\"{name}\""));
        assert!(
            known || ASSUMED_METRICS.contains(&name.as_str()),
            "{name} is neither in src/telemetry/names.rs nor assumed"
        );
    }
}

fn leaf_paths(v: &Value, path: String, out: &mut Vec<String>) {
    match v.as_mapping() {
        Some(map) if !map.is_empty() && path != "config" => {
            for (k, child) in map {
                let k = k.as_str().unwrap();
                leaf_paths(child, if path.is_empty() { k.to_string() } else { format!("{path}.{k}") }, out);
            }
        }
        _ => out.push(path),
    }
}

#[test]
fn readme_values_table_lists_every_value() {
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("helm/lifeline/values.yaml")).unwrap()).unwrap();
    let readme = std::fs::read_to_string(root().join("helm/README.md")).unwrap();
    let mut paths = Vec::new();
    leaf_paths(&values, String::new(), &mut paths);
    let missing: Vec<&String> = paths.iter().filter(|p| !readme.contains(&format!("| `{p}` |"))).collect();
    assert!(missing.is_empty(), "helm/README.md lacks {missing:?}: run python3 helm/scripts/gen-values-table.py");
}

#[test]
fn image_tag_follows_the_chart_app_version() {
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("helm/lifeline/Chart.yaml")).unwrap()).unwrap();
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("helm/lifeline/values.yaml")).unwrap()).unwrap();
    // Application charts render the sidecar with their own .Chart, so the tag is spelled out.
    assert_eq!(values["image"]["tag"], chart["appVersion"], "set image.tag in values.yaml to the appVersion");
}
