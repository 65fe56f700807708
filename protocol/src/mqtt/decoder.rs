//! Framing (fixed header, remaining length, size limit) and the per-connection rules that decide
//! how a packet is read: which version, and whether CONNECT came first.

use bytes::{Buf, BytesMut};

use super::ProtocolVersion;
use super::ack::{self, Ack, AckKind};
use super::connack::ConnAck;
use super::connect::{self, Connect};
use super::disconnect::{self, Auth, Disconnect};
use super::error::MqttError;
use super::publish::{self, Publish};
use super::reason::{ConnectReturnCode, ReasonCode};
use super::subscribe::{self, Subscribe, Unsubscribe};
use super::wire::{self, Varint};

/// Default limit on a whole packet (fixed header included) accepted from a client.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 64 * 1024;

/// Largest packet the format can express: 1 + 4 bytes of header and the largest remaining
/// length.
const MAX_FORMAT_BYTES: usize = 5 + wire::MAX_VARINT as usize;

/// A packet a client sends to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    PingReq,
    Disconnect(Disconnect),
    /// 5.0 only.
    Auth(Auth),
}

impl Packet {
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::PingReq => "PINGREQ",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// What to send a client whose bytes failed to decode, before closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Send nothing.
    Close,
    /// A 3.1.1 CONNACK with this return code.
    ConnAckV311(ConnectReturnCode),
    /// A 5.0 CONNACK with this reason code (no properties).
    ConnAckV5(ReasonCode),
    /// A 5.0 DISCONNECT with this reason code.
    Disconnect(ReasonCode),
}

impl Reply {
    /// Writes the reply (nothing for [`Reply::Close`]).
    pub fn encode(&self, dst: &mut BytesMut) {
        match *self {
            Reply::Close => {}
            Reply::ConnAckV311(code) => dst.extend_from_slice(&[0x20, 0x02, 0x00, code.0]),
            // A bare CONNACK cannot fail to encode.
            Reply::ConnAckV5(reason) => {
                let _ = ConnAck::new(false, reason).encode(ProtocolVersion::V5, dst);
            }
            Reply::Disconnect(reason) => disconnect::encode_disconnect(reason, dst),
        }
    }
}

/// One connection's packet decoder: a size limit, and what it learned from CONNECT.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_packet_bytes: usize,
    version: Option<ProtocolVersion>,
    connected: bool,
    /// CONNECT's session expiry interval was 0, so DISCONNECT may not set one (5.0).
    session_expiry_zero: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_PACKET_BYTES)
    }
}

impl Decoder {
    /// A decoder for a new connection, which expects CONNECT first. `max_packet_bytes` counts
    /// the whole packet, fixed header included (as 5.0's maximum packet size does); advertise
    /// it in CONNACK.
    pub fn new(max_packet_bytes: usize) -> Decoder {
        Decoder {
            max_packet_bytes: max_packet_bytes.min(MAX_FORMAT_BYTES),
            version: None,
            connected: false,
            session_expiry_zero: true,
        }
    }

    /// A decoder for a connection whose CONNECT was already read (tests, tools).
    pub fn connected(max_packet_bytes: usize, version: ProtocolVersion) -> Decoder {
        Decoder { version: Some(version), connected: true, ..Decoder::new(max_packet_bytes) }
    }

    pub fn max_packet_bytes(&self) -> usize {
        self.max_packet_bytes
    }

