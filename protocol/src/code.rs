//! Close and goaway codes: why a connection ends. Numbers are part of the wire format
//! (`PROTOCOL.md`, "Close codes"); a receiver treats an unknown code like `INTERNAL_ERROR`.

use std::fmt;

/// A close or goaway reason code (u16 on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $n:expr, $label:expr;)*) => {
        impl CloseCode {
            $($(#[$doc])* pub const $name: CloseCode = CloseCode($n);)*

            /// A stable lower-case label, for logs and metrics.
            pub fn label(self) -> &'static str {
                match self.0 {
                    $($n => $label,)*
                    _ => "unknown",
                }
            }

            /// Every defined code, in numeric order.
            pub const ALL: &'static [CloseCode] = &[$(CloseCode($n)),*];
        }
    };
}

codes! {
    /// Orderly close, nothing wrong.
    NORMAL = 0, "normal";
    /// Bytes that are not a valid frame, or a frame not allowed in this state.
    PROTOCOL_ERROR = 1, "protocol_error";
    /// A frame longer than the receiver's limit.
    FRAME_TOO_LARGE = 2, "frame_too_large";
    /// The login names a protocol version the server does not speak.
    UNSUPPORTED_VERSION = 3, "unsupported_version";
    /// No login before the login deadline.
    LOGIN_TIMEOUT = 4, "login_timeout";
    /// The credential is not a well-formed token.
    AUTH_MALFORMED = 5, "auth_malformed";
    /// The credential has expired.
    AUTH_EXPIRED = 6, "auth_expired";
    /// The credential's signature does not verify, or its key is unknown.
    AUTH_FORGED = 7, "auth_forged";
    /// The credential was revoked.
    AUTH_REVOKED = 8, "auth_revoked";
    /// The device id in the login differs from the credential's.
    DEVICE_MISMATCH = 9, "device_mismatch";
    /// Nothing heard from the terminal within the heartbeat grace period.
    HEARTBEAT_TIMEOUT = 10, "heartbeat_timeout";
    /// The same device logged in on another connection.
    REPLACED = 11, "replaced";
    /// The terminal did not read its messages; its queue overflowed.
    SLOW_CONSUMER = 12, "slow_consumer";
    /// The node is shutting down; reconnect after the hint.
    SHUTTING_DOWN = 13, "shutting_down";
    /// The server is overloaded; reconnect after the hint.
    OVERLOADED = 14, "overloaded";
    /// A fault on the server's side.
    INTERNAL_ERROR = 15, "internal_error";
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.label(), self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}
