//! Messages between a gateway node and the control plane ("the link").
//!
//! The link is one full-duplex TCP connection per gateway node, framed exactly like the terminal
//! protocol: every message is a `LINK` frame (see `frame.rs`) whose payload is an rkyv archive of
//! [`LinkMessage`], starting at a 16-aligned stream offset so it can be validated and read in
//! place. The frame header carries [`LINK_VERSION`]; a receiver refuses other versions.
//!
//! Conversation:
//! 1. The gateway connects and sends [`LinkMessage::Hello`], then one `Presence` batch with an
//!    `Online` entry for every connection it already holds (empty on a fresh node). This is how
//!    either side's restart resyncs.
//! 2. The control plane answers [`LinkMessage::Welcome`] and a full [`LinkMessage::Tables`]
//!    snapshot; afterwards `TablesDelta`s as admins change keys, revocations and groups.
//! 3. For each `Online` it learns, the control plane sends that user's `Subscriptions`, then the
//!    device's backlog (stored messages it has not acknowledged) as `Push`es targeted at the
//!    device. Both travel on the same ordered link, so subscriptions are in place before any later
//!    live push.
//! 4. Pushes flow down as `Push`; presence, receipts (terminal acks) and per-push reports flow up,
//!    batched by the gateway.
//!
//! Message ids: every push carries `(stream, seq)`. The control plane owns streams (one per user
//! inbox, per topic, per group, and one for condition pushes) and numbers each stream's messages
//! from 1. Pushes without `ACK_REQUIRED` (TTL 0) are fire-and-forget: not stored, not acked.

use bytes::BytesMut;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::frame::{self, EncodeError, Link};

/// Version of the link messages below; bump on any incompatible change.
pub const LINK_VERSION: u16 = 1;
/// Largest link frame either side accepts (a table snapshot can be large).
pub const MAX_LINK_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Everything that travels on the link.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LinkMessage {
    // gateway → control plane
    Hello(Hello),
    Presence(Vec<PresenceChange>),
    Receipts(Vec<Receipt>),
    Reports(Vec<PushReport>),
    Stats(NodeStats),
    // control plane → gateway
    Welcome(Welcome),
    Tables(Tables),
    TablesDelta(Vec<TableChange>),
    Subscriptions(Vec<UserSubscriptions>),
    Push(PushOrder),
    /// Close a user's connections (all devices, or one), e.g. after a revocation.
    Kick(Kick),
    // Added after the rest, so earlier variants keep their archived discriminants.
    /// gateway → control plane: a terminal publishes (MQTT PUBLISH, or a will).
    Publish(TerminalPublish),
    /// control plane → gateway: what became of a [`TerminalPublish`] that asked for an answer.
    PublishResult(PublishResult),
}

/// A gateway node introduces itself.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Stable name of the node (unique among nodes).
    pub node_id: String,
    pub link_version: u16,
    pub cores: u16,
    /// Address terminals connect to, for presence reports.
    pub public_addr: String,
}

/// The control plane accepts a node.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Changes each time the control plane starts.
    pub epoch: u64,
}

/// A terminal logged in or went away.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    Online(Online),
    Offline(Offline),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Online {
    pub user: String,
    pub device: String,
    pub session_id: u64,
    /// What the terminal said it already holds, per stream (from its LOGIN).
    pub resume: Vec<StreamSeq>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Offline {
    pub user: String,
    pub device: String,
    pub session_id: u64,
    /// Why the connection ended ([`crate::CloseCode`] value).
    pub code: u16,
}

/// A position in a stream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamSeq {
    pub stream: u32,
    pub seq: u32,
}

/// A terminal acknowledged `first..=last` of `stream` (first = 0: everything up to `last`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub user: String,
    pub device: String,
    pub stream: u32,
    pub first: u32,
    pub last: u32,
}

/// What a node did with one push.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushReport {
    pub push_id: u64,
    /// Frames queued to connections.
    pub sent: u32,
    /// Recipients skipped by the backpressure policy.
    pub dropped: u32,
}

