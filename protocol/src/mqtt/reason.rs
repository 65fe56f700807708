//! Reason codes: MQTT 5.0's one-byte reason codes (section 2.4) and 3.1.1's CONNACK return
//! codes, with the mapping between them.

/// A MQTT 5.0 reason code. Values below 0x80 report success, from 0x80 failure. The same byte
/// means different things in different packets (0x00 is "success", "normal disconnection" and
/// "granted QoS 0"), so the constants name the meaning and share values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    pub const SUCCESS: ReasonCode = ReasonCode(0x00);
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_1: ReasonCode = ReasonCode(0x01);
    pub const GRANTED_QOS_2: ReasonCode = ReasonCode(0x02);
    pub const DISCONNECT_WITH_WILL_MESSAGE: ReasonCode = ReasonCode(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: ReasonCode = ReasonCode(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: ReasonCode = ReasonCode(0x11);
    pub const CONTINUE_AUTHENTICATION: ReasonCode = ReasonCode(0x18);
    pub const REAUTHENTICATE: ReasonCode = ReasonCode(0x19);
    pub const UNSPECIFIED_ERROR: ReasonCode = ReasonCode(0x80);
    pub const MALFORMED_PACKET: ReasonCode = ReasonCode(0x81);
    pub const PROTOCOL_ERROR: ReasonCode = ReasonCode(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: ReasonCode = ReasonCode(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: ReasonCode = ReasonCode(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: ReasonCode = ReasonCode(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: ReasonCode = ReasonCode(0x86);
    pub const NOT_AUTHORIZED: ReasonCode = ReasonCode(0x87);
    pub const SERVER_UNAVAILABLE: ReasonCode = ReasonCode(0x88);
    pub const SERVER_BUSY: ReasonCode = ReasonCode(0x89);
    pub const BANNED: ReasonCode = ReasonCode(0x8A);
    pub const SERVER_SHUTTING_DOWN: ReasonCode = ReasonCode(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: ReasonCode = ReasonCode(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: ReasonCode = ReasonCode(0x8D);
    pub const SESSION_TAKEN_OVER: ReasonCode = ReasonCode(0x8E);
    pub const TOPIC_FILTER_INVALID: ReasonCode = ReasonCode(0x8F);
    pub const TOPIC_NAME_INVALID: ReasonCode = ReasonCode(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: ReasonCode = ReasonCode(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: ReasonCode = ReasonCode(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: ReasonCode = ReasonCode(0x93);
    pub const TOPIC_ALIAS_INVALID: ReasonCode = ReasonCode(0x94);
    pub const PACKET_TOO_LARGE: ReasonCode = ReasonCode(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: ReasonCode = ReasonCode(0x96);
    pub const QUOTA_EXCEEDED: ReasonCode = ReasonCode(0x97);
    pub const ADMINISTRATIVE_ACTION: ReasonCode = ReasonCode(0x98);
    pub const PAYLOAD_FORMAT_INVALID: ReasonCode = ReasonCode(0x99);
    pub const RETAIN_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9A);
    pub const QOS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9B);
    pub const USE_ANOTHER_SERVER: ReasonCode = ReasonCode(0x9C);
    pub const SERVER_MOVED: ReasonCode = ReasonCode(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: ReasonCode = ReasonCode(0x9F);
    pub const MAXIMUM_CONNECT_TIME: ReasonCode = ReasonCode(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA2);

    pub const fn is_failure(self) -> bool {
        self.0 >= 0x80
    }

    /// The 3.1.1 CONNACK return code with the same meaning, if 3.1.1 has one. Without one a
    /// 3.1.1 server just closes the connection.
    pub const fn to_connect_return_code(self) -> Option<ConnectReturnCode> {
        Some(match self.0 {
            0x00 => ConnectReturnCode::ACCEPTED,
            0x84 => ConnectReturnCode::UNACCEPTABLE_PROTOCOL_VERSION,
            0x85 => ConnectReturnCode::IDENTIFIER_REJECTED,
            0x88 | 0x89 | 0x8B | 0x9C | 0x9D | 0x9F => ConnectReturnCode::SERVER_UNAVAILABLE,
            0x86 => ConnectReturnCode::BAD_USER_NAME_OR_PASSWORD,
            0x87 | 0x8A | 0x8C => ConnectReturnCode::NOT_AUTHORIZED,
            _ => return None,
        })
    }

    /// The 3.1.1 SUBACK return code for this 5.0 SUBACK reason: granted QoS 0–2 as is, any
    /// failure as 0x80.
    pub const fn to_suback_return_code(self) -> u8 {
        if self.is_failure() { 0x80 } else { self.0 }
    }
}

/// A MQTT 3.1.1 CONNACK return code (section 3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectReturnCode(pub u8);

impl ConnectReturnCode {
    pub const ACCEPTED: ConnectReturnCode = ConnectReturnCode(0x00);
    pub const UNACCEPTABLE_PROTOCOL_VERSION: ConnectReturnCode = ConnectReturnCode(0x01);
    pub const IDENTIFIER_REJECTED: ConnectReturnCode = ConnectReturnCode(0x02);
    pub const SERVER_UNAVAILABLE: ConnectReturnCode = ConnectReturnCode(0x03);
    pub const BAD_USER_NAME_OR_PASSWORD: ConnectReturnCode = ConnectReturnCode(0x04);
    pub const NOT_AUTHORIZED: ConnectReturnCode = ConnectReturnCode(0x05);
}
