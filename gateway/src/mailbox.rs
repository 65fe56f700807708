//! A core's inbox: a crossbeam channel plus the waker of the core task that drains it, so other
//! threads (the link thread, other cores) can wake a monoio core that is parked in its driver.
//! The waker slot is locked once per message batch, never per recipient.
//!
//! Pushes are bounded in bytes ([`MailboxSender::send_bounded`]): the link's reader waits for
//! room — which stops it reading the link, so the control plane's bounded queue for this node
//! fills and its "behind" recovery takes over — and past a deadline drops the push for that
//! core (counted). Other commands are always admitted: they are few (one per login, admin
//! change or answer), and the link thread, which the cores wait on, must never wait on a core.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::Mutex;

#[derive(Debug, Default)]
struct Shared {
    waker: Mutex<Option<Waker>>,
    /// Bytes of bounded messages queued (see [`MailboxSender::send_bounded`]).
    bytes: AtomicUsize,
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
        self.wake();
        true
    }

    fn wake(&self) {
        let waker = self.shared.waker.lock().take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues `msg`, weighing `bytes`, once the queued weight leaves room under `cap_bytes`
    /// (an empty mailbox always takes one); waits for room up to `wait`, then gives `msg` back.
    /// The receiver calls [`Mailbox::release`] with the same weight when it takes it.
    pub(crate) fn send_bounded(
        &self,
        msg: T,
        bytes: usize,
        cap_bytes: usize,
        wait: Duration,
    ) -> Result<(), T> {
        let deadline = Instant::now() + wait;
        loop {
            let queued = self.shared.bytes.load(Ordering::Acquire);
            if queued == 0 || queued + bytes <= cap_bytes {
                break;
            }
            if Instant::now() >= deadline {
                return Err(msg);
            }
            // A full mailbox is a core far behind: a millisecond is nothing next to that.
            self.wake();
            std::thread::sleep(Duration::from_millis(1));
        }
        self.shared.bytes.fetch_add(bytes, Ordering::AcqRel);
        if self.tx.send(msg).is_err() {
            self.shared.bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Ok(());
        }
        self.wake();
        Ok(())
    }
}

impl<T> Mailbox<T> {
    /// A message sent with [`MailboxSender::send_bounded`] weighing `bytes` was taken.
    pub(crate) fn release(&self, bytes: usize) {
        self.shared.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_sends_wait_for_room_then_give_the_message_back() {
        let (tx, rx) = mailbox::<u32>();
        // An empty mailbox takes one message even over the bound.
        assert!(tx.send_bounded(1, 100, 50, Duration::ZERO).is_ok());
        let start = Instant::now();
        assert_eq!(tx.send_bounded(2, 10, 50, Duration::from_millis(20)), Err(2));
        assert!(start.elapsed() >= Duration::from_millis(20));
        // Unbounded commands still pass.
        assert!(tx.send(3));
        assert_eq!(rx.try_recv(), Ok(1));
        rx.release(100);
        assert!(tx.send_bounded(4, 30, 50, Duration::ZERO).is_ok());
        assert!(tx.send_bounded(5, 20, 50, Duration::ZERO).is_ok());
        assert_eq!(tx.send_bounded(6, 1, 50, Duration::ZERO), Err(6));
        assert_eq!((rx.try_recv(), rx.try_recv(), rx.try_recv()), (Ok(3), Ok(4), Ok(5)));
    }
}
