//! A core's inbox: a crossbeam channel plus the waker of the core task that drains it, so other
//! threads (the link thread, other cores) can wake a monoio core that is parked in its driver.
//! The waker slot is locked once per message batch, never per recipient.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::Mutex;

#[derive(Debug, Default)]
struct Shared {
    waker: Mutex<Option<Waker>>,
}

/// The sending side; cheap to clone, usable from any thread.
#[derive(Debug)]
pub(crate) struct MailboxSender<T> {
    tx: Sender<T>,
    shared: Arc<Shared>,
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        MailboxSender { tx: self.tx.clone(), shared: self.shared.clone() }
    }
}

/// The receiving side, owned by one core.
#[derive(Debug)]
pub(crate) struct Mailbox<T> {
    rx: Receiver<T>,
    shared: Arc<Shared>,
}

pub(crate) fn mailbox<T>() -> (MailboxSender<T>, Mailbox<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared::default());
    (MailboxSender { tx, shared: shared.clone() }, Mailbox { rx, shared })
}

impl<T> MailboxSender<T> {
    /// Queues `msg` and wakes the core. Returns false when the core is gone.
    pub(crate) fn send(&self, msg: T) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        let waker = self.shared.waker.lock().take();
        if let Some(w) = waker {
            w.wake();
        }
        true
    }
}

impl<T> Mailbox<T> {
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    /// Waits until a message is queued.
    pub(crate) async fn ready(&self) {
        poll_fn(|cx| {
            if !self.rx.is_empty() {
                return Poll::Ready(());
            }
            *self.shared.waker.lock() = Some(cx.waker().clone());
            if self.rx.is_empty() { Poll::Pending } else { Poll::Ready(()) }
        })
        .await;
    }
}
