//! The control plane's working state and every rule of the delivery model (see the crate docs).
//!
//! [`Core`] is plain data behind one mutex: admin calls, link messages and the committer's
//! publish step each take the lock, change memory, queue the matching store [`Op`]s and queue
//! link messages to nodes (bounded for pushes, never blocking: see `queue.rs`). The caller hands the ops
//! to the committer before releasing the lock, which keeps store order equal to memory order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use herald_protocol::CloseCode;
use herald_protocol::condition::Condition;
use herald_protocol::credential::{self, Claims, SigningKey};
use herald_protocol::frame::PushFlags;
use herald_protocol::link::{
    GroupTopics, Hello, KeyEntry, Kick, LinkMessage, NodeStats, PresenceChange, PushOrder, PushReport,
    Receipt, RevocationEntry, StreamSeq, TableChange, Tables, Target, UserSubscriptions, Welcome,
};
use serde::Serialize;

mod limits;
mod publish;

pub(crate) use limits::Limits;
pub(crate) use publish::Published;

use crate::api::ApiError;
use crate::metrics::Metrics;
use crate::queue::LinkQueue;
use crate::store::{
    CursorRecord, DeviceRecord, KeyRecord, MessageRecord, Op, PushRecord, RevocationRecord, Snapshot,
    StreamRecord, TargetSpec, UserRecord,
};

/// Name of the one stream that carries condition pushes.
const COND_STREAM: &str = "c";

/// A connected gateway node.
#[derive(Debug)]
struct Node {
    /// Distinguishes this connection from an earlier one of the same node id.
    conn: u64,
    queue: Arc<LinkQueue>,
    public_addr: String,
    stats: NodeStats,
    /// Set while the node's queue was found full: live pushes are not queued to it (stored ones
    /// are re-sent from cursors by `node_drained`, fire-and-forget ones are dropped).
    behind: Option<Behind>,
}

/// What a node that fell behind must be resent once its queue drains.
#[derive(Debug, Default)]
struct Behind {
    /// The first stored push not queued to the node: every device online there is resent its
    /// backlog from this push on.
    skipped_from: Option<u64>,
    /// Devices that logged in while the node was behind (or whose login backlog did not fit):
    /// they get their whole backlog.
    logins: BTreeSet<(String, String)>,
}

/// One online device: where it is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Conn {
    device: String,
    node: String,
    session: u64,
}

/// An online device interested in a push, and the node holding it.
#[derive(Debug)]
struct OnlineDevice {
    user: String,
    device: String,
    node: String,
}

impl OnlineDevice {
    fn of(user: &str, c: &Conn) -> OnlineDevice {
        OnlineDevice { user: user.to_owned(), device: c.device.clone(), node: c.node.clone() }
    }
}

#[derive(Debug)]
struct Stream {
    rec: StreamRecord,
    /// Highest sequence handed to the gateways; every sequence up to it is final.
    published: u32,
    /// Stored messages still owed to someone (not expired, not collapsed).
    messages: BTreeMap<u32, MessageRecord>,
    /// Collapse key → sequence of the newest message carrying it.
    collapse: HashMap<String, u32>,
    /// Bytes charged for its stored and pending messages (see `limits.rs`).
    bytes: u64,
}

#[derive(Debug, Default)]
struct User {
    rec: UserRecord,
    effective: BTreeSet<String>,
    /// The group and topic streams (`g:NAME`, `t:NAME`) the user is counted in: its groups and
    /// effective topics, as last applied to the counts (`stream_devices`, `online_idx`).
    streams: BTreeSet<String>,
}

/// The device session indexed in `online_idx` (one per device: its latest login).
#[derive(Debug, Clone, PartialEq, Eq)]
struct OnlineState {
    node: String,
    session: u64,
    /// The last push published when it logged in: live group/topic pushes above it were
    /// counted for it (see [`Live`]).
    login_gen: u64,
}

/// Online devices of one (stream, node), by the position they are owed messages from
/// (`max(registered_pos, since)`): a push `p` is owed to those with a key below `p`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct NodeCount {
    total: u64,
    by_from: BTreeMap<u64, u64>,
}

impl NodeCount {
    fn add(&mut self, from: u64) {
        self.total += 1;
        *self.by_from.entry(from).or_default() += 1;
    }

    fn remove(&mut self, from: u64) {
        if let Some(n) = self.by_from.get_mut(&from) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.by_from.remove(&from);
            }
        }
    }

    /// Devices owed push `id`: everything but the (few) that subscribed or registered after
    /// it was accepted.
    fn owed(&self, id: u64) -> u64 {
        self.total - self.by_from.range(id..).map(|(_, n)| n).sum::<u64>()
    }
}

/// Copies of a stored group/topic push sent live and not yet acknowledged, as a count: set at
/// dispatch from `online_idx` (O(nodes)), decremented when one of those devices acks it, goes
/// offline or leaves the stream. A device counts for push `p` iff it is still online in the
/// session it had at dispatch (`login_gen < p`), owed `p`, and its node is not in `skipped`.
#[derive(Debug, Default)]
struct Live {
    count: u64,
    /// Nodes that were behind at dispatch (no copy queued; the resync sends it per device).
    skipped: Vec<String>,
}

/// A push accepted but not yet durable: what publishing it needs.
#[derive(Debug)]
struct Pending {
    message: MessageRecord,
}

/// A validated push request.
#[derive(Debug, Clone)]
pub(crate) struct NewPush {
    pub target: TargetSpec,
    pub title: Option<String>,
    pub body: Option<String>,
    pub data: Vec<(String, String)>,
    pub ttl_secs: u32,
    pub high_priority: bool,
    pub collapse_key: Option<String>,
    pub idempotency_key: Option<String>,
}

/// What accepting a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// A new push, durable once its job commits.
    New { push_id: u64, targeted: u64 },
    /// The idempotency key names an earlier push; nothing else was done.
    Existing { push_id: u64 },
}

/// A push's delivery status, as `GET /v1/pushes/{id}` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PushStatus {
    pub push_id: u64,
    pub state: &'static str,
    pub targeted: u64,
    pub sent: u64,
    pub delivered: u64,
    pub awaiting_ack: u64,
    pub pending_offline: u64,
    pub expired: u64,
    pub dropped: u64,
    pub collapsed: u64,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// A user as `GET /v1/users/{user}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub user: String,
    pub groups: Vec<String>,
    pub topics: Vec<String>,
    pub effective_topics: Vec<String>,
    pub devices: Vec<String>,
    pub presence: Vec<PresenceView>,
}

/// One online device of a user.
#[derive(Debug, Clone, Serialize)]
pub struct PresenceView {
    pub device: String,
    pub node: String,
    pub node_addr: String,
    pub session_id: u64,
}

/// What `POST /v1/keys/{id}/withdraw` did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KeyWithdrawal {
    pub key_id: u32,
    /// Unix seconds; the first withdrawal's, when the key was already withdrawn.
    pub withdrawn_at: u64,
    /// The key was the signing key: this new one replaced it first.
    pub rotated_to: Option<u32>,
    pub current_key_id: Option<u32>,
}

/// A retired signing key that still verifies until `valid_until`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RetiringKey {
    pub key_id: u32,
    pub valid_until: u64,
}

/// The working state.
#[derive(Debug)]
pub(crate) struct Core {
    users: BTreeMap<String, User>,
    /// Group → topics, explicit or implicit (a group nobody configured follows its own name).
    groups: BTreeMap<String, Vec<String>>,
    group_members: HashMap<String, BTreeSet<String>>,
    topic_subs: HashMap<String, BTreeSet<String>>,
    keys: BTreeMap<u32, KeyRecord>,
    revocations: BTreeMap<String, RevocationRecord>,
    stream_ids: HashMap<String, u32>,
    streams: HashMap<u32, Stream>,
    pushes: HashMap<u64, PushRecord>,
    conditions: HashMap<u64, Arc<Condition>>,
    pending: HashMap<u64, Pending>,
    idem: HashMap<String, u64>,
    last_push_id: u64,
    cursors: HashMap<(String, String), HashMap<u32, CursorRecord>>,
    expiries: BTreeMap<u64, Vec<(u32, u32)>>,
    /// When (ms) each push record (and its idempotency key) is pruned: its expiry plus
    /// `retention_ms`.
    prunes: BTreeMap<u64, Vec<u64>>,
    retention_ms: u64,
    /// Online devices holding an unacknowledged copy of a push (queued live or as backlog),
    /// both ways round; dropped when the device goes offline, acks, or the message leaves.
    flight_by_device: HashMap<(String, String), BTreeSet<u64>>,
    flight_by_push: HashMap<u64, BTreeSet<(String, String)>>,
    /// Live group/topic copies in flight, per push (see [`Live`]).
    live: HashMap<u64, Live>,
    /// Known devices per group/topic stream: `targeted` of a group/topic push (TTL > 0).
    stream_devices: HashMap<String, u64>,
    /// Online devices per (group/topic stream, node): routing, TTL-0 `targeted` and the
    /// live in-flight count of a group/topic push.
    online_idx: HashMap<String, BTreeMap<String, NodeCount>>,
    /// Each online device's indexed session.
    online: HashMap<(String, String), OnlineState>,
    /// The newest push published (publishing follows push id order).
    last_published: u64,
    nodes: HashMap<String, Node>,
    presence: BTreeMap<String, Vec<Conn>>,
    next_conn: u64,
    tables_version: u64,
    epoch: u64,
    ops: Vec<Op>,
    metrics: Arc<Metrics>,
    /// Terminals' wills waiting for their delay (see `publish`).
    wills: publish::Wills,
    /// Caps on stored bytes and TTL-0 record retention (see `limits.rs`).
    limits: Limits,
    /// Bytes charged over every stream.
    stored_bytes: u64,
    /// Push records changed since the last `take_ops`: written once per take rather than once
    /// per change (a burst of receipts changes the same record thousands of times).
    dirty_pushes: BTreeSet<u64>,
    /// Cursors changed since the last `take_ops`, likewise (one per receipt otherwise).
    dirty_cursors: BTreeSet<(String, String, u32)>,
    /// Bytes charged for the records in `pushes` (see `limits.rs`).
    record_bytes: u64,
}

/// What became of a live push offered to one node.
enum Offer {
    Queued,
    /// The node is behind; a stored push reaches it with the node's resync.
    Skipped,
    /// The node is behind; a TTL-0 push never reaches it.
    Dropped,
    /// The node is not connected.
    NoNode,
}

fn stream_name_user(u: &str) -> String {
    format!("u:{u}")
}

fn stream_name_group(g: &str) -> String {
    format!("g:{g}")
}

fn stream_name_topic(t: &str) -> String {
    format!("t:{t}")
}

/// The target a stream's messages were pushed to, from the stream's name.
fn stream_origin(name: &str) -> Option<Target> {
    if name == COND_STREAM {
        return Some(Target::Condition(String::new()));
    }
    let (kind, rest) = name.split_once(':')?;
    let rest = rest.to_owned();
    match kind {
        "u" => Some(Target::User(rest)),
        "g" => Some(Target::Group(rest)),
        "t" => Some(Target::Topic(rest)),
        _ => None,
    }
}

fn with_flag(flags: u8, f: PushFlags) -> u8 {
    PushFlags(flags).with(f).0
}

