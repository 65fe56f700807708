//! The Prometheus endpoint's HTTP server: one thread, non-blocking sockets and `poll(2)`, so
//! scrapes are served concurrently and no client can hold the endpoint:
//!
//! - each connection has one deadline for the whole exchange ([`SCRAPE_DEADLINE`]: request
//!   received and answer written), not a timeout per read that a client trickling a byte at a
//!   time renews forever;
//! - at most [`MAX_SCRAPES`] connections are open at once; a new one past that closes the oldest
//!   (a real scraper takes milliseconds, so the oldest is the stuck one);
//! - a request head over [`MAX_REQUEST_BYTES`] is answered `431` and closed.
//!
//! Connections closed without an answer (deadline, eviction, oversized head) are counted in
//! `herald_metrics_scrapes_failed_total`. Any path is answered with the metrics.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::Registry;

/// Longest time one scrape may take, from accept to the last byte of the answer.
pub(crate) const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once.
pub(crate) const MAX_SCRAPES: usize = 32;
/// Longest request head read.
pub(crate) const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Longest wait in `poll` before `stop` is looked at again.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// Connections accepted per loop turn, so a connect flood cannot starve the open scrapes.
const ACCEPTS_PER_TURN: usize = MAX_SCRAPES;

struct Scrape {
    sock: TcpStream,
    deadline: Instant,
    accepted: Instant,
    request: Vec<u8>,
    /// The answer once the head is complete; `written` bytes of it are sent.
    answer: Option<Vec<u8>>,
    written: usize,
}

enum Step {
    Open,
    Done,
    Failed,
}

impl Scrape {
    fn on_readable(&mut self, registry: &Registry) -> Step {
        let mut chunk = [0u8; 1024];
        loop {
            match self.sock.read(&mut chunk) {
                Ok(0) => return Step::Failed,
                Ok(n) => {
                    self.request.extend_from_slice(&chunk[..n]);
                    if self.request.windows(4).any(|w| w == b"\r\n\r\n") {
                        self.answer = Some(answer(registry));
                        return self.on_writable();
                    }
                    if self.request.len() > MAX_REQUEST_BYTES {
                        let _ = self.sock.write(
                            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        return Step::Failed;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Open,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Step::Failed,
            }
        }
    }

    fn on_writable(&mut self) -> Step {
        let Some(out) = &self.answer else { return Step::Open };
        while self.written < out.len() {
            match self.sock.write(&out[self.written..]) {
                Ok(0) => return Step::Failed,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Open,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Step::Failed,
            }
        }
        Step::Done
    }
}

fn answer(registry: &Registry) -> Vec<u8> {
    let body = registry.render();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Serves the metrics on `listener` until `stop` is set. Runs on its own thread.
pub(crate) fn serve(listener: TcpListener, registry: Arc<Registry>, stop: Arc<AtomicBool>) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let mut open: Vec<Scrape> = Vec::with_capacity(MAX_SCRAPES);
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(MAX_SCRAPES + 1);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = open.iter().map(|s| s.deadline.saturating_duration_since(now)).min().unwrap_or(STOP_CHECK);
        fds.clear();
        fds.push(libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        for s in &open {
            let events = if s.answer.is_some() { libc::POLLOUT } else { libc::POLLIN };
            fds.push(libc::pollfd { fd: s.sock.as_raw_fd(), events, revents: 0 });
        }
        let ms = wait.min(STOP_CHECK).as_millis().max(1) as libc::c_int;
        // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfd structs that lives
        // across the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            // EINTR: look again. Anything else cannot be fixed by retrying at once.
            if std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
                std::thread::sleep(STOP_CHECK);
            }
            continue;
        }
        // Serve the open connections first (their pollfds are indexed as `open` is now).
        let now = Instant::now();
        let mut i = 0;
        let mut k = 1;
        while i < open.len() {
            let ready = fds[k].revents;
            k += 1;
            let step = if ready == 0 {
                Step::Open
            } else if open[i].answer.is_some() {
                open[i].on_writable()
            } else {
                open[i].on_readable(&registry)
            };
            let step = match step {
                Step::Open if now >= open[i].deadline => Step::Failed,
                s => s,
            };
            match step {
                Step::Open => i += 1,
                Step::Done => {
                    open.swap_remove(i);
                }
                Step::Failed => {
                    registry.scrapes_failed.fetch_add(1, Ordering::Relaxed);
                    open.swap_remove(i);
                }
            }
        }
        if fds[0].revents != 0 {
            accept_some(&listener, &mut open, &registry);
        }
    }
}

fn accept_some(listener: &TcpListener, open: &mut Vec<Scrape>, registry: &Registry) {
    for _ in 0..ACCEPTS_PER_TURN {
        let sock = match listener.accept() {
            Ok((s, _)) => s,
            // WouldBlock: nothing more. Other errors (out of descriptors): the next turn retries
            // after a poll; open scrapes keep being served meanwhile.
            Err(_) => return,
        };
        if sock.set_nonblocking(true).is_err() {
            continue;
        }
        if open.len() >= MAX_SCRAPES {
            // Full: the oldest connection is the one most likely stuck.
            if let Some(oldest) = open.iter().enumerate().min_by_key(|(_, s)| s.accepted).map(|(i, _)| i) {
                open.swap_remove(oldest);
                registry.scrapes_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let now = Instant::now();
        open.push(Scrape {
            sock,
            deadline: now + SCRAPE_DEADLINE,
            accepted: now,
            request: Vec::new(),
            answer: None,
            written: 0,
        });
    }
}
