//! A worker process: holds a share of the terminal connections in one epoll loop and answers the
//! parent's commands (`wire::Cmd` on stdin, `wire::Msg` on stdout).
//!
//! One thread, level-triggered epoll, non-blocking sockets bound to this worker's source address
//! before connecting (`IP_BIND_ADDRESS_NO_PORT`, so the port is chosen per destination and each
//! source address gives ~28k connections). Reads go into one per-worker buffer; only a partial
//! frame is kept per connection. Heartbeats are paced evenly over the interval, never a timer per
//! connection.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::sync::mpsc;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use herald_protocol::frame::{self, Ack, AckRange, Frame, Login, PushFlags};
use herald_protocol::payload::PushPayload;
use herald_protocol::{CloseCode, Decoder};

use rkyv::util::AlignedVec;

use crate::clock::now_ns;
use crate::hist;
use crate::mqtt::{self, Packet};
use crate::wire::{Cmd, Cred, Msg, Proto, Stats, TIMELINE_BUCKET_NS};

/// Key of the send timestamp in a push's data (ns since the epoch, decimal).
pub const T_NS_KEY: &str = "t_ns";

/// How a worker is started (arguments of the hidden `worker` subcommand).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub gateway: SocketAddrV4,
    pub source: Ipv4Addr,
    /// Connects plus logins in progress at once.
    pub inflight: usize,
    /// Attempts per connection in one `Connect` before it counts as failed.
    pub attempts: u32,
    pub proto: Proto,
    /// MQTT: keep-alive announced in CONNECT, seconds.
    pub keep_alive: u16,
    pub transport: crate::wire::Transport,
    /// QUIC: the certificate to trust.
    pub ca: Option<std::path::PathBuf>,
    /// QUIC: client endpoints in this worker.
    pub endpoints: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    LoggingIn,
    /// MQTT: CONNACK received, SUBACK awaited.
    Subscribing,
    Ready,
    Failed,
}

#[derive(Debug)]
struct Conn {
    fd: RawFd,
    state: State,
    /// A plain socket to the floor sender: ready on connect, no login.
    raw: bool,
    attempts: u32,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    want_write: bool,
}

impl Conn {
    fn new(raw: bool) -> Conn {
        Conn {
            fd: -1,
            state: State::Idle,
            raw,
            attempts: 0,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            want_write: false,
        }
    }
}

struct Worker {
    cfg: WorkerConfig,
    epfd: RawFd,
    creds: Vec<Cred>,
    logins: Vec<Bytes>,
    /// Herald connections first (`0..creds.len()`), floor connections after.
    conns: Vec<Conn>,
    decoder: Decoder,
    scratch: Vec<u8>,
    payload_scratch: AlignedVec,
    // connect phase
    pending: VecDeque<usize>,
    inflight: usize,
    connecting: bool,
    ready: usize,
    failed: usize,
    retries: u64,
    first_start_ns: u64,
    last_ok_ns: u64,
    errors: Vec<String>,
    last_progress_ns: u64,
    // floor
    floor_target: usize,
    floor_ready: usize,
    floor_reported: bool,
    // heartbeats
    hb_interval_ms: u64,
    server_hb_secs: u16,
    hb_epoch_ns: u64,
    hb_slots: u64,
    // stats
    stats: Stats,
    histo: hdrhistogram::Histogram<u64>,
    timeline: BTreeMap<u64, u64>,
    close_codes: BTreeMap<u16, u64>,
}

/// Runs a worker until stdin closes or `Quit` arrives.
pub fn run(cfg: WorkerConfig) -> anyhow::Result<()> {
    crate::procfs::raise_fd_limit();
    if cfg.transport == crate::wire::Transport::Quic {
        return crate::quic_worker::run(cfg);
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Cmd>(&line) {
                Ok(cmd) => {
                    if tx.send(cmd).is_err() {
                        return;
                    }
                }
                Err(e) => emit(&Msg::Error { error: format!("bad command {line:?}: {e}") }),
            }
        }
        let _ = tx.send(Cmd::Quit);
    });
    let mut w = Worker::new(cfg)?;
    loop {
        while let Ok(cmd) = rx.try_recv() {
            if !w.command(cmd)? {
                w.close_all();
                return Ok(());
            }
        }
        w.pump_connects();
        w.heartbeats();
        w.poll(if w.connecting { 1 } else { 5 })?;
        w.report_progress();
    }
}