impl Core {
    /// Rebuilds the working state from a store snapshot. Creates the first signing key (with
    /// `secret`) if there is none; its op is queued.
    pub(crate) fn load(
        snap: Snapshot,
        metrics: Arc<Metrics>,
        epoch: u64,
        now_secs: u64,
        first_secret: [u8; 32],
        retention_ms: u64,
    ) -> Core {
        // Records stored before `covers_until` existed: every credential ever issued expires by
        // the keys' latest expiry, so that bounds what they revoke.
        let horizon = snap.keys.iter().map(|k| k.max_expires_at).max().unwrap_or(0);
        let mut snap = snap;
        for (_, r) in &mut snap.revocations {
            if r.covers_until == 0 {
                r.covers_until = horizon;
            }
        }
        let mut core = Core {
            users: BTreeMap::new(),
            groups: snap.groups.into_iter().collect(),
            group_members: HashMap::new(),
            topic_subs: HashMap::new(),
            keys: snap.keys.into_iter().map(|k| (k.id, k)).collect(),
            revocations: snap.revocations.into_iter().collect(),
            stream_ids: HashMap::new(),
            streams: HashMap::new(),
            pushes: HashMap::new(),
            conditions: HashMap::new(),
            pending: HashMap::new(),
            idem: HashMap::new(),
            last_push_id: snap.last_push_id,
            cursors: HashMap::new(),
            expiries: BTreeMap::new(),
            prunes: BTreeMap::new(),
            retention_ms,
            flight_by_device: HashMap::new(),
            flight_by_push: HashMap::new(),
            live: HashMap::new(),
            stream_devices: HashMap::new(),
            online_idx: HashMap::new(),
            online: HashMap::new(),
            last_published: 0,
            nodes: HashMap::new(),
            presence: BTreeMap::new(),
            next_conn: 1,
            tables_version: 1,
            epoch,
            ops: Vec::new(),
            metrics,
            wills: publish::Wills::default(),
            limits: Limits::default(),
            stored_bytes: 0,
            dirty_pushes: BTreeSet::new(),
            dirty_cursors: BTreeSet::new(),
            record_bytes: 0,
        };
        for rec in snap.streams {
            core.stream_ids.insert(rec.name.clone(), rec.id);
            core.streams.insert(
                rec.id,
                Stream {
                    published: rec.head,
                    rec,
                    messages: BTreeMap::new(),
                    collapse: HashMap::new(),
                    bytes: 0,
                },
            );
        }
        for p in snap.pushes {
            core.last_push_id = core.last_push_id.max(p.id);
            if let Some(k) = &p.idempotency_key {
                core.idem.insert(k.clone(), p.id);
            }
            if let TargetSpec::Condition(text) = &p.target
                && p.ttl_secs > 0
                && let Ok(c) = Condition::parse(text)
            {
                core.conditions.insert(p.id, Arc::new(c));
            }
            core.prunes.entry(p.expires_ms.saturating_add(retention_ms)).or_default().push(p.id);
            core.record_bytes += limits::record_cost(&p);
            core.pushes.insert(p.id, p);
        }
        for (stream, seq, m) in snap.messages {
            if let Some(st) = core.streams.get_mut(&stream) {
                if let Some(k) = &m.collapse_key {
                    st.collapse.insert(k.clone(), seq);
                }
                core.expiries.entry(m.expires_ms).or_default().push((stream, seq));
                let cost = limits::message_cost(&m);
                st.messages.insert(seq, m);
                core.charge(stream, cost);
            }
        }
        for (user, device, stream, c) in snap.cursors {
            core.cursors.entry((user, device)).or_default().insert(stream, c);
        }
        for (name, rec) in snap.users {
            for g in &rec.groups {
                core.group_members.entry(g.clone()).or_default().insert(name.clone());
            }
            let mut user = User { rec, effective: BTreeSet::new(), streams: BTreeSet::new() };
            user.effective = core.effective_topics(&user.rec);
            for t in &user.effective {
                core.topic_subs.entry(t.clone()).or_default().insert(name.clone());
            }
            user.streams = user_streams(&user.rec, &user.effective);
            let n = user.rec.devices.len() as u64;
            for s in &user.streams {
                *core.stream_devices.entry(s.clone()).or_default() += n;
            }
            core.users.insert(name, user);
        }
        core.last_published = core.last_push_id;
        if !core.keys.values().any(|k| k.current) {
            let id = core.keys.keys().next_back().map_or(1, |id| id + 1);
            let rec = KeyRecord {
                id,
                secret: first_secret,
                created_secs: now_secs,
                max_expires_at: 0,
                current: true,
                withdrawn_secs: None,
            };
            core.ops.push(Op::Key(rec.clone()));
            core.keys.insert(id, rec);
        }
        core.update_gauges();
        core
    }

    /// The store changes made since the last call.
    pub(crate) fn take_ops(&mut self) -> Vec<Op> {
        for id in std::mem::take(&mut self.dirty_pushes) {
            if let Some(p) = self.pushes.get(&id) {
                self.ops.push(Op::Push(p.clone()));
            }
        }
        for (user, device, stream) in std::mem::take(&mut self.dirty_cursors) {
            let cursor =
                self.cursors.get(&(user.clone(), device.clone())).and_then(|m| m.get(&stream)).cloned();
            if let Some(cursor) = cursor {
                self.ops.push(Op::Cursor { user, device, stream, cursor });
            }
        }
        std::mem::take(&mut self.ops)
    }

    /// Replaces the working state with `snap`, reloaded after a failed commit (see
    /// `health.rs`): every change memory held that the store does not — the failed batch and
    /// whatever was built on it — is dropped, as a restart would drop it. What is not durable
    /// goes too: every node's link is closed (each gateway reconnects, gets the tables and
    /// resends its sessions, as after a control-plane restart) and pending wills are lost.
    /// Push ids stay above every id handed out, so a failed push's id is never reused; the
    /// returned ops (see [`Core::take_ops`]) store that.
    pub(crate) fn reload(&mut self, snap: Snapshot, now_ms: u64, first_secret: [u8; 32]) {
        for node in self.nodes.values() {
            node.queue.close();
        }
        let mut fresh =
            Core::load(snap, self.metrics.clone(), now_ms, now_ms / 1000, first_secret, self.retention_ms);
        fresh.next_conn = self.next_conn;
        fresh.last_push_id = fresh.last_push_id.max(self.last_push_id);
        fresh.last_published = fresh.last_push_id;
        fresh.tables_version = self.tables_version + 1;
        fresh.metrics.pending_wills.set(0);
        // The caps are configuration, not stored state: the rebuilt core keeps them (and
        // recounts the bytes they charge from what it loaded).
        fresh.set_limits(self.limits);
        *self = fresh;
        // Stored, so that failed pushes' ids are not reused after a restart either.
        self.ops.push(Op::LastPushId(self.last_push_id));
    }

    /// Refreshes the gauges; walks every stream and online user, so only the sweeper calls it.
    fn update_gauges(&self) {
        self.metrics.nodes.set(self.nodes.len() as u64);
        self.metrics.online_devices.set(self.presence.values().map(|v| v.len() as u64).sum());
        self.metrics.stored_messages.set(self.streams.values().map(|s| s.messages.len() as u64).sum());
        self.metrics.stored_bytes.set(self.stored_bytes);
    }

    fn effective_topics(&self, rec: &UserRecord) -> BTreeSet<String> {
        let mut eff: BTreeSet<String> = rec.topics.iter().cloned().collect();
        for g in &rec.groups {
            match self.groups.get(g) {
                Some(ts) => eff.extend(ts.iter().cloned()),
                None => {
                    eff.insert(g.clone());
                }
            }
        }
        eff
    }

    fn save_user(&mut self, name: &str) {
        if let Some(u) = self.users.get(name) {
            self.ops.push(Op::User(name.to_owned(), u.rec.clone()));
        }
    }

    // ---- tables -------------------------------------------------------------------------

    fn current_key(&self) -> Option<&KeyRecord> {
        self.keys.values().find(|k| k.current)
    }

    fn tables(&self) -> Tables {
        Tables {
            version: self.tables_version,
            keys: (self.keys.values())
                .filter(|k| k.withdrawn_secs.is_none())
                .map(|k| KeyEntry { key_id: k.id, secret: k.secret })
                .collect(),
            revocations: self.revocations.iter().map(|(u, r)| revocation_entry(u, r)).collect(),
            groups: self
                .groups
                .iter()
                .map(|(g, ts)| GroupTopics { group: g.clone(), topics: ts.clone() })
                .collect(),
        }
    }

    fn broadcast(&mut self, changes: Vec<TableChange>) {
        if changes.is_empty() {
            return;
        }
        self.tables_version += 1;
        for node in self.nodes.values() {
            node.queue.control(LinkMessage::TablesDelta(changes.clone()));
        }
    }

    fn send_to(&self, node: &str, msg: LinkMessage) {
        if let Some(n) = self.nodes.get(node) {
            n.queue.control(msg);
        }
    }

    fn user_nodes(&self, user: &str) -> BTreeSet<String> {
        self.presence.get(user).map(|cs| cs.iter().map(|c| c.node.clone()).collect()).unwrap_or_default()
    }

    fn subscriptions_of(&self, user: &str) -> UserSubscriptions {
        let (groups, topics) =
            self.users.get(user).map(|u| (u.rec.groups.clone(), u.rec.topics.clone())).unwrap_or_default();
        UserSubscriptions { user: user.to_owned(), groups, topics }
    }

    // ---- credentials and keys -----------------------------------------------------------

    fn register_device(&mut self, user: &str, device: &str) {
        let pos = self.last_push_id;
        let u = self.users.entry(user.to_owned()).or_default();
        if u.rec.devices.contains_key(device) {
            return;
        }
        u.rec.devices.insert(device.to_owned(), DeviceRecord { registered_pos: pos, offline_pos: pos });
        for s in &u.streams {
            *self.stream_devices.entry(s.clone()).or_default() += 1;
        }
        self.save_user(user);
    }

    /// Signs a credential for `user`/`device` valid `ttl_secs`; registers the device.
    pub(crate) fn issue_credential(
        &mut self,
        user: &str,
        device: &str,
        ttl_secs: u64,
        now_secs: u64,
    ) -> Result<(String, u64), ApiError> {
        let revoked_until = self
            .revocations
            .get(user)
            .map_or(0, |r| r.all_before.max(r.devices.get(device).copied().unwrap_or(0)));
        let issued_at = now_secs.max(revoked_until);
        let expires_at = issued_at.saturating_add(ttl_secs);
        let key = self.current_key().cloned().ok_or_else(|| ApiError::internal("no current signing key"))?;
        let claims = Claims {
            key_id: key.id,
            user: user.to_owned(),
            device: device.to_owned(),
            issued_at,
            expires_at,
        };
        let token = credential::issue(&SigningKey::new(key.id, key.secret), &claims)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if expires_at > key.max_expires_at
            && let Some(k) = self.keys.get_mut(&key.id)
        {
            k.max_expires_at = expires_at;
            let rec = k.clone();
            self.ops.push(Op::Key(rec));
        }
        self.register_device(user, device);
        Ok((token, expires_at))
    }

    /// Revokes every credential of `user` (or of one device) issued up to now, and closes the
    /// matching connections.
    pub(crate) fn revoke(&mut self, user: &str, device: Option<&str>, now_secs: u64) -> u64 {
        let before = now_secs + 1;
        let r = self.revocations.entry(user.to_owned()).or_default();
        match device {
            None => r.all_before = r.all_before.max(before),
            Some(d) => {
                let slot = r.devices.entry(d.to_owned()).or_insert(0);
                *slot = (*slot).max(before);
            }
        }
        // Credentials issued so far (the ones revoked) expire by the keys' latest expiry.
        let horizon = self.keys.values().map(|k| k.max_expires_at).max().unwrap_or(0);
        r.covers_until = r.covers_until.max(horizon).max(before);
        let rec = r.clone();
        self.ops.push(Op::Revocation(user.to_owned(), rec.clone()));
        self.broadcast(vec![TableChange::Revoked(revocation_entry(user, &rec))]);
        let kick = Kick {
            user: user.to_owned(),
            device: device.map(str::to_owned),
            code: CloseCode::AUTH_REVOKED.0,
        };
        // Every node, not only those we know the user on: a login's Online report may still be
        // in flight, and revocations are rare.
        for node in self.nodes.values() {
            node.queue.control(LinkMessage::Kick(kick.clone()));
        }
        before
    }

    /// Makes a new signing key current; older keys keep verifying until their tokens expire.
    pub(crate) fn rotate_key(
        &mut self,
        secret: [u8; 32],
        now_secs: u64,
    ) -> (u32, Option<u32>, Vec<RetiringKey>) {
        let previous = self.current_key().map(|k| k.id);
        let id = self.keys.keys().next_back().map_or(1, |id| id + 1);
        for k in self.keys.values_mut().filter(|k| k.current) {
            k.current = false;
            self.ops.push(Op::Key(k.clone()));
        }
        let rec = KeyRecord {
            id,
            secret,
            created_secs: now_secs,
            max_expires_at: 0,
            current: true,
            withdrawn_secs: None,
        };
        self.ops.push(Op::Key(rec.clone()));
        self.keys.insert(id, rec);
        self.broadcast(vec![TableChange::KeyAdded(KeyEntry { key_id: id, secret })]);
        let retiring = self
            .keys
            .values()
            .filter(|k| !k.current && k.withdrawn_secs.is_none())
            .map(|k| RetiringKey { key_id: k.id, valid_until: k.max_expires_at })
            .collect();
        (id, previous, retiring)
    }

    /// Withdraws key `id` at once (a leaked key): gateways drop it, which closes the live
    /// sessions it signed (`AUTH_REVOKED`) and refuses new logins with them (`AUTH_FORGED`, an
    /// unknown key). The signing key is first replaced by a new one (`fresh_secret`) so that
    /// credentials can still be issued. Idempotent: a withdrawn key is answered with its first
    /// withdrawal. Unknown (never existed, or retired after its last token expired) → 404.
    pub(crate) fn withdraw_key(
        &mut self,
        id: u32,
        fresh_secret: [u8; 32],
        now_secs: u64,
    ) -> Result<KeyWithdrawal, ApiError> {
        let Some(k) = self.keys.get(&id) else {
            return Err(ApiError::not_found(format!("unknown key {id}")));
        };
        if let Some(at) = k.withdrawn_secs {
            let current_key_id = self.current_key().map(|k| k.id);
            return Ok(KeyWithdrawal { key_id: id, withdrawn_at: at, rotated_to: None, current_key_id });
        }
        let rotated_to = k.current.then(|| self.rotate_key(fresh_secret, now_secs).0);
        if let Some(k) = self.keys.get_mut(&id) {
            k.current = false;
            k.withdrawn_secs = Some(now_secs);
            // Nothing verifies with it any more; do not keep a leaked secret on disk.
            k.secret = [0; 32];
            self.ops.push(Op::Key(k.clone()));
        }
        self.broadcast(vec![TableChange::KeyRemoved(id)]);
        let current_key_id = self.current_key().map(|k| k.id);
        Ok(KeyWithdrawal { key_id: id, withdrawn_at: now_secs, rotated_to, current_key_id })
    }

