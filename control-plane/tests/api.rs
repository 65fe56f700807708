//! The admin router, called in process with `tower::ServiceExt::oneshot`: every endpoint with
//! good and bad input, and without the admin key.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    router: Router,
    key: String,
}

impl Api {
    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        key: Option<&str>,
    ) -> (StatusCode, Value, String) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req
            .header("content-type", "application/json")
            .body(Body::from(body.unwrap_or("").to_owned()))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        let (s, v, _) = self.raw(method, path, body.as_deref(), Some(&self.key)).await;
        (s, v)
    }

    /// Asserts `status` and, for errors, a JSON `{"error": ...}` body; returns the body.
    async fn expect(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let (s, v) = self.call(method, path, body.clone()).await;
        assert_eq!(s.as_u16(), status, "{method} {path} {body:?} -> {v}");
        if status >= 400 {
            assert!(v["error"].is_string(), "error body for {method} {path}: {v}");
        }
        v
    }
}

fn api(cp: &herald_control_plane::ControlPlane) -> Api {
    Api { router: cp.router(), key: cp.admin_key().to_owned() }
}

#[tokio::test]
async fn every_route_refuses_callers_without_the_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let cp = common::start(dir.path());
    let a = api(&cp);
    let routes = [
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/credentials"),
        ("POST", "/v1/credentials/revoke"),
        ("POST", "/v1/keys/rotate"),
        ("POST", "/v1/keys/1/withdraw"),
        ("GET", "/v1/users/u"),
        ("PUT", "/v1/users/u/groups"),
        ("PUT", "/v1/users/u/topics"),
        ("GET", "/v1/groups/g"),
        ("PUT", "/v1/groups/g"),
        ("POST", "/v1/pushes"),
        ("GET", "/v1/pushes/1"),
        ("GET", "/v1/topics/t/subscribers"),
        ("GET", "/v1/nodes"),
    ];
    for (m, p) in routes {
        for key in [None, Some("wrong-key"), Some("")] {
            let (s, v, _) = a.raw(m, p, Some("{}"), key).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {p} key {key:?}");
            assert!(v["error"].is_string());
        }
    }
    let (s, v, _) = a.raw("GET", "/healthz", None, None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    // Unknown routes and methods are JSON errors too.
    a.expect("GET", "/v2/nothing", None, 404).await;
    a.expect("DELETE", "/v1/pushes", None, 405).await;
}

#[tokio::test]
async fn credentials_revocation_and_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let cp = common::start(dir.path());
    let a = api(&cp);
    let v = a
        .expect("POST", "/v1/credentials", Some(json!({"user": "u1", "device": "d1", "ttl_secs": 60})), 200)
        .await;
    let token = v["token"].as_str().unwrap();
    let claims = herald_protocol::credential::peek(token).unwrap();
    assert_eq!((claims.user.as_str(), claims.device.as_str()), ("u1", "d1"));
    assert_eq!(claims.expires_at, v["expires_at"].as_u64().unwrap());
    for bad in [
        json!({"user": "", "device": "d"}),
        json!({"user": "u", "device": "x".repeat(256)}),
        json!({"user": "u"}),
        json!({"user": "u", "device": "d", "ttl_secs": 0}),
        json!({"user": "u", "device": "d", "extra": 1}),
        json!({"user": "a\nb", "device": "d"}),
    ] {
        a.expect("POST", "/v1/credentials", Some(bad), 400).await;
    }
    let (s, v, _) = a.raw("POST", "/v1/credentials", Some("not json"), Some(&a.key)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("JSON"));

    a.expect("POST", "/v1/credentials/revoke", Some(json!({"user": "u1", "device": "d1"})), 200).await;
    a.expect("POST", "/v1/credentials/revoke", Some(json!({"user": "u1"})), 200).await;
    a.expect("POST", "/v1/credentials/revoke", Some(json!({"device": "d1"})), 400).await;
    // Issued after a revocation: still valid (issued_at moves past the revocation stamp).
    let v = a.expect("POST", "/v1/credentials", Some(json!({"user": "u1", "device": "d1"})), 200).await;
    let after = herald_protocol::credential::peek(v["token"].as_str().unwrap()).unwrap();
    let mut revs = herald_protocol::credential::Revocations::default();
    revs.revoke("u1", None, claims.issued_at + 1);
    assert!(revs.check(&after).is_ok());
    assert!(revs.check(&claims).is_err());

    let r = a.expect("POST", "/v1/keys/rotate", None, 200).await;
    assert_eq!(r["previous_key_id"].as_u64().map(|p| p + 1), r["key_id"].as_u64());
    let retiring = r["retiring"].as_array().unwrap();
    assert_eq!(retiring[0]["key_id"], r["previous_key_id"]);
    assert!(retiring[0]["valid_until"].as_u64().unwrap() >= after.expires_at);
    let v = a.expect("POST", "/v1/credentials", Some(json!({"user": "u2", "device": "d"})), 200).await;
    let c = herald_protocol::credential::peek(v["token"].as_str().unwrap()).unwrap();
    assert_eq!(u64::from(c.key_id), r["key_id"].as_u64().unwrap());
    a.expect("POST", "/v1/keys/rotate", Some(json!([1])), 400).await;
}

