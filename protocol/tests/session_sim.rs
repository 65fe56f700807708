//! A client `Session` against a small in-test server built from the frame codec and the
//! gateway's `Liveness` deadline, on a virtual clock (a fixed base `Instant` plus offsets): no
//! sockets, no sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use herald_protocol::code::CloseCode;
use herald_protocol::credential::{self, Claims, KeySet, SigningKey};
use herald_protocol::frame::{
    self, AckRange, Close, Decoder, Frame, GoAway, LoginOk, PushFlags, PushHeader, StreamPos,
};
use herald_protocol::payload::PushPayload;
use herald_protocol::server::{Liveness, Tick};
use herald_protocol::session::{Event, Session, SessionConfig, backoff_ceiling};

const UNIX_BASE_SECS: u64 = 1_700_000_000;
const HEARTBEAT_SECS: u16 = 30;

/// The test server's connection: its deadline, stream offset and the ACK_REQUIRED pushes sent and
/// not yet acknowledged (so each receipt is counted once).
struct SimConn {
    live: Liveness,
    logged_in: bool,
    tx: u64,
    outstanding: BTreeSet<(u32, u32)>,
}

impl SimConn {
    fn accepted(now: Tick, login_timeout_ms: u32) -> Self {
        SimConn {
            live: Liveness::accepted(now, login_timeout_ms),
            logged_in: false,
            tx: 0,
            outstanding: BTreeSet::new(),
        }
    }

    fn padding(&self) -> &'static [u8] {
        frame::padding_for(self.tx)
    }

    fn note_sent(&mut self, n: usize) {
        self.tx += n as u64;
    }

    fn answer_ping(&mut self, nonce: u8, out: &mut BytesMut) {
        frame::encode_pong(nonce, out);
        self.note_sent(2);
    }

    fn track(&mut self, stream: u32, seq: u32) {
        self.outstanding.insert((stream, seq));
    }

    fn on_ack(&mut self, r: AckRange, mut acked: impl FnMut(u32, u32)) {
        let hit: Vec<_> = self.outstanding.range((r.stream, r.first)..=(r.stream, r.last)).copied().collect();
        for (stream, seq) in hit {
            self.outstanding.remove(&(stream, seq));
            acked(stream, seq);
        }
    }

    fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

/// The server side: a store of messages, and at most one connection.
struct SimServer {
    keys: KeySet,
    /// stream → seq → (flags, payload).
    store: BTreeMap<u32, BTreeMap<u32, (PushFlags, Bytes)>>,
    /// Everything the terminal acknowledged, over all connections.
    receipts: Vec<(u32, u32)>,
    /// The resume positions of every LOGIN received.
    logins: Vec<Vec<StreamPos>>,
    conn: Option<SimConn>,
    rx: BytesMut,
    /// Resend every stored message after a login, even ones the terminal said it has.
    ignore_resume: bool,
    pings: usize,
    ack_frames: usize,
}

impl SimServer {
    fn new(keys: KeySet) -> Self {
        SimServer {
            keys,
            store: BTreeMap::new(),
            receipts: Vec::new(),
            logins: Vec::new(),
            conn: None,
            rx: BytesMut::new(),
            ignore_resume: true,
            pings: 0,
            ack_frames: 0,
        }
    }

    fn add(&mut self, stream: u32, seq: u32, flags: PushFlags) {
        let payload =
            PushPayload { push_id: u64::from(stream) * 1000 + u64::from(seq), ..Default::default() };
        self.store
            .entry(stream)
            .or_default()
            .insert(seq, (flags, Bytes::copy_from_slice(&payload.to_bytes())));
    }

    fn accept(&mut self, now: Tick) {
        self.conn = Some(SimConn::accepted(now, 5_000));
        self.rx.clear();
    }

    fn send_push(
        conn: &mut SimConn,
        out: &mut BytesMut,
        stream: u32,
        seq: u32,
        flags: PushFlags,
        payload: &[u8],
    ) {
        let pad = conn.padding();
        out.put_slice(pad);
        conn.note_sent(pad.len());
        let before = out.len();
        frame::encode_push_into(PushHeader { flags, ttl_secs: 60, stream, seq }, payload, out).unwrap();
        conn.note_sent(out.len() - before);
        if flags.contains(PushFlags::ACK_REQUIRED) {
            conn.track(stream, seq);
        }
    }

