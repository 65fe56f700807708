//! Frame codec: round trips of every frame type, input split at every byte boundary, hostile
//! input mapped to its documented error and close code, exact wire sizes and payload alignment.

use bytes::{BufMut, Bytes, BytesMut};
use herald_protocol::code::CloseCode;
use herald_protocol::frame::{
    self, Ack, AckRange, Close, DecodeError, Decoder, Frame, GoAway, Link, Login, LoginOk, Push, PushFlags,
    PushHeader, StreamPos,
};
use herald_protocol::payload::PushPayload;
use proptest::prelude::*;
use rkyv::util::AlignedVec;

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_login() -> impl Strategy<Value = Frame> {
    (
        any::<u8>(),
        any::<u8>(),
        arb_bytes(300),
        arb_bytes(64),
        proptest::collection::vec((any::<u32>(), any::<u32>()), 0..12),
    )
        .prop_map(|(version, flags, credential, device, resume)| {
            let resume: Vec<StreamPos> =
                resume.into_iter().map(|(stream, seq)| StreamPos { stream, seq }).collect();
            let mut login = Login::new(credential, device, &resume);
            login.version = version;
            login.flags = flags;
            Frame::Login(login)
        })
}

fn arb_push() -> impl Strategy<Value = Frame> {
    (any::<u8>(), 0u32..=0x00ff_ffff, any::<u32>(), 1u32.., arb_bytes(2048)).prop_map(
        |(flags, ttl_secs, stream, seq, payload)| {
            Frame::Push(Push { flags: PushFlags(flags), ttl_secs, stream, seq, payload })
        },
    )
}

fn arb_ack() -> impl Strategy<Value = Frame> {
    proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u32>()), 1..20).prop_map(|rs| {
        let ranges: Vec<AckRange> = rs
            .into_iter()
            .map(|(stream, a, b)| AckRange { stream, first: a.min(b), last: a.max(b) })
            .collect();
        Frame::Ack(Ack::new(&ranges))
    })
}

fn arb_close() -> impl Strategy<Value = Frame> {
    (any::<u16>(), "\\PC{0,60}").prop_map(|(code, reason)| {
        let mut end = reason.len().min(frame::MAX_CLOSE_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Frame::Close(Close {
            code: CloseCode(code),
            reason: Bytes::copy_from_slice(&reason.as_bytes()[..end]),
        })
    })
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        any::<u8>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u8>().prop_map(|nonce| Frame::Pong { nonce }),
        arb_login(),
        (any::<u64>(), any::<u64>(), any::<u16>(), any::<u32>()).prop_map(|(a, b, c, d)| {
            Frame::LoginOk(LoginOk {
                session_id: a,
                server_time_ms: b,
                heartbeat_interval_secs: c,
                max_frame_bytes: d,
            })
        }),
        arb_push(),
        arb_ack(),
        (any::<u16>(), any::<u32>())
            .prop_map(|(r, ms)| { Frame::GoAway(GoAway { reason: CloseCode(r), reconnect_after_ms: ms }) }),
        arb_close(),
        (any::<u16>(), arb_bytes(1024)).prop_map(|(version, payload)| Frame::Link(Link { version, payload })),
    ]
}

/// Encodes frames as a sender does: pad bytes before each aligned frame.
fn encode_stream(frames: &[Frame]) -> BytesMut {
    let mut out = BytesMut::new();
    for f in frames {
        if f.is_aligned() {
            out.put_slice(frame::padding_for(out.len() as u64));
        }
        f.encode(&mut out).expect("generated frames fit the format");
    }
    out
}

fn decode_all(decoder: &Decoder, buf: &mut BytesMut, into: &mut Vec<Frame>) {
    while let Some(f) = decoder.decode(buf).expect("valid stream") {
        into.push(f);
    }
}