#[tokio::test]
async fn users_groups_topics_and_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let cp = common::start(dir.path());
    let a = api(&cp);
    a.expect("GET", "/v1/users/nobody", None, 404).await;
    let v = a.expect("PUT", "/v1/users/u1/groups", Some(json!({"groups": ["g1", "g2", "g1"]})), 200).await;
    assert_eq!(v["groups"], json!(["g1", "g2"]));
    assert_eq!(v["effective_topics"], json!(["g1", "g2"]), "a group follows its own name");
    a.expect("GET", "/v1/groups/g1", None, 200).await;
    let v = a.expect("PUT", "/v1/groups/g1", Some(json!({"topics": ["a", "b"]})), 200).await;
    assert_eq!(v["topics"], json!(["a", "b"]));
    let v = a.expect("PUT", "/v1/users/u1/topics", Some(json!({"topics": ["c"]})), 200).await;
    assert_eq!(v["effective_topics"], json!(["a", "b", "c", "g2"]));
    let v = a.expect("GET", "/v1/users/u1", None, 200).await;
    assert_eq!(v["topics"], json!(["c"]));
    assert_eq!(v["presence"], json!([]));
    for (m, p, b) in [
        ("PUT", "/v1/users/u1/groups", json!({"groups": [""]})),
        ("PUT", "/v1/users/u1/groups", json!({"groups": "g"})),
        ("PUT", "/v1/users/u1/topics", json!({"topics": ["x".repeat(300)]})),
        ("PUT", "/v1/users/u1/topics", json!({})),
        ("PUT", "/v1/groups/g1", json!({"topics": [1]})),
    ] {
        a.expect(m, p, Some(b), 400).await;
    }
    let long = format!("/v1/users/{}", "x".repeat(300));
    a.expect("GET", &long, None, 400).await;

    for i in 0..5 {
        a.expect("PUT", &format!("/v1/users/s{i}/topics"), Some(json!({"topics": ["t"]})), 200).await;
    }
    let p1 = a.expect("GET", "/v1/topics/t/subscribers?limit=2", None, 200).await;
    assert_eq!(p1["subscribers"], json!(["s0", "s1"]));
    let next = p1["next_cursor"].as_str().unwrap();
    let p2 = a.expect("GET", &format!("/v1/topics/t/subscribers?limit=2&cursor={next}"), None, 200).await;
    assert_eq!(p2["subscribers"], json!(["s2", "s3"]));
    let p3 = a.expect("GET", "/v1/topics/t/subscribers?limit=2&cursor=s3", None, 200).await;
    assert_eq!((p3["subscribers"].clone(), p3["next_cursor"].clone()), (json!(["s4"]), Value::Null));
    let via_group = a.expect("GET", "/v1/topics/a/subscribers", None, 200).await;
    assert_eq!(via_group["subscribers"], json!(["u1"]));
    a.expect("GET", "/v1/topics/none/subscribers", None, 200).await;
    a.expect("GET", "/v1/topics/t/subscribers?limit=0", None, 400).await;
    a.expect("GET", "/v1/topics/t/subscribers?limit=abc", None, 400).await;
    a.expect("GET", "/v1/topics/t/subscribers?page=2", None, 400).await;
}

