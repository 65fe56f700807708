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
//!
//! Liveness: this side writes a `Heartbeat` when it has written nothing for
//! `link_heartbeat_secs`, and drops the link (then reconnects and resyncs) when it has read
//! nothing for `link_dead_after_secs` or a write is stuck that long; TCP keepalive backs both.
//! Every message that can grow is split under the frame limit ([`LinkMessage::split`]); a
//! message that still cannot be encoded ends the link (logged, counted), never vanishes.
//! A control plane that answers `Refused` (another live link holds this node id) is retried
//! after 1 s, doubling up to twice the dead-link deadline (when a stale link of ours would have
//! been dropped), each refusal logged as an error and counted.

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
    Hello, LINK_PART_BYTES, LINK_VERSION, LinkMessage, MAX_LINK_FRAME_BYTES, NodeStats, Offline, Online,
    PresenceChange, PublishOutcome, PublishRef, PublishResult, PushOrder, PushReport, Receipt, StreamSeq,
    Tables, Target, TerminalPublish,
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
    /// Estimated bytes of `receipts`, bounded by [`MAX_HELD_RECEIPT_BYTES`].
    receipt_bytes: usize,
    /// Receipts dropped because `receipts` was full (the link down for long under heavy acking).
    dropped_receipts: u64,
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

/// Receipts held for the link (while it is down, or between two flushes) at most, in estimated
/// bytes. Past it a receipt is dropped and counted (`herald_receipts_dropped_total`): the
/// message it acknowledged stays unacknowledged and is delivered again later (at least once),
/// rather than the node's memory growing with a terminal's acks.
const MAX_HELD_RECEIPT_BYTES: usize = 64 * 1024 * 1024;

/// Events the cores' upstream channel holds (about 100 bytes each).
pub(crate) const UPSTREAM_EVENTS: usize = 65_536;

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
                let cost = 64 + user.len() + device.len();
                if self.receipt_bytes + cost > MAX_HELD_RECEIPT_BYTES {
                    self.dropped_receipts += 1;
                    return;
                }
                self.receipt_bytes += cost;
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
    // A longer wait than the backoff, once (after a refusal).
    let mut wait = None;
    let mut refusals = 0u32;
    let cores = node.cores.len();
    loop {
        if finished(&node) {
            return;
        }
        match TcpStream::connect_timeout(&node.config.control_plane_addr, Duration::from_secs(1)) {
            Ok(s) => {
                backoff = BACKOFF_MIN;
                node.metrics.link_connects.fetch_add(1, Ordering::Relaxed);
                let (done, refused) = session(&node, s, &up, &mut state);
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
                if refused {
                    // 1 s, doubling to twice the dead-link deadline: by then the control plane
                    // has dropped a stale link of ours, while a true duplicate is asked rarely.
                    let retry = (Duration::from_secs(1) * (1 << refusals.min(10)))
                        .min(node.config.link_dead_after() * 2);
                    refusals += 1;
                    wait = Some(retry);
                    tracing::error!(
                        retry_ms = retry.as_millis() as u64,
                        node_id = %node.config.node_id,
                        "control plane refused this node; retrying later"
                    );
                } else {
                    refusals = 0;
                    tracing::warn!("link to the control plane lost; reconnecting");
                }
            }
            Err(e) => tracing::debug!(error = %e, "control plane unreachable"),
        }
        // Keep absorbing events while disconnected (receipts, reports, resume positions).
        let until = Instant::now() + wait.take().unwrap_or(backoff);
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
    /// When the last message was written (a heartbeat goes when it is too long ago).
    last_write: Instant,
    parts: Vec<LinkMessage>,
}

impl LinkWriter {
    /// Writes `msg`, split into parts under the frame limit. A part that still cannot be
    /// encoded is an error for the whole link: the caller drops it, reconnects and resyncs, so
    /// nothing is lost silently.
    fn send(&mut self, node: &Node, msg: LinkMessage) -> std::io::Result<()> {
        let mut parts = std::mem::take(&mut self.parts);
        msg.split(LINK_PART_BYTES, &mut parts);
        let mut res = Ok(());
        for part in parts.drain(..) {
            if res.is_ok() {
                res = self.send_one(node, &part);
            }
        }
        self.parts = parts;
        res
    }

