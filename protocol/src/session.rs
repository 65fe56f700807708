//! The terminal (client) side of a connection as a sans-IO state machine, in the manner of
//! quinn-proto: the driver feeds it bytes and the time, and polls out bytes to write, the next
//! deadline and events.
//!
//! Time is a [`std::time::Instant`] passed in by the driver; the session never reads a clock, so
//! tests run it on a virtual clock (a fixed base `Instant` plus offsets).
//!
//! A driver loop:
//! 1. open a transport, call [`Session::handle_connected`];
//! 2. on bytes, append them to a receive buffer and call [`Session::handle_input`];
//! 3. when the deadline of [`Session::poll_timeout`] passes, call [`Session::handle_timeout`];
//! 4. after each call, write what [`Session::poll_transmit`] gives and handle every
//!    [`Session::poll_event`]: on [`Event::Dead`], [`Event::GoAway`], [`Event::Closed`] or
//!    [`Event::ProtocolError`] flush the transmit buffer once more and drop the transport; on
//!    [`Event::Connect`] open a new one;
//! 5. if the transport fails on its own, call [`Session::handle_disconnected`].
//!
//! Delivery is at least once from the server; the session turns it into exactly once towards the
//! application by remembering, per stream, the contiguous high-water mark and a bounded set of
//! sequences seen above it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::code::CloseCode;
use crate::frame::{
    self, Ack, AckRange, Close, DecodeError, Decoder, Frame, Login, PushFlags, PushHeader, StreamPos,
};

/// How a session behaves. Durations carry their unit in their type.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The credential token text sent in the login.
    pub credential: Bytes,
    /// The device id sent in the login; must match the credential's.
    pub device: Bytes,
    /// Largest frame accepted from the server, prefix included.
    pub max_frame_bytes: usize,
    /// How long to wait for LOGIN_OK after connecting before the connection is declared dead.
    pub login_timeout: Duration,
    /// Heartbeat interval used if the server's LOGIN_OK says 0.
    pub default_heartbeat_interval: Duration,
    /// After a PING, how long to wait for any byte from the server before declaring it dead.
    pub dead_grace: Duration,
    /// How long a received push may wait for its ack to be batched with others.
    pub ack_delay: Duration,
    /// Pending acknowledgements that force a flush regardless of `ack_delay`.
    pub ack_batch: usize,
    /// Sequences remembered above a stream's contiguous high-water mark. When a gap would need
    /// more, the oldest gap is given up (the messages in it are treated as never coming).
    pub max_out_of_order: usize,
    /// Ceiling of the first reconnect delay; doubles with each failed attempt.
    pub backoff_initial: Duration,
    /// Cap of the reconnect delay ceiling.
    pub backoff_max: Duration,
}