    /// Pushes `seqs` of `stream` now (they must be in the store).
    fn push_now(&mut self, stream: u32, seqs: &[u32]) -> BytesMut {
        let mut out = BytesMut::new();
        let conn = self.conn.as_mut().expect("connected");
        for &seq in seqs {
            let (flags, payload) = &self.store[&stream][&seq];
            Self::send_push(conn, &mut out, stream, seq, *flags, payload);
        }
        out
    }

    /// Handles bytes from the terminal; returns what the server writes back.
    fn input(&mut self, bytes: &[u8], now: Tick, unix_secs: u64) -> BytesMut {
        let mut out = BytesMut::new();
        let Some(conn) = self.conn.as_mut() else { return out };
        self.rx.extend_from_slice(bytes);
        conn.live.touch(now);
        while let Some(f) = Decoder::default().decode(&mut self.rx).expect("client sends valid frames") {
            let allowed = match f {
                Frame::Login(_) => !conn.logged_in,
                Frame::Ping { .. } | Frame::Ack(_) => conn.logged_in,
                _ => true,
            };
            assert!(allowed, "client sends frames allowed in its state: {f:?}");
            match f {
                Frame::Login(login) => {
                    let claims = self.keys.verify(&login.credential, unix_secs).expect("valid credential");
                    assert_eq!(claims.device.as_bytes(), &login.device[..]);
                    let resume: Vec<StreamPos> = login.resume().collect();
                    conn.live.logged_in(now, u32::from(HEARTBEAT_SECS) * 1000 + 10_000);
                    conn.logged_in = true;
                    let before = out.len();
                    LoginOk {
                        session_id: 1,
                        server_time_ms: unix_secs * 1000,
                        heartbeat_interval_secs: HEARTBEAT_SECS,
                        max_frame_bytes: 65536,
                    }
                    .encode(&mut out);
                    conn.note_sent(out.len() - before);
                    for (&stream, msgs) in &self.store {
                        let have = resume.iter().find(|p| p.stream == stream).map_or(0, |p| p.seq);
                        for (&seq, (flags, payload)) in msgs {
                            if self.ignore_resume || seq > have {
                                Self::send_push(conn, &mut out, stream, seq, *flags, payload);
                            }
                        }
                    }
                    self.logins.push(resume);
                }
                Frame::Ping { nonce } => {
                    self.pings += 1;
                    conn.answer_ping(nonce, &mut out);
                }
                Frame::Ack(ack) => {
                    self.ack_frames += 1;
                    for range in ack.ranges() {
                        conn.on_ack(range, |stream, seq| self.receipts.push((stream, seq)));
                    }
                }
                other => panic!("unexpected frame from the client: {other:?}"),
            }
        }
        out
    }
}

/// The network and the driver: moves bytes between the two ends and applies the session's
/// instructions, on a virtual clock.
struct Net {
    t0: Instant,
    now: Instant,
    client: Session,
    server: SimServer,
    connected: bool,
    /// Whether a connection attempt succeeds.
    reachable: bool,
    /// Bytes in both directions vanish (a dead NAT mapping).
    blackhole: bool,
    /// Every event the session emitted, with its time.
    events: Vec<(Duration, Event)>,
    /// Bytes the client wrote on the wire, per write.
    client_writes: Vec<BytesMut>,
    rx: BytesMut,
}

impl Net {
    fn new(config: SessionConfig, seed: u64, keys: KeySet) -> Self {
        let t0 = Instant::now();
        Net {
            t0,
            now: t0,
            client: Session::new(config, seed),
            server: SimServer::new(keys),
            connected: false,
            reachable: true,
            blackhole: false,
            events: Vec::new(),
            client_writes: Vec::new(),
            rx: BytesMut::new(),
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn tick(&self) -> Tick {
        Tick::from_millis(self.elapsed().as_millis() as u64)
    }

    fn unix_secs(&self) -> u64 {
        UNIX_BASE_SECS + self.elapsed().as_secs()
    }

    fn connect(&mut self) {
        if self.reachable {
            self.connected = true;
            self.rx.clear();
            self.server.accept(self.tick());
            self.client.handle_connected(self.now);
        } else {
            self.client.handle_disconnected(self.now);
        }
        self.pump();
    }

    /// Delivers server bytes to the client, then runs everything to quiescence.
    fn deliver(&mut self, bytes: &[u8]) {
        if self.connected && !self.blackhole {
            self.rx.extend_from_slice(bytes);
            self.client.handle_input(&mut self.rx, self.now);
        }
        self.pump();
    }

    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            let mut out = BytesMut::new();
            if self.client.poll_transmit(&mut out) > 0 {
                progressed = true;
                if self.connected && !self.blackhole {
                    self.client_writes.push(out.clone());
                    let (tick, secs) = (self.tick(), self.unix_secs());
                    let reply = self.server.input(&out, tick, secs);
                    if !reply.is_empty() {
                        self.rx.extend_from_slice(&reply);
                        self.client.handle_input(&mut self.rx, self.now);
                    }
                }
            }
            while let Some(ev) = self.client.poll_event() {
                progressed = true;
                match ev {
                    Event::Dead | Event::GoAway { .. } | Event::Closed { .. } | Event::ProtocolError(_) => {
                        // The driver writes what is queued (a CLOSE) and drops the transport.
                        let mut last = BytesMut::new();
                        self.client.poll_transmit(&mut last);
                        self.connected = false;
                        self.server.conn = None;
                    }
                    Event::Connect => {
                        self.events.push((self.elapsed(), ev));
                        self.connect();
                        continue;
                    }
                    _ => {}
                }
                self.events.push((self.elapsed(), ev));
            }
            if !progressed {
                return;
            }
        }
    }

