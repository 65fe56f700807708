//! The gateway over real sockets, under both drivers: login, heartbeats, replacement, fan-out to
//! every kind of target, live group changes, backpressure, hostile bytes, link resync, drain.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use herald_gateway::Driver;
use herald_protocol::CloseCode;
use herald_protocol::credential::SigningKey;
use herald_protocol::frame::{Ack, AckRange, Frame, PushFlags};
use herald_protocol::link::{GroupTopics, LinkMessage, TableChange, Target};

fn login_ok_ping_pong_and_receipts(driver: Driver) {
    let (gw, cp) = gateway(driver, |_| {});
    let (mut t, ok) = Term::login(gw.tcp_addr(), "alice", "phone");
    assert_eq!(ok.heartbeat_interval_secs, 30);
    assert!(ok.session_id > 0);
    cp.wait_online("alice", "phone");
    t.ping(42);
    assert_eq!(t.next(), Some(Frame::Pong { nonce: 42 }));
    t.send_frame(&Frame::Ack(Ack::new(&[AckRange { stream: 3, first: 0, last: 9 }])));
    let r = cp.expect("receipt", |m| match m {
        LinkMessage::Receipts(rs) => rs.first().cloned(),
        _ => None,
    });
    assert_eq!((r.user.as_str(), r.device.as_str(), r.stream, r.last), ("alice", "phone", 3, 9));
    drop(t);
    assert_eq!(cp.wait_offline("alice"), CloseCode::NORMAL.0);
}

fn login_refusals(driver: Driver) {
    let (gw, _cp) = gateway(driver, |c| c.login_timeout_ms = 200);
    let addr = gw.tcp_addr();
    let now = now_secs();
    let cases: Vec<(&str, String, &str, CloseCode)> = vec![
        ("expired", token_with(&key(), "u", "d", now - 100, now - 1), "d", CloseCode::AUTH_EXPIRED),
        (
            "forged",
            token_with(&SigningKey::new(1, [9; 32]), "u", "d", now, now + 60),
            "d",
            CloseCode::AUTH_FORGED,
        ),
        ("revoked", token("revoked", "d"), "d", CloseCode::AUTH_REVOKED),
        ("malformed", "!!not-a-token!!".to_string(), "d", CloseCode::AUTH_MALFORMED),
        ("device mismatch", token("u", "d"), "other", CloseCode::DEVICE_MISMATCH),
    ];
    for (what, tok, device, code) in cases {
        let mut t = Term::connect(addr);
        t.send_login(&tok, device);
        match t.next() {
            Some(Frame::Close(c)) => assert_eq!(c.code, code, "{what}"),
            other => panic!("{what}: expected close, got {other:?}"),
        }
    }
    // Too slow: connected, never logs in.
    let started = Instant::now();
    let mut t = Term::connect(addr);
    t.expect_close(CloseCode::LOGIN_TIMEOUT);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(190) && took < Duration::from_secs(10), "closed after {took:?}");
    let m = gw.metrics_text();
    assert!(m.contains("herald_logins_failed_total{reason=\"auth_forged\"} 1"), "{m}");
    assert!(m.contains("herald_logins_failed_total{reason=\"login_timeout\"} 1"), "{m}");
}