pub(crate) fn emit(msg: &Msg) {
    let line = serde_json::to_string(msg).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// Starts a non-blocking connect from `source` to `dst`; returns the socket.
fn start_connect(source: Ipv4Addr, dst: SocketAddrV4) -> std::io::Result<RawFd> {
    // SAFETY: plain socket syscalls on a descriptor this function owns; every pointer passed
    // points to a live local of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, (&raw const one).cast(), sz);
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw const one).cast(), sz);
        let src = sockaddr(SocketAddrV4::new(source, 0));
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&raw const src).cast(), len) < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        let dst = sockaddr(dst);
        if libc::connect(fd, (&raw const dst).cast(), len) < 0 && errno() != libc::EINPROGRESS {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(fd)
    }
}

impl Worker {
    fn new(cfg: WorkerConfig) -> anyhow::Result<Worker> {
        // SAFETY: creates a new epoll instance; no pointers involved.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        Ok(Worker {
            cfg,
            epfd,
            creds: Vec::new(),
            logins: Vec::new(),
            conns: Vec::new(),
            decoder: Decoder::default(),
            scratch: vec![0; 256 * 1024],
            payload_scratch: Default::default(),
            pending: VecDeque::new(),
            inflight: 0,
            connecting: false,
            ready: 0,
            failed: 0,
            retries: 0,
            first_start_ns: 0,
            last_ok_ns: 0,
            errors: Vec::new(),
            last_progress_ns: 0,
            floor_target: 0,
            floor_ready: 0,
            floor_reported: true,
            hb_interval_ms: 0,
            server_hb_secs: 0,
            hb_epoch_ns: now_ns(),
            hb_slots: 0,
            stats: Stats::default(),
            histo: hist::new_us(),
            timeline: BTreeMap::new(),
            close_codes: BTreeMap::new(),
        })
    }

    /// Handles one command; `false` means quit.
    fn command(&mut self, cmd: Cmd) -> anyhow::Result<bool> {
        match cmd {
            Cmd::Creds { creds } => {
                self.close_all();
                self.logins = match self.cfg.proto {
                    Proto::Mqtt => creds
                        .iter()
                        .map(|c| {
                            Bytes::from(mqtt::connect(&c.device, &c.user, &c.token, self.cfg.keep_alive))
                        })
                        .collect(),
                    Proto::Herald => creds
                        .iter()
                        .map(|c| {
                            let mut b = BytesMut::new();
                            Login::new(Bytes::from(c.token.clone()), Bytes::from(c.device.clone()), &[])
                                .encode(&mut b)
                                .map(|()| b.freeze())
                        })
                        .collect::<Result<_, _>>()
                        .context("encoding a login")?,
                };
                self.conns = creds.iter().map(|_| Conn::new(false)).collect();
                self.creds = creds;
                self.ready = 0;
            }
            Cmd::Connect => {
                self.connecting = true;
                self.failed = 0;
                self.retries = 0;
                self.first_start_ns = 0;
                self.last_ok_ns = 0;
                self.errors.clear();
                for i in 0..self.creds.len() {
                    let c = &mut self.conns[i];
                    if matches!(c.state, State::Idle | State::Failed) {
                        c.state = State::Idle;
                        c.attempts = 0;
                        self.pending.push_back(i);
                    }
                }
            }
            Cmd::Drop => {
                for i in 0..self.creds.len() {
                    self.close_conn(i, State::Idle);
                }
                self.ready = 0;
                self.pending.clear();
                self.inflight = 0;
            }
            Cmd::Heartbeat { interval_ms } => {
                self.hb_interval_ms = interval_ms;
                self.hb_epoch_ns = now_ns();
                self.hb_slots = 0;
            }
            Cmd::Stats { reset } => {
                let mut s = self.stats.clone();
                s.ready = self.ready;
                s.hist = hist::to_pairs(&self.histo);
                s.timeline = self.timeline.iter().map(|(k, v)| (*k, *v)).collect();
                s.close_codes = self.close_codes.iter().map(|(k, v)| (*k, *v)).collect();
                emit(&Msg::Stats(s));
                if reset {
                    self.stats.deliveries = 0;
                    self.stats.untimed = 0;
                    self.stats.first_recv_ns = 0;
                    self.stats.last_recv_ns = 0;
                    self.histo.reset();
                    self.timeline.clear();
                }
            }
            Cmd::FloorConnect { addr, count } => {
                let dst: SocketAddrV4 = addr.parse().context("floor address")?;
                self.floor_target = count;
                self.floor_ready = 0;
                self.floor_reported = false;
                for _ in 0..count {
                    let i = self.conns.len();
                    let mut c = Conn::new(true);
                    match start_connect(self.cfg.source, dst) {
                        Ok(fd) => {
                            c.fd = fd;
                            c.state = State::Connecting;
                            self.conns.push(c);
                            self.register(i, libc::EPOLLOUT | libc::EPOLLIN, libc::EPOLL_CTL_ADD);
                        }
                        Err(e) => {
                            emit(&Msg::Error { error: format!("floor connect: {e}") });
                            self.floor_target -= 1;
                        }
                    }
                }
                if count == 0 {
                    self.floor_reported = true;
                    emit(&Msg::FloorReady { count: 0 });
                }
            }
            Cmd::FloorClose => {
                for i in self.creds.len()..self.conns.len() {
                    self.close_conn(i, State::Idle);
                }
                self.conns.truncate(self.creds.len());
                self.floor_target = 0;
                self.floor_ready = 0;
            }
            Cmd::Quit => return Ok(false),
        }
        Ok(true)
    }

    fn register(&self, i: usize, events: i32, op: i32) {
        let mut ev = libc::epoll_event { events: events as u32, u64: i as u64 };
        // SAFETY: `ev` is a valid epoll_event; the fd is open and owned by conn `i`.
        unsafe { libc::epoll_ctl(self.epfd, op, self.conns[i].fd, &mut ev) };
    }

    fn pump_connects(&mut self) {
        while self.inflight < self.cfg.inflight {
            let Some(i) = self.pending.pop_front() else { break };
            if self.first_start_ns == 0 {
                self.first_start_ns = now_ns();
            }
            self.conns[i].attempts += 1;
            match start_connect(self.cfg.source, self.cfg.gateway) {
                Ok(fd) => {
                    let c = &mut self.conns[i];
                    c.fd = fd;
                    c.state = State::Connecting;
                    c.rbuf.clear();
                    c.wbuf.clear();
                    c.want_write = true;
                    self.inflight += 1;
                    self.register(i, libc::EPOLLOUT | libc::EPOLLIN, libc::EPOLL_CTL_ADD);
                }
                Err(e) => self.connect_failed(i, format!("connect: {e}")),
            }
        }
        if self.connecting && self.pending.is_empty() && self.inflight == 0 {
            self.connecting = false;
            emit(&Msg::Connected {
                ready: self.ready,
                failed: self.failed,
                retries: self.retries,
                first_start_ns: self.first_start_ns,
                last_ok_ns: self.last_ok_ns,
                errors: std::mem::take(&mut self.errors),
            });
        }
    }

    fn connect_failed(&mut self, i: usize, why: String) {
        if self.conns[i].attempts < self.cfg.attempts {
            self.retries += 1;
            self.conns[i].state = State::Idle;
            self.pending.push_back(i);
        } else {
            self.conns[i].state = State::Failed;
            self.failed += 1;
            if self.errors.len() < 8 {
                self.errors.push(why);
            }
        }
    }

    fn report_progress(&mut self) {
        if !self.connecting {
            return;
        }
        let now = now_ns();
        if now - self.last_progress_ns > 100_000_000 {
            self.last_progress_ns = now;
            emit(&Msg::Progress { ready: self.ready, failed: self.failed });
        }
    }

    fn heartbeats(&mut self) {
        let n = self.creds.len() as u64;
        if n == 0 || self.ready == 0 {
            return;
        }
        let interval_ms = match self.hb_interval_ms {
            0 if self.cfg.proto == Proto::Mqtt && self.cfg.keep_alive > 0 => {
                u64::from(self.cfg.keep_alive) * 500
            }
            0 if self.cfg.proto == Proto::Mqtt => 30_000,
            0 if self.server_hb_secs > 0 => u64::from(self.server_hb_secs) * 500,
            0 => 15_000,
            ms => ms,
        };
        let elapsed = now_ns().saturating_sub(self.hb_epoch_ns);
        let due = (u128::from(elapsed) * u128::from(n) / (u128::from(interval_ms) * 1_000_000)) as u64;
        // After a stall, catch up at most one round.
        if due > self.hb_slots + n {
            self.hb_slots = due - n;
        }
        while self.hb_slots < due {
            let i = (self.hb_slots % n) as usize;
            self.hb_slots += 1;
            if self.conns[i].state == State::Ready {
                let nonce = (self.hb_slots & 0xff) as u8;
                match self.cfg.proto {
                    Proto::Herald => self.send(i, &[frame::T_PING, nonce]),
                    Proto::Mqtt => self.send(i, &mqtt::PINGREQ),
                }
                self.stats.pings_sent += 1;
            }
        }
    }

    fn send(&mut self, i: usize, bytes: &[u8]) {
        let c = &mut self.conns[i];
        if !c.wbuf.is_empty() {
            c.wbuf.extend_from_slice(bytes);
            return;
        }
        // SAFETY: `bytes` is a live slice of the given length; the fd belongs to this conn.
        let n = unsafe {
            libc::send(c.fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
        };
        let sent = if n < 0 {
            let e = errno();
            if e != libc::EAGAIN {
                return; // the read side will see the error and close
            }
            0
        } else {
            n as usize
        };
        if sent < bytes.len() {
            c.wbuf.extend_from_slice(&bytes[sent..]);
            if !c.want_write {
                c.want_write = true;
                self.register(i, libc::EPOLLIN | libc::EPOLLOUT, libc::EPOLL_CTL_MOD);
            }
        }
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        while !c.wbuf.is_empty() {
            // SAFETY: as in `send`.
            let n = unsafe {
                libc::send(
                    c.fd,
                    c.wbuf.as_ptr().cast(),
                    c.wbuf.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return;
            }
            c.wbuf.drain(..n as usize);
        }
        c.want_write = false;
        self.register(i, libc::EPOLLIN, libc::EPOLL_CTL_MOD);
    }

    fn poll(&mut self, timeout_ms: i32) -> anyhow::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1024];
        // SAFETY: `events` is a writable array of the length passed.
        let n = unsafe { libc::epoll_wait(self.epfd, events.as_mut_ptr(), events.len() as i32, timeout_ms) };
        if n < 0 {
            if errno() == libc::EINTR {
                return Ok(());
            }
            bail!("epoll_wait: {}", std::io::Error::last_os_error());
        }
        for ev in &events[..n as usize] {
            let (i, bits) = (ev.u64 as usize, ev.events as i32);
            if i >= self.conns.len() || self.conns[i].fd < 0 {
                continue;
            }
            match self.conns[i].state {
                State::Connecting => self.on_connected(i, bits),
                State::LoggingIn | State::Subscribing | State::Ready => {
                    if bits & libc::EPOLLOUT != 0 {
                        self.flush(i);
                    }
                    if bits & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
                        self.on_readable(i);
                    }
                }
                State::Idle | State::Failed => {}
            }
        }
        Ok(())
    }

    fn on_connected(&mut self, i: usize, bits: i32) {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `len` are valid for writes of the sizes given.
        unsafe {
            libc::getsockopt(
                self.conns[i].fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &mut len,
            )
        };
        if err != 0 || bits & libc::EPOLLOUT == 0 {
            let why = format!(
                "connect: {}",
                std::io::Error::from_raw_os_error(if err != 0 { err } else { libc::ECONNRESET })
            );
            self.end(i, why);
            return;
        }
        let c = &mut self.conns[i];
        if c.raw {
            c.state = State::Ready;
            c.want_write = false;
            self.register(i, libc::EPOLLIN, libc::EPOLL_CTL_MOD);
            self.floor_ready += 1;
            if !self.floor_reported && self.floor_ready == self.floor_target {
                self.floor_reported = true;
                emit(&Msg::FloorReady { count: self.floor_ready });
            }
            return;
        }
        c.state = State::LoggingIn;
        c.want_write = false;
        self.register(i, libc::EPOLLIN, libc::EPOLL_CTL_MOD);
        let login = self.logins[i].clone();
        self.send(i, &login);
    }

    fn on_readable(&mut self, i: usize) {
        let fd = self.conns[i].fd;
        // SAFETY: `scratch` is writable for its whole length.
        let n = unsafe {
            libc::recv(fd, self.scratch.as_mut_ptr().cast(), self.scratch.len(), libc::MSG_DONTWAIT)
        };
        if n < 0 {
            let e = errno();
            if e == libc::EAGAIN || e == libc::EINTR {
                return;
            }
            self.end(i, format!("recv: {}", std::io::Error::from_raw_os_error(e)));
            return;
        }
        if n == 0 {
            self.end(i, "closed by the gateway".into());
            return;
        }
        let now = now_ns();
        let mut rbuf = std::mem::take(&mut self.conns[i].rbuf);
        rbuf.extend_from_slice(&self.scratch[..n as usize]);
        // The floor's connections carry Herald push frames whatever the terminals speak.
        if self.cfg.proto == Proto::Mqtt && !self.conns[i].raw {
            self.on_mqtt(i, rbuf, now);
            return;
        }
        let mut acks: Vec<AckRange> = Vec::new();
        loop {
            match self.decoder.decode(&mut rbuf) {
                Ok(Some(f)) => self.on_frame(i, f, now, &mut acks),
                Ok(None) => break,
                Err(e) => {
                    self.end(i, format!("undecodable bytes from the gateway: {e}"));
                    return;
                }
            }
            if self.conns[i].fd < 0 {
                return;
            }
        }
        // Keep no buffer for an idle connection: most reads end on a frame boundary.
        self.conns[i].rbuf = if rbuf.is_empty() { BytesMut::new() } else { rbuf };
        if !acks.is_empty() {
            let mut b = BytesMut::new();
            if Ack::new(&acks).encode(&mut b).is_ok() {
                self.send(i, &b);
            }
        }
    }

    fn on_frame(&mut self, i: usize, f: Frame, now: u64, acks: &mut Vec<AckRange>) {
        match f {
            Frame::LoginOk(ok) if self.conns[i].state == State::LoggingIn => {
                self.conns[i].state = State::Ready;
                self.inflight -= 1;
                self.ready += 1;
                self.last_ok_ns = now;
                if self.server_hb_secs == 0 {
                    self.server_hb_secs = ok.heartbeat_interval_secs;
                }
            }
            Frame::Pong { .. } => self.stats.pongs += 1,
            Frame::Push(p) => {
                let t = send_time_ns(&p.payload, &mut self.payload_scratch);
                self.record_delivery(now, t);
                if p.flags.contains(PushFlags::ACK_REQUIRED) {
                    match acks.iter_mut().find(|r| r.stream == p.stream) {
                        Some(r) => r.last = r.last.max(p.seq),
                        None => acks.push(AckRange { stream: p.stream, first: 0, last: p.seq }),
                    }
                }
            }
            Frame::Close(c) => {
                *self.close_codes.entry(c.code.0).or_insert(0) += 1;
                if self.conns[i].state == State::LoggingIn && self.errors.len() < 8 {
                    self.errors.push(format!("login refused: {} {}", c.code.label(), c.reason_str()));
                }
            }
            Frame::GoAway(g) => *self.close_codes.entry(g.reason.0).or_insert(0) += 1,
            _ => {}
        }
    }

    fn record_delivery(&mut self, now: u64, sent_ns: Option<u64>) {
        self.stats.deliveries += 1;
        if self.stats.first_recv_ns == 0 {
            self.stats.first_recv_ns = now;
        }
        self.stats.last_recv_ns = now;
        *self.timeline.entry(now / TIMELINE_BUCKET_NS).or_insert(0) += 1;
        match sent_ns {
            Some(t) => hist::record_us(&mut self.histo, now.saturating_sub(t) / 1000),
            None => self.stats.untimed += 1,
        }
    }

    /// MQTT bytes from the server: CONNACK → SUBSCRIBE, SUBACK → ready, PUBLISH → delivery (and
    /// PUBACK at QoS 1), PINGRESP.
    fn on_mqtt(&mut self, i: usize, mut rbuf: BytesMut, now: u64) {
        let mut out: Vec<u8> = Vec::new();
        let mut at = 0;
        loop {
            let (p, n) = match mqtt::decode(&rbuf[at..]) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    self.end(i, format!("undecodable MQTT from the server: {e}"));
                    return;
                }
            };
            at += n;
            let state = self.conns[i].state;
            match p {
                Packet::ConnAck { return_code: 0 } if state == State::LoggingIn => {
                    self.conns[i].state = State::Subscribing;
                    out.extend_from_slice(&mqtt::subscribe(&[crate::admin::ALL_TOPIC]));
                }
                Packet::ConnAck { return_code } => {
                    self.end(i, format!("CONNACK return code {return_code}"));
                    return;
                }
                Packet::SubAck { codes } if state == State::Subscribing => {
                    if codes.iter().any(|&c| c >= 0x80) {
                        self.end(i, format!("SUBACK refused: {codes:?}"));
                        return;
                    }
                    self.conns[i].state = State::Ready;
                    self.inflight -= 1;
                    self.ready += 1;
                    self.last_ok_ns = now;
                }
                Packet::Publish { qos, id, payload, .. } => {
                    self.record_delivery(now, mqtt::leading_ns(payload));
                    if qos > 0 {
                        out.extend_from_slice(&mqtt::puback(id));
                    }
                }
                Packet::PingResp => self.stats.pongs += 1,
                _ => {}
            }
        }
        let _ = rbuf.split_to(at);
        self.conns[i].rbuf = if rbuf.is_empty() { BytesMut::new() } else { rbuf };
        if !out.is_empty() {
            self.send(i, &out);
        }
    }

    /// The connection ended without being asked to.
    fn end(&mut self, i: usize, why: String) {
        let state = self.conns[i].state;
        let raw = self.conns[i].raw;
        self.close_conn(i, State::Idle);
        match state {
            State::Connecting | State::LoggingIn | State::Subscribing if !raw => {
                self.inflight -= 1;
                self.connect_failed(i, why);
            }
            State::Ready if !raw => {
                self.ready -= 1;
                self.stats.disconnects += 1;
            }
            _ => {}
        }
    }

    fn close_conn(&mut self, i: usize, to: State) {
        let c = &mut self.conns[i];
        if c.fd >= 0 {
            // SAFETY: the fd is open and owned by this conn; closing also leaves the epoll set.
            unsafe { libc::close(c.fd) };
            c.fd = -1;
        }
        c.state = to;
        c.rbuf = BytesMut::new();
        c.wbuf = Vec::new();
        c.want_write = false;
    }

    fn close_all(&mut self) {
        for i in 0..self.conns.len() {
            self.close_conn(i, State::Idle);
        }
    }
}

/// The send timestamp a push carries in its data under [`T_NS_KEY`].
pub(crate) fn send_time_ns(payload: &[u8], scratch: &mut AlignedVec) -> Option<u64> {
    let p = PushPayload::access(payload, scratch).ok()?;
    p.data.iter().find(|e| e.key.as_str() == T_NS_KEY)?.value.as_str().parse().ok()
}

/// Close code label, for reports.
pub fn close_label(code: u16) -> &'static str {
    CloseCode(code).label()
}
