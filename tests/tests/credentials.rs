//! End-to-end, the real `herald` processes: a session ends when its credential expires, a
//! withdrawn key closes the sessions it signed while sessions signed with another key go on, and
//! a revocation made while a gateway's link is cut closes the session once the link is back.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_protocol::CloseCode;
use herald_tests::{Admin, DEADLINE, Proc, Serve, Terminal, push_body};
use serde_json::json;

/// A TCP relay in front of the control plane's link that the test can cut (every relayed
/// connection is shut and new ones are refused) and mend.
struct Relay {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: SocketAddr) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { return };
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the gateway sees the connection close and retries
                }
                let Ok(up) = TcpStream::connect(to) else { continue };
                let mut kept = c.lock().unwrap();
                for (from, into) in [(&down, &up), (&up, &down)] {
                    let (Ok(mut from), Ok(mut into)) = (from.try_clone(), into.try_clone()) else { continue };
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || into.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = into.shutdown(Shutdown::Both);
                    });
                }
                kept.extend([down, up]);
            }
        });
        Ok(Relay { addr, open, conns })
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn mend(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Polls `f` until it holds, or fails after [`DEADLINE`].
fn until(what: &str, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + DEADLINE;
    while !f() {
        anyhow::ensure!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn a_revocation_made_while_the_link_is_cut_closes_the_session_when_it_returns() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let data_arg = data.path().to_str().context("utf-8 path")?;
    let mut cp = Proc::spawn(&[
        "control-plane",
        "--data",
        data_arg,
        "--admin",
        "127.0.0.1:0",
        "--link",
        "127.0.0.1:0",
    ])?;
    let admin = Admin::new(cp.wait_addr("herald: admin API on ")?);
    let relay = Relay::start(cp.wait_addr("herald: link for gateways on ")?)?;
    let relay_arg = relay.addr.to_string();
    let mut gw = Proc::spawn(&[
        "gateway",
        "--control-plane",
        &relay_arg,
        "--tcp",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ])?;
    let tcp = gw.wait_addr("herald: gateway on ")?;
    let mut lost = Terminal::login(tcp, &admin.token("lost", "d"))?;
    let mut kept = Terminal::login(tcp, &admin.token("kept", "d"))?;
    admin.push(push_body(json!({"user": "lost"}), "before"));
    assert_eq!(lost.recv()?.title(), "before");

    relay.cut();
    let nodes =
        |admin: &Admin| admin.call("GET", "/v1/nodes", None).1["nodes"].as_array().map_or(0, Vec::len);
    until("the control plane to lose the gateway", || nodes(&admin) == 0)?;
    let (status, v) = admin.call("POST", "/v1/credentials/revoke", Some(&json!({"user": "lost"})));
    assert_eq!(status, 200, "{v}");
    // Stored while the link is down: sent to the gateway as backlog once it is back.
    admin.push(push_body(json!({"user": "lost"}), "after revocation"));
    relay.mend();

    assert_eq!(lost.wait_closed().context("revoked session")?, Some(CloseCode::AUTH_REVOKED));
    assert!(lost.recv().is_err(), "the revoked session got a push");
    admin.push(push_body(json!({"user": "kept"}), "still here"));
    assert_eq!(kept.recv()?.title(), "still here");
    gw.kill();
    cp.kill();
    Ok(())
}

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
