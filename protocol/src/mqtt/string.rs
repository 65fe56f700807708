//! Validated MQTT strings: zero-copy slices of the receive buffer that are known to be UTF-8
//! without U+0000, and the newtypes that say what a string is for.

use std::fmt;

use bytes::Bytes;

use super::topic;

/// A UTF-8 encoded string as MQTT defines it (MQTT-1.5.4-1, -2): well-formed UTF-8 (so no
/// surrogates) and no U+0000. Cloning it clones a `Bytes` handle, not the text.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Utf8(Bytes);

impl Utf8 {
    /// Checks `raw` and wraps it; `None` if it is not a valid MQTT string.
    pub fn try_from_bytes(raw: Bytes) -> Option<Utf8> {
        match std::str::from_utf8(&raw) {
            Ok(s) if !s.contains('\0') => Some(Utf8(raw)),
            _ => None,
        }
    }

    /// A string from static text, checked.
    pub fn from_static(s: &'static str) -> Utf8 {
        assert!(!s.contains('\0'), "MQTT strings cannot hold U+0000");
        Utf8(Bytes::from_static(s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // Checked on construction; the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Utf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Utf8 {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Utf8 {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name(Utf8);

        impl $name {
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            pub fn as_utf8(&self) -> &Utf8 {
                &self.0
            }

            pub fn into_bytes(self) -> Bytes {
                self.0.into_bytes()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

string_newtype!(
    /// The client identifier from CONNECT. May be empty: then a 3.1.1 client asked for a clean
    /// session and a 5.0 client expects a CONNACK with an assigned identifier.
    ClientId
);

string_newtype!(
    /// A topic name from PUBLISH (or a will): no `+` or `#`. Empty only in a 5.0 PUBLISH that
    /// carries a topic alias.
    TopicName
);

string_newtype!(
    /// A well-formed topic filter from SUBSCRIBE or UNSUBSCRIBE: non-empty, `#` only as the
    /// whole last level, `+` only as a whole level. Match names with [`TopicFilter::matches`].
    TopicFilter
);

impl ClientId {
    pub(crate) fn new(s: Utf8) -> ClientId {
        ClientId(s)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TopicName {
    /// Checks that `s` is a topic name (non-empty, no wildcards).
    pub fn new(s: Utf8) -> Option<TopicName> {
        topic::valid_name(s.as_str()).then_some(TopicName(s))
    }

    /// The empty name a 5.0 PUBLISH uses with a topic alias.
    pub(crate) fn empty() -> TopicName {
        TopicName(Utf8::default())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TopicFilter {
    /// Checks that `s` is a well-formed topic filter.
    pub fn new(s: Utf8) -> Option<TopicFilter> {
        topic::valid_filter(s.as_str()).then_some(TopicFilter(s))
    }

    /// Whether this filter matches the topic name `name` (see [`topic::topic_matches`]).
    pub fn matches(&self, name: &str) -> bool {
        topic::topic_matches(self.as_str(), name)
    }

    /// Whether the filter holds a wildcard.
    pub fn has_wildcards(&self) -> bool {
        self.as_str().bytes().any(|b| b == b'+' || b == b'#')
    }

    /// Whether this is a 5.0 shared subscription (`$share/{name}/{filter}`), which Herald does not
    /// offer: answer it with reason code 0x9E (shared subscriptions not supported).
    pub fn is_shared(&self) -> bool {
        self.as_str().starts_with("$share/")
    }
}