    /// Advances the clock to the session's next deadline and handles it.
    fn step(&mut self) -> Duration {
        let at = self.client.poll_timeout().expect("session has a deadline");
        assert!(at >= self.now, "deadline in the past");
        self.now = at;
        self.client.handle_timeout(self.now);
        self.pump();
        self.elapsed()
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.client.handle_timeout(self.now);
        self.pump();
    }

    fn take_events(&mut self) -> Vec<(Duration, Event)> {
        std::mem::take(&mut self.events)
    }

    fn pushes(events: &[(Duration, Event)]) -> Vec<(u32, u32)> {
        events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Push { header, payload } => {
                    let p = PushPayload::from_bytes(payload).unwrap();
                    assert_eq!(p.push_id, u64::from(header.stream) * 1000 + u64::from(header.seq));
                    Some((header.stream, header.seq))
                }
                _ => None,
            })
            .collect()
    }
}

fn setup(seed: u64) -> Net {
    let key = SigningKey::new(1, [7; 32]);
    let token = credential::issue(
        &key,
        &Claims {
            key_id: 1,
            user: "alice".into(),
            device: "phone-1".into(),
            issued_at: UNIX_BASE_SECS,
            expires_at: UNIX_BASE_SECS + 86_400 * 30,
        },
    )
    .unwrap();
    let config = SessionConfig::new(Bytes::from(token), Bytes::from_static(b"phone-1"));
    Net::new(config, seed, KeySet::new([key]))
}

#[test]
fn login_heartbeat_loss_dead_detection_and_capped_jittered_backoff() {
    let mut net = setup(42);
    let cfg = SessionConfig::new(Bytes::new(), Bytes::new());
    net.connect();
    assert!(net.client.is_logged_in());
    assert_eq!(net.client.heartbeat_interval(), Duration::from_secs(HEARTBEAT_SECS.into()));
    assert!(matches!(net.take_events()[..], [(_, Event::LoggedIn { .. })]));

    // Healthy: a ping every interval, answered.
    for k in 1..=3u64 {
        assert_eq!(net.step(), Duration::from_secs(30 * k));
        let ping = net.client_writes.last().unwrap();
        assert_eq!(ping.len(), 2, "a heartbeat is two bytes on the wire");
        assert_eq!(ping[0], frame::T_PING);
    }
    assert_eq!(net.server.pings, 3);
    assert_eq!(net.take_events().len(), 3, "three pongs");

    // The path dies silently: the next ping goes nowhere, and the grace after it runs out.
    net.blackhole = true;
    net.reachable = false;
    assert_eq!(net.step(), Duration::from_secs(120));
    assert!(net.take_events().is_empty());
    assert_eq!(net.step(), Duration::from_secs(130));
    let ev = net.take_events();
    assert_eq!(ev[0].1, Event::Dead);
    assert!(!net.client.is_logged_in());

    // Reconnect attempts fail; their delays are full-jitter under a doubling, capped ceiling.
    let mut last_fail = Duration::from_secs(130);
    let mut delays = Vec::new();
    for _ in 0..14 {
        let at = net.step();
        delays.push(at - last_fail);
        last_fail = at;
        let ev = net.take_events();
        assert_eq!(ev[0].1, Event::Connect);
    }
    for (attempt, d) in delays.iter().enumerate() {
        assert!(*d <= backoff_ceiling(&cfg, attempt as u32), "attempt {attempt}: {d:?}");
        assert!(*d <= cfg.backoff_max);
    }
    let distinct: BTreeSet<_> = delays.iter().collect();
    assert!(distinct.len() > 10, "delays are jittered: {delays:?}");

    // The network comes back: the next attempt logs in and the backoff starts over.
    net.blackhole = false;
    net.reachable = true;
    net.step();
    assert!(net.client.is_logged_in());
    net.client.handle_disconnected(net.now);
    let start = net.elapsed();
    let again = net.step() - start;
    assert!(again <= cfg.backoff_initial, "backoff reset after login: {again:?}");
}