    /// The client's protocol version, once CONNECT named one.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Whether CONNECT was decoded.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Decodes one packet from the front of `buf`. On `Ok(Some)` its bytes are consumed; on
    /// `Ok(None)` nothing is and more bytes are needed; on `Err` the connection is over: send
    /// [`Decoder::reply`] and close.
    ///
    /// The packet type is checked on its first byte and the declared size against the limit as
    /// soon as the remaining length is complete, before the body is buffered.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, MqttError> {
        let Some(&first) = buf.first() else { return Ok(None) };
        let (ty, flags) = (first >> 4, first & 0x0f);
        self.check_type(ty, flags)?;
        let (remaining, n) = match wire::read_varint(&buf[1..]) {
            Ok(Varint::Done(v, n)) => (v as usize, n),
            Ok(Varint::Partial) => return Ok(None),
            Err(()) => return Err(MqttError::BadRemainingLength),
        };
        let len = 1 + n + remaining;
        if len > self.max_packet_bytes {
            return Err(MqttError::TooLarge { len, max: self.max_packet_bytes });
        }
        if buf.len() < len {
            buf.reserve(len - buf.len());
            return Ok(None);
        }
        let mut body = buf.split_to(len).freeze();
        body.advance(1 + n);
        let Some(v) = self.version.filter(|_| self.connected) else {
            // check_type let only CONNECT through.
            let c = connect::parse(body, &mut self.version)?;
            self.connected = true;
            self.session_expiry_zero = c.session_expiry_interval_secs == 0;
            return Ok(Some(Packet::Connect(Box::new(c))));
        };
        Ok(Some(match ty {
            3 => Packet::Publish(publish::parse(flags, body, v)?),
            4 => Packet::PubAck(ack::parse(AckKind::PubAck, body, v)?),
            5 => Packet::PubRec(ack::parse(AckKind::PubRec, body, v)?),
            6 => Packet::PubRel(ack::parse(AckKind::PubRel, body, v)?),
            7 => Packet::PubComp(ack::parse(AckKind::PubComp, body, v)?),
            8 => Packet::Subscribe(subscribe::parse_subscribe(body, v)?),
            10 => Packet::Unsubscribe(subscribe::parse_unsubscribe(body, v)?),
            12 if body.is_empty() => Packet::PingReq,
            12 => return Err(MqttError::Malformed { packet: "PINGREQ", what: "non-empty body" }),
            14 => {
                let d = disconnect::parse_disconnect(body, v)?;
                if self.session_expiry_zero && d.session_expiry_interval_secs.is_some_and(|s| s != 0) {
                    return Err(MqttError::ProtocolError {
                        packet: "DISCONNECT",
                        what: "session expiry set after CONNECT's was 0",
                    });
                }
                Packet::Disconnect(d)
            }
            15 => Packet::Auth(disconnect::parse_auth(body)?),
            _ => unreachable!("check_type admits only client packet types"),
        }))
    }

    /// Checks the first byte alone: a packet a client may send now, with valid fixed-header
    /// flags (PUBLISH's are checked with its body).
    fn check_type(&self, ty: u8, flags: u8) -> Result<(), MqttError> {
        let name = match ty {
            1 => "CONNECT",
            2 => return Err(MqttError::UnexpectedPacket("CONNACK")),
            3 => "PUBLISH",
            4 => "PUBACK",
            5 => "PUBREC",
            6 => "PUBREL",
            7 => "PUBCOMP",
            8 => "SUBSCRIBE",
            9 => return Err(MqttError::UnexpectedPacket("SUBACK")),
            10 => "UNSUBSCRIBE",
            11 => return Err(MqttError::UnexpectedPacket("UNSUBACK")),
            12 => "PINGREQ",
            13 => return Err(MqttError::UnexpectedPacket("PINGRESP")),
            14 => "DISCONNECT",
            15 if self.version == Some(ProtocolVersion::V5) => "AUTH",
            _ => return Err(MqttError::ReservedType(ty)),
        };
        match (self.connected, ty) {
            (false, 1) => {}
            (false, _) => return Err(MqttError::NotConnectFirst),
            (true, 1) => return Err(MqttError::SecondConnect),
            _ => {}
        }
        let required = match ty {
            3 => return Ok(()),
            6 | 8 | 10 => 0b0010,
            _ => 0,
        };
        if flags != required {
            return Err(MqttError::InvalidFlags { packet: name, flags });
        }
        Ok(())
    }

    /// Call when the client closed its side: a partial packet left in `buf` is an error.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, MqttError> {
        match self.decode(buf)? {
            Some(p) => Ok(Some(p)),
            None if buf.is_empty() => Ok(None),
            None => Err(MqttError::Truncated(buf.len())),
        }
    }

    /// What to send before closing after `err`. Before CONNECT is accepted, a 5.0 client gets
    /// a CONNACK with the reason code and a 3.1.1 client a CONNACK only where 3.1.1 defines a
    /// return code (unacceptable protocol version, identifier rejected); an unknown protocol
    /// level is answered in 3.1.1's format (MQTT-3.1.2-2). After CONNECT, a 5.0 client gets a
    /// DISCONNECT and a 3.1.1 client nothing.
    pub fn reply(&self, err: &MqttError) -> Reply {
        match (self.connected, self.version) {
            (true, Some(ProtocolVersion::V5)) => Reply::Disconnect(err.reason_code()),
            (false, Some(ProtocolVersion::V5)) => Reply::ConnAckV5(err.reason_code()),
            (true, _) => Reply::Close,
            (false, _) => err.connect_return_code().map_or(Reply::Close, Reply::ConnAckV311),
        }
    }
}
