//! MQTT 5.0 properties (section 2.2.2): reading a property block once, validating every entry
//! against the packet it is in, and writing the properties a server sends.
//!
//! A decoded packet keeps its whole block as [`Properties`] (a `Bytes` slice, validated), so
//! properties Herald does not interpret — user properties, content type, correlation data — are
//! skipped safely yet remain readable with [`Properties::iter`].

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{EncodeError, MqttError};
use super::string::Utf8;
use super::wire::{self, Reader};

pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub const CONTENT_TYPE: u8 = 0x03;
pub const RESPONSE_TOPIC: u8 = 0x08;
pub const CORRELATION_DATA: u8 = 0x09;
pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub const SERVER_KEEP_ALIVE: u8 = 0x13;
pub const AUTHENTICATION_METHOD: u8 = 0x15;
pub const AUTHENTICATION_DATA: u8 = 0x16;
pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub const WILL_DELAY_INTERVAL: u8 = 0x18;
pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub const RESPONSE_INFORMATION: u8 = 0x1A;
pub const SERVER_REFERENCE: u8 = 0x1C;
pub const REASON_STRING: u8 = 0x1F;
pub const RECEIVE_MAXIMUM: u8 = 0x21;
pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub const TOPIC_ALIAS: u8 = 0x23;
pub const MAXIMUM_QOS: u8 = 0x24;
pub const RETAIN_AVAILABLE: u8 = 0x25;
pub const USER_PROPERTY: u8 = 0x26;
pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// Which properties a client may put in a packet: a bit per identifier.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allowed(u64);

const fn mask(ids: &[u8]) -> Allowed {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1 << ids[i];
        i += 1;
    }
    Allowed(m)
}

pub(crate) const IN_CONNECT: Allowed = mask(&[
    SESSION_EXPIRY_INTERVAL,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
    REQUEST_PROBLEM_INFORMATION,
    REQUEST_RESPONSE_INFORMATION,
    RECEIVE_MAXIMUM,
    TOPIC_ALIAS_MAXIMUM,
    USER_PROPERTY,
    MAXIMUM_PACKET_SIZE,
]);
pub(crate) const IN_WILL: Allowed = mask(&[
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    CONTENT_TYPE,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    WILL_DELAY_INTERVAL,
    USER_PROPERTY,
]);
// A subscription identifier is listed so that PUBLISH can call it a protocol error
// (MQTT-3.3.4-6) rather than an unknown property.
pub(crate) const IN_PUBLISH: Allowed = mask(&[
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    CONTENT_TYPE,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    SUBSCRIPTION_IDENTIFIER,
    TOPIC_ALIAS,
    USER_PROPERTY,
]);
pub(crate) const IN_ACK: Allowed = mask(&[REASON_STRING, USER_PROPERTY]);
pub(crate) const IN_SUBSCRIBE: Allowed = mask(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]);
pub(crate) const IN_UNSUBSCRIBE: Allowed = mask(&[USER_PROPERTY]);
pub(crate) const IN_DISCONNECT: Allowed =
    mask(&[SESSION_EXPIRY_INTERVAL, SERVER_REFERENCE, REASON_STRING, USER_PROPERTY]);
pub(crate) const IN_AUTH: Allowed =
    mask(&[AUTHENTICATION_METHOD, AUTHENTICATION_DATA, REASON_STRING, USER_PROPERTY]);

/// One property, its value borrowed from the packet's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(Utf8),
    ResponseTopic(Utf8),
    CorrelationData(Bytes),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(Utf8),
    ServerKeepAlive(u16),
    AuthenticationMethod(Utf8),
    AuthenticationData(Bytes),
    RequestProblemInformation(u8),
    WillDelayInterval(u32),
    RequestResponseInformation(u8),
    ResponseInformation(Utf8),
    ServerReference(Utf8),
    ReasonString(Utf8),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQos(u8),
    RetainAvailable(u8),
    UserProperty(Utf8, Utf8),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(u8),
    SubscriptionIdentifierAvailable(u8),
    SharedSubscriptionAvailable(u8),
}

