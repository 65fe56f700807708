//! What a core's accept loop does besides accepting: keep the terminal connections it holds
//! under its share of [`GatewayConfig::max_connections`](crate::GatewayConfig), and survive
//! accept failures (out of file descriptors, most often) without spinning or flooding the log.
//!
//! - **Over the cap** a new connection is accepted and closed at once: a Herald terminal gets a
//!   CLOSE `OVERLOADED` first (reconnect with backoff, PROTOCOL.md §6), an MQTT one nothing (MQTT has no
//!   message before CONNECT). Accepting keeps the kernel's backlog from filling with
//!   connections nobody will serve, and the refusal is counted
//!   (`herald_connections_refused_total`). The cap is per core (`max_connections / cores`,
//!   rounded up): counting node-wide would put a shared counter on every accept.
//! - **A failed accept** is counted (`herald_accept_errors_total`), logged at most once per
//!   [`LOG_EVERY`] with the number of failures not logged, and followed by a pause that doubles
//!   from [`BACKOFF_MIN`] to [`BACKOFF_MAX`] while failures last.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use herald_protocol::CloseCode;
use herald_protocol::frame::Close;
use monoio::net::TcpStream;

use crate::metrics::CoreMetrics;

/// At most one log line per kind per core this often.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(1);
/// First pause after a failed accept.
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accept attempts while they fail.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Lets one event through per [`LOG_EVERY`]; counts the ones it holds back.
#[derive(Debug)]
pub(super) struct LogLimit {
    next: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub(super) const fn new() -> LogLimit {
        LogLimit { next: None, suppressed: 0 }
    }

    /// `Some(n)`: log now, mentioning `n` events not logged since the last line.
    pub(super) fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|t| now < t) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + LOG_EVERY);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Events held back since the last line (to report when the streak ends).
    pub(super) fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// One accept loop's failure and refusal state.
#[derive(Debug)]
pub(super) struct Gate {
    failures: LogLimit,
    failing: u64,
    backoff: Duration,
    refusals: LogLimit,
}

impl Gate {
    pub(super) const fn new() -> Gate {
        Gate { failures: LogLimit::new(), failing: 0, backoff: BACKOFF_MIN, refusals: LogLimit::new() }
    }

    /// An accept succeeded: a failure streak, if any, is over.
    pub(super) fn accepted(&mut self, core: usize) {
        if self.failing > 0 {
            let not_logged = self.failures.take_suppressed();
            tracing::info!(core, failures = self.failing, not_logged, "accepting again");
            self.failing = 0;
            self.backoff = BACKOFF_MIN;
        }
    }

    /// An accept failed: counts and maybe logs it; returns how long to pause.
    pub(super) fn failed(
        &mut self,
        core: usize,
        error: &std::io::Error,
        m: &CoreMetrics,
        now: Instant,
    ) -> Duration {
        m.accept_errors.inc();
        self.failing += 1;
        if let Some(not_logged) = self.failures.allow(now) {
            tracing::warn!(core, %error, not_logged, pause_ms = self.backoff.as_millis() as u64, "accept failed");
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        pause
    }

    /// Closes a connection accepted over the core's cap, telling a Herald terminal why.
    pub(super) fn refuse(&mut self, core: usize, cap: usize, stream: TcpStream, mqtt: bool, m: &CoreMetrics) {
        m.refused.inc();
        if let Some(not_logged) = self.refusals.allow(Instant::now()) {
            tracing::warn!(
                core,
                cap,
                not_logged,
                "connection refused: the core holds its share of max_connections"
            );
        }
        // SAFETY: `into_raw_fd` hands over the sole owner of the accepted descriptor.
        let sock = unsafe { std::net::TcpStream::from_raw_fd(stream.into_raw_fd()) };
        if mqtt || sock.set_nonblocking(true).is_err() {
            return;
        }
        let mut frame = BytesMut::new();
        Close::encode_parts(CloseCode::OVERLOADED, "connection limit", &mut frame);
        // Best effort, never waiting: a fresh socket's send buffer takes these few bytes.
        let _ = std::io::Write::write(&mut &sock, &frame);
    }
}

/// A core's share of the node's terminal connection cap.
pub(super) fn core_cap(max_connections: usize, cores: usize) -> usize {
    max_connections.div_ceil(cores.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_second_with_the_count_of_lines_held_back() {
        let t0 = Instant::now();
        let mut l = LogLimit::new();
        assert_eq!(l.allow(t0), Some(0));
        for i in 1..100u64 {
            assert_eq!(l.allow(t0 + Duration::from_millis(i * 10 - 5)), None);
        }
        assert_eq!(l.allow(t0 + LOG_EVERY), Some(99));
        assert_eq!(l.allow(t0 + LOG_EVERY + Duration::from_millis(1)), None);
        assert_eq!(l.take_suppressed(), 1);
        assert_eq!(l.allow(t0 + 2 * LOG_EVERY), Some(0));
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_bound_and_reset_on_success() {
        let m = CoreMetrics::default();
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        let mut g = Gate::new();
        let now = Instant::now();
        let pauses: Vec<Duration> = (0..10).map(|_| g.failed(0, &e, &m, now)).collect();
        assert_eq!(pauses[0], BACKOFF_MIN);
        assert_eq!(pauses[1], BACKOFF_MIN * 2);
        assert_eq!(*pauses.last().unwrap(), BACKOFF_MAX);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(m.accept_errors.get(), 10);
        g.accepted(0);
        assert_eq!(g.failed(0, &e, &m, now), BACKOFF_MIN);
    }

    #[test]
    fn the_cap_is_shared_among_cores_rounding_up() {
        assert_eq!(core_cap(100, 2), 50);
        assert_eq!(core_cap(101, 2), 51);
        assert_eq!(core_cap(usize::MAX, 3), usize::MAX.div_ceil(3));
        assert_eq!(core_cap(5, 0), 5);
    }
}
