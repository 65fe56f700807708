//! MQTT codec: byte-exact vectors laid out as in the 3.1.1 and 5.0 specs, every split point,
//! property round trips through a small test-only client encoder, hostile input, and a bounded
//! seeded fuzz run.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use herald_protocol::mqtt::{
    self, AckKind, ConnAck, ConnAckProperties, ConnectReturnCode, Decoder, DisconnectProperties, MqttError,
    Packet, Property, ProtocolVersion, PublishHeader, QoS, ReasonCode, Reply,
};
use proptest::prelude::*;

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A test-only client-side encoder: just enough to build what clients send.
mod client {
    #![allow(unreachable_pub)]

    pub fn varint(out: &mut Vec<u8>, mut v: u32) {
        loop {
            let mut b = (v & 0x7f) as u8;
            v >>= 7;
            if v > 0 {
                b |= 0x80;
            }
            out.push(b);
            if v == 0 {
                return;
            }
        }
    }

    pub fn field(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        varint(&mut out, body.len() as u32);
        out.extend_from_slice(body);
        out
    }

    /// A property block with its length prefix.
    pub fn props(block: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, block.len() as u32);
        out.extend_from_slice(block);
        out
    }

    #[derive(Debug, Clone)]
    pub struct Will {
        pub qos: u8,
        pub retain: bool,
        pub topic: String,
        pub payload: Vec<u8>,
        pub delay: Option<u32>,
    }

    #[derive(Debug, Clone)]
    pub struct Connect {
        pub v5: bool,
        pub client_id: String,
        pub clean: bool,
        pub keep_alive: u16,
        pub username: Option<String>,
        pub password: Option<Vec<u8>>,
        pub will: Option<Will>,
        pub session_expiry: Option<u32>,
        pub receive_maximum: Option<u16>,
        pub maximum_packet_size: Option<u32>,
        pub user_properties: Vec<(String, String)>,
    }

    impl Connect {
        pub fn encode(&self) -> Vec<u8> {
            let mut b = Vec::new();
            field(&mut b, b"MQTT");
            b.push(if self.v5 { 5 } else { 4 });
            let mut flags = 0u8;
            if self.clean {
                flags |= 0x02;
            }
            if let Some(w) = &self.will {
                flags |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
            }
            if self.password.is_some() {
                flags |= 0x40;
            }
            if self.username.is_some() {
                flags |= 0x80;
            }
            b.push(flags);
            b.extend_from_slice(&self.keep_alive.to_be_bytes());
            if self.v5 {
                let mut p = Vec::new();
                if let Some(s) = self.session_expiry {
                    p.push(0x11);
                    p.extend_from_slice(&s.to_be_bytes());
                }
                if let Some(r) = self.receive_maximum {
                    p.push(0x21);
                    p.extend_from_slice(&r.to_be_bytes());
                }
                if let Some(m) = self.maximum_packet_size {
                    p.push(0x27);
                    p.extend_from_slice(&m.to_be_bytes());
                }
                for (k, v) in &self.user_properties {
                    p.push(0x26);
                    field(&mut p, k.as_bytes());
                    field(&mut p, v.as_bytes());
                }
                b.extend(props(&p));
            }
            field(&mut b, self.client_id.as_bytes());
            if let Some(w) = &self.will {
                if self.v5 {
                    let mut p = Vec::new();
                    if let Some(d) = w.delay {
                        p.push(0x18);
                        p.extend_from_slice(&d.to_be_bytes());
                    }
                    b.extend(props(&p));
                }
                field(&mut b, w.topic.as_bytes());
                field(&mut b, &w.payload);
            }
            if let Some(u) = &self.username {
                field(&mut b, u.as_bytes());
            }
            if let Some(p) = &self.password {
                field(&mut b, p);
            }
            packet(0x10, &b)
        }
    }

    // One argument per PUBLISH field, so that call sites read like the packet.
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        v5: bool,
        qos: u8,
        dup: bool,
        retain: bool,
        topic: &str,
        id: u16,
        expiry: Option<u32>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        field(&mut b, topic.as_bytes());
        if qos > 0 {
            b.extend_from_slice(&id.to_be_bytes());
        }
        if v5 {
            let mut p = Vec::new();
            if let Some(e) = expiry {
                p.push(0x02);
                p.extend_from_slice(&e.to_be_bytes());
            }
            b.extend(props(&p));
        }
        b.extend_from_slice(payload);
        packet(0x30 | (qos << 1) | if dup { 8 } else { 0 } | u8::from(retain), &b)
    }

    pub fn subscribe(v5: bool, id: u16, sub_id: Option<u32>, filters: &[(String, u8)]) -> Vec<u8> {
        let mut b = id.to_be_bytes().to_vec();
        if v5 {
            let mut p = Vec::new();
            if let Some(s) = sub_id {
                p.push(0x0b);
                varint(&mut p, s);
            }
            b.extend(props(&p));
        }
        for (f, o) in filters {
            field(&mut b, f.as_bytes());
            b.push(*o);
        }
        packet(0x82, &b)
    }

    pub fn unsubscribe(v5: bool, id: u16, filters: &[String]) -> Vec<u8> {
        let mut b = id.to_be_bytes().to_vec();
        if v5 {
            b.push(0);
        }
        for f in filters {
            field(&mut b, f.as_bytes());
        }
        packet(0xa2, &b)
    }
}

fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Vec<Packet> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(p) = dec.decode(&mut buf).unwrap() {
        out.push(p);
    }
    assert!(buf.is_empty(), "{} bytes left", buf.len());
    out
}

fn one(dec: &mut Decoder, bytes: &[u8]) -> Packet {
    let mut v = decode_all(dec, bytes);
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn err(dec: &mut Decoder, bytes: &[u8]) -> MqttError {
    let mut buf = BytesMut::from(bytes);
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("no error for {bytes:02x?}"),
            Err(e) => return e,
        }
    }
}

// ---- Byte vectors, laid out as in the specs ----

/// `mosquitto_sub -V mqttv311 -i sub1 -u user -P pass -k 60 -t a/b`: MQTT 3.1.1 section 3.1.
const CONNECT_V3: &[u8] = &[
    0x10, 0x1c, // CONNECT, remaining length 28
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
    0x04, // level 4
    0xc2, // user name, password, clean session
    0x00, 0x3c, // keep alive 60
    0x00, 0x04, b's', b'u', b'b', b'1', // client id
    0x00, 0x04, b'u', b's', b'e', b'r', // user name
    0x00, 0x04, b'p', b'a', b's', b's', // password
];

/// MQTT 5.0 CONNECT with properties and a will (5.0 section 3.1, figure 3-... layout).
const CONNECT_V5: &[u8] = &[
    0x10, 0x41, // CONNECT, remaining length 65
    0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // "MQTT", level 5
    0xee, // user name, password, will retain, will QoS 1, will, clean start
    0x00, 0x1e, // keep alive 30
    0x19, // properties: 25 bytes
    0x11, 0x00, 0x00, 0x0e, 0x10, // session expiry interval 3600
    0x21, 0x00, 0x14, // receive maximum 20
    0x27, 0x00, 0x00, 0x10, 0x00, // maximum packet size 4096
    0x22, 0x00, 0x0a, // topic alias maximum 10
    0x17, 0x00, // request problem information 0
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k=v
    0x00, 0x02, b'c', b'1', // client id
    0x05, 0x18, 0x00, 0x00, 0x00, 0x05, // will properties: will delay 5
    0x00, 0x03, b'w', b'/', b't', // will topic
    0x00, 0x03, b'b', b'y', b'e', // will payload
    0x00, 0x02, b'u', b'1', // user name
    0x00, 0x03, b't', b'o', b'k', // password
];

