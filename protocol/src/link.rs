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
pub const LINK_VERSION: u16 = 2;
/// Largest link frame either side accepts (a table snapshot can be large).
pub const MAX_LINK_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// What a sender aims one message's list items at ([`LinkMessage::split`]): a quarter of the
/// frame limit, so the estimate's slack (rkyv's relative pointers, alignment) can never push a
/// part past [`MAX_LINK_FRAME_BYTES`], and a part stays small enough not to stall the link.
pub const LINK_PART_BYTES: usize = MAX_LINK_FRAME_BYTES / 4;

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
    // Added in link version 2.
    /// Either way: "still here". Each side sends one when it has written nothing for its
    /// heartbeat interval, and drops the link when it has read nothing for its deadline.
    Heartbeat,
    /// control plane → gateway, instead of `Welcome`: this node may not connect (another live
    /// link already uses its node id); the reason is for the operator. The connection closes.
    Refused(String),
    /// control plane → gateway: one part of a `Tables` snapshot too large for one message; the
    /// parts are concatenated, and the snapshot applied, when the closing `Tables` arrives.
    TablesPart(Tables),
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
    /// A user's revocations are gone: every credential they covered has expired (link v2).
    RevocationRemoved(String),
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

/// Estimated archived size of a string (its bytes plus an out-of-line header and alignment).
fn str_cost(s: &str) -> usize {
    s.len() + 16
}

fn strs_cost(v: &[String]) -> usize {
    16 + v.iter().map(|s| str_cost(s)).sum::<usize>()
}

fn target_cost(t: &Target) -> usize {
    match t {
        Target::Users(us) => strs_cost(us),
        Target::Device { user, device } => str_cost(user) + str_cost(device),
        Target::User(s) | Target::Group(s) | Target::Topic(s) | Target::Condition(s) => str_cost(s),
    }
}

fn revocation_cost(r: &RevocationEntry) -> usize {
    32 + str_cost(&r.user) + r.devices.iter().map(|(d, _)| str_cost(d) + 16).sum::<usize>()
}

fn group_cost(g: &GroupTopics) -> usize {
    16 + str_cost(&g.group) + strs_cost(&g.topics)
}

/// Splits `items` into runs whose estimated size stays under `budget` (an item larger than the
/// budget gets a run of its own; encoding it then fails, which the sender treats as fatal).
fn runs<T>(items: Vec<T>, budget: usize, cost: impl Fn(&T) -> usize, mut emit: impl FnMut(Vec<T>)) {
    let mut run = Vec::new();
    let mut size = 0;
    for item in items {
        let c = cost(&item);
        if !run.is_empty() && size + c > budget {
            emit(std::mem::take(&mut run));
            size = 0;
        }
        size += c;
        run.push(item);
    }
    if !run.is_empty() {
        emit(run);
    }
}

impl LinkMessage {
    /// Splits a message whose lists can grow without bound (presence, receipts, reports,
    /// subscriptions, table deltas, a table snapshot) into messages each estimated under
    /// `budget` bytes ([`LINK_PART_BYTES`] on the wire), in order, into `out`. Batches split into
    /// several batches of the same kind (each applies on its own); a snapshot splits into
    /// `TablesPart`s and a closing `Tables`, applied together. Other messages pass unchanged.
    pub fn split(self, budget: usize, out: &mut Vec<LinkMessage>) {
        match self {
            LinkMessage::Presence(v) => runs(
                v,
                budget,
                |p| match p {
                    PresenceChange::Online(o) => {
                        48 + str_cost(&o.user) + str_cost(&o.device) + 8 * o.resume.len()
                    }
                    PresenceChange::Offline(o) => 48 + str_cost(&o.user) + str_cost(&o.device),
                },
                |r| out.push(LinkMessage::Presence(r)),
            ),
            LinkMessage::Receipts(v) => runs(
                v,
                budget,
                |r| 16 + str_cost(&r.user) + str_cost(&r.device),
                |r| out.push(LinkMessage::Receipts(r)),
            ),
            LinkMessage::Reports(v) => runs(v, budget, |_| 16, |r| out.push(LinkMessage::Reports(r))),
            LinkMessage::Subscriptions(v) => runs(
                v,
                budget,
                |u| 16 + str_cost(&u.user) + strs_cost(&u.groups) + strs_cost(&u.topics),
                |r| out.push(LinkMessage::Subscriptions(r)),
            ),
            LinkMessage::TablesDelta(v) => runs(
                v,
                budget,
                |c| match c {
                    TableChange::KeyAdded(_) | TableChange::KeyRemoved(_) => 48,
                    TableChange::Revoked(r) => revocation_cost(r),
                    TableChange::Group(g) => group_cost(g),
                    TableChange::GroupRemoved(g) | TableChange::RevocationRemoved(g) => 16 + str_cost(g),
                },
                |r| out.push(LinkMessage::TablesDelta(r)),
            ),
            LinkMessage::Tables(t) => split_tables(t, budget, out),
            // Pushes, publishes and the rest are bounded where they are made (payload and body
            // limits); the encoder refuses whatever is not.
            other => out.push(other),
        }
    }

