//! End-to-end: the real `herald` binary, real sockets, the admin API over HTTP, terminals driven
//! by the protocol crate's client session. Absence of a push is proven with a sentinel pushed
//! last: a terminal collects titles until the sentinel arrives.

use std::process::Command;

use anyhow::Context;

use herald_protocol::CloseCode;
use herald_tests::{ADMIN_KEY, Admin, Proc, Serve, Terminal, herald_bin, push_body};
use serde_json::json;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn a_push_to_an_online_user_is_delivered_and_acknowledged() -> anyhow::Result<()> {
    let h = Serve::start()?;
    let mut alice = Terminal::login(h.tcp, &h.admin.token("alice", "phone"))?;
    let id = h.admin.push(json!({
        "to": {"user": "alice"},
        "payload": {"title": "hello", "body": "world", "data": {"k": "v"}},
        "ttl_secs": 60,
    }));
    let got = alice.recv()?;
    assert_eq!(got.title(), "hello");
    assert_eq!(got.payload.body.as_deref(), Some("world"));
    assert_eq!(got.payload.push_id, id);
    assert_eq!(got.payload.data.len(), 1);
    let st = h.admin.wait_status(id, "delivered", |s| s["delivered"] == 1);
    assert_eq!(st["sent"], 1, "{st}");
    assert_eq!(st["pending_offline"], 0, "{st}");
    Ok(())
}

#[test]
fn each_target_reaches_exactly_the_right_terminals() -> anyhow::Result<()> {
    let h = Serve::start()?;
    let a = &h.admin;
    a.set_groups("a", &["g1"]);
    a.set_groups("b", &["g1", "g2"]);
    a.set_topics("c", &["t3"]);
    let mut terms: Vec<(&str, Terminal)> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|u| Ok((u, Terminal::login(h.tcp, &a.token(u, "dev"))?)))
        .collect::<anyhow::Result<_>>()?;
    a.push(push_body(json!({"group": "g1"}), "group-g1"));
    a.push(push_body(json!({"group": "g2"}), "group-g2"));
    a.push(push_body(json!({"topic": "t3"}), "topic-t3"));
    a.push(push_body(json!({"topic": "g2"}), "topic-g2"));
    a.push(push_body(json!({"users": ["a", "d"]}), "users-ad"));
    a.push(push_body(json!({"user": "c"}), "user-c"));
    a.push(push_body(json!({"condition": "'g1' in topics && !('g2' in topics)"}), "cond-g1-not-g2"));
    a.push(push_body(json!({"condition": "'t3' in topics || 'g2' in topics"}), "cond-t3-or-g2"));
    a.push(push_body(json!({"users": ["a", "b", "c", "d"]}), "end"));
    let want = [
        ("a", vec!["group-g1", "users-ad", "cond-g1-not-g2"]),
        ("b", vec!["group-g1", "group-g2", "topic-g2", "cond-t3-or-g2"]),
        ("c", vec!["topic-t3", "user-c", "cond-t3-or-g2"]),
        ("d", vec!["users-ad"]),
    ];
    for ((user, term), (wuser, wtitles)) in terms.iter_mut().zip(want) {
        assert_eq!(*user, wuser);
        let got = sorted(term.titles_until("end")?);
        let want = sorted(wtitles.into_iter().map(String::from).collect());
        assert_eq!(got, want, "terminal of {user}");
    }
    Ok(())
}

#[test]
fn a_group_change_applies_to_a_live_session() -> anyhow::Result<()> {
    let h = Serve::start()?;
    h.admin.set_groups("u", &["before"]);
    let mut t = Terminal::login(h.tcp, &h.admin.token("u", "d"))?;
    h.admin.push(push_body(json!({"group": "before"}), "one"));
    assert_eq!(t.recv()?.title(), "one");
    h.admin.set_groups("u", &["after"]);
    h.admin.push(push_body(json!({"group": "before"}), "old-group"));
    h.admin.push(push_body(json!({"group": "after"}), "new-group"));
    h.admin.push(push_body(json!({"user": "u"}), "end"));
    assert_eq!(t.titles_until("end")?, ["new-group"]);
    Ok(())
}

