//! The server side's deadline for one terminal connection, as the gateway holds it: the login
//! deadline, then the heartbeat grace, in 12 bytes of a slab slot.
//!
//! Time is a [`Tick`]: milliseconds since the owning core's epoch in a `u32`, compared with
//! wrapping arithmetic, so it stays correct across the 49-day wrap as long as a connection is
//! checked more often than every 24 days (the gateway sweeps every few hundred milliseconds).
//!
//! The gateway owns the sweep: it calls [`Liveness::check`] when a connection's deadline comes
//! due and either closes the connection with the returned code or looks again after the
//! returned delay. Acknowledgements need no per-connection state here: a gateway forwards every
//! ACK range as a receipt and the control plane decides what it covers (see PROTOCOL.md §6).

use crate::code::CloseCode;
use crate::frame;

/// Milliseconds since the owning core's epoch, wrapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tick(pub u32);

impl Tick {
    /// From the time elapsed since the core's epoch (truncated to the wrapping `u32`).
    pub fn from_millis(ms: u64) -> Tick {
        Tick(ms as u32)
    }

    /// Milliseconds from `earlier` to `self`, correct across the wrap for spans under 2^31 ms.
    pub fn since(self, earlier: Tick) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }

    #[must_use]
    pub fn plus_millis(self, ms: u32) -> Tick {
        Tick(self.0.wrapping_add(ms))
    }
}

/// When a connection has been silent too long: before login, the login deadline counted from
/// the accept; after it, the heartbeat grace counted from the last bytes received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Last time a byte arrived after login (or the accept time, before login).
    last_seen: Tick,
    /// Silence allowed: the login timeout, then the grace.
    limit_ms: u32,
    logged_in: bool,
}

impl Liveness {
    /// A just-accepted connection, which must log in within `login_timeout_ms`.
    pub fn accepted(now: Tick, login_timeout_ms: u32) -> Self {
        Liveness { last_seen: now, limit_ms: login_timeout_ms, logged_in: false }
    }

    /// Call once the login's credential verified. From now on the connection expires after
    /// `grace_ms` of silence (the heartbeat interval told to the terminal plus a margin).
    pub fn logged_in(&mut self, now: Tick, grace_ms: u32) {
        self.logged_in = true;
        self.limit_ms = grace_ms;
        self.last_seen = now;
    }

    /// Call whenever bytes arrive from the terminal (any frame counts as a heartbeat). Bytes
    /// before login do not extend the login deadline.
    pub fn touch(&mut self, now: Tick) {
        if self.logged_in {
            self.last_seen = now;
        }
    }

    /// At `now`: `Ok(ms)` until the deadline (look again then), or the code to close the
    /// connection with because it has been silent too long.
    pub fn check(&self, now: Tick) -> Result<u32, CloseCode> {
        let silent = now.since(self.last_seen);
        if silent <= self.limit_ms {
            return Ok(self.limit_ms - silent);
        }
        Err(if self.logged_in { CloseCode::HEARTBEAT_TIMEOUT } else { CloseCode::LOGIN_TIMEOUT })
    }
}

/// The two bytes answering a PING, for writers that take a static or stack slice.
pub const fn pong(nonce: u8) -> [u8; 2] {
    [frame::T_PONG, nonce]
}
