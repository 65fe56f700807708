//! DISCONNECT (section 3.14) both ways, and 5.0's AUTH (section 3.15), which is decoded so the
//! adapter can refuse it.

use bytes::{BufMut, Bytes, BytesMut};

use super::ProtocolVersion;
use super::error::{EncodeError, MqttError};
use super::property::{self, PropWriter, Properties, Property};
use super::reason::ReasonCode;
use super::string::Utf8;
use super::wire::{self, Reader};

/// A client's DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// 5.0 reason code; 0x00 (normal) for 3.1.1 and when omitted. 0x04 asks the server to
    /// publish the will anyway.
    pub reason: ReasonCode,
    /// 5.0: a new session expiry interval. The decoder already refused a non-zero one when
    /// CONNECT's was 0 (MQTT-3.14.2-2).
    pub session_expiry_interval_secs: Option<u32>,
    pub properties: Properties,
}

/// Reason codes a client may send in DISCONNECT (5.0 section 3.14.2.1).
fn client_may_send(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x90 | 0x93..=0x9A | 0x9F | 0xA0
    )
}

pub(crate) fn parse_disconnect(body: Bytes, v: ProtocolVersion) -> Result<Disconnect, MqttError> {
    const P: &str = "DISCONNECT";
    let mut r = Reader::new(body, P);
    let mut d = Disconnect {
        reason: ReasonCode::NORMAL_DISCONNECTION,
        session_expiry_interval_secs: None,
        properties: Properties::default(),
    };
    if v == ProtocolVersion::V5 && !r.is_empty() {
        let code = r.u8("reason code")?;
        if !client_may_send(code) {
            return Err(MqttError::InvalidReasonCode { packet: P, code });
        }
        d.reason = ReasonCode(code);
        if !r.is_empty() {
            d.properties = property::read(&mut r, property::IN_DISCONNECT, |p| {
                match *p {
                    Property::SessionExpiryInterval(s) => d.session_expiry_interval_secs = Some(s),
                    Property::ServerReference(_) => {
                        return Err(MqttError::ProtocolError {
                            packet: P,
                            what: "server reference from a client",
                        });
                    }
                    _ => {}
                }
                Ok(())
            })?;
        }
    }
    r.finish()?;
    Ok(d)
}

/// Optional 5.0 DISCONNECT properties a server sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DisconnectProperties<'a> {
    /// Human-readable cause; only if the client did not set request problem information to 0.
    pub reason_string: Option<&'a str>,
    /// With 0x9C (use another server) or 0x9D (server moved): where to reconnect.
    pub server_reference: Option<&'a str>,
}

/// Writes a 5.0 DISCONNECT with a reason code and no properties (3.1.1 servers never send
/// DISCONNECT: they close). Normal disconnection is the 2-byte form.
pub fn encode_disconnect(reason: ReasonCode, dst: &mut BytesMut) {
    if reason == ReasonCode::NORMAL_DISCONNECTION {
        dst.put_slice(&[0xe0, 0x00]);
    } else {
        dst.put_slice(&[0xe0, 0x01, reason.0]);
    }
}

/// Writes a 5.0 DISCONNECT with properties.
pub fn encode_disconnect_with(
    reason: ReasonCode,
    props: &DisconnectProperties<'_>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    for s in [props.reason_string, props.server_reference].into_iter().flatten() {
        property::check_str(s)?;
    }
    let write = |w: &mut PropWriter<'_>| {
        if let Some(s) = props.reason_string {
            w.bytes(property::REASON_STRING, s.as_bytes());
        }
        if let Some(s) = props.server_reference {
            w.bytes(property::SERVER_REFERENCE, s.as_bytes());
        }
    };
    let mut c = PropWriter::counter();
    write(&mut c);
    if c.len() == 0 {
        encode_disconnect(reason, dst);
        return Ok(());
    }
    wire::put_fixed_header(dst, 0xe0, 1 + property::block_len(c.len()))?;
    dst.put_u8(reason.0);
    property::put_block_len(dst, c.len());
    write(&mut PropWriter::writer(dst));
    Ok(())
}

/// A 5.0 AUTH: enhanced authentication, which Herald does not offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// 0x00 success, 0x18 continue authentication or 0x19 re-authenticate.
    pub reason: ReasonCode,
    pub authentication_method: Option<Utf8>,
    pub authentication_data: Option<Bytes>,
    pub properties: Properties,
}

pub(crate) fn parse_auth(body: Bytes) -> Result<Auth, MqttError> {
    const P: &str = "AUTH";
    let mut r = Reader::new(body, P);
    let mut a = Auth {
        reason: ReasonCode::SUCCESS,
        authentication_method: None,
        authentication_data: None,
        properties: Properties::default(),
    };
    if !r.is_empty() {
        let code = r.u8("reason code")?;
        if !matches!(code, 0x00 | 0x18 | 0x19) {
            return Err(MqttError::InvalidReasonCode { packet: P, code });
        }
        a.reason = ReasonCode(code);
        if !r.is_empty() {
            a.properties = property::read(&mut r, property::IN_AUTH, |p| {
                match *p {
                    Property::AuthenticationMethod(ref m) => a.authentication_method = Some(m.clone()),
                    Property::AuthenticationData(ref d) => a.authentication_data = Some(d.clone()),
                    _ => {}
                }
                Ok(())
            })?;
        }
    }
    r.finish()?;
    Ok(a)
}