impl Property {
    pub fn id(&self) -> u8 {
        match self {
            Property::PayloadFormatIndicator(_) => PAYLOAD_FORMAT_INDICATOR,
            Property::MessageExpiryInterval(_) => MESSAGE_EXPIRY_INTERVAL,
            Property::ContentType(_) => CONTENT_TYPE,
            Property::ResponseTopic(_) => RESPONSE_TOPIC,
            Property::CorrelationData(_) => CORRELATION_DATA,
            Property::SubscriptionIdentifier(_) => SUBSCRIPTION_IDENTIFIER,
            Property::SessionExpiryInterval(_) => SESSION_EXPIRY_INTERVAL,
            Property::AssignedClientIdentifier(_) => ASSIGNED_CLIENT_IDENTIFIER,
            Property::ServerKeepAlive(_) => SERVER_KEEP_ALIVE,
            Property::AuthenticationMethod(_) => AUTHENTICATION_METHOD,
            Property::AuthenticationData(_) => AUTHENTICATION_DATA,
            Property::RequestProblemInformation(_) => REQUEST_PROBLEM_INFORMATION,
            Property::WillDelayInterval(_) => WILL_DELAY_INTERVAL,
            Property::RequestResponseInformation(_) => REQUEST_RESPONSE_INFORMATION,
            Property::ResponseInformation(_) => RESPONSE_INFORMATION,
            Property::ServerReference(_) => SERVER_REFERENCE,
            Property::ReasonString(_) => REASON_STRING,
            Property::ReceiveMaximum(_) => RECEIVE_MAXIMUM,
            Property::TopicAliasMaximum(_) => TOPIC_ALIAS_MAXIMUM,
            Property::TopicAlias(_) => TOPIC_ALIAS,
            Property::MaximumQos(_) => MAXIMUM_QOS,
            Property::RetainAvailable(_) => RETAIN_AVAILABLE,
            Property::UserProperty(..) => USER_PROPERTY,
            Property::MaximumPacketSize(_) => MAXIMUM_PACKET_SIZE,
            Property::WildcardSubscriptionAvailable(_) => WILDCARD_SUBSCRIPTION_AVAILABLE,
            Property::SubscriptionIdentifierAvailable(_) => SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            Property::SharedSubscriptionAvailable(_) => SHARED_SUBSCRIPTION_AVAILABLE,
        }
    }
}

/// A packet's property block, validated when the packet was decoded. Empty for 3.1.1.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties(Bytes);

impl Properties {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The block's bytes, without its length prefix.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Every property, in wire order.
    pub fn iter(&self) -> impl Iterator<Item = Property> + '_ {
        let mut r = Reader::new(self.0.clone(), "properties");
        // The block was validated when decoded, so a read error cannot happen; it ends the walk.
        std::iter::from_fn(move || if r.is_empty() { None } else { read_one(&mut r).ok() })
    }

    /// The user properties (name, value), in wire order; names may repeat.
    pub fn user_properties(&self) -> impl Iterator<Item = (Utf8, Utf8)> + '_ {
        self.iter().filter_map(|p| match p {
            Property::UserProperty(k, v) => Some((k, v)),
            _ => None,
        })
    }
}

fn read_one(r: &mut Reader) -> Result<Property, MqttError> {
    let packet = r.packet();
    let id = r.varint("property identifier")?;
    let Ok(id8) = u8::try_from(id) else { return Err(MqttError::UnknownProperty { packet, id }) };
    Ok(match id8 {
        PAYLOAD_FORMAT_INDICATOR => Property::PayloadFormatIndicator(r.u8("property")?),
        MESSAGE_EXPIRY_INTERVAL => Property::MessageExpiryInterval(r.u32("property")?),
        CONTENT_TYPE => Property::ContentType(r.string("content type")?),
        RESPONSE_TOPIC => Property::ResponseTopic(r.string("response topic")?),
        CORRELATION_DATA => Property::CorrelationData(r.binary("property")?),
        SUBSCRIPTION_IDENTIFIER => Property::SubscriptionIdentifier(r.varint("subscription identifier")?),
        SESSION_EXPIRY_INTERVAL => Property::SessionExpiryInterval(r.u32("property")?),
        ASSIGNED_CLIENT_IDENTIFIER => Property::AssignedClientIdentifier(r.string("client identifier")?),
        SERVER_KEEP_ALIVE => Property::ServerKeepAlive(r.u16("property")?),
        AUTHENTICATION_METHOD => Property::AuthenticationMethod(r.string("authentication method")?),
        AUTHENTICATION_DATA => Property::AuthenticationData(r.binary("property")?),
        REQUEST_PROBLEM_INFORMATION => Property::RequestProblemInformation(r.u8("property")?),
        WILL_DELAY_INTERVAL => Property::WillDelayInterval(r.u32("property")?),
        REQUEST_RESPONSE_INFORMATION => Property::RequestResponseInformation(r.u8("property")?),
        RESPONSE_INFORMATION => Property::ResponseInformation(r.string("response information")?),
        SERVER_REFERENCE => Property::ServerReference(r.string("server reference")?),
        REASON_STRING => Property::ReasonString(r.string("reason string")?),
        RECEIVE_MAXIMUM => Property::ReceiveMaximum(r.u16("property")?),
        TOPIC_ALIAS_MAXIMUM => Property::TopicAliasMaximum(r.u16("property")?),
        TOPIC_ALIAS => Property::TopicAlias(r.u16("property")?),
        MAXIMUM_QOS => Property::MaximumQos(r.u8("property")?),
        RETAIN_AVAILABLE => Property::RetainAvailable(r.u8("property")?),
        USER_PROPERTY => Property::UserProperty(r.string("user property")?, r.string("user property")?),
        MAXIMUM_PACKET_SIZE => Property::MaximumPacketSize(r.u32("property")?),
        WILDCARD_SUBSCRIPTION_AVAILABLE => Property::WildcardSubscriptionAvailable(r.u8("property")?),
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => Property::SubscriptionIdentifierAvailable(r.u8("property")?),
        SHARED_SUBSCRIPTION_AVAILABLE => Property::SharedSubscriptionAvailable(r.u8("property")?),
        _ => return Err(MqttError::UnknownProperty { packet, id }),
    })
}