    fn send_one(&mut self, node: &Node, msg: &LinkMessage) -> std::io::Result<()> {
        self.buf.clear();
        if let Err(e) = msg.encode(self.offset, &mut self.buf) {
            node.metrics.link_encode_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, message = ?std::mem::discriminant(msg), "cannot encode a link message; dropping the link");
            return Err(std::io::Error::other(e));
        }
        self.stream.write_all(&self.buf).inspect_err(|e| {
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                node.metrics.link_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("the control plane has not read the link for the deadline; dropping it");
            }
        })?;
        self.offset += self.buf.len() as u64;
        self.last_write = Instant::now();
        // A burst's receipts make one large message: do not keep its size allocated.
        if self.buf.capacity() > 1 << 20 {
            self.buf = BytesMut::with_capacity(4096);
        }
        Ok(())
    }
}

/// TCP keepalive on a link socket: the kernel probes an idle link too, so a peer that vanished
/// (power loss, a dropped route) is noticed even if heartbeats are not flowing.
pub(crate) fn keepalive(stream: &TcpStream, every: Duration) {
    let ka = socket2::TcpKeepalive::new().with_time(every).with_interval(every);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::warn!(error = %e, "cannot set TCP keepalive on the link");
    }
}

/// How a connection's reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    Lost,
    /// The control plane refused this node (see [`LinkMessage::Refused`]).
    Refused,
}

/// One connection's life: (the node has finished (stop for good), the control plane refused
/// this node).
fn session(
    node: &Arc<Node>,
    stream: TcpStream,
    up: &Receiver<Upstream>,
    state: &mut UpState,
) -> (bool, bool) {
    let cores = node.cores.len();
    let _ = stream.set_nodelay(true);
    let dead_after = node.config.link_dead_after();
    let heartbeat = node.config.link_heartbeat();
    keepalive(&stream, heartbeat);
    // A silent control plane (stopped, half-open link) is detected by these deadlines.
    let _ = stream.set_read_timeout(Some(dead_after));
    let _ = stream.set_write_timeout(Some(dead_after));
    let Ok(rx_stream) = stream.try_clone() else { return (false, false) };
    let closed = Arc::new(AtomicBool::new(false));
    let reader = {
        let (node, closed) = (node.clone(), closed.clone());
        std::thread::Builder::new().name("herald-link-rx".into()).spawn(move || {
            let end = read_loop(&node, rx_stream);
            closed.store(true, Ordering::SeqCst);
            end
        })
    };
    let Ok(reader) = reader else { return (false, false) };
    let mut w = LinkWriter {
        stream,
        offset: 0,
        buf: BytesMut::with_capacity(4096),
        last_write: Instant::now(),
        parts: Vec::new(),
    };
    while let Ok(ev) = up.try_recv() {
        state.absorb(ev, cores);
    }
    let hello = LinkMessage::Hello(Hello {
        node_id: node.config.node_id.clone(),
        link_version: LINK_VERSION,
        cores: cores as u16,
        public_addr: node.tcp_addr.to_string(),
    });
    let mut ok = w.send(node, hello).is_ok();
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
        node.metrics.upstream_len.store(up.len() as u64, Ordering::Relaxed);
        ok = flush_up(node, &mut w, state).is_ok();
        if ok && last_stats.elapsed() >= STATS_EVERY {
            last_stats = Instant::now();
            let m = &node.metrics;
            let stats = NodeStats {
                connections: m.sum(|c| c.connections.get()),
                deliveries: m.sum(|c| c.deliveries.get()),
                drops: m.sum(|c| c.drops.iter().map(crate::metrics::Cell::get).sum()),
            };
            ok = w.send(node, LinkMessage::Stats(stats)).is_ok();
        }
        if ok && w.last_write.elapsed() >= heartbeat {
            ok = w.send(node, LinkMessage::Heartbeat).is_ok();
        }
        if stop || finished_node {
            finished_node = true;
            break;
        }
    }
    let _ = w.stream.shutdown(Shutdown::Both);
    let refused = reader.join().is_ok_and(|end| end == ReadEnd::Refused);
    (finished_node, refused)
}