#[test]
fn backoff_ceiling_doubles_then_caps_and_the_mean_delay_follows() {
    let cfg = SessionConfig::new(Bytes::new(), Bytes::new());
    let ceilings: Vec<Duration> = (0..14).map(|a| backoff_ceiling(&cfg, a)).collect();
    assert_eq!(ceilings[0], cfg.backoff_initial);
    for w in ceilings.windows(2) {
        assert!(w[1] == w[0] * 2 || w[1] == cfg.backoff_max);
    }
    assert_eq!(*ceilings.last().unwrap(), cfg.backoff_max);
    assert_eq!(backoff_ceiling(&cfg, u32::MAX), cfg.backoff_max);

    // Over many terminals (seeds), the mean delay of attempt k is about ceiling(k)/2.
    let seeds = 400u64;
    let mut means = [Duration::ZERO; 12];
    for seed in 1..=seeds {
        let mut net = setup(seed);
        net.reachable = false;
        net.connect();
        let mut last = Duration::ZERO;
        for mean in means.iter_mut() {
            let at = net.step();
            *mean += (at - last) / seeds as u32;
            last = at;
        }
    }
    for (k, mean) in means.iter().enumerate() {
        let half = ceilings[k] / 2;
        let lo = half.mul_f64(0.8);
        let hi = half.mul_f64(1.2);
        assert!(*mean >= lo && *mean <= hi, "attempt {k}: mean {mean:?}, expected about {half:?}");
    }
}

#[test]
fn resume_after_reconnect_delivers_each_message_once() {
    let mut net = setup(7);
    let ack = PushFlags::ACK_REQUIRED;
    for seq in 1..=10 {
        net.server.add(7, seq, ack);
    }
    for seq in 1..=5 {
        net.server.add(9, seq, ack.with(PushFlags::HIGH_PRIORITY));
    }

    // First connection: the server's burst is cut mid-frame by a network failure.
    net.reachable = true;
    net.connected = true;
    net.server.accept(net.tick());
    net.client.handle_connected(net.now);
    let mut login = BytesMut::new();
    net.client.poll_transmit(&mut login);
    let reply = net.server.input(&login, net.tick(), net.unix_secs());
    let cut = reply.len() * 2 / 3;
    net.deliver(&reply[..cut]);
    net.connected = false;
    net.server.conn = None;
    net.client.handle_disconnected(net.now);
    let first = Net::pushes(&net.take_events());
    assert!(first.len() > 3 && first.len() < 15, "{first:?}");
    let expect_resume: Vec<StreamPos> = {
        let mut high: BTreeMap<u32, u32> = BTreeMap::new();
        for &(s, q) in &first {
            high.insert(s, q);
        }
        high.into_iter().map(|(stream, seq)| StreamPos { stream, seq }).collect()
    };
    assert_eq!(net.client.resume_positions(), expect_resume);

    // Reconnect: the server resends everything it stores, delivered or not.
    while !net.client.is_logged_in() {
        net.step();
    }
    assert_eq!(net.server.logins.last().unwrap(), &expect_resume, "LOGIN carries the resume positions");
    let second = Net::pushes(&net.take_events());
    let mut all = first.clone();
    all.extend(&second);
    let unique: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "no message emitted twice: {all:?}");
    assert_eq!(unique.len(), 15);
    for s in [7u32, 9] {
        let seqs: Vec<u32> = all.iter().filter(|m| m.0 == s).map(|m| m.1).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "stream {s} in order: {seqs:?}");
    }

    // The acks of the second connection cover everything, redelivered duplicates included.
    net.advance(Duration::from_secs(1));
    let receipts: BTreeSet<_> = net.server.receipts.iter().copied().collect();
    assert_eq!(receipts, unique);
    assert_eq!(net.server.conn.as_ref().unwrap().outstanding(), 0);

    // A third login, after a redelivery of out-of-order leftovers, still emits nothing new.
    net.server.conn = None;
    net.connected = false;
    net.client.handle_disconnected(net.now);
    while !net.client.is_logged_in() {
        net.step();
    }
    assert_eq!(
        net.server.logins.last().unwrap(),
        &vec![StreamPos { stream: 7, seq: 10 }, StreamPos { stream: 9, seq: 5 }]
    );
    assert!(Net::pushes(&net.take_events()).is_empty());
}

