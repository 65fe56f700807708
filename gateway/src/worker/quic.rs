//! The core's QUIC task: it owns nothing but the readiness of the core's UDP socket. It waits for
//! a datagram, the earliest connection deadline or work queued by the session logic, runs one
//! turn of the core's [`CoreEndpoint`], and feeds the endpoint's events into the same session
//! logic as TCP ([`Worker::on_input`], `flush_conn`, `finish`).

use std::cell::RefCell;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use herald_protocol::CloseCode;

use super::{CoreCmd, Proto, Transport, Worker};
use crate::outbound::Flushed;
use crate::quic::{AppEvent, CoreEndpoint, Owner};

/// Rounds of drive → events → writes in one turn before other tasks of the core run.
const TURN_ROUNDS: usize = 16;

/// Sets up the core's endpoint on `udp` and spawns its task. Logs and serves no QUIC on failure.
pub(super) fn start(w: &Rc<RefCell<Worker>>, udp: std::net::UdpSocket) {
    let mut wk = w.borrow_mut();
    let Some(shared) = &wk.node.quic else { return };
    let (server, reset_key) = (shared.server.clone(), shared.reset_key.clone());
    // monoio only watches readiness, on a duplicate of the descriptor; every read and write goes
    // through quinn-udp on the original (GSO, GRO, ECN). O_NONBLOCK is set by the endpoint after
    // registration: it is shared by both descriptors.
    let watch = match udp.try_clone().and_then(monoio::net::udp::UdpSocket::from_std) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(core = wk.n, error = %e, "cannot register the QUIC socket");
            return;
        }
    };
    match CoreEndpoint::new(wk.n, wk.node.cores.len(), udp, server, reset_key) {
        Ok(ep) => wk.quic = Some(ep),
        Err(e) => {
            tracing::error!(core = wk.n, error = %e, "cannot set up the QUIC socket");
            return;
        }
    }
    monoio::spawn(run(w.clone(), watch));
}

async fn run(w: Rc<RefCell<Worker>>, watch: monoio::net::udp::UdpSocket) {
    loop {
        let wait = {
            let mut wk = w.borrow_mut();
            let Some(q) = wk.quic.as_mut() else { return };
            q.next_deadline().map(|t| t.saturating_duration_since(Instant::now()))
        };
        let wait = wait.unwrap_or(Duration::from_secs(3600));
        if !wait.is_zero() {
            let work = std::future::poll_fn(|cx| {
                let mut wk = w.borrow_mut();
                match wk.quic.as_mut() {
                    Some(q) if !q.has_work() => {
                        q.set_waker(cx.waker());
                        Poll::Pending
                    }
                    _ => Poll::Ready(()),
                }
            });
            monoio::select! {
                _ = watch.readable(false) => {}
                _ = monoio::time::sleep(wait) => {}
                _ = work => {}
            }
        }
        w.borrow_mut().quic_turn();
    }
}

/// End of a drain: give QUIC connections a moment to close gracefully, then close the rest.
pub(super) async fn linger(w: &Rc<RefCell<Worker>>) {
    let deadline = Instant::now() + Duration::from_millis(500);
    while w.borrow().quic.as_ref().is_some_and(|q| q.open() > 0) && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(q) = w.borrow_mut().quic.as_mut() {
        let now = Instant::now();
        q.close_all(now);
        q.drive(now);
    }
}

impl Worker {
    /// One turn of the endpoint: read, expire deadlines, then drive connections and hand their
    /// events to the sessions until nothing is left to do (or the round budget is spent).
    fn quic_turn(&mut self) {
        let now = Instant::now();
        let Some(q) = self.quic.as_mut() else { return };
        q.recv(now);
        q.expire(now);
        for _ in 0..TURN_ROUNDS {
            let Some(q) = self.quic.as_mut() else { return };
            q.drive(now);
            for (core, d) in q.take_forwards() {
                self.m.quic_forwarded.inc();
                self.node.cores[core].send(CoreCmd::Quic(Box::new(d)));
            }
            let mut any = false;
            while let Some(ev) = self.quic.as_mut().and_then(CoreEndpoint::next_event) {
                any = true;
                self.on_quic_event(ev);
            }
            if !any {
                break;
            }
            self.flush_dirty();
        }
        self.flush_receipts();
    }

    fn on_quic_event(&mut self, ev: AppEvent) {
        match ev {
            AppEvent::Accepted(c) => {
                if self.draining {
                    if let Some(q) = self.quic.as_mut() {
                        q.abort(c, CloseCode::SHUTTING_DOWN.0, Instant::now());
                    }
                    return;
                }
                let (slot, generation) = self.insert_conn(Transport::Quic(c), Proto::Herald);
                if let Some(q) = self.quic.as_mut() {
                    q.attach(c, Owner { slot, generation });
                }
            }
            AppEvent::Input(o, data) => self.quic_input(o, &data, false),
            AppEvent::Eof(o) => self.quic_input(o, &[], true),
            AppEvent::Writable(o) => {
                let Some(c) = self.conn(o.slot, o.generation) else { return };
                let (was_blocked, Transport::Quic(qc)) = (c.writer, &c.transport) else { return };
                let qc = *qc;
                // Still blocked: stays paused (`flush_conn` paused it when it first blocked).
                if self.flush_conn(o.slot) != Flushed::Blocked && was_blocked {
                    self.conns[o.slot].writer = false;
                    if let Some(q) = self.quic.as_mut() {
                        q.pause_input(qc, false);
                    }
                }
            }
            AppEvent::Ended(o) => self.finish(o.slot, o.generation),
        }
    }

    /// Stream bytes (or their end) for a session: the same path as a TCP read.
    fn quic_input(&mut self, o: Owner, data: &[u8], eof: bool) {
        let now = self.now_ms();
        let Some(c) = self.conn(o.slot, o.generation) else { return };
        if c.closing.is_some() {
            // Waiting for a goaway or close to flush: input is dropped, the end of it ends us.
            if eof {
                self.finish(o.slot, o.generation);
            }
            return;
        }
        c.live.touch(herald_protocol::server::Tick::from_millis(now));
        let (mut buf, from_core) = match c.partial.take() {
            Some(p) => (*p, false),
            None => (std::mem::take(&mut self.rbuf), true),
        };
        buf.extend_from_slice(data);
        self.m.bytes_in.add(data.len() as u64);
        if !self.on_input(o.slot, buf, from_core, eof, now) {
            self.finish(o.slot, o.generation);
        }
    }
}
