//! [`LinkQueue`]: what the control plane has for one gateway node and not yet written.
//!
//! Pushes are bounded (`link_queue_messages`); control messages (tables, subscriptions, kicks)
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
    closed: bool,
}

/// The outbound queue of one node connection, filled under the core lock, drained by the
/// connection's writer task.
#[derive(Debug)]
pub(crate) struct LinkQueue {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
    behind: AtomicBool,
}

impl LinkQueue {
    pub(crate) fn new(capacity: usize) -> LinkQueue {
        LinkQueue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            behind: AtomicBool::new(false),
        }
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
        }
        s.msgs.push_back(msg);
        drop(s);
        self.notify.notify_one();
    }

    /// Queues a control message (never refused).
    pub(crate) fn control(&self, msg: LinkMessage) {
        self.put(self.lock(), msg);
    }

    /// Queues a push if the bound allows; false if the queue is full.
    pub(crate) fn try_push(&self, msg: LinkMessage) -> bool {
        let s = self.lock();
        if s.pushes >= self.capacity {
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
            s.msgs.push_back(m);
        }
        drop(s);
        self.notify.notify_one();
    }

    /// Free push slots.
    pub(crate) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.lock().pushes)
    }

    /// Pushes queued.
    pub(crate) fn pushes(&self) -> usize {
        self.lock().pushes
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
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
        drop(s);
        self.notify.notify_one();
    }

    /// Takes everything queued (tests that read the queue without a writer).
    #[cfg(test)]
    pub(crate) fn take_all(&self) -> Vec<LinkMessage> {
        let mut s = self.lock();
        s.pushes = 0;
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
                        out.push(m);
                    }
                    return true;
                }
            }
            self.notify.notified().await;
        }
    }
}