#[test]
fn out_of_order_messages_are_deduplicated_and_acked_selectively() {
    let mut net = setup(3);
    // A stream with gaps: 3 and 6 are missing when the terminal logs in.
    for seq in [1, 2, 4, 5, 7] {
        net.server.add(1, seq, PushFlags::ACK_REQUIRED);
    }
    net.server.add(2, 1, PushFlags::default());
    net.connect();
    let got = Net::pushes(&net.take_events());
    assert_eq!(got, vec![(1, 1), (1, 2), (1, 4), (1, 5), (1, 7), (2, 1)]);
    assert_eq!(
        net.client.resume_positions(),
        vec![StreamPos { stream: 1, seq: 2 }, StreamPos { stream: 2, seq: 1 }]
    );
    // Redelivered duplicates, above and below the high-water mark, emit nothing.
    let again = net.server.push_now(1, &[2, 4, 7]);
    net.deliver(&again);
    assert!(Net::pushes(&net.take_events()).is_empty());

    // Nothing acked yet: acks wait for the ack delay, then go out as one frame with a
    // cumulative range up to the high-water mark and selective ranges above it.
    assert_eq!(net.server.ack_frames, 0);
    net.step();
    assert_eq!(net.server.ack_frames, 1);
    let ack_write = net.client_writes.last().unwrap().clone();
    let Some(Frame::Ack(ack)) = Decoder::default().decode(&mut ack_write.clone()).unwrap() else {
        panic!("expected an ack");
    };
    let ranges: Vec<AckRange> = ack.ranges().collect();
    assert_eq!(
        ranges,
        vec![
            AckRange { stream: 1, first: 0, last: 2 },
            AckRange { stream: 1, first: 4, last: 5 },
            AckRange { stream: 1, first: 7, last: 7 },
        ]
    );
    let receipts: BTreeSet<_> = net.server.receipts.iter().copied().collect();
    assert_eq!(receipts, [1, 2, 4, 5, 7].map(|s| (1, s)).into_iter().collect());
    assert_eq!(net.server.receipts.len(), 5, "each receipt reported once");

    // 3 and 6 arrive late: they are new, and the stream becomes contiguous up to 7.
    net.server.add(1, 3, PushFlags::ACK_REQUIRED);
    net.server.add(1, 6, PushFlags::ACK_REQUIRED);
    let late = net.server.push_now(1, &[3, 6]);
    net.deliver(&late);
    assert_eq!(Net::pushes(&net.take_events()), vec![(1, 3), (1, 6)]);
    assert_eq!(net.client.resume_positions()[0], StreamPos { stream: 1, seq: 7 });
    net.step();
    assert_eq!(net.server.receipts.len(), 7);
    assert_eq!(net.server.conn.as_ref().unwrap().outstanding(), 0);
}

#[test]
fn acks_are_batched_by_delay_and_by_count() {
    let mut net = setup(5);
    net.connect();
    net.take_events();
    for seq in 1..=40 {
        net.server.add(3, seq, PushFlags::ACK_REQUIRED);
    }
    let login_time = net.elapsed();
    let first = net.server.push_now(3, &(1..=5).collect::<Vec<_>>());
    net.deliver(&first);
    assert_eq!(Net::pushes(&net.take_events()).len(), 5);
    assert_eq!(net.server.ack_frames, 0, "acks wait for the delay");
    assert_eq!(net.step() - login_time, Duration::from_millis(200));
    assert_eq!(net.server.ack_frames, 1);
    assert_eq!(net.server.receipts, (1..=5).map(|s| (3, s)).collect::<Vec<_>>());

    // A burst of 35 more: the batch of 32 is flushed at once, the rest waits for the delay.
    let burst = net.server.push_now(3, &(6..=40).collect::<Vec<_>>());
    net.deliver(&burst);
    assert_eq!(net.server.ack_frames, 2);
    assert_eq!(net.server.receipts.len(), 5 + 32);
    net.step();
    assert_eq!(net.server.ack_frames, 3);
    assert_eq!(net.server.receipts, (1..=40).map(|s| (3, s)).collect::<Vec<_>>());
    // Each ack frame was a single cumulative range: 12 bytes of body.
    let acks: Vec<usize> =
        net.client_writes.iter().filter(|w| w[0] == frame::T_ACK).map(|w| w.len()).collect();
    assert_eq!(acks, vec![16, 16, 16]);
}

