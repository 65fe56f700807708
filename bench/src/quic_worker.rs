//! A worker process whose terminals speak Herald frames over QUIC (`--transport quic`): quinn
//! client endpoints on one tokio current-thread runtime, `--endpoints` UDP sockets bound to the
//! worker's source address (each its own port, so the gateway's `SO_REUSEPORT` sockets hash them
//! over its cores), connections spread round-robin over them. Each connection is a task: handshake,
//! one bidirectional stream, LOGIN, then the same frames as over TCP (PING at the paced interval,
//! PUSH → ACK). Answers the same commands as the TCP worker (`wire::Cmd`), minus the floor.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use herald_protocol::Decoder;
use herald_protocol::frame::{self, Ack, AckRange, Frame, Login, PushFlags};
use rkyv::util::AlignedVec;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::clock::now_ns;
use crate::hist;
use crate::wire::{Cmd, Msg, Stats, TIMELINE_BUCKET_NS};
use crate::worker::{WorkerConfig, emit, send_time_ns};

/// ALPN of Herald's QUIC listener.
pub const ALPN: &[u8] = b"herald/1";
/// The name the development certificate is made for.
const SERVER_NAME: &str = "localhost";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Down,
    Connecting,
    Up,
}

#[derive(Debug)]
struct Shared {
    stats: Stats,
    histo: hdrhistogram::Histogram<u64>,
    timeline: BTreeMap<u64, u64>,
    close_codes: BTreeMap<u16, u64>,
    state: Vec<State>,
    /// Deliveries per connection since the last reset.
    per_conn: Vec<u64>,
    ready: usize,
    pending: usize,
    failed: usize,
    retries: u64,
    first_start_ns: u64,
    last_ok_ns: u64,
    errors: Vec<String>,
    server_hb_secs: u16,
    payload_scratch: AlignedVec,
}

impl Shared {
    fn error(&mut self, e: String) {
        if self.errors.len() < 8 {
            self.errors.push(e);
        }
    }
}

/// The TLS settings of the bench's QUIC terminals: trust the PEM certificate(s) in `ca`.
pub fn client_config(ca: &std::path::Path) -> anyhow::Result<quinn::ClientConfig> {
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.with_context(|| format!("{}: not a PEM certificate", ca.display()))?)?;
    }
    if roots.is_empty() {
        bail!("{}: no certificate in the file", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Herald's heartbeats keep the session alive; a generous idle timeout so the bench never
    // closes a connection the gateway still holds.
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(120))?));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Raises a client socket's receive buffer to `CLIENT_RCVBUF` (`SO_RCVBUFFORCE` when allowed,
/// else as far as `net.core.rmem_max` lets `SO_RCVBUF`): with the default ~208 KiB, a burst to
/// thousands of connections on one socket overflows it on the client side and the measurement
/// would be of the bench's loss, not the gateway's.
fn grow_receive_buffer(sock: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = CLIENT_RCVBUF;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: setsockopt on a socket this function borrows, with a pointer to a live c_int of
    // the length given.
    unsafe {
        let fd = sock.as_raw_fd();
        if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&raw const size).cast(), len) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&raw const size).cast(), len);
        }
    }
}

/// Receive buffer of a client endpoint's UDP socket, bytes.
const CLIENT_RCVBUF: libc::c_int = 16 << 20;

/// Runs a QUIC worker until stdin closes or `Quit` arrives.
pub fn run(cfg: WorkerConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, main_loop(cfg))
}

