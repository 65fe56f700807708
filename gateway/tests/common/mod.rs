//! Test harness: a fake control plane speaking the link protocol over a real socket, and
//! terminals as plain blocking `TcpStream`s speaking frames. Every wait has a deadline; nothing
//! sleeps in place of an event.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use herald_gateway::{Driver, Gateway, GatewayConfig};
use herald_protocol::CloseCode;
use herald_protocol::credential::{Claims, SigningKey, issue};
use herald_protocol::frame::{Decoder, Frame, Login, LoginOk, encode_ping};
use herald_protocol::link::{
    GroupTopics, KeyEntry, LinkMessage, MAX_LINK_FRAME_BYTES, PushOrder, RevocationEntry, Tables, Target,
    UserSubscriptions, Welcome,
};
use parking_lot::Mutex;
use rkyv::util::AlignedVec;

/// Longest wait for any expected event; generous because CI machines are shared and slow.
pub const WAIT: Duration = Duration::from_secs(20);
pub const KEY_SECRET: [u8; 32] = [7; 32];

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn key() -> SigningKey {
    SigningKey::new(1, KEY_SECRET)
}

pub fn token(user: &str, device: &str) -> String {
    token_with(&key(), user, device, now_secs() - 10, now_secs() + 3600)
}

pub fn token_with(key: &SigningKey, user: &str, device: &str, issued_at: u64, expires_at: u64) -> String {
    let claims = Claims { key_id: key.id, user: user.into(), device: device.into(), issued_at, expires_at };
    issue(key, &claims).unwrap()
}

/// One read from `s` before `deadline` (panics once it has passed), handed to `into`; false at
/// end of stream or reset. A timeout or an interrupted read is not an error (read again).
pub fn read_some(s: &mut TcpStream, deadline: Instant, what: &str, mut into: impl FnMut(&[u8])) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    assert!(!left.is_zero(), "timed out waiting for {what}");
    s.set_read_timeout(Some(left)).unwrap();
    let mut chunk = [0u8; 65536];
    match s.read(&mut chunk) {
        Ok(0) => false,
        Ok(n) => {
            into(&chunk[..n]);
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
        Err(e) => panic!("read failed: {e}"),
    }
}

/// Waits until `f` holds, polling, or panics after `WAIT`.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Conn {
    stream: TcpStream,
    offset: u64,
}

