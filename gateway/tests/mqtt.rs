//! The MQTT listener over real sockets, under both drivers and both MQTT versions: CONNECT
//! accepted and refused, SUBSCRIBE codes, pushes as PUBLISH (QoS 1 → PUBACK → receipt, QoS 0 for
//! TTL 0, topics per target kind), keep-alive, refused PUBLISH, malformed packets, replacement
//! across protocols, and the backlog of persistent vs clean sessions. The client is written here
//! byte by byte, so the gateway is checked against the spec's bytes, not against our own codec.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use herald_gateway::{Driver, Gateway};
use herald_protocol::CloseCode;
use herald_protocol::frame::{Frame, PushFlags};
use herald_protocol::link::{LinkMessage, PublishOutcome, PublishResult, PushOrder, Target, TerminalPublish};
use herald_protocol::payload::{DataEntry, PushPayload};

const V3: u8 = 4;
const V5: u8 = 5;

fn put_str(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u16).to_be_bytes());
    b.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A server packet: first byte and body.
#[derive(Debug)]
struct Pkt {
    first: u8,
    body: Vec<u8>,
}

#[derive(Debug)]
struct Pub {
    topic: String,
    qos: u8,
    dup: bool,
    pid: u16,
    payload: Vec<u8>,
}

struct Client {
    s: TcpStream,
    v: u8,
    buf: Vec<u8>,
}

struct Opts<'a> {
    client_id: &'a str,
    user: Option<&'a str>,
    password: Option<String>,
    clean: bool,
    keep_alive: u16,
    session_expiry: u32,
    /// (topic, payload, QoS, 5.0 will delay).
    will: Option<(&'a str, &'a [u8], u8, u32)>,
}

impl<'a> Opts<'a> {
    fn new(user: &'a str, device: &'a str) -> Opts<'a> {
        Opts {
            client_id: device,
            user: Some(user),
            password: Some(token(user, device)),
            clean: true,
            keep_alive: 60,
            session_expiry: 0,
            will: None,
        }
    }
}

impl Client {
    fn open(addr: SocketAddr, v: u8, o: &Opts<'_>) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut c = Client { s, v, buf: Vec::new() };
        let mut b = Vec::new();
        put_str(&mut b, b"MQTT");
        b.push(v);
        let will_flags = o.will.map_or(0, |(_, _, qos, _)| 0x04 | qos << 3);
        let flags = u8::from(o.clean) << 1
            | u8::from(o.user.is_some()) << 7
            | u8::from(o.password.is_some()) << 6
            | will_flags;
        b.push(flags);
        b.extend_from_slice(&o.keep_alive.to_be_bytes());
        if v == V5 {
            if o.session_expiry > 0 {
                b.extend_from_slice(&[5, 0x11]);
                b.extend_from_slice(&o.session_expiry.to_be_bytes());
            } else {
                b.push(0);
            }
        }
        put_str(&mut b, o.client_id.as_bytes());
        if let Some((topic, payload, _, delay)) = o.will {
            if v == V5 {
                if delay > 0 {
                    b.extend_from_slice(&[5, 0x18]);
                    b.extend_from_slice(&delay.to_be_bytes());
                } else {
                    b.push(0);
                }
            }
            put_str(&mut b, topic.as_bytes());
            put_str(&mut b, payload);
        }
        if let Some(u) = o.user {
            put_str(&mut b, u.as_bytes());
        }
        if let Some(p) = &o.password {
            put_str(&mut b, p.as_bytes());
        }
        c.send(&packet(0x10, &b));
        c
    }