async fn main_loop(cfg: WorkerConfig) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
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
    let ca = cfg.ca.as_deref().context("--transport quic needs --ca")?;
    let client = client_config(ca)?;
    let mut endpoints = Vec::new();
    for _ in 0..cfg.endpoints.max(1) {
        let sock = std::net::UdpSocket::bind(SocketAddr::new(cfg.source.into(), 0))
            .with_context(|| format!("binding a QUIC client endpoint on {}", cfg.source))?;
        grow_receive_buffer(&sock);
        let mut ep = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            sock,
            Arc::new(quinn::TokioRuntime),
        )?;
        ep.set_default_client_config(client.clone());
        endpoints.push(ep);
    }
    let gateway = SocketAddr::V4(cfg.gateway);
    let sh = Rc::new(RefCell::new(Shared {
        stats: Stats::default(),
        histo: hist::new_us(),
        timeline: BTreeMap::new(),
        close_codes: BTreeMap::new(),
        state: Vec::new(),
        per_conn: Vec::new(),
        ready: 0,
        pending: 0,
        failed: 0,
        retries: 0,
        first_start_ns: 0,
        last_ok_ns: 0,
        errors: Vec::new(),
        server_hb_secs: 0,
        payload_scratch: AlignedVec::new(),
    }));
    let sem = Rc::new(Semaphore::new(cfg.inflight.max(1)));
    let (hb_tx, hb_rx) = watch::channel(0u64);
    let (drop_tx, drop_rx) = watch::channel(0u64);
    let mut logins: Vec<Bytes> = Vec::new();
    let mut connecting = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Cmd::Quit => break,
                    Cmd::Creds { creds } => {
                        drop_tx.send_modify(|g| *g += 1);
                        logins = creds
                            .iter()
                            .map(|c| {
                                let mut b = BytesMut::new();
                                Login::new(Bytes::from(c.token.clone()), Bytes::from(c.device.clone()), &[])
                                    .encode(&mut b)
                                    .map(|()| b.freeze())
                            })
                            .collect::<Result<_, _>>()
                            .context("encoding a login")?;
                        let mut s = sh.borrow_mut();
                        s.state = vec![State::Down; logins.len()];
                        s.per_conn = vec![0; logins.len()];
                        s.ready = 0;
                    }
                    Cmd::Connect => {
                        connecting = true;
                        let mut s = sh.borrow_mut();
                        s.failed = 0;
                        s.retries = 0;
                        s.first_start_ns = 0;
                        s.last_ok_ns = 0;
                        s.errors.clear();
                        let n = logins.len();
                        for i in 0..n {
                            if s.state[i] != State::Down {
                                continue;
                            }
                            s.state[i] = State::Connecting;
                            s.pending += 1;
                            let task = ConnTask {
                                i,
                                n,
                                login: logins[i].clone(),
                                ep: endpoints[i % endpoints.len()].clone(),
                                gateway,
                                sh: sh.clone(),
                                sem: sem.clone(),
                                attempts: cfg.attempts.max(1),
                                hb: hb_rx.clone(),
                                drop: drop_rx.clone(),
                            };
                            tokio::task::spawn_local(task.run());
                        }
                    }
                    Cmd::Drop => {
                        drop_tx.send_modify(|g| *g += 1);
                        let mut s = sh.borrow_mut();
                        for st in &mut s.state {
                            if *st == State::Up {
                                *st = State::Down;
                            }
                        }
                        s.ready = 0;
                    }
                    Cmd::Heartbeat { interval_ms } => {
                        let _ = hb_tx.send(interval_ms);
                    }
                    Cmd::Stats { reset } => {
                        let mut s = sh.borrow_mut();
                        let mut st = s.stats.clone();
                        st.ready = s.ready;
                        st.hist = hist::to_pairs(&s.histo);
                        st.timeline = s.timeline.iter().map(|(k, v)| (*k, *v)).collect();
                        st.close_codes = s.close_codes.iter().map(|(k, v)| (*k, *v)).collect();
                        let mut per: BTreeMap<u64, u64> = BTreeMap::new();
                        for (i, n) in s.per_conn.iter().enumerate() {
                            if s.state[i] == State::Up {
                                *per.entry(*n).or_insert(0) += 1;
                            }
                        }
                        st.per_conn = per.into_iter().collect();
                        emit(&Msg::Stats(st));
                        if reset {
                            s.stats.deliveries = 0;
                            s.stats.untimed = 0;
                            s.stats.first_recv_ns = 0;
                            s.stats.last_recv_ns = 0;
                            s.histo.reset();
                            s.timeline.clear();
                            s.per_conn.iter_mut().for_each(|n| *n = 0);
                        }
                    }
                    Cmd::FloorConnect { .. } => {
                        emit(&Msg::Error { error: "the raw floor is TCP only (not with --transport quic)".into() });
                    }
                    Cmd::FloorClose => {}
                }
            }
            _ = tick.tick() => {
                if connecting {
                    let mut s = sh.borrow_mut();
                    if s.pending == 0 {
                        connecting = false;
                        emit(&Msg::Connected {
                            ready: s.ready,
                            failed: s.failed,
                            retries: s.retries,
                            first_start_ns: s.first_start_ns,
                            last_ok_ns: s.last_ok_ns,
                            errors: std::mem::take(&mut s.errors),
                        });
                    } else {
                        emit(&Msg::Progress { ready: s.ready, failed: s.failed });
                    }
                }
            }
        }
    }
    drop_tx.send_modify(|g| *g += 1);
    for ep in &endpoints {
        ep.close(0u32.into(), b"bench done");
    }
    for ep in &endpoints {
        let _ = tokio::time::timeout(Duration::from_millis(500), ep.wait_idle()).await;
    }
    Ok(())
}