    // ---- users, groups, topics ----------------------------------------------------------

    /// Replaces a user's groups (`Some`) and/or direct topics (`Some`).
    pub(crate) fn set_user(
        &mut self,
        user: &str,
        groups: Option<Vec<String>>,
        topics: Option<Vec<String>>,
    ) -> UserView {
        let mut new_groups = Vec::new();
        if let Some(gs) = &groups {
            for g in gs {
                if !self.groups.contains_key(g) {
                    self.groups.insert(g.clone(), vec![g.clone()]);
                    self.ops.push(Op::Group(g.clone(), vec![g.clone()]));
                    new_groups
                        .push(TableChange::Group(GroupTopics { group: g.clone(), topics: vec![g.clone()] }));
                }
            }
        }
        self.broadcast(new_groups);
        let u = self.users.entry(user.to_owned()).or_default();
        let old_groups = std::mem::take(&mut u.rec.groups);
        let old_topics = std::mem::take(&mut u.rec.topics);
        u.rec.groups = dedup(groups.unwrap_or(old_groups.clone()));
        u.rec.topics = dedup(topics.unwrap_or(old_topics));
        for g in &old_groups {
            if let Some(m) = self.group_members.get_mut(g) {
                m.remove(user);
            }
        }
        let groups_now = u.rec.groups.clone();
        for g in &groups_now {
            self.group_members.entry(g.clone()).or_default().insert(user.to_owned());
        }
        self.refresh_user(user);
        self.save_user(user);
        let subs = self.subscriptions_of(user);
        for node in self.user_nodes(user) {
            self.send_to(&node, LinkMessage::Subscriptions(vec![subs.clone()]));
        }
        self.user_view(user).unwrap_or_else(|| UserView {
            user: user.to_owned(),
            groups: Vec::new(),
            topics: Vec::new(),
            effective_topics: Vec::new(),
            devices: Vec::new(),
            presence: Vec::new(),
        })
    }

