//! CONNECT (section 3.1): the first packet of every connection.

use bytes::Bytes;

use super::error::MqttError;
use super::property::{self, Properties, Property};
use super::string::{ClientId, TopicName, Utf8};
use super::wire::Reader;
use super::{ProtocolVersion, QoS};

const P: &str = "CONNECT";

const FLAG_RESERVED: u8 = 0x01;
const FLAG_CLEAN: u8 = 0x02;
const FLAG_WILL: u8 = 0x04;
const FLAG_WILL_QOS: u8 = 0x18;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_USERNAME: u8 = 0x80;

/// A client's CONNECT. 5.0 properties that a server acts on are parsed into fields (absent ones
/// hold the spec's default); the whole block stays readable in `properties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: ProtocolVersion,
    /// Empty when the client lets the server choose (5.0: assign one in CONNACK).
    pub client_id: ClientId,
    /// 3.1.1 clean session / 5.0 clean start.
    pub clean_start: bool,
    /// 0 = the client sends no keep-alives; otherwise the server closes after 1.5× this silence.
    pub keep_alive_secs: u16,
    /// For Herald: the user id.
    pub username: Option<Utf8>,
    /// For Herald: the credential token. Binary data in MQTT; check it is text where needed.
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// 5.0 session expiry interval; 0 (the default) ends the session with the connection and
    /// `u32::MAX` never expires it. See [`Connect::session_expiry_secs`].
    pub session_expiry_interval_secs: u32,
    /// 5.0: how many unacknowledged QoS 1/2 PUBLISH the client accepts at once (default 65,535).
    pub receive_maximum: u16,
    /// 5.0: largest packet the client accepts; a larger PUBLISH must not be sent to it.
    pub maximum_packet_size: Option<u32>,
    /// 5.0: highest topic alias the client accepts from the server (default 0: none).
    pub topic_alias_maximum: u16,
    /// 5.0: whether reason strings and user properties may be sent on failures (default true).
    pub request_problem_information: bool,
    /// 5.0: whether the client asks for response information in CONNACK (default false).
    pub request_response_information: bool,
    /// 5.0 enhanced authentication. Herald does not offer it: answer CONNACK 0x8C.
    pub authentication_method: Option<Utf8>,
    pub authentication_data: Option<Bytes>,
    /// The whole 5.0 property block (user properties included).
    pub properties: Properties,
}

/// The message a server publishes for a client whose connection ends without DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 will delay interval (default 0).
    pub delay_interval_secs: u32,
    /// 5.0 message expiry interval.
    pub message_expiry_interval_secs: Option<u32>,
    /// 5.0 payload format indicator 1: the payload is UTF-8 text.
    pub payload_is_utf8: bool,
    pub properties: Properties,
}

impl Connect {
    /// How long the session outlives the connection, in seconds, whatever the version:
    /// 3.1.1 clean session → 0, 3.1.1 persistent session → `u32::MAX` (no expiry); 5.0 → the
    /// session expiry interval.
    pub fn session_expiry_secs(&self) -> u32 {
        match self.version {
            ProtocolVersion::V311 if self.clean_start => 0,
            ProtocolVersion::V311 => u32::MAX,
            ProtocolVersion::V5 => self.session_expiry_interval_secs,
        }
    }
}