struct ConnTask {
    i: usize,
    n: usize,
    login: Bytes,
    ep: quinn::Endpoint,
    gateway: SocketAddr,
    sh: Rc<RefCell<Shared>>,
    sem: Rc<Semaphore>,
    attempts: u32,
    hb: watch::Receiver<u64>,
    drop: watch::Receiver<u64>,
}

struct Session {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl ConnTask {
    /// Handshake, stream, LOGIN, LOGIN_OK.
    async fn establish(&self, decoder: &mut Decoder) -> anyhow::Result<Session> {
        let conn = self.ep.connect(self.gateway, SERVER_NAME)?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&self.login).await?;
        let mut buf = BytesMut::new();
        loop {
            let Some(chunk) = recv.read_chunk(64 * 1024, true).await? else {
                bail!("stream ended before LOGIN_OK");
            };
            buf.extend_from_slice(&chunk.bytes);
            while let Some(f) = decoder.decode(&mut buf)? {
                match f {
                    Frame::LoginOk(ok) => {
                        let mut s = self.sh.borrow_mut();
                        if s.server_hb_secs == 0 {
                            s.server_hb_secs = ok.heartbeat_interval_secs;
                        }
                        return Ok(Session { conn, send, recv, buf });
                    }
                    Frame::Close(c) => {
                        *self.sh.borrow_mut().close_codes.entry(c.code.0).or_insert(0) += 1;
                        bail!("login refused: {} {}", c.code.label(), c.reason_str());
                    }
                    _ => {}
                }
            }
        }
    }

    fn interval(&self) -> Duration {
        let ms = match *self.hb.borrow() {
            0 => match self.sh.borrow().server_hb_secs {
                0 => 15_000,
                s => u64::from(s) * 500,
            },
            ms => ms,
        };
        Duration::from_millis(ms.max(1))
    }

    /// When connection `i` first pings after an interval change: spread evenly over it.
    fn first_ping(&self, every: Duration) -> Instant {
        Instant::now() + every.mul_f64(self.i as f64 / self.n.max(1) as f64)
    }

