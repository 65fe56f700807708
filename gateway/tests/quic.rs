//! The gateway over QUIC, under both drivers: login and push, both transports in one fan-out, a
//! client that changes its address mid-session (on the same core and on another core), a client
//! that does not trust the certificate, and hostile datagrams. The terminal is a stock quinn
//! client on a tokio current-thread runtime; every wait has a deadline.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use common::*;
use herald_gateway::{Driver, Gateway};
use herald_protocol::CloseCode;
use herald_protocol::frame::{Ack, AckRange, Decoder, Frame, Login, LoginOk, PushFlags, encode_ping};
use herald_protocol::link::{LinkMessage, Target};

/// A development certificate in a fresh directory (kept alive by the returned guard).
fn dev_cert() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, generated) = herald_gateway::quic_dev_certificate(dir.path()).unwrap();
    assert!(generated);
    (dir, cert, key)
}

fn quic_gateway(driver: Driver) -> (Gateway, FakeCp, tempfile::TempDir) {
    let (dir, cert, key) = dev_cert();
    let (gw, cp) = gateway(driver, |c| {
        c.quic_addr = Some("127.0.0.1:0".parse().unwrap());
        c.quic_cert = Some(cert);
        c.quic_key = Some(key);
    });
    (gw, cp, dir)
}

fn client_config(ca_pem: &[u8]) -> quinn::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![herald_gateway::QUIC_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A QUIC terminal: one connection, one bidirectional stream, frames as over TCP.
struct QTerm {
    rt: tokio::runtime::Runtime,
    ep: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
    dec: Decoder,
}

impl QTerm {
    fn connect(addr: SocketAddr, ca_pem: &[u8]) -> Result<QTerm, quinn::ConnectionError> {
        // One worker thread drives the connection while the test thread is elsewhere (an ACK
        // written before waiting on the fake control plane must still go out).
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let cfg = client_config(ca_pem);
        let (ep, conn, send, recv) = rt.block_on(async {
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            ep.set_default_client_config(cfg);
            let conn = tokio::time::timeout(WAIT, ep.connect(addr, "localhost").unwrap())
                .await
                .expect("handshake timed out")?;
            let (send, recv) = conn.open_bi().await?;
            Ok::<_, quinn::ConnectionError>((ep, conn, send, recv))
        })?;
        Ok(QTerm { rt, ep, conn, send, recv, buf: BytesMut::new(), dec: Decoder::new(64 << 20) })
    }

    fn login(addr: SocketAddr, ca_pem: &[u8], user: &str, device: &str) -> (QTerm, LoginOk) {
        QTerm::login_token(addr, ca_pem, &token(user, device), device)
    }

    fn login_token(addr: SocketAddr, ca_pem: &[u8], token: &str, device: &str) -> (QTerm, LoginOk) {
        let mut t = QTerm::connect(addr, ca_pem).expect("quic connect");
        t.send_frame(&Frame::Login(Login::new(
            Bytes::copy_from_slice(token.as_bytes()),
            Bytes::copy_from_slice(device.as_bytes()),
            &[],
        )));
        match t.next() {
            Some(Frame::LoginOk(ok)) => (t, ok),
            other => panic!("login of {device} refused: {other:?}"),
        }
    }

    fn send_raw(&mut self, b: &[u8]) {
        self.rt.block_on(self.send.write_all(b)).unwrap();
    }

    fn send_frame(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        self.send_raw(&b);
    }

    fn ping(&mut self, nonce: u8) {
        let mut b = BytesMut::new();
        encode_ping(nonce, &mut b);
        self.send_raw(&b);
    }

    /// Next frame within `WAIT`; None when the stream or connection ended.
    fn next(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).expect("server sent a bad frame") {
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for a frame");
            let mut chunk = [0u8; 4096];
            let recv = &mut self.recv;
            let read = self.rt.block_on(async { tokio::time::timeout(left, recv.read(&mut chunk)).await });
            match read {
                Err(_) => panic!("timed out waiting for a frame"),
                Ok(Ok(Some(n))) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Ok(None)) | Ok(Err(_)) => return None,
            }
        }
    }

    fn expect_pong(&mut self, nonce: u8) {
        self.ping(nonce);
        loop {
            match self.next() {
                Some(Frame::Pong { nonce: n }) if n == nonce => return,
                Some(Frame::Pong { .. }) => {}
                other => panic!("expected pong {nonce}, got {other:?}"),
            }
        }
    }

    /// Closes the connection (as a terminal that goes away cleanly) and waits until it is gone.
    fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        let ep = self.ep.clone();
        self.rt.block_on(async { tokio::time::timeout(WAIT, ep.wait_idle()).await }).unwrap();
    }

    /// Moves the client to a new local port (as after a NAT rebinding); the next packet it sends
    /// comes from the new address.
    fn rebind(&mut self) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        let _guard = self.rt.enter();
        self.ep.rebind(s).unwrap();
        addr
    }
}

fn expect_push(t: &mut QTerm, seq: u32) {
    loop {
        match t.next() {
            Some(Frame::Push(p)) if p.seq == seq => return,
            Some(Frame::Pong { .. }) => {}
            other => panic!("expected push {seq}, got {other:?}"),
        }
    }
}