    /// Connects and expects CONNACK success.
    fn connect(addr: SocketAddr, v: u8, user: &str, device: &str) -> Client {
        let mut c = Client::open(addr, v, &Opts::new(user, device));
        assert_eq!(c.connack(), 0, "CONNACK of {user}/{device}");
        c
    }

    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// The next packet, or None at end of stream.
    fn next_within(&mut self, timeout: Duration) -> Option<Pkt> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 2 {
                let (mut len, mut mul, mut i) = (0usize, 1usize, 1);
                let mut complete = false;
                while i < self.buf.len() && i <= 4 {
                    len += usize::from(self.buf[i] & 0x7f) * mul;
                    mul *= 128;
                    i += 1;
                    if self.buf[i - 1] & 0x80 == 0 {
                        complete = true;
                        break;
                    }
                }
                if complete && self.buf.len() >= i + len {
                    let first = self.buf[0];
                    let body = self.buf[i..i + len].to_vec();
                    self.buf.drain(..i + len);
                    return Some(Pkt { first, body });
                }
            }
            if !read_some(&mut self.s, deadline, "a packet", |b| self.buf.extend_from_slice(b)) {
                return None;
            }
        }
    }

    fn next(&mut self) -> Option<Pkt> {
        self.next_within(WAIT)
    }

    /// CONNACK's return code (3.1.1) or reason code (5.0).
    fn connack(&mut self) -> u8 {
        let p = self.next().expect("CONNACK");
        assert_eq!(p.first, 0x20, "expected CONNACK, got {p:?}");
        assert_eq!(p.body[0], 0, "session present");
        p.body[1]
    }

    fn subscribe(&mut self, pid: u16, filters: &[&str]) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        if self.v == V5 {
            b.push(0);
        }
        for f in filters {
            put_str(&mut b, f.as_bytes());
            b.push(1);
        }
        self.send(&packet(0x82, &b));
        let p = self.next().expect("SUBACK");
        assert_eq!(p.first, 0x90, "expected SUBACK, got {p:?}");
        assert_eq!(&p.body[..2], &pid.to_be_bytes());
        p.body[if self.v == V5 { 3 } else { 2 }..].to_vec()
    }

    fn publish(&mut self) -> Pub {
        let p = self.next().expect("PUBLISH");
        assert_eq!(p.first >> 4, 3, "expected PUBLISH, got {p:?}");
        let qos = (p.first >> 1) & 3;
        let tl = usize::from(u16::from_be_bytes([p.body[0], p.body[1]]));
        let topic = String::from_utf8(p.body[2..2 + tl].to_vec()).unwrap();
        let mut at = 2 + tl;
        let mut pid = 0;
        if qos > 0 {
            pid = u16::from_be_bytes([p.body[at], p.body[at + 1]]);
            at += 2;
        }
        if self.v == V5 {
            let props = usize::from(p.body[at]);
            assert!(props < 128);
            at += 1 + props;
        }
        Pub { topic, qos, dup: p.first & 0x08 != 0, pid, payload: p.body[at..].to_vec() }
    }

    fn puback(&mut self, pid: u16) {
        let [a, b] = pid.to_be_bytes();
        self.send(&[0x40, 2, a, b]);
    }

    fn ping(&mut self) {
        self.send(&[0xc0, 0]);
        let p = self.next().expect("PINGRESP");
        assert_eq!((p.first, p.body.len()), (0xd0, 0));
    }

    /// Expects a 5.0 DISCONNECT with `reason` (3.1.1: nothing), then end of stream.
    fn expect_closed(&mut self, reason: u8) {
        if self.v == V5 {
            let p = self.next().expect("DISCONNECT");
            assert_eq!(p.first, 0xe0, "expected DISCONNECT, got {p:?}");
            assert_eq!(p.body.first().copied().unwrap_or(0), reason, "DISCONNECT reason");
        }
        assert!(self.next().is_none(), "connection stays open");
    }
}

fn body(text: &str) -> Vec<u8> {
    PushPayload { push_id: 1, body: Some(text.into()), ..PushPayload::default() }.to_bytes().to_vec()
}

fn push(cp: &FakeCp, target: Target, stream: u32, seq: u32, ttl_secs: u32, payload: Vec<u8>) {
    let flags = if ttl_secs > 0 { PushFlags::ACK_REQUIRED.0 } else { 0 };
    cp.send(&LinkMessage::Push(PushOrder {
        push_id: u64::from(seq),
        target,
        stream,
        seq,
        flags,
        ttl_secs,
        payload,
        origin: None,
    }));
}