impl SessionConfig {
    /// Defaults suited to a mobile terminal.
    pub fn new(credential: Bytes, device: Bytes) -> Self {
        SessionConfig {
            credential,
            device,
            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
            login_timeout: Duration::from_secs(10),
            default_heartbeat_interval: Duration::from_secs(240),
            dead_grace: Duration::from_secs(10),
            ack_delay: Duration::from_millis(200),
            ack_batch: 32,
            max_out_of_order: 64,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// What the session tells its driver and the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time to open a transport (the reconnect delay passed); call
    /// [`Session::handle_connected`] once it is open, [`Session::handle_disconnected`] if it fails.
    Connect,
    /// The server accepted the login.
    LoggedIn { session_id: u64, heartbeat_interval: Duration },
    /// A message the application has not seen before. `payload` is a slice of the receive buffer.
    Push { header: PushHeader, payload: Bytes },
    /// The server answered a heartbeat.
    Pong { nonce: u8 },
    /// The server asked us to leave; drop the transport, a reconnect is scheduled after its hint.
    GoAway { reason: CloseCode, reconnect_after: Duration },
    /// The server closed the connection. `reconnect` is false when retrying cannot help (the
    /// credential is refused, or another connection replaced this one): the session gave up
    /// until [`Session::set_credential`].
    Closed { code: CloseCode, reason: Bytes, reconnect: bool },
    /// No byte from the server within the grace after a PING (or no LOGIN_OK in time); drop the
    /// transport, a reconnect is scheduled.
    Dead,
    /// The server sent bytes that are not a valid frame here; a CLOSE is queued, drop the
    /// transport after writing it, a reconnect is scheduled.
    ProtocolError(DecodeError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Never connected: the driver connects when it likes.
    Idle,
    /// Waiting for the reconnect delay to pass.
    Backoff {
        until: Instant,
    },
    /// [`Event::Connect`] was emitted; waiting for the driver to connect.
    Connecting,
    /// LOGIN sent, LOGIN_OK not yet received.
    LoggingIn {
        deadline: Instant,
    },
    Active,
    /// Retrying cannot help until the application gives a new credential.
    GaveUp,
}

/// What this terminal holds of one stream.
#[derive(Debug, Clone, Default)]
struct StreamState {
    /// Every message with `seq <= contiguous` has been delivered (or given up).
    contiguous: u32,
    /// Delivered sequences above `contiguous + 1`, sorted, at most `max_out_of_order`.
    above: Vec<u32>,
}

impl StreamState {
    /// Records `seq`; returns whether it is new.
    fn record(&mut self, seq: u32, max_out_of_order: usize) -> bool {
        if seq <= self.contiguous {
            return false;
        }
        if seq == self.contiguous + 1 {
            self.contiguous = seq;
            self.absorb();
            return true;
        }
        match self.above.binary_search(&seq) {
            Ok(_) => false,
            Err(at) => {
                self.above.insert(at, seq);
                if self.above.len() > max_out_of_order {
                    // Give the oldest gap up: sequences below the first remembered one are
                    // treated as never coming, so memory stays bounded.
                    self.contiguous = self.above[0];
                    self.above.remove(0);
                    self.absorb();
                }
                true
            }
        }
    }

    fn absorb(&mut self) {
        let run = self
            .above
            .iter()
            .zip(1u32..)
            .take_while(|&(&s, i)| Some(s) == self.contiguous.checked_add(i))
            .count();
        if run > 0 {
            self.contiguous = self.above[run - 1];
            self.above.drain(..run);
        }
    }
}

/// Seeded xorshift64* generator: reproducible jitter without a dependency.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..=max`.
    fn up_to(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        let r = (u128::from(self.next()) * (u128::from(nanos) + 1)) >> 64;
        Duration::from_nanos(r as u64)
    }
}

/// The terminal's session: survives reconnects, so dedup state and backoff carry over.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    decoder: Decoder,
    state: State,
    rng: Rng,
    /// Failed attempts since the last successful login.
    attempt: u32,
    streams: BTreeMap<u32, StreamState>,
    /// `(stream, seq)` of received ACK_REQUIRED pushes not yet acknowledged.
    pending_acks: Vec<(u32, u32)>,
    ack_deadline: Option<Instant>,
    heartbeat_interval: Duration,
    last_send: Option<Instant>,
    last_recv: Option<Instant>,
    /// When the unanswered PING was sent.
    ping_sent: Option<Instant>,
    ping_nonce: u8,
    out: BytesMut,
    events: VecDeque<Event>,
}

impl Session {
    /// A session that has not connected yet. `seed` drives the reconnect jitter; give each
    /// terminal a different one (e.g. from its device id) so a fleet does not reconnect in step.
    pub fn new(config: SessionConfig, seed: u64) -> Self {
        Session {
            decoder: Decoder::new(config.max_frame_bytes),
            heartbeat_interval: config.default_heartbeat_interval,
            config,
            state: State::Idle,
            rng: Rng::new(seed),
            attempt: 0,
            streams: BTreeMap::new(),
            pending_acks: Vec::new(),
            ack_deadline: None,
            last_send: None,
            last_recv: None,
            ping_sent: None,
            ping_nonce: 0,
            out: BytesMut::new(),
            events: VecDeque::new(),
        }
    }

    /// Whether the server accepted the login on the current connection.
    pub fn is_logged_in(&self) -> bool {
        self.state == State::Active
    }

    /// Whether the session stopped retrying (see [`Event::Closed`]).
    pub fn gave_up(&self) -> bool {
        self.state == State::GaveUp
    }

    /// The heartbeat interval in force (the server's, once logged in).
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// What the next LOGIN will claim: per stream, the highest sequence held contiguously.
    pub fn resume_positions(&self) -> Vec<StreamPos> {
        self.streams
            .iter()
            .filter(|(_, s)| s.contiguous > 0)
            .map(|(&stream, s)| StreamPos { stream, seq: s.contiguous })
            .collect()
    }

    /// Replaces the credential (e.g. after [`CloseCode::AUTH_EXPIRED`]). A session that gave up
    /// asks to connect again at once.
    pub fn set_credential(&mut self, credential: Bytes) {
        self.config.credential = credential;
        if self.state == State::GaveUp {
            self.attempt = 0;
            self.state = State::Connecting;
            self.events.push_back(Event::Connect);
        }
    }

