//! The link client: one TCP connection from this node to the control plane (see
//! `herald_protocol::link` for the conversation). Runs on the `herald-link` thread, with a
//! `herald-link-rx` thread per connection reading what the control plane sends.
//!
//! Down: tables become snapshots; subscriptions, pushes and kicks go to every core's mailbox (a
//! push is encoded into its frame once, here). Up: cores send [`Upstream`] events on one channel;
//! this thread batches them into `Presence`, `Receipts` and `Reports` messages, sums each push's
//! per-core reports into one per node. After a (re)connect it resyncs: `Hello`, then `Online` for
//! every session, which it asks the cores for ([`CoreCmd::Resync`]) instead of mirroring them.
//! Terminals stay connected while the link is down.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use herald_protocol::condition::Condition;
use herald_protocol::frame::{Decoder, Frame, PushFlags, PushHeader, encode_push};
use herald_protocol::link::{
    Hello, LINK_VERSION, LinkMessage, MAX_LINK_FRAME_BYTES, NodeStats, Offline, Online, PresenceChange,
    PublishOutcome, PublishRef, PublishResult, PushOrder, PushReport, Receipt, StreamSeq, Target,
    TerminalPublish,
};
use rkyv::util::AlignedVec;

use crate::Node;
use crate::index::Plan;
use crate::tables::Snapshot;
use crate::worker::{CoreCmd, PushJob};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const STATS_EVERY: Duration = Duration::from_secs(5);

/// What cores report to the control plane.
#[derive(Debug)]
pub(crate) enum Upstream {
    Online {
        core: usize,
        user: Arc<str>,
        device: Arc<str>,
        session_id: u64,
        resume: Vec<StreamSeq>,
    },
    Offline {
        core: usize,
        user: Arc<str>,
        device: Arc<str>,
        session_id: u64,
        code: u16,
    },
    /// A core's logged-in sessions, its answer to [`CoreCmd::Resync`]. It follows the core's
    /// earlier presence events on this channel, so it covers them.
    Live {
        core: usize,
        sessions: Vec<LiveSession>,
    },
    Receipt {
        user: Arc<str>,
        device: Arc<str>,
        stream: u32,
        first: u32,
        last: u32,
    },
    /// One core's part of a push.
    Report {
        push_id: u64,
        sent: u32,
        dropped: u32,
    },
    /// A terminal's message for the control plane (MQTT PUBLISH, will).
    Publish(Box<TerminalPublish>),
    /// The control plane's answer to one, from the link's reader thread: the link thread
    /// forgets it was waiting and passes it to the core.
    PublishResult(PublishResult),
}

/// A logged-in session, as a core lists it for a resync.
#[derive(Debug)]
pub(crate) struct LiveSession {
    pub(crate) user: Arc<str>,
    pub(crate) device: Arc<str>,
    pub(crate) session_id: u64,
}

/// What waits to go up. The link keeps no mirror of who is online: after a (re)connect it asks
/// every core for its live sessions (resyncs are rare; the cores own that information).
#[derive(Debug, Default)]
struct UpState {
    /// A link is up and has said Hello.
    connected: bool,
    /// Per core: its `Live` answer has not arrived yet, so its presence events are dropped (the
    /// answer covers them).
    awaiting: Vec<bool>,
    /// Resume positions of logins the control plane has not heard of yet (made while the link
    /// was down or before their core answered), for the resync's `Online`.
    unsent_resume: HashMap<u64, Vec<StreamSeq>>,
    presence: Vec<PresenceChange>,
    receipts: Vec<Receipt>,
    /// push id → (sent, dropped, cores that reported).
    partial_reports: HashMap<u64, (u32, u32, usize)>,
    reports: Vec<PushReport>,
    /// Terminals' messages dropped while the link was down (QoS 0, or wills beyond the bound).
    dropped_publishes: u64,
    /// Terminals' messages to send; wills wait here while the link is down (up to
    /// [`MAX_HELD_PUBLISHES`]), other messages are answered `Unavailable` or, QoS 0, dropped.
    publishes: Vec<TerminalPublish>,
    /// Sent messages whose answer has not come back: answered `Unavailable` if the link drops
    /// (the terminal sends again; at least once).
    unanswered: HashSet<PublishRef>,
    /// Answers for the cores (delivered by [`deliver_answers`]).
    answers: Vec<PublishResult>,
    /// Terminals' messages that left this state (written, answered or dropped) since the last
    /// [`deliver_answers`], which takes them off `Node::publishes_queued`.
    released: usize,
}