    async fn run(mut self) {
        // The receivers were cloned from ones that never looked: mark what is current as seen.
        let generation = *self.drop.borrow_and_update();
        self.hb.borrow_and_update();
        let mut decoder = Decoder::default();
        let mut tries = 0;
        let mut sess = loop {
            tries += 1;
            let permit = self.sem.acquire().await;
            {
                let mut s = self.sh.borrow_mut();
                if s.first_start_ns == 0 {
                    s.first_start_ns = now_ns();
                }
            }
            let r = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.establish(&mut decoder)).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("handshake and login timed out")),
            };
            drop(permit);
            let mut s = self.sh.borrow_mut();
            match r {
                Ok(sess) => {
                    s.pending -= 1;
                    s.ready += 1;
                    s.last_ok_ns = now_ns();
                    s.state[self.i] = State::Up;
                    break sess;
                }
                Err(e) if tries < self.attempts => {
                    s.retries += 1;
                    let _ = e;
                }
                Err(e) => {
                    s.pending -= 1;
                    s.failed += 1;
                    s.state[self.i] = State::Down;
                    s.error(format!("{e:#}"));
                    return;
                }
            }
        };
        let mut every = self.interval();
        let mut next = self.first_ping(every);
        let mut nonce = 0u8;
        let mut acks: Vec<AckRange> = Vec::new();
        let why = loop {
            tokio::select! {
                chunk = sess.recv.read_chunk(64 * 1024, true) => {
                    let chunk = match chunk {
                        Ok(Some(c)) => c,
                        Ok(None) => break "stream ended".to_string(),
                        Err(e) => break format!("{e}"),
                    };
                    let now = now_ns();
                    sess.buf.extend_from_slice(&chunk.bytes);
                    loop {
                        match decoder.decode(&mut sess.buf) {
                            Ok(Some(f)) => self.on_frame(f, now, &mut acks),
                            Ok(None) => break,
                            Err(e) => {
                                acks.clear();
                                sess.buf.clear();
                                self.sh.borrow_mut().error(format!("undecodable bytes: {e}"));
                                break;
                            }
                        }
                    }
                    if sess.buf.is_empty() {
                        sess.buf = BytesMut::new();
                    }
                    if !acks.is_empty() {
                        let mut b = BytesMut::new();
                        if Ack::new(&acks).encode(&mut b).is_ok() && sess.send.write_all(&b).await.is_err() {
                            break "write failed".to_string();
                        }
                        acks.clear();
                    }
                }
                () = tokio::time::sleep_until(next) => {
                    nonce = nonce.wrapping_add(1);
                    next += every;
                    if sess.send.write_all(&[frame::T_PING, nonce]).await.is_err() {
                        break "write failed".to_string();
                    }
                    self.sh.borrow_mut().stats.pings_sent += 1;
                }
                r = self.hb.changed() => {
                    if r.is_err() {
                        break String::new();
                    }
                    every = self.interval();
                    next = self.first_ping(every);
                }
                _ = self.drop.changed() => {
                    sess.conn.close(0u32.into(), b"bench drop");
                    return;
                }
            }
        };
        // Ended without being asked to (unless a drop raced it).
        let mut s = self.sh.borrow_mut();
        if *self.drop.borrow() == generation && s.state[self.i] == State::Up {
            s.state[self.i] = State::Down;
            s.ready -= 1;
            s.stats.disconnects += 1;
            if !why.is_empty() {
                s.error(why);
            }
        }
    }

    fn on_frame(&self, f: Frame, now: u64, acks: &mut Vec<AckRange>) {
        let mut s = self.sh.borrow_mut();
        let s = &mut *s;
        match f {
            Frame::Pong { .. } => s.stats.pongs += 1,
            Frame::Push(p) => {
                s.stats.deliveries += 1;
                s.per_conn[self.i] += 1;
                if s.stats.first_recv_ns == 0 {
                    s.stats.first_recv_ns = now;
                }
                s.stats.last_recv_ns = now;
                *s.timeline.entry(now / TIMELINE_BUCKET_NS).or_insert(0) += 1;
                match send_time_ns(&p.payload, &mut s.payload_scratch) {
                    Some(t) => hist::record_us(&mut s.histo, now.saturating_sub(t) / 1000),
                    None => s.stats.untimed += 1,
                }
                if p.flags.contains(PushFlags::ACK_REQUIRED) {
                    match acks.iter_mut().find(|r| r.stream == p.stream) {
                        Some(r) => r.last = r.last.max(p.seq),
                        None => acks.push(AckRange { stream: p.stream, first: 0, last: p.seq }),
                    }
                }
            }
            Frame::Close(c) => *s.close_codes.entry(c.code.0).or_insert(0) += 1,
            Frame::GoAway(g) => *s.close_codes.entry(g.reason.0).or_insert(0) += 1,
            _ => {}
        }
    }
}