#[test]
fn goaway_close_and_protocol_errors() {
    let mut net = setup(11);
    net.connect();
    net.take_events();

    // GOAWAY: reconnect no earlier than the hint.
    let mut b = BytesMut::new();
    GoAway { reason: CloseCode::SHUTTING_DOWN, reconnect_after_ms: 2_000 }.encode(&mut b);
    let sent_at = net.elapsed();
    net.deliver(&b);
    let ev = net.take_events();
    assert_eq!(
        ev[0].1,
        Event::GoAway { reason: CloseCode::SHUTTING_DOWN, reconnect_after: Duration::from_secs(2) }
    );
    let back = net.step() - sent_at;
    assert!(back >= Duration::from_secs(2) && back <= Duration::from_millis(2_500), "{back:?}");
    assert!(net.client.is_logged_in());
    net.take_events();

    // A retryable close reconnects; a credential refusal gives up until a new credential.
    b.clear();
    Close::encode_parts(CloseCode::OVERLOADED, "busy", &mut b);
    net.deliver(&b);
    assert!(matches!(
        net.take_events()[0].1,
        Event::Closed { code: CloseCode::OVERLOADED, reconnect: true, .. }
    ));
    assert!(net.client.poll_timeout().is_some());
    net.step();
    assert!(net.client.is_logged_in());
    net.take_events();
    b.clear();
    Close::encode_parts(CloseCode::AUTH_REVOKED, "revoked", &mut b);
    net.deliver(&b);
    let ev = net.take_events();
    assert!(
        matches!(&ev[0].1, Event::Closed { code: CloseCode::AUTH_REVOKED, reconnect: false, reason } if &reason[..] == b"revoked")
    );
    assert!(net.client.gave_up());
    assert_eq!(net.client.poll_timeout(), None);
    let token = net.client_token();
    net.client.set_credential(token);
    net.pump();
    assert!(net.client.is_logged_in());

    // Garbage from the server: a protocol error, a CLOSE queued for it, a reconnect scheduled.
    net.take_events();
    net.rx.clear();
    let mut garbage = BytesMut::from(&[0x7fu8, 1, 2, 3][..]);
    net.client.handle_input(&mut garbage, net.now);
    let mut close = BytesMut::new();
    net.client.poll_transmit(&mut close);
    let Some(Frame::Close(c)) = Decoder::default().decode(&mut close).unwrap() else {
        panic!("expected a close");
    };
    assert_eq!(c.code, CloseCode::PROTOCOL_ERROR);
    assert!(matches!(net.client.poll_event(), Some(Event::ProtocolError(_))));
    assert!(!net.client.is_logged_in());
    assert!(net.client.poll_timeout().is_some());

    // A push before LOGIN_OK is a protocol error too.
    let mut fresh = setup(12);
    fresh.client.handle_connected(fresh.now);
    let mut push = BytesMut::new();
    frame::encode_push_into(
        PushHeader { flags: PushFlags::default(), ttl_secs: 0, stream: 1, seq: 1 },
        &[],
        &mut push,
    )
    .unwrap();
    fresh.client.handle_input(&mut push, fresh.now);
    assert!(matches!(fresh.client.poll_event(), Some(Event::ProtocolError(_))));
}

#[test]
fn a_missing_login_ok_is_a_dead_connection() {
    let mut net = setup(13);
    net.blackhole = true;
    net.connect();
    let cfg = SessionConfig::new(Bytes::new(), Bytes::new());
    assert_eq!(net.step(), cfg.login_timeout);
    assert_eq!(net.take_events()[0].1, Event::Dead);
}

impl Net {
    fn client_token(&self) -> Bytes {
        let key = SigningKey::new(1, [7; 32]);
        let claims = Claims {
            key_id: 1,
            user: "alice".into(),
            device: "phone-1".into(),
            issued_at: self.unix_secs(),
            expires_at: self.unix_secs() + 3600,
        };
        Bytes::from(credential::issue(&key, &claims).unwrap())
    }
}
