//! PUBLISH (section 3.3): decoding a client's, and encoding the server's so that one payload can
//! be shared by every recipient.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{EncodeError, MqttError};
use super::property::{self, PropWriter, Properties, Property};
use super::string::TopicName;
use super::topic;
use super::wire::{self, Reader};
use super::{ProtocolVersion, QoS};

const P: &str = "PUBLISH";

const FLAG_RETAIN: u8 = 0x01;
const FLAG_QOS: u8 = 0x06;
const FLAG_DUP: u8 = 0x08;

/// A PUBLISH from a client. The payload is a slice of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: TopicName,
    /// Present exactly when `qos` is 1 or 2; never 0.
    pub packet_id: Option<u16>,
    /// 5.0 message expiry interval.
    pub message_expiry_interval_secs: Option<u32>,
    /// 5.0 payload format indicator 1: the payload claims to be UTF-8 (not checked here).
    pub payload_is_utf8: bool,
    pub properties: Properties,
    pub payload: Bytes,
}

pub(crate) fn parse(flags: u8, body: Bytes, v: ProtocolVersion) -> Result<Publish, MqttError> {
    let qos = QoS::from_bits((flags & FLAG_QOS) >> 1).ok_or(MqttError::InvalidQos(P))?;
    let dup = flags & FLAG_DUP != 0;
    if dup && qos == QoS::AtMostOnce {
        // MQTT-3.3.1-2: DUP must be 0 for QoS 0.
        return Err(MqttError::InvalidFlags { packet: P, flags });
    }
    let mut r = Reader::new(body, P);
    let topic = r.string("topic name")?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => match r.u16("packet identifier")? {
            0 => return Err(MqttError::ZeroPacketId(P)),
            id => Some(id),
        },
    };
    let mut p = Publish {
        dup,
        qos,
        retain: flags & FLAG_RETAIN != 0,
        topic: TopicName::empty(),
        packet_id,
        message_expiry_interval_secs: None,
        payload_is_utf8: false,
        properties: Properties::default(),
        payload: Bytes::new(),
    };
    if v == ProtocolVersion::V5 {
        p.properties = property::read(&mut r, property::IN_PUBLISH, |prop| {
            match *prop {
                Property::MessageExpiryInterval(e) => p.message_expiry_interval_secs = Some(e),
                Property::PayloadFormatIndicator(f) => p.payload_is_utf8 = f == 1,
                // Herald's CONNACK advertises a topic alias maximum of 0.
                Property::TopicAlias(a) => return Err(MqttError::TopicAliasInvalid(a)),
                Property::SubscriptionIdentifier(_) => {
                    return Err(MqttError::ProtocolError {
                        packet: P,
                        what: "subscription identifier from a client",
                    });
                }
                Property::ResponseTopic(ref t) if !topic::valid_name(t.as_str()) => {
                    return Err(MqttError::ProtocolError {
                        packet: P,
                        what: "response topic is not a topic name",
                    });
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    p.topic = TopicName::new(topic).ok_or(MqttError::InvalidTopicName(P))?;
    p.payload = r.rest();
    Ok(p)
}

/// What goes before the payload of a PUBLISH the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishHeader<'a> {
    /// A topic name: non-empty, no wildcards.
    pub topic: &'a str,
    pub qos: QoS,
    /// Required (non-zero) for QoS 1 and 2; ignored for QoS 0.
    pub packet_id: u16,
    pub dup: bool,
    pub retain: bool,
    /// 5.0 only: the message's remaining lifetime, so the client can drop it when stale.
    pub message_expiry_interval_secs: Option<u32>,
    /// 5.0 only: sends payload format indicator 1 (the payload is UTF-8 text).
    pub payload_is_utf8: bool,
}

impl<'a> PublishHeader<'a> {
    /// A QoS 0 header with no flags and no properties.
    pub fn qos0(topic: &'a str) -> PublishHeader<'a> {
        PublishHeader {
            topic,
            qos: QoS::AtMostOnce,
            packet_id: 0,
            dup: false,
            retain: false,
            message_expiry_interval_secs: None,
            payload_is_utf8: false,
        }
    }

    /// A QoS 1 header with no flags and no properties.
    pub fn qos1(topic: &'a str, packet_id: u16) -> PublishHeader<'a> {
        PublishHeader { qos: QoS::AtLeastOnce, packet_id, ..PublishHeader::qos0(topic) }
    }

    fn props(&self, w: &mut PropWriter<'_>) {
        if self.payload_is_utf8 {
            w.u8(property::PAYLOAD_FORMAT_INDICATOR, 1);
        }
        if let Some(e) = self.message_expiry_interval_secs {
            w.u32(property::MESSAGE_EXPIRY_INTERVAL, e);
        }
    }
}

/// Writes a PUBLISH's fixed header, topic, packet id and (5.0) properties for a payload of
/// `payload_len` bytes, which the caller writes next: appended to `dst`, or as a second buffer
/// of a vectored write, so that one `Bytes` payload is shared by every recipient of a fan-out.
/// Returns the whole packet's length (header and payload), to compare with a client's maximum
/// packet size.
pub fn encode_publish_header(
    version: ProtocolVersion,
    h: &PublishHeader<'_>,
    payload_len: usize,
    dst: &mut BytesMut,
) -> Result<usize, EncodeError> {
    if !topic::valid_name(h.topic) {
        return Err(EncodeError::InvalidTopicName);
    }
    let topic_len = wire::check_field(h.topic.as_bytes())?;
    let id_len = if h.qos == QoS::AtMostOnce {
        0
    } else if h.packet_id == 0 {
        return Err(EncodeError::ZeroPacketId);
    } else {
        2
    };
    let props_len = match version {
        ProtocolVersion::V311 => None,
        ProtocolVersion::V5 => {
            let mut c = PropWriter::counter();
            h.props(&mut c);
            Some(c.len())
        }
    };
    let remaining = topic_len + id_len + props_len.map_or(0, property::block_len) + payload_len;
    let mut first = 0x30 | (h.qos as u8) << 1;
    if h.dup && h.qos != QoS::AtMostOnce {
        first |= FLAG_DUP;
    }
    if h.retain {
        first |= FLAG_RETAIN;
    }
    let start = dst.len();
    wire::put_fixed_header(dst, first, remaining)?;
    wire::put_field(dst, h.topic.as_bytes());
    if id_len != 0 {
        dst.put_u16(h.packet_id);
    }
    if let Some(len) = props_len {
        property::put_block_len(dst, len);
        h.props(&mut PropWriter::writer(dst));
    }
    Ok(dst.len() - start + payload_len)
}

/// Writes a whole PUBLISH (header and payload) into `dst`; returns its length.
pub fn encode_publish(
    version: ProtocolVersion,
    h: &PublishHeader<'_>,
    payload: &[u8],
    dst: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let len = encode_publish_header(version, h, payload.len(), dst)?;
    dst.put_slice(payload);
    Ok(len)
}
