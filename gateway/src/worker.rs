//! One core's world: its listener, its connections (a slab), their deadlines (one heap swept by
//! one timer), its subscriber index and the fan-out of pushes to its own connections.
//!
//! Everything here is `!Send` and touched only by the core's thread; other threads reach it
//! through its [`Mailbox`] ([`CoreCmd`]). A TCP connection is no task: it is a slab slot that
//! owns its non-blocking socket, registered in the core's one epoll instance with its (slot,
//! generation) as the event's data. One readiness task per core (`readiness_loop`) waits for the
//! epoll descriptor itself to become readable through monoio (an io_uring poll, or the epoll
//! driver's readiness: both drivers work), then drains `epoll_wait(.., 0)` and reads each ready
//! connection into the core's buffer. So an idle connection holds no task, no future, no `Rc`, no
//! read buffer and no timer: ~380 B less than a task waiting for readiness on an `Rc<TcpStream>`
//! at 15,000 connections (see `bench/RESULTS.md`). Writes go straight to the socket with `writev`
//! from whoever queued them; a connection whose socket is full adds `EPOLLOUT` to its
//! registration and is flushed when the socket becomes writable.
//!
//! Herald-protocol and MQTT connections are the same [`Conn`] with a per-connection
//! [`Proto`]: only decoding, the login packet and the bytes of replies differ (the MQTT side is
//! in `worker::mqtt`); login verification, replacement, presence, deadlines, the index, outbound
//! queues and metrics are shared.
//!
//! QUIC connections (see `crate::quic`) share everything above the transport: a [`Conn`] says
//! which [`Transport`] carries its frames, and the core's QUIC task (`worker::quic`) feeds stream
//! bytes into the same [`Worker::on_input`] that TCP reads go through.

mod accept;
mod creds;
mod mqtt;
mod quic;

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::TcpListener as StdListener;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use herald_protocol::CloseCode;
use herald_protocol::frame::{Close, Decoder, Frame, GoAway, Login, LoginOk, PROTOCOL_VERSION};
use herald_protocol::link::{Kick, StreamSeq, UserSubscriptions};
use herald_protocol::server::{Liveness, Tick, pong};
use monoio::net::udp::UdpSocket as Watch;
use monoio::net::{TcpListener, TcpStream};
use slab::Slab;

use crate::index::{Index, Plan};
use crate::link::{LiveSession, Upstream};
use crate::mailbox::Mailbox;
use crate::metrics::{CoreMetrics, DropReason as DropWhy};
use crate::mqtt::{MqttConn, MqttPush};
use crate::outbound::{Flushed, Outbound, Queued};
use crate::quic::{ConnRef, CoreEndpoint};
use crate::{Driver, Node};

/// Bytes read per `recv` into the core's buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Most bytes read from one connection per readiness event (fairness between connections).
const READ_BUDGET: usize = 256 * 1024;

/// Most commands applied before the queued frames are written (latency of the first ones).
const COMMAND_BATCH: usize = 64;

/// Most readiness events handled before the core's other tasks (commands, timer, accept) run.
const EVENT_BATCH: usize = 256;

/// What a TCP connection is registered for: input and the peer's half-close. Level-triggered:
/// a connection left unread (its read budget spent) or still closing is reported again by the
/// next `epoll_wait`, so nothing has to remember it; and a `shutdown(SHUT_RD)` by the core makes
/// it readable (end of stream), which is how a close from the core's side reaches `finish`.
const READ_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
/// ... and, while its socket is full, writability and the peer's half-close only: a connection
/// whose output is blocked is not read (see [`Worker::flush_conn`]). `EPOLLRDHUP` (and
/// `EPOLLHUP`, always reported) still report a hang-up and the core's own `SHUT_RD`.
const WRITE_EVENTS: u32 = (libc::EPOLLRDHUP | libc::EPOLLOUT) as u32;

/// A message for a core.
#[derive(Debug)]
pub(crate) enum CoreCmd {
    Push(Arc<PushJob>),
    Subscriptions(Arc<Vec<UserSubscriptions>>),
    Kick(Arc<Kick>),
    /// A newer session of `(user, device)` logged in on another core.
    Replace {
        user: Arc<str>,
        device: Arc<str>,
        session_id: u64,
    },
    /// The link (re)connected: answer with `Upstream::Live`.
    Resync,
    /// A datagram another core read for one of this core's QUIC connections.
    Quic(Box<crate::quic::Datagram>),
    /// The control plane's answer to a terminal's message (MQTT PUBACK).
    Published(herald_protocol::link::PublishResult),
    Drain,
}

/// A push as every core sees it: encoded once, targeted once.
#[derive(Debug)]
pub(crate) struct PushJob {
    pub(crate) push_id: u64,
    pub(crate) plan: Plan,
    /// The whole push frame; each core writes these same bytes to each recipient.
    pub(crate) frame: Bytes,
    /// ACK_REQUIRED: never dropped by the backpressure policy (the connection is closed instead).
    pub(crate) persistent: bool,
    /// When the node received it (fan-out latency).
    pub(crate) received: Instant,
    /// The push as MQTT recipients get it (when the node serves MQTT and the push can reach
    /// them).
    pub(crate) mqtt: Option<MqttPush>,
    /// The tables as they were when the push arrived: a group change that arrives on the link
    /// after a push must not change who that push reaches.
    pub(crate) tables: Arc<crate::tables::Snapshot>,
}

const fn pong_table() -> [[u8; 2]; 256] {
    let mut t = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = pong(i as u8);
        i += 1;
    }
    t
}
/// Every possible PONG, so answering a heartbeat allocates nothing.
static PONGS: [[u8; 2]; 256] = pong_table();

#[derive(Debug)]
struct Auth {
    user: Arc<str>,
    device: Arc<str>,
    session_id: u64,
    /// The user's id in the core's index.
    uid: u32,
    /// ACK ranges this connection may still send: [`ACK_CREDIT_START`] plus one per push
    /// queued to it. An honest terminal acks at most what it received; past the credit, ranges
    /// are ignored (counted in `herald_receipts_dropped_total`), so an ACK flood cannot turn
    /// into receipts for the control plane to process.
    ack_credit: u32,
}