fn mqtt_gateway(driver: Driver) -> (Gateway, FakeCp, SocketAddr) {
    let (gw, cp) = gateway(driver, |c| c.mqtt_addr = Some("127.0.0.1:0".parse().unwrap()));
    let addr = gw.mqtt_addr().expect("MQTT listener");
    (gw, cp, addr)
}

fn connect_accepted_and_refused(driver: Driver) {
    let (_gw, cp, addr) = mqtt_gateway(driver);
    for v in [V3, V5] {
        let mut c = Client::connect(addr, v, "alice", "phone");
        cp.wait_online("alice", "phone");
        c.ping();
        drop(c);
        assert_eq!(cp.wait_offline("alice"), CloseCode::NORMAL.0);
        let (bad, not_authorized, bad_id) = if v == V5 { (0x86, 0x87, 0x85) } else { (0x04, 0x05, 0x02) };
        let cases: Vec<(&str, Opts<'_>, u8)> = vec![
            ("bad password", Opts { password: Some("nope".into()), ..Opts::new("alice", "phone") }, bad),
            ("no password", Opts { password: None, ..Opts::new("alice", "phone") }, bad),
            ("wrong user", Opts { user: Some("bob"), ..Opts::new("alice", "phone") }, bad),
            ("other device", Opts { client_id: "tablet", ..Opts::new("alice", "phone") }, bad_id),
            ("revoked", Opts::new("revoked", "phone"), not_authorized),
        ];
        for (what, o, code) in cases {
            let mut c = Client::open(addr, v, &o);
            assert_eq!(c.connack(), code, "v{v} {what}");
            assert!(c.next().is_none(), "v{v} {what}: stays open");
        }
    }
    // An empty client id takes the credential's device; 5.0 is told which.
    let mut c = Client::open(addr, V5, &Opts { client_id: "", ..Opts::new("carol", "watch") });
    let p = c.next().unwrap();
    assert_eq!((p.first, p.body[1]), (0x20, 0));
    assert!(p.body.windows(5).any(|w| w == b"watch"), "assigned client identifier");
    cp.wait_online("carol", "watch");
}

