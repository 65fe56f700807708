//! Arbitrary bytes, split at arbitrary points, through the frame decoder and the client session.
//! Neither may panic; every decode error must be one of the documented variants with a close code.

#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use herald_protocol::code::CloseCode;
use herald_protocol::frame::{DecodeError, Decoder, LoginOk};
use herald_protocol::session::{Event, Session, SessionConfig};
use libfuzzer_sys::fuzz_target;

fn check(e: &DecodeError) {
    let code = e.close_code();
    assert!(code == CloseCode::PROTOCOL_ERROR || code == CloseCode::FRAME_TOO_LARGE);
    if let DecodeError::TooLarge { len, max } = e {
        assert!(len > max);
    }
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the split points and the frame limit; the rest is the stream.
    let (Some(&a), Some(&b)) = (data.first(), data.get(1)) else { return };
    let stream = &data[2..];
    let cut1 = usize::from(a) % (stream.len() + 1);
    let cut2 = cut1 + usize::from(b) % (stream.len() - cut1 + 1);
    let decoder = Decoder::new(64 + usize::from(a ^ b) * 64);

    let mut buf = BytesMut::new();
    'chunks: for chunk in [&stream[..cut1], &stream[cut1..cut2], &stream[cut2..]] {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    check(&e);
                    break 'chunks;
                }
            }
        }
    }

    let t0 = Instant::now();
    let mut config = SessionConfig::new("token".into(), "device".into());
    config.max_frame_bytes = decoder.max_frame_bytes();
    let mut session = Session::new(config, u64::from(a));
    session.handle_connected(t0);
    let mut rx = BytesMut::new();
    if a & 1 == 0 {
        // Logged in first, so pushes and acks are reached.
        LoginOk { session_id: 1, server_time_ms: 0, heartbeat_interval_secs: 1, max_frame_bytes: 64 }
            .encode(&mut rx);
    }
    let mut now = t0;
    for chunk in [&stream[..cut1], &stream[cut1..cut2], &stream[cut2..]] {
        rx.extend_from_slice(chunk);
        session.handle_input(&mut rx, now);
        now += Duration::from_millis(u64::from(b) * 10);
        session.handle_timeout(now);
        let mut out = BytesMut::new();
        session.poll_transmit(&mut out);
        while let Some(ev) = session.poll_event() {
            if let Event::ProtocolError(e) = ev {
                check(&e);
            }
        }
        if let Some(t) = session.poll_timeout() {
            assert!(t >= t0);
        }
    }
});
