//! Operator overrides of breakers: token, reason, audit trail, effect on traffic.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use super::*;

async fn set_mode(sc: &Sidecar, name: &str, token: Option<&str>, body: &str) -> Got {
    let mut b =
        Request::post(sc.admin_url(&format!("/breakers/{name}/mode"))).header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send(&http1(), b.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

#[tokio::test]
async fn overrides_need_the_token_and_a_reason_and_are_logged() {
    let up = Switchable::start(HEALTHY).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let base = yaml(&[up.up.addr], "breaker:\n  consecutive_failures: 5\n", "");
    let with_token = base.replace(
        "admin: { listen: 127.0.0.1:0 }",
        &format!("admin: {{ listen: 127.0.0.1:0, token_file: {} }}", token_file.display()),
    );
    let sc = Sidecar::start(&with_token).await;
    let forced = r#"{"mode": "forced_open", "reason": "drill 7: payment DR switch"}"#;

    assert_eq!(set_mode(&sc, "payment", None, forced).await.status, 401);
    assert_eq!(set_mode(&sc, "payment", Some("wrong"), forced).await.status, 401);
    let got = set_mode(&sc, "payment", Some("s3cret"), r#"{"mode": "forced_open", "reason": " "}"#).await;
    assert_eq!((got.status, got.json()["error"].clone()), (StatusCode::BAD_REQUEST, "reason_required".into()));
    let got = set_mode(&sc, "payment", Some("s3cret"), r#"{"mode": "sideways", "reason": "x"}"#).await;
    assert_eq!(got.status, 400);
    assert_eq!(set_mode(&sc, "nope", Some("s3cret"), forced).await.status, 404);

    let got = set_mode(&sc, "payment", Some("s3cret"), forced).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["mode"], "forced_open");
    let got = get(&sc.url("/x")).await;
    assert_eq!((got.status, got.header("x-lifeline-error")), (StatusCode::SERVICE_UNAVAILABLE, Some("circuit_open")));
    assert!(got.json()["message"].as_str().unwrap().contains("forced open"));
    assert_eq!(up.hits(), 0);

    // A reload that changes the breaker's config rebuilds it, keeping the override and the log.
    sc.write_config(&with_token.replace("consecutive_failures: 5", "consecutive_failures: 6"));
    sc.app.reload("test").await.unwrap();
    let b = breaker_state(&sc, "payment").await;
    assert_eq!((b["mode"].as_str(), b["config"]["consecutive_failures"].as_u64()), (Some("forced_open"), Some(6)));
    assert_eq!(get(&sc.url("/x")).await.header("x-lifeline-error"), Some("circuit_open"));

    let got = set_mode(&sc, "payment", Some("s3cret"), r#"{"mode": "normal", "reason": "drill over"}"#).await;
    assert_eq!(got.status, 200);
    assert_eq!(get(&sc.url("/x")).await.status, 200);

    let events = get(&sc.admin_url("/breakers/events")).await.json();
    let notes: Vec<&str> = events["events"].as_array().unwrap().iter().filter_map(|e| e["note"].as_str()).collect();
    assert_eq!(
        notes,
        vec!["mode normal -> forced_open: drill 7: payment DR switch", "mode forced_open -> normal: drill over"]
    );
}

#[tokio::test]
async fn without_a_token_file_overrides_are_refused_and_state_survives_reload() {
    let up = Switchable::start(ERRORS).await;
    let cfg = "breaker:\n  consecutive_failures: 2\n  open_for: 30s\n";
    let sc = Sidecar::start(&yaml(&[up.up.addr], cfg, "")).await;
    let got = set_mode(&sc, "payment", Some("anything"), r#"{"mode": "disabled", "reason": "x"}"#).await;
    assert_eq!(got.status, 403);

    get(&sc.url("/x")).await;
    get(&sc.url("/x")).await;
    assert!(
        eventually(Duration::from_secs(5), || async { breaker_state(&sc, "payment").await["state"] == "open" }).await
    );
    // A reload that changes something else keeps the open breaker (and its evidence).
    sc.write_config(&yaml(&[up.up.addr], cfg, "timeout: 3s\n"));
    sc.app.reload("test").await.unwrap();
    assert_eq!(breaker_state(&sc, "payment").await["state"], "open");
    assert_eq!(get(&sc.url("/x")).await.header("x-lifeline-error"), Some("circuit_open"));
    assert_eq!(up.hits(), 2);
}
