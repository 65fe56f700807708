//! A bounded, seeded fuzz run in the ordinary test suite: random and mutated byte strings through
//! the decoder and the client session. Nothing may panic, and every error is a documented one.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use herald_protocol::code::CloseCode;
use herald_protocol::frame::{
    self, Ack, AckRange, DecodeError, Decoder, Frame, LoginOk, PushFlags, PushHeader,
};
use herald_protocol::session::{Event, Session, SessionConfig};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Valid frames to mutate: mutations near valid input reach deeper than pure noise.
fn seeds() -> Vec<BytesMut> {
    let mut out = Vec::new();
    let mut b = BytesMut::new();
    LoginOk { session_id: 1, server_time_ms: 2, heartbeat_interval_secs: 30, max_frame_bytes: 4096 }
        .encode(&mut b);
    frame::encode_push_into(
        PushHeader { flags: PushFlags::ACK_REQUIRED, ttl_secs: 5, stream: 1, seq: 1 },
        &[1; 40],
        &mut b,
    )
    .unwrap();
    out.push(b.clone());
    for f in [
        Frame::Ack(Ack::new(&[AckRange { stream: 1, first: 0, last: 3 }])),
        Frame::Ping { nonce: 0 },
        Frame::Close(frame::Close { code: CloseCode::NORMAL, reason: Bytes::from_static(b"ok") }),
        Frame::GoAway(frame::GoAway { reason: CloseCode::OVERLOADED, reconnect_after_ms: 9 }),
        Frame::Login(frame::Login::new(Bytes::from_static(b"tok"), Bytes::from_static(b"d"), &[])),
    ] {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        out.push(b);
    }
    out
}

fn documented(e: &DecodeError) -> bool {
    match e {
        DecodeError::UnknownType(t) => !matches!(*t, 0x00..=0x02 | 0x10..=0x15 | 0x20),
        DecodeError::TooLarge { len, max } => len > max,
        DecodeError::Malformed { .. } => true,
        DecodeError::Truncated(n) => *n > 0,
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    let seeds = seeds();
    let decoder = Decoder::new(4096);
    let t0 = Instant::now();
    let mut frames = 0u64;
    for i in 0..300_000u32 {
        let mut input = if i % 2 == 0 {
            let mut b = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(b.len());
                match rng.below(3) {
                    0 => b[at] = rng.next() as u8,
                    1 => b.truncate(at),
                    _ => b[at] ^= 1 << rng.below(8),
                }
                if b.is_empty() {
                    break;
                }
            }
            b
        } else {
            let len = rng.below(48);
            let mut b = BytesMut::with_capacity(len);
            for _ in 0..len {
                b.put_u8(if rng.below(4) == 0 {
                    [0x01, 0x12, 0x13, 0x15][rng.below(4)]
                } else {
                    rng.next() as u8
                });
            }
            b
        };
        let split = rng.below(input.len() + 1);
        let tail = input.split_off(split);
        let mut buf = input;
        let mut pass = |buf: &mut BytesMut| loop {
            match decoder.decode(buf) {
                Ok(Some(_)) => frames += 1,
                Ok(None) => return true,
                Err(e) => {
                    assert!(documented(&e), "undocumented error {e:?}");
                    let code = e.close_code();
                    assert!(code == CloseCode::PROTOCOL_ERROR || code == CloseCode::FRAME_TOO_LARGE);
                    return false;
                }
            }
        };
        if pass(&mut buf) {
            buf.extend_from_slice(&tail);
            if pass(&mut buf)
                && let Err(e) = decoder.decode_eof(&mut buf)
            {
                assert!(documented(&e), "undocumented error {e:?}");
            }
        }

        // The same bytes into a logged-in session.
        if i % 8 == 0 {
            let mut s =
                Session::new(SessionConfig::new(Bytes::from_static(b"t"), Bytes::from_static(b"d")), 1);
            s.handle_connected(t0);
            let mut ok = BytesMut::new();
            LoginOk { session_id: 1, server_time_ms: 0, heartbeat_interval_secs: 1, max_frame_bytes: 64 }
                .encode(&mut ok);
            ok.extend_from_slice(&buf);
            s.handle_input(&mut ok, t0);
            s.handle_timeout(t0 + std::time::Duration::from_secs(2));
            while let Some(ev) = s.poll_event() {
                if let Event::ProtocolError(e) = ev {
                    assert!(documented(&e));
                }
            }
            s.poll_transmit(&mut BytesMut::new());
        }
    }
    assert!(frames > 1000, "the mutations still decode valid frames sometimes ({frames})");
}