proptest! {
    #[test]
    fn every_frame_round_trips(f in arb_frame()) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf).unwrap();
        let decoded = Decoder::new(1 << 20).decode(&mut buf).unwrap();
        prop_assert_eq!(decoded, Some(f));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn a_padded_stream_round_trips(frames in proptest::collection::vec(arb_frame(), 1..12)) {
        let mut buf = encode_stream(&frames);
        let mut got = Vec::new();
        decode_all(&Decoder::new(1 << 20), &mut buf, &mut got);
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn aligned_frames_start_at_multiples_of_16(
        frames in proptest::collection::vec(arb_frame(), 1..12)
    ) {
        let wire = encode_stream(&frames);
        let mut offset = 0usize;
        let mut buf = wire.clone();
        let decoder = Decoder::new(1 << 20);
        loop {
            let before = buf.len();
            let pads = buf.iter().take_while(|&&b| b == frame::T_PAD).count();
            match decoder.decode(&mut buf).unwrap() {
                Some(f) => {
                    if f.is_aligned() {
                        prop_assert_eq!((offset + pads) % frame::FRAME_ALIGN, 0);
                    }
                    offset += before - buf.len();
                }
                None => break,
            }
        }
    }
}

#[test]
fn decoding_survives_a_split_at_every_byte_boundary() {
    let payload = PushPayload { push_id: 9, title: Some("hi".into()), ..Default::default() };
    let frames = vec![
        Frame::Ping { nonce: 1 },
        Frame::Login(Login::new(
            Bytes::from_static(b"token"),
            Bytes::from_static(b"dev"),
            &[StreamPos { stream: 1, seq: 4 }],
        )),
        Frame::LoginOk(LoginOk {
            session_id: 7,
            server_time_ms: 1_700_000_000_000,
            heartbeat_interval_secs: 240,
            max_frame_bytes: 65536,
        }),
        Frame::Push(Push {
            flags: PushFlags::ACK_REQUIRED,
            ttl_secs: 60,
            stream: 1,
            seq: 5,
            payload: Bytes::copy_from_slice(&payload.to_bytes()),
        }),
        Frame::Pong { nonce: 1 },
        Frame::Ack(Ack::new(&[AckRange { stream: 1, first: 0, last: 5 }])),
        Frame::Link(Link { version: 1, payload: Bytes::from_static(&[1; 40]) }),
        Frame::GoAway(GoAway { reason: CloseCode::SHUTTING_DOWN, reconnect_after_ms: 500 }),
        Frame::Close(Close { code: CloseCode::NORMAL, reason: Bytes::from_static(b"bye") }),
    ];
    let wire = encode_stream(&frames);
    let decoder = Decoder::default();
    for split in 0..=wire.len() {
        let mut buf = BytesMut::from(&wire[..split]);
        let mut got = Vec::new();
        decode_all(&decoder, &mut buf, &mut got);
        buf.extend_from_slice(&wire[split..]);
        decode_all(&decoder, &mut buf, &mut got);
        assert_eq!(got, frames, "split at {split}");
        assert!(buf.is_empty());
    }
    // And one byte at a time.
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &b in wire.iter() {
        buf.put_u8(b);
        decode_all(&decoder, &mut buf, &mut got);
    }
    assert_eq!(got, frames);
}

fn raw(ty: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(ty);
    b.put_slice(&(body.len() as u32).to_le_bytes()[..3]);
    b.put_slice(body);
    b
}

fn decode_err(mut buf: BytesMut) -> DecodeError {
    Decoder::default().decode(&mut buf).expect_err("hostile input must be refused")
}

fn malformed(frame: &'static str, what: &'static str) -> DecodeError {
    DecodeError::Malformed { frame, what }
}

