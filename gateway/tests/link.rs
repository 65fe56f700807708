//! The gateway's link to the control plane under faults, over real sockets: a silent control
//! plane, a refusal, a snapshot over the frame limit, an acknowledgement flood.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use herald_gateway::{Driver, GatewayConfig};
use herald_protocol::CloseCode;
use herald_protocol::frame::{Ack, AckRange, Decoder, Frame, MAX_ACK_RANGES, PushFlags};
use herald_protocol::link::{
    GroupTopics, KeyEntry, LINK_PART_BYTES, LinkMessage, MAX_LINK_FRAME_BYTES, Tables,
};
use rkyv::util::AlignedVec;

/// The value of a metric line `name value` in the gateway's metrics text.
fn metric(gw: &herald_gateway::Gateway, name: &str) -> u64 {
    gw.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn config(cp: std::net::SocketAddr, tweak: impl FnOnce(&mut GatewayConfig)) -> GatewayConfig {
    let mut cfg = GatewayConfig {
        tcp_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        control_plane_addr: cp,
        node_id: "test-node".into(),
        cores: 2,
        driver: Driver::Epoll,
        drain_timeout_ms: 500,
        ..GatewayConfig::default()
    };
    tweak(&mut cfg);
    cfg
}

/// Accepts link connections; each is handed to `each` on its own thread, and its accept time
/// sent on the returned channel.
fn listener(
    each: impl Fn(std::net::TcpStream) + Send + Sync + 'static,
) -> (std::net::SocketAddr, crossbeam_channel::Receiver<Instant>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let each = std::sync::Arc::new(each);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            if tx.send(Instant::now()).is_err() {
                return;
            }
            let each = each.clone();
            std::thread::spawn(move || each(s));
        }
    });
    (addr, rx)
}

#[test]
fn a_silent_control_plane_is_detected_within_the_deadline_and_the_link_reconnects() {
    // A control plane that accepts and then neither reads nor writes (SIGSTOPped, or a
    // half-open connection). The socket is kept open until the test ends.
    let held = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let h = held.clone();
    let (addr, accepts) = listener(move |s| h.lock().push(s));
    let gw = herald_gateway::start(config(addr, |c| {
        c.link_heartbeat_secs = 1;
        c.link_dead_after_secs = 2;
    }))
    .unwrap();
    let first = accepts.recv_timeout(WAIT).expect("the gateway connects");
    let second = accepts.recv_timeout(WAIT).expect("the gateway drops the silent link and reconnects");
    let detected = second - first;
    assert!(detected >= Duration::from_millis(1_900), "dropped before the deadline: {detected:?}");
    assert!(detected < Duration::from_secs(5), "detected too late: {detected:?}");
    assert!(metric(&gw, "herald_link_timeouts_total") >= 1);
    eventually("the reconnect counted", || metric(&gw, "herald_link_connects_total") == 2);
    assert!(!gw.link_connected(), "a control plane that never answers is not a connected link");
    gw.shutdown();
    gw.join().unwrap();
}

#[test]
fn an_idle_link_carries_heartbeats_and_stays_up() {
    let (gw, cp) = gateway(Driver::Epoll, |c| {
        c.link_heartbeat_secs = 1;
        c.link_dead_after_secs = 2;
    });
    // Three deadlines of an idle link (the time passing is what is tested): the heartbeats,
    // which the fake answers, keep it.
    std::thread::sleep(Duration::from_secs(6));
    assert!(cp.heartbeats() >= 3, "the gateway sent {} heartbeats in 6 s", cp.heartbeats());
    assert_eq!(metric(&gw, "herald_link_connects_total"), 1);
    assert_eq!(metric(&gw, "herald_link_timeouts_total"), 0);
    assert!(gw.link_connected());
    gw.shutdown();
    gw.join().unwrap();
}

#[test]
fn a_refused_node_logs_counts_and_retries_slowly() {
    // Answers every Hello with Refused, then closes (as the control plane does for a node id
    // another live link holds).
    let (addr, accepts) = listener(|mut s| {
        let dec = Decoder::new(MAX_LINK_FRAME_BYTES);
        let mut buf = BytesMut::new();
        let mut chunk = [0u8; 4096];
        let mut scratch = AlignedVec::new();
        s.set_read_timeout(Some(WAIT)).unwrap();
        loop {
            let Ok(n) = s.read(&mut chunk) else { return };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(Frame::Link(l)) = dec.decode(&mut buf).unwrap() {
                assert!(matches!(LinkMessage::decode(&l, &mut scratch).unwrap(), LinkMessage::Hello(_)));
                let mut out = BytesMut::new();
                LinkMessage::Refused("node id in use".into()).encode(0, &mut out).unwrap();
                let _ = s.write_all(&out);
                return;
            }
        }
    });
    let gw = herald_gateway::start(config(addr, |_| {})).unwrap();
    let first = accepts.recv_timeout(WAIT).expect("the gateway connects");
    let second = accepts.recv_timeout(WAIT).expect("the gateway retries");
    let third = accepts.recv_timeout(WAIT).expect("the gateway retries again");
    // 1 s, then 2 s: not the reconnect loop (50 ms backoff) a dropped link gets.
    assert!(second - first >= Duration::from_millis(900), "retried after {:?}", second - first);
    assert!(third - second >= Duration::from_millis(1_900), "retried after {:?}", third - second);
    assert!(metric(&gw, "herald_link_refusals_total") >= 2);
    assert_eq!(gw.tables_version(), 0, "a refused node gets no tables");
    gw.shutdown();
    gw.join().unwrap();
}