fn subscribe_codes_and_deliveries(driver: Driver) {
    let (_gw, cp, addr) = mqtt_gateway(driver);
    cp.set_groups(&[("g", &["sports"])]);
    for (n, v) in [V3, V5].into_iter().enumerate() {
        let user = format!("alice{n}");
        let mut c = Client::connect(addr, v, &user, "phone");
        cp.wait_online(&user, "phone");
        // The SUBSCRIBE may arrive before the user's subscriptions: it is answered once they do.
        let filters = ["news", "sports", "groups/g", "users/+", "secret", "users/bob", "#", "$share/x/news"];
        let mut b = 7u16.to_be_bytes().to_vec();
        if v == V5 {
            b.push(0);
        }
        for f in filters {
            put_str(&mut b, f.as_bytes());
            b.push(1);
        }
        c.send(&packet(0x82, &b));
        cp.subscribe(&user, &["g"], &["news"]);
        let p = c.next().expect("SUBACK");
        assert_eq!(p.first, 0x90);
        let codes = &p.body[if v == V5 { 3 } else { 2 }..];
        let expect: &[u8] =
            if v == V5 { &[1, 1, 1, 1, 0x87, 0x87, 1, 0x9e] } else { &[1, 1, 1, 1, 0x80, 0x80, 1, 0x80] };
        assert_eq!(codes, expect, "v{v} SUBACK codes");

        // Topic push, QoS 1 → PUBACK → receipt.
        push(&cp, Target::Topic("news".into()), 7, 3, 60, body("hello"));
        let p = c.publish();
        assert_eq!((p.topic.as_str(), p.qos, p.dup, &p.payload[..]), ("news", 1, false, &b"hello"[..]));
        c.puback(p.pid);
        let r = cp.expect("receipt", |m| match m {
            LinkMessage::Receipts(rs) => rs.iter().find(|r| r.user == user).cloned(),
            _ => None,
        });
        assert_eq!((r.device.as_str(), r.stream, r.first, r.last), ("phone", 7, 3, 3));
        // TTL 0 → QoS 0; a group push on groups/<g>; data without a body as JSON.
        let data = PushPayload {
            data: vec![DataEntry { key: "k".into(), value: "v".into() }],
            ..PushPayload::default()
        };
        push(&cp, Target::Group("g".into()), 8, 1, 0, data.to_bytes().to_vec());
        let p = c.publish();
        assert_eq!((p.topic.as_str(), p.qos, &p.payload[..]), ("groups/g", 0, &br#"{"k":"v"}"#[..]));
        // The inbox arrives without a subscription to it being needed.
        c.send(&packet(0xa2, &{
            let mut b = 9u16.to_be_bytes().to_vec();
            if v == V5 {
                b.push(0);
            }
            put_str(&mut b, b"users/+");
            b
        }));
        let p = c.next().unwrap();
        assert_eq!(p.first, 0xb0, "UNSUBACK");
        push(&cp, Target::User(user.clone()), 9, 1, 0, body("direct"));
        let p = c.publish();
        assert_eq!((p.topic, p.qos, p.payload), (format!("users/{user}"), 0, b"direct".to_vec()));
        // A topic nobody subscribed to here does not reach the connection.
        push(&cp, Target::Topic("weather".into()), 10, 1, 0, body("rain"));
        push(&cp, Target::Topic("sports".into()), 11, 1, 60, body("goal"));
        let p = c.publish();
        assert_eq!((p.topic.as_str(), &p.payload[..]), ("sports", &b"goal"[..]));
    }
}

fn keep_alive_and_refused_publish(driver: Driver) {
    let (_gw, cp, addr) = mqtt_gateway(driver);
    // 1.5 × keep-alive of silence closes the connection.
    for v in [V3, V5] {
        let mut c = Client::open(addr, v, &Opts { keep_alive: 1, ..Opts::new("kat", "d") });
        assert_eq!(c.connack(), 0);
        let started = Instant::now();
        c.expect_closed(0x8d);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1400) && waited < Duration::from_secs(10), "{waited:?}");
        assert_eq!(cp.wait_offline("kat"), CloseCode::HEARTBEAT_TIMEOUT.0);
    }
    // PUBLISH from a terminal: 5.0 QoS 1 gets PUBACK 0x87 and stays; QoS 0 is disconnected.
    let mut c = Client::connect(addr, V5, "pub", "d");
    let mut b = Vec::new();
    put_str(&mut b, b"t");
    b.extend_from_slice(&[0, 5, 0]);
    b.extend_from_slice(b"x");
    c.send(&packet(0x32, &b));
    let p = c.next().unwrap();
    assert_eq!((p.first, &p.body[..3]), (0x40, &[0, 5, 0x87][..]));
    c.ping();
    let mut b = Vec::new();
    put_str(&mut b, b"t");
    b.push(0);
    c.send(&packet(0x30, &b));
    c.expect_closed(0x87);
    // 3.1.1: closed.
    let mut c = Client::connect(addr, V3, "pub3", "d");
    let mut b = Vec::new();
    put_str(&mut b, b"t");
    c.send(&packet(0x30, &b));
    c.expect_closed(0);
}

/// A terminal's PUBLISH (QoS 1 with `pid`, else QoS 0).
fn publish_packet(v: u8, topic: &str, pid: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, topic.as_bytes());
    if let Some(pid) = pid {
        b.extend_from_slice(&pid.to_be_bytes());
    }
    if v == V5 {
        b.push(0);
    }
    b.extend_from_slice(payload);
    packet(if pid.is_some() { 0x32 } else { 0x30 }, &b)
}

/// The next terminal message the gateway forwards to the control plane.
fn forwarded(cp: &FakeCp) -> TerminalPublish {
    cp.expect("a terminal's message", |m| match m {
        LinkMessage::Publish(p) => Some(p.clone()),
        _ => None,
    })
}

fn answer(cp: &FakeCp, p: &TerminalPublish, outcome: PublishOutcome) {
    let reference = p.reply.expect("a QoS 1 message asks for an answer");
    cp.send(&LinkMessage::PublishResult(PublishResult { reference, outcome }));
}

