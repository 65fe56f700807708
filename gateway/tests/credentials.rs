//! A live session keeps being held to its credential: it is closed when the credential expires,
//! when a revocation covers it (even one made while the gateway's link was down) and when its
//! signing key is withdrawn. Real sockets, a fake control plane; every wait has a deadline.

mod common;

use std::time::{Duration, Instant};

use common::*;
use herald_gateway::Driver;
use herald_protocol::CloseCode;
use herald_protocol::credential::SigningKey;
use herald_protocol::frame::Frame;
use herald_protocol::link::{KeyEntry, LinkMessage, RevocationEntry, TableChange, Target};

/// Logs in with a given token; panics if refused.
fn login_token(gw: &herald_gateway::Gateway, token: &str, device: &str) -> Term {
    let mut t = Term::connect(gw.tcp_addr());
    t.send_login(token, device);
    match t.next() {
        Some(Frame::LoginOk(_)) => t,
        other => panic!("login of {device} refused: {other:?}"),
    }
}

/// Expects a push with sequence `seq` next (PONGs aside).
fn expect_push(t: &mut Term, seq: u32) {
    loop {
        match t.next() {
            Some(Frame::Push(p)) => {
                assert_eq!(p.seq, seq);
                return;
            }
            Some(Frame::Pong { .. }) => {}
            other => panic!("expected push {seq}, got {other:?}"),
        }
    }
}

fn revocation_made_while_the_link_is_down_closes_the_session_when_it_returns(driver: Driver) {
    let (gw, cp) = gateway(driver, |_| {});
    // One at a time: the two may land on different cores, whose Online reports can arrive in
    // either order, and waiting for one skips the other.
    let (mut lost, _) = Term::login(gw.tcp_addr(), "lost", "phone");
    cp.wait_online("lost", "phone");
    let (mut kept, _) = Term::login(gw.tcp_addr(), "kept", "phone");
    cp.wait_online("kept", "phone");

    // The control plane revokes `lost` while the gateway cannot hear it: the revocation is only
    // in the tables the gateway gets when the link comes back (no delta, no kick).
    {
        let mut t = cp.tables.lock();
        t.version = 50;
        t.revocations.push(RevocationEntry {
            user: "lost".into(),
            all_before: now_secs() + 1,
            devices: vec![],
        });
    }
    let hellos = cp.hellos.load(std::sync::atomic::Ordering::SeqCst);
    cp.drop_link();
    eventually("the link back with the new tables", || {
        cp.hellos.load(std::sync::atomic::Ordering::SeqCst) > hellos && gw.tables_version() == 50
    });
    // A push right behind the tables must not reach the revoked session.
    cp.push(1, Target::User("lost".into()), 1, 0, b"must not arrive".to_vec());
    lost.expect_close(CloseCode::AUTH_REVOKED);
    assert_eq!(cp.wait_offline("lost"), CloseCode::AUTH_REVOKED.0);
    cp.push(2, Target::User("kept".into()), 2, 0, b"still here".to_vec());
    expect_push(&mut kept, 2);
    // A new login with the revoked credential is refused too.
    let mut again = Term::connect(gw.tcp_addr());
    again.send_login(&token("lost", "phone"), "phone");
    again.expect_close(CloseCode::AUTH_REVOKED);
}

fn a_session_is_closed_when_its_credential_expires(driver: Driver) {
    // Heartbeat grace 60 s: only the credential's expiry can end these sessions within `WAIT`.
    let (gw, cp) = gateway(driver, |_| {});
    let expires_at = now_secs() + 2;
    let mut short = login_token(&gw, &token_with(&key(), "short", "d", now_secs() - 10, expires_at), "d");
    let (mut long, _) = Term::login(gw.tcp_addr(), "long", "d");
    cp.wait_online("short", "d");
    cp.push(1, Target::User("short".into()), 1, 0, b"before expiry".to_vec());
    expect_push(&mut short, 1);
    short.expect_close(CloseCode::AUTH_EXPIRED);
    assert!(now_secs() >= expires_at, "closed before the credential expired");
    assert_eq!(cp.wait_offline("short"), CloseCode::AUTH_EXPIRED.0);
    cp.push(2, Target::User("long".into()), 2, 0, b"still here".to_vec());
    expect_push(&mut long, 2);
}

fn a_credential_that_expires_right_after_login_still_closes_at_expiry(driver: Driver) {
    // Login deadline 10 s, longer than the credential's life: the expiry needs its own deadline.
    let (gw, _cp) = gateway(driver, |c| c.login_timeout_ms = 10_000);
    let expires_at = now_secs() + 2;
    let mut t = login_token(&gw, &token_with(&key(), "brief", "d", now_secs() - 10, expires_at), "d");
    let started = Instant::now();
    t.expect_close(CloseCode::AUTH_EXPIRED);
    assert!(now_secs() >= expires_at, "closed before the credential expired");
    assert!(started.elapsed() < Duration::from_secs(5), "closed {:?} after login", started.elapsed());
}

fn a_withdrawn_key_closes_the_sessions_it_signed(driver: Driver) {
    let (gw, cp) = gateway(driver, |_| {});
    let leaked = SigningKey::new(2, [9; 32]);
    cp.send(&LinkMessage::TablesDelta(vec![TableChange::KeyAdded(KeyEntry { key_id: 2, secret: [9; 32] })]));
    let leaked_token = token_with(&leaked, "w", "old", now_secs() - 10, now_secs() + 3600);
    eventually("the second key", || {
        let mut t = Term::connect(gw.tcp_addr());
        t.send_login(&leaked_token, "old");
        matches!(t.next(), Some(Frame::LoginOk(_)))
    });
    let mut signed = login_token(&gw, &leaked_token, "old");
    let (mut other, _) = Term::login(gw.tcp_addr(), "w", "new");
    cp.send(&LinkMessage::TablesDelta(vec![TableChange::KeyRemoved(2)]));
    signed.expect_close(CloseCode::AUTH_REVOKED);
    cp.push(1, Target::User("w".into()), 1, 0, b"other key".to_vec());
    expect_push(&mut other, 1);
    let mut again = Term::connect(gw.tcp_addr());
    again.send_login(&leaked_token, "old");
    again.expect_close(CloseCode::AUTH_FORGED);
}

both_drivers!(
    revocation_made_while_the_link_is_down_closes_the_session_when_it_returns,
    a_session_is_closed_when_its_credential_expires,
    a_credential_that_expires_right_after_login_still_closes_at_expiry,
    a_withdrawn_key_closes_the_sessions_it_signed,
);