#[test]
fn hostile_frames_give_their_documented_error_and_close_code() {
    let cases: Vec<(&str, BytesMut, DecodeError)> = vec![
        ("unknown type", BytesMut::from(&[0x03u8, 0][..]), DecodeError::UnknownType(0x03)),
        ("type 0xff", BytesMut::from(&[0xffu8][..]), DecodeError::UnknownType(0xff)),
        ("login short", raw(frame::T_LOGIN, &[1, 0, 0]), malformed("login", "shorter than its fixed part")),
        (
            "login lengths",
            raw(frame::T_LOGIN, &[1, 0, 5, 0, 0, 0, 0, 0, b'x']),
            malformed("login", "field lengths disagree with the frame length"),
        ),
        ("login-ok short", raw(frame::T_LOGIN_OK, &[0; 23]), malformed("login-ok", "shorter than 24 bytes")),
        ("push short", raw(frame::T_PUSH, &[0; 11]), malformed("push", "shorter than its header")),
        ("push seq 0", raw(frame::T_PUSH, &[0; 12]), malformed("push", "sequence 0 is reserved")),
        ("ack empty", raw(frame::T_ACK, &[]), malformed("ack", "length is not a positive multiple of 12")),
        (
            "ack ragged",
            raw(frame::T_ACK, &[0; 13]),
            malformed("ack", "length is not a positive multiple of 12"),
        ),
        (
            "ack inverted",
            raw(frame::T_ACK, &[1, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0]),
            malformed("ack", "range with first > last"),
        ),
        (
            "ack with 257 ranges",
            raw(frame::T_ACK, &[0; 12 * (frame::MAX_ACK_RANGES + 1)]),
            malformed("ack", "more than 256 ranges"),
        ),
        ("goaway short", raw(frame::T_GOAWAY, &[0; 7]), malformed("goaway", "shorter than 8 bytes")),
        ("close short", raw(frame::T_CLOSE, &[0]), malformed("close", "shorter than its code")),
        (
            "close not utf-8",
            raw(frame::T_CLOSE, &[0, 0, 0xff, 0xfe]),
            malformed("close", "reason is not UTF-8 of at most 123 bytes"),
        ),
        (
            "close reason too long",
            raw(frame::T_CLOSE, &[b'a'; 2 + 124]),
            malformed("close", "reason is not UTF-8 of at most 123 bytes"),
        ),
        ("link short", raw(frame::T_LINK, &[0; 11]), malformed("link", "shorter than its header")),
    ];
    for (name, buf, want) in cases {
        let got = decode_err(buf);
        assert_eq!(got, want, "{name}");
        assert_eq!(got.close_code(), CloseCode::PROTOCOL_ERROR, "{name}");
    }
}

#[test]
fn oversized_frames_are_refused_before_anything_is_buffered() {
    let mut buf = BytesMut::with_capacity(16);
    buf.put_slice(&[frame::T_PUSH, 0xff, 0xff, 0xff]);
    let cap = buf.capacity();
    let err = Decoder::default().decode(&mut buf).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLarge { len: 4 + frame::MAX_BODY_BYTES, max: frame::DEFAULT_MAX_FRAME_BYTES }
    );
    assert_eq!(err.close_code(), CloseCode::FRAME_TOO_LARGE);
    assert_eq!(buf.capacity(), cap, "no room reserved for a refused frame");

    // Exactly at the limit is accepted; one byte more is not.
    let limit = 64;
    let decoder = Decoder::new(limit);
    let ok = raw(frame::T_LINK, &[0; 60]);
    assert!(decoder.decode(&mut ok.clone()).unwrap().is_some());
    let over = raw(frame::T_LINK, &[0; 61]);
    assert_eq!(decoder.decode(&mut over.clone()), Err(DecodeError::TooLarge { len: 65, max: 64 }));
}

