//! What can be wrong with bytes from an MQTT client, and what the server answers before closing.

use super::reason::{ConnectReturnCode, ReasonCode};

/// Why bytes from a client are not an acceptable packet. Every variant is the client's fault and
/// ends the connection; [`MqttError::reason_code`] is the 5.0 reason code for it and
/// [`super::Decoder::reply`] says what to send (CONNACK, DISCONNECT or nothing) given where the
/// connection is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    /// The remaining length declares a packet over the server's limit; nothing was buffered
    /// for it. 5.0: 0x95 packet too large.
    #[error("packet of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The remaining length is longer than four bytes or not minimally encoded. 0x81.
    #[error("malformed remaining length")]
    BadRemainingLength,
    /// Packet type 0, or 15 (AUTH) in 3.1.1. 0x81.
    #[error("reserved packet type {0}")]
    ReservedType(u8),
    /// A packet only a server sends (CONNACK, SUBACK, …) came from a client. 0x82.
    #[error("{0} is not sent by clients")]
    UnexpectedPacket(&'static str),
    /// The first packet was not CONNECT (MQTT-3.1.0-1). The server closes without an answer.
    #[error("first packet is not CONNECT")]
    NotConnectFirst,
    /// A second CONNECT (MQTT-3.1.0-2). 0x82.
    #[error("second CONNECT on one connection")]
    SecondConnect,
    /// Reserved bits of the fixed header's first byte are wrong (MQTT-2.2.2-2). 0x81.
    #[error("invalid fixed-header flags 0x{flags:x} on {packet}")]
    InvalidFlags { packet: &'static str, flags: u8 },
    /// A field runs past the remaining length, bytes are left over, or a field holds a value
    /// the spec calls malformed. 0x81.
    #[error("malformed {packet}: {what}")]
    Malformed { packet: &'static str, what: &'static str },
    /// A string is not well-formed UTF-8 or holds U+0000 (MQTT-1.5.4-1, -2). 0x81.
    #[error("{packet}: {what} is not a valid UTF-8 string")]
    InvalidUtf8 { packet: &'static str, what: &'static str },
    /// Well-formed, but the packet breaks a rule of the protocol. 0x82.
    #[error("protocol error in {packet}: {what}")]
    ProtocolError { packet: &'static str, what: &'static str },
    /// CONNECT's protocol name is neither "MQTT" nor 3.1's "MQIsdp". The server closes.
    #[error("unknown protocol name")]
    InvalidProtocolName,
    /// CONNECT names a protocol level other than 4 (3.1.1) or 5 (5.0). 3.1.1 CONNACK 0x01;
    /// 5.0 0x84.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// 3.1.1: an empty client id without clean session (MQTT-3.1.3-8). CONNACK 0x02; 5.0 0x85.
    #[error("client identifier rejected")]
    IdentifierRejected,
    /// QoS 3 in a PUBLISH or a will (MQTT-3.3.1-4). 0x81.
    #[error("QoS 3 in {0}")]
    InvalidQos(&'static str),
    /// A packet identifier of 0 where one is required (MQTT-2.2.1-3). 0x82.
    #[error("packet identifier 0 in {0}")]
    ZeroPacketId(&'static str),
    /// A PUBLISH or will topic name that is empty or holds `+` or `#` (MQTT-3.3.2-2). 0x90.
    #[error("invalid topic name in {0}")]
    InvalidTopicName(&'static str),
    /// A topic filter that is empty or has a misplaced `+` or `#` (MQTT-4.7.1). 0x8F.
    #[error("invalid topic filter in {0}")]
    InvalidTopicFilter(&'static str),
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter (MQTT-3.8.3-3, 3.10.3-2). 0x82.
    #[error("{0} without topic filters")]
    NoTopicFilters(&'static str),
    /// A property identifier that does not exist or is not allowed in this packet. 0x81.
    #[error("property 0x{id:02x} is not allowed in {packet}")]
    UnknownProperty { packet: &'static str, id: u32 },
    /// A property that may appear once appears twice. 0x82.
    #[error("property 0x{id:02x} repeated in {packet}")]
    DuplicateProperty { packet: &'static str, id: u8 },
    /// A property with a value the spec forbids (receive maximum 0, a flag other than 0/1, …).
    /// 0x82.
    #[error("property 0x{id:02x} has an invalid value in {packet}")]
    InvalidPropertyValue { packet: &'static str, id: u8 },
    /// A topic alias: Herald's CONNACK advertises a topic alias maximum of 0, so any alias is
    /// out of range (MQTT-3.3.2-9). 0x94.
    #[error("topic alias {0} exceeds the maximum of 0")]
    TopicAliasInvalid(u16),
    /// A reason code that is not defined for this packet. 0x81.
    #[error("reason code 0x{code:02x} is not valid in {packet}")]
    InvalidReasonCode { packet: &'static str, code: u8 },
    /// The peer closed its side inside a packet.
    #[error("stream ended inside a packet ({0} bytes left)")]
    Truncated(usize),
}

impl MqttError {
    /// The 5.0 reason code to send (in CONNACK before the connection is accepted, DISCONNECT
    /// after) before closing.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            MqttError::TooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            MqttError::BadRemainingLength
            | MqttError::ReservedType(_)
            | MqttError::InvalidFlags { .. }
            | MqttError::Malformed { .. }
            | MqttError::InvalidUtf8 { .. }
            | MqttError::InvalidQos(_)
            | MqttError::UnknownProperty { .. }
            | MqttError::InvalidReasonCode { .. }
            | MqttError::Truncated(_) => ReasonCode::MALFORMED_PACKET,
            MqttError::UnexpectedPacket(_)
            | MqttError::NotConnectFirst
            | MqttError::SecondConnect
            | MqttError::ProtocolError { .. }
            | MqttError::ZeroPacketId(_)
            | MqttError::NoTopicFilters(_)
            | MqttError::DuplicateProperty { .. }
            | MqttError::InvalidPropertyValue { .. } => ReasonCode::PROTOCOL_ERROR,
            MqttError::InvalidProtocolName | MqttError::UnsupportedProtocolVersion(_) => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            MqttError::IdentifierRejected => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            MqttError::InvalidTopicName(_) => ReasonCode::TOPIC_NAME_INVALID,
            MqttError::InvalidTopicFilter(_) => ReasonCode::TOPIC_FILTER_INVALID,
            MqttError::TopicAliasInvalid(_) => ReasonCode::TOPIC_ALIAS_INVALID,
        }
    }

    /// The 3.1.1 CONNACK return code for a CONNECT that fails this way, where 3.1.1 defines one;
    /// for every other error a 3.1.1 server closes without an answer.
    pub fn connect_return_code(&self) -> Option<ConnectReturnCode> {
        match self {
            MqttError::UnsupportedProtocolVersion(_) => {
                Some(ConnectReturnCode::UNACCEPTABLE_PROTOCOL_VERSION)
            }
            MqttError::IdentifierRejected => Some(ConnectReturnCode::IDENTIFIER_REJECTED),
            _ => None,
        }
    }
}

/// Why a packet could not be encoded: the caller's values do not fit the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("remaining length over 268,435,455 bytes")]
    TooLarge,
    #[error("a string or binary field is longer than 65,535 bytes")]
    FieldTooLong,
    #[error("packet identifier 0 where one is required")]
    ZeroPacketId,
    #[error("QoS above 2")]
    InvalidQos,
    #[error("a topic name must be non-empty and without wildcards")]
    InvalidTopicName,
    #[error("this reason code has no MQTT 3.1.1 equivalent: close the connection instead")]
    NotInV311,
    #[error("a SUBACK or UNSUBACK needs at least one reason code")]
    NoReasonCodes,
}
