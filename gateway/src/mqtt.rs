//! What the MQTT listener adds to a node, outside a core: how a push becomes a PUBLISH (its
//! topic, QoS and payload, prepared once per push per node by the link thread), one MQTT
//! connection's state, and how Herald's close codes map onto MQTT reason codes. Packets are
//! handled on the core (`worker::mqtt`) through the same session code as Herald terminals: login
//! verification, replacement, presence, deadlines, index membership, outbound queues, metrics.
//!
//! # How Herald looks to an MQTT client
//! - **CONNECT**: user name = Herald user id, password = a Herald credential issued for that user;
//!   client id = the credential's device (empty: the credential's device is used and, in 5.0,
//!   returned as the assigned client identifier). A bad, forged or expired credential, or one
//!   for another user, gets CONNACK 0x86 (3.1.1: 0x04); a revoked one 0x87 (0x05); a client id
//!   that is not the credential's device 0x85 (0x02); enhanced authentication 0x8C (5.0 only);
//!   no tables from the control plane yet 0x88 (0x03). Keep-alive `k` closes a connection silent
//!   for 1.5·k seconds (k = 0: the node's heartbeat grace). A connected client whose credential
//!   expires, is revoked or whose signing key is withdrawn is closed then (5.0: DISCONNECT 0x87
//!   Not authorized, MQTT having no "credential expired"; 3.1.1: closed): EMQX does the same with
//!   an expired JWT. The client must connect again with a new password. CONNACK says: maximum QoS 1, no
//!   retain, no shared subscriptions, no topic aliases, no subscription identifiers, receive
//!   maximum [`MAX_PUBLISHING`].
//! - **Topics**: a topic push is published on the topic's name; a group push on
//!   `groups/<group>`; a push to a user (or users, or a device) on the recipient's inbox
//!   `users/<user>`; a condition push on `herald/conditions`. A Herald topic whose name is not a
//!   valid MQTT topic name (empty, or holding `+`/`#`) does not reach MQTT terminals.
//! - **SUBSCRIBE** is allowed for a filter that matches at least one topic the user may receive:
//!   its inbox, `herald/conditions`, `groups/<g>` for each of its groups, and its effective topics
//!   (direct topics and its groups' topics). Anything else gets 0x87 (3.1.1: 0x80); shared
//!   subscriptions 0x9E (0x80). Granted QoS is at most 1. What a user follows is still decided by
//!   the app server (groups, topics): a filter never makes Herald route more to the user, it
//!   selects what of that reaches this connection. The other 5.0 subscription options are
//!   accepted and ignored: Herald keeps no retained messages (Retain As Published, Retain
//!   Handling), and No Local is not honoured — a terminal that publishes to a group or topic
//!   it follows receives its own message, like every follower.
//! - **Delivery**: inbox and condition pushes reach every MQTT connection of the user whether or
//!   not it subscribed (like a personal channel on EMQX or Centrifugo); topic and group pushes
//!   reach connections with a matching subscription, at the lower of the push's QoS and the
//!   granted QoS. QoS 1 when the push requires an ack (TTL > 0), QoS 0 otherwise. 5.0 PUBLISH
//!   carries the TTL as message expiry and a UTF-8 payload format indicator.
//! - **Payload**: the push's `body` as is (UTF-8); without a body, a JSON object of its `data`
//!   entries; without either, empty. Encoded once per push per node; each recipient gets its own
//!   few header bytes (topic, packet id) and shares the payload bytes.
//! - **PUBACK** is Herald's delivery receipt for that (stream, seq). At most
//!   [`MAX_INFLIGHT`] (and the client's receive maximum) QoS 1 PUBLISH await PUBACK per
//!   connection; a push beyond that is dropped for the connection (reported `dropped`) and
//!   redelivered by the control plane at the next login.
//! - **Sessions**: Herald keeps the state of a device (what it acknowledged, per stream), not
//!   MQTT subscriptions, so CONNACK's session present is always 0 and clients subscribe again.
//!   A persistent session (3.1.1 clean session 0, 5.0 session expiry > 0) receives everything
//!   the control plane stored for the device and it has not acknowledged (the backlog, QoS 1,
//!   DUP set on redeliveries), before and whatever it subscribes. A clean session receives only
//!   the backlog of its inbox; stored topic and group messages stay stored for the device's next
//!   persistent session (or expire). A backlog push carries the target it was first pushed to
//!   (`PushOrder::origin`) and is published on that target's topic; from an older control plane
//!   that does not say, the topic is the one this node last saw a live push of that stream
//!   published on, and `herald/streams/<id>` for a stream it never saw live.
//! - **Duplicate client ids**: a newer login of the same (user, device), MQTT or Herald protocol,
//!   on any core, replaces the older connection (5.0: DISCONNECT 0x8E).
//! - **PUBLISH from a terminal** is refused unless `mqtt_allow_publish` (config file or
//!   `--mqtt-allow-publish`): 5.0 QoS 1 gets PUBACK 0x87 and the connection stays; 5.0 QoS 0
//!   gets DISCONNECT 0x87; 3.1.1 is closed. QoS 2 is always refused (5.0 DISCONNECT 0x9B), and a
//!   5.0 retained PUBLISH gets DISCONNECT 0x9A (3.1.1: the retain flag is ignored).
//!   With `mqtt_allow_publish` a terminal publishes like an app server pushes, through the
//!   control plane: `groups/<g>` is a push to group `g`, any other topic a push to that Herald
//!   topic; the control plane accepts it if the user belongs to the group or follows the topic
//!   (directly or through a group), and the push reaches every follower, the publisher's own
//!   connections included. `users/...` and `herald/...` are never publishable (0x87, as above).
//!   The payload must be UTF-8 (a push body is text): otherwise 0x99, as above. QoS 1 becomes a
//!   stored push whose TTL is the 5.0 message expiry or the control plane's default TTL, and
//!   PUBACK is sent once the push is durable (5.0 reason: 0x00; refused by the control plane:
//!   0x87; too large: 0x83; control plane unreachable or link lost before the answer: 0x80,
//!   send again — at least once); on 3.1.1, where PUBACK cannot say no, a refusal closes the
//!   connection. QoS 0 becomes a TTL-0 push (online terminals only) and gets no answer; what
//!   the control plane refuses is dropped and counted. At most [`MAX_PUBLISHING`] QoS 1 PUBLISH
//!   may wait for their PUBACK (5.0: the receive maximum; more: DISCONNECT 0x93; 3.1.1: closed).
//!   A node holds at most `link::MAX_QUEUED_PUBLISHES` terminal messages for the control plane;
//!   past that (a flood, or a slow control plane) QoS 1 gets 0x97 (3.1.1: closed) and QoS 0 is
//!   dropped, counted, the connection kept.
//! - **Wills** follow the PUBLISH rules above (refused ones are dropped, counted) and are sent
//!   when the connection ends without a normal DISCONNECT (5.0 DISCONNECT 0x04 sends it too),
//!   except when a newer login of the same device replaced it, the node is draining (the
//!   terminal is told to reconnect elsewhere) or the credential was revoked. A 5.0 will delay
//!   is kept by the control plane, which drops the will if the device logs in again first; a
//!   will reaching the control plane after the device is back online is dropped too.
//! - **Malformed packets** close that connection only, with the codec's reply.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::CloseCode;
use herald_protocol::frame::PushFlags;
use herald_protocol::link::{PushOrder, Target};
use herald_protocol::mqtt::{Decoder, ProtocolVersion, QoS, ReasonCode, Subscribe, TopicFilter, topic};
use herald_protocol::payload::PushPayload;
use rkyv::util::AlignedVec;