/// PUBACK's packet id and (5.0) reason.
fn puback(c: &mut Client) -> (u16, u8) {
    let p = c.next().expect("PUBACK");
    assert_eq!(p.first, 0x40, "expected PUBACK, got {p:?}");
    (u16::from_be_bytes([p.body[0], p.body[1]]), p.body.get(2).copied().unwrap_or(0))
}

fn allowed_publish_goes_through_the_control_plane(driver: Driver) {
    let (gw, cp) = gateway(driver, |c| {
        c.mqtt_addr = Some("127.0.0.1:0".parse().unwrap());
        c.mqtt_allow_publish = true;
    });
    let addr = gw.mqtt_addr().unwrap();
    let mut c = Client::connect(addr, V5, "pub", "d");
    cp.wait_online("pub", "d");
    // QoS 1: PUBACK only once the control plane has answered, with its reason.
    c.send(&publish_packet(V5, "groups/fleet", Some(9), b"hi"));
    let p = forwarded(&cp);
    assert_eq!(
        (p.user.as_str(), p.device.as_str(), &p.target, p.body.as_str(), p.ttl_secs, p.will_delay_secs),
        ("pub", "d", &Target::Group("fleet".into()), "hi", None, None)
    );
    assert_eq!(p.reply.map(|r| r.packet_id), Some(9));
    c.send(&publish_packet(V5, "news", Some(10), b"x"));
    let q = forwarded(&cp);
    assert_eq!(q.target, Target::Topic("news".into()));
    // Answers may come in any order; each PUBACK carries its own packet id.
    answer(&cp, &q, PublishOutcome::NotAuthorized);
    assert_eq!(puback(&mut c), (10, 0x87));
    answer(&cp, &p, PublishOutcome::Accepted { push_id: 1 });
    assert_eq!(puback(&mut c), (9, 0));
    // Refused here, without the control plane: an inbox, Herald's topics, a payload that is not
    // UTF-8.
    c.send(&publish_packet(V5, "users/bob", Some(11), b"x"));
    assert_eq!(puback(&mut c), (11, 0x87));
    c.send(&publish_packet(V5, "herald/conditions", Some(12), b"x"));
    assert_eq!(puback(&mut c), (12, 0x87));
    c.send(&publish_packet(V5, "news", Some(13), &[0xff, 0xfe]));
    assert_eq!(puback(&mut c), (13, 0x99));
    // QoS 0: a TTL-0 push, no answer.
    c.send(&publish_packet(V5, "news", None, b"live"));
    let p = forwarded(&cp);
    assert_eq!((p.body.as_str(), p.ttl_secs, p.reply), ("live", Some(0), None));
    // The link drops with a message unanswered: the gateway answers 0x80 (send again).
    c.send(&publish_packet(V5, "news", Some(14), b"lost"));
    forwarded(&cp);
    cp.drop_link();
    assert_eq!(puback(&mut c), (14, 0x80));
    c.ping();
    // 3.1.1 cannot be told no: a refusal closes the connection.
    cp.wait_online("pub", "d");
    let mut c3 = Client::connect(addr, V3, "pub3", "d");
    cp.wait_online("pub3", "d");
    c3.send(&publish_packet(V3, "news", Some(1), b"x"));
    let p = forwarded(&cp);
    answer(&cp, &p, PublishOutcome::Accepted { push_id: 2 });
    assert_eq!(puback(&mut c3), (1, 0));
    c3.send(&publish_packet(V3, "news", Some(2), b"x"));
    let p = forwarded(&cp);
    answer(&cp, &p, PublishOutcome::NotAuthorized);
    c3.expect_closed(0);
    // 9 PUBLISH received, 6 refused (4 here, 2 by the control plane) or lost with the link.
    let m = gw.metrics_text();
    assert_eq!(metric_sum(&m, "herald_mqtt_publishes_in_total"), 9, "{m}");
    assert_eq!(metric_sum(&m, "herald_mqtt_publishes_refused_total"), 6, "{m}");
}