fn login_and_push_over_quic(driver: Driver) {
    let (gw, cp, dir) = quic_gateway(driver);
    let ca = std::fs::read(dir.path().join("quic-dev-cert.pem")).unwrap();
    let addr = gw.quic_addr().unwrap();
    let (mut t, ok) = QTerm::login(addr, &ca, "alice", "phone");
    assert_eq!(ok.heartbeat_interval_secs, 30);
    cp.wait_online("alice", "phone");
    t.expect_pong(42);
    cp.push(1, Target::User("alice".into()), 7, 0, b"hello".to_vec());
    match t.next() {
        Some(Frame::Push(p)) => assert_eq!((p.seq, &p.payload[..]), (7, &b"hello"[..])),
        other => panic!("expected push, got {other:?}"),
    }
    t.send_frame(&Frame::Ack(Ack::new(&[AckRange { stream: 1, first: 7, last: 7 }])));
    let r = cp.expect("receipt", |m| match m {
        LinkMessage::Receipts(rs) => rs.first().cloned(),
        _ => None,
    });
    assert_eq!((r.user.as_str(), r.device.as_str(), r.last), ("alice", "phone", 7));
    // A second login of the same device replaces the first, over QUIC too.
    let (mut t2, _) = QTerm::login(addr, &ca, "alice", "phone");
    match t.next() {
        Some(Frame::GoAway(g)) => assert_eq!(g.reason, CloseCode::REPLACED),
        other => panic!("expected goaway, got {other:?}"),
    }
    assert!(t.next().is_none(), "replaced stream stays open");
    t2.expect_pong(1);
    assert_eq!(cp.wait_offline("alice"), CloseCode::REPLACED.0);
}

fn both_transports_in_one_fanout(driver: Driver) {
    let (gw, cp, dir) = quic_gateway(driver);
    let ca = std::fs::read(dir.path().join("quic-dev-cert.pem")).unwrap();
    let mut tcp = Vec::new();
    let mut quic = Vec::new();
    for i in 0..3 {
        let (t, _) = Term::login(gw.tcp_addr(), &format!("t{i}"), "d");
        cp.wait_online(&format!("t{i}"), "d");
        tcp.push(t);
        let (q, _) = QTerm::login(gw.quic_addr().unwrap(), &ca, &format!("q{i}"), "d");
        cp.wait_online(&format!("q{i}"), "d");
        quic.push(q);
    }
    for i in 0..3 {
        cp.subscribe(&format!("t{i}"), &[], &["news"]);
        cp.subscribe(&format!("q{i}"), &[], &["news"]);
    }
    // Subscriptions travel on the mailbox like pushes: a pong proves they were applied first.
    for q in &mut quic {
        q.expect_pong(0);
    }
    cp.push(9, Target::Topic("news".into()), 1, 0, b"all".to_vec());
    for t in &mut tcp {
        match t.next() {
            Some(Frame::Push(p)) => assert_eq!(p.seq, 1),
            other => panic!("tcp: expected push, got {other:?}"),
        }
    }
    for q in &mut quic {
        expect_push(q, 1);
    }
    let report = cp.expect("push report", |m| match m {
        LinkMessage::Reports(rs) => rs.iter().find(|r| r.push_id == 9).cloned(),
        _ => None,
    });
    assert!(report.sent >= 1);
    // Drain: every QUIC session gets GOAWAY SHUTTING_DOWN, like TCP ones.
    gw.shutdown();
    for q in &mut quic {
        match q.next() {
            Some(Frame::GoAway(g)) => assert_eq!(g.reason, CloseCode::SHUTTING_DOWN),
            other => panic!("expected goaway, got {other:?}"),
        }
    }
    gw.join().unwrap();
}