    /// Recomputes a user's effective topics and subscription start positions after a change,
    /// and moves the user's devices in the per-stream counts.
    fn refresh_user(&mut self, name: &str) {
        let Some(u) = self.users.get(name) else {
            return;
        };
        let eff = self.effective_topics(&u.rec);
        let wanted = user_streams(&u.rec, &eff);
        let removed: Vec<String> = u.streams.difference(&wanted).cloned().collect();
        let mut added: Vec<String> = wanted.difference(&u.streams).cloned().collect();
        // Kept streams whose start position is missing (a record from before `since` was
        // kept for it) get one now: re-index them around the change.
        let unstarted: Vec<String> =
            u.streams.intersection(&wanted).filter(|s| !u.rec.since.contains_key(*s)).cloned().collect();
        let n_dev = u.rec.devices.len() as u64;
        let online = self.online_of_user(name);
        for s in &unstarted {
            for d in &online {
                self.index_entry(name, d, s, false);
            }
        }
        // Leaving streams: un-count live copies and index entries while `since` still holds.
        for s in &removed {
            let sid = self.stream_ids.get(s).copied();
            for d in &online {
                self.unfly_live_stream(name, d, s);
                self.index_entry(name, d, s, false);
                // Its backlog copies of the stream will not be acknowledged either.
                let key = (name.to_owned(), d.clone());
                let held: Vec<u64> = self
                    .flight_by_device
                    .get(&key)
                    .map(|ids| {
                        ids.iter()
                            .copied()
                            .filter(|id| {
                                self.pushes
                                    .get(id)
                                    .is_some_and(|p| p.messages.iter().any(|m| Some(m.0) == sid))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                for id in held {
                    self.land(name, d, id);
                }
            }
            if let Some(c) = self.stream_devices.get_mut(s) {
                *c = c.saturating_sub(n_dev);
            }
        }
        let pos = self.last_push_id;
        let old = self.users.get_mut(name).map(|u| std::mem::take(&mut u.effective)).unwrap_or_default();
        for t in old.difference(&eff) {
            if let Some(s) = self.topic_subs.get_mut(t) {
                s.remove(name);
            }
        }
        for t in eff.difference(&old) {
            self.topic_subs.entry(t.clone()).or_default().insert(name.to_owned());
        }
        let Some(u) = self.users.get_mut(name) else {
            return;
        };
        u.rec.since.retain(|k, _| wanted.contains(k));
        for k in &wanted {
            u.rec.since.entry(k.clone()).or_insert(pos);
        }
        u.effective = eff;
        u.streams = wanted;
        for s in &added {
            *self.stream_devices.entry(s.clone()).or_default() += n_dev;
        }
        added.extend(unstarted);
        for s in &added {
            for d in &online {
                self.index_entry(name, d, s, true);
            }
        }
    }

    /// Devices of `user` indexed as online.
    fn online_of_user(&self, user: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .presence
            .get(user)
            .map(|cs| cs.iter().map(|c| c.device.clone()).collect())
            .unwrap_or_default();
        out.sort();
        out.dedup();
        out.retain(|d| self.online.contains_key(&(user.to_owned(), d.clone())));
        out
    }

    /// Where `device` is owed messages of stream `s` from: `max(registered_pos, since)`.
    fn owed_from(&self, user: &str, device: &str, s: &str) -> u64 {
        let Some(u) = self.users.get(user) else {
            return u64::MAX;
        };
        let reg = u.rec.devices.get(device).map_or(u64::MAX, |d| d.registered_pos);
        reg.max(u.rec.since.get(s).copied().unwrap_or(u64::MAX))
    }

    /// Adds (or removes) the online `device`'s entry for stream `s` in `online_idx`.
    fn index_entry(&mut self, user: &str, device: &str, s: &str, add: bool) {
        let Some(node) = self.online.get(&(user.to_owned(), device.to_owned())).map(|o| o.node.clone())
        else {
            return;
        };
        let from = self.owed_from(user, device, s);
        if add {
            self.online_idx.entry(s.to_owned()).or_default().entry(node).or_default().add(from);
        } else if let Some(by_node) = self.online_idx.get_mut(s) {
            if let Some(nc) = by_node.get_mut(&node) {
                nc.remove(from);
                if nc.total == 0 {
                    by_node.remove(&node);
                }
            }
            if by_node.is_empty() {
                self.online_idx.remove(s);
            }
        }
    }

    /// Whether push `m` on group/topic stream `s` was counted live for `device` (see [`Live`]).
    fn live_counted(&self, user: &str, device: &str, s: &str, m: &MessageRecord) -> bool {
        let Some(on) = self.online.get(&(user.to_owned(), device.to_owned())) else {
            return false;
        };
        m.push_id > on.login_gen
            && self.live.get(&m.push_id).is_some_and(|l| !l.skipped.contains(&on.node))
            && self.owed(user, device, s, m)
    }

    /// Un-counts the live copies of stream `s` that `device` holds and has not acknowledged.
    /// Walks the stored messages above its cursor: the device's own backlog, not the members.
    fn unfly_live_stream(&mut self, user: &str, device: &str, s: &str) {
        if !(s.starts_with("g:") || s.starts_with("t:")) {
            return;
        }
        let Some(st) = self.stream_ids.get(s).and_then(|id| self.streams.get(id).map(|st| (id, st))) else {
            return;
        };
        let (sid, st) = st;
        let cur = self
            .cursors
            .get(&(user.to_owned(), device.to_owned()))
            .and_then(|m| m.get(sid))
            .cloned()
            .unwrap_or_default();
        let ids: Vec<u64> = st
            .messages
            .range(cur.cursor.saturating_add(1)..)
            .filter(|(seq, m)| cur.above.binary_search(seq).is_err() && self.live_counted(user, device, s, m))
            .map(|(_, m)| m.push_id)
            .collect();
        for id in ids {
            if let Some(l) = self.live.get_mut(&id) {
                l.count = l.count.saturating_sub(1);
            }
        }
    }

    /// Indexes `device` as online on `node` in session `session`, counted for live pushes
    /// published from now on.
    fn index_online(&mut self, user: &str, device: &str, node: &str, session: u64) {
        let key = (user.to_owned(), device.to_owned());
        self.online
            .insert(key, OnlineState { node: node.to_owned(), session, login_gen: self.last_published });
        let streams: Vec<String> =
            self.users.get(user).map(|u| u.streams.iter().cloned().collect()).unwrap_or_default();
        for s in streams {
            self.index_entry(user, device, &s, true);
        }
    }

    /// Removes `device`'s indexed session (if it is on `node`, and in `session` if given):
    /// its live copies are un-counted. If the device is still present elsewhere (a second
    /// session), that one is indexed instead.
    fn index_offline(&mut self, user: &str, device: &str, node: &str, session: Option<u64>, fallback: bool) {
        let key = (user.to_owned(), device.to_owned());
        let Some(on) = self.online.get(&key) else {
            return;
        };
        if on.node != node || session.is_some_and(|s| s != on.session) {
            return;
        }
        let streams: Vec<String> =
            self.users.get(user).map(|u| u.streams.iter().cloned().collect()).unwrap_or_default();
        for s in &streams {
            self.unfly_live_stream(user, device, s);
            self.index_entry(user, device, s, false);
        }
        self.online.remove(&key);
        if fallback
            && let Some(c) =
                self.presence.get(user).and_then(|cs| cs.iter().rev().find(|c| c.device == device))
        {
            let (n, sess) = (c.node.clone(), c.session);
            self.index_online(user, device, &n, sess);
        }
    }

    /// Sets the topics a group's members follow.
    pub(crate) fn set_group(&mut self, group: &str, topics: Vec<String>) -> Vec<String> {
        let topics = dedup(topics);
        self.groups.insert(group.to_owned(), topics.clone());
        self.ops.push(Op::Group(group.to_owned(), topics.clone()));
        self.broadcast(vec![TableChange::Group(GroupTopics {
            group: group.to_owned(),
            topics: topics.clone(),
        })]);
        let members: Vec<String> =
            self.group_members.get(group).map(|m| m.iter().cloned().collect()).unwrap_or_default();
        for m in members {
            self.refresh_user(&m);
            self.save_user(&m);
        }
        topics
    }

    pub(crate) fn group_topics(&self, group: &str) -> Option<Vec<String>> {
        self.groups.get(group).cloned()
    }

    pub(crate) fn user_view(&self, user: &str) -> Option<UserView> {
        let u = self.users.get(user);
        let online = self.presence.get(user);
        if u.is_none() && online.is_none() {
            return None;
        }
        let presence = online
            .map(|cs| {
                cs.iter()
                    .map(|c| PresenceView {
                        device: c.device.clone(),
                        node: c.node.clone(),
                        node_addr: self.nodes.get(&c.node).map(|n| n.public_addr.clone()).unwrap_or_default(),
                        session_id: c.session,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(UserView {
            user: user.to_owned(),
            groups: u.map(|u| u.rec.groups.clone()).unwrap_or_default(),
            topics: u.map(|u| u.rec.topics.clone()).unwrap_or_default(),
            effective_topics: u.map(|u| u.effective.iter().cloned().collect()).unwrap_or_default(),
            devices: u.map(|u| u.rec.devices.keys().cloned().collect()).unwrap_or_default(),
            presence,
        })
    }

    /// One page of a topic's subscribers (users, in name order) after `cursor`.
    pub(crate) fn subscribers(
        &self,
        topic: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> (Vec<String>, Option<String>) {
        let Some(set) = self.topic_subs.get(topic) else {
            return (Vec::new(), None);
        };
        let iter: Box<dyn Iterator<Item = &String>> = match cursor {
            Some(c) => {
                Box::new(set.range::<str, _>((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded)))
            }
            None => Box::new(set.iter()),
        };
        let mut page: Vec<String> = iter.take(limit + 1).cloned().collect();
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().cloned()
        } else {
            None
        };
        (page, next)
    }

    // ---- pushes -------------------------------------------------------------------------

    fn stream_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.stream_ids.get(name) {
            return id;
        }
        let id = self.streams.keys().max().map_or(1, |m| m + 1);
        let rec = StreamRecord { id, name: name.to_owned(), head: 0 };
        self.stream_ids.insert(name.to_owned(), id);
        self.streams.insert(
            id,
            Stream { rec, published: 0, messages: BTreeMap::new(), collapse: HashMap::new(), bytes: 0 },
        );
        id
    }

    /// Users a push with this target is for, as of now.
    fn target_users(&self, target: &TargetSpec, cond: Option<&Condition>) -> Vec<String> {
        match target {
            TargetSpec::User(u) => vec![u.clone()],
            TargetSpec::Users(us) => us.clone(),
            TargetSpec::Group(g) => {
                self.group_members.get(g).map(|m| m.iter().cloned().collect()).unwrap_or_default()
            }
            TargetSpec::Topic(t) => {
                self.topic_subs.get(t).map(|m| m.iter().cloned().collect()).unwrap_or_default()
            }
            TargetSpec::Condition(_) => {
                let Some(cond) = cond else {
                    return Vec::new();
                };
                let empty = BTreeSet::new();
                let subs = |t: &str| self.topic_subs.get(t).unwrap_or(&empty);
                let candidates: Box<dyn Iterator<Item = &String>> =
                    match cond.cover(&|i| subs(&cond.topics()[i]).len()) {
                        Some(cover) => {
                            let mut set: BTreeSet<&String> = BTreeSet::new();
                            for i in cover {
                                set.extend(subs(&cond.topics()[i]).iter());
                            }
                            Box::new(set.into_iter())
                        }
                        None => Box::new(self.users.keys()),
                    };
                candidates
                    .filter(|u| {
                        self.users.get(*u).is_some_and(|u| cond.eval_names(|t| u.effective.contains(t)))
                    })
                    .cloned()
                    .collect()
            }
        }
    }

    /// Accepts a push: numbers it, stores it (queued ops), and remembers what to publish once
    /// durable. The caller submits the ops with `publish: [push_id]`.
    pub(crate) fn accept_push(&mut self, req: NewPush, now_ms: u64) -> Result<Accepted, ApiError> {
        if let Some(k) = &req.idempotency_key
            && let Some(&id) = self.idem.get(k)
        {
            return Ok(Accepted::Existing { push_id: id });
        }
        let cond = match &req.target {
            TargetSpec::Condition(text) => {
                Some(Arc::new(Condition::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))?))
            }
            _ => None,
        };
        let stream_names: Vec<String> = match &req.target {
            TargetSpec::User(u) => vec![stream_name_user(u)],
            TargetSpec::Users(us) => us.iter().map(|u| stream_name_user(u)).collect(),
            TargetSpec::Group(g) => vec![stream_name_group(g)],
            TargetSpec::Topic(t) => vec![stream_name_topic(t)],
            TargetSpec::Condition(_) => vec![COND_STREAM.to_owned()],
        };
        // Numbered once it fits (below): a refused push leaves no trace, not even an id.
        let push_id = self.last_push_id + 1;
        let targeted: u64 = match &req.target {
            // From the maintained counts: independent of the number of members.
            TargetSpec::Group(_) | TargetSpec::Topic(_) => {
                let s = match &req.target {
                    TargetSpec::Group(g) => stream_name_group(g),
                    TargetSpec::Topic(t) => stream_name_topic(t),
                    _ => unreachable!(),
                };
                if req.ttl_secs == 0 {
                    self.online_idx.get(&s).map_or(0, |by_node| by_node.values().map(|c| c.total).sum())
                } else {
                    self.stream_devices.get(&s).copied().unwrap_or(0)
                }
            }
            _ => {
                let users = self.target_users(&req.target, cond.as_deref());
                if req.ttl_secs == 0 {
                    users.iter().map(|u| self.presence.get(u).map_or(0, |c| c.len() as u64)).sum()
                } else {
                    users.iter().map(|u| self.users.get(u).map_or(0, |u| u.rec.devices.len() as u64)).sum()
                }
            }
        };
        let mut flags = PushFlags::default();
        if req.ttl_secs > 0 {
            flags = flags.with(PushFlags::ACK_REQUIRED);
        }
        if req.high_priority {
            flags = flags.with(PushFlags::HIGH_PRIORITY);
        }
        let payload = herald_protocol::payload::PushPayload {
            push_id,
            created_ms: now_ms,
            title: req.title,
            body: req.body,
            data: req
                .data
                .into_iter()
                .map(|(key, value)| herald_protocol::payload::DataEntry { key, value })
                .collect(),
            collapse_key: req.collapse_key.clone(),
        };
        let expires_ms = now_ms + u64::from(req.ttl_secs) * 1000;
        let message = MessageRecord {
            push_id,
            created_ms: now_ms,
            expires_ms,
            flags: flags.0,
            ttl_secs: req.ttl_secs,
            collapse_key: req.collapse_key.clone(),
            payload: payload.to_bytes().to_vec(),
        };
        if req.ttl_secs > 0 {
            self.check_room(&stream_names, limits::message_cost(&message))?;
        }
        // (An estimate from the request: the record is made below.)
        let record = limits::request_record_cost(
            &req.target,
            req.idempotency_key.as_deref(),
            req.collapse_key.as_deref(),
            stream_names.len(),
        );
        self.make_record_room(record, now_ms)?;
        self.last_push_id = push_id;
        let mut messages = Vec::with_capacity(stream_names.len());
        let mut collapsed_pushes = Vec::new();
        for name in &stream_names {
            let id = self.stream_id(name);
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            st.rec.head += 1;
            let seq = st.rec.head;
            self.ops.push(Op::Stream(st.rec.clone()));
            if req.ttl_secs > 0 {
                if let Some(key) = &req.collapse_key
                    && let Some(old) = st.collapse.insert(key.clone(), seq)
                {
                    if let Some(m) = st.messages.remove(&old) {
                        let freed = limits::message_cost(&m).min(st.bytes);
                        st.bytes -= freed;
                        self.stored_bytes = self.stored_bytes.saturating_sub(freed);
                        self.flight_by_push.remove(&m.push_id);
                        self.live.remove(&m.push_id);
                        collapsed_pushes.push(m.push_id);
                    } else if let Some((&pid, _)) = self
                        .pending
                        .iter()
                        .find(|(_, p)| p.message.collapse_key.as_deref() == Some(key))
                        .filter(|(pid, _)| {
                            self.pushes.get(pid).is_some_and(|p| p.messages.contains(&(id, old)))
                        })
                    {
                        collapsed_pushes.push(pid);
                    }
                    self.ops.push(Op::Message(id, old, None));
                }
                self.ops.push(Op::Message(id, seq, Some(message.clone())));
                self.charge(id, limits::message_cost(&message));
            }
            messages.push((id, seq));
        }
        for pid in collapsed_pushes {
            if let Some(p) = self.pushes.get_mut(&pid) {
                p.collapsed = true;
                self.ops.push(Op::Push(p.clone()));
            }
        }
        let rec = PushRecord {
            id: push_id,
            created_ms: now_ms,
            expires_ms,
            ttl_secs: req.ttl_secs,
            target: req.target,
            messages,
            targeted,
            sent: 0,
            delivered: 0,
            dropped: 0,
            collapsed: false,
            collapse_key: req.collapse_key,
            idempotency_key: req.idempotency_key.clone(),
        };
        self.ops.push(Op::Push(rec.clone()));
        self.prunes.entry(self.prune_at(req.ttl_secs, now_ms, expires_ms)).or_default().push(push_id);
        self.record_bytes += limits::record_cost(&rec);
        self.pushes.insert(push_id, rec);
        if let Some(k) = req.idempotency_key {
            self.idem.insert(k, push_id);
        }
        if let Some(c) = cond
            && req.ttl_secs > 0
        {
            self.conditions.insert(push_id, c);
        }
        self.pending.insert(push_id, Pending { message });
        Ok(Accepted::New { push_id, targeted })
    }

    /// Called by the committer once pushes are durable: makes them visible for backlog and
    /// sends them to every node holding an interested connection.
    pub(crate) fn publish(&mut self, ids: &[u64]) {
        for &id in ids {
            let Some(pending) = self.pending.remove(&id) else {
                continue;
            };
            self.last_published = self.last_published.max(id);
            let Some(p) = self.pushes.get(&id) else {
                continue;
            };
            let (target, msgs, collapsed) = (p.target.clone(), p.messages.clone(), p.collapsed);
            let m = pending.message;
            for &(stream, seq) in &msgs {
                if let Some(st) = self.streams.get_mut(&stream) {
                    st.published = st.published.max(seq);
                    let superseded =
                        m.collapse_key.as_ref().is_some_and(|k| st.collapse.get(k) != Some(&seq));
                    if m.ttl_secs > 0 && !collapsed && !superseded {
                        st.messages.insert(seq, m.clone());
                        self.expiries.entry(m.expires_ms).or_default().push((stream, seq));
                    } else if m.ttl_secs > 0 {
                        // Charged at acceptance, replaced before it was ever stored.
                        self.release(stream, limits::message_cost(&m));
                    }
                }
            }
            if collapsed {
                continue;
            }
            self.dispatch_live(id, &target, &msgs, &m);
        }
    }

    fn dispatch_live(&mut self, id: u64, target: &TargetSpec, msgs: &[(u32, u32)], m: &MessageRecord) {
        // One order per (target, message), for the online interested devices (user, device, node).
        let mut orders: Vec<(Target, (u32, u32), Vec<OnlineDevice>)> = Vec::new();
        match target {
            TargetSpec::User(u) => {
                orders.push((Target::User(u.clone()), msgs[0], self.online_devices(std::iter::once(u))));
            }
            TargetSpec::Users(us) => {
                for (u, &pos) in us.iter().zip(msgs) {
                    orders.push((Target::User(u.clone()), pos, self.online_devices(std::iter::once(u))));
                }
            }
            TargetSpec::Group(g) => {
                return self.dispatch_stream(id, Target::Group(g.clone()), &stream_name_group(g), msgs[0], m);
            }
            TargetSpec::Topic(t) => {
                return self.dispatch_stream(id, Target::Topic(t.clone()), &stream_name_topic(t), msgs[0], m);
            }
            TargetSpec::Condition(text) => {
                let cond = match self.conditions.get(&id) {
                    Some(c) => Some(c.clone()),
                    None => Condition::parse(text).ok().map(Arc::new),
                };
                let mut online = Vec::new();
                if let Some(cond) = cond {
                    for (u, conns) in &self.presence {
                        let wants =
                            self.users.get(u).is_some_and(|u| cond.eval_names(|t| u.effective.contains(t)));
                        if wants {
                            online.extend(conns.iter().map(|c| OnlineDevice::of(u, c)));
                        }
                    }
                }
                orders.push((Target::Condition(text.clone()), msgs[0], online));
            }
        }
        let mut dropped = 0u64;
        let mut flown: Vec<(u32, String, String)> = Vec::new();
        for (target, (stream, seq), online) in orders {
            let mut by_node: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
            for o in online {
                by_node.entry(o.node).or_default().push((o.user, o.device));
            }
            for (node, devices) in by_node {
                match self.offer_live(&node, id, target.clone(), (stream, seq), m) {
                    Offer::Queued if m.ttl_secs > 0 => {
                        flown.extend(devices.into_iter().map(|(u, d)| (stream, u, d)));
                    }
                    Offer::Queued | Offer::Skipped | Offer::NoNode => {}
                    Offer::Dropped => dropped += devices.len() as u64,
                }
            }
        }
        for (stream, user, device) in flown {
            let owed = self.streams.get(&stream).is_some_and(|st| self.owed(&user, &device, &st.rec.name, m));
            if owed {
                self.fly(user, device, id);
            }
        }
        self.record_dropped(id, dropped);
    }

    /// Sends a group/topic push to every node holding an interested online device, from the
    /// per-(stream, node) counts: O(nodes), whatever the number of members. A stored push
    /// records how many owed devices got a live copy ([`Live`]).
    fn dispatch_stream(&mut self, id: u64, target: Target, sname: &str, pos: (u32, u32), m: &MessageRecord) {
        let (stream, seq) = pos;
        let mut live = Live::default();
        let mut dropped = 0u64;
        // (node, owed devices, online devices) per node with an interested device.
        let nodes: Vec<(String, u64, u64)> = self.online_idx.get(sname).map_or_else(Vec::new, |by_node| {
            by_node
                .iter()
                .filter(|(_, nc)| nc.total > 0)
                .map(|(node, nc)| (node.clone(), nc.owed(id), nc.total))
                .collect()
        });
        for (node, owed, total) in nodes {
            match self.offer_live(&node, id, target.clone(), (stream, seq), m) {
                Offer::Queued => live.count += owed,
                Offer::Skipped => live.skipped.push(node),
                Offer::Dropped => dropped += total,
                Offer::NoNode => {}
            }
        }
        let stored = self.streams.get(&stream).is_some_and(|st| st.messages.contains_key(&seq));
        if m.ttl_secs > 0 && stored {
            self.live.insert(id, live);
        }
        self.record_dropped(id, dropped);
    }

    /// Queues a live push for `node`. A node whose queue is full falls behind (it is resynced
    /// from cursors once it drains): a stored push is remembered as skipped from `id`, a TTL-0
    /// push is lost for that node.
    fn offer_live(
        &mut self,
        node: &str,
        id: u64,
        target: Target,
        (stream, seq): (u32, u32),
        m: &MessageRecord,
    ) -> Offer {
        let Some(n) = self.nodes.get_mut(node) else { return Offer::NoNode };
        let order = PushOrder {
            push_id: id,
            target,
            stream,
            seq,
            flags: m.flags,
            ttl_secs: m.ttl_secs,
            payload: m.payload.clone(),
            origin: None,
        };
        if n.behind.is_none() && n.queue.try_push(LinkMessage::Push(order)) {
            self.metrics.push_orders_sent.inc();
            return Offer::Queued;
        }
        let behind = n.behind.get_or_insert_with(|| {
            n.queue.set_behind(true);
            self.metrics.link_queue_full.inc();
            Behind::default()
        });
        if m.ttl_secs > 0 {
            behind.skipped_from.get_or_insert(id);
            Offer::Skipped
        } else {
            Offer::Dropped
        }
    }

    /// Counts TTL-0 copies that a behind node never got against push `id`.
    fn record_dropped(&mut self, id: u64, dropped: u64) {
        if dropped > 0
            && let Some(p) = self.pushes.get_mut(&id)
        {
            p.dropped += dropped;
            self.ops.push(Op::Push(p.clone()));
            self.metrics.fire_and_forget_dropped.add(dropped);
        }
    }

    /// The online devices of `users`: (user, device, node).
    fn online_devices<'a>(&self, users: impl Iterator<Item = &'a String>) -> Vec<OnlineDevice> {
        let mut out = Vec::new();
        for u in users {
            if let Some(cs) = self.presence.get(u) {
                out.extend(cs.iter().map(|c| OnlineDevice::of(u, c)));
            }
        }
        out
    }

    /// The id of the newest push accepted.
    pub(crate) fn last_push_id(&self) -> u64 {
        self.last_push_id
    }

    pub(crate) fn push_status(&self, id: u64, now_ms: u64) -> Option<PushStatus> {
        let p = self.pushes.get(&id)?;
        let owed = p.targeted.saturating_sub(p.delivered);
        let (state, pending, expired, collapsed) = if p.ttl_secs == 0 {
            ("fire_and_forget", 0, 0, 0)
        } else if p.targeted == 0 {
            ("no_recipients", 0, 0, 0)
        } else if owed == 0 {
            ("delivered", 0, 0, 0)
        } else if p.collapsed {
            ("collapsed", 0, 0, owed)
        } else if now_ms >= p.expires_ms {
            ("expired", 0, owed, 0)
        } else {
            ("pending", owed, 0, 0)
        };
        let awaiting = match pending {
            0 => 0,
            _ => (self.flight_by_push.get(&id).map_or(0, |s| s.len() as u64)
                + self.live.get(&id).map_or(0, |l| l.count))
            .min(pending),
        };
        Some(PushStatus {
            push_id: id,
            state,
            targeted: p.targeted,
            sent: p.sent,
            delivered: p.delivered,
            awaiting_ack: awaiting,
            pending_offline: pending - awaiting,
            expired,
            dropped: p.dropped,
            collapsed,
            created_ms: p.created_ms,
            expires_ms: p.expires_ms,
        })
    }

    // ---- delivery bookkeeping -----------------------------------------------------------

    /// Whether message `m` of stream `stream_name` is owed to `device` of `user`.
    fn owed(&self, user: &str, device: &str, stream_name: &str, m: &MessageRecord) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        let Some(d) = u.rec.devices.get(device) else {
            return false;
        };
        if m.push_id <= d.registered_pos {
            return false;
        }
        let since_ok = |name: &str| u.rec.since.get(name).is_some_and(|&s| s < m.push_id);
        if stream_name == COND_STREAM {
            return self.conditions.get(&m.push_id).is_some_and(|c| {
                c.eval_names(|t| u.effective.contains(t) && since_ok(&stream_name_topic(t)))
            });
        }
        match stream_name.split_once(':') {
            Some(("u", name)) => name == user,
            Some(("g" | "t", _)) => since_ok(stream_name),
            _ => false,
        }
    }

    /// Applies a terminal's acknowledgement of `first..=last` (first 0: cumulative) of a stream.
    fn ack(&mut self, user: &str, device: &str, stream: u32, first: u32, last: u32) {
        let Some(st) = self.streams.get(&stream) else {
            return;
        };
        let last = last.min(st.published);
        let key = (user.to_owned(), device.to_owned());
        let mut cur = self.cursors.get(&key).and_then(|m| m.get(&stream)).cloned().unwrap_or_default();
        let before = cur.clone();
        let name = st.rec.name.as_str();
        let mut newly = Vec::new();
        let lo =
            if first == 0 { cur.cursor.saturating_add(1) } else { first.max(cur.cursor.saturating_add(1)) };
        if lo <= last {
            for (&seq, m) in st.messages.range(lo..=last) {
                if cur.above.binary_search(&seq).is_err() && self.owed(user, device, name, m) {
                    newly.push((m.push_id, seq));
                    if first != 0 {
                        let at = cur.above.partition_point(|&s| s < seq);
                        cur.above.insert(at, seq);
                    }
                }
            }
        }
        if first == 0 {
            cur.cursor = cur.cursor.max(last);
        }
        // Advance over everything acknowledged or not owed to this device.
        let mut c = cur.cursor;
        let mut blocked = false;
        for (&seq, m) in st.messages.range(c.saturating_add(1)..) {
            if seq > st.published {
                break;
            }
            if cur.above.binary_search(&seq).is_ok() || !self.owed(user, device, name, m) {
                c = seq;
            } else {
                c = seq - 1;
                blocked = true;
                break;
            }
        }
        if !blocked {
            c = st.published;
        }
        cur.cursor = cur.cursor.max(c);
        let cursor = cur.cursor;
        cur.above.retain(|&s| s > cursor);
        let mut done = Vec::new();
        let name = name.to_owned();
        for &(pid, seq) in &newly {
            if !self.land(user, device, pid)
                && self
                    .streams
                    .get(&stream)
                    .and_then(|st| st.messages.get(&seq))
                    .is_some_and(|m| self.live_counted(user, device, &name, m))
                && let Some(l) = self.live.get_mut(&pid)
            {
                l.count = l.count.saturating_sub(1);
            }
        }
        for (pid, _) in newly {
            if let Some(p) = self.pushes.get_mut(&pid) {
                p.delivered += 1;
                self.dirty_pushes.insert(pid);
                // Nobody else is owed it (owed devices are a subset of the targeted ones).
                if p.delivered >= p.targeted {
                    done.extend(p.messages.iter().copied().map(|m| (pid, m)));
                }
            }
        }
        for (pid, (stream, seq)) in done {
            let ours = self
                .streams
                .get(&stream)
                .and_then(|st| st.messages.get(&seq))
                .is_some_and(|m| m.push_id == pid);
            if ours && self.drop_message(stream, seq).is_some() {
                self.metrics.messages_delivered_removed.inc();
            }
        }
        if cur != before {
            self.dirty_cursors.insert((user.to_owned(), device.to_owned(), stream));
            self.cursors.entry(key).or_default().insert(stream, cur);
        }
    }

    /// Stored messages owed to a device that just logged in, in order per stream.
    fn backlog(&mut self, user: &str, device: &str, resume: &[StreamSeq], now_ms: u64) -> Vec<PushOrder> {
        for r in resume {
            self.ack(user, device, r.stream, 0, r.seq);
        }
        self.backlog_since(user, device, 0, now_ms)
    }

    /// Queues a login's backlog to `node`, unless the node is behind or it does not fit: then
    /// the device is resent its whole backlog when the node drains.
    fn login_backlog(&mut self, node: &str, user: &str, device: &str, resume: &[StreamSeq], now_ms: u64) {
        let orders = self.backlog(user, device, resume, now_ms);
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let bytes: usize = orders.iter().map(|o| o.payload.len()).sum();
        let fits = n.queue.fits(orders.len(), bytes) || n.queue.pushes() == 0;
        match &mut n.behind {
            None if fits => {
                self.metrics.backlog_pushes_sent.add(orders.len() as u64);
                let ids: Vec<u64> = orders.iter().map(|o| o.push_id).collect();
                n.queue.force(orders.into_iter().map(LinkMessage::Push));
                for id in ids {
                    self.fly(user.to_owned(), device.to_owned(), id);
                }
            }
            None => {
                let mut b = Behind::default();
                b.logins.insert((user.to_owned(), device.to_owned()));
                n.behind = Some(b);
                n.queue.set_behind(true);
                self.metrics.link_queue_full.inc();
            }
            Some(b) => {
                b.logins.insert((user.to_owned(), device.to_owned()));
            }
        }
    }

    /// The writer of a node that was behind drained its queue to half the bound: resend every
    /// device online there what it missed, in order per stream, and take live pushes again.
    pub(crate) fn node_drained(&mut self, node: &str, conn: u64, now_ms: u64) {
        let Some(behind) = self.nodes.get_mut(node).filter(|n| n.conn == conn).and_then(|n| n.behind.take())
        else {
            return;
        };
        let devices: Vec<(String, String)> = self
            .presence
            .iter()
            .flat_map(|(u, cs)| {
                cs.iter().filter(|c| c.node == node).map(move |c| (u.clone(), c.device.clone()))
            })
            .collect();
        let mut orders = Vec::new();
        for (user, device) in devices {
            let floor = if behind.logins.contains(&(user.clone(), device.clone())) {
                0
            } else if let Some(from) = behind.skipped_from {
                from - 1
            } else {
                continue;
            };
            orders.extend(self.backlog_since(&user, &device, floor, now_ms));
        }
        self.metrics.link_resyncs.inc();
        self.metrics.backlog_pushes_sent.add(orders.len() as u64);
        for o in &orders {
            if let Target::Device { user, device } = &o.target {
                self.fly(user.clone(), device.clone(), o.push_id);
            }
        }
        if let Some(n) = self.nodes.get(node) {
            n.queue.set_behind(false);
            n.queue.force(orders.into_iter().map(LinkMessage::Push));
        }
    }

    /// Stored messages with a push id above `floor` owed to a device, in order per stream.
    fn backlog_since(&self, user: &str, device: &str, floor: u64, now_ms: u64) -> Vec<PushOrder> {
        let Some(u) = self.users.get(user) else {
            return Vec::new();
        };
        let offline_pos = u.rec.devices.get(device).map_or(0, |d| d.offline_pos);
        let mut names: Vec<String> = vec![stream_name_user(user)];
        names.extend(u.rec.groups.iter().map(|g| stream_name_group(g)));
        names.extend(u.effective.iter().map(|t| stream_name_topic(t)));
        names.push(COND_STREAM.to_owned());
        let key = (user.to_owned(), device.to_owned());
        let mut out = Vec::new();
        for name in names {
            let Some(&sid) = self.stream_ids.get(&name) else {
                continue;
            };
            let Some(st) = self.streams.get(&sid) else {
                continue;
            };
            let cur = self.cursors.get(&key).and_then(|m| m.get(&sid)).cloned().unwrap_or_default();
            for (&seq, m) in st.messages.range(cur.cursor.saturating_add(1)..) {
                if m.expires_ms <= now_ms
                    || m.push_id <= floor
                    || cur.above.binary_search(&seq).is_ok()
                    || !self.owed(user, device, &name, m)
                {
                    continue;
                }
                let mut flags = m.flags;
                if m.push_id <= offline_pos {
                    flags = with_flag(flags, PushFlags::REDELIVERY);
                }
                out.push(PushOrder {
                    push_id: m.push_id,
                    target: Target::Device { user: user.to_owned(), device: device.to_owned() },
                    stream: sid,
                    seq,
                    flags,
                    ttl_secs: (m.expires_ms - now_ms).div_ceil(1000) as u32,
                    payload: m.payload.clone(),
                    origin: stream_origin(&name),
                });
            }
        }
        out
    }

    // ---- the link ------------------------------------------------------------------------

    /// A node said Hello: it gets a Welcome and the tables. Returns the connection's id, or
    /// why the node is refused: another live link holds its node id (two gateways configured
    /// with one id would otherwise take the id from each other in a loop). A restarted node
    /// whose old link is half-open gets in once the old link misses its heartbeat deadline; it
    /// retries slowly meanwhile.
    pub(crate) fn node_hello(&mut self, hello: &Hello, queue: Arc<LinkQueue>) -> Result<u64, String> {
        if self.nodes.contains_key(&hello.node_id) {
            return Err(format!(
                "node id {:?} is already connected (from {}); give every gateway its own --node-id",
                hello.node_id, self.nodes[&hello.node_id].public_addr
            ));
        }
        self.drop_node_presence(&hello.node_id);
        let conn = self.next_conn;
        self.next_conn += 1;
        queue.control(LinkMessage::Welcome(Welcome { epoch: self.epoch }));
        queue.control(LinkMessage::Tables(self.tables()));
        let node = Node {
            conn,
            queue,
            public_addr: hello.public_addr.clone(),
            stats: NodeStats::default(),
            behind: None,
        };
        self.nodes.insert(hello.node_id.clone(), node);
        self.metrics.link_connects.inc();
        self.metrics.nodes.set(self.nodes.len() as u64);
        Ok(conn)
    }

    fn drop_node_presence(&mut self, node: &str) {
        let pos = self.last_push_id;
        let mut gone = Vec::new();
        for (u, cs) in self.presence.iter_mut() {
            cs.retain(|c| {
                let keep = c.node != node;
                if !keep {
                    gone.push((u.clone(), c.device.clone()));
                }
                keep
            });
        }
        self.presence.retain(|_, cs| !cs.is_empty());
        for (u, d) in gone {
            self.index_offline(&u, &d, node, None, true);
            self.mark_offline(&u, &d, pos);
        }
    }

    fn mark_offline(&mut self, user: &str, device: &str, pos: u64) {
        self.ground_device(user, device);
        if let Some(d) = self.users.get_mut(user).and_then(|u| u.rec.devices.get_mut(device)) {
            d.offline_pos = pos;
            self.save_user(user);
        }
    }

    /// The node's connection ended.
    pub(crate) fn node_gone(&mut self, node: &str, conn: u64) {
        if self.nodes.get(node).is_some_and(|n| n.conn == conn) {
            self.nodes.remove(node);
            self.drop_node_presence(node);
            self.metrics.nodes.set(self.nodes.len() as u64);
        }
    }

    fn is_current(&self, node: &str, conn: u64) -> bool {
        self.nodes.get(node).is_some_and(|n| n.conn == conn)
    }

    pub(crate) fn presence_changes(
        &mut self,
        node: &str,
        conn: u64,
        changes: Vec<PresenceChange>,
        now_ms: u64,
    ) {
        if !self.is_current(node, conn) {
            return;
        }
        for ch in changes {
            match ch {
                PresenceChange::Online(on) => {
                    self.register_device(&on.user, &on.device);
                    self.cancel_will(&on.user, &on.device);
                    // A new session starts with nothing in flight; its backlog flies again.
                    if let Some(prev) = self.online.get(&(on.user.clone(), on.device.clone())).cloned() {
                        self.index_offline(&on.user, &on.device, &prev.node, None, false);
                    }
                    self.ground_device(&on.user, &on.device);
                    let cs = self.presence.entry(on.user.clone()).or_default();
                    cs.retain(|c| !(c.node == node && c.device == on.device));
                    cs.push(Conn {
                        device: on.device.clone(),
                        node: node.to_owned(),
                        session: on.session_id,
                    });
                    self.index_online(&on.user, &on.device, node, on.session_id);
                    let subs = self.subscriptions_of(&on.user);
                    self.send_to(node, LinkMessage::Subscriptions(vec![subs]));
                    self.login_backlog(node, &on.user, &on.device, &on.resume, now_ms);
                }
                PresenceChange::Offline(off) => {
                    let mut removed = false;
                    if let Some(cs) = self.presence.get_mut(&off.user) {
                        let n = cs.len();
                        cs.retain(|c| {
                            !(c.node == node && c.device == off.device && c.session == off.session_id)
                        });
                        removed = cs.len() != n;
                        if cs.is_empty() {
                            self.presence.remove(&off.user);
                        }
                    }
                    if removed {
                        self.index_offline(&off.user, &off.device, node, Some(off.session_id), true);
                        let pos = self.last_push_id;
                        self.mark_offline(&off.user, &off.device, pos);
                    }
                }
            }
        }
    }

    pub(crate) fn receipts(&mut self, receipts: &[Receipt]) {
        self.metrics.receipts.add(receipts.len() as u64);
        for r in receipts {
            if r.first > r.last {
                continue;
            }
            self.ack(&r.user, &r.device, r.stream, r.first, r.last);
        }
    }

    pub(crate) fn reports(&mut self, reports: &[PushReport]) {
        for r in reports {
            if let Some(p) = self.pushes.get_mut(&r.push_id) {
                p.sent += u64::from(r.sent);
                p.dropped += u64::from(r.dropped);
                self.dirty_pushes.insert(r.push_id);
            }
        }
    }

    pub(crate) fn node_stats(&mut self, node: &str, conn: u64, stats: NodeStats) {
        if let Some(n) = self.nodes.get_mut(node).filter(|n| n.conn == conn) {
            n.stats = stats;
        }
    }

    /// Names and public addresses of connected nodes.
    pub(crate) fn node_list(&self) -> Vec<(String, String, NodeStats)> {
        self.nodes.iter().map(|(id, n)| (id.clone(), n.public_addr.clone(), n.stats)).collect()
    }

    // ---- housekeeping -------------------------------------------------------------------

    /// Drops expired messages, push records past their retention, and retired keys whose
    /// tokens have all expired. Its store changes go to the committer as one job.
    pub(crate) fn sweep(&mut self, now_ms: u64) {
        let later = self.expiries.split_off(&(now_ms + 1));
        let due = std::mem::replace(&mut self.expiries, later);
        let mut dropped = 0u64;
        for (_, list) in due {
            for (stream, seq) in list {
                let expired = self
                    .streams
                    .get(&stream)
                    .and_then(|st| st.messages.get(&seq))
                    .is_some_and(|m| m.expires_ms <= now_ms);
                if expired && self.drop_message(stream, seq).is_some() {
                    dropped += 1;
                }
            }
        }
        self.metrics.messages_expired.add(dropped);
        self.prune_pushes(now_ms);
        let now_secs = now_ms / 1000;
        let retired: Vec<u32> = (self.keys.values())
            .filter(|k| !k.current && k.withdrawn_secs.is_none() && k.max_expires_at <= now_secs)
            .map(|k| k.id)
            .collect();
        for id in &retired {
            self.keys.remove(id);
            self.ops.push(Op::KeyRemoved(*id));
        }
        self.broadcast(retired.into_iter().map(TableChange::KeyRemoved).collect());
        self.prune_revocations(now_secs);
        self.update_gauges();
    }

    /// Drops revocation records that can no longer match a valid credential (every credential
    /// issued before their stamps has expired), from memory, the store and the nodes' tables:
    /// otherwise the table, and the snapshot every node gets, grows with every revocation ever
    /// made.
    fn prune_revocations(&mut self, now_secs: u64) {
        let gone: Vec<String> = self
            .revocations
            .iter()
            .filter(|(_, r)| r.covers_until <= now_secs)
            .map(|(u, _)| u.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        self.metrics.revocations_pruned.add(gone.len() as u64);
        for u in &gone {
            self.revocations.remove(u);
            self.ops.push(Op::RevocationRemoved(u.clone()));
        }
        self.broadcast(gone.into_iter().map(TableChange::RevocationRemoved).collect());
    }
}

impl Core {
    /// Removes a stored message from memory and (queued op) from the store.
    fn drop_message(&mut self, stream: u32, seq: u32) -> Option<MessageRecord> {
        let st = self.streams.get_mut(&stream)?;
        let m = st.messages.remove(&seq)?;
        let cost = limits::message_cost(&m);
        if let Some(k) = &m.collapse_key
            && st.collapse.get(k) == Some(&seq)
        {
            st.collapse.remove(k);
        }
        self.conditions.remove(&m.push_id);
        self.ops.push(Op::Message(stream, seq, None));
        self.release(stream, cost);
        self.ground_push(m.push_id);
        Some(m)
    }

    /// `device` now holds an unacknowledged copy of push `id`.
    fn fly(&mut self, user: String, device: String, id: u64) {
        self.flight_by_push.entry(id).or_default().insert((user.clone(), device.clone()));
        self.flight_by_device.entry((user, device)).or_default().insert(id);
    }

    /// `device` acknowledged push `id`; whether it held a per-device copy.
    fn land(&mut self, user: &str, device: &str, id: u64) -> bool {
        let key = (user.to_owned(), device.to_owned());
        let mut held = false;
        if let Some(ids) = self.flight_by_device.get_mut(&key) {
            held = ids.remove(&id);
            if ids.is_empty() {
                self.flight_by_device.remove(&key);
            }
        }
        if let Some(ds) = self.flight_by_push.get_mut(&id) {
            ds.remove(&key);
            if ds.is_empty() {
                self.flight_by_push.remove(&id);
            }
        }
        held
    }

    /// `device` went offline (or started a new session): its copies no longer count.
    fn ground_device(&mut self, user: &str, device: &str) {
        let key = (user.to_owned(), device.to_owned());
        for id in self.flight_by_device.remove(&key).unwrap_or_default() {
            if let Some(ds) = self.flight_by_push.get_mut(&id) {
                ds.remove(&key);
                if ds.is_empty() {
                    self.flight_by_push.remove(&id);
                }
            }
        }
    }

    /// Push `id`'s message left (expired, collapsed, delivered, pruned).
    fn ground_push(&mut self, id: u64) {
        self.live.remove(&id);
        for key in self.flight_by_push.remove(&id).unwrap_or_default() {
            if let Some(ids) = self.flight_by_device.get_mut(&key) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.flight_by_device.remove(&key);
                }
            }
        }
    }

    /// Deletes the push records (and idempotency keys) whose retention after expiry is over.
    /// A push not yet published stays until it is.
    fn prune_pushes(&mut self, now_ms: u64) {
        let later = self.prunes.split_off(&(now_ms + 1));
        let due = std::mem::replace(&mut self.prunes, later);
        let mut pruned = 0u64;
        for (at, ids) in due {
            for id in ids {
                if self.pending.contains_key(&id) {
                    self.prunes.entry(at.max(now_ms + 1)).or_default().push(id);
                    continue;
                }
                let Some(p) = self.pushes.remove(&id) else {
                    continue;
                };
                self.record_bytes = self.record_bytes.saturating_sub(limits::record_cost(&p));
                if let Some(k) = &p.idempotency_key
                    && self.idem.get(k) == Some(&id)
                {
                    self.idem.remove(k);
                }
                for &(stream, seq) in &p.messages {
                    if self
                        .streams
                        .get(&stream)
                        .and_then(|st| st.messages.get(&seq))
                        .is_some_and(|m| m.push_id == id)
                    {
                        self.drop_message(stream, seq);
                    }
                }
                self.conditions.remove(&id);
                self.ops.push(Op::PushRemoved(id));
                pruned += 1;
            }
        }
        if pruned > 0 {
            // The newest push may be among them: keep ids monotonic across a restart.
            self.ops.push(Op::LastPushId(self.last_push_id));
            self.metrics.pushes_pruned.add(pruned);
        }
    }

    /// Whether `id` names a push that was accepted once and has since been pruned.
    pub(crate) fn was_pruned(&self, id: u64) -> bool {
        id >= 1 && id <= self.last_push_id && !self.pushes.contains_key(&id)
    }
}

fn revocation_entry(user: &str, r: &RevocationRecord) -> RevocationEntry {
    RevocationEntry {
        user: user.to_owned(),
        all_before: r.all_before,
        devices: r.devices.iter().map(|(d, &t)| (d.clone(), t)).collect(),
    }
}

/// The group and topic streams a user is counted in.
fn user_streams(rec: &UserRecord, effective: &BTreeSet<String>) -> BTreeSet<String> {
    rec.groups
        .iter()
        .map(|g| stream_name_group(g))
        .chain(effective.iter().map(|t| stream_name_topic(t)))
        .collect()
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::link::{Online, PresenceChange};

    fn core() -> Core {
        Core::load(Snapshot::default(), Arc::new(Metrics::default()), 1, 1_000, [1; 32], 60_000)
    }

    fn push(core: &mut Core, target: TargetSpec, ttl_secs: u32) -> u64 {
        let req = NewPush {
            target,
            title: Some("t".into()),
            body: None,
            data: Vec::new(),
            ttl_secs,
            high_priority: false,
            collapse_key: None,
            idempotency_key: None,
        };
        let Ok(Accepted::New { push_id, .. }) = core.accept_push(req, 1_000_000) else {
            panic!("not accepted")
        };
        core.publish(&[push_id]);
        push_id
    }

    fn backlog_seqs(core: &mut Core, user: &str, device: &str) -> Vec<u32> {
        core.backlog(user, device, &[], 1_000_001).iter().map(|o| o.seq).collect()
    }

    #[test]
    fn out_of_order_acks_advance_the_cursor_once_the_gap_fills() {
        let mut c = core();
        c.issue_credential("u", "d", 60, 1_000).unwrap();
        let ids: Vec<u64> = (0..4).map(|_| push(&mut c, TargetSpec::User("u".into()), 60)).collect();
        let stream = c.stream_ids["u:u"];
        c.ack("u", "d", stream, 3, 4);
        assert_eq!(backlog_seqs(&mut c, "u", "d"), vec![1, 2]);
        assert_eq!(c.cursors[&("u".into(), "d".into())][&stream].cursor, 0);
        c.ack("u", "d", stream, 0, 2);
        assert_eq!(backlog_seqs(&mut c, "u", "d"), Vec::<u32>::new());
        assert_eq!(c.cursors[&("u".into(), "d".into())][&stream].cursor, 4);
        // Each push delivered exactly once even if acked again.
        c.ack("u", "d", stream, 0, 4);
        c.ack("u", "d", stream, 1, 4);
        for id in ids {
            assert_eq!(c.push_status(id, 1_000_001).unwrap().delivered, 1);
        }
    }

    #[test]
    fn devices_are_owed_only_what_was_published_after_they_and_their_subscription_existed() {
        let mut c = core();
        c.issue_credential("u", "old", 60, 1_000).unwrap();
        c.set_user("u", None, Some(vec!["news".into()]));
        let before = push(&mut c, TargetSpec::Topic("news".into()), 60);
        c.issue_credential("u", "new", 60, 1_000).unwrap();
        c.set_user("v", None, Some(vec!["news".into()]));
        c.issue_credential("v", "vd", 60, 1_000).unwrap();
        let after = push(&mut c, TargetSpec::Topic("news".into()), 60);
        assert_eq!(backlog_seqs(&mut c, "u", "old"), vec![1, 2]);
        assert_eq!(backlog_seqs(&mut c, "u", "new"), vec![2]);
        assert_eq!(backlog_seqs(&mut c, "v", "vd"), vec![2]);
        assert_eq!(c.push_status(before, 1_000_001).unwrap().targeted, 1);
        assert_eq!(c.push_status(after, 1_000_001).unwrap().targeted, 3);
        // An ack of everything by the new device skips seq 1, which it was never owed.
        let stream = c.stream_ids["t:news"];
        c.ack("u", "new", stream, 2, 2);
        assert_eq!(c.cursors[&("u".into(), "new".into())][&stream].cursor, 2);
        assert_eq!(c.push_status(before, 1_000_001).unwrap().delivered, 0);
    }

    #[test]
    fn condition_pushes_follow_the_condition_and_fire_and_forget_is_not_stored() {
        let mut c = core();
        for (u, topics) in [("a", vec!["x"]), ("b", vec!["x", "y"]), ("n", vec![])] {
            c.issue_credential(u, "d", 60, 1_000).unwrap();
            c.set_user(u, None, Some(topics.into_iter().map(str::to_owned).collect()));
        }
        let id = push(&mut c, TargetSpec::Condition("'x' in topics && !('y' in topics)".into()), 60);
        assert_eq!(c.push_status(id, 1_000_001).unwrap().targeted, 1);
        assert_eq!(backlog_seqs(&mut c, "a", "d"), vec![1]);
        assert!(backlog_seqs(&mut c, "b", "d").is_empty());
        assert!(backlog_seqs(&mut c, "n", "d").is_empty());
        let ff = push(&mut c, TargetSpec::User("a".into()), 0);
        assert!(backlog_seqs(&mut c, "a", "d").len() == 1, "TTL 0 is not stored");
        assert_eq!(c.push_status(ff, 1_000_001).unwrap().state, "fire_and_forget");
    }

    #[test]
    fn retired_keys_leave_once_their_tokens_expired_and_sweep_drops_expired_messages() {
        let mut c = core();
        c.issue_credential("u", "d", 60, 1_000).unwrap();
        let (new_id, prev, retiring) = c.rotate_key([2; 32], 1_000);
        assert_eq!((prev, retiring[0].valid_until), (Some(1), 1_060));
        c.sweep(1_059_000);
        assert!(c.keys.contains_key(&1), "a token signed with key 1 is still valid");
        c.sweep(1_060_000);
        assert_eq!(c.keys.keys().copied().collect::<Vec<_>>(), vec![new_id]);
        push(&mut c, TargetSpec::User("u".into()), 1);
        assert_eq!(backlog_seqs(&mut c, "u", "d"), vec![1]);
        c.sweep(1_001_000);
        assert!(c.streams[&c.stream_ids["u:u"]].messages.is_empty());
    }

    #[test]
    fn a_revocation_leaves_once_every_credential_it_covers_has_expired() {
        let mut c = core();
        let queue = Arc::new(LinkQueue::new(16));
        let hello = Hello { node_id: "n".into(), link_version: 1, cores: 1, public_addr: "a".into() };
        c.node_hello(&hello, queue.clone()).unwrap();
        // A 60 s credential issued at 1,000 and one for another user lasting to 1,100.
        c.issue_credential("u", "d", 60, 1_000).unwrap();
        c.revoke("u", None, 1_010);
        c.issue_credential("v", "d", 100, 1_000).unwrap();
        c.revoke("v", Some("d"), 1_010);
        c.take_ops();
        queue.take_all();
        // u's stamp covers credentials issued up to 1,010, all expired by 1,060; v's (issued
        // after v's credential lasting to 1,100) until 1,100.
        c.sweep(1_059_000);
        assert_eq!(c.tables().revocations.len(), 2);
        c.sweep(1_060_000);
        assert_eq!(c.revocations.keys().collect::<Vec<_>>(), vec!["v"]);
        c.sweep(1_099_000);
        assert_eq!(c.revocations.len(), 1);
        c.sweep(1_100_000);
        assert!(c.revocations.is_empty(), "no credential they revoke can still be valid");
        assert!(c.tables().revocations.is_empty());
        assert!(
            c.take_ops().iter().filter(|o| matches!(o, Op::RevocationRemoved(_))).count() == 2,
            "removed from the store too"
        );
        let removed: usize = queue
            .take_all()
            .into_iter()
            .map(|m| match m {
                LinkMessage::TablesDelta(ch) => {
                    ch.iter().filter(|c| matches!(c, TableChange::RevocationRemoved(_))).count()
                }
                _ => 0,
            })
            .sum();
        let told = removed == 2;
        assert!(told, "the nodes drop them from their tables");
        assert_eq!(c.metrics.revocations_pruned.get(), 2);
    }

    #[test]
    fn push_records_and_idempotency_keys_are_pruned_after_retention() {
        let mut c = core();
        c.issue_credential("u", "d", 60, 1_000).unwrap();
        let req = NewPush {
            target: TargetSpec::User("u".into()),
            title: None,
            body: None,
            data: Vec::new(),
            ttl_secs: 1,
            high_priority: false,
            collapse_key: Some("c".into()),
            idempotency_key: Some("k".into()),
        };
        let Ok(Accepted::New { push_id, .. }) = c.accept_push(req.clone(), 1_000_000) else { panic!() };
        c.publish(&[push_id]);
        c.take_ops();
        c.sweep(1_001_000);
        let st = c.push_status(push_id, 1_001_000).unwrap();
        assert_eq!((st.state, st.expired, st.pending_offline), ("expired", 1, 0));
        assert!(c.streams[&c.stream_ids["u:u"]].collapse.is_empty(), "collapse keys leave with messages");
        // Kept for the retention (60 s in these tests) after expiry, then gone with its key.
        c.sweep(1_060_999);
        assert!(c.push_status(push_id, 1_060_999).is_some());
        assert_eq!(c.accept_push(req.clone(), 1_060_999).ok(), Some(Accepted::Existing { push_id }));
        c.take_ops();
        c.sweep(1_061_000);
        assert!(c.push_status(push_id, 1_061_000).is_none() && c.was_pruned(push_id));
        let ops = c.take_ops();
        assert!(ops.iter().any(|o| matches!(o, Op::PushRemoved(id) if *id == push_id)));
        assert!(ops.iter().any(|o| matches!(o, Op::LastPushId(id) if *id == push_id)));
        let Ok(Accepted::New { push_id: again, .. }) = c.accept_push(req, 1_061_000) else { panic!() };
        assert_eq!(again, push_id + 1);
        assert!(!c.was_pruned(again) && !c.was_pruned(again + 1));
    }

    #[test]
    fn a_message_leaves_memory_and_store_once_every_targeted_device_acked() {
        let mut c = core();
        c.issue_credential("u", "d1", 60, 1_000).unwrap();
        c.issue_credential("u", "d2", 60, 1_000).unwrap();
        let id = push(&mut c, TargetSpec::User("u".into()), 60);
        let stream = c.stream_ids["u:u"];
        c.take_ops();
        c.ack("u", "d1", stream, 0, 1);
        assert_eq!(c.streams[&stream].messages.len(), 1, "d2 is still owed it");
        c.ack("u", "d2", stream, 0, 1);
        assert!(c.streams[&stream].messages.is_empty());
        assert!(c.take_ops().iter().any(|o| matches!(o, Op::Message(s, 1, None) if *s == stream)));
        assert_eq!(c.push_status(id, 1_000_001).unwrap().state, "delivered");
    }

    #[test]
    fn status_splits_devices_awaiting_an_ack_from_those_pending_offline() {
        let mut c = core();
        c.issue_credential("u", "d1", 60, 1_000).unwrap();
        c.issue_credential("u", "d2", 60, 1_000).unwrap();
        let queue = Arc::new(LinkQueue::new(16));
        let hello = Hello { node_id: "n".into(), link_version: 1, cores: 1, public_addr: "a".into() };
        let conn = c.node_hello(&hello, queue.clone()).unwrap();
        let on = |s| {
            vec![PresenceChange::Online(Online {
                user: "u".into(),
                device: "d1".into(),
                session_id: s,
                resume: vec![],
            })]
        };
        c.presence_changes("n", conn, on(1), 1_000_000);
        let id = push(&mut c, TargetSpec::User("u".into()), 60);
        let split = |c: &Core| {
            let s = c.push_status(id, 1_000_001).unwrap();
            (s.delivered, s.awaiting_ack, s.pending_offline)
        };
        assert_eq!(split(&c), (0, 1, 1), "d1 online when dispatched, d2 offline");
        let off =
            herald_protocol::link::Offline { user: "u".into(), device: "d1".into(), session_id: 1, code: 0 };
        c.presence_changes("n", conn, vec![PresenceChange::Offline(off)], 1_000_001);
        assert_eq!(split(&c), (0, 0, 2), "went offline before acking");
        c.presence_changes("n", conn, on(2), 1_000_001);
        assert_eq!(split(&c), (0, 1, 1), "its backlog is in flight again");
        let stream = c.stream_ids["u:u"];
        c.ack("u", "d1", stream, 0, 1);
        assert_eq!(split(&c), (1, 0, 1));
        assert!(c.flight_by_device.is_empty() && c.flight_by_push.is_empty());
        let st = c.push_status(id, 1_060_000).unwrap();
        assert_eq!((st.state, st.expired, st.awaiting_ack, st.pending_offline), ("expired", 1, 0, 0));
    }

    #[test]
    fn resume_positions_count_as_acks_and_presence_follows_nodes() {
        let mut c = core();
        c.issue_credential("u", "d", 60, 1_000).unwrap();
        let id = push(&mut c, TargetSpec::User("u".into()), 60);
        let queue = Arc::new(LinkQueue::new(16));
        let hello = Hello { node_id: "n".into(), link_version: 1, cores: 1, public_addr: "a".into() };
        let conn = c.node_hello(&hello, queue.clone()).unwrap();
        let stream = c.stream_ids["u:u"];
        c.presence_changes(
            "n",
            conn,
            vec![PresenceChange::Online(Online {
                user: "u".into(),
                device: "d".into(),
                session_id: 1,
                resume: vec![StreamSeq { stream, seq: 1 }],
            })],
            1_000_001,
        );
        let mut kinds = Vec::new();
        for m in queue.take_all() {
            kinds.push(match m {
                LinkMessage::Welcome(_) => "welcome",
                LinkMessage::Tables(_) => "tables",
                LinkMessage::Subscriptions(_) => "subs",
                LinkMessage::Push(_) => "push",
                _ => "other",
            });
        }
        assert_eq!(kinds, ["welcome", "tables", "subs"], "nothing owed after resume");
        assert_eq!(c.push_status(id, 1_000_001).unwrap().delivered, 1);
        assert_eq!(c.user_view("u").unwrap().presence.len(), 1);
        c.node_gone("n", conn);
        assert!(c.user_view("u").unwrap().presence.is_empty());
    }

    /// Brute-force recomputation of the maintained counts from the tables and presence.
    fn check_counts(c: &Core) {
        let mut devices: BTreeMap<String, u64> = BTreeMap::new();
        for (g, members) in &c.group_members {
            for m in members {
                *devices.entry(stream_name_group(g)).or_default() += c.users[m].rec.devices.len() as u64;
            }
        }
        for (t, subs) in &c.topic_subs {
            for m in subs {
                *devices.entry(stream_name_topic(t)).or_default() += c.users[m].rec.devices.len() as u64;
            }
        }
        devices.retain(|_, n| *n > 0);
        let have: BTreeMap<String, u64> =
            c.stream_devices.iter().filter(|(_, n)| **n > 0).map(|(k, n)| (k.clone(), *n)).collect();
        assert_eq!(have, devices, "devices per group/topic stream");
        // Online index: each present device on the node of its latest connection.
        let mut idx: BTreeMap<String, BTreeMap<String, NodeCount>> = BTreeMap::new();
        for (u, cs) in &c.presence {
            let mut latest: BTreeMap<&str, &Conn> = BTreeMap::new();
            for conn in cs {
                latest.insert(&conn.device, conn);
            }
            let user = &c.users[u];
            let streams = user_streams(&user.rec, &user.effective);
            for (d, conn) in latest {
                let reg = user.rec.devices[d].registered_pos;
                for s in &streams {
                    let from = reg.max(user.rec.since[s]);
                    idx.entry(s.clone()).or_default().entry(conn.node.clone()).or_default().add(from);
                }
                let on = &c.online[&(u.clone(), d.to_owned())];
                assert_eq!((on.node.as_str(), on.session), (conn.node.as_str(), conn.session));
            }
        }
        let online_n: usize = c
            .presence
            .values()
            .map(|cs| cs.iter().map(|c| c.device.as_str()).collect::<BTreeSet<_>>().len())
            .sum();
        assert_eq!(c.online.len(), online_n, "one indexed session per present device");
        let mine: BTreeMap<String, BTreeMap<String, NodeCount>> =
            c.online_idx.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(mine, idx, "online devices per (stream, node)");
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        fn subset(&mut self, prefix: &str, n: usize) -> Vec<String> {
            (0..n).filter(|_| self.below(2) == 0).map(|i| format!("{prefix}{i}")).collect()
        }
    }

    /// Random group changes, logins, logouts, acks, node disconnects and restarts; after every
    /// step the maintained counts equal a brute-force recomputation, `targeted` of each new
    /// group/topic push equals the members' devices (TTL 0: their online devices), the push
    /// reaches exactly the nodes holding an interested device, and `awaiting_ack` equals a
    /// per-device model of the copies in flight (the bookkeeping this replaced).
    #[test]
    fn group_and_topic_counts_match_a_brute_force_recomputation() {
        const NODES: usize = 3;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::RedbStore::open(dir.path()).unwrap();
        let load = |store: &crate::store::RedbStore| {
            use crate::store::Store as _;
            Core::load(store.load().unwrap(), Arc::new(Metrics::default()), 1, 1_000, [1; 32], 60_000)
        };
        let commit = |c: &mut Core, store: &crate::store::RedbStore| {
            use crate::store::Store as _;
            store.commit(&c.take_ops()).unwrap();
        };
        let mut c = load(&store);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut conns: BTreeMap<String, (u64, Arc<LinkQueue>)> = BTreeMap::new();
        let hello = |c: &mut Core, conns: &mut BTreeMap<String, (u64, Arc<LinkQueue>)>, n: usize| {
            let q = Arc::new(LinkQueue::new(1 << 20));
            let h = Hello { node_id: format!("n{n}"), link_version: 1, cores: 1, public_addr: "a".into() };
            let conn = c.node_hello(&h, q.clone()).unwrap();
            conns.insert(format!("n{n}"), (conn, q));
        };
        for n in 0..NODES {
            hello(&mut c, &mut conns, n);
        }
        // Model: per stored group/topic push, the devices holding an unacknowledged copy.
        let mut flights: BTreeMap<u64, BTreeSet<(String, String)>> = BTreeMap::new();
        let mut sessions: BTreeMap<(String, String), (String, u64)> = BTreeMap::new();
        let mut next_session = 1u64;
        let now = 1_000_000u64;
        let mut pushes_checked = 0;
        for step in 0..3_000 {
            let u = format!("u{}", rng.below(6));
            let d = format!("d{}", rng.below(2));
            let key = (u.clone(), d.clone());
            match rng.below(14) {
                0 => {
                    c.issue_credential(&u, &d, 60, 1_000).unwrap();
                }
                1 => {
                    let gs = rng.subset("g", 3);
                    c.set_user(&u, Some(gs), None);
                }
                2 => {
                    let ts = rng.subset("t", 3);
                    c.set_user(&u, None, Some(ts));
                }
                3 => {
                    let g = format!("g{}", rng.below(3));
                    let ts = rng.subset("t", 3);
                    c.set_group(&g, ts);
                }
                4 | 5 if !sessions.contains_key(&key) => {
                    let node = format!("n{}", rng.below(NODES));
                    if !conns.contains_key(&node) {
                        continue;
                    }
                    let on = Online {
                        user: u.clone(),
                        device: d.clone(),
                        session_id: next_session,
                        resume: vec![],
                    };
                    c.presence_changes(&node, conns[&node].0, vec![PresenceChange::Online(on)], now);
                    for ids in flights.values_mut() {
                        ids.remove(&key);
                    }
                    for m in conns[&node].1.take_all() {
                        if let LinkMessage::Push(o) = m
                            && matches!(&o.target, Target::Device { user, device } if *user == u && *device == d)
                            && flights.contains_key(&o.push_id)
                        {
                            flights.get_mut(&o.push_id).unwrap().insert(key.clone());
                        }
                    }
                    sessions.insert(key.clone(), (node, next_session));
                    next_session += 1;
                }
                6 if sessions.contains_key(&key) => {
                    let (node, session) = sessions.remove(&key).unwrap();
                    let off = herald_protocol::link::Offline {
                        user: u.clone(),
                        device: d.clone(),
                        session_id: session,
                        code: 0,
                    };
                    c.presence_changes(&node, conns[&node].0, vec![PresenceChange::Offline(off)], now);
                    for ids in flights.values_mut() {
                        ids.remove(&key);
                    }
                }
                7 | 8 if sessions.contains_key(&key) => {
                    let streams: Vec<String> = c.users[&u].streams.iter().cloned().collect();
                    if streams.is_empty() {
                        continue;
                    }
                    let s = &streams[rng.below(streams.len())];
                    let sid = c.stream_ids.get(s).copied();
                    let Some(sid) = sid else { continue };
                    let published = c.streams[&sid].published;
                    let last = rng.below(published as usize + 1) as u32;
                    c.ack(&u, &d, sid, 0, last);
                    for (&pid, ids) in flights.iter_mut() {
                        let (psid, pseq) = c.pushes[&pid].messages[0];
                        if psid == sid && pseq <= last {
                            ids.remove(&key);
                        }
                    }
                }
                9..=11 => {
                    let ttl = if rng.below(5) == 0 { 0 } else { 3600 };
                    let (target, members) = if rng.below(2) == 0 {
                        let g = format!("g{}", rng.below(3));
                        (TargetSpec::Group(g.clone()), c.group_members.get(&g).cloned().unwrap_or_default())
                    } else {
                        let t = format!("t{}", rng.below(3));
                        (TargetSpec::Topic(t.clone()), c.topic_subs.get(&t).cloned().unwrap_or_default())
                    };
                    let want_targeted: u64 = if ttl == 0 {
                        members
                            .iter()
                            .map(|m| {
                                c.presence.get(m).map_or(0, |cs| {
                                    cs.iter().map(|c| &c.device).collect::<BTreeSet<_>>().len() as u64
                                })
                            })
                            .sum()
                    } else {
                        members.iter().map(|m| c.users[m].rec.devices.len() as u64).sum()
                    };
                    let want_nodes: BTreeSet<String> = members
                        .iter()
                        .flat_map(|m| c.presence.get(m).into_iter().flatten().map(|cn| cn.node.clone()))
                        .collect();
                    let id = push(&mut c, target, ttl);
                    assert_eq!(c.pushes[&id].targeted, want_targeted, "targeted of push {id} at step {step}");
                    let mut got_nodes = BTreeSet::new();
                    for (node, (_, q)) in &conns {
                        for m in q.take_all() {
                            if matches!(&m, LinkMessage::Push(o) if o.push_id == id) {
                                got_nodes.insert(node.clone());
                            }
                        }
                    }
                    assert_eq!(got_nodes, want_nodes, "routing of push {id}");
                    if ttl > 0 {
                        let (sid, seq) = c.pushes[&id].messages[0];
                        let name = c.streams[&sid].rec.name.clone();
                        let m = c.streams[&sid].messages[&seq].clone();
                        let inflight: BTreeSet<(String, String)> =
                            sessions.keys().filter(|(u, d)| c.owed(u, d, &name, &m)).cloned().collect();
                        flights.insert(id, inflight);
                    }
                }
                12 => {
                    let n = rng.below(NODES);
                    let node = format!("n{n}");
                    if let Some((conn, _)) = conns.remove(&node) {
                        c.node_gone(&node, conn);
                    }
                    sessions.retain(|k, (sn, _)| {
                        let gone = *sn == node;
                        if gone {
                            for ids in flights.values_mut() {
                                ids.remove(k);
                            }
                        }
                        !gone
                    });
                    if rng.below(2) == 0 {
                        hello(&mut c, &mut conns, n);
                    }
                }
                13 if rng.below(10) == 0 => {
                    commit(&mut c, &store);
                    c = load(&store);
                    conns.clear();
                    sessions.clear();
                    flights.values_mut().for_each(BTreeSet::clear);
                    for n in 0..NODES {
                        hello(&mut c, &mut conns, n);
                    }
                }
                _ => {}
            }
            for n in 0..NODES {
                if !conns.contains_key(&format!("n{n}")) && rng.below(20) == 0 {
                    hello(&mut c, &mut conns, n);
                }
            }
            for (_, q) in conns.values() {
                q.take_all();
            }
            // Unsubscribed devices are no longer owed: they hold no copy that counts.
            flights.retain(|id, _| {
                c.pushes.get(id).is_some_and(|p| {
                    c.streams
                        .get(&p.messages[0].0)
                        .is_some_and(|st| st.messages.contains_key(&p.messages[0].1))
                })
            });
            for (&id, ids) in flights.iter_mut() {
                let (sid, seq) = c.pushes[&id].messages[0];
                let name = c.streams[&sid].rec.name.clone();
                let m = c.streams[&sid].messages[&seq].clone();
                ids.retain(|(u, d)| c.owed(u, d, &name, &m));
            }
            check_counts(&c);
            for (&id, ids) in &flights {
                let st = c.push_status(id, now).unwrap();
                assert_eq!(
                    st.targeted,
                    st.delivered + st.awaiting_ack + st.pending_offline + st.expired + st.collapsed
                );
                let pending = st.targeted - st.delivered;
                assert_eq!(
                    st.awaiting_ack,
                    (ids.len() as u64).min(pending),
                    "awaiting_ack of {id} at step {step}"
                );
                pushes_checked += 1;
            }
        }
        assert!(pushes_checked > 1_000, "{pushes_checked}");
    }

    #[test]
    fn a_device_with_two_sessions_is_indexed_once_and_falls_back_to_the_remaining_one() {
        let mut c = core();
        c.issue_credential("u", "d", 60, 1_000).unwrap();
        c.set_user("u", Some(vec!["g".into()]), None);
        let mut conns = Vec::new();
        for n in ["n0", "n1"] {
            let q = Arc::new(LinkQueue::new(1 << 10));
            let h = Hello { node_id: n.into(), link_version: 1, cores: 1, public_addr: "a".into() };
            conns.push((n, c.node_hello(&h, q.clone()).unwrap(), q));
        }
        let on = |s| {
            vec![PresenceChange::Online(Online {
                user: "u".into(),
                device: "d".into(),
                session_id: s,
                resume: vec![],
            })]
        };
        let off = |s| {
            vec![PresenceChange::Offline(herald_protocol::link::Offline {
                user: "u".into(),
                device: "d".into(),
                session_id: s,
                code: 0,
            })]
        };
        c.presence_changes("n0", conns[0].1, on(1), 1_000_000);
        let first = push(&mut c, TargetSpec::Group("g".into()), 60);
        assert_eq!(c.push_status(first, 1_000_001).unwrap().awaiting_ack, 1);
        // A second session on n1 before n0 reported the first one gone: indexed on n1 only.
        c.presence_changes("n1", conns[1].1, on(2), 1_000_000);
        check_counts(&c);
        let st = c.push_status(first, 1_000_001).unwrap();
        assert_eq!((st.awaiting_ack, st.pending_offline), (1, 0), "its backlog flies on the new session");
        c.presence_changes("n0", conns[0].1, off(1), 1_000_000);
        check_counts(&c);
        assert_eq!(c.online[&("u".into(), "d".into())].node, "n1");
        let second = push(&mut c, TargetSpec::Group("g".into()), 60);
        assert_eq!(c.push_status(second, 1_000_001).unwrap().awaiting_ack, 1);
        // n1 disconnects: nothing online, both pushes pending offline.
        c.node_gone("n1", conns[1].1);
        check_counts(&c);
        for id in [first, second] {
            let st = c.push_status(id, 1_000_001).unwrap();
            assert_eq!((st.awaiting_ack, st.pending_offline), (0, 1));
        }
        assert!(c.online.is_empty() && c.online_idx.is_empty());
        // Leaving the group while online stops the live copy from counting.
        c.presence_changes("n0", conns[0].1, on(3), 1_000_000);
        let third = push(&mut c, TargetSpec::Group("g".into()), 60);
        assert_eq!(c.push_status(third, 1_000_001).unwrap().awaiting_ack, 1);
        c.set_user("u", Some(vec![]), None);
        check_counts(&c);
        let st = c.push_status(third, 1_000_001).unwrap();
        assert_eq!((st.targeted, st.awaiting_ack, st.pending_offline), (1, 0, 1));
        assert_eq!(c.live[&third].count, 0);
    }
}
