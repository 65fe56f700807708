//! CONNACK (section 3.2): the server's answer to CONNECT.

use bytes::{BufMut, BytesMut};

use super::ProtocolVersion;
use super::error::EncodeError;
use super::property::{self, PropWriter};
use super::reason::ReasonCode;
use super::wire;

/// A CONNACK to encode. The reason is a 5.0 reason code; for 3.1.1 it is written as the return
/// code with the same meaning ([`ReasonCode::to_connect_return_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck<'a> {
    /// Whether the server resumes a stored session; forced to false on a failure
    /// (MQTT-3.2.2-4 / -6).
    pub session_present: bool,
    pub reason: ReasonCode,
    /// 5.0 only; ignored for 3.1.1.
    pub properties: ConnAckProperties<'a>,
}

/// 5.0 CONNACK properties; `None` leaves one out (the client assumes the spec's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnAckProperties<'a> {
    /// The session expiry the server uses, when it differs from the client's.
    pub session_expiry_interval_secs: Option<u32>,
    /// How many unacknowledged QoS 1/2 PUBLISH the server accepts (default 65,535).
    pub receive_maximum: Option<u16>,
    /// Highest QoS the server accepts in PUBLISH (default 2).
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    /// Largest packet the server accepts.
    pub maximum_packet_size: Option<u32>,
    /// The client id the server chose, when CONNECT's was empty.
    pub assigned_client_identifier: Option<&'a str>,
    /// Highest topic alias the server accepts (default 0).
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<&'a str>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    /// Keep-alive the server imposes instead of the client's.
    pub server_keep_alive_secs: Option<u16>,
    /// With 0x9C / 0x9D: where to connect instead.
    pub server_reference: Option<&'a str>,
    pub user_properties: &'a [(&'a str, &'a str)],
}

impl<'a> ConnAckProperties<'a> {
    /// What Herald's listener offers: QoS 0 and 1, no retained messages, wildcards yes, no
    /// subscription identifiers, no shared subscriptions, no topic aliases (the decoder refuses
    /// any alias accordingly), and the largest packet it accepts.
    pub fn herald(maximum_packet_size: u32) -> ConnAckProperties<'a> {
        ConnAckProperties {
            maximum_qos: Some(1),
            retain_available: Some(false),
            maximum_packet_size: Some(maximum_packet_size),
            topic_alias_maximum: Some(0),
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(false),
            shared_subscription_available: Some(false),
            ..ConnAckProperties::default()
        }
    }

    fn check(&self) -> Result<(), EncodeError> {
        for s in
            [self.assigned_client_identifier, self.reason_string, self.server_reference].into_iter().flatten()
        {
            property::check_str(s)?;
        }
        property::check_pairs(self.user_properties)
    }

    fn write(&self, w: &mut PropWriter<'_>) {
        use property as p;
        if let Some(v) = self.session_expiry_interval_secs {
            w.u32(p::SESSION_EXPIRY_INTERVAL, v);
        }
        if let Some(v) = self.receive_maximum {
            w.u16(p::RECEIVE_MAXIMUM, v);
        }
        if let Some(v) = self.maximum_qos {
            w.u8(p::MAXIMUM_QOS, v);
        }
        if let Some(v) = self.retain_available {
            w.u8(p::RETAIN_AVAILABLE, u8::from(v));
        }
        if let Some(v) = self.maximum_packet_size {
            w.u32(p::MAXIMUM_PACKET_SIZE, v);
        }
        if let Some(v) = self.assigned_client_identifier {
            w.bytes(p::ASSIGNED_CLIENT_IDENTIFIER, v.as_bytes());
        }
        if let Some(v) = self.topic_alias_maximum {
            w.u16(p::TOPIC_ALIAS_MAXIMUM, v);
        }
        if let Some(v) = self.reason_string {
            w.bytes(p::REASON_STRING, v.as_bytes());
        }
        if let Some(v) = self.wildcard_subscription_available {
            w.u8(p::WILDCARD_SUBSCRIPTION_AVAILABLE, u8::from(v));
        }
        if let Some(v) = self.subscription_identifiers_available {
            w.u8(p::SUBSCRIPTION_IDENTIFIER_AVAILABLE, u8::from(v));
        }
        if let Some(v) = self.shared_subscription_available {
            w.u8(p::SHARED_SUBSCRIPTION_AVAILABLE, u8::from(v));
        }
        if let Some(v) = self.server_keep_alive_secs {
            w.u16(p::SERVER_KEEP_ALIVE, v);
        }
        if let Some(v) = self.server_reference {
            w.bytes(p::SERVER_REFERENCE, v.as_bytes());
        }
        property::put_pairs(w, self.user_properties);
    }
}

impl ConnAck<'_> {
    /// A CONNACK with no properties.
    pub fn new(session_present: bool, reason: ReasonCode) -> ConnAck<'static> {
        ConnAck { session_present, reason, properties: ConnAckProperties::default() }
    }

    /// Writes the CONNACK for a client of `version`. For 3.1.1, a reason without a return code
    /// is [`EncodeError::NotInV311`]: close the connection without an answer instead.
    pub fn encode(&self, version: ProtocolVersion, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let flags = u8::from(self.session_present && !self.reason.is_failure());
        match version {
            ProtocolVersion::V311 => {
                let code = self.reason.to_connect_return_code().ok_or(EncodeError::NotInV311)?;
                dst.put_slice(&[0x20, 0x02, flags, code.0]);
            }
            ProtocolVersion::V5 => {
                self.properties.check()?;
                let mut c = PropWriter::counter();
                self.properties.write(&mut c);
                wire::put_fixed_header(dst, 0x20, 2 + property::block_len(c.len()))?;
                dst.put_slice(&[flags, self.reason.0]);
                property::put_block_len(dst, c.len());
                self.properties.write(&mut PropWriter::writer(dst));
            }
        }
        Ok(())
    }
}