    /// Call when a transport to the server is open: queues the LOGIN.
    pub fn handle_connected(&mut self, now: Instant) {
        self.out.clear();
        self.pending_acks.clear();
        self.ack_deadline = None;
        self.ping_sent = None;
        self.last_recv = None;
        let resume = self.resume_positions();
        let login = Login::new(self.config.credential.clone(), self.config.device.clone(), &resume);
        if login.encode(&mut self.out).is_err() {
            // Credential or device id over 64 KiB, or over 65535 streams: nothing a retry fixes.
            self.out.clear();
            self.state = State::GaveUp;
            self.events.push_back(Event::Closed {
                code: CloseCode::AUTH_MALFORMED,
                reason: Bytes::from_static(b"login does not fit the frame format"),
                reconnect: false,
            });
            return;
        }
        self.last_send = Some(now);
        self.state = State::LoggingIn { deadline: now + self.config.login_timeout };
    }

    /// Call when the transport closed or failed to open without the session having asked for
    /// it. Schedules a reconnect with backoff; does nothing if the session already dropped the
    /// connection itself (after an event that said so) or gave up.
    pub fn handle_disconnected(&mut self, now: Instant) {
        match self.state {
            State::Idle | State::Connecting | State::LoggingIn { .. } | State::Active => {
                self.schedule_backoff(now);
            }
            State::Backoff { .. } | State::GaveUp => {}
        }
    }

    /// Feeds bytes from the server. Complete frames are consumed from `buf`; a partial frame
    /// stays for the next call. Bytes arriving while not connected are ignored.
    pub fn handle_input(&mut self, buf: &mut BytesMut, now: Instant) {
        if !matches!(self.state, State::LoggingIn { .. } | State::Active) {
            buf.clear();
            return;
        }
        if !buf.is_empty() {
            self.last_recv = Some(now);
            self.ping_sent = None;
        }
        loop {
            if !matches!(self.state, State::LoggingIn { .. } | State::Active) {
                // A frame ended the connection; what follows it is not ours to read.
                buf.clear();
                return;
            }
            match self.decoder.decode(buf) {
                Ok(Some(frame)) => self.handle_frame(frame, now),
                Ok(None) => return,
                Err(e) => {
                    self.protocol_error(e, now);
                    buf.clear();
                    return;
                }
            }
        }
    }

    fn handle_frame(&mut self, frame: Frame, now: Instant) {
        let logged_in = self.state == State::Active;
        match frame {
            Frame::LoginOk(ok) if !logged_in => {
                self.state = State::Active;
                self.attempt = 0;
                self.heartbeat_interval = if ok.heartbeat_interval_secs == 0 {
                    self.config.default_heartbeat_interval
                } else {
                    Duration::from_secs(ok.heartbeat_interval_secs.into())
                };
                self.events.push_back(Event::LoggedIn {
                    session_id: ok.session_id,
                    heartbeat_interval: self.heartbeat_interval,
                });
            }
            Frame::Push(p) if logged_in => {
                let max = self.config.max_out_of_order;
                let fresh = self.streams.entry(p.stream).or_insert_with(|| StreamState {
                    // The server sends a stream in order, so the first message seen of a
                    // stream the terminal never held is where it starts.
                    contiguous: p.seq - 1,
                    above: Vec::new(),
                });
                let is_new = fresh.record(p.seq, max);
                if p.flags.contains(PushFlags::ACK_REQUIRED) {
                    self.queue_ack(p.stream, p.seq, now);
                }
                if is_new {
                    self.events.push_back(Event::Push { header: p.header(), payload: p.payload });
                }
            }
            Frame::Ping { nonce } => {
                frame::encode_pong(nonce, &mut self.out);
                self.last_send = Some(now);
            }
            Frame::Pong { nonce } => self.events.push_back(Event::Pong { nonce }),
            Frame::GoAway(g) => {
                let hint = Duration::from_millis(g.reconnect_after_ms.into());
                // Jitter on top of the hint so a drained node's terminals do not return in step.
                let until = now + hint + self.rng.up_to(self.config.backoff_initial);
                self.drop_connection(State::Backoff { until });
                self.events.push_back(Event::GoAway { reason: g.reason, reconnect_after: hint });
            }
            Frame::Close(c) => {
                let reconnect = !is_fatal(c.code);
                if reconnect {
                    self.schedule_backoff(now);
                } else {
                    self.drop_connection(State::GaveUp);
                }
                self.events.push_back(Event::Closed { code: c.code, reason: c.reason, reconnect });
            }
            _ => self.protocol_error(
                DecodeError::Malformed { frame: "any", what: "frame not allowed from the server here" },
                now,
            ),
        }
    }