#[test]
fn connect_v311_from_mosquitto_sub() {
    let mut dec = Decoder::default();
    let Packet::Connect(c) = one(&mut dec, CONNECT_V3) else { panic!() };
    assert_eq!(c.version, V3);
    assert_eq!(c.client_id, "sub1");
    assert!(c.clean_start);
    assert_eq!(c.keep_alive_secs, 60);
    assert_eq!(c.username.as_ref().unwrap(), "user");
    assert_eq!(c.password.as_deref(), Some(&b"pass"[..]));
    assert!(c.will.is_none() && c.properties.is_empty());
    assert_eq!(c.session_expiry_secs(), 0);
    assert_eq!(dec.version(), Some(V3));
    let model = client::Connect {
        v5: false,
        client_id: "sub1".into(),
        clean: true,
        keep_alive: 60,
        username: Some("user".into()),
        password: Some(b"pass".to_vec()),
        will: None,
        session_expiry: None,
        receive_maximum: None,
        maximum_packet_size: None,
        user_properties: vec![],
    };
    assert_eq!(model.encode(), CONNECT_V3);
}

#[test]
fn connect_v5_with_properties_and_will() {
    let mut dec = Decoder::default();
    let Packet::Connect(c) = one(&mut dec, CONNECT_V5) else { panic!() };
    assert_eq!(c.version, V5);
    assert_eq!(c.client_id, "c1");
    assert_eq!(c.keep_alive_secs, 30);
    assert_eq!(c.session_expiry_interval_secs, 3600);
    assert_eq!(c.session_expiry_secs(), 3600);
    assert_eq!(c.receive_maximum, 20);
    assert_eq!(c.maximum_packet_size, Some(4096));
    assert_eq!(c.topic_alias_maximum, 10);
    assert!(!c.request_problem_information);
    let ups: Vec<_> = c.properties.user_properties().collect();
    assert_eq!(ups.len(), 1);
    assert_eq!((ups[0].0.as_str(), ups[0].1.as_str()), ("k", "v"));
    assert_eq!(c.properties.iter().count(), 6);
    let w = c.will.as_ref().unwrap();
    assert_eq!(
        (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
        ("w/t", &b"bye"[..], QoS::AtLeastOnce, true)
    );
    assert_eq!(w.delay_interval_secs, 5);
    assert_eq!(w.properties.iter().collect::<Vec<_>>(), vec![Property::WillDelayInterval(5)]);
    assert_eq!(c.username.as_ref().unwrap(), "u1");
    assert_eq!(c.password.as_deref(), Some(&b"tok"[..]));
}

/// Client packets after CONNECT, each a spec layout, with what they decode to.
fn v3_stream() -> Vec<(&'static [u8], &'static str)> {
    vec![
        (
            &[0x82, 0x0e, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/', b'#', 0x00],
            "SUBSCRIBE",
        ),
        (&[0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0a, b'h', b'i'], "PUBLISH"),
        (&[0x40, 0x02, 0x00, 0x0a], "PUBACK"),
        (&[0x50, 0x02, 0x00, 0x0b], "PUBREC"),
        (&[0x62, 0x02, 0x00, 0x0b], "PUBREL"),
        (&[0x70, 0x02, 0x00, 0x0b], "PUBCOMP"),
        (&[0xa2, 0x07, 0x00, 0x02, 0x00, 0x03, b'a', b'/', b'b'], "UNSUBSCRIBE"),
        (&[0xc0, 0x00], "PINGREQ"),
        (&[0xe0, 0x00], "DISCONNECT"),
    ]
}

fn v5_stream() -> Vec<(&'static [u8], &'static str)> {
    vec![
        // SUBSCRIBE id 1, subscription identifier 7, "a/+" no-local + QoS 1 + retain handling 2.
        (&[0x82, 0x0b, 0x00, 0x01, 0x02, 0x0b, 0x07, 0x00, 0x03, b'a', b'/', b'+', 0x25], "SUBSCRIBE"),
        // PUBLISH QoS 0 with message expiry 60 and a user property.
        (
            &[
                0x30, 0x14, 0x00, 0x03, b'a', b'/', b'b', 0x0c, 0x02, 0x00, 0x00, 0x00, 0x3c, 0x26, 0x00,
                0x01, b'x', 0x00, 0x01, b'y', b'h', b'i',
            ],
            "PUBLISH",
        ),
        (&[0x40, 0x02, 0x00, 0x0a], "PUBACK"),
        (&[0x40, 0x03, 0x00, 0x0b, 0x10], "PUBACK"),
        (&[0x40, 0x04, 0x00, 0x0c, 0x00, 0x00], "PUBACK"),
        (&[0x40, 0x08, 0x00, 0x0d, 0x80, 0x04, 0x1f, 0x00, 0x01, b'e'], "PUBACK"),
        (&[0x50, 0x03, 0x00, 0x0e, 0x00], "PUBREC"),
        (&[0x62, 0x03, 0x00, 0x0e, 0x92], "PUBREL"),
        (&[0x70, 0x02, 0x00, 0x0e], "PUBCOMP"),
        (&[0xa2, 0x08, 0x00, 0x02, 0x00, 0x00, 0x03, b'a', b'/', b'+'], "UNSUBSCRIBE"),
        (&[0xc0, 0x00], "PINGREQ"),
        (&[0xf0, 0x00], "AUTH"),
        (&[0xf0, 0x08, 0x18, 0x06, 0x15, 0x00, 0x03, b'S', b'C', b'R'], "AUTH"),
        // DISCONNECT 0x04 (with will), session expiry 10 (allowed: CONNECT's was 3600).
        (&[0xe0, 0x07, 0x04, 0x05, 0x11, 0x00, 0x00, 0x00, 0x0a], "DISCONNECT"),
    ]
}

#[test]
fn v311_packets_decode_to_their_fields() {
    let mut dec = Decoder::default();
    one(&mut dec, CONNECT_V3);
    let got: Vec<Packet> = v3_stream().iter().map(|(b, _)| one(&mut dec, b)).collect();
    for (p, (_, name)) in got.iter().zip(v3_stream()) {
        assert_eq!(p.name(), name);
    }
    let Packet::Subscribe(s) = &got[0] else { panic!() };
    assert_eq!(s.packet_id, 1);
    assert_eq!(s.subscriptions.len(), 2);
    assert_eq!(s.subscriptions[0].filter, "a/b");
    assert_eq!(s.subscriptions[0].options.max_qos, QoS::AtLeastOnce);
    assert_eq!(s.subscriptions[1].filter, "c/#");
    assert!(s.subscriptions[1].filter.matches("c/d/e"));
    let Packet::Publish(p) = &got[1] else { panic!() };
    assert_eq!(
        (p.qos, p.packet_id, p.topic.as_str(), &p.payload[..]),
        (QoS::AtLeastOnce, Some(10), "a/b", &b"hi"[..])
    );
    assert!(!p.dup && !p.retain);
    let Packet::PubAck(a) = &got[2] else { panic!() };
    assert_eq!((a.packet_id, a.reason), (10, ReasonCode::SUCCESS));
    let Packet::Unsubscribe(u) = &got[6] else { panic!() };
    assert_eq!((u.packet_id, u.filters[0].as_str()), (2, "a/b"));
    assert_eq!(client::subscribe(false, 1, None, &[("a/b".into(), 1), ("c/#".into(), 0)]), v3_stream()[0].0);
    assert_eq!(client::publish(false, 1, false, false, "a/b", 10, None, b"hi"), v3_stream()[1].0);
    assert_eq!(client::unsubscribe(false, 2, &["a/b".into()]), v3_stream()[6].0);
}

#[test]
fn v5_packets_decode_to_their_fields() {
    let mut dec = Decoder::default();
    one(&mut dec, CONNECT_V5);
    let got: Vec<Packet> = v5_stream().iter().map(|(b, _)| one(&mut dec, b)).collect();
    for (p, (_, name)) in got.iter().zip(v5_stream()) {
        assert_eq!(p.name(), name);
    }
    let Packet::Subscribe(s) = &got[0] else { panic!() };
    assert_eq!(s.subscription_identifier, Some(7));
    let o = s.subscriptions[0].options;
    assert_eq!(
        (o.max_qos, o.no_local, o.retain_as_published, o.retain_handling),
        (QoS::AtLeastOnce, true, false, 2)
    );
    assert_eq!(o.to_byte(), 0x25);
    let Packet::Publish(p) = &got[1] else { panic!() };
    assert_eq!((p.qos, p.packet_id, p.message_expiry_interval_secs), (QoS::AtMostOnce, None, Some(60)));
    assert_eq!(&p.payload[..], b"hi");
    assert_eq!(
        p.properties.user_properties().next().map(|(k, v)| (k.to_string(), v.to_string())),
        Some(("x".into(), "y".into()))
    );
    let reasons: Vec<_> = got[2..6]
        .iter()
        .map(|p| match p {
            Packet::PubAck(a) => (a.packet_id, a.reason.0),
            _ => panic!(),
        })
        .collect();
    assert_eq!(reasons, [(10, 0), (11, 0x10), (12, 0), (13, 0x80)]);
    let Packet::PubAck(a) = &got[5] else { panic!() };
    assert_eq!(a.properties.iter().next(), Some(Property::ReasonString(mqtt::Utf8::from_static("e"))));
    let Packet::PubRel(r) = &got[7] else { panic!() };
    assert_eq!(r.reason, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
    let Packet::Auth(a) = &got[12] else { panic!() };
    assert_eq!(a.reason, ReasonCode::CONTINUE_AUTHENTICATION);
    assert_eq!(a.authentication_method.as_ref().unwrap(), "SCR");
    let Packet::Disconnect(d) = &got[13] else { panic!() };
    assert_eq!(
        (d.reason, d.session_expiry_interval_secs),
        (ReasonCode::DISCONNECT_WITH_WILL_MESSAGE, Some(10))
    );
    assert_eq!(client::subscribe(true, 1, Some(7), &[("a/+".into(), 0x25)]), v5_stream()[0].0);
}

/// The whole conversation fed with one split at every byte boundary, and byte by byte.
fn check_splits(stream: &[u8]) {
    let whole = decode_all(&mut Decoder::default(), stream);
    for cut in 0..=stream.len() {
        let mut dec = Decoder::default();
        let mut buf = BytesMut::from(&stream[..cut]);
        let mut got = Vec::new();
        while let Some(p) = dec.decode(&mut buf).unwrap() {
            got.push(p);
        }
        buf.extend_from_slice(&stream[cut..]);
        while let Some(p) = dec.decode(&mut buf).unwrap() {
            got.push(p);
        }
        assert!(buf.is_empty());
        assert_eq!(got, whole, "split at {cut}");
    }
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &b in stream {
        buf.extend_from_slice(&[b]);
        while let Some(p) = dec.decode(&mut buf).unwrap() {
            got.push(p);
        }
    }
    assert_eq!(got, whole);
}

#[test]
fn decoding_split_at_every_byte_boundary() {
    let mut s3 = CONNECT_V3.to_vec();
    let mut s5 = CONNECT_V5.to_vec();
    for (b, _) in v3_stream() {
        s3.extend_from_slice(b);
    }
    for (b, _) in v5_stream() {
        s5.extend_from_slice(b);
    }
    // A packet whose remaining length needs two bytes.
    s3.extend(client::publish(false, 0, false, true, "big", 0, None, &[7; 300]));
    check_splits(&s3);
    check_splits(&s5);
    assert_eq!(decode_all(&mut Decoder::default(), &s3).len(), 11);
}

// ---- Server → client encoders, byte-exact ----

fn enc(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    f(&mut b);
    b.to_vec()
}

#[test]
fn connack_bytes() {
    assert_eq!(
        enc(|b| ConnAck::new(false, ReasonCode::SUCCESS).encode(V3, b).unwrap()),
        [0x20, 0x02, 0x00, 0x00]
    );
    assert_eq!(
        enc(|b| ConnAck::new(true, ReasonCode::SUCCESS).encode(V3, b).unwrap()),
        [0x20, 0x02, 0x01, 0x00]
    );
    // Session present is cleared on a refusal; 5.0 codes map to 3.1.1 return codes.
    for (rc, code) in [
        (ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, 0x01),
        (ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, 0x02),
        (ReasonCode::SERVER_UNAVAILABLE, 0x03),
        (ReasonCode::BAD_USER_NAME_OR_PASSWORD, 0x04),
        (ReasonCode::NOT_AUTHORIZED, 0x05),
    ] {
        assert_eq!(enc(|b| ConnAck::new(true, rc).encode(V3, b).unwrap()), [0x20, 0x02, 0x00, code]);
    }
    let mut b = BytesMut::new();
    assert_eq!(
        ConnAck::new(false, ReasonCode::MALFORMED_PACKET).encode(V3, &mut b),
        Err(mqtt::EncodeError::NotInV311)
    );
    assert!(b.is_empty());
    assert_eq!(
        enc(|b| ConnAck::new(false, ReasonCode::BAD_USER_NAME_OR_PASSWORD).encode(V5, b).unwrap()),
        [0x20, 0x03, 0x00, 0x86, 0x00]
    );
    let props = ConnAckProperties {
        assigned_client_identifier: Some("id"),
        server_keep_alive_secs: Some(120),
        ..ConnAckProperties::herald(65_536)
    };
    let got = enc(|b| {
        ConnAck { session_present: true, reason: ReasonCode::SUCCESS, properties: props }
            .encode(V5, b)
            .unwrap()
    });
    #[rustfmt::skip]
    let want = [
        0x20, 0x1d, 0x01, 0x00, 0x1a,
        0x24, 0x01, // maximum QoS 1
        0x25, 0x00, // retain not available
        0x27, 0x00, 0x01, 0x00, 0x00, // maximum packet size 65536
        0x12, 0x00, 0x02, b'i', b'd', // assigned client identifier
        0x22, 0x00, 0x00, // topic alias maximum 0
        0x28, 0x01, // wildcard subscriptions available
        0x29, 0x00, // subscription identifiers not available
        0x2a, 0x00, // shared subscriptions not available
        0x13, 0x00, 0x78, // server keep alive 120
    ];
    assert_eq!(got, want);
    let long = "x".repeat(70_000);
    let props = ConnAckProperties { reason_string: Some(&long), ..ConnAckProperties::default() };
    let mut b = BytesMut::new();
    assert_eq!(
        ConnAck { session_present: false, reason: ReasonCode::SUCCESS, properties: props }.encode(V5, &mut b),
        Err(mqtt::EncodeError::FieldTooLong)
    );
}

#[test]
fn publish_bytes_and_shared_payload() {
    let payload = Bytes::from_static(b"hello");
    // The header for a shared payload, then the payload as a second buffer.
    let mut h = BytesMut::new();
    let len = mqtt::encode_publish_header(V3, &PublishHeader::qos1("a/b", 7), payload.len(), &mut h).unwrap();
    assert_eq!(&h[..], [0x32, 0x0c, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x07]);
    assert_eq!(len, h.len() + payload.len());
    assert_eq!(
        enc(|b| _ = mqtt::encode_publish(V3, &PublishHeader::qos0("a/b"), &payload, b).unwrap()),
        [0x30, 0x0a, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o']
    );
    assert_eq!(
        enc(|b| _ = mqtt::encode_publish(V5, &PublishHeader::qos0("a/b"), &payload, b).unwrap()),
        [0x30, 0x0b, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'h', b'e', b'l', b'l', b'o']
    );
    let h5 = PublishHeader {
        dup: true,
        retain: true,
        message_expiry_interval_secs: Some(30),
        payload_is_utf8: true,
        ..PublishHeader::qos1("t", 1)
    };
    let got = enc(|b| _ = mqtt::encode_publish(V5, &h5, b"x", b).unwrap());
    assert_eq!(
        got,
        [0x3b, 0x0e, 0x00, 0x01, b't', 0x00, 0x01, 0x07, 0x01, 0x01, 0x02, 0x00, 0x00, 0x00, 0x1e, b'x']
    );
    // The encoded PUBLISH reads back with the decoder (the layout is the same both ways).
    let Packet::Publish(p) = one(&mut Decoder::connected(1 << 20, V5), &got) else { panic!() };
    assert_eq!((p.dup, p.retain, p.qos, p.packet_id), (true, true, QoS::AtLeastOnce, Some(1)));
    assert_eq!((p.message_expiry_interval_secs, p.payload_is_utf8), (Some(30), true));
    // Refusals.
    let mut b = BytesMut::new();
    assert_eq!(
        mqtt::encode_publish(V3, &PublishHeader::qos1("a", 0), b"", &mut b),
        Err(mqtt::EncodeError::ZeroPacketId)
    );
    assert_eq!(
        mqtt::encode_publish(V3, &PublishHeader::qos0("a/#"), b"", &mut b),
        Err(mqtt::EncodeError::InvalidTopicName)
    );
    assert_eq!(
        mqtt::encode_publish(V3, &PublishHeader::qos0(""), b"", &mut b),
        Err(mqtt::EncodeError::InvalidTopicName)
    );
    assert_eq!(
        mqtt::encode_publish_header(V3, &PublishHeader::qos0("a"), 300_000_000, &mut b),
        Err(mqtt::EncodeError::TooLarge)
    );
    assert!(b.is_empty());
}

#[test]
fn ack_suback_unsuback_pingresp_disconnect_bytes() {
    use mqtt::encode_ack as ack;
    assert_eq!(
        enc(|b| ack(AckKind::PubAck, V3, 10, ReasonCode::SUCCESS, b).unwrap()),
        [0x40, 0x02, 0x00, 0x0a]
    );
    assert_eq!(
        enc(|b| ack(AckKind::PubAck, V5, 10, ReasonCode::SUCCESS, b).unwrap()),
        [0x40, 0x02, 0x00, 0x0a]
    );
    assert_eq!(
        enc(|b| ack(AckKind::PubRec, V5, 10, ReasonCode::NOT_AUTHORIZED, b).unwrap()),
        [0x50, 0x03, 0x00, 0x0a, 0x87]
    );
    assert_eq!(
        enc(|b| ack(AckKind::PubRel, V3, 10, ReasonCode::SUCCESS, b).unwrap()),
        [0x62, 0x02, 0x00, 0x0a]
    );
    assert_eq!(
        enc(|b| ack(AckKind::PubComp, V5, 10, ReasonCode::SUCCESS, b).unwrap()),
        [0x70, 0x02, 0x00, 0x0a]
    );
    assert_eq!(
        enc(|b| mqtt::encode_ack_with_reason_string(
            AckKind::PubRec,
            V5,
            1,
            ReasonCode::QUOTA_EXCEEDED,
            Some("q"),
            b
        )
        .unwrap()),
        [0x50, 0x08, 0x00, 0x01, 0x97, 0x04, 0x1f, 0x00, 0x01, b'q']
    );
    let mut b = BytesMut::new();
    assert_eq!(
        ack(AckKind::PubRec, V3, 1, ReasonCode::NOT_AUTHORIZED, &mut b),
        Err(mqtt::EncodeError::NotInV311)
    );
    assert_eq!(
        ack(AckKind::PubAck, V5, 0, ReasonCode::SUCCESS, &mut b),
        Err(mqtt::EncodeError::ZeroPacketId)
    );

    let codes = [
        ReasonCode::GRANTED_QOS_1,
        ReasonCode::GRANTED_QOS_0,
        ReasonCode::NOT_AUTHORIZED,
        ReasonCode::TOPIC_FILTER_INVALID,
    ];
    assert_eq!(
        enc(|b| mqtt::encode_suback(V3, 1, &codes, b).unwrap()),
        [0x90, 0x06, 0x00, 0x01, 0x01, 0x00, 0x80, 0x80]
    );
    assert_eq!(
        enc(|b| mqtt::encode_suback(V5, 1, &codes, b).unwrap()),
        [0x90, 0x07, 0x00, 0x01, 0x00, 0x01, 0x00, 0x87, 0x8f]
    );
    assert_eq!(
        enc(|b| mqtt::encode_suback(V5, 2, &[ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED], b).unwrap()),
        [0x90, 0x04, 0x00, 0x02, 0x00, 0xa1]
    );
    assert_eq!(mqtt::encode_suback(V5, 1, &[], &mut b), Err(mqtt::EncodeError::NoReasonCodes));
    assert_eq!(enc(|b| mqtt::encode_unsuback(V3, 3, &[], b).unwrap()), [0xb0, 0x02, 0x00, 0x03]);
    assert_eq!(
        enc(|b| mqtt::encode_unsuback(V5, 3, &[ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED], b)
            .unwrap()),
        [0xb0, 0x05, 0x00, 0x03, 0x00, 0x00, 0x11]
    );
    assert_eq!(enc(mqtt::encode_pingresp), [0xd0, 0x00]);
    assert_eq!(enc(|b| mqtt::encode_disconnect(ReasonCode::NORMAL_DISCONNECTION, b)), [0xe0, 0x00]);
    for rc in [0x8d, 0x8e, 0x8b, 0x81, 0x82, 0x95, 0x87] {
        assert_eq!(enc(|b| mqtt::encode_disconnect(ReasonCode(rc), b)), [0xe0, 0x01, rc]);
    }
    let props = DisconnectProperties { reason_string: None, server_reference: Some("h:1") };
    assert_eq!(
        enc(|b| mqtt::encode_disconnect_with(ReasonCode::USE_ANOTHER_SERVER, &props, b).unwrap()),
        [0xe0, 0x08, 0x9c, 0x06, 0x1c, 0x00, 0x03, b'h', b':', b'1']
    );
    assert_eq!(
        enc(|b| mqtt::encode_disconnect_with(
            ReasonCode::KEEP_ALIVE_TIMEOUT,
            &DisconnectProperties::default(),
            b
        )
        .unwrap()),
        [0xe0, 0x01, 0x8d]
    );
}

// ---- Connection rules and replies ----

#[test]
fn first_packet_must_be_connect_and_only_once() {
    let mut dec = Decoder::default();
    assert_eq!(err(&mut dec, &[0xc0, 0x00]), MqttError::NotConnectFirst);
    assert_eq!(dec.reply(&MqttError::NotConnectFirst), Reply::Close);
    let mut dec = Decoder::default();
    one(&mut dec, CONNECT_V5);
    let e = err(&mut dec, CONNECT_V5);
    assert_eq!(e, MqttError::SecondConnect);
    assert_eq!(dec.reply(&e), Reply::Disconnect(ReasonCode::PROTOCOL_ERROR));
    assert_eq!(enc(|b| dec.reply(&e).encode(b)), [0xe0, 0x01, 0x82]);
    let mut dec = Decoder::default();
    one(&mut dec, CONNECT_V3);
    let e = err(&mut dec, CONNECT_V3);
    assert_eq!(dec.reply(&e), Reply::Close);
}

#[test]
fn connect_refusals_and_their_replies() {
    // Level 3 ("MQIsdp", MQTT 3.1): CONNACK 0x01 in 3.1.1's format.
    let mut c31 = vec![0x10, 0x11, 0x00, 0x06];
    c31.extend_from_slice(b"MQIsdp");
    c31.extend_from_slice(&[0x03, 0x02, 0x00, 0x3c, 0x00, 0x03, b'a', b'b', b'c']);
    let mut dec = Decoder::default();
    let e = err(&mut dec, &c31);
    assert_eq!(e, MqttError::UnsupportedProtocolVersion(3));
    assert_eq!(dec.reply(&e), Reply::ConnAckV311(ConnectReturnCode::UNACCEPTABLE_PROTOCOL_VERSION));
    assert_eq!(enc(|b| dec.reply(&e).encode(b)), [0x20, 0x02, 0x00, 0x01]);
    // Level 6 with "MQTT".
    let mut c6 = CONNECT_V3.to_vec();
    c6[8] = 6;
    assert_eq!(err(&mut Decoder::default(), &c6), MqttError::UnsupportedProtocolVersion(6));
    // Unknown protocol name: close.
    let mut bad = CONNECT_V3.to_vec();
    bad[4] = b'X';
    let mut dec = Decoder::default();
    let e = err(&mut dec, &bad);
    assert_eq!((e.clone(), dec.reply(&e)), (MqttError::InvalidProtocolName, Reply::Close));
    // 3.1.1 empty client id without clean session: CONNACK 0x02.
    let model = client::Connect {
        v5: false,
        client_id: String::new(),
        clean: false,
        keep_alive: 0,
        username: None,
        password: None,
        will: None,
        session_expiry: None,
        receive_maximum: None,
        maximum_packet_size: None,
        user_properties: vec![],
    };
    let mut dec = Decoder::default();
    let e = err(&mut dec, &model.encode());
    assert_eq!(e, MqttError::IdentifierRejected);
    assert_eq!(enc(|b| dec.reply(&e).encode(b)), [0x20, 0x02, 0x00, 0x02]);
    // ... but 5.0 allows it (the server assigns an id).
    let Packet::Connect(c) =
        one(&mut Decoder::default(), &client::Connect { v5: true, ..model.clone() }.encode())
    else {
        panic!()
    };
    assert!(c.client_id.is_empty() && !c.clean_start);
    // A 5.0 CONNECT that fails after its level is read gets a 5.0 CONNACK.
    let mut dup = CONNECT_V5.to_vec();
    dup[18..23].copy_from_slice(&[0x21, 0x00, 0x14, 0x21, 0x00]); // receive maximum twice
    let mut dec = Decoder::default();
    let e = err(&mut dec, &dup);
    assert!(matches!(e, MqttError::DuplicateProperty { id: 0x21, .. }), "{e:?}");
    assert_eq!(enc(|b| dec.reply(&e).encode(b)), [0x20, 0x03, 0x00, 0x82, 0x00]);
    // 3.1.1 malformed CONNECT: just close.
    let mut dec = Decoder::default();
    let mut short = CONNECT_V3.to_vec();
    short[1] -= 1;
    short.pop();
    let e = err(&mut dec, &short);
    assert!(matches!(e, MqttError::Malformed { packet: "CONNECT", .. }), "{e:?}");
    assert_eq!(dec.reply(&e), Reply::Close);
}

#[test]
fn disconnect_may_not_raise_a_zero_session_expiry() {
    let model = client::Connect {
        v5: true,
        client_id: "c".into(),
        clean: true,
        keep_alive: 0,
        username: None,
        password: None,
        will: None,
        session_expiry: None,
        receive_maximum: None,
        maximum_packet_size: None,
        user_properties: vec![],
    };
    let raise = [0xe0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x0a];
    let mut dec = Decoder::default();
    one(&mut dec, &model.encode());
    assert!(matches!(err(&mut dec, &raise), MqttError::ProtocolError { packet: "DISCONNECT", .. }));
    let mut dec = Decoder::default();
    one(&mut dec, &client::Connect { session_expiry: Some(5), ..model }.encode());
    assert!(matches!(one(&mut dec, &raise), Packet::Disconnect(_)));
}

// ---- Size limit before buffering ----

#[test]
fn size_limit_is_checked_before_buffering() {
    let mut dec = Decoder::connected(1024, V5);
    // PUBLISH declaring 268,435,455 bytes: refused after 5 bytes, with nothing reserved.
    let mut buf = BytesMut::with_capacity(8);
    buf.extend_from_slice(&[0x30, 0xff, 0xff, 0xff, 0x7f]);
    let e = dec.decode(&mut buf).unwrap_err();
    assert_eq!(e, MqttError::TooLarge { len: 268_435_460, max: 1024 });
    assert!(buf.capacity() < 64);
    assert_eq!(dec.reply(&e), Reply::Disconnect(ReasonCode::PACKET_TOO_LARGE));
    // Exactly at the limit is fine; one over is not.
    let at = client::publish(true, 0, false, false, "t", 0, None, &vec![0; 1024 - 7]);
    assert_eq!(at.len(), 1024);
    one(&mut Decoder::connected(1024, V5), &at);
    let over = client::publish(true, 0, false, false, "t", 0, None, &vec![0; 1024 - 6]);
    assert!(matches!(
        err(&mut Decoder::connected(1024, V5), &over),
        MqttError::TooLarge { len: 1025, max: 1024 }
    ));
    // Before CONNECT the limit applies too.
    let mut buf = BytesMut::from(&[0x10, 0x80, 0x80, 0x40][..]);
    assert!(matches!(Decoder::new(4096).decode(&mut buf), Err(MqttError::TooLarge { .. })));
    // Incomplete remaining length: wait.
    let mut buf = BytesMut::from(&[0x30, 0xff, 0xff][..]);
    assert_eq!(Decoder::connected(1 << 30, V3).decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 3);
}

// ---- Malformed and hostile packets ----

fn after(version: ProtocolVersion, bytes: &[u8]) -> MqttError {
    err(&mut Decoder::connected(1 << 16, version), bytes)
}

#[test]
fn malformed_packets_give_documented_errors() {
    use MqttError as E;
    type Case = (ProtocolVersion, Vec<u8>, fn(&MqttError) -> bool, ReasonCode);
    let cases: Vec<Case> = vec![
        // Remaining length: five bytes, non-minimal.
        (
            V5,
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            |e| *e == E::BadRemainingLength,
            ReasonCode::MALFORMED_PACKET,
        ),
        (V5, vec![0xc0, 0x80, 0x00], |e| *e == E::BadRemainingLength, ReasonCode::MALFORMED_PACKET),
        // Reserved and server-only types.
        (V5, vec![0x00, 0x00], |e| *e == E::ReservedType(0), ReasonCode::MALFORMED_PACKET),
        (V3, vec![0xf0, 0x00], |e| *e == E::ReservedType(15), ReasonCode::MALFORMED_PACKET),
        (
            V5,
            vec![0x20, 0x02, 0x00, 0x00],
            |e| *e == E::UnexpectedPacket("CONNACK"),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            V5,
            vec![0x90, 0x03, 0x00, 0x01, 0x00],
            |e| *e == E::UnexpectedPacket("SUBACK"),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (V3, vec![0xd0, 0x00], |e| *e == E::UnexpectedPacket("PINGRESP"), ReasonCode::PROTOCOL_ERROR),
        // Reserved flag bits.
        (
            V3,
            vec![0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            |e| matches!(e, E::InvalidFlags { packet: "SUBSCRIBE", .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V5,
            vec![0x60, 0x02, 0x00, 0x01],
            |e| matches!(e, E::InvalidFlags { packet: "PUBREL", .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V5,
            vec![0xc1, 0x00],
            |e| matches!(e, E::InvalidFlags { packet: "PINGREQ", .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V5,
            vec![0xa0, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'],
            |e| matches!(e, E::InvalidFlags { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V3,
            vec![0x38, 0x03, 0x00, 0x01, b'a'],
            |e| matches!(e, E::InvalidFlags { packet: "PUBLISH", .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        // QoS 3.
        (
            V5,
            vec![0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00],
            |e| *e == E::InvalidQos("PUBLISH"),
            ReasonCode::MALFORMED_PACKET,
        ),
        // Packet id 0.
        (
            V3,
            vec![0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
            |e| *e == E::ZeroPacketId("PUBLISH"),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            V3,
            vec![0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
            |e| *e == E::ZeroPacketId("SUBSCRIBE"),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (V3, vec![0x40, 0x02, 0x00, 0x00], |e| *e == E::ZeroPacketId("PUBACK"), ReasonCode::PROTOCOL_ERROR),
        // Topic names and filters.
        (
            V5,
            vec![0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00],
            |e| *e == E::InvalidTopicName("PUBLISH"),
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        (
            V3,
            vec![0x30, 0x04, 0x00, 0x01, b'#', b'x'],
            |e| *e == E::InvalidTopicName("PUBLISH"),
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        (
            V5,
            vec![0x30, 0x03, 0x00, 0x00, 0x00],
            |e| *e == E::InvalidTopicName("PUBLISH"),
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        (
            V3,
            vec![0x82, 0x07, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'#'],
            |e| matches!(e, E::Malformed { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V3,
            vec![0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'#', b'/', b'a', 0x00],
            |e| *e == E::InvalidTopicFilter("SUBSCRIBE"),
            ReasonCode::TOPIC_FILTER_INVALID,
        ),
        (
            V5,
            vec![0xa2, 0x07, 0x00, 0x01, 0x00, 0x00, 0x02, b'a', b'+'],
            |e| *e == E::InvalidTopicFilter("UNSUBSCRIBE"),
            ReasonCode::TOPIC_FILTER_INVALID,
        ),
        (
            V3,
            vec![0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
            |e| *e == E::InvalidTopicFilter("SUBSCRIBE"),
            ReasonCode::TOPIC_FILTER_INVALID,
        ),
        // No filters.
        (
            V3,
            vec![0x82, 0x02, 0x00, 0x01],
            |e| *e == E::NoTopicFilters("SUBSCRIBE"),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            V5,
            vec![0xa2, 0x03, 0x00, 0x01, 0x00],
            |e| *e == E::NoTopicFilters("UNSUBSCRIBE"),
            ReasonCode::PROTOCOL_ERROR,
        ),
        // Subscription options.
        (
            V3,
            vec![0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04],
            |e| matches!(e, E::Malformed { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V5,
            vec![0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x03],
            |e| matches!(e, E::Malformed { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V5,
            vec![0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
            |e| matches!(e, E::ProtocolError { .. }),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            V5,
            vec![0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0xc0],
            |e| matches!(e, E::Malformed { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        // UTF-8: invalid sequence, U+0000, a surrogate.
        (
            V3,
            vec![0x30, 0x04, 0x00, 0x02, 0xc3, 0x28],
            |e| matches!(e, E::InvalidUtf8 { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V3,
            vec![0x30, 0x04, 0x00, 0x02, b'a', 0x00],
            |e| matches!(e, E::InvalidUtf8 { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V3,
            vec![0x30, 0x05, 0x00, 0x03, 0xed, 0xa0, 0x80],
            |e| matches!(e, E::InvalidUtf8 { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        // Lengths that disagree with the remaining length.
        (
            V3,
            vec![0x30, 0x03, 0x00, 0x05, b'a'],
            |e| matches!(e, E::Malformed { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V3,
            vec![0x40, 0x03, 0x00, 0x01, 0x00],
            |e| matches!(e, E::Malformed { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (V3, vec![0xc0, 0x01, 0x00], |e| matches!(e, E::Malformed { .. }), ReasonCode::MALFORMED_PACKET),
        (V3, vec![0xe0, 0x01, 0x00], |e| matches!(e, E::Malformed { .. }), ReasonCode::MALFORMED_PACKET),
        (
            V5,
            vec![0x30, 0x05, 0x00, 0x01, b'a', 0x09, 0x01],
            |e| matches!(e, E::Malformed { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V5,
            vec![0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
            |e| matches!(e, E::Malformed { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        // Properties: unknown, not allowed here, repeated, bad values, aliases.
        (
            V5,
            vec![0x30, 0x05, 0x00, 0x01, b'a', 0x01, 0x7f],
            |e| matches!(e, E::UnknownProperty { id: 0x7f, .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V5,
            vec![0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x21, 0x00, 0x01],
            |e| matches!(e, E::UnknownProperty { id: 0x21, .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V5,
            vec![0x30, 0x08, 0x00, 0x01, b'a', 0x04, 0x01, 0x00, 0x01, 0x00],
            |e| matches!(e, E::DuplicateProperty { id: 0x01, .. }),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            V5,
            vec![0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x01, 0x02],
            |e| matches!(e, E::InvalidPropertyValue { id: 0x01, .. }),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            V5,
            vec![0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x01],
            |e| *e == E::TopicAliasInvalid(1),
            ReasonCode::TOPIC_ALIAS_INVALID,
        ),
        (
            V5,
            vec![0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x0b, 0x01],
            |e| matches!(e, E::ProtocolError { .. }),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            V5,
            vec![0x82, 0x09, 0x00, 0x01, 0x02, 0x0b, 0x00, 0x00, 0x01, b'a', 0x00],
            |e| matches!(e, E::InvalidPropertyValue { id: 0x0b, .. }),
            ReasonCode::PROTOCOL_ERROR,
        ),
        // Reason codes a client may not send.
        (
            V5,
            vec![0x40, 0x03, 0x00, 0x01, 0x8d],
            |e| matches!(e, E::InvalidReasonCode { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V5,
            vec![0x62, 0x03, 0x00, 0x01, 0x10],
            |e| matches!(e, E::InvalidReasonCode { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V5,
            vec![0xe0, 0x01, 0x8e],
            |e| matches!(e, E::InvalidReasonCode { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            V5,
            vec![0xf0, 0x01, 0x87],
            |e| matches!(e, E::InvalidReasonCode { .. }),
            ReasonCode::MALFORMED_PACKET,
        ),
    ];
    for (i, (v, bytes, ok, rc)) in cases.iter().enumerate() {
        let dec = Decoder::connected(1 << 16, *v);
        let e = after(*v, bytes);
        assert!(ok(&e), "case {i} {bytes:02x?}: {e:?}");
        assert_eq!(e.reason_code(), *rc, "case {i}: {e:?}");
        let want = if *v == V5 { Reply::Disconnect(*rc) } else { Reply::Close };
        assert_eq!(dec.reply(&e), want, "case {i}");
        // The Display text says what was wrong.
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn malformed_connects() {
    let base = CONNECT_V3.to_vec();
    let with_flags = |f: u8| {
        let mut b = base.clone();
        b[9] = f;
        b
    };
    let malformed =
        |b: &[u8]| matches!(err(&mut Decoder::default(), b), MqttError::Malformed { packet: "CONNECT", .. });
    assert!(malformed(&with_flags(0xc3)), "reserved flag");
    assert!(malformed(&with_flags(0xca)), "will QoS without will");
    assert!(malformed(&with_flags(0xe2)), "will retain without will");
    assert!(malformed(&with_flags(0x42)), "3.1.1 password without user name");
    let e = err(&mut Decoder::default(), &with_flags(0xde));
    assert_eq!(e, MqttError::InvalidQos("CONNECT will"));
    // Trailing bytes after the password.
    let mut long = base.clone();
    long[1] += 1;
    long.push(0);
    assert!(malformed(&long));
    // A will topic with a wildcard (5.0: CONNACK 0x90).
    let model = client::Connect {
        v5: true,
        client_id: "c".into(),
        clean: true,
        keep_alive: 10,
        username: None,
        password: None,
        will: Some(client::Will { qos: 0, retain: false, topic: "a/#".into(), payload: vec![], delay: None }),
        session_expiry: None,
        receive_maximum: Some(0),
        maximum_packet_size: None,
        user_properties: vec![],
    };
    let mut dec = Decoder::default();
    let e = err(&mut dec, &model.encode());
    assert!(matches!(e, MqttError::InvalidPropertyValue { id: 0x21, .. }), "receive maximum 0: {e:?}");
    let mut dec = Decoder::default();
    let e = err(&mut dec, &client::Connect { receive_maximum: None, ..model.clone() }.encode());
    assert_eq!(e, MqttError::InvalidTopicName("CONNECT"));
    assert_eq!(dec.reply(&e), Reply::ConnAckV5(ReasonCode::TOPIC_NAME_INVALID));
    let e = err(
        &mut Decoder::default(),
        &client::Connect { maximum_packet_size: Some(0), receive_maximum: None, ..model }.encode(),
    );
    assert!(matches!(e, MqttError::InvalidPropertyValue { id: 0x27, .. }));
}

#[test]
fn truncated_stream_at_eof() {
    let mut dec = Decoder::default();
    let mut buf = BytesMut::from(&CONNECT_V3[..10]);
    assert_eq!(dec.decode_eof(&mut buf), Err(MqttError::Truncated(10)));
    let mut buf = BytesMut::new();
    assert_eq!(Decoder::default().decode_eof(&mut buf), Ok(None));
    let mut buf = BytesMut::from(CONNECT_V3);
    assert!(matches!(Decoder::default().decode_eof(&mut buf), Ok(Some(Packet::Connect(_)))));
}

// ---- Property-based round trips ----

fn topic_level() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9$]{1,6}", "[\\p{L}]{1,3}"]
}

fn topic_name() -> impl Strategy<Value = String> {
    prop::collection::vec(topic_level(), 1..5)
        .prop_map(|l| l.join("/"))
        .prop_filter("non-empty", |s| !s.is_empty())
}

fn topic_filter() -> impl Strategy<Value = String> {
    (prop::collection::vec(prop_oneof![3 => topic_level(), 1 => Just("+".to_string())], 1..5), any::<bool>())
        .prop_map(|(mut l, hash)| {
            if hash {
                l.push("#".into());
            }
            l.join("/")
        })
        .prop_filter("non-empty", |s| !s.is_empty())
}

fn mqtt_string() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

prop_compose! {
    fn connect_model()(
        v5 in any::<bool>(),
        client_id in mqtt_string(),
        clean in any::<bool>(),
        keep_alive in any::<u16>(),
        username in prop::option::of(mqtt_string()),
        password in prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
        will in prop::option::of((0u8..3, any::<bool>(), topic_name(), prop::collection::vec(any::<u8>(), 0..20), prop::option::of(any::<u32>()))),
        session_expiry in prop::option::of(any::<u32>()),
        receive_maximum in prop::option::of(1u16..),
        maximum_packet_size in prop::option::of(1u32..),
        user_properties in prop::collection::vec((mqtt_string(), mqtt_string()), 0..3),
    ) -> client::Connect {
        let v3 = !v5;
        client::Connect {
            v5,
            // 3.1.1 rejects an empty id without clean session; tested separately.
            client_id: if v3 && client_id.is_empty() && !clean { "x".into() } else { client_id },
            clean,
            keep_alive,
            // 3.1.1 forbids a password without a user name.
            username: if v3 && password.is_some() { Some(username.unwrap_or_default()) } else { username },
            password,
            will: will.map(|(qos, retain, topic, payload, delay)| client::Will { qos, retain, topic, payload, delay: delay.filter(|_| v5) }),
            session_expiry: session_expiry.filter(|_| v5),
            receive_maximum: receive_maximum.filter(|_| v5),
            maximum_packet_size: maximum_packet_size.filter(|_| v5),
            user_properties: if v5 { user_properties } else { vec![] },
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn connect_round_trips(m in connect_model()) {
        let bytes = m.encode();
        let mut dec = Decoder::default();
        let Packet::Connect(c) = one(&mut dec, &bytes) else { panic!() };
        prop_assert_eq!(c.version, if m.v5 { V5 } else { V3 });
        prop_assert_eq!(c.client_id.as_str(), m.client_id.as_str());
        prop_assert_eq!(c.clean_start, m.clean);
        prop_assert_eq!(c.keep_alive_secs, m.keep_alive);
        prop_assert_eq!(c.username.as_ref().map(|u| u.as_str()), m.username.as_deref());
        prop_assert_eq!(c.password.as_deref(), m.password.as_deref());
        prop_assert_eq!(c.session_expiry_interval_secs, m.session_expiry.unwrap_or(0));
        prop_assert_eq!(c.receive_maximum, m.receive_maximum.unwrap_or(u16::MAX));
        prop_assert_eq!(c.maximum_packet_size, m.maximum_packet_size);
        let ups: Vec<(String, String)> = c.properties.user_properties().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        prop_assert_eq!(ups, m.user_properties.clone());
        match (&c.will, &m.will) {
            (None, None) => {}
            (Some(w), Some(mw)) => {
                prop_assert_eq!(w.topic.as_str(), mw.topic.as_str());
                prop_assert_eq!(&w.payload[..], &mw.payload[..]);
                prop_assert_eq!(w.qos as u8, mw.qos);
                prop_assert_eq!(w.retain, mw.retain);
                prop_assert_eq!(w.delay_interval_secs, mw.delay.unwrap_or(0));
            }
            _ => prop_assert!(false, "will mismatch"),
        }
        // Any split point gives the same packet.
        let cut = bytes.len() / 2;
        let mut buf = BytesMut::from(&bytes[..cut]);
        let mut dec = Decoder::default();
        prop_assert_eq!(dec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&bytes[cut..]);
        prop_assert_eq!(dec.decode(&mut buf).unwrap().map(|p| p.name()), Some("CONNECT"));
    }

    #[test]
    fn client_publish_round_trips(
        v5 in any::<bool>(), qos in 0u8..3, dup in any::<bool>(), retain in any::<bool>(),
        topic in topic_name(), id in 1u16.., expiry in prop::option::of(any::<u32>()),
        payload in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let dup = dup && qos > 0;
        let expiry = expiry.filter(|_| v5);
        let bytes = client::publish(v5, qos, dup, retain, &topic, id, expiry, &payload);
        let version = if v5 { V5 } else { V3 };
        let Packet::Publish(p) = one(&mut Decoder::connected(1 << 20, version), &bytes) else { panic!() };
        prop_assert_eq!((p.qos as u8, p.dup, p.retain), (qos, dup, retain));
        prop_assert_eq!(p.topic.as_str(), topic.as_str());
        prop_assert_eq!(p.packet_id, (qos > 0).then_some(id));
        prop_assert_eq!(p.message_expiry_interval_secs, expiry);
        prop_assert_eq!(&p.payload[..], &payload[..]);
    }

    /// The server's PUBLISH encoder, read back by the decoder, byte for byte equal to the test
    /// encoder's packet; header and payload written separately equal the whole.
    #[test]
    fn server_publish_matches_client_layout(
        v5 in any::<bool>(), qos in 0u8..2, retain in any::<bool>(), topic in topic_name(), id in 1u16..,
        expiry in prop::option::of(any::<u32>()), payload in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let version = if v5 { V5 } else { V3 };
        let expiry = expiry.filter(|_| v5);
        let h = PublishHeader {
            topic: &topic,
            qos: QoS::from_bits(qos).unwrap(),
            packet_id: id,
            dup: false,
            retain,
            message_expiry_interval_secs: expiry,
            payload_is_utf8: false,
        };
        let mut whole = BytesMut::new();
        let len = mqtt::encode_publish(version, &h, &payload, &mut whole).unwrap();
        prop_assert_eq!(len, whole.len());
        prop_assert_eq!(&whole[..], &client::publish(v5, qos, false, retain, &topic, id, expiry, &payload)[..]);
        let mut header = BytesMut::new();
        mqtt::encode_publish_header(version, &h, payload.len(), &mut header).unwrap();
        header.extend_from_slice(&payload);
        prop_assert_eq!(&header[..], &whole[..]);
    }

    #[test]
    fn subscribe_and_unsubscribe_round_trip(
        v5 in any::<bool>(), id in 1u16.., sub_id in prop::option::of(1u32..=268_435_455),
        filters in prop::collection::vec((topic_filter(), 0u8..3, any::<bool>(), any::<bool>(), 0u8..3), 1..6),
    ) {
        let version = if v5 { V5 } else { V3 };
        let entries: Vec<(String, u8)> = filters
            .iter()
            .map(|(f, q, nl, rap, rh)| {
                let shared = f.starts_with("$share/");
                let opts = if v5 { q | u8::from(*nl && !shared) << 2 | u8::from(*rap) << 3 | rh << 4 } else { *q };
                (f.clone(), opts)
            })
            .collect();
        let sub_id = sub_id.filter(|_| v5);
        let bytes = client::subscribe(v5, id, sub_id, &entries);
        let mut dec = Decoder::connected(1 << 20, version);
        let Packet::Subscribe(s) = one(&mut dec, &bytes) else { panic!() };
        prop_assert_eq!(s.packet_id, id);
        prop_assert_eq!(s.subscription_identifier, sub_id);
        let got: Vec<(String, u8)> = s.subscriptions.iter().map(|s| (s.filter.to_string(), s.options.to_byte())).collect();
        prop_assert_eq!(got, entries.clone());
        let names: Vec<String> = entries.into_iter().map(|(f, _)| f).collect();
        let Packet::Unsubscribe(u) = one(&mut dec, &client::unsubscribe(v5, id, &names)) else { panic!() };
        prop_assert_eq!(u.filters.iter().map(|f| f.to_string()).collect::<Vec<_>>(), names);
    }

    #[test]
    fn server_acks_read_back(v5 in any::<bool>(), id in 1u16.., kind in 0usize..4, fail in any::<bool>()) {
        let version = if v5 { V5 } else { V3 };
        let kind = [AckKind::PubAck, AckKind::PubRec, AckKind::PubRel, AckKind::PubComp][kind];
        let reason = match (fail && v5, kind) {
            (false, _) => ReasonCode::SUCCESS,
            (true, AckKind::PubAck | AckKind::PubRec) => ReasonCode::NOT_AUTHORIZED,
            (true, _) => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        };
        let mut b = BytesMut::new();
        mqtt::encode_ack_with_reason_string(kind, version, id, reason, fail.then_some("why"), &mut b).unwrap();
        let p = one(&mut Decoder::connected(1 << 20, version), &b);
        let a = match p {
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => a,
            _ => panic!(),
        };
        prop_assert_eq!((a.packet_id, a.reason), (id, reason));
    }

    #[test]
    fn topic_matching_agrees_with_a_reference(filter in topic_filter(), name in topic_name()) {
        prop_assert_eq!(mqtt::topic_matches(&filter, &name), reference_match(&filter, &name));
        // A name without wildcards used as a filter matches itself.
        prop_assert!(mqtt::topic_matches(&name, &name));
    }
}

/// A slow, obviously correct matcher over level vectors.
fn reference_match(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let n: Vec<&str> = name.split('/').collect();
    fn go(f: &[&str], n: &[&str]) -> bool {
        match (f.first(), n.first()) {
            (Some(&"#"), _) => true,
            (None, None) => true,
            (Some(&"+"), Some(_)) => go(&f[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&f[1..], &n[1..]),
            _ => false,
        }
    }
    go(&f, &n)
}

// ---- Bounded fuzz run ----

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

/// Whether an error is consistent with its own claim.
fn documented(e: &MqttError) -> bool {
    match e {
        MqttError::TooLarge { len, max } => len > max,
        MqttError::ReservedType(t) => *t == 0 || *t == 15,
        MqttError::Truncated(n) => *n > 0,
        _ => !e.to_string().is_empty(),
    }
}

fn fuzz_once(dec: &mut Decoder, input: &[u8]) {
    let mut buf = BytesMut::from(input);
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) => return,
            Err(e) => {
                assert!(documented(&e), "{e:?} for {input:02x?}");
                let mut out = BytesMut::new();
                dec.reply(&e).encode(&mut out);
                assert!(out.len() <= 5);
                return;
            }
        }
    }
}

#[test]
fn fuzz_decoder_with_seeded_random_and_mutated_input() {
    let started = Instant::now();
    let mut seeds: Vec<(Option<ProtocolVersion>, Vec<u8>)> =
        vec![(None, CONNECT_V3.to_vec()), (None, CONNECT_V5.to_vec())];
    for (b, _) in v3_stream() {
        seeds.push((Some(V3), b.to_vec()));
    }
    for (b, _) in v5_stream() {
        seeds.push((Some(V5), b.to_vec()));
    }
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    // MQTT_FUZZ_ROUNDS raises the count for a longer run outside the ordinary suite.
    let rounds: u32 = std::env::var("MQTT_FUZZ_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(300_000);
    let mut runs = 0u32;
    for round in 0..rounds {
        let (version, input) = if round % 8 == 0 {
            let n = rng.below(40);
            let v = [None, Some(V3), Some(V5)][rng.below(3)];
            (v, (0..n).map(|_| rng.next() as u8).collect::<Vec<u8>>())
        } else {
            let (v, seed) = &seeds[rng.below(seeds.len())];
            let mut m = seed.clone();
            for _ in 0..=rng.below(4) {
                match rng.below(6) {
                    0 | 1 => {
                        let i = rng.below(m.len());
                        m[i] = rng.next() as u8;
                    }
                    2 => {
                        let i = rng.below(m.len());
                        m[i] ^= 1 << rng.below(8);
                    }
                    3 => m.truncate(rng.below(m.len() + 1)),
                    4 => {
                        let i = rng.below(m.len() + 1);
                        m.insert(i, rng.next() as u8);
                    }
                    _ => {
                        // Keep the remaining length consistent after a body edit, to reach the
                        // field parsers rather than stop at framing.
                        if m.len() >= 2 && m.len() < 129 {
                            m[1] = (m.len() - 2) as u8;
                        }
                    }
                }
                if m.is_empty() {
                    break;
                }
            }
            (*v, m)
        };
        let mut dec = match version {
            None => Decoder::new(512),
            Some(v) => Decoder::connected(512, v),
        };
        fuzz_once(&mut dec, &input);
        runs += 1;
    }
    assert_eq!(runs, rounds);
    eprintln!("{rounds} fuzz inputs in {:?}", started.elapsed());
}
