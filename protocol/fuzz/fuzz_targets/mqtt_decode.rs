//! Arbitrary bytes, split at arbitrary points, through the MQTT decoder as a gateway drives it:
//! fresh (CONNECT first) or already connected as 3.1.1 or 5.0. It may not panic, may not take
//! more than the packet limit, and every error must have an answer that encodes.

#![no_main]

use bytes::BytesMut;
use herald_protocol::mqtt::{Decoder, MqttError, Packet, ProtocolVersion, topic};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the split points, the state and the packet limit.
    let (Some(&a), Some(&b)) = (data.first(), data.get(1)) else { return };
    let stream = &data[2..];
    let cut1 = usize::from(a) % (stream.len() + 1);
    let cut2 = cut1 + usize::from(b) % (stream.len() - cut1 + 1);
    let limit = 16 + usize::from(a ^ b) * 32;
    let mut decoder = match a % 3 {
        0 => Decoder::new(limit),
        1 => Decoder::connected(limit, ProtocolVersion::V311),
        _ => Decoder::connected(limit, ProtocolVersion::V5),
    };
    let mut buf = BytesMut::new();
    let chunks = [&stream[..cut1], &stream[cut1..cut2], &stream[cut2..]];
    for (i, chunk) in chunks.into_iter().enumerate() {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            let res = if i == 2 { decoder.decode_eof(&mut buf) } else { decoder.decode(&mut buf) };
            match res {
                Ok(Some(packet)) => {
                    assert!(before - buf.len() <= decoder.max_packet_bytes(), "took more than the limit");
                    check(&packet);
                }
                Ok(None) => break,
                Err(e) => {
                    answer(&decoder, &e);
                    return;
                }
            }
        }
    }
});

/// What the gateway relies on in a decoded packet.
fn check(packet: &Packet) {
    match packet {
        Packet::Publish(p) => {
            assert!(topic::valid_name(p.topic.as_str()), "PUBLISH topic {:?}", p.topic.as_str());
            assert_eq!(p.packet_id.is_some(), p.qos as u8 > 0);
        }
        Packet::Subscribe(s) => assert!(!s.subscriptions.is_empty()),
        _ => {}
    }
}

fn answer(decoder: &Decoder, e: &MqttError) {
    let mut out = BytesMut::new();
    decoder.reply(e).encode(&mut out);
    assert!(out.len() <= 8, "a reply to a bad packet is a few bytes: {out:?}");
}
