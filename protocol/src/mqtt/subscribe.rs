//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (sections 3.8–3.11).

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{EncodeError, MqttError};
use super::property::{self, Properties, Property};
use super::reason::ReasonCode;
use super::string::TopicFilter;
use super::wire::{self, Reader};
use super::{ProtocolVersion, QoS};

/// A SUBSCRIBE: every filter is well-formed (see [`TopicFilter`]); whether Herald grants it is
/// the adapter's call, answered per filter in the SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    /// 5.0 subscription identifier. Herald's CONNACK says they are not available: answer every
    /// filter of a SUBSCRIBE that carries one with 0xA1.
    pub subscription_identifier: Option<u32>,
    /// At least one.
    pub subscriptions: Vec<Subscription>,
    pub properties: Properties,
}

/// One topic filter of a SUBSCRIBE and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: TopicFilter,
    pub options: SubscriptionOptions,
}

/// Subscription options (5.0 section 3.8.3.1; 3.1.1 has only the QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    /// The highest QoS the client wants messages at.
    pub max_qos: QoS,
    /// 5.0: do not send the client its own publications.
    pub no_local: bool,
    /// 5.0: keep the RETAIN flag as published when forwarding.
    pub retain_as_published: bool,
    /// 5.0: 0 send retained messages on subscribe, 1 only on a new subscription, 2 never.
    pub retain_handling: u8,
}

impl SubscriptionOptions {
    /// Options with only a QoS (all a 3.1.1 client can say).
    pub fn qos(max_qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions { max_qos, no_local: false, retain_as_published: false, retain_handling: 0 }
    }

    /// The options byte as the client sent it.
    pub fn to_byte(self) -> u8 {
        self.max_qos as u8
            | u8::from(self.no_local) << 2
            | u8::from(self.retain_as_published) << 3
            | self.retain_handling << 4
    }
}

/// An UNSUBSCRIBE: at least one well-formed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<TopicFilter>,
    pub properties: Properties,
}

fn packet_id(r: &mut Reader) -> Result<u16, MqttError> {
    match r.u16("packet identifier")? {
        0 => Err(MqttError::ZeroPacketId(r.packet())),
        id => Ok(id),
    }
}

fn filter(r: &mut Reader) -> Result<TopicFilter, MqttError> {
    TopicFilter::new(r.string("topic filter")?).ok_or(MqttError::InvalidTopicFilter(r.packet()))
}

pub(crate) fn parse_subscribe(body: Bytes, v: ProtocolVersion) -> Result<Subscribe, MqttError> {
    const P: &str = "SUBSCRIBE";
    let mut r = Reader::new(body, P);
    let packet_id = packet_id(&mut r)?;
    let mut subscription_identifier = None;
    let mut properties = Properties::default();
    if v == ProtocolVersion::V5 {
        properties = property::read(&mut r, property::IN_SUBSCRIBE, |p| {
            if let Property::SubscriptionIdentifier(id) = *p {
                subscription_identifier = Some(id);
            }
            Ok(())
        })?;
    }
    // Each entry is at least 4 bytes (empty filters are rejected), which bounds the Vec.
    let mut subscriptions = Vec::with_capacity((r.remaining() / 4).min(16));
    while !r.is_empty() {
        let filter = filter(&mut r)?;
        let b = r.u8("subscription options")?;
        let reserved = match v {
            ProtocolVersion::V311 => 0xfc,
            ProtocolVersion::V5 => 0xc0,
        };
        if b & reserved != 0 {
            return Err(MqttError::Malformed { packet: P, what: "reserved subscription option bits set" });
        }
        let Some(max_qos) = QoS::from_bits(b & 0x03) else {
            return Err(MqttError::Malformed { packet: P, what: "maximum QoS 3" });
        };
        let options = SubscriptionOptions {
            max_qos,
            no_local: b & 0x04 != 0,
            retain_as_published: b & 0x08 != 0,
            retain_handling: (b >> 4) & 0x03,
        };
        if options.retain_handling == 3 {
            return Err(MqttError::ProtocolError { packet: P, what: "retain handling 3" });
        }
        if options.no_local && filter.is_shared() {
            return Err(MqttError::ProtocolError { packet: P, what: "no local on a shared subscription" });
        }
        subscriptions.push(Subscription { filter, options });
    }
    if subscriptions.is_empty() {
        return Err(MqttError::NoTopicFilters(P));
    }
    Ok(Subscribe { packet_id, subscription_identifier, subscriptions, properties })
}

pub(crate) fn parse_unsubscribe(body: Bytes, v: ProtocolVersion) -> Result<Unsubscribe, MqttError> {
    const P: &str = "UNSUBSCRIBE";
    let mut r = Reader::new(body, P);
    let packet_id = packet_id(&mut r)?;
    let mut properties = Properties::default();
    if v == ProtocolVersion::V5 {
        properties = property::read(&mut r, property::IN_UNSUBSCRIBE, |_| Ok(()))?;
    }
    let mut filters = Vec::with_capacity((r.remaining() / 3).min(16));
    while !r.is_empty() {
        filters.push(filter(&mut r)?);
    }
    if filters.is_empty() {
        return Err(MqttError::NoTopicFilters(P));
    }
    Ok(Unsubscribe { packet_id, filters, properties })
}

/// Writes a SUBACK with one reason code per filter of the SUBSCRIBE, in order. 5.0 codes are
/// written as given (granted QoS 0x00–0x02, or e.g. 0x87 not authorized, 0x8F topic filter
/// invalid, 0x9E shared subscriptions not supported, 0xA1 subscription identifiers not
/// supported); for 3.1.1 a granted QoS stays and any failure becomes 0x80.
pub fn encode_suback(
    version: ProtocolVersion,
    packet_id: u16,
    reasons: &[ReasonCode],
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    if reasons.is_empty() {
        return Err(EncodeError::NoReasonCodes);
    }
    if packet_id == 0 {
        return Err(EncodeError::ZeroPacketId);
    }
    let props = usize::from(version == ProtocolVersion::V5);
    wire::put_fixed_header(dst, 0x90, 2 + props + reasons.len())?;
    dst.put_u16(packet_id);
    if props == 1 {
        dst.put_u8(0);
    }
    for r in reasons {
        dst.put_u8(match version {
            ProtocolVersion::V311 => r.to_suback_return_code(),
            ProtocolVersion::V5 => r.0,
        });
    }
    Ok(())
}

/// Writes an UNSUBACK. 5.0 needs one reason code per filter (0x00 success, 0x11 no
/// subscription existed, 0x87 not authorized, …); 3.1.1 has none and ignores `reasons`.
pub fn encode_unsuback(
    version: ProtocolVersion,
    packet_id: u16,
    reasons: &[ReasonCode],
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    if packet_id == 0 {
        return Err(EncodeError::ZeroPacketId);
    }
    match version {
        ProtocolVersion::V311 => {
            wire::put_fixed_header(dst, 0xb0, 2)?;
            dst.put_u16(packet_id);
        }
        ProtocolVersion::V5 => {
            if reasons.is_empty() {
                return Err(EncodeError::NoReasonCodes);
            }
            wire::put_fixed_header(dst, 0xb0, 3 + reasons.len())?;
            dst.put_u16(packet_id);
            dst.put_u8(0);
            dst.extend(reasons.iter().map(|r| r.0));
        }
    }
    Ok(())
}
