//! Operator endpoints (token, reason, audit), expiry to needs-review, reconciliation, the CLI.

use std::time::Duration;

use super::backend::PayBackend;
use super::*;
use crate::support::{eventually, get, post_json, Sidecar};

async fn with_token(backend: &PayBackend, dir: &std::path::Path, forward: &str, limits: &str) -> Sidecar {
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let db = dir.join("g.db");
    let yaml = yaml(backend.addr, &db, limits, forward, "").replace(
        "admin: { listen: 127.0.0.1:0 }",
        &format!("admin: {{ listen: 127.0.0.1:0, token_file: {} }}", token.display()),
    );
    Sidecar::start(&yaml).await
}

const AUTH: (&str, &str) = ("authorization", "Bearer s3cret");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_grace_cancel_resolve_status_and_audit() {
    let backend = PayBackend::started().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = with_token(&backend, dir.path(), FAST, ROOMY).await;
    let db = dir.path().join("g.db");
    let base = sc.url("");

    // Without the token (or without a reason) nothing changes.
    let r = post_json(&sc.admin_url("/grace/force"), &serde_json::json!({"on": true, "reason": "x"}), &[]).await;
    assert_eq!(r.status, 401);
    let r = post_json(&sc.admin_url("/grace/force"), &serde_json::json!({"on": true}), &[AUTH]).await;
    assert_eq!(r.status, 400);
    let r = post_json(
        &sc.admin_url("/grace/force"),
        &serde_json::json!({"on": true, "reason": "planned maintenance 02:00-04:00", "actor": "ops-li"}),
        &[AUTH],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Forced: journaled although the backend is up, and not forwarded while forced.
    let r = settle(&base, "f-1", &settlement("110101199003071234", 300, "H7"), &[]).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("grace-reason"), Some("operator_forced"));
    let id1 = r.json()["receipt"]["receipt_id"].as_str().unwrap().to_string();
    let r = settle(&base, "f-2", &settlement("110101199003075678", 400, "H7"), &[]).await;
    let id2 = r.json()["receipt"]["receipt_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(backend.charges().is_empty());

    let status = get(&sc.admin_url("/grace/status")).await.json();
    let s = &status["policies"]["settlement"];
    assert_eq!(s["mode"], "forced");
    assert_eq!(s["reason"], "planned maintenance 02:00-04:00");
    assert_eq!(s["depth"], 2);
    assert_eq!(s["outstanding_by_institution"]["H7"]["amount_fen"], 700);

    let items = get(&sc.admin_url("/grace/items?state=journaled")).await.json();
    assert_eq!(items["count"], 2);
    assert!(!items.to_string().contains("110101199003071234"));
    assert_eq!(get(&sc.admin_url("/grace/items?state=bogus")).await.status, 400);

    let url = sc.admin_url(&format!("/grace/items/{id1}/cancel"));
    let r = post_json(&url, &serde_json::json!({"reason": "patient paid cash", "actor": "ops-li"}), &[AUTH]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_json(&url, &serde_json::json!({"reason": "again"}), &[AUTH]).await;
    assert_eq!(r.status, 409, "cancelled is terminal");

    let r =
        post_json(&sc.admin_url("/grace/force"), &serde_json::json!({"on": false, "reason": "done"}), &[AUTH]).await;
    assert_eq!(r.status, 200);
    assert!(eventually(Duration::from_secs(10), || async { backend.charges().len() == 1 }).await);
    assert!(!backend.charges().contains_key("f-1"), "a cancelled item is never forwarded");
    assert!(eventually(Duration::from_secs(10), || async { journal_states(&db).get("settled") == Some(&1) }).await);
    let r = get(&sc.url(&format!("/grace/receipts/{id2}"))).await.json();
    assert_eq!(r["state"], "settled");

    let date = lifeline::grace::clock::date_of(lifeline::grace::clock::now_ms());
    let rec = get(&sc.admin_url(&format!("/grace/reconciliation?date={date}"))).await.json();
    let inst = &rec["policies"]["settlement"]["institutions"][0];
    assert_eq!(inst["institution"], "H7");
    assert_eq!(inst["provisional"]["amount_fen"], 700);
    assert_eq!(inst["settled"]["amount_fen"], 400);
    assert_eq!(inst["cancelled"]["count"], 1);
    assert_eq!(get(&sc.admin_url("/grace/reconciliation?date=22-11-2026")).await.status, 400);

    let metrics = get(&sc.admin_url("/metrics")).await.text();
    for name in [
        "lifeline_grace_fsync_seconds_bucket",
        "lifeline_grace_commit_seconds_bucket",
        "lifeline_grace_accepted_total",
        "lifeline_grace_forwarded_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(!metrics.contains("110101199003071234"));

    let conn = rusqlite::Connection::open(&db).unwrap();
    let audit: Vec<(String, String, String)> = conn
        .prepare("SELECT actor, action, reason FROM audit ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(audit[0], ("ops-li".into(), "force_on".into(), "planned maintenance 02:00-04:00".into()));
    assert!(audit.iter().any(|a| a.1 == "item_cancel_cancelled" && a.2 == "patient paid cash"), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_items_go_to_needs_review_and_can_be_resubmitted() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let limits = format!("{ROOMY}, max_age: 300ms");
    let sc = with_token(&backend, dir.path(), FAST, &limits).await;
    let db = dir.path().join("g.db");
    let r = settle(&sc.url(""), "old-1", &settlement("110101199003071234", 300, "H1"), &[]).await;
    let id = r.json()["receipt"]["receipt_id"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(10), || async { journal_states(&db).get("needs_review") == Some(&1) }).await
    );
    let hist = get(&sc.url(&format!("/grace/receipts/{id}"))).await.json();
    let tos: Vec<&str> = hist["history"].as_array().unwrap().iter().map(|h| h["to"].as_str().unwrap()).collect();
    assert!(tos.ends_with(&["expired", "needs_review"]), "{tos:?}");
    let date = lifeline::grace::clock::date_of(lifeline::grace::clock::now_ms());
    let rec = get(&sc.admin_url(&format!("/grace/reconciliation?date={date}"))).await.json();
    assert_eq!(rec["policies"]["settlement"]["mismatch_count"], 1);

    // Resubmitted: queried first (never charged) then sent, exactly once.
    backend.up().await;
    let url = sc.admin_url(&format!("/grace/items/{id}/resolve"));
    let r = post_json(&url, &serde_json::json!({"outcome": "resubmit", "reason": "backend back"}), &[AUTH]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(eventually(Duration::from_secs(10), || async { journal_states(&db).get("settled") == Some(&1) }).await);
    assert_eq!(backend.charges()["old-1"], 1);
}

#[tokio::test]
async fn the_cli_reads_a_copied_journal_offline() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let sc = Sidecar::start(&yaml(backend.addr, &db, ROOMY, FAST, "")).await;
    let r = settle(&sc.url(""), "cli-1", &settlement("110101199003071234", 321, "H9"), &[]).await;
    assert_eq!(r.status, 202);
    let receipt_file = dir.path().join("receipt.json");
    std::fs::write(&receipt_file, &r.body).unwrap();
    sc.app.shutdown().await;
    let copy = dir.path().join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    // A clean stop checkpoints the WAL into the file; the copy of the .db alone must be complete.

    let bin = env!("CARGO_BIN_EXE_lifeline");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(!stderr.contains("did not stop cleanly"), "a copy after a clean stop is complete: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let copy_s = copy.to_str().unwrap();
    let status: serde_json::Value = serde_json::from_str(&run(&["grace", "status", "--db", copy_s])).unwrap();
    let pending =
        ["journaled", "retry_wait"].iter().filter_map(|s| status["by_state"][s]["amount_fen"].as_i64()).sum::<i64>();
    assert_eq!(pending, 321, "{status}");
    assert_eq!(status["outstanding_by_institution"]["H9"]["count"], 1);
    let items: serde_json::Value = serde_json::from_str(&run(&["grace", "items", "--db", copy_s])).unwrap();
    assert_eq!(items["items"][0]["idempotency_key"], "cli-1");
    let rec: serde_json::Value = serde_json::from_str(&run(&["grace", "reconcile", "--db", copy_s])).unwrap();
    assert_eq!(rec["institutions"][0]["pending"]["amount_fen"], 321);
    assert!(run(&["grace", "verify", receipt_file.to_str().unwrap()]).contains("signature valid"));
    let missing =
        std::process::Command::new(bin).args(["grace", "status", "--db", "/nonexistent.db"]).output().unwrap();
    assert!(!missing.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_pause_holds_the_backlog_and_resume_releases_it() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = with_token(&backend, dir.path(), FAST, ROOMY).await;
    let db = dir.path().join("g.db");
    let r =
        post_json(&sc.admin_url("/grace/drain"), &serde_json::json!({"action": "pause", "reason": "upgrade"}), &[AUTH])
            .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for i in 0..3 {
        assert_eq!(
            settle(&sc.url(""), &format!("p-{i}"), &settlement("110101199003071234", 100, "H1"), &[]).await.status,
            202
        );
    }
    backend.up().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(backend.charges().is_empty(), "paused drain must not forward");
    assert_eq!(get(&sc.admin_url("/grace/status")).await.json()["policies"]["settlement"]["paused"], true);
    let r = post_json(
        &sc.admin_url("/grace/drain"),
        &serde_json::json!({"action": "resume", "rate": "100/s", "reason": "done"}),
        &[AUTH],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(eventually(Duration::from_secs(10), || async { journal_states(&db).get("settled") == Some(&3) }).await);
}

#[tokio::test]
async fn reload_changes_limits_live_but_never_moves_the_journal() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let sc = Sidecar::start(&yaml(backend.addr, &db, ROOMY, FAST, "")).await;
    assert_eq!(settle(&sc.url(""), "r-1", &settlement("110101199003071234", 2000, "H1"), &[]).await.status, 202);
    sc.write_config(&yaml(
        backend.addr,
        &db,
        &ROOMY.replace("per_settlement: 50000", "per_settlement: 1000"),
        FAST,
        "",
    ));
    sc.app.reload("test").await.expect("limits reload");
    let r = settle(&sc.url(""), "r-2", &settlement("110101199003071234", 2000, "H1"), &[]).await;
    assert_eq!(r.json()["limit"], "per_settlement", "{}", r.text());
    sc.write_config(&yaml(backend.addr, &dir.path().join("other.db"), ROOMY, FAST, ""));
    let e = sc.app.reload("test").await.expect_err("moving the journal needs a restart");
    assert!(e.contains("needs a restart"), "{e}");
    let moved_log = yaml(backend.addr, &db, ROOMY, FAST, "").replace(
        &format!("sqlite: {} }}", db.display()),
        &format!("sqlite: {}, log_dir: {}/wal }}", db.display(), dir.path().display()),
    );
    assert!(moved_log.contains("log_dir:"), "{moved_log}");
    sc.write_config(&moved_log);
    let e = sc.app.reload("test").await.expect_err("moving the log needs a restart");
    assert!(e.contains("needs a restart"), "{e}");
    assert_eq!(settle(&sc.url(""), "r-3", &settlement("110101199003071234", 900, "H1"), &[]).await.status, 202);
}

/// `store.log_dir` through the whole sidecar: the log is written there (and nowhere beside
/// the journal), and the CLI reads a copy of the journal with `--log-dir` pointing at a copy of
/// that directory, refusing one that does not exist.
#[tokio::test]
async fn a_log_directory_of_its_own_is_used_end_to_end() {
    let backend = PayBackend::down_at_start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let wal = dir.path().join("wal-volume").join("settlement");
    let config = yaml(backend.addr, &db, ROOMY, FAST, "").replace(
        &format!("sqlite: {} }}", db.display()),
        &format!("sqlite: {}, log_dir: {} }}", db.display(), wal.display()),
    );
    let sc = Sidecar::start(&config).await;
    let r = settle(&sc.url(""), "wal-1", &settlement("110101199003071234", 450, "H3"), &[]).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let segments = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .map(|r| r.filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "seg")).count())
            .unwrap_or(0)
    };
    assert!(segments(&wal) >= 1, "the log is in {}", wal.display());
    assert!(!dir.path().join("g.db-log").exists(), "nothing is written beside the journal");
    sc.app.shutdown().await;

    let copy = dir.path().join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    let copied_wal = dir.path().join("copy-wal");
    std::fs::create_dir(&copied_wal).unwrap();
    let bin = env!("CARGO_BIN_EXE_lifeline");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let out = run(&["grace", "items", "--db", copy.to_str().unwrap(), "--log-dir", copied_wal.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let items: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(items["items"][0]["idempotency_key"], "wal-1");
    let out = run(&["grace", "status", "--db", copy.to_str().unwrap(), "--log-dir", "/nonexistent-wal"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("log directory /nonexistent-wal does not exist"));
}
