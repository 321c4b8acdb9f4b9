//! The proxy path: routing over HTTP/1.1 and h2c, headers, error answers.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

#[tokio::test]
async fn routes_over_http1_and_h2c_with_forwarding_headers() {
    let up = Upstream::echo().await;
    let sc = Sidecar::start(&one_cluster_yaml(up.addr)).await;
    for client in [http1(), http2()] {
        let req = Request::get(sc.url("/card/v1/cards/x?q=1"))
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            .header("te", "trailers")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let got = send(&client, req).await;
        assert_eq!(got.status, 200, "{}", got.text());
        let v = got.json();
        assert_eq!(v["path"], "/card/v1/cards/x");
        assert!(v["headers"]["x-forwarded-for"].as_str().unwrap().contains("127.0.0.1"));
        assert_eq!(v["headers"]["x-forwarded-proto"], "http");
        assert!(v["headers"].get("x-hop").is_none(), "hop-by-hop header leaked: {v}");
        assert!(v["headers"].get("te").is_none(), "te (the one h2 allows) leaked: {v}");
        let id = got.header("x-request-id").expect("request id echoed");
        assert_eq!(v["headers"]["x-request-id"], id);
    }
}

#[tokio::test]
async fn errors_are_json_with_a_cause_header() {
    let up = Upstream::echo().await;
    let addr = up.addr;
    drop(up);
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nclusters:\n  backend:\n    endpoints:\n      - {{ address: {addr} }}\n\
         routes:\n  - {{ name: api, match: {{ path_prefix: /api/ }}, cluster: backend, max_body: 10 }}\n"
    );
    let sc = Sidecar::start(&yaml).await;
    let got = get(&sc.url("/nowhere")).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.header("x-lifeline-error"), Some("no_route"));
    assert_eq!(got.json()["error"], "no_route");
    assert_eq!(got.json()["request_id"], got.header("x-request-id").unwrap());

    let got = get(&sc.url("/api/x")).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("x-lifeline-error"), Some("upstream_connect_failed"));

    let got = post_json(&sc.url("/api/x"), &serde_json::json!({"too": "large for ten bytes"}), &[]).await;
    assert_eq!(got.status, 413);
    assert_eq!(got.json()["error"], "body_too_large");

    let big = "x".repeat(40 << 10);
    let req = Request::get(sc.url("/api/x")).header("x-big", big).body(Full::new(Bytes::new())).unwrap();
    let got = send(&http1(), req).await;
    assert_eq!(got.status, 431);
    assert_eq!(got.json()["error"], "headers_too_large");
}

#[tokio::test]
async fn malformed_requests_get_a_json_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::echo().await;
    let sc = Sidecar::start(&one_cluster_yaml(up.addr)).await;
    for raw in [
        "GET /x HTTP/1.1\r\nconnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
        "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\nconnection: close\r\n\r\nhello",
    ] {
        let mut s = tokio::net::TcpStream::connect(sc.app.proxy_addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{raw:?} -> {out}");
        if !raw.contains("content-length") {
            assert!(out.contains("x-lifeline-error: bad_request"), "{out}");
            assert!(out.contains("\"error\":\"bad_request\""), "{out}");
        }
    }
    assert_eq!(up.hits(), 0, "malformed requests never reach the upstream");
}