/// Parses a CONNECT body. `version` is set as soon as the protocol level is known, so that a
/// later failure is answered in the client's version.
pub(crate) fn parse(body: Bytes, version: &mut Option<ProtocolVersion>) -> Result<Connect, MqttError> {
    let mut r = Reader::new(body, P);
    let name = r.binary("protocol name")?;
    let level = r.u8("protocol level")?;
    let v = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQTT" | b"MQIsdp", _) => return Err(MqttError::UnsupportedProtocolVersion(level)),
        _ => return Err(MqttError::InvalidProtocolName),
    };
    *version = Some(v);
    let flags = r.u8("connect flags")?;
    if flags & FLAG_RESERVED != 0 {
        return Err(MqttError::Malformed { packet: P, what: "reserved connect flag set" });
    }
    let will_flag = flags & FLAG_WILL != 0;
    let will_qos = (flags & FLAG_WILL_QOS) >> 3;
    let will_retain = flags & FLAG_WILL_RETAIN != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(MqttError::Malformed { packet: P, what: "will QoS or retain without a will" });
    }
    let will_qos = QoS::from_bits(will_qos).ok_or(MqttError::InvalidQos("CONNECT will"))?;
    let has_username = flags & FLAG_USERNAME != 0;
    let has_password = flags & FLAG_PASSWORD != 0;
    if v == ProtocolVersion::V311 && has_password && !has_username {
        return Err(MqttError::Malformed { packet: P, what: "password without user name" });
    }
    let clean_start = flags & FLAG_CLEAN != 0;
    let keep_alive_secs = r.u16("keep alive")?;

    let mut c = Connect {
        version: v,
        client_id: ClientId::new(Utf8::default()),
        clean_start,
        keep_alive_secs,
        username: None,
        password: None,
        will: None,
        session_expiry_interval_secs: 0,
        receive_maximum: u16::MAX,
        maximum_packet_size: None,
        topic_alias_maximum: 0,
        request_problem_information: true,
        request_response_information: false,
        authentication_method: None,
        authentication_data: None,
        properties: Properties::default(),
    };
    if v == ProtocolVersion::V5 {
        c.properties = property::read(&mut r, property::IN_CONNECT, |p| {
            match *p {
                Property::SessionExpiryInterval(s) => c.session_expiry_interval_secs = s,
                Property::ReceiveMaximum(m) => c.receive_maximum = m,
                Property::MaximumPacketSize(m) => c.maximum_packet_size = Some(m),
                Property::TopicAliasMaximum(m) => c.topic_alias_maximum = m,
                Property::RequestProblemInformation(b) => c.request_problem_information = b == 1,
                Property::RequestResponseInformation(b) => c.request_response_information = b == 1,
                Property::AuthenticationMethod(ref m) => c.authentication_method = Some(m.clone()),
                Property::AuthenticationData(ref d) => c.authentication_data = Some(d.clone()),
                _ => {}
            }
            Ok(())
        })?;
        if c.authentication_data.is_some() && c.authentication_method.is_none() {
            return Err(MqttError::ProtocolError { packet: P, what: "authentication data without a method" });
        }
    }
    c.client_id = ClientId::new(r.string("client identifier")?);
    if v == ProtocolVersion::V311 && c.client_id.is_empty() && !clean_start {
        return Err(MqttError::IdentifierRejected);
    }
    if will_flag {
        c.will = Some(parse_will(&mut r, v, will_qos, will_retain)?);
    }
    if has_username {
        c.username = Some(r.string("user name")?);
    }
    if has_password {
        c.password = Some(r.binary("password")?);
    }
    r.finish()?;
    Ok(c)
}

fn parse_will(r: &mut Reader, v: ProtocolVersion, qos: QoS, retain: bool) -> Result<Will, MqttError> {
    let mut w = Will {
        topic: TopicName::empty(),
        payload: Bytes::new(),
        qos,
        retain,
        delay_interval_secs: 0,
        message_expiry_interval_secs: None,
        payload_is_utf8: false,
        properties: Properties::default(),
    };
    if v == ProtocolVersion::V5 {
        w.properties = property::read(r, property::IN_WILL, |p| {
            match *p {
                Property::WillDelayInterval(d) => w.delay_interval_secs = d,
                Property::MessageExpiryInterval(e) => w.message_expiry_interval_secs = Some(e),
                Property::PayloadFormatIndicator(f) => w.payload_is_utf8 = f == 1,
                Property::ResponseTopic(ref t) if TopicName::new(t.clone()).is_none() => {
                    return Err(MqttError::ProtocolError {
                        packet: P,
                        what: "will response topic has wildcards",
                    });
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    w.topic = TopicName::new(r.string("will topic")?).ok_or(MqttError::InvalidTopicName(P))?;
    w.payload = r.binary("will payload")?;
    Ok(w)
}