/// ACK ranges a connection may send beyond one per push it was sent.
const ACK_CREDIT_START: u32 = 1_024;

/// What carries a connection's frames.
#[derive(Debug)]
enum Transport {
    /// The socket itself (closed when the slot is freed); `fd` is its descriptor, for the raw
    /// syscalls. No task and no `Rc`: the core's readiness loop reads it (see the module doc).
    Tcp { _sock: OwnedFd, fd: RawFd },
    /// A connection of the core's QUIC endpoint; the frames travel on its one stream.
    Quic(ConnRef),
}

/// The wire protocol a connection speaks.
#[derive(Debug)]
enum Proto {
    Herald,
    /// Boxed: a Herald connection should not pay for MQTT's state.
    Mqtt(Box<MqttConn>),
}

#[derive(Debug)]
struct Conn {
    transport: Transport,
    generation: u32,
    proto: Proto,
    auth: Option<Auth>,
    /// Login deadline, then heartbeat grace.
    live: Liveness,
    out: Outbound,
    /// Queued since the last flush of the core's batch.
    dirty: bool,
    /// The socket is full: TCP: registered for `EPOLLOUT` too, flushed when writable; QUIC: the
    /// stream reports writability itself.
    writer: bool,
    /// Being closed with this code; no more frames are read from it.
    closing: Option<CloseCode>,
    /// A partial frame carried over between reads (only while one is in flight; boxed, so an
    /// idle connection pays one pointer for it).
    partial: Option<Box<BytesMut>>,
}

/// Which bound a control frame is under ([`Worker::send_control`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Control {
    /// Sent once per connection (login answer, GOAWAY, CLOSE): always queued.
    Once,
    /// PONG / PINGRESP: replaces a waiting one.
    Pong,
    /// Any other reply: under the queue's bounds, or the connection is closed.
    Reply,
}

/// Why a frame ends a connection or that the peer ended it.
enum Stop {
    /// Close with this code, telling the peer in its protocol (Herald CLOSE, MQTT 5.0
    /// DISCONNECT, or nothing).
    Close(CloseCode),
    /// Send these bytes (if any) and close; the code is for metrics and presence.
    Send(Option<Bytes>, CloseCode),
    PeerClosed,
}

/// The listeners of one core.
#[derive(Debug)]
pub(crate) struct Listeners {
    pub(crate) herald: StdListener,
    pub(crate) mqtt: Option<StdListener>,
    /// The core's QUIC socket.
    pub(crate) quic: Option<std::net::UdpSocket>,
}

struct Worker {
    n: usize,
    node: Arc<Node>,
    m: Arc<CoreMetrics>,
    conns: Slab<Conn>,
    index: Index,
    deadlines: BinaryHeap<Reverse<(u64, u32, u32)>>,
    next_gen: u32,
    rbuf: BytesMut,
    decoder: Decoder,
    dirty: Vec<usize>,
    scratch: Vec<usize>,
    slow: Vec<usize>,
    /// Arrival times of the pushes in the batch being written (fan-out latency).
    pending_fanout: Vec<Instant>,
    epoch: Instant,
    listener_fd: RawFd,
    mqtt_listener_fd: Option<RawFd>,
    /// Where per-connection MQTT PUBLISH headers are encoded (split off, never copied).
    hdr: BytesMut,
    /// Where an MQTT recipient's inbox topic is written for its PUBLISH header.
    inbox: String,
    /// The topic filters granted to the core's MQTT connections.
    filters: crate::mqtt::Filters,
    draining: bool,
    quic: Option<CoreEndpoint>,
    /// The core's epoll instance for its TCP connections (owned by the readiness task's
    /// [`Watch`]).
    epfd: RawFd,
    /// What live sessions' credentials must still satisfy (expiry, revocations, keys).
    creds: creds::Creds,
    /// Terminal acks not yet handed to the link thread, coalesced.
    receipts: crate::receipts::Receipts,
}

/// Runs core `n` until its drain has finished. Called on thread `herald-core-{n}`.
pub(crate) fn run(n: usize, node: Arc<Node>, listener: Listeners, inbox: Mailbox<CoreCmd>) {
    let result = match node.driver {
        Driver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(core_main(n, node.clone(), listener, inbox))),
        _ => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(core_main(n, node.clone(), listener, inbox))),
    };
    if let Err(e) = result {
        tracing::error!(core = n, error = %e, "cannot build the core's runtime");
    }
    node.cores_running.fetch_sub(1, Ordering::SeqCst);
}

async fn core_main(n: usize, node: Arc<Node>, listeners: Listeners, inbox: Mailbox<CoreCmd>) {
    let listener = match TcpListener::from_std(listeners.herald) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(core = n, error = %e, "cannot register the listener");
            return;
        }
    };
    let mqtt_listener = match listeners.mqtt.map(TcpListener::from_std) {
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            tracing::error!(core = n, error = %e, "cannot register the MQTT listener");
            return;
        }
        None => None,
    };
    // SAFETY: plain syscall; the descriptor is owned by `watch` below.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        tracing::error!(core = n, error = %std::io::Error::last_os_error(), "cannot create the epoll instance");
        return;
    }
    // monoio only watches the readability of the epoll descriptor (wrapped as a socket it never
    // reads or writes): an io_uring poll, or a registration in the epoll driver.
    // SAFETY: `epfd` is a fresh descriptor nothing else owns.
    let watch = match Watch::from_std(unsafe { std::net::UdpSocket::from_raw_fd(epfd) }) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(core = n, error = %e, "cannot register the epoll instance");
            return;
        }
    };
    let cfg = &node.config;
    let tick = Duration::from_millis((cfg.login_timeout_ms / 4).clamp(5, 250));
    let w = Rc::new(RefCell::new(Worker {
        n,
        m: node.metrics.cores[n].clone(),
        decoder: Decoder::new(cfg.max_frame_bytes),
        node: node.clone(),
        conns: Slab::new(),
        index: Index::default(),
        deadlines: BinaryHeap::new(),
        next_gen: 0,
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        dirty: Vec::new(),
        scratch: Vec::new(),
        slow: Vec::new(),
        pending_fanout: Vec::new(),
        epoch: Instant::now(),
        listener_fd: listener.as_raw_fd(),
        mqtt_listener_fd: mqtt_listener.as_ref().map(AsRawFd::as_raw_fd),
        hdr: BytesMut::new(),
        inbox: String::new(),
        filters: crate::mqtt::Filters::default(),
        draining: false,
        quic: None,
        epfd,
        creds: creds::Creds::default(),
        receipts: crate::receipts::Receipts::default(),
    }));
    monoio::spawn(readiness_loop(w.clone(), watch));
    monoio::spawn(accept_loop(w.clone(), listener, false));
    if let Some(l) = mqtt_listener {
        monoio::spawn(accept_loop(w.clone(), l, true));
    }
    if let Some(udp) = listeners.quic {
        quic::start(&w, udp);
    }
    monoio::spawn(timer_loop(w.clone(), tick));
    loop {
        inbox.ready().await;
        let drain = {
            let mut wk = w.borrow_mut();
            let mut jobs = 0;
            let mut budget = COMMAND_BATCH;
            while budget > 0
                && let Ok(cmd) = inbox.try_recv()
            {
                budget -= 1;
                if let CoreCmd::Push(job) = &cmd {
                    jobs += 1;
                    inbox.release(crate::link::push_weight(job));
                }
                wk.on_cmd(cmd);
            }
            wk.flush_dirty();
            wk.flush_receipts();
            if jobs > 0 {
                wk.record_fanout();
            }
            (wk.draining, budget == 0)
        };
        if drain.0 {
            break;
        }
        if drain.1 {
            // More commands wait: let connection tasks run before the next batch.
            yield_now().await;
        }
    }
    drain(&w).await;
}