/// Most QoS 1 PUBLISH a connection may have unacknowledged (lowered by a 5.0 receive maximum).
pub(crate) const MAX_INFLIGHT: u16 = 1024;

/// Entries of an emptied QoS 1 window kept allocated (see [`Pending::inflight`]).
const KEEP_INFLIGHT: usize = 16;
/// SUBSCRIBEs held while the user's subscriptions have not arrived from the control plane.
pub(crate) const MAX_PARKED: usize = 16;
/// QoS 1 PUBLISH from a terminal that may wait for the control plane's answer (the receive
/// maximum CONNACK announces).
pub(crate) const MAX_PUBLISHING: u16 = 64;

pub(crate) const CONDITION_TOPIC: &str = "herald/conditions";

/// Writes a user's inbox topic (`users/<user>`) into `out`: made when needed rather than held
/// by every connection.
pub(crate) fn inbox_topic<'a>(user: &str, out: &'a mut String) -> &'a str {
    out.clear();
    out.push_str("users/");
    out.push_str(user);
    out
}

/// The topic a group's pushes are published on.
pub(crate) fn group_topic(group: &str) -> String {
    format!("groups/{group}")
}

/// The MQTT topic of a stream's pushes, as learned from a live push of the stream.
#[derive(Debug, Clone)]
pub(crate) enum StreamTopic {
    /// A user's inbox: each recipient's own `users/<user>`.
    Inbox,
    Named(Arc<str>),
}

