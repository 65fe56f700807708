//! The gateway's per-connection state: size, deadlines, frame admission, ack bookkeeping.

use bytes::{Bytes, BytesMut};
use herald_protocol::code::CloseCode;
use herald_protocol::frame::{AckRange, Frame, Login};
use herald_protocol::server::{MAX_OUTSTANDING_RUNS, OutstandingFull, ServerConn, Tick};

fn acked(conn: &mut ServerConn, stream: u32, first: u32, last: u32) -> Vec<(u32, u32, u32)> {
    let mut got = Vec::new();
    conn.on_ack(AckRange { stream, first, last }, |r| got.push((r.stream, r.first, r.last)));
    got
}

#[test]
fn a_connection_is_small() {
    let size = std::mem::size_of::<ServerConn>();
    assert!(size <= 48, "ServerConn is {size} bytes");
}

#[test]
fn login_deadline_then_heartbeat_grace() {
    let t0 = Tick(u32::MAX - 1_000); // across the u32 wrap
    let mut c = ServerConn::accepted(t0, 5_000);
    assert!(!c.is_logged_in());
    assert_eq!(c.expired(t0.plus_millis(5_000)), None);
    assert_eq!(c.expired(t0.plus_millis(5_001)), Some(CloseCode::LOGIN_TIMEOUT));
    // Bytes before login do not extend the deadline.
    c.touch(t0.plus_millis(4_000));
    assert_eq!(c.expired(t0.plus_millis(5_001)), Some(CloseCode::LOGIN_TIMEOUT));

    let t1 = t0.plus_millis(1_000);
    c.logged_in(t1, 40_000);
    assert_eq!(c.deadline(), t1.plus_millis(40_000));
    assert_eq!(c.expired(t1.plus_millis(40_000)), None);
    c.touch(t1.plus_millis(30_000));
    assert_eq!(c.expired(t1.plus_millis(69_000)), None);
    assert_eq!(c.expired(t1.plus_millis(70_001)), Some(CloseCode::HEARTBEAT_TIMEOUT));
}

#[test]
fn frames_are_admitted_by_state() {
    let mut c = ServerConn::accepted(Tick(0), 5_000);
    let login = Frame::Login(Login::new(Bytes::from_static(b"t"), Bytes::from_static(b"d"), &[]));
    let ping = Frame::Ping { nonce: 1 };
    assert_eq!(c.check_frame(&ping), Err(CloseCode::PROTOCOL_ERROR));
    assert_eq!(c.check_frame(&login), Ok(()));
    let mut old = Login::new(Bytes::new(), Bytes::new(), &[]);
    old.version = 9;
    assert_eq!(c.check_frame(&Frame::Login(old)), Err(CloseCode::UNSUPPORTED_VERSION));
    c.logged_in(Tick(10), 1_000);
    assert_eq!(c.check_frame(&ping), Ok(()));
    assert_eq!(c.check_frame(&login), Err(CloseCode::PROTOCOL_ERROR));
    assert_eq!(c.check_frame(&Frame::Pong { nonce: 1 }), Err(CloseCode::PROTOCOL_ERROR));
}

#[test]
fn pong_and_padding_follow_the_stream_offset() {
    let mut c = ServerConn::accepted(Tick(0), 5_000);
    assert!(c.padding().is_empty());
    let mut out = BytesMut::with_capacity(64);
    let cap = out.capacity();
    c.answer_ping(9, &mut out);
    assert_eq!(&out[..], &[0x02, 9]);
    assert_eq!(out.capacity(), cap);
    assert_eq!(c.padding().len(), 14);
    c.note_sent(14 + 16 + 64);
    assert!(c.padding().is_empty());
    c.note_sent(5);
    assert_eq!(c.padding().len(), 11);
}

#[test]
fn acks_report_each_outstanding_push_once() {
    let mut c = ServerConn::accepted(Tick(0), 5_000);
    for seq in 1..=10 {
        c.track(7, seq).unwrap();
    }
    c.track(8, 3).unwrap();
    c.track(7, 1).unwrap(); // resent: already outstanding
    assert_eq!(c.outstanding(), 11);

    // A selective ack in the middle splits the run.
    assert_eq!(acked(&mut c, 7, 4, 6), vec![(7, 4, 6)]);
    assert_eq!(c.outstanding(), 8);
    // Acking again reports nothing.
    assert_eq!(acked(&mut c, 7, 4, 6), vec![]);
    // A cumulative ack takes the rest of the stream, in parts.
    assert_eq!(acked(&mut c, 7, 0, 100), vec![(7, 1, 3), (7, 7, 10)]);
    assert_eq!(acked(&mut c, 9, 0, 100), vec![]);
    assert_eq!(acked(&mut c, 8, 0, 3), vec![(8, 3, 3)]);
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn outstanding_runs_spill_and_are_bounded() {
    let mut c = ServerConn::accepted(Tick(0), 5_000);
    // Every other sequence: each is its own run.
    for i in 0..MAX_OUTSTANDING_RUNS as u32 {
        c.track(1, 2 * i + 1).unwrap();
    }
    assert_eq!(c.track(1, 100_000), Err(OutstandingFull));
    assert_eq!(c.outstanding(), MAX_OUTSTANDING_RUNS as u64);
    let got = acked(&mut c, 1, 0, u32::MAX);
    assert_eq!(got.len(), MAX_OUTSTANDING_RUNS);
    assert_eq!(c.outstanding(), 0);
    c.track(1, 5).unwrap();
    assert_eq!(c.outstanding_ranges().collect::<Vec<_>>(), vec![AckRange { stream: 1, first: 5, last: 5 }]);
}