/// A control plane that answers `Hello` with `Welcome` + its tables, records everything the
/// gateway sends, and lets the test send anything.
pub struct FakeCp {
    pub addr: SocketAddr,
    pub tables: Arc<Mutex<Tables>>,
    conn: Arc<Mutex<Option<Conn>>>,
    rx: Receiver<LinkMessage>,
    pub hellos: Arc<std::sync::atomic::AtomicUsize>,
    beats: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeCp {
    pub fn start() -> FakeCp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let tables = Arc::new(Mutex::new(Tables {
            version: 1,
            keys: vec![KeyEntry { key_id: 1, secret: KEY_SECRET }],
            revocations: vec![RevocationEntry {
                user: "revoked".into(),
                all_before: now_secs() + 60,
                devices: vec![],
            }],
            groups: vec![],
        }));
        let conn: Arc<Mutex<Option<Conn>>> = Arc::new(Mutex::new(None));
        let hellos = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let beats = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, rx) = crossbeam_channel::unbounded();
        {
            let (tables, conn, hellos, beats) = (tables.clone(), conn.clone(), hellos.clone(), beats.clone());
            std::thread::spawn(move || {
                for s in listener.incoming() {
                    let Ok(s) = s else { return };
                    *conn.lock() = Some(Conn { stream: s.try_clone().unwrap(), offset: 0 });
                    let (tables, conn, tx, hellos, beats) =
                        (tables.clone(), conn.clone(), tx.clone(), hellos.clone(), beats.clone());
                    std::thread::spawn(move || read_link(s, &tables, &conn, &tx, &hellos, &beats));
                }
            });
        }
        FakeCp { addr, tables, conn, rx, hellos, beats }
    }

    /// Heartbeats the gateway sent (each answered).
    pub fn heartbeats(&self) -> usize {
        self.beats.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn send(&self, msg: &LinkMessage) {
        let mut g = self.conn.lock();
        let c = g.as_mut().expect("no link connection");
        send_on(c, msg);
    }

    /// Drops the current link connection (the gateway must reconnect).
    pub fn drop_link(&self) {
        if let Some(c) = self.conn.lock().take() {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Next message the gateway sent for which `pick` returns Some, within `WAIT`.
    pub fn expect<T>(&self, what: &str, mut pick: impl FnMut(&LinkMessage) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) => {
                    if let Some(t) = pick(&m) {
                        return t;
                    }
                }
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    pub fn wait_online(&self, user: &str, device: &str) {
        self.expect("online", |m| match m {
            LinkMessage::Presence(ps) => ps
                .iter()
                .any(|p| matches!(p, herald_protocol::link::PresenceChange::Online(o) if o.user == user && o.device == device))
                .then_some(()),
            _ => None,
        });
    }

    pub fn wait_offline(&self, user: &str) -> u16 {
        self.expect("offline", |m| match m {
            LinkMessage::Presence(ps) => ps.iter().find_map(|p| match p {
                herald_protocol::link::PresenceChange::Offline(o) if o.user == user => Some(o.code),
                _ => None,
            }),
            _ => None,
        })
    }

    pub fn subscribe(&self, user: &str, groups: &[&str], topics: &[&str]) {
        self.send(&LinkMessage::Subscriptions(vec![UserSubscriptions {
            user: user.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            topics: topics.iter().map(|s| s.to_string()).collect(),
        }]));
    }

    pub fn set_groups(&self, groups: &[(&str, &[&str])]) {
        let mut t = self.tables.lock();
        t.version += 1;
        t.groups = groups
            .iter()
            .map(|(g, ts)| GroupTopics {
                group: g.to_string(),
                topics: ts.iter().map(|s| s.to_string()).collect(),
            })
            .collect();
        let t = t.clone();
        self.send(&LinkMessage::Tables(t));
    }

    pub fn push(&self, push_id: u64, target: Target, seq: u32, flags: u8, payload: Vec<u8>) {
        self.send(&LinkMessage::Push(PushOrder {
            push_id,
            target,
            stream: 1,
            seq,
            flags,
            ttl_secs: 0,
            payload,
            origin: None,
        }));
    }
}

fn send_on(c: &mut Conn, msg: &LinkMessage) {
    let mut buf = BytesMut::new();
    msg.encode(c.offset, &mut buf).unwrap();
    c.stream.write_all(&buf).unwrap();
    c.offset += buf.len() as u64;
}

fn read_link(
    mut s: TcpStream,
    tables: &Mutex<Tables>,
    conn: &Mutex<Option<Conn>>,
    tx: &Sender<LinkMessage>,
    hellos: &std::sync::atomic::AtomicUsize,
    beats: &std::sync::atomic::AtomicUsize,
) {
    let dec = Decoder::new(MAX_LINK_FRAME_BYTES);
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 65536];
    let mut scratch = AlignedVec::new();
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            let Frame::Link(l) = f else { panic!("not a link frame") };
            let m = LinkMessage::decode(&l, &mut scratch).unwrap();
            // Keep the gateway's link alive (it drops a silent control plane).
            if matches!(m, LinkMessage::Heartbeat) {
                beats.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(c) = conn.lock().as_mut() {
                    send_on(c, &LinkMessage::Heartbeat);
                }
                continue;
            }
            if matches!(m, LinkMessage::Hello(_)) {
                hellos.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut g = conn.lock();
                if let Some(c) = g.as_mut() {
                    send_on(c, &LinkMessage::Welcome(Welcome { epoch: 1 }));
                    send_on(c, &LinkMessage::Tables(tables.lock().clone()));
                }
            }
            let _ = tx.send(m);
        }
    }
}