fn heartbeat_timeout_closes_and_reports_offline(driver: Driver) {
    let (gw, cp) = gateway(driver, |c| c.heartbeat_grace_secs = 1);
    let (mut quiet, _) = Term::login(gw.tcp_addr(), "quiet", "d");
    let (mut chatty, _) = Term::login(gw.tcp_addr(), "chatty", "d");
    let started = Instant::now();
    // The chatty one pings every 200 ms and outlives the grace period.
    let mut nonce = 0u8;
    while started.elapsed() < Duration::from_millis(1_400) {
        chatty.ping(nonce);
        assert_eq!(chatty.next(), Some(Frame::Pong { nonce }));
        nonce += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    quiet.expect_close(CloseCode::HEARTBEAT_TIMEOUT);
    assert_eq!(cp.wait_offline("quiet"), CloseCode::HEARTBEAT_TIMEOUT.0);
    chatty.ping(1);
    assert_eq!(chatty.next(), Some(Frame::Pong { nonce: 1 }));
}

fn second_login_replaces_first(driver: Driver) {
    let (gw, cp) = gateway(driver, |_| {});
    let (mut first, ok1) = Term::login(gw.tcp_addr(), "bob", "tablet");
    // Several attempts so that (by SO_REUSEPORT's hash) both same-core and cross-core cases occur.
    let (mut keep, _) = Term::login(gw.tcp_addr(), "bob", "phone");
    let mut prev = (first, ok1.session_id);
    for _ in 0..4 {
        let (next, ok) = Term::login(gw.tcp_addr(), "bob", "tablet");
        assert!(ok.session_id > prev.1);
        first = prev.0;
        match first.next() {
            Some(Frame::GoAway(g)) => assert_eq!(g.reason, CloseCode::REPLACED),
            other => panic!("expected goaway, got {other:?}"),
        }
        assert!(first.next().is_none());
        assert_eq!(cp.wait_offline("bob"), CloseCode::REPLACED.0);
        prev = (next, ok.session_id);
    }
    // Another device of the same user is untouched.
    keep.ping(5);
    assert_eq!(keep.next(), Some(Frame::Pong { nonce: 5 }));
}

/// Users and what they follow; groups and their topics. Each push names its expected recipients.
fn fanout_reaches_exactly_the_targets(driver: Driver) {
    let (gw, cp) = gateway(driver, |_| {});
    cp.set_groups(&[("g1", &["t3"]), ("g2", &["t1", "t4"])]);
    let subs: [(&str, &[&str], &[&str]); 4] =
        [("a", &["g1"], &["t1"]), ("b", &[], &["t2"]), ("c", &["g1", "g2"], &[]), ("d", &[], &[])];
    let mut terms = Vec::new();
    for (u, groups, topics) in subs {
        let (t, _) = Term::login(gw.tcp_addr(), u, "dev");
        cp.wait_online(u, "dev");
        cp.subscribe(u, groups, topics);
        terms.push((u, t));
    }
    // A second device of `a`.
    let (a2, _) = Term::login(gw.tcp_addr(), "a", "dev2");
    cp.wait_online("a", "dev2");
    // As the control plane does for every Online: the user's subscriptions, again.
    cp.subscribe("a", &["g1"], &["t1"]);
    terms.push(("a2", a2));
    let cases: Vec<(Target, &[&str])> = vec![
        (Target::User("a".into()), &["a", "a2"]),
        (Target::Users(vec!["b".into(), "d".into(), "nobody".into()]), &["b", "d"]),
        (Target::Device { user: "a".into(), device: "dev2".into() }, &["a2"]),
        (Target::Group("g1".into()), &["a", "a2", "c"]),
        (Target::Topic("t1".into()), &["a", "a2", "c"]),
        (Target::Topic("t3".into()), &["a", "a2", "c"]),
        (Target::Topic("t4".into()), &["c"]),
        (Target::Condition("'t1' in topics && !('t2' in topics)".into()), &["a", "a2", "c"]),
        (Target::Condition("!('t1' in topics)".into()), &["b", "d"]),
        (Target::Condition("'t2' in topics || ('t4' in topics && 't3' in topics)".into()), &["b", "c"]),
        (Target::Condition("'nope' in topics".into()), &[]),
        (Target::Condition("this is not a condition".into()), &[]),
    ];
    let mut seq = 0;
    let mut expected: Vec<(&str, BTreeSet<u32>)> = terms.iter().map(|(u, _)| (*u, BTreeSet::new())).collect();
    for (target, who) in &cases {
        seq += 1;
        cp.push(u64::from(seq), target.clone(), seq, 0, vec![seq as u8; 40]);
        for (u, set) in expected.iter_mut() {
            if who.contains(u) {
                set.insert(seq);
            }
        }
    }
    // Live group change: g1 now follows t2 and d joins g1.
    cp.send(&LinkMessage::TablesDelta(vec![TableChange::Group(GroupTopics {
        group: "g1".into(),
        topics: vec!["t2".into()],
    })]));
    cp.subscribe("d", &["g1"], &[]);
    seq += 1;
    cp.push(u64::from(seq), Target::Topic("t2".into()), seq, 0, vec![1; 8]);
    for (u, set) in expected.iter_mut() {
        if ["a", "a2", "b", "c", "d"].contains(u) {
            set.insert(seq);
        }
    }
    let marker = seq + 1;
    cp.push(99, Target::Users(vec!["a".into(), "b".into(), "c".into(), "d".into()]), marker, 0, vec![]);
    for ((u, t), (_, want)) in terms.iter_mut().zip(&expected) {
        assert_eq!(&t.pushes_until(marker), want, "recipient {u}");
    }
    let report = cp.expect("report of push 1", |m| match m {
        LinkMessage::Reports(rs) => rs.iter().find(|r| r.push_id == 5).copied(),
        _ => None,
    });
    assert_eq!((report.sent, report.dropped), (3, 0));
}

fn slow_consumer_is_dropped_and_does_not_delay_others(driver: Driver) {
    let (gw, cp) = gateway(driver, |c| c.outbound_queue_frames = 8);
    let (stuck, _) = Term::login(gw.tcp_addr(), "stuck", "d");
    cp.wait_online("stuck", "d");
    let (mut reader, _) = Term::login(gw.tcp_addr(), "reader", "d");
    cp.wait_online("reader", "d");
    cp.subscribe("stuck", &[], &["news"]);
    cp.subscribe("reader", &[], &["news"]);
    let n = 300u32;
    let persistent = n + 1..=n + 20;
    let marker = n + 21;
    let reading = std::thread::spawn(move || reader.pushes_until(marker));
    // Non-persistent first, more than the stuck terminal's socket buffers hold: its queue fills
    // and drops (no disconnect yet)...
    for seq in 1..=n {
        cp.push(u64::from(seq), Target::User("stuck".into()), seq, 0, vec![0xab; 32 * 1024]);
    }
    // ...then persistent ones, which cannot be dropped: the stuck one is disconnected.
    for seq in persistent.clone() {
        cp.push(u64::from(seq), Target::Topic("news".into()), seq, PushFlags::ACK_REQUIRED.0, vec![1; 1024]);
    }
    cp.push(0, Target::User("reader".into()), marker, 0, vec![]);
    let got = reading.join().unwrap();
    assert_eq!(got, persistent.collect(), "the reader got every persistent push, undelayed");
    assert_eq!(cp.wait_offline("stuck"), CloseCode::SLOW_CONSUMER.0);
    let m = gw.metrics_text();
    assert!(m.contains("herald_closes_total{reason=\"slow_consumer\"} 1"), "{m}");
    assert!(!m.contains("herald_drops_total{reason=\"queue_full_oldest\"} 0"), "{m}");
    drop(stuck);
}

fn hostile_bytes_close_only_that_connection(driver: Driver) {
    let (gw, _cp) = gateway(driver, |c| c.max_frame_bytes = 1024);
    let (mut good, _) = Term::login(gw.tcp_addr(), "good", "d");
    let (mut bad, _) = Term::login(gw.tcp_addr(), "bad", "d");
    bad.send_raw(&[0xee, 1, 2, 3]);
    bad.expect_close(CloseCode::PROTOCOL_ERROR);
    let mut big = Term::connect(gw.tcp_addr());
    big.send_raw(&[0x10, 0xff, 0xff, 0x00]);
    big.expect_close(CloseCode::FRAME_TOO_LARGE);
    let (mut twice, _) = Term::login(gw.tcp_addr(), "twice", "d");
    twice.send_login(&token("twice", "d"), "d");
    twice.expect_close(CloseCode::PROTOCOL_ERROR);
    good.ping(9);
    assert_eq!(good.next(), Some(Frame::Pong { nonce: 9 }));
}

fn link_loss_resyncs_and_keeps_terminals(driver: Driver) {
    let (gw, cp) = gateway(driver, |_| {});
    let (mut t, ok) = Term::login(gw.tcp_addr(), "carol", "d");
    cp.wait_online("carol", "d");
    cp.drop_link();
    eventually("a second hello", || cp.hellos.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    let resent = cp.expect("resync presence", |m| match m {
        LinkMessage::Presence(ps) => ps.iter().find_map(|p| match p {
            herald_protocol::link::PresenceChange::Online(o) if o.user == "carol" => Some(o.session_id),
            _ => None,
        }),
        _ => None,
    });
    assert_eq!(resent, ok.session_id);
    t.ping(1);
    assert_eq!(t.next(), Some(Frame::Pong { nonce: 1 }));
    cp.subscribe("carol", &[], &["x"]);
    cp.push(1, Target::Topic("x".into()), 1, 0, vec![]);
    assert!(matches!(t.next(), Some(Frame::Push(p)) if p.seq == 1));
}

fn drain_sends_goaway_and_joins(driver: Driver) {
    let (gw, cp) = gateway(driver, |c| {
        c.drain_reconnect_after_ms = 1234;
        c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    });
    let metrics = gw.metrics_addr().unwrap();
    let mut body = String::new();
    let mut s = std::net::TcpStream::connect(metrics).unwrap();
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200") && body.contains("herald_connections{core=\"0\"}"), "{body}");

    let (mut a, _) = Term::login(gw.tcp_addr(), "a", "d");
    let (mut b, _) = Term::login(gw.tcp_addr(), "b", "d");
    let pending = Term::connect(gw.tcp_addr());
    cp.wait_online("b", "d");
    let addr = gw.tcp_addr();
    gw.shutdown();
    for t in [&mut a, &mut b] {
        match t.next() {
            Some(Frame::GoAway(g)) => {
                assert_eq!((g.reason, g.reconnect_after_ms), (CloseCode::SHUTTING_DOWN, 1234));
            }
            other => panic!("expected goaway, got {other:?}"),
        }
        assert!(t.next().is_none());
    }
    let started = Instant::now();
    gw.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "drain did not finish");
    assert!(std::net::TcpStream::connect(addr).is_err(), "still accepting after drain");
    drop(pending);
}

both_drivers!(
    login_ok_ping_pong_and_receipts,
    login_refusals,
    heartbeat_timeout_closes_and_reports_offline,
    second_login_replaces_first,
    fanout_reaches_exactly_the_targets,
    slow_consumer_is_dropped_and_does_not_delay_others,
    hostile_bytes_close_only_that_connection,
    link_loss_resyncs_and_keeps_terminals,
    drain_sends_goaway_and_joins,
);
