//! The server side of one terminal connection, as the gateway holds it: small enough that a core
//! keeps tens of thousands in a slab (48 bytes), allocation-free unless a terminal leaves many
//! separate runs of pushes unacknowledged.
//!
//! Time is a [`Tick`]: milliseconds since the owning core's epoch in a `u32`, compared with
//! wrapping arithmetic, so it stays correct across the 49-day wrap as long as a connection is
//! swept more often than every 24 days (the gateway sweeps every second).
//!
//! The gateway owns the sweep: it calls [`ServerConn::expired`] from its timer wheel and closes
//! the connection with the returned code.

use bytes::BytesMut;

use crate::code::CloseCode;
use crate::frame::{self, AckRange, Frame, PROTOCOL_VERSION};

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

/// Largest number of separate outstanding runs a connection may have; over it,
/// [`ServerConn::track`] refuses and the gateway applies its slow-consumer policy.
pub const MAX_OUTSTANDING_RUNS: usize = 1024;

/// One run of consecutive pushes of a stream sent with ACK_REQUIRED and not yet acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Run {
    stream: u32,
    first: u32,
    last: u32,
}

const INLINE_RUNS: usize = 2;

/// Outstanding runs: two inline (a terminal that acks promptly never needs more), else a vector.
#[derive(Debug, Clone)]
enum Outstanding {
    Inline { len: u8, runs: [Run; INLINE_RUNS] },
    Heap(Vec<Run>),
}

impl Outstanding {
    fn as_slice(&self) -> &[Run] {
        match self {
            Outstanding::Inline { len, runs } => &runs[..usize::from(*len)],
            Outstanding::Heap(v) => v,
        }
    }

    fn push(&mut self, run: Run) -> Result<(), OutstandingFull> {
        match self {
            Outstanding::Inline { len, runs } if usize::from(*len) < INLINE_RUNS => {
                runs[usize::from(*len)] = run;
                *len += 1;
            }
            Outstanding::Inline { runs, .. } => {
                let mut v = Vec::with_capacity(INLINE_RUNS * 4);
                v.extend_from_slice(runs);
                v.push(run);
                *self = Outstanding::Heap(v);
            }
            Outstanding::Heap(v) if v.len() >= MAX_OUTSTANDING_RUNS => return Err(OutstandingFull),
            Outstanding::Heap(v) => v.push(run),
        }
        Ok(())
    }

    fn last_mut(&mut self) -> Option<&mut Run> {
        match self {
            Outstanding::Inline { len: 0, .. } => None,
            Outstanding::Inline { len, runs } => Some(&mut runs[usize::from(*len) - 1]),
            Outstanding::Heap(v) => v.last_mut(),
        }
    }

    /// Removes `range` from every run, calling `acked` with each removed part.
    fn remove(&mut self, range: AckRange, mut acked: impl FnMut(AckRange)) {
        // Runs are rebuilt in place; a run cut in two needs one more slot, so work on a vector
        // only when that can happen and the inline array is full.
        let mut kept: [Run; INLINE_RUNS + 1] = [Run::default(); INLINE_RUNS + 1];
        let mut heap: Option<Vec<Run>> = None;
        let mut n = 0usize;
        let mut keep = |r: Run, heap: &mut Option<Vec<Run>>| match heap {
            Some(v) => v.push(r),
            None if n < kept.len() => {
                kept[n] = r;
                n += 1;
            }
            None => {
                let mut v = Vec::with_capacity(n * 2);
                v.extend_from_slice(&kept[..n]);
                v.push(r);
                *heap = Some(v);
            }
        };
        if let Outstanding::Heap(v) = self {
            heap = Some(Vec::with_capacity(v.len() + 1));
        }
        for &run in self.as_slice() {
            let lo = run.first.max(range.first);
            let hi = run.last.min(range.last);
            if run.stream != range.stream || lo > hi {
                keep(run, &mut heap);
                continue;
            }
            acked(AckRange { stream: run.stream, first: lo, last: hi });
            if run.first < lo {
                keep(Run { last: lo - 1, ..run }, &mut heap);
            }
            if hi < run.last {
                keep(Run { first: hi + 1, ..run }, &mut heap);
            }
        }
        *self = match heap {
            Some(v) if v.len() <= INLINE_RUNS => inline_from(&v),
            Some(v) => Outstanding::Heap(v),
            None if n <= INLINE_RUNS => inline_from(&kept[..n]),
            None => Outstanding::Heap(kept[..n].to_vec()),
        };
    }
}

fn inline_from(runs: &[Run]) -> Outstanding {
    let mut arr = [Run::default(); INLINE_RUNS];
    arr[..runs.len()].copy_from_slice(runs);
    Outstanding::Inline { len: runs.len() as u8, runs: arr }
}

/// The connection already has [`MAX_OUTSTANDING_RUNS`] separate unacknowledged runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many unacknowledged pushes on this connection")]
pub struct OutstandingFull;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    AwaitingLogin,
    Active,
}