/// Starts a gateway on port 0 talking to a fresh fake control plane, and waits for its tables.
pub fn gateway(driver: Driver, tweak: impl FnOnce(&mut GatewayConfig)) -> (Gateway, FakeCp) {
    let cp = FakeCp::start();
    let mut cfg = GatewayConfig {
        tcp_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        control_plane_addr: cp.addr,
        node_id: "test-node".into(),
        cores: 2,
        driver,
        login_timeout_ms: 2_000,
        heartbeat_interval_secs: 30,
        heartbeat_grace_secs: 60,
        drain_timeout_ms: 1_000,
        ..GatewayConfig::default()
    };
    tweak(&mut cfg);
    let gw = herald_gateway::start(cfg).unwrap();
    assert_eq!(gw.driver(), driver);
    eventually("the gateway's tables", || gw.tables_version() > 0);
    (gw, cp)
}

/// A terminal.
pub struct Term {
    pub s: TcpStream,
    buf: BytesMut,
    dec: Decoder,
}

impl Term {
    pub fn connect(addr: SocketAddr) -> Term {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Term { s, buf: BytesMut::new(), dec: Decoder::new(64 << 20) }
    }

    pub fn send_frame(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        self.s.write_all(&b).unwrap();
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    pub fn ping(&mut self, nonce: u8) {
        let mut b = BytesMut::new();
        encode_ping(nonce, &mut b);
        self.s.write_all(&b).unwrap();
    }

    pub fn send_login(&mut self, token: &str, device: &str) {
        let l = Login::new(
            Bytes::copy_from_slice(token.as_bytes()),
            Bytes::copy_from_slice(device.as_bytes()),
            &[],
        );
        self.send_frame(&Frame::Login(l));
    }

    /// Next frame within `timeout`; None on end of stream.
    pub fn next_within(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).expect("server sent a bad frame") {
                return Some(f);
            }
            if !read_some(&mut self.s, deadline, "a frame", |b| self.buf.extend_from_slice(b)) {
                return None;
            }
        }
    }

    pub fn next(&mut self) -> Option<Frame> {
        self.next_within(WAIT)
    }

    pub fn login(addr: SocketAddr, user: &str, device: &str) -> (Term, LoginOk) {
        let mut t = Term::connect(addr);
        t.send_login(&token(user, device), device);
        match t.next() {
            Some(Frame::LoginOk(ok)) => (t, ok),
            other => panic!("login of {user}/{device} refused: {other:?}"),
        }
    }

    /// Expects a CLOSE with `code`, then end of stream.
    pub fn expect_close(&mut self, code: CloseCode) {
        match self.next() {
            Some(Frame::Close(c)) => assert_eq!(c.code, code, "close reason {:?}", c.reason_str()),
            other => panic!("expected close {code:?}, got {other:?}"),
        }
        assert!(self.next().is_none(), "connection stays open after close");
    }

    /// Reads push frames until the one with sequence `marker`; returns the sequences before it.
    pub fn pushes_until(&mut self, marker: u32) -> BTreeSet<u32> {
        let mut got = BTreeSet::new();
        loop {
            match self.next() {
                Some(Frame::Push(p)) if p.seq == marker => return got,
                Some(Frame::Push(p)) => {
                    got.insert(p.seq);
                }
                Some(Frame::Pong { .. }) => {}
                other => panic!("expected a push, got {other:?}"),
            }
        }
    }
}

/// Generates one test per driver from `fn name(driver: Driver)`.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[test] fn $name() { if herald_gateway::Driver::detect() == herald_gateway::Driver::Uring { super::$name(herald_gateway::Driver::Uring) } })*
        }
        mod epoll {
            $(#[test] fn $name() { super::$name(herald_gateway::Driver::Epoll) })*
        }
    };
}