    /// Estimated archived size of a push (for byte bounds on queues of them).
    pub fn push_cost(p: &PushOrder) -> usize {
        64 + p.payload.len() + target_cost(&p.target) + p.origin.as_ref().map_or(0, target_cost)
    }

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

/// One entry of a snapshot, for splitting it in order.
enum TableItem {
    Key(KeyEntry),
    Revocation(RevocationEntry),
    Group(GroupTopics),
}

fn split_tables(t: Tables, budget: usize, out: &mut Vec<LinkMessage>) {
    let version = t.version;
    let empty = || Tables { version, ..Tables::default() };
    let items = t
        .keys
        .into_iter()
        .map(TableItem::Key)
        .chain(t.revocations.into_iter().map(TableItem::Revocation))
        .chain(t.groups.into_iter().map(TableItem::Group));
    let mut parts = Vec::new();
    runs(
        items.collect(),
        budget,
        |i| match i {
            TableItem::Key(_) => 48,
            TableItem::Revocation(r) => revocation_cost(r),
            TableItem::Group(g) => group_cost(g),
        },
        |run| {
            let mut part = empty();
            for i in run {
                match i {
                    TableItem::Key(k) => part.keys.push(k),
                    TableItem::Revocation(r) => part.revocations.push(r),
                    TableItem::Group(g) => part.groups.push(g),
                }
            }
            parts.push(part);
        },
    );
    let last = parts.pop().unwrap_or_else(empty);
    out.extend(parts.into_iter().map(LinkMessage::TablesPart));
    out.push(LinkMessage::Tables(last));
}

impl Tables {
    /// Appends a `TablesPart` (see [`LinkMessage::TablesPart`]).
    pub fn extend(&mut self, part: Tables) {
        self.version = part.version;
        self.keys.extend(part.keys);
        self.revocations.extend(part.revocations);
        self.groups.extend(part.groups);
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

    /// Encodes every part (each must fit a frame) and decodes it back.
    fn through_frames(parts: &[LinkMessage]) -> Vec<LinkMessage> {
        let mut scratch = AlignedVec::new();
        parts
            .iter()
            .map(|m| {
                let mut wire = BytesMut::new();
                m.encode(0, &mut wire).expect("a part fits a link frame");
                assert!(wire.len() <= MAX_LINK_FRAME_BYTES);
                let Some(Frame::Link(l)) = Decoder::new(MAX_LINK_FRAME_BYTES).decode(&mut wire).unwrap()
                else {
                    panic!("not a link frame")
                };
                LinkMessage::decode(&l, &mut scratch).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_receipts_batch_over_the_frame_limit_splits_into_parts_that_fit() {
        // ~960,000 receipts: what one QoS 1 burst to 15,000 MQTT subscribers produced.
        let receipts: Vec<Receipt> = (0..960_000u32)
            .map(|i| Receipt {
                user: format!("user-{:08}", i % 15_000),
                device: format!("device-{i:08}"),
                stream: i % 100,
                first: i,
                last: i,
            })
            .collect();
        let whole = LinkMessage::Receipts(receipts.clone());
        assert!(whole.encode(0, &mut BytesMut::new()).is_err(), "the test batch must not fit one frame");
        let mut parts = Vec::new();
        whole.split(LINK_PART_BYTES, &mut parts);
        assert!(parts.len() > 1);
        let mut got = Vec::new();
        for m in through_frames(&parts) {
            let LinkMessage::Receipts(rs) = m else { panic!("not receipts") };
            got.extend(rs);
        }
        assert_eq!(got, receipts);
    }

    #[test]
    fn a_snapshot_over_the_frame_limit_splits_into_parts_and_a_closing_tables() {
        // 100 groups × 10,000 topics, within the API's limits.
        let tables = Tables {
            version: 9,
            keys: vec![KeyEntry { key_id: 1, secret: [7; 32] }],
            revocations: vec![RevocationEntry { user: "u".into(), all_before: 5, devices: vec![] }],
            groups: (0..100)
                .map(|g| GroupTopics {
                    group: format!("group-{g}"),
                    topics: (0..10_000).map(|t| format!("group-{g}/topic-{t:06}")).collect(),
                })
                .collect(),
        };
        let whole = LinkMessage::Tables(tables.clone());
        assert!(whole.encode(0, &mut BytesMut::new()).is_err(), "the test snapshot must not fit one frame");
        let mut parts = Vec::new();
        whole.split(LINK_PART_BYTES, &mut parts);
        assert!(parts.len() > 1);
        let got = through_frames(&parts);
        let (last, rest) = got.split_last().unwrap();
        let LinkMessage::Tables(last) = last.clone() else { panic!("the last part is not Tables") };
        let mut joined = Tables { version: 9, ..Tables::default() };
        for m in rest {
            let LinkMessage::TablesPart(t) = m else { panic!("a middle part is not TablesPart") };
            joined.extend(t.clone());
        }
        joined.extend(last);
        assert_eq!(joined, tables);
        // A small snapshot stays one message.
        let mut one = Vec::new();
        LinkMessage::Tables(Tables::default()).split(LINK_PART_BYTES, &mut one);
        assert_eq!(one, vec![LinkMessage::Tables(Tables::default())]);
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