/// Lets every other ready task of the core run once.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

async fn drain(w: &Rc<RefCell<Worker>>) {
    let timeout = Duration::from_millis(w.borrow().node.config.drain_timeout_ms);
    let deadline = Instant::now() + timeout;
    while !w.borrow().conns.is_empty() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    {
        let wk = &mut *w.borrow_mut();
        for (_, c) in wk.conns.iter_mut() {
            c.out.clear();
            shut(&c.transport, &mut wk.quic, libc::SHUT_RDWR);
        }
    }
    // Let the readiness loop observe the shutdown and report the users offline.
    let deadline = Instant::now() + Duration::from_millis(200);
    while !w.borrow().conns.is_empty() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    quic::linger(w).await;
}

/// Accepts terminals up to the core's share of `max_connections`, refusing the rest and backing
/// off while accepts fail (see `accept.rs`).
async fn accept_loop(w: Rc<RefCell<Worker>>, listener: TcpListener, mqtt: bool) {
    let mut gate = accept::Gate::new();
    loop {
        let res = listener.accept().await;
        let pause = {
            let mut wk = w.borrow_mut();
            if wk.draining {
                return;
            }
            match res {
                Ok((stream, _)) => {
                    gate.accepted(wk.n);
                    let cap = accept::core_cap(wk.node.config.max_connections, wk.node.cores.len());
                    if wk.m.tcp_connections.get() >= cap as u64 {
                        gate.refuse(wk.n, cap, stream, mqtt, &wk.m);
                    } else {
                        wk.on_accept(stream, mqtt);
                    }
                    None
                }
                Err(e) => Some(gate.failed(wk.n, &e, &wk.m, Instant::now())),
            }
        };
        if let Some(pause) = pause {
            // Out of descriptors or similar: back off instead of spinning.
            monoio::time::sleep(pause).await;
        }
    }
}

async fn timer_loop(w: Rc<RefCell<Worker>>, tick: Duration) {
    loop {
        monoio::time::sleep(tick).await;
        let mut wk = w.borrow_mut();
        if wk.draining && wk.conns.is_empty() {
            return;
        }
        wk.sweep();
        // Also what a full upstream channel left behind.
        wk.flush_receipts();
    }
}

/// The core's TCP connections: waits for the epoll instance to have events, then handles them
/// in batches (other tasks of the core run between batches) until `epoll_wait` finds none.
async fn readiness_loop(w: Rc<RefCell<Worker>>, watch: Watch) {
    let epfd = w.borrow().epfd;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENT_BATCH];
    loop {
        // SAFETY: `events` is a writable array of `EVENT_BATCH` entries; `epfd` lives as long
        // as `watch`.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), EVENT_BATCH as i32, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "epoll_wait failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            continue;
        }
        if n == 0 {
            if watch.readable(false).await.is_err() {
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            continue;
        }
        {
            let mut wk = w.borrow_mut();
            for ev in &events[..n as usize] {
                let (bits, data) = (ev.events, ev.u64);
                let (slot, generation) = ((data & 0xffff_ffff) as usize, (data >> 32) as u32);
                if bits & libc::EPOLLOUT as u32 != 0 {
                    wk.on_writable(slot, generation);
                }
                if bits & !(libc::EPOLLOUT as u32) != 0 && !wk.on_readable(slot, generation) {
                    wk.finish(slot, generation);
                }
            }
            wk.flush_receipts();
        }
        yield_now().await;
    }
}

fn epoll_key(slot: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | slot as u64
}

/// `epoll_ctl` for a connection's socket.
fn epoll_ctl(epfd: RawFd, op: libc::c_int, fd: RawFd, events: u32, key: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: key };
    // SAFETY: `ev` is a valid event; `epfd` and `fd` are open descriptors of this core.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `shutdown(2)` for either transport: `SHUT_RD` wakes the connection so that it finishes its
/// close; `SHUT_RDWR` also drops what the transport has not sent.
fn shut(t: &Transport, quic: &mut Option<CoreEndpoint>, how: libc::c_int) {
    match (t, quic) {
        (Transport::Tcp { fd, .. }, _) => shutdown(*fd, how),
        (Transport::Quic(c), Some(q)) => {
            if how != libc::SHUT_RD {
                q.abort(*c, 0, Instant::now());
            }
            q.request_end(*c);
        }
        (Transport::Quic(_), None) => {}
    }
}

fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: `fd` is an open socket owned by a live connection or listener of this core.
    unsafe { libc::shutdown(fd, how) };
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// What tells a peer of `proto` that the core closes its connection with `code`: a Herald GOAWAY
/// (with `goaway`'s reconnect hint) or CLOSE; an MQTT 5.0 DISCONNECT; nothing for MQTT 3.1.1 or
/// before CONNECT (MQTT has no other way to say why).
fn close_message(proto: &Proto, code: CloseCode, goaway: Option<u32>) -> Option<Bytes> {
    let mut f = BytesMut::with_capacity(16);
    match proto {
        Proto::Herald => match goaway {
            Some(hint) => GoAway { reason: code, reconnect_after_ms: hint }.encode(&mut f),
            None => Close::encode_parts(code, code.label(), &mut f),
        },
        Proto::Mqtt(m) if m.v5_connected() => {
            herald_protocol::mqtt::encode_disconnect(crate::mqtt::disconnect_reason(code), &mut f);
        }
        Proto::Mqtt(_) => return None,
    }
    Some(f.freeze())
}

impl Worker {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn conn(&mut self, slot: usize, generation: u32) -> Option<&mut Conn> {
        self.conns.get_mut(slot).filter(|c| c.generation == generation)
    }

    /// Takes an accepted socket out of monoio (the epoll driver deregisters it) into a slot of
    /// its own, registered in the core's epoll instance: no task per connection.
    fn on_accept(&mut self, stream: TcpStream, mqtt: bool) {
        let _ = stream.set_nodelay(true);
        // SAFETY: `into_raw_fd` hands over the sole owner of the accepted descriptor.
        let sock = unsafe { std::net::TcpStream::from_raw_fd(stream.into_raw_fd()) };
        // Raw reads and writes must never block the core, whichever driver accepted it.
        if let Err(e) = sock.set_nonblocking(true) {
            tracing::warn!(core = self.n, error = %e, "cannot make an accepted socket non-blocking");
            return;
        }
        let sock = OwnedFd::from(sock);
        let fd = sock.as_raw_fd();
        let proto = if mqtt {
            self.m.mqtt.connections.inc();
            Proto::Mqtt(Box::new(MqttConn::new(self.node.config.max_frame_bytes)))
        } else {
            Proto::Herald
        };
        let (slot, generation) = self.insert_conn(Transport::Tcp { _sock: sock, fd }, proto);
        // Counted against `max_connections` until `finish` closes the descriptor.
        self.m.tcp_connections.inc();
        if let Err(e) =
            epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, READ_EVENTS, epoll_key(slot, generation))
        {
            tracing::warn!(core = self.n, error = %e, "cannot register an accepted socket");
            self.finish(slot, generation);
        }
    }

    /// A full socket became writable: flush its queue; once it is no longer full, watch only
    /// its input again.
    fn on_writable(&mut self, slot: usize, generation: u32) {
        let Some(c) = self.conn(slot, generation) else { return };
        let Transport::Tcp { fd, .. } = c.transport else { return };
        if !c.writer {
            return;
        }
        if self.flush_conn(slot) != Flushed::Blocked {
            self.conns[slot].writer = false;
            let _ = epoll_ctl(self.epfd, libc::EPOLL_CTL_MOD, fd, READ_EVENTS, epoll_key(slot, generation));
        }
    }

    /// A new connection of either transport: a slot, a login deadline.
    fn insert_conn(&mut self, transport: Transport, proto: Proto) -> (usize, u32) {
        let now = self.now_ms();
        self.next_gen = self.next_gen.wrapping_add(1);
        let generation = self.next_gen;
        let login_ms = self.node.config.login_timeout_ms;
        let slot = self.conns.insert(Conn {
            transport,
            generation,
            proto,
            auth: None,
            live: Liveness::accepted(Tick::from_millis(now), login_ms.min(u64::from(u32::MAX)) as u32),
            out: Outbound::default(),
            dirty: false,
            writer: false,
            closing: None,
            partial: None,
        });
        let due = now + login_ms;
        self.deadlines.push(Reverse((due, slot as u32, generation)));
        self.m.accepted.inc();
        self.m.connections.inc();
        (slot, generation)
    }

    /// Reads what the socket holds and handles every whole frame. False: the connection is over.
    fn on_readable(&mut self, slot: usize, generation: u32) -> bool {
        let now = self.now_ms();
        let Some(c) = self.conn(slot, generation) else { return false };
        let Transport::Tcp { fd, .. } = c.transport else { return false };
        if c.closing.is_some() {
            // Waiting for a goaway to flush: discard input; stop once the queue is empty.
            if c.out.is_empty() {
                return false;
            }
            return discard_input(fd);
        }
        c.live.touch(Tick::from_millis(now));
        let (mut buf, from_core) = match c.partial.take() {
            Some(p) => (*p, false),
            None => (std::mem::take(&mut self.rbuf), true),
        };
        let mut eof = false;
        let mut read = 0;
        while read < READ_BUDGET {
            buf.reserve(READ_CHUNK);
            let spare = buf.spare_capacity_mut();
            // SAFETY: `spare` is writable, uninitialised capacity of `buf`; recv writes at most
            // its length and we only mark as initialised what it reports.
            let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), 0) };
            if n > 0 {
                let n = n as usize;
                // SAFETY: recv initialised `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                read += n;
                if n < READ_CHUNK {
                    break;
                }
            } else if n == 0 {
                eof = true;
                break;
            } else {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    std::io::ErrorKind::WouldBlock => break,
                    _ => {
                        eof = true;
                        break;
                    }
                }
            }
        }
        self.m.bytes_in.add(read as u64);
        self.on_input(slot, buf, from_core, eof, now)
    }

    /// Handles every whole frame in `buf` (the core's buffer when `from_core`, else the
    /// connection's partial frame grown by a read); keeps a trailing partial frame. Shared by
    /// both transports. False: the connection is over.
    fn on_input(&mut self, slot: usize, mut buf: BytesMut, from_core: bool, eof: bool, now: u64) -> bool {
        let mut outcome = None;
        loop {
            let handled = match &mut self.conns[slot].proto {
                Proto::Herald => {
                    let d = &self.decoder;
                    match if eof { d.decode_eof(&mut buf) } else { d.decode(&mut buf) } {
                        Ok(Some(frame)) => {
                            self.m.frames_in.inc();
                            self.on_frame(slot, frame, now)
                        }
                        Ok(None) => break,
                        Err(e) => Err(Stop::Close(e.close_code())),
                    }
                }
                Proto::Mqtt(m) => {
                    let d = &mut m.decoder;
                    match if eof { d.decode_eof(&mut buf) } else { d.decode(&mut buf) } {
                        Ok(Some(packet)) => {
                            self.m.frames_in.inc();
                            self.on_packet(slot, packet, now)
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "bad MQTT packet");
                            let mut b = BytesMut::new();
                            d.reply(&e).encode(&mut b);
                            let code = match e {
                                herald_protocol::mqtt::MqttError::TooLarge { .. } => {
                                    CloseCode::FRAME_TOO_LARGE
                                }
                                _ => CloseCode::PROTOCOL_ERROR,
                            };
                            Err(Stop::Send((!b.is_empty()).then(|| b.freeze()), code))
                        }
                    }
                }
            };
            if let Err(stop) = handled {
                outcome = Some(stop);
                break;
            }
            if self.conns[slot].closing.is_some() {
                // A reply overflowed the queue and the core closed the connection: the rest of
                // the input is not acted on.
                outcome = Some(Stop::PeerClosed);
                break;
            }
        }
        let keep = match outcome {
            Some(Stop::Close(code)) => {
                self.fail(slot, code);
                false
            }
            Some(Stop::Send(bytes, code)) => {
                self.conns[slot].closing = Some(code);
                if let Some(b) = bytes {
                    self.queue_control(slot, b);
                }
                self.m.closed(code);
                false
            }
            Some(Stop::PeerClosed) => false,
            None => !eof,
        };
        // Keep only a partial frame, in a buffer of its own; the core's buffer goes back.
        if keep
            && !buf.is_empty()
            && let Some(c) = self.conns.get_mut(slot)
        {
            c.partial =
                Some(Box::new(if from_core { BytesMut::from(&buf[..]) } else { std::mem::take(&mut buf) }));
        }
        if from_core {
            buf.clear();
            self.rbuf = buf;
        }
        self.flush_dirty();
        keep
    }

    fn on_frame(&mut self, slot: usize, frame: Frame, now: u64) -> Result<(), Stop> {
        let authed = self.conns[slot].auth.is_some();
        match frame {
            // Before LOGIN, PING is a protocol error (PROTOCOL.md §2): answering it would let an
            // unauthenticated peer make the core write for it.
            Frame::Ping { nonce } if authed => {
                self.m.heartbeats.inc();
                self.queue_pong(slot, Bytes::from_static(&PONGS[usize::from(nonce)]));
                Ok(())
            }
            Frame::Login(login) if !authed => self.on_login(slot, &login, now),
            Frame::Ack(ack) if authed => {
                let Some(a) = &mut self.conns[slot].auth else { return Ok(()) };
                let n = ack.ranges().len() as u32;
                if n > a.ack_credit {
                    self.node.metrics.receipts_dropped.fetch_add(u64::from(n), Ordering::Relaxed);
                    return Ok(());
                }
                a.ack_credit -= n;
                // Coalesced per (device, stream), sent up at the end of the batch.
                for r in ack.ranges() {
                    self.receipts.add(&self.node.metrics, &a.user, &a.device, r.stream, r.first, r.last);
                }
                Ok(())
            }
            Frame::Close(_) => Err(Stop::PeerClosed),
            _ => Err(Stop::Close(CloseCode::PROTOCOL_ERROR)),
        }
    }

    fn on_login(&mut self, slot: usize, login: &Login, now: u64) -> Result<(), Stop> {
        let refuse = |m: &CoreMetrics, code: CloseCode| {
            m.login_failed(code);
            Err(Stop::Close(code))
        };
        if login.version != PROTOCOL_VERSION {
            return refuse(&self.m, CloseCode::UNSUPPORTED_VERSION);
        }
        let claims = match self.authenticate(&login.credential) {
            Ok(c) => c,
            Err(code) => return refuse(&self.m, code),
        };
        if login.device != claims.device.as_bytes() {
            return refuse(&self.m, CloseCode::DEVICE_MISMATCH);
        }
        let resume = login.resume().map(|p| StreamSeq { stream: p.stream, seq: p.seq }).collect();
        let cfg = &self.node.config;
        let grace_ms = cfg.heartbeat_grace_secs.saturating_mul(1000);
        let (session_id, _) = self.admit(slot, claims, resume, now, grace_ms);
        let cfg = &self.node.config;
        let mut ok = BytesMut::with_capacity(28);
        LoginOk {
            session_id,
            server_time_ms: unix_now().as_millis() as u64,
            heartbeat_interval_secs: cfg.heartbeat_interval_secs,
            max_frame_bytes: cfg.max_frame_bytes as u32,
        }
        .encode(&mut ok);
        self.queue_control(slot, ok.freeze());
        Ok(())
    }

    /// Verifies a credential against the current tables (keys, revocations), whatever protocol
    /// carried it. The refusal's close code says why.
    fn authenticate(&self, credential: &[u8]) -> Result<herald_protocol::credential::Claims, CloseCode> {
        let snap = self.node.tables.load();
        if snap.version == 0 {
            return Err(CloseCode::OVERLOADED);
        }
        let claims = snap.keys.verify(credential, unix_now().as_secs()).map_err(|e| e.close_code())?;
        snap.revocations.check(&claims).map_err(|e| e.close_code())?;
        Ok(claims)
    }

    /// Makes a verified connection a session: replaces older sessions of the same (user,
    /// device) on every core, joins the index, starts heartbeat accounting and reports it
    /// online (the control plane answers with its subscriptions and backlog). Returns the
    /// session id and the user.
    fn admit(
        &mut self,
        slot: usize,
        claims: herald_protocol::credential::Claims,
        resume: Vec<StreamSeq>,
        now: u64,
        grace_ms: u32,
    ) -> (u64, Arc<str>) {
        let session_id = self.node.next_session_id();
        self.creds.set(slot, claims.key_id, claims.issued_at, claims.expires_at);
        let user: Arc<str> = claims.user.into();
        let device: Arc<str> = claims.device.into();
        self.replace(&user, &device, session_id);
        for (i, core) in self.node.cores.iter().enumerate() {
            if i != self.n {
                core.send(CoreCmd::Replace { user: user.clone(), device: device.clone(), session_id });
            }
        }
        let uid = self.index.add_conn(&user, slot);
        let c = &mut self.conns[slot];
        // The connection's pending deadline is its login deadline; a credential that expires
        // before it needs a deadline of its own (the sweep keeps one when both come due alike).
        let login_left = c.live.check(Tick::from_millis(now)).map_or(0, u64::from);
        let expiry_left = self.creds.left_ms(slot, unix_now().as_millis() as u64);
        if expiry_left < login_left {
            self.deadlines.push(Reverse((now + expiry_left, slot as u32, c.generation)));
        }
        c.live.logged_in(Tick::from_millis(now), grace_ms);
        c.auth = Some(Auth {
            user: user.clone(),
            device: device.clone(),
            session_id,
            uid,
            ack_credit: ACK_CREDIT_START,
        });
        self.m.logins_ok.inc();
        let _ = self.node.upstream.send(Upstream::Online {
            core: self.n,
            user: user.clone(),
            device,
            session_id,
            resume,
        });
        (session_id, user)
    }

    /// Closes local sessions of `(user, device)` older than `session_id`.
    fn replace(&mut self, user: &str, device: &str, session_id: u64) {
        let mut old = std::mem::take(&mut self.scratch);
        old.clear();
        old.extend(self.index.user_conns(user).iter().map(|&s| s as usize).filter(|&s| {
            self.conns[s].auth.as_ref().is_some_and(|a| &*a.device == device && a.session_id < session_id)
        }));
        for &s in &old {
            self.close_conn(s, CloseCode::REPLACED, true, false);
        }
        self.scratch = old;
    }

    /// Sends a control frame a connection gets once (login answer, GOAWAY, CLOSE): straight to
    /// an idle TCP socket (one `send`, no queue memory), else behind what is queued, whatever
    /// the queue's bounds.
    fn queue_control(&mut self, slot: usize, frame: Bytes) {
        self.send_control(slot, frame, Control::Once);
    }

    /// Sends a PONG; behind queued frames it replaces a waiting PONG (only the latest matters).
    fn queue_pong(&mut self, slot: usize, frame: Bytes) {
        self.send_control(slot, frame, Control::Pong);
    }

    /// Sends a reply the peer can ask for again and again (MQTT SUBACK, UNSUBACK, PUBACK,
    /// PINGRESP is a [`Worker::queue_pong`]) under the queue's bounds. A peer that makes replies
    /// overflow its queue is not reading them: it is closed as a slow consumer (counted in
    /// `herald_reply_overflows_total` and the closes by code), never buffered without bound.
    fn queue_reply(&mut self, slot: usize, frame: Bytes) {
        self.send_control(slot, frame, Control::Reply);
    }

    fn send_control(&mut self, slot: usize, frame: Bytes, kind: Control) {
        let (c, cfg) = (&self.conns[slot], &self.node.config);
        if c.closing.is_some() && kind != Control::Once {
            return;
        }
        if kind == Control::Reply
            && !c.out.reply_fits(frame.len(), cfg.outbound_queue_frames, cfg.outbound_queue_bytes)
        {
            self.m.reply_overflows.inc();
            self.close_conn(slot, CloseCode::SLOW_CONSUMER, false, false);
            return;
        }
        let c = &mut self.conns[slot];
        self.m.frames_out.inc();
        if let Transport::Tcp { fd, .. } = c.transport
            && !c.writer
            && c.out.is_empty()
        {
            let len = frame.len();
            let sent = if kind == Control::Pong {
                c.out.send_pong(fd, frame)
            } else {
                c.out.send_control(fd, frame)
            };
            match sent {
                Some(n) => {
                    self.m.bytes_out.add(n as u64);
                    if n == len {
                        return;
                    }
                }
                None => {
                    shutdown(fd, libc::SHUT_RDWR);
                    return;
                }
            }
        } else if kind == Control::Pong {
            let before = c.out.len();
            c.out.push_pong(frame);
            if c.out.len() == before {
                // Replaced a waiting PONG: nothing more is queued.
                return;
            }
        } else {
            c.out.push_control(frame);
        }
        self.m.queued_frames.inc();
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(slot);
        }
    }

    /// The connection broke the protocol (or failed its login): CLOSE with `code`.
    fn fail(&mut self, slot: usize, code: CloseCode) {
        let c = &mut self.conns[slot];
        c.closing = Some(code);
        if let Some(f) = close_message(&c.proto, code, None) {
            self.queue_control(slot, f);
        }
        self.m.closed(code);
    }

    /// Closes a connection from the core's side: GOAWAY or CLOSE with `code`, flushed. With
    /// `linger`, its queue is flushed before the close (drain); otherwise it is closed now.
    fn close_conn(&mut self, slot: usize, code: CloseCode, goaway: bool, linger: bool) {
        let Some(c) = self.conns.get_mut(slot) else { return };
        if c.closing.is_some() {
            return;
        }
        c.closing = Some(code);
        if !linger {
            let n = c.out.clear();
            self.m.queued_frames.sub(n as u64);
            if code == CloseCode::SLOW_CONSUMER {
                self.m.dropped(DropWhy::SlowConsumer, n as u64);
            }
        }
        let hint =
            if code == CloseCode::SHUTTING_DOWN { self.node.config.drain_reconnect_after_ms } else { 0 };
        if let Some(f) = close_message(&c.proto, code, goaway.then_some(hint)) {
            self.queue_control(slot, f);
        }
        self.m.closed(code);
        if self.flush_conn(slot) != Flushed::Blocked || !linger {
            // Wake the connection's task (its read returns end of stream); it finishes the close.
            shut(&self.conns[slot].transport, &mut self.quic, libc::SHUT_RD);
        }
    }

    /// Writes a connection's queue. A full socket pauses the connection's input until it drains:
    /// TCP is registered for writability and hang-up but not input ([`WRITE_EVENTS`]); a QUIC
    /// stream is no longer read (its flow control then stops the peer). So a peer that sends but
    /// never reads fills its own socket, not the core's memory; what was read before the pause
    /// is bounded by the read budget and the frame limit.
    fn flush_conn(&mut self, slot: usize) -> Flushed {
        let c = &mut self.conns[slot];
        let before = c.out.len();
        let (res, n) = match (&c.transport, &mut self.quic) {
            (Transport::Tcp { fd, .. }, _) => c.out.flush(*fd),
            (Transport::Quic(qc), Some(q)) => c.out.flush(q.writer(*qc)),
            (Transport::Quic(_), None) => (Flushed::Error, 0),
        };
        self.m.bytes_out.add(n as u64);
        self.m.queued_frames.sub((before - c.out.len()) as u64);
        match res {
            Flushed::Empty => {
                if c.closing.is_some() {
                    shut(&c.transport, &mut self.quic, libc::SHUT_RD);
                }
            }
            Flushed::Blocked if !c.writer => {
                // A QUIC stream reports writability itself (`AppEvent::Writable`).
                c.writer = true;
                self.m.input_paused.inc();
                match (&c.transport, &mut self.quic) {
                    (Transport::Tcp { fd, .. }, _) => {
                        let key = epoll_key(slot, c.generation);
                        if epoll_ctl(self.epfd, libc::EPOLL_CTL_MOD, *fd, WRITE_EVENTS, key).is_err() {
                            shutdown(*fd, libc::SHUT_RDWR);
                        }
                    }
                    (Transport::Quic(qc), Some(q)) => q.pause_input(*qc, true),
                    (Transport::Quic(_), None) => {}
                }
            }
            Flushed::Blocked => {}
            Flushed::Error => shut(&c.transport, &mut self.quic, libc::SHUT_RDWR),
        }
        res
    }

    /// Hands the coalesced receipts to the link thread (see `receipts.rs`).
    fn flush_receipts(&mut self) {
        self.receipts.flush(&self.node.upstream, &self.node.metrics);
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let Some(c) = self.conns.get_mut(slot) else { continue };
            c.dirty = false;
            if !c.writer {
                self.flush_conn(slot);
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// The connection is over: forget it (a TCP socket is deregistered and closed) and report it
    /// offline.
    fn finish(&mut self, slot: usize, generation: u32) {
        if self.conn(slot, generation).is_none() {
            return;
        }
        let mut c = self.conns.remove(slot);
        self.m.connections.sub(1);
        match (&c.transport, &mut self.quic) {
            (Transport::Tcp { fd, .. }, _) => {
                let _ = c.out.flush(*fd);
                discard_input(*fd);
                // Sends FIN after what is queued (the close below would reset the connection
                // if input were left unread).
                shutdown(*fd, libc::SHUT_RDWR);
                let _ = epoll_ctl(self.epfd, libc::EPOLL_CTL_DEL, *fd, 0, 0);
                // `c` drops below: its socket is closed.
                self.m.tcp_connections.sub(1);
            }
            (Transport::Quic(qc), Some(q)) => {
                let _ = c.out.flush(q.writer(*qc));
                // Finishes the stream; the connection closes once the peer has it all.
                q.end(*qc, c.closing.unwrap_or(CloseCode::NORMAL).0, Instant::now());
            }
            (Transport::Quic(_), None) => {}
        }
        self.m.queued_frames.sub(c.out.clear() as u64);
        if let Proto::Mqtt(m) = &mut c.proto {
            self.m.mqtt.connections.sub(1);
            m.revoke_all(&mut self.filters);
        }
        if let Some(a) = c.auth {
            self.index.remove_conn(&a.user, a.uid, slot);
            let code = c.closing.unwrap_or(CloseCode::NORMAL);
            let _ = self.node.upstream.send(Upstream::Offline {
                core: self.n,
                user: a.user.clone(),
                device: a.device.clone(),
                session_id: a.session_id,
                code: code.0,
            });
            // After Offline, on the same channel: the control plane sees the will after the
            // disconnect.
            if let Proto::Mqtt(m) = &mut c.proto {
                self.send_will(m, &a.user, &a.device, code);
            }
        }
    }

    /// Closes connections whose login deadline, heartbeat grace or credential has expired, and
    /// sessions that new tables no longer accept (`creds`).
    fn sweep(&mut self) {
        self.recheck_sessions();
        let now = self.now_ms();
        let unix_ms = unix_now().as_millis() as u64;
        while let Some(&Reverse(entry @ (due, slot, generation))) = self.deadlines.peek() {
            if due > now {
                break;
            }
            self.deadlines.pop();
            // A connection can have two entries (see `admit`); once they name the same time,
            // one is enough.
            while self.deadlines.peek() == Some(&Reverse(entry)) {
                self.deadlines.pop();
            }
            let (slot, generation) = (slot as usize, generation);
            let Some(c) = self.conn(slot, generation) else { continue };
            if c.closing.is_some() {
                continue;
            }
            let checked = c.live.check(Tick::from_millis(now));
            let expiry_left = if c.auth.is_some() { self.creds.left_ms(slot, unix_ms) } else { u64::MAX };
            if expiry_left == 0 {
                self.close_conn(slot, CloseCode::AUTH_EXPIRED, false, false);
                continue;
            }
            match checked {
                Ok(left) => {
                    let next = now + u64::from(left.max(1)).min(expiry_left);
                    self.deadlines.push(Reverse((next, slot as u32, generation)));
                }
                Err(code) => {
                    if code == CloseCode::LOGIN_TIMEOUT {
                        self.m.login_failed(code);
                    }
                    self.close_conn(slot, code, false, false);
                }
            }
        }
        self.flush_dirty();
    }

    fn on_cmd(&mut self, cmd: CoreCmd) {
        match cmd {
            CoreCmd::Push(job) => self.on_push(&job),
            CoreCmd::Subscriptions(subs) => {
                for s in subs.iter() {
                    self.index.set_subscriptions(&s.user, &s.groups, &s.topics);
                    self.resume_parked(&s.user);
                }
            }
            CoreCmd::Kick(k) => {
                let mut slots = std::mem::take(&mut self.scratch);
                slots.clear();
                slots.extend(self.index.user_conns(&k.user).iter().map(|&s| s as usize).filter(|&s| {
                    k.device
                        .as_deref()
                        .is_none_or(|d| self.conns[s].auth.as_ref().is_some_and(|a| &*a.device == d))
                }));
                for &s in &slots {
                    self.close_conn(s, CloseCode(k.code), false, false);
                }
                self.scratch = slots;
            }
            CoreCmd::Replace { user, device, session_id } => self.replace(&user, &device, session_id),
            CoreCmd::Quic(d) => {
                if let Some(q) = &mut self.quic {
                    q.forwarded(Instant::now(), *d);
                }
            }
            CoreCmd::Resync => {
                let sessions = (self.conns.iter())
                    .filter_map(|(_, c)| c.auth.as_ref())
                    .map(|a| LiveSession {
                        user: a.user.clone(),
                        device: a.device.clone(),
                        session_id: a.session_id,
                    })
                    .collect();
                let _ = self.node.upstream.send(Upstream::Live { core: self.n, sessions });
            }
            CoreCmd::Published(r) => self.on_published(r),
            CoreCmd::Drain => self.begin_drain(),
        }
    }

    fn on_push(&mut self, job: &PushJob) {
        self.recheck_for(&job.tables);
        self.m.pushes.inc();
        self.pending_fanout.push(job.received);
        let mut slots = std::mem::take(&mut self.scratch);
        slots.clear();
        self.index.collect(&job.plan, &job.tables, &mut slots);
        let max = self.node.config.outbound_queue_frames;
        let max_bytes = self.node.config.outbound_queue_bytes;
        let (mut sent, mut dropped) = (0u32, 0u32);
        let mut shared_qos0 = mqtt::SharedQos0::default();
        for &slot in &slots {
            let c = &mut self.conns[slot];
            if c.closing.is_some() {
                continue;
            }
            if c.out.len() >= max && !c.writer {
                // Full only because the batch has not been written yet: the policy is for
                // sockets that do not drain, so write first.
                self.flush_conn(slot);
            }
            let c = &mut self.conns[slot];
            if let Plan::Device { device, .. } = &job.plan
                && c.auth.as_ref().is_none_or(|a| *a.device != **device)
            {
                continue;
            }
            let (queued, pid) = match &mut c.proto {
                Proto::Herald => (c.out.push(job.frame.clone(), true, job.persistent, max, max_bytes), None),
                Proto::Mqtt(m) => match c.auth.as_ref().map_or(mqtt::Publish::Skip, |a| {
                    let (f, inbox, hdr) = (&self.filters, &mut self.inbox, &mut self.hdr);
                    mqtt::publish_for(m, &a.user, job, f, inbox, hdr, &mut shared_qos0)
                }) {
                    mqtt::Publish::Skip => continue,
                    mqtt::Publish::Drop => {
                        self.m.mqtt.window_drops.inc();
                        dropped += 1;
                        self.m.dropped(DropWhy::QueueFullNew, 1);
                        continue;
                    }
                    mqtt::Publish::Send { head, qos1, pid } => {
                        self.m.mqtt.publishes_out.inc();
                        let payload = job.mqtt.as_ref().map(|p| p.payload.clone()).unwrap_or_default();
                        (c.out.push_parts(head, payload, false, qos1, max, max_bytes), pid)
                    }
                    mqtt::Publish::Whole(packet) => {
                        self.m.mqtt.publishes_out.inc();
                        (c.out.push(packet, false, false, max, max_bytes), None)
                    }
                },
            };
            if let (Some(pid), Queued::DroppedNew | Queued::Full, Proto::Mqtt(m)) =
                (pid, queued, &mut c.proto)
            {
                m.release(pid);
            }
            if matches!(queued, Queued::Yes | Queued::DroppedOldest)
                && let Some(a) = &mut c.auth
            {
                a.ack_credit = a.ack_credit.saturating_add(1);
            }
            match queued {
                Queued::Yes => {
                    sent += 1;
                    self.m.queued_frames.inc();
                }
                Queued::DroppedOldest => {
                    sent += 1;
                    self.m.dropped(DropWhy::QueueFullOldest, 1);
                }
                Queued::DroppedNew => {
                    dropped += 1;
                    self.m.dropped(DropWhy::QueueFullNew, 1);
                    continue;
                }
                Queued::Full => {
                    dropped += 1;
                    self.slow.push(slot);
                    continue;
                }
            }
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(slot);
            }
        }
        self.scratch = slots;
        self.m.deliveries.add(u64::from(sent));
        self.m.frames_out.add(u64::from(sent));
        let mut slow = std::mem::take(&mut self.slow);
        for &s in &slow {
            self.close_conn(s, CloseCode::SLOW_CONSUMER, false, false);
        }
        slow.clear();
        self.slow = slow;
        let _ = self.node.upstream.send(Upstream::Report { push_id: job.push_id, sent, dropped });
    }

    fn record_fanout(&mut self) {
        for t in self.pending_fanout.drain(..) {
            self.m.fanout(t.elapsed().as_micros() as u64);
        }
    }

    fn begin_drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        // Wakes the pending accept with an error; the accept loop sees `draining` and ends.
        shutdown(self.listener_fd, libc::SHUT_RDWR);
        if let Some(fd) = self.mqtt_listener_fd {
            shutdown(fd, libc::SHUT_RDWR);
        }
        if let Some(q) = &mut self.quic {
            q.stop_accepting();
        }
        let slots: Vec<usize> = self.conns.iter().map(|(s, _)| s).collect();
        for s in slots {
            self.close_conn(s, CloseCode::SHUTTING_DOWN, true, true);
        }
    }
}

/// Reads and drops whatever the socket holds. False when the peer has closed.
fn discard_input(fd: RawFd) -> bool {
    let mut sink = [0u8; 4096];
    loop {
        // SAFETY: `sink` is a writable stack buffer of the given length.
        let n = unsafe { libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), 0) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            return std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection pays for these in its slab slot; an idle one pays nothing else here.
    #[test]
    fn connection_state_stays_small() {
        assert!(size_of::<Conn>() <= 120, "Conn is {} bytes", size_of::<Conn>());
        assert!(size_of::<Outbound>() <= 16, "Outbound is {} bytes", size_of::<Outbound>());
    }
}
