//! Config of health checks, outlier detection, failover and load balancing: located errors.

use lifeline::config::Config;

fn errors(policy: &str) -> String {
    let yaml = format!(
        "clusters:\n  pay:\n    endpoints:\n      - {{ address: 127.0.0.1:1 }}\n{policy}routes:\n  - {{ cluster: pay }}\n"
    );
    match Config::from_yaml("l.yaml", &yaml) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_policy_values_are_located_errors() {
    let e = errors("    load_balancer: random\n");
    assert!(e.contains("l.yaml:5:5 clusters.pay.load_balancer: \"random\" is not a load balancer"), "{e}");
    let e = errors("    health_check: { protocol: tcp, path: /healthz }\n");
    assert!(e.contains("clusters.pay.health_check.path: only applies to protocol: http"), "{e}");
    let e = errors("    health_check: { expected_statuses: [200, \"300-200\", 700] }\n");
    assert!(e.contains("clusters.pay.health_check.expected_statuses"), "{e}");
    assert_eq!(e.lines().count(), 2, "both bad entries reported: {e}");
    let e = errors("    outlier: { base_ejection: 30s, max_ejection: 10s }\n");
    assert!(e.contains("clusters.pay.outlier.max_ejection: must be at least base_ejection"), "{e}");
    let e = errors("    failover: { overprovisioning: 0.5 }\n");
    assert!(e.contains("clusters.pay.failover.overprovisioning: 0.5 must be between 1.0 and 10.0"), "{e}");
    let e = errors("    failover: { failback: 10s }\n");
    assert!(e.contains("unknown field `failback`"), "{e}");
    let e = errors("    health_check: { healthy: 0, startup: maybe }\n");
    assert!(
        e.contains("health_check.healthy: must be at least 1") && e.contains("\"maybe\" is not a startup state"),
        "{e}"
    );
    assert_eq!(errors("    health_check: {}\n    outlier: {}\n    failover: {}\n"), "", "all defaults are valid");
}