/// Periodic counters of a node.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeStats {
    pub connections: u64,
    pub deliveries: u64,
    pub drops: u64,
}

/// A full copy of the tables every core of a node reads.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Tables {
    pub version: u64,
    pub keys: Vec<KeyEntry>,
    pub revocations: Vec<RevocationEntry>,
    pub groups: Vec<GroupTopics>,
}

/// A credential signing key.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub key_id: u32,
    pub secret: [u8; 32],
}

/// Credentials of `user` issued before `all_before` (seconds) are revoked; per device, those
/// issued before the device's stamp.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RevocationEntry {
    pub user: String,
    pub all_before: u64,
    pub devices: Vec<(String, u64)>,
}

/// Which topics the members of a group follow.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupTopics {
    pub group: String,
    pub topics: Vec<String>,
}

/// One change to the tables.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum TableChange {
    KeyAdded(KeyEntry),
    KeyRemoved(u32),
    Revoked(RevocationEntry),
    Group(GroupTopics),
    GroupRemoved(String),
}

/// A user's groups and direct topics, as the control plane holds them. Replaces what the node
/// had for that user; applied to every connection of the user.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UserSubscriptions {
    pub user: String,
    pub groups: Vec<String>,
    pub topics: Vec<String>,
}

/// Who a push is for.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(String),
    Users(Vec<String>),
    /// One device of a user (backlog after login).
    Device {
        user: String,
        device: String,
    },
    Group(String),
    Topic(String),
    /// A condition over topics (see [`crate::condition`]).
    Condition(String),
}

/// Deliver a push to the node's matching connections.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PushOrder {
    pub push_id: u64,
    pub target: Target,
    pub stream: u32,
    pub seq: u32,
    /// [`crate::frame::PushFlags`] bits.
    pub flags: u8,
    pub ttl_secs: u32,
    /// rkyv-archived [`crate::payload::PushPayload`].
    pub payload: Vec<u8>,
    /// For a `Device` target (a backlog delivery): the target the message was first pushed to,
    /// so transports that name each delivery (MQTT topics) name it as a live push would be.
    /// `None` for live pushes, whose `target` says it.
    pub origin: Option<Target>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Kick {
    pub user: String,
    pub device: Option<String>,
    /// [`crate::CloseCode`] value to close with.
    pub code: u16,
}

/// A message a terminal sends to other terminals: pushed like an admin push to `target`, which is
/// a `Topic` or a `Group` the user follows (the control plane checks it again).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TerminalPublish {
    pub user: String,
    pub device: String,
    pub target: Target,
    /// The push's body (UTF-8 text, as every push body).
    pub body: String,
    /// `None`: the control plane's default TTL. 0: delivered to online terminals only.
    pub ttl_secs: Option<u32>,
    /// Where the answer goes; `None`: no answer (QoS 0, wills).
    pub reply: Option<PublishRef>,
    /// A will: pushed after this many seconds unless the device logs in again first (`None`:
    /// not a will).
    pub will_delay_secs: Option<u32>,
}

/// Names the terminal's message a [`PublishResult`] answers, in the gateway's own terms.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublishRef {
    pub core: u16,
    pub slot: u32,
    pub session_id: u64,
    /// The MQTT packet id.
    pub packet_id: u16,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishResult {
    pub reference: PublishRef,
    pub outcome: PublishOutcome,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Durable (or, TTL 0, handed to the nodes) as push `push_id`.
    Accepted { push_id: u64 },
    /// The user may not publish to that target.
    NotAuthorized,
    /// Refused as an admin push would be (payload too large, bad TTL).
    Invalid,
    /// The control plane could not take it now (store not accepting writes, link lost); the
    /// terminal may send it again.
    Unavailable,
}

/// Why a link frame's payload is not a message.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link version {0} is not supported (this side speaks {LINK_VERSION})")]
    Version(u16),
    #[error("invalid link message: {0}")]
    Invalid(String),
}