#[test]
fn a_snapshot_over_the_frame_limit_arrives_in_parts_and_logins_work() {
    let (gw, cp) = gateway(Driver::Epoll, |_| {});
    // 100 groups × 10,000 topics (~25 MB), the signing key in the first part only.
    let big = Tables {
        version: 2,
        keys: vec![KeyEntry { key_id: 1, secret: KEY_SECRET }],
        revocations: vec![],
        groups: (0..100)
            .map(|g| GroupTopics {
                group: format!("group-{g}"),
                topics: (0..10_000).map(|t| format!("group-{g}-topic-{t:05}")).collect(),
            })
            .collect(),
    };
    assert!(
        LinkMessage::Tables(big.clone()).encode(0, &mut BytesMut::new()).is_err(),
        "must not fit one frame"
    );
    let mut parts = Vec::new();
    LinkMessage::Tables(big).split(LINK_PART_BYTES, &mut parts);
    assert!(parts.len() > 2);
    let (last, first) = parts.split_last().unwrap();
    for p in first {
        cp.send(p);
    }
    // Parts alone change nothing; the closing Tables applies the whole snapshot.
    let (mut t, _) = Term::login(gw.tcp_addr(), "alice", "phone");
    assert_eq!(gw.tables_version(), 1);
    cp.send(last);
    eventually("the whole snapshot", || gw.tables_version() == 2);
    let (_t2, _) = Term::login(gw.tcp_addr(), "bob", "tablet");
    t.ping(1);
    assert_eq!(t.next(), Some(Frame::Pong { nonce: 1 }));
    assert_eq!(metric(&gw, "herald_link_connects_total"), 1);
    gw.shutdown();
    gw.join().unwrap();
}

#[test]
fn an_ack_flood_is_capped_coalesced_and_counted_the_link_stays_up_and_real_acks_arrive() {
    let (gw, cp) = gateway(Driver::Epoll, |_| {});
    let (mut t, _) = Term::login(gw.tcp_addr(), "alice", "phone");
    cp.wait_online("alice", "phone");
    // 2,000 ACK frames of 256 cumulative ranges over 8 streams: 512,000 ranges, 6 MB, for
    // messages never sent. Only the connection's credit (1,024 ranges) is forwarded.
    const FRAMES: u32 = 2_000;
    let mut wire = BytesMut::new();
    for f in 0..FRAMES {
        let ranges: Vec<AckRange> = (0..MAX_ACK_RANGES as u32)
            .map(|j| AckRange { stream: j % 8, first: 0, last: f * 256 + j + 1 })
            .collect();
        Ack::new(&ranges).encode(&mut wire).unwrap();
    }
    t.send_raw(&wire);
    let flood_ranges = u64::from(FRAMES) * 256;
    eventually("the flood read and its excess counted", || {
        metric(&gw, "herald_receipts_dropped_total") == flood_ranges - 1_024
    });
    // A real message, and its ack, still go through.
    cp.push(1, herald_protocol::link::Target::User("alice".into()), 77, PushFlags::ACK_REQUIRED.0, vec![]);
    match t.next() {
        Some(Frame::Push(p)) => assert_eq!((p.stream, p.seq), (1, 77)),
        other => panic!("expected the push, got {other:?}"),
    }
    t.send_frame(&Frame::Ack(Ack::new(&[AckRange { stream: 1, first: 0, last: 77 }])));
    let mut receipts = 0usize;
    cp.expect("the real ack's receipt", |m| match m {
        LinkMessage::Receipts(rs) => {
            receipts += rs.len();
            rs.iter().any(|r| (r.stream, r.first, r.last) == (1, 0, 77)).then_some(())
        }
        _ => None,
    });
    // The 1,024 credited ranges, coalesced per (device, stream): a handful of receipts.
    assert!(receipts <= 64, "{receipts} receipts for {flood_ranges} ranges");
    assert_eq!(metric(&gw, "herald_link_connects_total"), 1, "the link stayed up");
    assert_eq!(cp.hellos.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(metric(&gw, "herald_link_upstream_events") <= 65_536);
    gw.shutdown();
    gw.join().unwrap();
}

#[test]
fn an_ack_with_more_ranges_than_the_cap_closes_the_connection_protocol_error() {
    let (gw, cp) = gateway(Driver::Epoll, |_| {});
    let (mut t, _) = Term::login(gw.tcp_addr(), "alice", "phone");
    cp.wait_online("alice", "phone");
    let ranges: Vec<AckRange> =
        (0..=MAX_ACK_RANGES as u32).map(|j| AckRange { stream: 1, first: j + 1, last: j + 1 }).collect();
    t.send_frame(&Frame::Ack(Ack::new(&ranges)));
    t.expect_close(CloseCode::PROTOCOL_ERROR);
    gw.shutdown();
    gw.join().unwrap();
}