/// A per-core series summed over the cores.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn wills_are_sent_when_a_connection_ends_without_disconnect(driver: Driver) {
    let (gw, cp) = gateway(driver, |c| {
        c.mqtt_addr = Some("127.0.0.1:0".parse().unwrap());
        c.mqtt_allow_publish = true;
    });
    let addr = gw.mqtt_addr().unwrap();
    for v in [V3, V5] {
        let (quiet, lost) = (format!("quiet{v}"), format!("lost{v}"));
        // A normal DISCONNECT discards the will ...
        let o = Opts { will: Some(("status", b"quiet gone", 1, 0)), ..Opts::new(&quiet, "d") };
        let mut a = Client::open(addr, v, &o);
        assert_eq!(a.connack(), 0);
        cp.wait_online(&quiet, "d");
        a.send(&[0xe0, 0x00]);
        assert_eq!(cp.wait_offline(&quiet), CloseCode::NORMAL.0);
        // ... a connection that just ends sends it, after its Offline, with its delay.
        let o = Opts { will: Some(("groups/fleet", b"lost gone", 1, 30)), ..Opts::new(&lost, "d") };
        let mut b = Client::open(addr, v, &o);
        assert_eq!(b.connack(), 0);
        cp.wait_online(&lost, "d");
        drop(b);
        let w = forwarded(&cp);
        assert_eq!(
            (w.user.as_str(), &w.target, w.body.as_str(), w.reply),
            (lost.as_str(), &Target::Group("fleet".into()), "lost gone", None)
        );
        // 3.1.1 has no will delay: 0.
        assert_eq!(w.will_delay_secs, Some(if v == V5 { 30 } else { 0 }));
    }
    // A newer login of the same device replaces the connection: no will.
    let o = Opts { will: Some(("status", b"replaced", 0, 0)), ..Opts::new("twice", "d") };
    let mut first = Client::open(addr, V5, &o);
    assert_eq!(first.connack(), 0);
    cp.wait_online("twice", "d");
    let mut second = Client::connect(addr, V5, "twice", "d");
    first.expect_closed(0x8e);
    second.ping();
    let o = Opts { will: Some(("status", b"marker", 0, 0)), ..Opts::new("marker", "d") };
    let mut m = Client::open(addr, V5, &o);
    assert_eq!(m.connack(), 0);
    cp.wait_online("marker", "d");
    drop(m);
    assert_eq!(forwarded(&cp).body, "marker", "the replaced connection's will was sent");
    assert_eq!(metric_sum(&gw.metrics_text(), "herald_mqtt_wills_total"), 3);
}

fn malformed_packet_closes_only_that_connection(driver: Driver) {
    let (_gw, _cp, addr) = mqtt_gateway(driver);
    for v in [V3, V5] {
        let mut good = Client::connect(addr, v, "good", "d");
        let mut bad = Client::connect(addr, v, "bad", "d");
        // Reserved packet type 0.
        bad.send(&[0x00, 0x00]);
        bad.expect_closed(0x81);
        good.ping();
        // Garbage before CONNECT: closed without an answer.
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.write_all(&[0x82, 0x02, 0, 1]).unwrap();
        raw.set_read_timeout(Some(WAIT)).unwrap();
        let mut sink = [0u8; 16];
        assert_eq!(raw.read(&mut sink).unwrap_or(0), 0);
        good.ping();
    }
}

fn duplicate_client_id_replaces_across_protocols(driver: Driver) {
    let (gw, cp, addr) = mqtt_gateway(driver);
    let mut a = Client::connect(addr, V5, "alice", "phone");
    cp.wait_online("alice", "phone");
    let mut b = Client::connect(addr, V3, "alice", "phone");
    a.expect_closed(0x8e);
    assert_eq!(cp.wait_offline("alice"), CloseCode::REPLACED.0);
    // A Herald-protocol login of the same device replaces the MQTT one, and back.
    let (mut t, _) = Term::login(gw.tcp_addr(), "alice", "phone");
    b.expect_closed(0);
    let mut c = Client::connect(addr, V5, "alice", "phone");
    match t.next() {
        Some(Frame::GoAway(g)) => assert_eq!(g.reason, CloseCode::REPLACED),
        other => panic!("expected GOAWAY, got {other:?}"),
    }
    c.ping();
}