#[test]
fn offline_terminal_receives_on_login_then_status_is_delivered() -> anyhow::Result<()> {
    let h = Serve::start()?;
    h.admin.set_groups("off", &["news"]);
    let token = h.admin.token("off", "tablet");
    let direct = h.admin.push(push_body(json!({"user": "off"}), "while-away"));
    let group = h.admin.push(push_body(json!({"group": "news"}), "news-while-away"));
    let st = h.admin.wait_status(direct, "pending offline", |s| s["pending_offline"] == 1);
    assert_eq!(st["delivered"], 0, "{st}");
    let mut t = Terminal::login(h.tcp, &token)?;
    let mut got = vec![t.recv()?.title().to_owned(), t.recv()?.title().to_owned()];
    got.sort();
    assert_eq!(got, ["news-while-away", "while-away"]);
    h.admin.wait_status(direct, "delivered", |s| s["delivered"] == 1 && s["pending_offline"] == 0);
    h.admin.wait_status(group, "delivered", |s| s["delivered"] == 1);
    // Reconnecting does not deliver acknowledged messages again.
    t.drop_connection();
    t.reconnect()?;
    h.admin.push(push_body(json!({"user": "off"}), "end"));
    assert_eq!(t.titles_until("end")?, Vec::<String>::new());
    Ok(())
}

#[test]
fn ttl_expiry_collapse_key_and_idempotent_retry() -> anyhow::Result<()> {
    let h = Serve::start()?;
    let token = h.admin.token("late", "d");
    let short = h.admin.push(json!({"to": {"user": "late"}, "payload": {"title": "short"}, "ttl_secs": 1}));
    h.admin.push(
        json!({"to": {"user": "late"}, "payload": {"title": "v1"}, "ttl_secs": 300, "collapse_key": "score"}),
    );
    h.admin.push(
        json!({"to": {"user": "late"}, "payload": {"title": "v2"}, "ttl_secs": 300, "collapse_key": "score"}),
    );
    let body = json!({"to": {"user": "late"}, "payload": {"title": "once"}, "ttl_secs": 300, "idempotency_key": "req-1"});
    let first = h.admin.push(body.clone());
    assert_eq!(h.admin.push(body), first, "a retried POST returns the same push");
    h.admin.wait_status(short, "expired", |s| s["expired"] == 1);
    let mut t = Terminal::login(h.tcp, &token)?;
    h.admin.push(push_body(json!({"user": "late"}), "end"));
    assert_eq!(t.titles_until("end")?, ["v2", "once"]);
    Ok(())
}

#[test]
fn bad_credentials_get_their_close_codes() -> anyhow::Result<()> {
    let h = Serve::start()?;
    let good = h.admin.token("r", "d");
    let mut forged = good.clone().into_bytes();
    let mid = forged.len() / 2;
    forged[mid] = if forged[mid] == b'A' { b'B' } else { b'A' };
    let mut t = Terminal::connect(h.tcp, std::str::from_utf8(&forged)?)?;
    assert_eq!(t.wait_closed().context("forged")?, Some(CloseCode::AUTH_FORGED));
    let mut t = Terminal::connect(h.tcp, "not-a-token")?;
    assert_eq!(t.wait_closed().context("malformed")?, Some(CloseCode::AUTH_MALFORMED));

    let mut online = Terminal::login(h.tcp, &good)?;
    let (status, v) = h.admin.call("POST", "/v1/credentials/revoke", Some(&json!({"user": "r"})));
    assert_eq!(status / 100, 2, "{v}");
    assert_eq!(
        online.wait_closed().context("kick")?,
        Some(CloseCode::AUTH_REVOKED),
        "a revoked terminal is kicked"
    );
    let mut t = Terminal::connect(h.tcp, &good)?;
    assert_eq!(t.wait_closed().context("revoked login")?, Some(CloseCode::AUTH_REVOKED));
    Ok(())
}

#[test]
fn sigterm_drains_with_goaway_and_exits_zero() -> anyhow::Result<()> {
    let mut h = Serve::start()?;
    let mut t = Terminal::login(h.tcp, &h.admin.token("s", "d"))?;
    h.proc.signal(libc::SIGTERM);
    t.wait_closed()?;
    assert_eq!(t.goaway, Some(CloseCode::SHUTTING_DOWN));
    assert!(h.proc.wait_exit()?.success());
    Ok(())
}