/// Server-side state of one terminal connection.
#[derive(Debug, Clone)]
pub struct ServerConn {
    outstanding: Outstanding,
    /// Last time a byte arrived (or the accept time, before login).
    last_seen: Tick,
    /// Silence allowed before [`ServerConn::expired`]: the login timeout, then the grace.
    limit_ms: u32,
    phase: Phase,
    /// Bytes written on this connection so far, modulo 16: where the next aligned frame needs
    /// padding.
    tx_phase: u8,
}

impl ServerConn {
    /// A just-accepted connection, which must log in within `login_timeout_ms`.
    pub fn accepted(now: Tick, login_timeout_ms: u32) -> Self {
        ServerConn {
            outstanding: Outstanding::Inline { len: 0, runs: [Run::default(); INLINE_RUNS] },
            last_seen: now,
            limit_ms: login_timeout_ms,
            phase: Phase::AwaitingLogin,
            tx_phase: 0,
        }
    }

    pub fn is_logged_in(&self) -> bool {
        self.phase == Phase::Active
    }

    /// Call once the login's credential verified. From now on the connection expires after
    /// `grace_ms` of silence (the heartbeat interval told to the terminal plus a margin).
    pub fn logged_in(&mut self, now: Tick, grace_ms: u32) {
        self.phase = Phase::Active;
        self.limit_ms = grace_ms;
        self.last_seen = now;
    }

    /// Call whenever bytes arrive from the terminal (any frame counts as a heartbeat).
    pub fn touch(&mut self, now: Tick) {
        if self.phase == Phase::Active {
            self.last_seen = now;
        }
    }

    /// The instant after which the connection is expired, for the gateway's timer wheel.
    pub fn deadline(&self) -> Tick {
        self.last_seen.plus_millis(self.limit_ms)
    }

    /// `Some(code)` if the connection has been silent too long: close it with that code.
    pub fn expired(&self, now: Tick) -> Option<CloseCode> {
        if now.since(self.last_seen) <= self.limit_ms {
            return None;
        }
        Some(match self.phase {
            Phase::AwaitingLogin => CloseCode::LOGIN_TIMEOUT,
            Phase::Active => CloseCode::HEARTBEAT_TIMEOUT,
        })
    }

    /// Checks that the terminal may send `frame` now. Anything else ends the connection with
    /// the returned code.
    pub fn check_frame(&self, frame: &Frame) -> Result<(), CloseCode> {
        match (self.phase, frame) {
            (Phase::AwaitingLogin, Frame::Login(l)) if l.version != PROTOCOL_VERSION => {
                Err(CloseCode::UNSUPPORTED_VERSION)
            }
            (Phase::AwaitingLogin, Frame::Login(_))
            | (_, Frame::Close(_))
            | (Phase::Active, Frame::Ping { .. } | Frame::Ack(_)) => Ok(()),
            _ => Err(CloseCode::PROTOCOL_ERROR),
        }
    }

    /// Call after writing `n` bytes to the connection, so aligned frames get the right padding.
    pub fn note_sent(&mut self, n: usize) {
        self.tx_phase = ((usize::from(self.tx_phase) + n) % frame::FRAME_ALIGN) as u8;
    }

    /// The pad bytes to write before a push or link frame (0 to 15, static).
    pub fn padding(&self) -> &'static [u8] {
        frame::padding_for(u64::from(self.tx_phase))
    }

    /// Answers a heartbeat into `dst`: two bytes, no allocation if `dst` has room.
    pub fn answer_ping(&mut self, nonce: u8, dst: &mut BytesMut) {
        frame::encode_pong(nonce, dst);
        self.note_sent(2);
    }

    /// Records a push sent with ACK_REQUIRED. Pushes of a stream extend the last run when they
    /// follow it, so a burst costs one slot; a push already outstanding (sent again) is not
    /// recorded twice, so its receipt is reported once.
    pub fn track(&mut self, stream: u32, seq: u32) -> Result<(), OutstandingFull> {
        if self.outstanding.as_slice().iter().any(|r| r.stream == stream && (r.first..=r.last).contains(&seq))
        {
            return Ok(());
        }
        if let Some(r) = self.outstanding.last_mut()
            && r.stream == stream
            && r.last.checked_add(1) == Some(seq)
        {
            r.last = seq;
            return Ok(());
        }
        self.outstanding.push(Run { stream, first: seq, last: seq })
    }

    /// Applies one range of a terminal's ACK: calls `acked` with each part of it that was
    /// outstanding (so the gateway reports those receipts once), and forgets them. A range with
    /// `first == 0` is cumulative and needs no special case.
    pub fn on_ack(&mut self, range: AckRange, acked: impl FnMut(AckRange)) {
        self.outstanding.remove(range, acked);
    }

    /// Number of outstanding pushes.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.as_slice().iter().map(|r| u64::from(r.last - r.first) + 1).sum()
    }

    /// The outstanding runs as ranges (for redelivery elsewhere when this connection closes).
    pub fn outstanding_ranges(&self) -> impl Iterator<Item = AckRange> + '_ {
        self.outstanding.as_slice().iter().map(|r| AckRange {
            stream: r.stream,
            first: r.first,
            last: r.last,
        })
    }
}

/// The two bytes answering a PING, for writers that take a static or stack slice.
pub const fn pong(nonce: u8) -> [u8; 2] {
    [frame::T_PONG, nonce]
}
