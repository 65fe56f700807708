//! [`LinkQueue`]: what the control plane has for one gateway node and not yet written.
//!
//! Pushes are bounded in count (`link_queue_messages`) and in bytes (`link_queue_bytes`: a
//! count alone let 65,536 pushes of 16 KiB hold 1 GiB per node); control messages (tables, subscriptions, kicks)
//! are always admitted, because they are few (admin activity, one per login) and losing one
//! would leave the node with wrong tables. When a push does not fit, the core marks the node
//! *behind* (see `Core::node_drained` for the recovery); the writer tells the core once the
//! queue has drained to half its bound.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use herald_protocol::link::LinkMessage;
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct State {
    msgs: VecDeque<LinkMessage>,
    /// `Push` messages among `msgs`.
    pushes: usize,
    /// Bytes of those pushes ([`push_bytes`]).
    push_bytes: usize,
    closed: bool,
}

/// What a queued push holds in memory, roughly: its payload plus the order around it.
pub(crate) fn push_bytes(msg: &LinkMessage) -> usize {
    match msg {
        LinkMessage::Push(o) => o.payload.len() + PUSH_OVERHEAD_BYTES,
        _ => 0,
    }
}

/// A queued push order beyond its payload (the order, its target, the queue slot).
const PUSH_OVERHEAD_BYTES: usize = 128;

/// Slots an emptied queue keeps allocated: a resync of 1.5 million backlog pushes (15,000
/// devices after a link loss) left its `VecDeque` that size for the life of the link.
const KEEP_SLOTS: usize = 1024;

/// The outbound queue of one node connection, filled under the core lock, drained by the
/// connection's writer task.
#[derive(Debug)]
pub(crate) struct LinkQueue {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
    max_bytes: usize,
    behind: AtomicBool,
}

