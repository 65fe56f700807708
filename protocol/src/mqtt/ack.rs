//! PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.4–3.7): acknowledgements of QoS 1 and 2.
//! Herald delivers at QoS 0 and 1; the QoS 2 packets are decoded and encoded so that a QoS 2
//! flow can be refused properly.

use bytes::{BufMut, Bytes, BytesMut};

use super::ProtocolVersion;
use super::error::{EncodeError, MqttError};
use super::property::{self, PropWriter, Properties};
use super::reason::ReasonCode;
use super::wire::{self, Reader};

/// Which of the four acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

impl AckKind {
    pub const fn name(self) -> &'static str {
        match self {
            AckKind::PubAck => "PUBACK",
            AckKind::PubRec => "PUBREC",
            AckKind::PubRel => "PUBREL",
            AckKind::PubComp => "PUBCOMP",
        }
    }

    const fn first_byte(self) -> u8 {
        match self {
            AckKind::PubAck => 0x40,
            AckKind::PubRec => 0x50,
            // PUBREL's fixed header flags are 0b0010 (MQTT-3.6.1-1).
            AckKind::PubRel => 0x62,
            AckKind::PubComp => 0x70,
        }
    }

    /// Whether a client may send this reason code in this packet (5.0 sections 3.4.2.1 ff.).
    fn allows(self, code: u8) -> bool {
        match self {
            AckKind::PubAck | AckKind::PubRec => {
                matches!(code, 0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99)
            }
            AckKind::PubRel | AckKind::PubComp => matches!(code, 0x00 | 0x92),
        }
    }
}

/// An acknowledgement from a client. For Herald a PUBACK is a delivery receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    /// 5.0 reason code; success (0x00) for 3.1.1 and when omitted.
    pub reason: ReasonCode,
    pub properties: Properties,
}

pub(crate) fn parse(kind: AckKind, body: Bytes, v: ProtocolVersion) -> Result<Ack, MqttError> {
    let packet = kind.name();
    let mut r = Reader::new(body, packet);
    let packet_id = r.u16("packet identifier")?;
    if packet_id == 0 {
        return Err(MqttError::ZeroPacketId(packet));
    }
    let mut ack = Ack { packet_id, reason: ReasonCode::SUCCESS, properties: Properties::default() };
    // 5.0: the reason code and then the property length may be omitted (remaining length 2 / 3).
    if v == ProtocolVersion::V5 && !r.is_empty() {
        let code = r.u8("reason code")?;
        if !kind.allows(code) {
            return Err(MqttError::InvalidReasonCode { packet, code });
        }
        ack.reason = ReasonCode(code);
        if !r.is_empty() {
            ack.properties = property::read(&mut r, property::IN_ACK, |_| Ok(()))?;
        }
    }
    r.finish()?;
    Ok(ack)
}

/// Writes an acknowledgement. 5.0 uses the shortest form: a success without properties is 4
/// bytes, like 3.1.1's. 3.1.1 has no reason codes: a failure there is [`EncodeError::NotInV311`]
/// (close the connection instead).
pub fn encode_ack(
    kind: AckKind,
    version: ProtocolVersion,
    packet_id: u16,
    reason: ReasonCode,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    encode_ack_with_reason_string(kind, version, packet_id, reason, None, dst)
}

/// [`encode_ack`] with a 5.0 reason string (send one only if the client did not set request
/// problem information to 0). Ignored for 3.1.1.
pub fn encode_ack_with_reason_string(
    kind: AckKind,
    version: ProtocolVersion,
    packet_id: u16,
    reason: ReasonCode,
    reason_string: Option<&str>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    if packet_id == 0 {
        return Err(EncodeError::ZeroPacketId);
    }
    match version {
        ProtocolVersion::V311 if reason.is_failure() => Err(EncodeError::NotInV311),
        ProtocolVersion::V311 => {
            wire::put_fixed_header(dst, kind.first_byte(), 2)?;
            dst.put_u16(packet_id);
            Ok(())
        }
        ProtocolVersion::V5 => {
            if let Some(s) = reason_string {
                property::check_str(s)?;
            }
            let props = |w: &mut PropWriter<'_>| {
                if let Some(s) = reason_string {
                    w.bytes(property::REASON_STRING, s.as_bytes());
                }
            };
            let mut c = PropWriter::counter();
            props(&mut c);
            let remaining = match (reason, c.len()) {
                (ReasonCode::SUCCESS, 0) => 2,
                (_, 0) => 3,
                (_, n) => 3 + property::block_len(n),
            };
            wire::put_fixed_header(dst, kind.first_byte(), remaining)?;
            dst.put_u16(packet_id);
            if remaining > 2 {
                dst.put_u8(reason.0);
            }
            if remaining > 3 {
                property::put_block_len(dst, c.len());
                props(&mut PropWriter::writer(dst));
            }
            Ok(())
        }
    }
}
