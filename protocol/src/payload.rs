//! The content of a push, as an rkyv archive read in place by the terminal.

use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// One key/value pair of a push's application data.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DataEntry {
    pub key: String,
    pub value: String,
}

/// What the app server asked to deliver. `push_id` is the control plane's id, so a terminal can
/// report or log it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PushPayload {
    pub push_id: u64,
    /// Milliseconds since the Unix epoch when the push was accepted.
    pub created_ms: u64,
    pub title: Option<String>,
    pub body: Option<String>,
    pub data: Vec<DataEntry>,
    pub collapse_key: Option<String>,
}

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid push payload: {0}")]
pub struct PayloadError(String);

impl PushPayload {
    /// Serializes for a push frame.
    pub fn to_bytes(&self) -> AlignedVec {
        // Serialization into memory only fails on allocation failure.
        rkyv::to_bytes::<rkyv::rancor::Error>(self).unwrap_or_default()
    }

    /// Validates and reads a payload in place. If `bytes` is not 16-aligned (the receiver's
    /// buffer was not), it is first copied into `scratch` (reused across calls).
    pub fn access<'a>(
        bytes: &'a [u8],
        scratch: &'a mut AlignedVec,
    ) -> Result<&'a ArchivedPushPayload, PayloadError> {
        let src: &'a [u8] = if (bytes.as_ptr() as usize).is_multiple_of(16) {
            bytes
        } else {
            scratch.clear();
            scratch.extend_from_slice(bytes);
            scratch.as_slice()
        };
        rkyv::access::<ArchivedPushPayload, rkyv::rancor::Error>(src).map_err(|e| PayloadError(e.to_string()))
    }

    /// Validates and copies a payload out (clients that keep messages).
    pub fn from_bytes(bytes: &[u8]) -> Result<PushPayload, PayloadError> {
        let mut scratch = AlignedVec::new();
        let archived = PushPayload::access(bytes, &mut scratch)?;
        rkyv::deserialize::<PushPayload, rkyv::rancor::Error>(archived)
            .map_err(|e| PayloadError(e.to_string()))
    }
}