#[test]
fn truncated_streams_are_reported_at_eof() {
    let mut full = BytesMut::new();
    frame::encode_push_into(
        PushHeader { flags: PushFlags::default(), ttl_secs: 0, stream: 1, seq: 1 },
        &[7; 20],
        &mut full,
    )
    .unwrap();
    let decoder = Decoder::default();
    for cut in 1..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(decoder.decode(&mut buf), Ok(None), "cut at {cut}");
        assert_eq!(decoder.decode_eof(&mut buf), Err(DecodeError::Truncated(cut)));
    }
    let mut half_ping = BytesMut::from(&[frame::T_PING][..]);
    assert_eq!(decoder.decode_eof(&mut half_ping), Err(DecodeError::Truncated(1)));
    let mut only_pad = BytesMut::from(&[0u8; 9][..]);
    assert_eq!(decoder.decode_eof(&mut only_pad), Ok(None));
    assert!(only_pad.is_empty());
}

#[test]
fn heartbeats_are_two_bytes_and_push_header_sixteen() {
    let mut b = BytesMut::new();
    frame::encode_ping(3, &mut b);
    assert_eq!(&b[..], &[frame::T_PING, 3]);
    b.clear();
    frame::encode_pong(3, &mut b);
    assert_eq!(&b[..], &[frame::T_PONG, 3]);
    assert_eq!(herald_protocol::server::pong(3), [frame::T_PONG, 3]);

    let header =
        PushHeader { flags: PushFlags::ACK_REQUIRED, ttl_secs: 0x12_3456, stream: 0xa1b2_c3d4, seq: 9 };
    let empty = frame::encode_push(header, &[]).unwrap();
    assert_eq!(empty.len(), 16);
    assert_eq!(frame::PUSH_HEADER_BYTES, 16);
    assert_eq!(
        &empty[..],
        &[frame::T_PUSH, 12, 0, 0, 0x01, 0x56, 0x34, 0x12, 0xd4, 0xc3, 0xb2, 0xa1, 9, 0, 0, 0]
    );
    let with_payload = frame::encode_push(header, &[0xee; 64]).unwrap();
    assert_eq!(with_payload.len(), 16 + 64);
    assert_eq!(&with_payload[16..], &[0xee; 64]);
}

#[test]
fn push_payloads_are_read_in_place_from_an_aligned_receive_buffer() {
    // A stream of frames of awkward sizes, pushes padded as a gateway writes them.
    let mut wire = BytesMut::new();
    let mut expected = Vec::new();
    for i in 1..=40u32 {
        frame::encode_ping(i as u8, &mut wire);
        if i % 3 == 0 {
            Close::encode_parts(CloseCode::NORMAL, &"x".repeat(i as usize % 7), &mut wire);
        }
        let payload = PushPayload {
            push_id: u64::from(i),
            created_ms: 1,
            title: Some("t".repeat(i as usize)),
            body: None,
            data: vec![],
            collapse_key: None,
        };
        wire.put_slice(frame::padding_for(wire.len() as u64));
        let header = PushHeader { flags: PushFlags::default(), ttl_secs: 0, stream: 1, seq: i };
        frame::encode_push_into(header, &payload.to_bytes(), &mut wire).unwrap();
        expected.push(payload);
    }
    // The receive buffer starts 16-aligned, as the gateway's and the SDK's do.
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(&wire);
    let base = aligned.as_ptr() as usize;
    assert_eq!(base % 16, 0);

    let mut buf = BytesMut::from(&wire[..]);
    let buf_base = buf.as_ptr() as usize;
    let mut scratch = AlignedVec::new();
    let mut seen = 0;
    while let Some(f) = Decoder::default().decode(&mut buf).unwrap() {
        let Frame::Push(p) = f else { continue };
        let offset = p.payload.as_ptr() as usize - buf_base;
        assert_eq!(offset % 16, 0, "push {} payload at stream offset {offset}", p.seq);
        let in_place = &aligned[offset..offset + p.payload.len()];
        let archived = PushPayload::access(in_place, &mut scratch).unwrap();
        assert_eq!(archived.push_id, expected[seen].push_id);
        assert_eq!(archived.title.as_deref(), expected[seen].title.as_deref());
        assert!(scratch.is_empty(), "payload was copied instead of read in place");
        seen += 1;
    }
    assert_eq!(seen, 40);
}