impl LinkQueue {
    pub(crate) fn new(capacity: usize) -> LinkQueue {
        LinkQueue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            max_bytes: usize::MAX,
            behind: AtomicBool::new(false),
        }
    }

    /// Bounds the pushes' bytes as well (`link_queue_bytes`).
    pub(crate) fn with_max_bytes(mut self, max_bytes: usize) -> LinkQueue {
        self.max_bytes = max_bytes.max(1);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, mut s: std::sync::MutexGuard<'_, State>, msg: LinkMessage) {
        if s.closed {
            return;
        }
        if matches!(msg, LinkMessage::Push(_)) {
            s.pushes += 1;
            s.push_bytes += push_bytes(&msg);
        }
        s.msgs.push_back(msg);
        drop(s);
        self.notify.notify_one();
    }

    /// Queues a control message (never refused).
    pub(crate) fn control(&self, msg: LinkMessage) {
        self.put(self.lock(), msg);
    }

    /// Queues a push if the bounds allow; false if the queue is full.
    pub(crate) fn try_push(&self, msg: LinkMessage) -> bool {
        let s = self.lock();
        if s.pushes >= self.capacity || s.push_bytes.saturating_add(push_bytes(&msg)) > self.max_bytes {
            return false;
        }
        self.put(s, msg);
        true
    }

    /// Queues pushes past the bound (a resync, or a login's backlog into an empty queue: the
    /// only ways to make progress when one batch is larger than the bound).
    pub(crate) fn force(&self, msgs: impl IntoIterator<Item = LinkMessage>) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        for m in msgs {
            s.pushes += usize::from(matches!(m, LinkMessage::Push(_)));
            s.push_bytes += push_bytes(&m);
            s.msgs.push_back(m);
        }
        drop(s);
        self.notify.notify_one();
    }

    /// Whether `count` more pushes, whose payloads are `payload_bytes` together, fit within both
    /// bounds.
    pub(crate) fn fits(&self, count: usize, payload_bytes: usize) -> bool {
        let s = self.lock();
        let bytes = payload_bytes.saturating_add(count.saturating_mul(PUSH_OVERHEAD_BYTES));
        s.pushes.saturating_add(count) <= self.capacity
            && s.push_bytes.saturating_add(bytes) <= self.max_bytes
    }

    /// Pushes queued.
    pub(crate) fn pushes(&self) -> usize {
        self.lock().pushes
    }

    /// Whether the queue has drained to half of both bounds: a node that fell behind is resynced.
    pub(crate) fn drained(&self) -> bool {
        let s = self.lock();
        s.pushes <= self.capacity / 2 && s.push_bytes <= self.max_bytes / 2
    }

    pub(crate) fn set_behind(&self, behind: bool) {
        self.behind.store(behind, Ordering::Relaxed);
    }

    pub(crate) fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }

    /// Drops what is queued and wakes the writer to stop.
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.msgs.clear();
        s.pushes = 0;
        s.push_bytes = 0;
        drop(s);
        self.notify.notify_one();
    }

    /// Takes everything queued (tests that read the queue without a writer).
    #[cfg(test)]
    pub(crate) fn take_all(&self) -> Vec<LinkMessage> {
        let mut s = self.lock();
        s.pushes = 0;
        s.push_bytes = 0;
        s.msgs.drain(..).collect()
    }

    /// Moves up to `max` messages into `out`, waiting for one; false once closed.
    pub(crate) async fn pop(&self, out: &mut Vec<LinkMessage>, max: usize) -> bool {
        loop {
            {
                let mut guard = self.lock();
                let s = &mut *guard;
                if s.closed {
                    return false;
                }
                if !s.msgs.is_empty() {
                    let n = s.msgs.len().min(max);
                    for m in s.msgs.drain(..n) {
                        s.pushes -= usize::from(matches!(m, LinkMessage::Push(_)));
                        s.push_bytes -= push_bytes(&m);
                        out.push(m);
                    }
                    if s.msgs.is_empty() && s.msgs.capacity() > KEEP_SLOTS {
                        s.msgs.shrink_to(KEEP_SLOTS);
                    }
                    return true;
                }
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_protocol::link::{PushOrder, Target};

    use super::*;

    fn push(payload_bytes: usize) -> LinkMessage {
        LinkMessage::Push(PushOrder {
            push_id: 1,
            target: Target::Topic("t".into()),
            stream: 1,
            seq: 1,
            flags: 0,
            ttl_secs: 0,
            payload: vec![0; payload_bytes],
            origin: None,
        })
    }

    #[test]
    fn a_queue_emptied_after_a_resync_gives_its_slots_back() {
        let q = LinkQueue::new(8);
        q.force((0..10_000).map(|_| push(16)));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut out = Vec::new();
        while q.pushes() > 0 {
            out.clear();
            assert!(rt.block_on(q.pop(&mut out, 256)));
        }
        assert!(q.lock().msgs.capacity() <= KEEP_SLOTS, "{} slots kept", q.lock().msgs.capacity());
    }

    #[test]
    fn pushes_are_bounded_in_bytes_as_well_as_in_count() {
        // The count alone would take 65,536 pushes of 16 KiB: 1 GiB for one node.
        let q = LinkQueue::new(65_536).with_max_bytes(1 << 20);
        let mut queued = 0;
        while queued < 65_536 && q.try_push(push(16 * 1024)) {
            queued += 1;
        }
        assert_eq!(queued, (1 << 20) / (16 * 1024 + PUSH_OVERHEAD_BYTES));
        assert!(!q.fits(1, 16 * 1024));
        // Control messages are still admitted; small pushes fit in what is left.
        q.control(LinkMessage::Kick(herald_protocol::link::Kick { user: "u".into(), device: None, code: 0 }));
        assert!(q.fits(1, 100));
        assert!(!q.drained());
        let mut out = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(rt.block_on(q.pop(&mut out, queued / 2 + 1)));
        assert!(q.drained());
        assert!(q.try_push(push(16 * 1024)));
    }
}