/// Wills held while the link is down; more are dropped (and counted).
const MAX_HELD_PUBLISHES: usize = 65_536;

/// Terminals' messages the node holds for the link at most: past it, cores refuse new PUBLISH
/// (QoS 1: "quota exceeded"; QoS 0: dropped, counted) so a flood, or a slow control plane,
/// cannot grow the node's memory or crowd presence and receipts off the link. Wills are always
/// taken.
pub(crate) const MAX_QUEUED_PUBLISHES: usize = 16_384;

/// Whether the link takes another terminal message now.
pub(crate) fn publish_room(node: &Node) -> bool {
    node.publishes_queued.load(Ordering::Relaxed) < MAX_QUEUED_PUBLISHES
}

/// Hands a terminal's message to the link thread.
pub(crate) fn send_publish(node: &Node, p: TerminalPublish) {
    node.publishes_queued.fetch_add(1, Ordering::Relaxed);
    if node.upstream.send(Upstream::Publish(Box::new(p))).is_err() {
        node.publishes_queued.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UpState {
    /// Whether `core`'s presence events go up now (else a resync will cover them).
    fn live(&self, core: usize) -> bool {
        self.connected && !self.awaiting.get(core).copied().unwrap_or(false)
    }

    /// The link is gone: what was sent (or queued to be) and not answered is answered
    /// `Unavailable`; queued QoS 0 messages are dropped; wills wait for the next link.
    fn link_lost(&mut self) {
        let lost = self
            .unanswered
            .drain()
            .map(|reference| PublishResult { reference, outcome: PublishOutcome::Unavailable });
        self.answers.extend(lost);
        let qos0 = self.publishes.iter().filter(|p| p.reply.is_none() && p.will_delay_secs.is_none()).count();
        self.dropped_publishes += qos0 as u64;
        let before = self.publishes.len();
        self.publishes.retain(|p| p.will_delay_secs.is_some());
        self.released += before - self.publishes.len();
    }

    /// A link is up: forget queued presence and wait for every core's sessions (the caller
    /// asks the cores).
    fn begin_resync(&mut self, cores: usize) {
        self.connected = true;
        self.presence.clear();
        self.awaiting = vec![true; cores];
    }

    fn absorb(&mut self, ev: Upstream, cores: usize) {
        match ev {
            Upstream::Online { core, user, device, session_id, resume } => {
                if !self.live(core) {
                    if !resume.is_empty() {
                        self.unsent_resume.insert(session_id, resume);
                    }
                    return;
                }
                self.presence.push(PresenceChange::Online(Online {
                    user: user.to_string(),
                    device: device.to_string(),
                    session_id,
                    resume,
                }));
            }
            Upstream::Offline { core, user, device, session_id, code } => {
                if !self.live(core) {
                    self.unsent_resume.remove(&session_id);
                    return;
                }
                self.presence.push(PresenceChange::Offline(Offline {
                    user: user.to_string(),
                    device: device.to_string(),
                    session_id,
                    code,
                }));
            }
            Upstream::Live { core, sessions } => {
                // Only the first answer after Hello counts: a later one (to an older request)
                // is already covered by the events that followed the first.
                if !self.connected || !self.awaiting.get(core).copied().unwrap_or(false) {
                    return;
                }
                self.awaiting[core] = false;
                for s in sessions {
                    self.presence.push(PresenceChange::Online(Online {
                        user: s.user.to_string(),
                        device: s.device.to_string(),
                        session_id: s.session_id,
                        resume: self.unsent_resume.remove(&s.session_id).unwrap_or_default(),
                    }));
                }
                if !self.awaiting.contains(&true) {
                    self.unsent_resume = HashMap::new();
                }
            }
            Upstream::Receipt { user, device, stream, first, last } => {
                self.receipts.push(Receipt {
                    user: user.to_string(),
                    device: device.to_string(),
                    stream,
                    first,
                    last,
                });
            }
            Upstream::Publish(p) => {
                let p = *p;
                let unavailable =
                    |reference| PublishResult { reference, outcome: PublishOutcome::Unavailable };
                if self.connected {
                    if let Some(r) = p.reply {
                        self.unanswered.insert(r);
                    }
                    self.publishes.push(p);
                } else if let Some(r) = p.reply {
                    self.answers.push(unavailable(r));
                    self.released += 1;
                } else if p.will_delay_secs.is_some() && self.publishes.len() < MAX_HELD_PUBLISHES {
                    self.publishes.push(p);
                } else {
                    self.dropped_publishes += 1;
                    self.released += 1;
                }
            }
            Upstream::PublishResult(r) => {
                if self.unanswered.remove(&r.reference) {
                    self.answers.push(r);
                }
            }
            Upstream::Report { push_id, sent, dropped } => {
                let e = self.partial_reports.entry(push_id).or_insert((0, 0, 0));
                e.0 += sent;
                e.1 += dropped;
                e.2 += 1;
                if e.2 >= cores {
                    let (sent, dropped, _) = *e;
                    self.partial_reports.remove(&push_id);
                    self.reports.push(PushReport { push_id, sent, dropped });
                }
            }
        }
    }
}

/// Runs the link until the node has drained.
pub(crate) fn run(node: Arc<Node>, up: Receiver<Upstream>) {
    let mut state = UpState::default();
    let mut backoff = BACKOFF_MIN;
    let cores = node.cores.len();
    loop {
        if finished(&node) {
            return;
        }
        match TcpStream::connect_timeout(&node.config.control_plane_addr, Duration::from_secs(1)) {
            Ok(s) => {
                backoff = BACKOFF_MIN;
                node.metrics.link_connects.fetch_add(1, Ordering::Relaxed);
                node.metrics.link_connected.store(1, Ordering::Relaxed);
                let done = session(&node, s, &up, &mut state);
                // Answers the reader passed on before it stopped count; the rest are lost.
                while let Ok(ev) = up.try_recv() {
                    state.absorb(ev, cores);
                }
                state.connected = false;
                state.link_lost();
                deliver_answers(&node, &mut state);
                node.metrics.link_connected.store(0, Ordering::Relaxed);
                if done {
                    return;
                }
                tracing::warn!("link to the control plane lost; reconnecting");
            }
            Err(e) => tracing::debug!(error = %e, "control plane unreachable"),
        }
        // Keep absorbing events while disconnected (receipts, reports, resume positions).
        let until = Instant::now() + backoff;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match up.recv_timeout(left) {
                Ok(ev) => {
                    state.absorb(ev, cores);
                    deliver_answers(&node, &mut state);
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn finished(node: &Node) -> bool {
    node.stopping.load(Ordering::SeqCst) && node.cores_running.load(Ordering::SeqCst) == 0
}

struct LinkWriter {
    stream: TcpStream,
    offset: u64,
    buf: BytesMut,
}

impl LinkWriter {
    fn send(&mut self, msg: &LinkMessage) -> std::io::Result<()> {
        self.buf.clear();
        msg.encode(self.offset, &mut self.buf).map_err(std::io::Error::other)?;
        self.stream.write_all(&self.buf)?;
        self.offset += self.buf.len() as u64;
        // A burst's receipts make one large message: do not keep its size allocated.
        if self.buf.capacity() > 1 << 20 {
            self.buf = BytesMut::with_capacity(4096);
        }
        Ok(())
    }
}

/// One connection's life. True when the node has finished (stop for good).
fn session(node: &Arc<Node>, stream: TcpStream, up: &Receiver<Upstream>, state: &mut UpState) -> bool {
    let cores = node.cores.len();
    let _ = stream.set_nodelay(true);
    let Ok(rx_stream) = stream.try_clone() else { return false };
    let closed = Arc::new(AtomicBool::new(false));
    let reader = {
        let (node, closed) = (node.clone(), closed.clone());
        std::thread::Builder::new().name("herald-link-rx".into()).spawn(move || {
            read_loop(&node, rx_stream);
            closed.store(true, Ordering::SeqCst);
        })
    };
    let Ok(reader) = reader else { return false };
    let mut w = LinkWriter { stream, offset: 0, buf: BytesMut::with_capacity(4096) };
    while let Ok(ev) = up.try_recv() {
        state.absorb(ev, cores);
    }
    let hello = LinkMessage::Hello(Hello {
        node_id: node.config.node_id.clone(),
        link_version: LINK_VERSION,
        cores: cores as u16,
        public_addr: node.tcp_addr.to_string(),
    });
    let mut ok = w.send(&hello).is_ok();
    // The cores' answers replace every presence change queued while the link was down.
    state.begin_resync(cores);
    for c in &node.cores {
        c.send(CoreCmd::Resync);
    }
    let mut last_stats = Instant::now();
    let mut finished_node = false;
    while ok && !closed.load(Ordering::SeqCst) {
        let stop = finished(node);
        match up.recv_timeout(Duration::from_millis(50)) {
            Ok(ev) => {
                state.absorb(ev, cores);
                while let Ok(ev) = up.try_recv() {
                    state.absorb(ev, cores);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => finished_node = true,
        }
        deliver_answers(node, state);
        ok = flush_up(&mut w, state).is_ok();
        if ok && last_stats.elapsed() >= STATS_EVERY {
            last_stats = Instant::now();
            let m = &node.metrics;
            let stats = NodeStats {
                connections: m.sum(|c| c.connections.get()),
                deliveries: m.sum(|c| c.deliveries.get()),
                drops: m.sum(|c| c.drops.iter().map(crate::metrics::Cell::get).sum()),
            };
            ok = w.send(&LinkMessage::Stats(stats)).is_ok();
        }
        if stop || finished_node {
            finished_node = true;
            break;
        }
    }
    let _ = w.stream.shutdown(Shutdown::Both);
    let _ = reader.join();
    finished_node
}

fn flush_up(w: &mut LinkWriter, state: &mut UpState) -> std::io::Result<()> {
    if !state.presence.is_empty() {
        w.send(&LinkMessage::Presence(std::mem::take(&mut state.presence)))?;
    }
    if !state.receipts.is_empty() {
        w.send(&LinkMessage::Receipts(std::mem::take(&mut state.receipts)))?;
    }
    if !state.reports.is_empty() {
        w.send(&LinkMessage::Reports(std::mem::take(&mut state.reports)))?;
    }
    // After presence: a will follows its connection's Offline. (Whatever is not written
    // because the link fails is gone with the link: QoS 1 is answered by `link_lost`.)
    state.released += state.publishes.len();
    for p in state.publishes.drain(..) {
        w.send(&LinkMessage::Publish(p))?;
    }
    Ok(())
}

/// Hands the control plane's answers (and the link's own) to the cores that asked.
fn deliver_answers(node: &Node, state: &mut UpState) {
    for r in state.answers.drain(..) {
        if let Some(core) = node.cores.get(usize::from(r.reference.core)) {
            core.send(CoreCmd::Published(r));
        }
    }
    if state.released > 0 {
        node.publishes_queued.fetch_sub(std::mem::take(&mut state.released), Ordering::Relaxed);
    }
    if state.dropped_publishes > 0 {
        node.metrics.publishes_dropped.fetch_add(state.dropped_publishes, Ordering::Relaxed);
        state.dropped_publishes = 0;
    }
}

fn read_loop(node: &Arc<Node>, mut stream: TcpStream) {
    let decoder = Decoder::new(MAX_LINK_FRAME_BYTES);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut scratch = AlignedVec::new();
    let mut payload_scratch = AlignedVec::new();
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Frame::Link(link))) => match LinkMessage::decode(&link, &mut scratch) {
                    Ok(msg) => dispatch(node, msg, &mut payload_scratch),
                    Err(e) => {
                        tracing::error!(error = %e, "bad link message; dropping the link");
                        return;
                    }
                },
                Ok(Some(other)) => {
                    tracing::error!(frame = ?other, "unexpected frame on the link; dropping it");
                    return;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "bad link frame; dropping the link");
                    return;
                }
            }
        }
    }
}

fn dispatch(node: &Arc<Node>, msg: LinkMessage, scratch: &mut AlignedVec) {
    match msg {
        LinkMessage::Welcome(w) => tracing::info!(epoch = w.epoch, "control plane welcomed this node"),
        LinkMessage::Tables(t) => node.tables.store(Snapshot::from_tables(&t)),
        LinkMessage::TablesDelta(changes) => {
            let cur = node.tables.load_full();
            node.tables.store(cur.with_changes(&changes));
        }
        LinkMessage::Subscriptions(subs) => {
            let subs = Arc::new(subs);
            for c in &node.cores {
                c.send(CoreCmd::Subscriptions(subs.clone()));
            }
        }
        LinkMessage::Push(order) => {
            let mqtt = match node.mqtt_addr {
                Some(_) => crate::mqtt::prepare(&order, &mut node.stream_topics.lock(), scratch),
                None => None,
            };
            if let Some(job) = push_job(order, node.tables.load_full(), mqtt) {
                let job = Arc::new(job);
                for c in &node.cores {
                    c.send(CoreCmd::Push(job.clone()));
                }
            }
        }
        LinkMessage::Kick(k) => {
            let k = Arc::new(k);
            for c in &node.cores {
                c.send(CoreCmd::Kick(k.clone()));
            }
        }
        LinkMessage::PublishResult(r) => {
            let _ = node.upstream.send(Upstream::PublishResult(r));
        }
        other => tracing::warn!(message = ?std::mem::discriminant(&other), "unexpected link message"),
    }
}

fn push_job(order: PushOrder, tables: Arc<Snapshot>, mqtt: Option<crate::mqtt::MqttPush>) -> Option<PushJob> {
    let received = Instant::now();
    let flags = PushFlags(order.flags);
    let header = PushHeader { flags, ttl_secs: order.ttl_secs, stream: order.stream, seq: order.seq };
    let frame = match encode_push(header, &order.payload) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(push_id = order.push_id, error = %e, "push cannot be encoded");
            return None;
        }
    };
    let plan = match order.target {
        Target::User(u) => Plan::User(u.into()),
        Target::Users(us) => Plan::Users(us.into_iter().map(Into::into).collect()),
        Target::Device { user, device } => Plan::Device { user: user.into(), device: device.into() },
        Target::Group(g) => Plan::Group(g.into()),
        Target::Topic(t) => Plan::Topic(t.into()),
        Target::Condition(c) => match Condition::parse(&c) {
            Ok(c) => Plan::Condition(c),
            Err(e) => {
                tracing::error!(push_id = order.push_id, error = %e, "push condition does not parse");
                Plan::Nobody
            }
        },
    };
    Some(PushJob {
        push_id: order.push_id,
        plan,
        frame,
        persistent: flags.contains(PushFlags::ACK_REQUIRED),
        mqtt,
        received,
        tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online(core: usize, session_id: u64, resume: Vec<StreamSeq>) -> Upstream {
        Upstream::Online { core, user: "u".into(), device: "d".into(), session_id, resume }
    }

    fn offline(core: usize, session_id: u64) -> Upstream {
        Upstream::Offline { core, user: "u".into(), device: "d".into(), session_id, code: 0 }
    }

    fn live(core: usize, ids: &[u64]) -> Upstream {
        let sessions = ids
            .iter()
            .map(|&session_id| LiveSession { user: "u".into(), device: "d".into(), session_id })
            .collect();
        Upstream::Live { core, sessions }
    }

    /// (online?, session id, resume length) of what would go up.
    fn sent(s: &mut UpState) -> Vec<(bool, u64, usize)> {
        std::mem::take(&mut s.presence)
            .into_iter()
            .map(|p| match p {
                PresenceChange::Online(o) => (true, o.session_id, o.resume.len()),
                PresenceChange::Offline(o) => (false, o.session_id, 0),
            })
            .collect()
    }

    fn publish(packet_id: Option<u16>, will: bool) -> Upstream {
        Upstream::Publish(Box::new(TerminalPublish {
            user: "u".into(),
            device: "d".into(),
            target: Target::Topic("t".into()),
            body: String::new(),
            ttl_secs: None,
            reply: packet_id.map(|packet_id| PublishRef { core: 0, slot: 1, session_id: 2, packet_id }),
            will_delay_secs: will.then_some(0),
        }))
    }

    #[test]
    fn terminal_messages_are_answered_dropped_or_kept_and_each_is_released_once() {
        let mut s = UpState::default();
        // Link down: QoS 1 is answered at once, QoS 0 dropped, a will kept for the next link.
        s.absorb(publish(Some(1), false), 1);
        s.absorb(publish(None, false), 1);
        s.absorb(publish(None, true), 1);
        assert_eq!((s.answers.len(), s.dropped_publishes, s.publishes.len(), s.released), (1, 1, 1, 2));
        assert_eq!(s.answers[0].outcome, PublishOutcome::Unavailable);
        // Link up: queued to be written; an answer for something never sent is ignored.
        s.begin_resync(1);
        s.absorb(publish(Some(2), false), 1);
        s.absorb(publish(None, false), 1);
        s.absorb(
            Upstream::PublishResult(PublishResult {
                reference: PublishRef { core: 0, slot: 1, session_id: 2, packet_id: 9 },
                outcome: PublishOutcome::Accepted { push_id: 1 },
            }),
            1,
        );
        assert_eq!((s.publishes.len(), s.unanswered.len(), s.answers.len()), (3, 1, 1));
        // The link is lost before they are written: QoS 1 is answered, QoS 0 dropped, the will
        // stays; every message that left is released exactly once.
        s.link_lost();
        assert_eq!(s.publishes.len(), 1);
        assert_eq!(
            s.answers.last().map(|a| (a.reference.packet_id, a.outcome)),
            Some((2, PublishOutcome::Unavailable))
        );
        assert_eq!((s.dropped_publishes, s.released), (2, 4));
    }

    #[test]
    fn a_resync_is_each_cores_answer_then_what_followed_it() {
        let mut s = UpState::default();
        let pos = StreamSeq { stream: 1, seq: 5 };
        // While the link is down: nothing queues but the resume positions.
        s.absorb(online(0, 1, vec![pos]), 2);
        s.absorb(online(1, 2, vec![]), 2);
        s.absorb(online(1, 3, vec![pos]), 2);
        s.absorb(offline(1, 3), 2);
        assert!(sent(&mut s).is_empty());
        assert_eq!(s.unsent_resume.len(), 1);

        s.begin_resync(2);
        // Core 1 answers first; core 0's events before its answer are covered by it.
        s.absorb(live(1, &[2]), 2);
        s.absorb(offline(1, 2), 2);
        s.absorb(online(0, 4, vec![pos]), 2);
        s.absorb(live(0, &[1, 4]), 2);
        s.absorb(online(0, 5, vec![]), 2);
        // A late answer to an older request changes nothing.
        s.absorb(live(0, &[1, 4]), 2);
        assert_eq!(sent(&mut s), vec![(true, 2, 0), (false, 2, 0), (true, 1, 1), (true, 4, 1), (true, 5, 0)]);
        assert!(s.unsent_resume.is_empty());
    }
}
