//! The admin API's limits: body size consistent with the documented maxima, JSON errors for
//! every status (axum's own rejections included), and a server that a slow or idle client
//! cannot hold (header and body deadlines), checked over real sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn call(
    router: &axum::Router,
    method: &str,
    path: &str,
    body: Vec<u8>,
    key: &str,
) -> (StatusCode, Value, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype =
        resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), ctype)
}

fn assert_json_error(what: &str, got: &(StatusCode, Value, String), status: StatusCode) {
    assert_eq!(got.0, status, "{what}: {:?}", got.1);
    assert!(got.2.starts_with("application/json"), "{what}: content type {:?}", got.2);
    assert!(got.1["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {:?}", got.1);
}

/// 10,000 distinct names of 255 bytes, each mostly `"` (two bytes once JSON-escaped): the
/// longest list the API documents, in its longest encoding.
fn longest_names() -> Vec<String> {
    (0..10_000).map(|i| format!("{i:05}{}", "\"".repeat(250))).collect()
}

#[tokio::test]
async fn the_largest_documented_request_is_accepted_and_a_larger_body_gets_a_json_413() {
    let dir = tempfile::tempdir().unwrap();
    let cp = common::start(dir.path());
    let router = cp.router();
    let key = cp.admin_key().to_owned();
    let body = json!({
        "to": { "users": longest_names() },
        "payload": { "title": "\u{1}".repeat(16 * 1024 - 64) },
        "collapse_key": "\"".repeat(255),
        "idempotency_key": "\u{2}".repeat(255),
    })
    .to_string();
    assert!(body.len() > 5_000_000, "{} bytes: not the largest request", body.len());
    let got = call(&router, "POST", "/v1/pushes", body.into_bytes(), &key).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{:?}", got.1);

    let doc = call(&router, "GET", "/openapi.json", Vec::new(), &key).await.1;
    let limit = doc["info"]["x-max-body-bytes"].as_u64().expect("the limit is documented") as usize;
    let mut over = b"{\"to\":{\"user\":\"u\"}}".to_vec();
    over.resize(limit + 1, b' ');
    let got = call(&router, "POST", "/v1/pushes", over, &key).await;
    assert_json_error("a body over the limit", &got, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn the_routers_own_rejections_are_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cp = common::start(dir.path());
    let router = cp.router();
    let key = cp.admin_key().to_owned();
    // Not UTF-8 once percent-decoded: axum's path extractor rejects it (400, plain text alone).
    let got = call(&router, "GET", "/v1/pushes/%FF", Vec::new(), &key).await;
    assert_json_error("an undecodable path", &got, StatusCode::BAD_REQUEST);
    let got = call(&router, "GET", "/v1/users/%C3%28", Vec::new(), &key).await;
    assert_json_error("an undecodable path", &got, StatusCode::BAD_REQUEST);
    let got = call(&router, "GET", "/no/such/route", Vec::new(), &key).await;
    assert_json_error("an unknown route", &got, StatusCode::NOT_FOUND);
    let got = call(&router, "PATCH", "/v1/pushes", Vec::new(), &key).await;
    assert_json_error("a wrong method", &got, StatusCode::METHOD_NOT_ALLOWED);
}

/// A control plane whose admin server gives a request head `header_secs` and a body `body_secs`.
fn start_with_timeouts(
    dir: &std::path::Path,
    header_secs: u64,
    body_secs: u64,
) -> herald_control_plane::ControlPlane {
    let mut cfg = common::config(dir);
    cfg.admin_header_timeout_secs = header_secs;
    cfg.admin_body_timeout_secs = body_secs;
    herald_control_plane::start(cfg).unwrap()
}

/// Sends `bytes` one at a time every 100 ms until the server closes the connection; returns
/// how long that took and everything the server sent. Panics if it is still open after `limit`.
fn trickle_until_closed(
    addr: std::net::SocketAddr,
    head: &[u8],
    bytes: &[u8],
    limit: Duration,
) -> (Duration, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    for &b in bytes.iter().cycle() {
        assert!(start.elapsed() < limit, "the server kept a trickling client for {limit:?}");
        if s.write_all(&[b]).is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    (start.elapsed(), String::from_utf8_lossy(&got).into_owned())
}

#[test]
fn a_client_trickling_a_header_is_closed_at_the_deadline_and_others_are_served_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_with_timeouts(dir.path(), 1, 60);
    let addr = cp.admin_addr();
    let admin = common::Admin::new(&cp);
    let slow = std::thread::spawn(move || {
        trickle_until_closed(
            addr,
            b"GET /healthz HTTP/1.1\r\n",
            b"X-Slow: aaaaaaaaaaaaaaaaaaaa\r\n",
            Duration::from_secs(10),
        )
    });
    // While the slow client trickles, requests on other connections are answered.
    for _ in 0..5 {
        let (status, v) = admin.call("GET", "/healthz", None);
        assert_eq!(status, 200, "{v}");
    }
    let (took, _) = slow.join().unwrap();
    assert!(took < Duration::from_secs(5), "closed after {took:?}, the header deadline is 1 s");
    let metrics = admin.text("/metrics");
    assert!(!metrics.contains("herald_cp_api_connections_failed_total 0"), "{metrics}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_at_the_header_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_with_timeouts(dir.path(), 1, 60);
    let mut s = TcpStream::connect(cp.admin_addr()).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    loop {
        assert!(start.elapsed() < Duration::from_secs(10), "an idle keep-alive connection was kept 10 s");
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got));
    assert!(start.elapsed() < Duration::from_secs(5), "closed after {:?}", start.elapsed());
}

#[test]
fn a_client_trickling_a_body_gets_a_json_408_at_the_body_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_with_timeouts(dir.path(), 10, 1);
    let head = format!(
        "POST /v1/pushes HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
        cp.admin_key()
    );
    let (took, answer) =
        trickle_until_closed(cp.admin_addr(), head.as_bytes(), b" ", Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("{\"error\":"), "{answer:?}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}, the body deadline is 1 s");
}
