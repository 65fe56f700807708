//! MQTT 3.1.1 and 5.0 packet codec (sans-IO), for the gateway's MQTT listener.
//!
//! Server side only: [`Decoder`] reads the packets a client sends, and the `encode_*` functions
//! and [`ConnAck`] write what a server sends into a caller's `BytesMut`. No sockets, no clock,
//! no runtime: keep-alive deadlines, sessions and authorization belong to the adapter that
//! drives this codec over Herald's shared session logic.
//!
//! Connection rules the [`Decoder`] enforces, so the adapter need not: the first packet must be
//! CONNECT and there is only one; the protocol version comes from it (level 4 = 3.1.1, 5 = 5.0)
//! and decides how every later packet is read; a DISCONNECT may not raise a session expiry of
//! 0. On any [`MqttError`], send what [`Decoder::reply`] says (a CONNACK, a 5.0 DISCONNECT, or
//! nothing) and close.
//!
//! What stays with the adapter: answering CONNECT (CONNACK 0x86/0x04 for a bad credential, an
//! assigned client id for an empty one, 0x8C for an authentication method), QoS 2 PUBLISH when
//! CONNACK said maximum QoS 1 (5.0: DISCONNECT 0x9B), per-filter SUBACK codes, and never sending a
//! client a packet over its maximum packet size.
//!
//! Layout: [`wire`] primitive encodings, [`property`] 5.0 properties, [`string`] validated
//! strings, [`topic`] filters and matching, one module per packet family, [`decoder`] the
//! framing and connection rules.

pub mod ack;
pub mod connack;
pub mod connect;
pub mod decoder;
pub mod disconnect;
pub mod error;
pub mod property;
pub mod publish;
pub mod reason;
pub mod string;
pub mod subscribe;
pub mod topic;
pub mod wire;

use bytes::{BufMut, BytesMut};

pub use ack::{Ack, AckKind, encode_ack, encode_ack_with_reason_string};
pub use connack::{ConnAck, ConnAckProperties};
pub use connect::{Connect, Will};
pub use decoder::{DEFAULT_MAX_PACKET_BYTES, Decoder, Packet, Reply};
pub use disconnect::{Auth, Disconnect, DisconnectProperties, encode_disconnect, encode_disconnect_with};
pub use error::{EncodeError, MqttError};
pub use property::{Properties, Property};
pub use publish::{Publish, PublishHeader, encode_publish, encode_publish_header};
pub use reason::{ConnectReturnCode, ReasonCode};
pub use string::{ClientId, TopicFilter, TopicName, Utf8};
pub use subscribe::{
    Subscribe, Subscription, SubscriptionOptions, Unsubscribe, encode_suback, encode_unsuback,
};
pub use topic::topic_matches;

/// The protocol version a client chose in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub const fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for two bits' value; `None` for 3, which is always invalid.
    pub const fn from_bits(b: u8) -> Option<QoS> {
        match b {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Writes a PINGRESP: exactly 2 bytes, the same in both versions.
pub fn encode_pingresp(dst: &mut BytesMut) {
    dst.put_slice(&[0xd0, 0x00]);
}
