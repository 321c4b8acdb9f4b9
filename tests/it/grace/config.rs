//! Config validation for grace: auth never fails open (invariant 1), policies are complete.

use lifeline::config::Config;

const POLICY: &str = "grace:\n  settlement:\n    store: { sqlite: /tmp/x.db }\n    card_no: /card_no\n    amount_fen: /amount_fen\n    hospital_id: /hospital_id\n    limits: { per_settlement: 100, per_card: { hard: { count: 2 } }, total: { count: 10, amount: 1000 } }\n";

fn config(clusters: &str, route_cluster: &str) -> String {
    format!("clusters:\n{clusters}routes:\n  - cluster: {route_cluster}\n    grace: settlement\n{POLICY}")
}

#[test]
fn grace_on_a_route_to_the_auth_cluster_is_rejected() {
    // By name: a cluster called auth (or anything containing "auth") is the auth service.
    for name in ["auth", "auth-dr", "sso_auth"] {
        let yaml = config(&format!("  {name}:\n    endpoints: [{{ address: 127.0.0.1:9 }}]\n"), name);
        let e = Config::from_yaml("t.yaml", &yaml).expect_err("grace on auth must be rejected").to_string();
        assert!(e.contains("routes[0].grace"), "{e}");
        assert!(e.contains("auth service") && e.contains("never fails open"), "{e}");
    }
    // By role: a cluster with another name declared as auth.
    let yaml = config("  login:\n    role: auth\n    endpoints: [{ address: 127.0.0.1:9 }]\n", "login");
    let e = Config::from_yaml("t.yaml", &yaml).expect_err("role auth").to_string();
    assert!(e.starts_with("t.yaml:7:5 routes[0].grace: offline grace is not allowed"), "{e}");
    // The same route to a payment cluster is fine.
    let yaml = config("  payment:\n    endpoints: [{ address: 127.0.0.1:9 }]\n", "payment");
    let c = Config::from_yaml("t.yaml", &yaml).unwrap();
    assert_eq!(c.routes[0].grace.as_deref(), Some("settlement"));
}

#[test]
fn unknown_policy_and_unbounded_limits_are_rejected() {
    let yaml = config("  payment:\n    endpoints: [{ address: 127.0.0.1:9 }]\n", "payment")
        .replace("grace: settlement\n", "grace: setlement\n");
    let e = Config::from_yaml("t.yaml", &yaml).expect_err("unknown policy").to_string();
    assert!(e.contains("no grace policy named \"setlement\" (known: settlement)"), "{e}");

    let yaml = config("  payment:\n    endpoints: [{ address: 127.0.0.1:9 }]\n", "payment")
        .replace("total: { count: 10, amount: 1000 }", "total: { count: 10 }");
    let e = Config::from_yaml("t.yaml", &yaml).expect_err("unbounded total").to_string();
    assert!(e.contains("grace.settlement.limits.total: set both count and amount"), "{e}");

    let yaml =
        config("  payment:\n    endpoints: [{ address: 127.0.0.1:9 }]\n", "payment").replace("/amount_fen", "amount");
    let e = Config::from_yaml("t.yaml", &yaml).expect_err("bad pointer").to_string();
    assert!(e.contains("grace.settlement.amount_fen"), "{e}");
}

#[test]
fn the_log_directory_defaults_beside_the_journal_and_must_be_its_own() {
    let base = config("  payment:\n    endpoints: [{ address: 127.0.0.1:9 }]\n", "payment");
    let c = Config::from_yaml("t.yaml", &base).unwrap();
    assert_eq!(c.grace["settlement"].log_dir, std::path::Path::new("/tmp/x.db-log"));
    let yaml = base.replace("{ sqlite: /tmp/x.db }", "{ sqlite: /tmp/x.db, log_dir: /wal/settlement }");
    let c = Config::from_yaml("t.yaml", &yaml).unwrap();
    assert_eq!(c.grace["settlement"].log_dir, std::path::Path::new("/wal/settlement"));

    let yaml = base.replace("{ sqlite: /tmp/x.db }", "{ sqlite: /tmp/x.db, log_dir: \" \" }");
    let e = Config::from_yaml("t.yaml", &yaml).expect_err("empty log_dir").to_string();
    assert!(e.contains("grace.settlement.store.log_dir: must not be empty"), "{e}");

    // A second policy whose log would land in the first one's directory.
    let second = POLICY.replace("grace:\n  settlement:", "  other:").replace("/tmp/x.db", "/tmp/y.db");
    let yaml =
        format!("{}{}", base, second.replace("{ sqlite: /tmp/y.db }", "{ sqlite: /tmp/y.db, log_dir: /tmp/x.db-log }"));
    let e = Config::from_yaml("t.yaml", &yaml).expect_err("shared log directory").to_string();
    assert!(e.contains("store.log_dir: policy") && e.contains("uses the same log directory"), "{e}");
}