fn rebinding_keeps_the_session(driver: Driver) {
    let (gw, cp, dir) = quic_gateway(driver);
    let ca = std::fs::read(dir.path().join("quic-dev-cert.pem")).unwrap();
    let (mut t, ok) = QTerm::login(gw.quic_addr().unwrap(), &ca, "mover", "phone");
    cp.wait_online("mover", "phone");
    cp.subscribe("mover", &[], &["traffic"]);
    // A push that wants an acknowledgement, received here and acknowledged only after the moves.
    cp.push(1, Target::User("mover".into()), 1, PushFlags::ACK_REQUIRED.0, b"before".to_vec());
    expect_push(&mut t, 1);
    // Rebind until a datagram from the new address has landed on the other core at least once
    // (SO_REUSEPORT hashes the 4-tuple; each new port is a coin toss between the two cores).
    let mut seq = 1;
    for round in 0..40u8 {
        t.rebind();
        t.expect_pong(round);
        seq += 1;
        cp.push(u64::from(seq), Target::User("mover".into()), seq, 0, b"after".to_vec());
        expect_push(&mut t, seq);
        if gw.quic_forwarded() > 0 && round >= 2 {
            break;
        }
    }
    assert!(gw.quic_forwarded() > 0, "no datagram ever reached the other core");
    // The subscription made before the moves still holds.
    seq += 1;
    cp.push(u64::from(seq), Target::Topic("traffic".into()), seq, 0, b"jam".to_vec());
    expect_push(&mut t, seq);
    // A push sent as the terminal moves (possibly to the old address) still arrives: QUIC
    // retransmits it on the new path.
    seq += 1;
    cp.push(u64::from(seq), Target::User("mover".into()), seq, 0, b"in flight".to_vec());
    t.rebind();
    expect_push(&mut t, seq);
    // The message left unacknowledged before the moves is acknowledged from the new address.
    t.send_frame(&Frame::Ack(Ack::new(&[AckRange { stream: 1, first: 1, last: 1 }])));
    let r = cp.expect("receipt", |m| match m {
        LinkMessage::Receipts(rs) => rs.first().cloned(),
        _ => None,
    });
    assert_eq!((r.user.as_str(), r.device.as_str(), r.last), ("mover", "phone", 1));
    // Same session all along: no new login, no offline.
    let m = gw.metrics_text();
    let logins: u64 = m
        .lines()
        .filter(|l| l.starts_with("herald_logins_ok_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(logins, 1, "{m}");
    assert!(ok.session_id > 0);
    t.close();
    assert_eq!(cp.wait_offline("mover"), CloseCode::NORMAL.0);
}

fn a_client_with_another_ca_refuses_the_certificate(driver: Driver) {
    let (gw, _cp, _dir) = quic_gateway(driver);
    let (_other_dir, other_cert, _) = dev_cert();
    let other_ca = std::fs::read(other_cert).unwrap();
    match QTerm::connect(gw.quic_addr().unwrap(), &other_ca) {
        Err(quinn::ConnectionError::TransportError(e)) => {
            assert!(e.to_string().to_lowercase().contains("certificate"), "{e}")
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a certificate from another CA was accepted"),
    }
    eventually("the refused connection to be gone", || gw.connections() == 0);
}

fn hostile_datagrams_do_not_hurt_a_core(driver: Driver) {
    let (gw, cp, dir) = quic_gateway(driver);
    let ca = std::fs::read(dir.path().join("quic-dev-cert.pem")).unwrap();
    let addr = gw.quic_addr().unwrap();
    let (mut t, _) = QTerm::login(addr, &ca, "steady", "d");
    cp.wait_online("steady", "d");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // From many source ports, so that both cores get their share.
    for _ in 0..32 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..64 {
            let len = (rand() % 1400) as usize + 1;
            let mut d: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
            match i % 4 {
                // A long-header Initial, QUIC v1, cut short anywhere.
                0 => {
                    d[0] = 0xc0;
                    d[1..5].copy_from_slice(&1u32.to_be_bytes());
                }
                // A short header naming core 0 or 1 (routed, then unknown there).
                1 if len > 9 => d[0] = 0x40,
                1 => {}
                // A Handshake packet with an 8-byte ID.
                2 if len > 14 => {
                    d[0] = 0xe0;
                    d[5] = 8;
                }
                _ => {}
            }
            let _ = s.send_to(&d, addr);
        }
        // A truncated copy of a real Initial's first bytes (padded size, wrong length field).
        let mut init = vec![0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0x44, 0xd0];
        init.resize(1200, 0);
        let _ = s.send_to(&init[..(rand() % 1200) as usize], addr);
    }
    // The existing session still works, and so does a new one.
    t.expect_pong(3);
    cp.push(5, Target::User("steady".into()), 5, 0, b"still here".to_vec());
    expect_push(&mut t, 5);
    let (mut fresh, _) = QTerm::login(addr, &ca, "fresh", "d");
    fresh.expect_pong(4);
}

/// Over QUIC too, a session ends with CLOSE `AUTH_EXPIRED` when its credential expires (the
/// heartbeat grace, 60 s, is far away).
fn a_session_is_closed_when_its_credential_expires(driver: Driver) {
    let (gw, cp, dir) = quic_gateway(driver);
    let ca = std::fs::read(dir.path().join("quic-dev-cert.pem")).unwrap();
    let addr = gw.quic_addr().unwrap();
    let expires_at = now_secs() + 2;
    let token = token_with(&key(), "short", "d", now_secs() - 10, expires_at);
    let (mut t, _) = QTerm::login_token(addr, &ca, &token, "d");
    match t.next() {
        Some(Frame::Close(c)) => assert_eq!(c.code, CloseCode::AUTH_EXPIRED),
        other => panic!("expected close, got {other:?}"),
    }
    assert!(now_secs() >= expires_at, "closed before the credential expired");
    assert!(t.next().is_none(), "the stream stays open after close");
    assert_eq!(cp.wait_offline("short"), CloseCode::AUTH_EXPIRED.0);
}

both_drivers!(
    a_session_is_closed_when_its_credential_expires,
    login_and_push_over_quic,
    both_transports_in_one_fanout,
    rebinding_keeps_the_session,
    a_client_with_another_ca_refuses_the_certificate,
    hostile_datagrams_do_not_hurt_a_core,
);
