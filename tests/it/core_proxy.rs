//! The proxy path: routing over HTTP/1.1 and h2c, headers, error answers.

use std::time::Duration;

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

/// A backend that answers every request on a connection with `head` and, unless the request is
/// a HEAD, `body` (a stand-in written byte for byte, so the test controls every field).
async fn raw_backend(head: &'static str, body: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head_only = buf.starts_with(b"HEAD ");
                        buf.drain(..end + 4);
                        let answer = if head_only { head.to_string() } else { format!("{head}{body}") };
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Reads one answer (head, and a body of its `content-length` unless `head_only`) off `s`.
async fn read_answer(s: &mut tokio::net::TcpStream, head_only: bool) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().to_string()))
                .map_or(0, |v| v.parse::<usize>().unwrap());
            let want = if head_only { 0 } else { len };
            if buf.len() >= end + 4 + want {
                return (head, String::from_utf8_lossy(&buf[end + 4..end + 4 + want]).into_owned());
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the sidecar closed the connection mid-answer: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_backends_fields_pass_through_as_sent_without_this_hops_over_http1_and_h2c() {
    use tokio::io::AsyncWriteExt;
    let head = "HTTP/1.1 200 OK\r\nServer: raw-backend\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\
                Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\n\
                Set-Cookie: b=2\r\nX-Request-Id: from-backend\r\nContent-Length: 5\r\n\r\n";
    let backend = raw_backend(head, "hello").await;
    let sc = Sidecar::start(&one_cluster_yaml(backend)).await;
    let url = sc.url("/x");
    let mut s = tokio::net::TcpStream::connect(sc.app.proxy_addr).await.unwrap();
    for (method, head_only) in [("GET", false), ("HEAD", true)] {
        s.write_all(format!("{method} /x HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await.unwrap();
        let (got, body) = read_answer(&mut s, head_only).await;
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines[0], "HTTP/1.1 200 OK", "{got}");
        let count = |name: &str| lines.iter().filter(|l| l.to_ascii_lowercase().starts_with(name)).count();
        // The backend's fields as it wrote them, in its order; its Date, not a second one.
        assert!(got.contains("Server: raw-backend\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n"), "{got}");
        assert_eq!(count("date:"), 1, "{got}");
        assert!(got.contains("Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"), "{got}");
        // This hop's are gone: Keep-Alive, and X-Hop that its Connection named.
        assert_eq!(count("x-hop:") + count("keep-alive:"), 0, "{got}");
        // One length: framed by the sidecar for GET, the backend's own for HEAD.
        assert_eq!(count("content-length:"), 1, "{got}");
        assert!(got.to_ascii_lowercase().contains("content-length: 5\r\n"), "{got}");
        // The request id is the sidecar's, set in place of the backend's.
        assert_eq!(count("x-request-id:"), 1, "{got}");
        assert!(!got.contains("from-backend"), "{got}");
        assert_eq!(body, if head_only { "" } else { "hello" }, "{method}");
    }
    let got = send(&http2(), Request::get(&url).body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "hello");
    assert_eq!(got.header("server"), Some("raw-backend"));
    assert_eq!(got.header("date"), Some("Tue, 01 Dec 2026 10:00:00 GMT"));
    let cookies: Vec<&str> = got.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert!(got.headers.get("x-hop").is_none() && got.headers.get("keep-alive").is_none(), "{:?}", got.headers);
    let ids: Vec<&str> = got.headers.get_all("x-request-id").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(ids.len() == 1 && ids[0] != "from-backend", "{ids:?}");
}

#[tokio::test]
async fn client_connection_timeouts_come_from_the_config_and_a_reload_applies_to_new_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::echo().await;
    let base = one_cluster_yaml(up.addr);
    let short = format!("limits: {{ client_head_timeout: 300ms, client_idle_timeout: 300ms }}\n{base}");
    let sc = Sidecar::start(&short).await;
    let read_all = |mut s: tokio::net::TcpStream| async move {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the sidecar kept the connection open");
        String::from_utf8_lossy(&out).into_owned()
    };
    // A head that dawdles past client_head_timeout: 408.
    let mut s = tokio::net::TcpStream::connect(sc.app.proxy_addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n").await.unwrap();
    let out = read_all(s).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    // A connection idle past client_idle_timeout after its answer: closed.
    let mut s = tokio::net::TcpStream::connect(sc.app.proxy_addr).await.unwrap();
    s.write_all(b"GET /once HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    let (head, _) = read_answer(&mut s, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let started = std::time::Instant::now();
    assert_eq!(read_all(s).await, "", "closed without another byte");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // Reloaded without them (defaults: 30 s and 1 h): a connection accepted now waits.
    sc.write_config(&base);
    sc.app.reload("test").await.expect("reload");
    let mut s = tokio::net::TcpStream::connect(sc.app.proxy_addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n").await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_secs(1), s.read(&mut byte)).await;
    assert!(early.is_err(), "answered before the head was complete: {early:?}");
    s.write_all(b"\r\n").await.unwrap();
    let (head, _) = read_answer(&mut s, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.write_all(b"GET /again HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    let (head, _) = read_answer(&mut s, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "kept open past 300 ms of idleness: {head}");
}
