//! End-to-end, the real `herald serve`: a session ends when its credential expires, and a
//! withdrawn key closes the sessions it signed while sessions signed with another key go on.

use anyhow::Context;
use herald_protocol::CloseCode;
use herald_tests::{Proc, Serve, Terminal, push_body};
use serde_json::json;

#[test]
fn a_session_ends_when_its_credential_expires() -> anyhow::Result<()> {
    let h = Serve::start()?;
    let (status, v) =
        h.admin.call("POST", "/v1/credentials", Some(&json!({"user": "e", "device": "d", "ttl_secs": 2})));
    assert_eq!(status, 200, "{v}");
    let mut t = Terminal::login(h.tcp, v["token"].as_str().context("token")?)?;
    h.admin.push(push_body(json!({"user": "e"}), "before expiry"));
    assert_eq!(t.recv()?.title(), "before expiry");
    assert_eq!(t.wait_closed().context("expiry")?, Some(CloseCode::AUTH_EXPIRED));
    assert!(t.session.gave_up(), "the client waits for a new credential");
    Ok(())
}

#[test]
fn herald_listen_exits_when_its_credential_expires() -> anyhow::Result<()> {
    let h = Serve::start()?;
    let (status, v) =
        h.admin.call("POST", "/v1/credentials", Some(&json!({"user": "l", "device": "d", "ttl_secs": 2})));
    assert_eq!(status, 200, "{v}");
    let token = v["token"].as_str().context("token")?;
    let mut listen = Proc::spawn(&["listen", "--gateway", &h.tcp.to_string(), "--token", token])?;
    h.admin.push(push_body(json!({"user": "l"}), "while valid"));
    assert!(listen.wait_line("{")?.contains("while valid"), "the push is printed");
    assert_eq!(listen.wait_exit()?.code(), Some(1), "exits once the session is closed at expiry");
    Ok(())
}

#[test]
fn withdrawing_a_key_closes_its_sessions_and_refuses_its_credentials() -> anyhow::Result<()> {
    let h = Serve::start()?;
    let leaked = h.admin.token("a", "d");
    let mut signed = Terminal::login(h.tcp, &leaked)?;
    let (status, rotated) = h.admin.call("POST", "/v1/keys/rotate", Some(&json!({})));
    assert_eq!(status, 200, "{rotated}");
    let mut other = Terminal::login(h.tcp, &h.admin.token("b", "d"))?;
    let old = rotated["previous_key_id"].as_u64().context("previous key")?;

    let (status, v) = h.admin.call("POST", &format!("/v1/keys/{old}/withdraw"), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(signed.wait_closed().context("withdrawn")?, Some(CloseCode::AUTH_REVOKED));
    h.admin.push(push_body(json!({"user": "b"}), "still here"));
    assert_eq!(other.recv()?.title(), "still here");
    let mut again = Terminal::connect(h.tcp, &leaked)?;
    assert_eq!(again.wait_closed().context("login with a withdrawn key")?, Some(CloseCode::AUTH_FORGED));
    Ok(())
}
