//! The Helm chart (helm/lifeline) and its examples (helm/examples), checked the way CI does:
//! `helm lint --strict`, `helm template` validated against the Kubernetes 1.29 and 1.33 schemas
//! (kubernetes-validate, offline), every rendered Lifeline config accepted by `lifeline
//! check-config`, the embedded config schema equal to `lifeline config-schema`, and bad values
//! refused by `helm lint` with messages that name the key. The legacy-sidecar example is also
//! rendered for, and validated against, Kubernetes 1.28 (no native sidecars there).
//!
//! helm and kubernetes-validate come from `scripts/install-deps` (into .tools/). A missing tool is
//! a failure that says so, never a skipped test. Each chart variant is linted and rendered once
//! per test binary run (a shared `OnceLock`); the tests of bad values render on their own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_yaml::Value;

mod checks;
mod rendered;

pub(super) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub(super) fn tool(rel: &str) -> PathBuf {
    let path = root().join(rel);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-deps (it installs helm and kubernetes-validate)",
        path.display()
    );
    path
}

pub(super) fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub(super) fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

pub(super) fn helm(args: &[&str]) -> Output {
    run(Command::new(tool(".tools/bin/helm")).args(args).current_dir(root()))
}

/// One way of installing the chart: a chart directory, an optional values file, and the
/// Kubernetes version to render for (helm's default when None).
struct Variant {
    name: &'static str,
    chart: &'static str,
    values: Option<&'static str>,
    kube: Option<&'static str>,
}

const VARIANTS: &[Variant] = &[
    Variant { name: "gateway-defaults", chart: "helm/lifeline", values: None, kube: None },
    Variant { name: "gateway-example", chart: "helm/lifeline", values: Some("helm/examples/gateway.yaml"), kube: None },
    Variant {
        name: "gateway-persistent",
        chart: "helm/lifeline",
        values: Some("helm/examples/gateway-persistent-grace.yaml"),
        kube: None,
    },
    Variant { name: "app-native", chart: "helm/examples/app", values: None, kube: None },
    Variant {
        name: "app-legacy",
        chart: "helm/examples/app",
        values: Some("helm/examples/app-legacy-sidecar.yaml"),
        kube: Some("1.28.0"),
    },
    Variant {
        name: "app-persistent",
        chart: "helm/examples/app",
        values: Some("helm/examples/app-persistent-grace.yaml"),
        kube: None,
    },
    Variant {
        name: "gateway-separate-log",
        chart: "helm/lifeline",
        values: Some("helm/examples/gateway-separate-log.yaml"),
        kube: None,
    },
    Variant {
        name: "app-separate-log",
        chart: "helm/examples/app",
        values: Some("helm/examples/app-separate-log.yaml"),
        kube: None,
    },
];

pub(super) struct Rendered {
    pub name: &'static str,
    pub kube: Option<&'static str>,
    pub lint: Output,
    pub manifest: String,
    pub file: PathBuf,
}

pub(super) struct Renders {
    pub dir: tempfile::TempDir,
    pub all: Vec<Rendered>,
}

/// Lints and renders every variant once.
pub(super) fn renders() -> &'static Renders {
    static RENDERS: OnceLock<Renders> = OnceLock::new();
    RENDERS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let all = VARIANTS
            .iter()
            .map(|v| {
                let mut args = vec![v.chart];
                if let Some(values) = v.values {
                    args.extend(["-f", values]);
                }
                if let Some(kube) = v.kube {
                    args.extend(["--kube-version", kube]);
                }
                let lint = helm(&[&["lint", "--strict"], args.as_slice()].concat());
                let out = helm(&[&["template", "rel", "--namespace", "sscard"], args.as_slice()].concat());
                assert!(out.status.success(), "helm template {}:\n{}", v.name, text(&out));
                let manifest = String::from_utf8(out.stdout).unwrap();
                let file = dir.path().join(format!("{}.yaml", v.name));
                std::fs::write(&file, &manifest).unwrap();
                Rendered { name: v.name, kube: v.kube, lint, manifest, file }
            })
            .collect();
        Renders { dir, all }
    })
}

pub(super) fn docs(manifest: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(manifest)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

pub(super) fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect()
}

pub(super) fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found = kind(docs, k);
    assert_eq!(found.len(), 1, "expected one {k}, found {}", found.len());
    found[0]
}

pub(super) fn rendered(name: &str) -> Vec<Value> {
    let r = renders().all.iter().find(|r| r.name == name).unwrap();
    docs(&r.manifest)
}