fn backlog_reaches_persistent_sessions_only(driver: Driver) {
    let (_gw, cp, addr) = mqtt_gateway(driver);
    for v in [V3, V5] {
        let user = format!("p{v}");
        // A live push teaches the node the stream's topic.
        let mut c = Client::connect(addr, v, &user, "d");
        cp.wait_online(&user, "d");
        cp.subscribe(&user, &[], &["news"]);
        assert_eq!(c.subscribe(1, &["news"]), [1]);
        push(&cp, Target::Topic("news".into()), 20, 1, 60, body("one"));
        let p = c.publish();
        c.puback(p.pid);
        drop(c);
        cp.wait_offline(&user);
        let device = || Target::Device { user: user.clone(), device: "d".into() };
        // Persistent: the backlog comes at once, before any SUBSCRIBE, DUP on a redelivery.
        let o = Opts { clean: v == V5, session_expiry: 3600, ..Opts::new(&user, "d") };
        let mut c = Client::open(addr, v, &o);
        assert_eq!(c.connack(), 0);
        cp.wait_online(&user, "d");
        cp.send(&LinkMessage::Push(PushOrder {
            push_id: 2,
            target: device(),
            stream: 20,
            seq: 2,
            flags: PushFlags::ACK_REQUIRED.with(PushFlags::REDELIVERY).0,
            ttl_secs: 60,
            payload: body("two"),
            origin: None,
        }));
        let p = c.publish();
        assert_eq!((p.topic.as_str(), p.qos, p.dup, &p.payload[..]), ("news", 1, true, &b"two"[..]));
        drop(c);
        cp.wait_offline(&user);
        // Clean: stored topic messages are not delivered; the inbox's are.
        let mut c = Client::connect(addr, v, &user, "d");
        cp.wait_online(&user, "d");
        push(&cp, device(), 20, 2, 60, body("two"));
        push(&cp, Target::User(user.clone()), 21, 1, 60, body("inbox"));
        push(&cp, device(), 21, 1, 60, body("inbox"));
        let p = c.publish();
        assert_eq!((p.topic, &p.payload[..]), (format!("users/{user}"), &b"inbox"[..]));
        let p = c.publish();
        assert_eq!((p.topic, &p.payload[..]), (format!("users/{user}"), &b"inbox"[..]));
    }
}

/// Both MQTT versions are closed at the credential's expiry, well before their keep-alive
/// (60 s): 5.0 with DISCONNECT 0x87 Not authorized (MQTT has no "credential expired"; a client
/// reconnecting with the same password is refused the same way), 3.1.1 by closing.
fn a_session_is_closed_when_its_credential_expires(driver: Driver) {
    let (_gw, cp, addr) = mqtt_gateway(driver);
    let expires_at = now_secs() + 2;
    let mut clients = Vec::new();
    for (v, device) in [(V3, "d3"), (V5, "d5")] {
        let mut o = Opts::new("exp", device);
        o.password = Some(token_with(&key(), "exp", device, now_secs() - 10, expires_at));
        let mut c = Client::open(addr, v, &o);
        assert_eq!(c.connack(), 0, "CONNACK of {device}");
        clients.push(c);
    }
    for c in &mut clients {
        c.expect_closed(0x87);
    }
    assert!(now_secs() >= expires_at, "closed before the credential expired");
    assert_eq!(cp.wait_offline("exp"), CloseCode::AUTH_EXPIRED.0);
}

both_drivers!(
    a_session_is_closed_when_its_credential_expires,
    connect_accepted_and_refused,
    subscribe_codes_and_deliveries,
    keep_alive_and_refused_publish,
    allowed_publish_goes_through_the_control_plane,
    wills_are_sent_when_a_connection_ends_without_disconnect,
    malformed_packet_closes_only_that_connection,
    duplicate_client_id_replaces_across_protocols,
    backlog_reaches_persistent_sessions_only,
);