#[test]
fn restarting_the_control_plane_or_a_gateway_loses_nothing() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let data_arg = data.path().to_str().unwrap_or_default().to_owned();
    let cp_args = |link: &str| {
        vec![
            "control-plane".to_owned(),
            "--data".into(),
            data_arg.clone(),
            "--admin".into(),
            "127.0.0.1:0".into(),
            "--link".into(),
            link.to_owned(),
        ]
    };
    let spawn = |args: Vec<String>| Proc::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut cp = spawn(cp_args("127.0.0.1:0"))?;
    let admin = Admin::new(cp.wait_addr("herald: admin API on ")?);
    let link = cp.wait_addr("herald: link for gateways on ")?.to_string();
    let gw_args =
        vec!["gateway", "--control-plane", &link, "--tcp", "127.0.0.1:0", "--metrics", "127.0.0.1:0"];
    let mut gw = Proc::spawn(&gw_args)?;
    let tcp = gw.wait_addr("herald: gateway on ")?;
    let mut t = Terminal::login(tcp, &admin.token("k", "d"))?;
    let one = admin.push(push_body(json!({"user": "k"}), "one"));
    assert_eq!(t.recv()?.title(), "one");
    admin.wait_status(one, "delivered", |s| s["delivered"] == 1);

    // The control plane dies without warning and comes back on the same data and link address.
    cp.signal(libc::SIGKILL);
    cp.wait_exit()?;
    let mut cp = spawn(cp_args(&link))?;
    let admin = Admin::new(cp.wait_addr("herald: admin API on ")?);
    let two = admin.push(push_body(json!({"user": "k"}), "two"));
    admin.push(push_body(json!({"user": "k"}), "end"));
    assert_eq!(t.titles_until("end")?, ["two"], "nothing acknowledged comes again");
    admin.wait_status(two, "delivered", |s| s["delivered"] == 1);

    // The gateway dies; a push accepted meanwhile reaches the terminal through a new gateway.
    gw.signal(libc::SIGKILL);
    gw.wait_exit()?;
    t.wait_closed()?;
    let three = admin.push(push_body(json!({"user": "k"}), "three"));
    let tcp_arg = tcp.to_string();
    let gw_args = vec!["gateway", "--control-plane", &link, "--tcp", &tcp_arg, "--metrics", "127.0.0.1:0"];
    let mut gw = Proc::spawn(&gw_args)?;
    gw.wait_addr("herald: gateway on ")?;
    t.reconnect()?;
    admin.push(push_body(json!({"user": "k"}), "end2"));
    assert_eq!(t.titles_until("end2")?, ["three"]);
    admin.wait_status(three, "delivered", |s| s["delivered"] == 1);
    Ok(())
}

#[test]
fn herald_listen_prints_each_push_as_a_json_line() -> anyhow::Result<()> {
    let h = Serve::start()?;
    let token = h.admin.token("lis", "cli");
    let child = Command::new(herald_bin())
        .args(["listen", "--gateway", &h.tcp.to_string(), "--token", &token, "--count", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // The push is stored, so it arrives whether or not `listen` has logged in yet.
    let id = h.admin.push(push_body(json!({"user": "lis"}), "to-the-shell"));
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    let line: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap_or(&[]))?;
    assert_eq!(line["title"], "to-the-shell");
    assert_eq!(line["push_id"], id);
    h.admin.wait_status(id, "delivered", |s| s["delivered"] == 1);
    Ok(())
}

#[test]
fn bad_config_and_bad_flags_exit_64_with_a_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[gateway]\ncores = \"many\"\nfoo = 1\n")?;
    let out = Command::new(herald_bin()).arg("--config").arg(&bad).arg("serve").output()?;
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway.cores") && err.contains("gateway.foo"), "{err}");
    let out = Command::new(herald_bin()).args(["serve", "--tcp", "nowhere"]).output()?;
    assert_eq!(out.status.code(), Some(64));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../herald.example.toml");
    let out = Command::new(herald_bin()).args(["--config", example, "check-config"]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[test]
fn the_admin_api_refuses_calls_without_the_key() -> anyhow::Result<()> {
    let h = Serve::start()?;
    let mut anon = h.admin.clone();
    anon.key = "wrong".into();
    let (status, v) = anon.call("POST", "/v1/credentials", Some(&json!({"user": "x", "device": "y"})));
    assert_eq!(status, 401, "{v}");
    assert!(v["error"].is_string(), "{v}");
    let (status, _) = anon.call("GET", "/healthz", None);
    assert_eq!(status, 200);
    assert_ne!(ADMIN_KEY, "wrong");
    Ok(())
}