/// Values the spec forbids for a property wherever it appears (a protocol error).
fn value_ok(p: &Property) -> bool {
    match *p {
        Property::PayloadFormatIndicator(v)
        | Property::RequestProblemInformation(v)
        | Property::RequestResponseInformation(v)
        | Property::RetainAvailable(v)
        | Property::WildcardSubscriptionAvailable(v)
        | Property::SubscriptionIdentifierAvailable(v)
        | Property::SharedSubscriptionAvailable(v)
        | Property::MaximumQos(v) => v <= 1,
        Property::ReceiveMaximum(v) => v != 0,
        Property::MaximumPacketSize(v) | Property::SubscriptionIdentifier(v) => v != 0,
        _ => true,
    }
}

/// Reads a property block (length, then properties) from `r`: each property must be allowed in
/// this packet, have a valid value and, except user properties, appear at most once. `each` sees
/// every property, to pick out the ones the packet keeps.
pub(crate) fn read(
    r: &mut Reader,
    allowed: Allowed,
    mut each: impl FnMut(&Property) -> Result<(), MqttError>,
) -> Result<Properties, MqttError> {
    let packet = r.packet();
    let len = r.varint("property length")? as usize;
    let block = r.take(len, "property block")?;
    let mut inner = Reader::new(block.clone(), packet);
    let mut seen = 0u64;
    while !inner.is_empty() {
        let p = read_one(&mut inner)?;
        let id = p.id();
        if allowed.0 & (1 << id) == 0 {
            return Err(MqttError::UnknownProperty { packet, id: u32::from(id) });
        }
        if id != USER_PROPERTY {
            if seen & (1 << id) != 0 {
                return Err(MqttError::DuplicateProperty { packet, id });
            }
            seen |= 1 << id;
        }
        if !value_ok(&p) {
            return Err(MqttError::InvalidPropertyValue { packet, id });
        }
        each(&p)?;
    }
    Ok(Properties(block))
}

/// Writes properties in two passes: one to size the block (its length prefix comes first), one
/// to write it. Without a destination it only counts.
#[derive(Debug)]
pub(crate) struct PropWriter<'a> {
    dst: Option<&'a mut BytesMut>,
    len: usize,
}

impl<'a> PropWriter<'a> {
    pub(crate) fn counter() -> PropWriter<'static> {
        PropWriter { dst: None, len: 0 }
    }

    pub(crate) fn writer(dst: &'a mut BytesMut) -> PropWriter<'a> {
        PropWriter { dst: Some(dst), len: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn u8(&mut self, id: u8, v: u8) {
        self.len += 2;
        if let Some(d) = self.dst.as_mut() {
            d.put_slice(&[id, v]);
        }
    }

    pub(crate) fn u16(&mut self, id: u8, v: u16) {
        self.len += 3;
        if let Some(d) = self.dst.as_mut() {
            d.put_u8(id);
            d.put_u16(v);
        }
    }

    pub(crate) fn u32(&mut self, id: u8, v: u32) {
        self.len += 5;
        if let Some(d) = self.dst.as_mut() {
            d.put_u8(id);
            d.put_u32(v);
        }
    }

    /// A string or binary value; its length was checked with [`check_str`].
    pub(crate) fn bytes(&mut self, id: u8, v: &[u8]) {
        self.len += 3 + v.len();
        if let Some(d) = self.dst.as_mut() {
            d.put_u8(id);
            wire::put_field(d, v);
        }
    }

    pub(crate) fn pair(&mut self, id: u8, k: &[u8], v: &[u8]) {
        self.len += 5 + k.len() + v.len();
        if let Some(d) = self.dst.as_mut() {
            d.put_u8(id);
            wire::put_field(d, k);
            wire::put_field(d, v);
        }
    }
}

pub(crate) fn check_str(s: &str) -> Result<(), EncodeError> {
    wire::check_field(s.as_bytes()).map(|_| ())
}

pub(crate) fn check_pairs(pairs: &[(&str, &str)]) -> Result<(), EncodeError> {
    pairs.iter().try_for_each(|(k, v)| check_str(k).and_then(|()| check_str(v)))
}

pub(crate) fn put_pairs(w: &mut PropWriter<'_>, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        w.pair(USER_PROPERTY, k.as_bytes(), v.as_bytes());
    }
}

/// Bytes a property block of `len` bytes takes with its length prefix.
pub(crate) fn block_len(len: usize) -> usize {
    wire::varint_len(len.min(wire::MAX_VARINT as usize) as u32) + len
}

/// Writes a property block's length prefix.
pub(crate) fn put_block_len(dst: &mut BytesMut, len: usize) {
    wire::put_varint(dst, len as u32);
}