/// A push as MQTT recipients get it. Prepared once per node.
#[derive(Debug)]
pub(crate) struct MqttPush {
    pub(crate) payload: Bytes,
    /// `None`: each recipient's inbox.
    pub(crate) topic: Option<Arc<str>>,
    /// Reaches a connection whatever it subscribed to (inbox, conditions).
    pub(crate) always: bool,
    /// Part of a device's backlog after its login.
    pub(crate) backlog: bool,
    pub(crate) qos1: bool,
    /// A redelivery (DUP).
    pub(crate) dup: bool,
    pub(crate) expiry_secs: Option<u32>,
    pub(crate) stream: u32,
    pub(crate) seq: u32,
}

/// Prepares `order` for MQTT recipients; `None` when it cannot reach any (invalid topic name).
/// Learns (or looks up) the stream's topic in `streams`.
pub(crate) fn prepare(
    order: &PushOrder,
    streams: &mut std::collections::HashMap<u32, StreamTopic>,
    scratch: &mut AlignedVec,
) -> Option<MqttPush> {
    let (topic, always, backlog) = match (&order.target, &order.origin) {
        // A backlog delivery names the target it was first pushed to, when the control plane says.
        (Target::Device { .. }, Some(origin)) if !matches!(origin, Target::Device { .. }) => {
            let (topic, always) = live_topic(origin, order.stream, streams)?;
            (topic, always, true)
        }
        (Target::Device { .. }, _) => match streams.get(&order.stream) {
            Some(StreamTopic::Inbox) => (None, true, true),
            Some(StreamTopic::Named(t)) => (Some(t.clone()), false, true),
            None => (Some(format!("herald/streams/{}", order.stream).into()), false, true),
        },
        (live, _) => {
            let (topic, always) = live_topic(live, order.stream, streams)?;
            (topic, always, false)
        }
    };
    let flags = PushFlags(order.flags);
    let qos1 = flags.contains(PushFlags::ACK_REQUIRED);
    Some(MqttPush {
        payload: payload_bytes(&order.payload, scratch),
        topic,
        always,
        backlog,
        qos1,
        dup: qos1 && flags.contains(PushFlags::REDELIVERY),
        expiry_secs: (order.ttl_secs > 0).then_some(order.ttl_secs),
        stream: order.stream,
        seq: order.seq,
    })
}

/// The MQTT topic of a push to `target` (`None`: each recipient's inbox) and whether it reaches
/// connections whatever they subscribed to; remembers the stream's topic. `None` when the name is
/// not a valid MQTT topic.
fn live_topic(
    target: &Target,
    stream: u32,
    streams: &mut std::collections::HashMap<u32, StreamTopic>,
) -> Option<(Option<Arc<str>>, bool)> {
    Some(match target {
        Target::User(_) => {
            streams.insert(stream, StreamTopic::Inbox);
            (None, true)
        }
        Target::Users(_) | Target::Device { .. } => (None, true),
        Target::Topic(t) => {
            if !topic::valid_name(t) {
                return None;
            }
            let t: Arc<str> = t.as_str().into();
            streams.insert(stream, StreamTopic::Named(t.clone()));
            (Some(t), false)
        }
        Target::Group(g) => {
            let t: Arc<str> = group_topic(g).into();
            if !topic::valid_name(&t) {
                return None;
            }
            streams.insert(stream, StreamTopic::Named(t.clone()));
            (Some(t), false)
        }
        Target::Condition(_) => {
            let t: Arc<str> = CONDITION_TOPIC.into();
            streams.insert(stream, StreamTopic::Named(t.clone()));
            (Some(t), true)
        }
    })
}

/// The PUBLISH payload: the body, else a JSON object of the data, else nothing.
fn payload_bytes(archived: &[u8], scratch: &mut AlignedVec) -> Bytes {
    let Ok(p) = PushPayload::access(archived, scratch) else { return Bytes::new() };
    if let Some(body) = p.body.as_ref() {
        return Bytes::copy_from_slice(body.as_bytes());
    }
    if p.data.is_empty() {
        return Bytes::new();
    }
    let map: serde_json::Map<String, serde_json::Value> =
        p.data.iter().map(|e| (e.key.to_string(), serde_json::Value::from(e.value.as_str()))).collect();
    serde_json::to_vec(&map).map(Bytes::from).unwrap_or_default()
}