fn flush_up(node: &Node, w: &mut LinkWriter, state: &mut UpState) -> std::io::Result<()> {
    if !state.presence.is_empty() {
        w.send(node, LinkMessage::Presence(std::mem::take(&mut state.presence)))?;
    }
    if !state.receipts.is_empty() {
        state.receipt_bytes = 0;
        w.send(node, LinkMessage::Receipts(std::mem::take(&mut state.receipts)))?;
    }
    if !state.reports.is_empty() {
        w.send(node, LinkMessage::Reports(std::mem::take(&mut state.reports)))?;
    }
    // After presence: a will follows its connection's Offline. (Whatever is not written
    // because the link fails is gone with the link: QoS 1 is answered by `link_lost`.)
    state.released += state.publishes.len();
    for p in state.publishes.drain(..) {
        w.send(node, LinkMessage::Publish(p))?;
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
    if state.dropped_receipts > 0 {
        node.metrics
            .receipts_dropped
            .fetch_add(std::mem::take(&mut state.dropped_receipts), Ordering::Relaxed);
    }
    if state.dropped_publishes > 0 {
        node.metrics.publishes_dropped.fetch_add(state.dropped_publishes, Ordering::Relaxed);
        state.dropped_publishes = 0;
    }
}

fn read_loop(node: &Arc<Node>, mut stream: TcpStream) -> ReadEnd {
    let decoder = Decoder::new(MAX_LINK_FRAME_BYTES);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut scratch = AlignedVec::new();
    let mut payload_scratch = AlignedVec::new();
    // The parts of a snapshot received so far (applied with its closing `Tables`).
    let mut parts: Option<Tables> = None;
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return ReadEnd::Lost,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                node.metrics.link_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    dead_after_secs = node.config.link_dead_after_secs,
                    "the control plane sent nothing for the deadline; dropping the link"
                );
                return ReadEnd::Lost;
            }
            Err(_) => return ReadEnd::Lost,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Frame::Link(link))) => match LinkMessage::decode(&link, &mut scratch) {
                    Ok(LinkMessage::Refused(reason)) => {
                        node.metrics.link_refusals.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%reason, node_id = %node.config.node_id, "the control plane refused this node");
                        return ReadEnd::Refused;
                    }
                    Ok(msg) => dispatch(node, msg, &mut payload_scratch, &mut parts),
                    Err(e) => {
                        tracing::error!(error = %e, "bad link message; dropping the link");
                        return ReadEnd::Lost;
                    }
                },
                Ok(Some(other)) => {
                    tracing::error!(frame = ?other, "unexpected frame on the link; dropping it");
                    return ReadEnd::Lost;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "bad link frame; dropping the link");
                    return ReadEnd::Lost;
                }
            }
        }
    }
}

fn dispatch(node: &Arc<Node>, msg: LinkMessage, scratch: &mut AlignedVec, parts: &mut Option<Tables>) {
    match msg {
        LinkMessage::Welcome(w) => {
            // Connected means answered: a TCP connect alone succeeds even to a stopped process.
            node.metrics.link_connected.store(1, Ordering::Relaxed);
            tracing::info!(epoch = w.epoch, "control plane welcomed this node");
        }
        LinkMessage::Heartbeat => {}
        // A snapshot in parts applies at once with its last part, never half of it.
        LinkMessage::TablesPart(t) => parts.get_or_insert_with(Tables::default).extend(t),
        LinkMessage::Tables(t) => {
            let t = match parts.take() {
                Some(mut whole) => {
                    whole.extend(t);
                    whole
                }
                None => t,
            };
            node.tables.store(Snapshot::from_tables(&t));
        }
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
                let bytes = push_weight(&job);
                for (core, c) in node.cores.iter().enumerate() {
                    let cmd = CoreCmd::Push(job.clone());
                    if c.send_bounded(cmd, bytes, MAILBOX_PUSH_BYTES, node.config.link_dead_after()).is_err()
                    {
                        // The core has not taken a push for the whole deadline: drop it there,
                        // counted, and report the core's part so the node's report completes.
                        node.metrics.mailbox_push_drops.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            core,
                            push_id = job.push_id,
                            "a core's mailbox stayed full; push dropped for it"
                        );
                        let _ = node.upstream.send(Upstream::Report {
                            push_id: job.push_id,
                            sent: 0,
                            dropped: 0,
                        });
                    }
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

/// Bytes of pushes a core's mailbox holds at most (see `mailbox.rs` for what happens past it).
pub(crate) const MAILBOX_PUSH_BYTES: usize = 64 * 1024 * 1024;

/// What a push weighs in a core's mailbox: its frame, plus the job around it.
pub(crate) fn push_weight(job: &PushJob) -> usize {
    job.frame.len() + 256
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
    fn receipts_held_for_the_link_are_bounded_in_bytes_and_drops_counted() {
        let mut s = UpState::default();
        let (user, device): (Arc<str>, Arc<str>) = ("u".into(), "d".into());
        let each = 64 + 2;
        let fit = MAX_HELD_RECEIPT_BYTES / each;
        for i in 0..fit + 10 {
            let ev = Upstream::Receipt {
                user: user.clone(),
                device: device.clone(),
                stream: 1,
                first: 0,
                last: i as u32,
            };
            s.absorb(ev, 1);
        }
        assert_eq!((s.receipts.len(), s.dropped_receipts), (fit, 10));
        assert!(s.receipt_bytes <= MAX_HELD_RECEIPT_BYTES);
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