    /// Call when the deadline of [`Session::poll_timeout`] passed (calling early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Backoff { until } if now >= until => {
                self.state = State::Connecting;
                self.events.push_back(Event::Connect);
            }
            State::LoggingIn { deadline } if now >= deadline => self.dead(now),
            State::Active => {
                if self.ping_sent.is_some_and(|at| now >= at + self.config.dead_grace) {
                    self.dead(now);
                    return;
                }
                if self.ack_deadline.is_some_and(|at| now >= at) {
                    self.flush_acks(now);
                }
                let idle_since = self.last_send.unwrap_or(now);
                if self.ping_sent.is_none() && now >= idle_since + self.heartbeat_interval {
                    self.ping_nonce = self.ping_nonce.wrapping_add(1);
                    frame::encode_ping(self.ping_nonce, &mut self.out);
                    self.last_send = Some(now);
                    self.ping_sent = Some(now);
                }
            }
            _ => {}
        }
    }

    /// The next instant [`Session::handle_timeout`] must be called at, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Backoff { until } => Some(until),
            State::LoggingIn { deadline } => Some(deadline),
            State::Active => {
                let ping_or_dead = match self.ping_sent {
                    Some(at) => at + self.config.dead_grace,
                    None => self.last_send? + self.heartbeat_interval,
                };
                Some(self.ack_deadline.map_or(ping_or_dead, |a| a.min(ping_or_dead)))
            }
            State::Idle | State::Connecting | State::GaveUp => None,
        }
    }

    /// Moves the bytes to write into `dst`; returns how many.
    pub fn poll_transmit(&mut self, dst: &mut BytesMut) -> usize {
        let n = self.out.len();
        dst.extend_from_slice(&self.out);
        self.out.clear();
        n
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn queue_ack(&mut self, stream: u32, seq: u32, now: Instant) {
        self.pending_acks.push((stream, seq));
        if self.pending_acks.len() >= self.config.ack_batch.max(1) {
            self.flush_acks(now);
        } else if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + self.config.ack_delay);
        }
    }

    /// Writes one ACK frame for everything pending: per stream a cumulative range (first 0) up to
    /// the contiguous high-water mark, then selective ranges above it.
    fn flush_acks(&mut self, now: Instant) {
        self.ack_deadline = None;
        if self.pending_acks.is_empty() {
            return;
        }
        self.pending_acks.sort_unstable();
        self.pending_acks.dedup();
        let mut ranges: Vec<AckRange> = Vec::with_capacity(self.pending_acks.len());
        for &(stream, seq) in &self.pending_acks {
            let contiguous = self.streams.get(&stream).map_or(0, |s| s.contiguous);
            let (first, last) = if seq <= contiguous { (0, contiguous) } else { (seq, seq) };
            match ranges.last_mut() {
                Some(r) if r.stream == stream && (r.last == last || r.last.checked_add(1) == Some(first)) => {
                    r.last = last;
                }
                _ => ranges.push(AckRange { stream, first, last }),
            }
        }
        self.pending_acks.clear();
        if Ack::new(&ranges).encode(&mut self.out).is_ok() {
            self.last_send = Some(now);
        }
    }

    fn schedule_backoff(&mut self, now: Instant) {
        let ceiling = backoff_ceiling(&self.config, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let until = now + self.rng.up_to(ceiling);
        self.drop_connection(State::Backoff { until });
    }

    fn dead(&mut self, now: Instant) {
        self.schedule_backoff(now);
        self.events.push_back(Event::Dead);
    }

    fn protocol_error(&mut self, e: DecodeError, now: Instant) {
        let code = e.close_code();
        self.schedule_backoff(now);
        // Queued after the drop so the driver can still write it before closing.
        Close::encode_parts(code, "", &mut self.out);
        self.events.push_back(Event::ProtocolError(e));
    }

    /// Forgets everything about the current connection. Unsent acks are dropped: the next
    /// LOGIN's resume positions cover the contiguous ones, and the server redelivers the rest.
    fn drop_connection(&mut self, next: State) {
        self.state = next;
        self.out.clear();
        self.pending_acks.clear();
        self.ack_deadline = None;
        self.ping_sent = None;
    }
}

/// Upper bound of the reconnect delay after `attempt` failed attempts: `initial × 2^attempt`,
/// capped at `backoff_max`. The actual delay is uniform in `0..=ceiling` ("full jitter").
pub fn backoff_ceiling(config: &SessionConfig, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    config.backoff_initial.saturating_mul(factor).min(config.backoff_max)
}

/// Close codes after which reconnecting with the same credential cannot succeed.
pub fn is_fatal(code: CloseCode) -> bool {
    matches!(
        code,
        CloseCode::UNSUPPORTED_VERSION
            | CloseCode::AUTH_MALFORMED
            | CloseCode::AUTH_EXPIRED
            | CloseCode::AUTH_FORGED
            | CloseCode::AUTH_REVOKED
            | CloseCode::DEVICE_MISMATCH
            | CloseCode::REPLACED
    )
}