/// One MQTT connection's state beyond what every connection has.
#[derive(Debug)]
pub(crate) struct MqttConn {
    pub(crate) decoder: Decoder,
    /// Session expiry > 0: receives the whole backlog.
    pub(crate) persistent: bool,
    /// QoS 1 PUBLISH the client accepts unacknowledged.
    pub(crate) receive_max: u16,
    /// Largest packet the client accepts.
    pub(crate) max_packet: u32,
    next_pid: u16,
    granted: Granted,
    /// The QoS 1 window and parked SUBSCRIBEs: absent until the first of either, so an idle
    /// connection that only ever got QoS 0 pays one pointer for them.
    pending: Option<Box<Pending>>,
}

/// The filters granted to a connection, as ids in its core's [`Filters`] with the granted QoS:
/// one inline (most terminals subscribe to one filter), more in a boxed slice (rebuilt on the
/// rare SUBSCRIBE or UNSUBSCRIBE that changes them).
#[derive(Debug)]
enum Granted {
    One([(u32, QoS); 1]),
    Many(Box<[(u32, QoS)]>),
}

impl Default for Granted {
    fn default() -> Granted {
        Granted::Many(Box::new([]))
    }
}

impl Granted {
    fn as_slice(&self) -> &[(u32, QoS)] {
        match self {
            Granted::One(g) => g,
            Granted::Many(g) => g,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [(u32, QoS)] {
        match self {
            Granted::One(g) => g,
            Granted::Many(g) => g,
        }
    }

    /// Holds `grants`: inline when there is one, else in a slice of exactly their size.
    fn set(&mut self, grants: Vec<(u32, QoS)>) {
        *self = match grants[..] {
            [one] => Granted::One([one]),
            _ => Granted::Many(grants.into_boxed_slice()),
        };
    }

    fn push(&mut self, grant: (u32, QoS)) {
        let mut grants = self.as_slice().to_vec();
        grants.push(grant);
        self.set(grants);
    }

    /// Removes the grant of filter `id`; false if there was none.
    fn remove(&mut self, id: u32) -> bool {
        if !self.as_slice().iter().any(|g| g.0 == id) {
            return false;
        }
        let grants = self.as_slice().iter().copied().filter(|g| g.0 != id).collect();
        self.set(grants);
        true
    }
}

/// The topic filters granted to one core's MQTT connections, each held once with how many
/// grants name it: a connection holds ids (the terminals of an app subscribe to the same few
/// filters), and a filter is forgotten with its last grant. Owned by the core, like its
/// subscriber index.
pub(crate) type Filters = crate::intern::Interner<u32>;

impl Filters {
    /// The id of `filter`, counting one more grant of it.
    fn acquire(&mut self, filter: &str) -> u32 {
        let id = self.intern(filter);
        *self.get_mut(id) += 1;
        id
    }

    /// One grant of `id` fewer; the filter is forgotten with its last.
    fn release(&mut self, id: u32) {
        let grants = self.get_mut(id);
        *grants -= 1;
        if *grants == 0 {
            self.forget(id);
        }
    }
}

/// What an MQTT connection holds only while it waits for something.
#[derive(Debug, Default)]
struct Pending {
    /// (packet id, stream, seq) of QoS 1 PUBLISH awaiting PUBACK, oldest first. Kept (with its
    /// capacity, up to [`KEEP_INFLIGHT`]) once used: a connection that receives QoS 1 does not
    /// allocate per PUBLISH, and one that took a burst gives the burst's window back.
    inflight: VecDeque<(u16, u32, u32)>,
    /// SUBSCRIBEs waiting for the user's subscriptions.
    parked: Vec<Subscribe>,
    /// The CONNECT's will, until the connection ends or a normal DISCONNECT discards it.
    will: Option<Box<Will>>,
    /// QoS 1 PUBLISH sent to the control plane and not answered yet.
    publishing: u16,
}

impl Pending {
    /// Holds nothing worth its allocation (a used QoS 1 window keeps its capacity).
    fn is_idle(&self) -> bool {
        self.inflight.capacity() == 0 && self.parked.is_empty() && self.will.is_none() && self.publishing == 0
    }
}

/// A will, as CONNECT gave it.
#[derive(Debug)]
pub(crate) struct Will {
    pub(crate) topic: Box<str>,
    pub(crate) payload: Bytes,
    pub(crate) qos1: bool,
    pub(crate) delay_secs: u32,
    pub(crate) expiry_secs: Option<u32>,
}

/// The Herald target of a terminal's PUBLISH on `topic`: `groups/<g>` is group `g`, any other
/// topic the Herald topic of that name. `None` for the inbox and Herald's own topics, never
/// publishable. Whether the user may publish there is the control plane's decision.
pub(crate) fn publish_target(topic: &str) -> Option<Target> {
    if topic.starts_with("users/") || topic.starts_with("herald/") {
        return None;
    }
    Some(match topic.strip_prefix("groups/") {
        Some(g) if !g.is_empty() => Target::Group(g.to_owned()),
        Some(_) => return None,
        None => Target::Topic(topic.to_owned()),
    })
}

impl MqttConn {
    pub(crate) fn new(max_packet_bytes: usize) -> MqttConn {
        MqttConn {
            decoder: Decoder::new(max_packet_bytes),
            persistent: false,
            receive_max: MAX_INFLIGHT,
            max_packet: u32::MAX,
            next_pid: 0,
            granted: Granted::default(),
            pending: None,
        }
    }

    /// The version CONNECT named (3.1.1 until then).
    pub(crate) fn version(&self) -> ProtocolVersion {
        self.decoder.version().unwrap_or(ProtocolVersion::V311)
    }

    /// Whether a 5.0 DISCONNECT may be sent (5.0, CONNECT accepted).
    pub(crate) fn v5_connected(&self) -> bool {
        self.decoder.is_connected() && self.decoder.version() == Some(ProtocolVersion::V5)
    }

    /// A packet id for a QoS 1 PUBLISH of `(stream, seq)`; `None` when the client's window is
    /// full.
    pub(crate) fn alloc(&mut self, stream: u32, seq: u32) -> Option<u16> {
        let window = usize::from(self.receive_max.min(MAX_INFLIGHT));
        let inflight = &mut self.pending.get_or_insert_default().inflight;
        if inflight.len() >= window {
            return None;
        }
        loop {
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            let pid = self.next_pid;
            if !inflight.iter().any(|e| e.0 == pid) {
                inflight.push_back((pid, stream, seq));
                return Some(pid);
            }
        }
    }

    /// Forgets a packet id; the `(stream, seq)` it carried, if it was in flight.
    pub(crate) fn release(&mut self, pid: u16) -> Option<(u32, u32)> {
        let inflight = &mut self.pending.as_mut()?.inflight;
        let i = inflight.iter().position(|e| e.0 == pid)?;
        let found = inflight.remove(i).map(|(_, s, q)| (s, q));
        if inflight.is_empty() && inflight.capacity() > KEEP_INFLIGHT {
            // A burst of 100 QoS 1 messages left 1.5 KiB here on each of 15,000 connections.
            inflight.shrink_to(KEEP_INFLIGHT);
        }
        found
    }

    /// Holds a SUBSCRIBE until the user's subscriptions arrive; false (and dropped) when
    /// [`MAX_PARKED`] already wait.
    pub(crate) fn park(&mut self, s: Subscribe) -> bool {
        let parked = &mut self.pending.get_or_insert_default().parked;
        if parked.len() >= MAX_PARKED {
            return false;
        }
        parked.push(s);
        true
    }

    /// The parked SUBSCRIBEs, oldest first; what held them is freed unless a QoS 1 window
    /// uses it.
    pub(crate) fn take_parked(&mut self) -> Vec<Subscribe> {
        let Some(p) = &mut self.pending else { return Vec::new() };
        let parked = std::mem::take(&mut p.parked);
        self.free_idle();
        parked
    }

    /// Frees what holds pending state once it holds nothing.
    fn free_idle(&mut self) {
        if self.pending.as_ref().is_some_and(|p| p.is_idle()) {
            self.pending = None;
        }
    }

    /// Keeps CONNECT's will (`None`: none).
    pub(crate) fn set_will(&mut self, will: Option<Box<Will>>) {
        if will.is_some() {
            self.pending.get_or_insert_default().will = will;
        }
    }

    /// Takes the will (to send it, or because a normal DISCONNECT discards it).
    pub(crate) fn take_will(&mut self) -> Option<Box<Will>> {
        let will = self.pending.as_mut()?.will.take();
        self.free_idle();
        will
    }

    /// Counts one more QoS 1 PUBLISH waiting for the control plane; false when
    /// [`MAX_PUBLISHING`] already wait.
    pub(crate) fn begin_publish(&mut self) -> bool {
        let p = self.pending.get_or_insert_default();
        if p.publishing >= MAX_PUBLISHING {
            return false;
        }
        p.publishing += 1;
        true
    }

    /// One QoS 1 PUBLISH answered.
    pub(crate) fn end_publish(&mut self) {
        if let Some(p) = &mut self.pending {
            p.publishing = p.publishing.saturating_sub(1);
        }
        self.free_idle();
    }

    /// The highest QoS granted by a filter matching `topic`.
    pub(crate) fn granted(&self, topic: &str, filters: &Filters) -> Option<QoS> {
        let grants = self.granted.as_slice().iter();
        grants.filter(|&&(f, _)| topic::topic_matches(filters.name(f), topic)).map(|&(_, q)| q).max()
    }

    /// Grants `filter` at `qos`, replacing an earlier grant of the same filter.
    pub(crate) fn grant(&mut self, filter: &str, qos: QoS, filters: &mut Filters) {
        if let Some(id) = filters.id(filter)
            && let Some(g) = self.granted.as_mut_slice().iter_mut().find(|g| g.0 == id)
        {
            g.1 = qos;
            return;
        }
        let id = filters.acquire(filter);
        self.granted.push((id, qos));
    }

    /// Removes the grant of `filter`; false if there was none.
    pub(crate) fn revoke(&mut self, filter: &str, filters: &mut Filters) -> bool {
        let Some(id) = filters.id(filter) else { return false };
        let removed = self.granted.remove(id);
        if removed {
            filters.release(id);
        }
        removed
    }

    /// Gives back every grant: the connection is over.
    pub(crate) fn revoke_all(&mut self, filters: &mut Filters) {
        for &(id, _) in self.granted.as_slice() {
            filters.release(id);
        }
        self.granted = Granted::default();
    }
}

/// Whether `filter` matches a topic the user may receive (see the module doc).
pub(crate) fn permitted(
    filter: &TopicFilter,
    inbox: &str,
    follows: crate::index::Follows<'_>,
    snap: &crate::tables::Snapshot,
) -> bool {
    if filter.matches(inbox) || filter.matches(CONDITION_TOPIC) {
        return true;
    }
    if follows.topics().any(|t| filter.matches(t)) {
        return true;
    }
    let mut name = String::new();
    follows.groups().any(|g| {
        name.clear();
        let _ = write!(name, "groups/{g}");
        filter.matches(&name)
            || snap.group_topics.get(g).is_some_and(|ts| ts.iter().any(|t| filter.matches(t)))
    })
}

/// The 5.0 DISCONNECT reason for closing with a Herald close code.
pub(crate) fn disconnect_reason(code: CloseCode) -> ReasonCode {
    match code {
        CloseCode::NORMAL => ReasonCode::NORMAL_DISCONNECTION,
        CloseCode::PROTOCOL_ERROR => ReasonCode::PROTOCOL_ERROR,
        CloseCode::FRAME_TOO_LARGE => ReasonCode::PACKET_TOO_LARGE,
        CloseCode::HEARTBEAT_TIMEOUT => ReasonCode::KEEP_ALIVE_TIMEOUT,
        CloseCode::REPLACED => ReasonCode::SESSION_TAKEN_OVER,
        CloseCode::SLOW_CONSUMER => ReasonCode::QUOTA_EXCEEDED,
        CloseCode::SHUTTING_DOWN => ReasonCode::SERVER_SHUTTING_DOWN,
        CloseCode::OVERLOADED => ReasonCode::SERVER_BUSY,
        CloseCode::AUTH_EXPIRED
        | CloseCode::AUTH_FORGED
        | CloseCode::AUTH_MALFORMED
        | CloseCode::AUTH_REVOKED
        | CloseCode::DEVICE_MISMATCH => ReasonCode::NOT_AUTHORIZED,
        CloseCode::INTERNAL_ERROR => ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
        _ => ReasonCode::ADMINISTRATIVE_ACTION,
    }
}

/// The CONNACK reason for a login refused with a Herald close code.
pub(crate) fn connack_reason(code: CloseCode) -> ReasonCode {
    match code {
        CloseCode::AUTH_REVOKED => ReasonCode::NOT_AUTHORIZED,
        CloseCode::DEVICE_MISMATCH => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        CloseCode::OVERLOADED | CloseCode::SHUTTING_DOWN => ReasonCode::SERVER_UNAVAILABLE,
        _ => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_are_bounded_by_the_window_and_reused() {
        let mut m = MqttConn::new(1024);
        m.receive_max = 2;
        assert_eq!(m.alloc(1, 1), Some(1));
        assert_eq!(m.alloc(1, 2), Some(2));
        assert_eq!(m.alloc(1, 3), None);
        assert_eq!(m.release(1), Some((1, 1)));
        assert_eq!(m.release(1), None);
        assert_eq!(m.alloc(1, 3), Some(3));
        m.next_pid = u16::MAX;
        assert_eq!(m.release(2), Some((1, 2)));
        // Wraps past 0 and skips ids still in flight.
        m.next_pid = 2;
        assert_eq!(m.alloc(1, 4), Some(4));
    }

    #[test]
    fn grants_share_one_filter_per_core_and_forget_it_with_the_last() {
        let mut table = Filters::default();
        let (mut a, mut b) = (MqttConn::new(1024), MqttConn::new(1024));
        a.grant("news/+", QoS::AtMostOnce, &mut table);
        b.grant("news/+", QoS::AtLeastOnce, &mut table);
        assert_eq!(table.len(), 1);
        assert_eq!(a.granted("news/eu", &table), Some(QoS::AtMostOnce));
        assert_eq!(b.granted("news/eu", &table), Some(QoS::AtLeastOnce));
        assert_eq!(a.granted("sport/eu", &table), None);
        // A second grant of the same filter replaces the first; the best of several matches wins.
        a.grant("news/+", QoS::AtLeastOnce, &mut table);
        a.grant("news/#", QoS::AtMostOnce, &mut table);
        a.grant("sport/eu", QoS::AtMostOnce, &mut table);
        assert_eq!(table.len(), 3);
        assert_eq!(a.granted("news/eu", &table), Some(QoS::AtLeastOnce));
        assert_eq!(a.granted("sport/eu", &table), Some(QoS::AtMostOnce));
        assert!(a.revoke("news/+", &mut table));
        assert!(!a.revoke("news/+", &mut table));
        assert!(!a.revoke("never/granted", &mut table));
        assert_eq!(a.granted("news/eu", &table), Some(QoS::AtMostOnce));
        // `b` still holds news/+.
        assert_eq!(table.len(), 3);
        a.revoke_all(&mut table);
        assert_eq!(a.granted("sport/eu", &table), None);
        assert_eq!(table.len(), 1);
        b.revoke_all(&mut table);
        assert_eq!(table.len(), 0);
        // A freed id is reused for the next filter.
        b.grant("x", QoS::AtMostOnce, &mut table);
        assert_eq!(b.granted("x", &table), Some(QoS::AtMostOnce));
    }

    #[test]
    fn parked_subscribes_and_the_qos1_window_are_held_only_while_used() {
        let mut m = MqttConn::new(1024);
        assert!(m.pending.is_none());
        assert!(m.take_parked().is_empty());
        let sub = || Subscribe {
            packet_id: 1,
            subscription_identifier: None,
            subscriptions: Vec::new(),
            properties: Default::default(),
        };
        for _ in 0..MAX_PARKED {
            assert!(m.park(sub()));
        }
        assert!(!m.park(sub()));
        assert_eq!(m.take_parked().len(), MAX_PARKED);
        assert!(m.pending.is_none(), "nothing waits: nothing held");
        assert_eq!(m.alloc(1, 1), Some(1));
        assert!(m.park(sub()));
        assert_eq!(m.take_parked().len(), 1);
        assert!(m.pending.is_some(), "the QoS 1 window stays");
        assert_eq!(m.release(1), Some((1, 1)));
    }

    #[test]
    fn a_qos1_window_emptied_after_a_burst_gives_its_memory_back() {
        let mut m = MqttConn::new(1024);
        let pids: Vec<u16> = (0..100).map(|seq| m.alloc(1, seq).unwrap()).collect();
        let window = |m: &MqttConn| m.pending.as_ref().map_or(0, |p| p.inflight.capacity());
        assert!(window(&m) >= 100);
        for pid in pids {
            assert!(m.release(pid).is_some());
        }
        assert!(window(&m) <= KEEP_INFLIGHT, "{} entries kept", window(&m));
        // A steady trickle neither grows it nor reallocates it.
        let kept = window(&m);
        for seq in 0..50 {
            let pid = m.alloc(2, seq).unwrap();
            m.release(pid);
        }
        assert_eq!(window(&m), kept);
    }

    #[test]
    fn a_will_and_publishes_in_flight_are_held_only_while_there() {
        let mut m = MqttConn::new(1024);
        m.set_will(None);
        assert!(m.pending.is_none(), "no will: nothing held");
        let will =
            Will { topic: "t".into(), payload: Bytes::new(), qos1: true, delay_secs: 0, expiry_secs: None };
        m.set_will(Some(Box::new(will)));
        assert!(m.take_parked().is_empty());
        assert!(m.pending.is_some(), "the will stays while parked SUBSCRIBEs go");
        assert_eq!(m.take_will().map(|w| w.topic), Some("t".into()));
        assert!(m.pending.is_none() && m.take_will().is_none());
        for _ in 0..MAX_PUBLISHING {
            assert!(m.begin_publish());
        }
        assert!(!m.begin_publish(), "at most MAX_PUBLISHING wait for the control plane");
        for _ in 0..MAX_PUBLISHING {
            m.end_publish();
        }
        assert!(m.pending.is_none(), "every answer in: nothing held");
    }

    /// What every idle MQTT connection holds beyond a Herald-protocol one (boxed in its slot).
    #[test]
    fn connection_state_stays_small() {
        assert!(size_of::<MqttConn>() <= 56, "MqttConn is {} bytes", size_of::<MqttConn>());
    }

    #[test]
    fn condition_and_inbox_reach_everyone_group_and_topic_need_a_subscription() {
        let mut streams = std::collections::HashMap::new();
        let mut scratch = AlignedVec::new();
        let order = |target, stream| PushOrder {
            push_id: 1,
            target,
            stream,
            seq: 1,
            flags: PushFlags::ACK_REQUIRED.0,
            ttl_secs: 60,
            payload: PushPayload { body: Some("hi".into()), ..PushPayload::default() }.to_bytes().to_vec(),
            origin: None,
        };
        let p = prepare(&order(Target::Group("g".into()), 5), &mut streams, &mut scratch).unwrap();
        assert_eq!(
            (p.topic.as_deref(), p.always, p.qos1, &p.payload[..]),
            (Some("groups/g"), false, true, &b"hi"[..])
        );
        let p = prepare(&order(Target::User("u".into()), 6), &mut streams, &mut scratch).unwrap();
        assert!(p.topic.is_none() && p.always);
        let dev = || Target::Device { user: "u".into(), device: "d".into() };
        let p = prepare(&order(dev(), 5), &mut streams, &mut scratch).unwrap();
        assert_eq!((p.topic.as_deref(), p.backlog), (Some("groups/g"), true));
        let p = prepare(&order(dev(), 6), &mut streams, &mut scratch).unwrap();
        assert!(p.topic.is_none() && p.always && p.backlog);
        let p = prepare(&order(dev(), 9), &mut streams, &mut scratch).unwrap();
        assert_eq!(p.topic.as_deref(), Some("herald/streams/9"));
        let mut backlog = order(dev(), 10);
        backlog.origin = Some(Target::Topic("news/eu".into()));
        let p = prepare(&backlog, &mut streams, &mut scratch).unwrap();
        assert_eq!((p.topic.as_deref(), p.backlog, p.always), (Some("news/eu"), true, false));
        assert!(prepare(&order(Target::Topic("a/+".into()), 7), &mut streams, &mut scratch).is_none());
    }

    #[test]
    fn terminals_publish_to_groups_and_topics_never_to_inboxes() {
        assert_eq!(publish_target("groups/fleet"), Some(Target::Group("fleet".into())));
        assert_eq!(publish_target("news/eu"), Some(Target::Topic("news/eu".into())));
        assert_eq!(publish_target("groupsx"), Some(Target::Topic("groupsx".into())));
        for t in ["users/alice", "herald/conditions", "groups/"] {
            assert_eq!(publish_target(t), None, "{t}");
        }
    }
}