#[tokio::test]
async fn pushes_status_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    let cp = common::start(dir.path());
    let a = api(&cp);
    a.expect("POST", "/v1/credentials", Some(json!({"user": "u", "device": "d1"})), 200).await;
    a.expect("POST", "/v1/credentials", Some(json!({"user": "u", "device": "d2"})), 200).await;
    let v = a
        .expect(
            "POST",
            "/v1/pushes",
            Some(json!({"to": {"user": "u"}, "payload": {"title": "t", "body": "b", "data": {"k": "v"}},
                        "ttl_secs": 30, "priority": "normal", "collapse_key": "c"})),
            202,
        )
        .await;
    let id = v["push_id"].as_u64().unwrap();
    assert_eq!(v["targeted"], 2);
    let s = a.expect("GET", &format!("/v1/pushes/{id}"), None, 200).await;
    for k in ["targeted", "sent", "delivered", "pending_offline", "expired", "dropped"] {
        assert!(s[k].is_u64(), "{k} in {s}");
    }
    assert_eq!((s["targeted"].as_u64(), s["pending_offline"].as_u64()), (Some(2), Some(2)));
    a.expect("GET", "/v1/pushes/999999", None, 404).await;
    a.expect("GET", "/v1/pushes/abc", None, 400).await;
    for to in [
        json!({"group": "g"}),
        json!({"topic": "t"}),
        json!({"users": ["u", "v"]}),
        json!({"condition": "'a' in topics && ('b' in topics || !('c' in topics))"}),
    ] {
        a.expect("POST", "/v1/pushes", Some(json!({"to": to})), 202).await;
    }
    let bad_cond =
        a.expect("POST", "/v1/pushes", Some(json!({"to": {"condition": "'a' in topics &&"}})), 400).await;
    assert!(bad_cond["error"].as_str().unwrap().contains("at byte"), "{bad_cond}");
    for bad in [
        json!({}),
        json!({"to": {}}),
        json!({"to": {"user": "u", "topic": "t"}}),
        json!({"to": {"users": []}}),
        json!({"to": {"user": ""}}),
        json!({"to": {"user": "u"}, "priority": "urgent"}),
        json!({"to": {"user": "u"}, "ttl_secs": -1}),
        json!({"to": {"user": "u"}, "ttl_secs": 100_000_000}),
        json!({"to": {"user": "u"}, "collapse_key": ""}),
        json!({"to": {"user": "u"}, "payload": {"body": "x".repeat(20_000)}}),
        json!({"to": {"user": "u"}, "payload": {"data": {"k": 1}}}),
        json!({"to": {"user": "u"}, "unknown": true}),
    ] {
        a.expect("POST", "/v1/pushes", Some(bad), 400).await;
    }
    let body = json!({"to": {"user": "u"}, "idempotency_key": "k1"});
    let first = a.expect("POST", "/v1/pushes", Some(body.clone()), 202).await;
    let again = a.expect("POST", "/v1/pushes", Some(body), 202).await;
    assert_eq!(first["push_id"], again["push_id"]);
    assert_eq!(again["replayed"], true);
}

#[tokio::test]
async fn metrics_openapi_and_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let cp = common::start(dir.path());
    let a = api(&cp);
    a.expect("POST", "/v1/pushes", Some(json!({"to": {"user": "u"}})), 202).await;
    let (s, _, text) = a.raw("GET", "/metrics", None, Some(&a.key)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(text.contains("herald_cp_pushes_accepted_total 1"), "{text}");
    assert!(text.contains("# TYPE herald_cp_nodes gauge"));
    let doc = a.expect("GET", "/openapi.json", None, 200).await;
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/v1/pushes"]["post"].is_object());
    let nodes = a.expect("GET", "/v1/nodes", None, 200).await;
    assert_eq!(nodes["nodes"], json!([]));
}

#[test]
fn generated_admin_key_is_private_and_stable() {
    let dir = tempfile::tempdir().unwrap();
    let config = herald_control_plane::ControlPlaneConfig {
        data_dir: dir.path().to_path_buf(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        link_addr: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let first = herald_control_plane::start(config.clone()).unwrap();
    assert!(first.admin_key_generated());
    let key = first.admin_key().to_owned();
    assert!(key.len() >= 40);
    drop(first);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("admin.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let second = herald_control_plane::start(config).unwrap();
    assert!(!second.admin_key_generated());
    assert_eq!(second.admin_key(), key);
}