impl LinkMessage {
    /// Appends this message as a LINK frame to `dst`, preceded by the padding that puts the frame
    /// at a 16-aligned offset, given `stream_offset` bytes already written on this link.
    /// Returns the number of bytes appended.
    pub fn encode(&self, stream_offset: u64, dst: &mut BytesMut) -> Result<usize, EncodeError> {
        let before = dst.len();
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(self).unwrap_or_default();
        dst.extend_from_slice(frame::padding_for(stream_offset));
        frame::encode_link_into(LINK_VERSION, &bytes, dst)?;
        Ok(dst.len() - before)
    }

    /// Validates a received LINK frame and copies the message out.
    pub fn decode(link: &Link, scratch: &mut AlignedVec) -> Result<LinkMessage, LinkError> {
        if link.version != LINK_VERSION {
            return Err(LinkError::Version(link.version));
        }
        let bytes: &[u8] = if (link.payload.as_ptr() as usize).is_multiple_of(16) {
            &link.payload
        } else {
            scratch.clear();
            scratch.extend_from_slice(&link.payload);
            scratch.as_slice()
        };
        rkyv::from_bytes::<LinkMessage, rkyv::rancor::Error>(bytes)
            .map_err(|e| LinkError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Decoder, Frame};

    #[test]
    fn messages_round_trip_through_frames_at_any_offset() {
        let msgs = vec![
            LinkMessage::Hello(Hello {
                node_id: "n1".into(),
                link_version: LINK_VERSION,
                cores: 2,
                public_addr: "127.0.0.1:1".into(),
            }),
            LinkMessage::Push(PushOrder {
                push_id: 7,
                target: Target::Condition("'a' in topics".into()),
                stream: 3,
                seq: 9,
                flags: 1,
                ttl_secs: 60,
                payload: vec![1, 2, 3],
                origin: None,
            }),
            LinkMessage::Publish(TerminalPublish {
                user: "u".into(),
                device: "d".into(),
                target: Target::Group("g".into()),
                body: "hello".into(),
                ttl_secs: Some(30),
                reply: Some(PublishRef { core: 1, slot: 9, session_id: 77, packet_id: 3 }),
                will_delay_secs: None,
            }),
            LinkMessage::PublishResult(PublishResult {
                reference: PublishRef { core: 0, slot: 1, session_id: 2, packet_id: 65535 },
                outcome: PublishOutcome::Accepted { push_id: 12 },
            }),
            LinkMessage::Tables(Tables {
                version: 2,
                keys: vec![KeyEntry { key_id: 1, secret: [7; 32] }],
                revocations: vec![RevocationEntry {
                    user: "u".into(),
                    all_before: 5,
                    devices: vec![("d".into(), 6)],
                }],
                groups: vec![GroupTopics { group: "g".into(), topics: vec!["t".into()] }],
            }),
        ];
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&[frame::T_PAD; 3]);
        for m in &msgs {
            m.encode(wire.len() as u64, &mut wire).unwrap();
        }
        let dec = Decoder::new(MAX_LINK_FRAME_BYTES);
        let mut scratch = AlignedVec::new();
        let mut got = Vec::new();
        while let Some(f) = dec.decode(&mut wire).unwrap() {
            let Frame::Link(l) = f else { panic!("not a link frame: {f:?}") };
            got.push(LinkMessage::decode(&l, &mut scratch).unwrap());
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn wrong_version_and_garbage_are_refused() {
        let mut scratch = AlignedVec::new();
        let l = Link { version: 99, payload: bytes::Bytes::from_static(&[0; 32]) };
        assert!(matches!(LinkMessage::decode(&l, &mut scratch), Err(LinkError::Version(99))));
        let l = Link { version: LINK_VERSION, payload: bytes::Bytes::from_static(&[0xff; 40]) };
        assert!(matches!(LinkMessage::decode(&l, &mut scratch), Err(LinkError::Invalid(_))));
    }
}
