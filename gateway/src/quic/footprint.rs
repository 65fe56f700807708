//! What an idle QUIC session costs the gateway in heap, measured rather than guessed (issue #6).
//!
//! One test, ignored by `cargo test` because it measures instead of checking: it runs a core's
//! [`CoreEndpoint`] (the gateway's own server and transport configuration, connection IDs and
//! socket) on loopback against sans-IO `quinn-proto` clients in the same thread, completes
//! `CONNS` handshakes, a LOGIN-sized request and its reply and one heartbeat on each session's
//! stream, lets the acknowledgements settle, runs `HEARTBEATS` more heartbeats (reporting how
//! much the heap grew with them), drops the clients and reports the live heap the server side
//! holds per connection (glibc's `mallinfo2`: the test binary runs on the system
//! allocator, whose per-chunk overhead is close to mimalloc's size classes for these sizes).
//!
//! ```sh
//! cargo test --release -p herald-gateway --lib quic::footprint -- --ignored --nocapture
//! ```
//! For the bytes per allocation site, run the test binary it builds under `heaptrack` with
//! `FOOTPRINT_KEEP=1`: the server's connections are then left to the process exit, so
//! `heaptrack_print --print-leaks` lists what each connection holds while idle.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::{ConnectionHandle, DatagramEvent, Dir, Event, StreamEvent, StreamId};

use super::endpoint::{AppEvent, CoreEndpoint, Owner};
use super::{QuicShared, tls};

/// Sessions measured.
const CONNS: usize = 2_000;
/// Handshakes started at once (loopback socket buffers hold their flights).
const BATCH: usize = 50;
/// A LOGIN frame with a signed token is about this long.
const LOGIN_BYTES: usize = 180;
/// LOGIN_OK.
const REPLY_BYTES: usize = 48;
/// PING and PONG.
const HEARTBEAT_BYTES: usize = 8;
/// Heartbeats after the first, to see whether an idle session grows with them.
const HEARTBEATS: usize = 20;

fn heap_bytes() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}

/// One sans-IO client session.
struct Client {
    conn: quinn_proto::Connection,
    stream: Option<StreamId>,
    /// Reply bytes read so far; the first heartbeat goes out after the LOGIN reply.
    read: usize,
    /// Heartbeats sent.
    pings: usize,
}

struct Clients {
    ep: quinn_proto::Endpoint,
    socket: UdpSocket,
    config: quinn_proto::ClientConfig,
    server: SocketAddr,
    conns: HashMap<ConnectionHandle, Client>,
    buf: Vec<u8>,
    rx: Vec<u8>,
}

impl Clients {
    fn new(server: SocketAddr, ca: &rustls::pki_types::CertificateDer<'static>) -> Clients {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20);
        Clients {
            ep: quinn_proto::Endpoint::new(Default::default(), None, true, None),
            socket,
            config: tls::client_config_for_tests(ca),
            server,
            conns: HashMap::new(),
            buf: Vec::new(),
            rx: vec![0; 64 * 1024],
        }
    }

    fn connect(&mut self, now: Instant) {
        let (ch, conn) = self.ep.connect(now, self.config.clone(), self.server, "localhost").unwrap();
        self.conns.insert(ch, Client { conn, stream: None, read: 0, pings: 0 });
    }

    /// Sessions that got every heartbeat answered.
    fn done(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.pings > 0 && c.read >= REPLY_BYTES + c.pings * HEARTBEAT_BYTES)
            .count()
    }

    /// One more heartbeat on every session.
    fn heartbeat(&mut self) {
        for c in self.conns.values_mut() {
            if let Some(id) = c.stream {
                c.conn.send_stream(id).write(&[2; HEARTBEAT_BYTES]).unwrap();
                c.pings += 1;
            }
        }
    }

    fn pump(&mut self, now: Instant) {
        loop {
            match self.socket.recv_from(&mut self.rx) {
                Ok((n, from)) => {
                    self.buf.clear();
                    let data = BytesMut::from(&self.rx[..n]);
                    if let Some(DatagramEvent::ConnectionEvent(ch, ev)) =
                        self.ep.handle(now, from, None, None, data, &mut self.buf)
                        && let Some(c) = self.conns.get_mut(&ch)
                    {
                        c.conn.handle_event(ev);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("client socket: {e}"),
            }
        }
        for (&ch, c) in &mut self.conns {
            if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                c.conn.handle_timeout(now);
            }
            while let Some(ev) = c.conn.poll() {
                match ev {
                    Event::Connected => {
                        let id = c.conn.streams().open(Dir::Bi).unwrap();
                        c.conn.send_stream(id).write(&[1; LOGIN_BYTES]).unwrap();
                        c.stream = Some(id);
                    }
                    Event::Stream(StreamEvent::Readable { id }) => {
                        let mut rs = c.conn.recv_stream(id);
                        let mut chunks = rs.read(true).unwrap();
                        while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                            c.read += chunk.bytes.len();
                        }
                        let _ = chunks.finalize();
                    }
                    Event::ConnectionLost { reason } => panic!("client lost its connection: {reason}"),
                    _ => {}
                }
            }
            if c.read >= REPLY_BYTES
                && c.pings == 0
                && let Some(id) = c.stream
            {
                c.conn.send_stream(id).write(&[2; HEARTBEAT_BYTES]).unwrap();
                c.pings = 1;
            }
            loop {
                self.buf.clear();
                let Some(t) = c.conn.poll_transmit(now, 1, &mut self.buf) else { break };
                let _ = self.socket.send_to(&self.buf[..t.size], t.destination);
            }
            while let Some(ev) = c.conn.poll_endpoint_events() {
                if let Some(back) = self.ep.handle_event(ch, ev) {
                    c.conn.handle_event(back);
                }
            }
        }
    }
}

/// Runs the core's endpoint like `Worker::quic_turn` does, answering each session's input with a
/// LOGIN_OK-sized reply, then heartbeat-sized ones.
fn serve(ep: &mut CoreEndpoint, answered: &mut HashMap<usize, bool>, now: Instant) {
    ep.recv(now);
    ep.expire(now);
    loop {
        ep.drive(now);
        let mut any = false;
        while let Some(ev) = ep.next_event() {
            any = true;
            match ev {
                AppEvent::Accepted(c) => ep.attach(c, Owner { slot: c, generation: 0 }),
                AppEvent::Input(o, _) => {
                    let first = answered.insert(o.slot, true).is_none();
                    let reply = if first { [3u8; REPLY_BYTES].as_slice() } else { &[4; HEARTBEAT_BYTES] };
                    let iov = [libc::iovec { iov_base: reply.as_ptr() as *mut _, iov_len: reply.len() }];
                    ep.write(o.slot, &iov).unwrap();
                }
                AppEvent::Eof(_) | AppEvent::Writable(_) | AppEvent::Ended(_) => {}
            }
        }
        // A full socket is read again on the next call, as the core's next turn would.
        if !any {
            break;
        }
    }
}

/// Pumps both ends until every session got every heartbeat answered.
fn run_until_answered(clients: &mut Clients, server: &mut CoreEndpoint, answered: &mut HashMap<usize, bool>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while clients.done() < clients.conns.len() {
        assert!(Instant::now() < deadline, "stuck: {} of {} answered", clients.done(), clients.conns.len());
        clients.pump(Instant::now());
        serve(server, answered, Instant::now());
    }
}

/// Lets delayed acknowledgements (25 ms) and the last window updates go out.
fn settle(clients: &mut Clients, server: &mut CoreEndpoint, answered: &mut HashMap<usize, bool>) {
    let until = Instant::now() + Duration::from_millis(100);
    while Instant::now() < until {
        clients.pump(Instant::now());
        serve(server, answered, Instant::now());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
#[ignore = "a measurement, not a check: run it with --ignored --nocapture"]
fn idle_connection_footprint() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = tls::dev_certificate(dir.path()).unwrap();
    let (chain, _) = tls::load(&cert, &key).unwrap();
    // The default heartbeat grace: the idle timeout of every session.
    let shared = QuicShared::new(&cert, &key, Duration::from_secs(600)).unwrap();

    let heap_empty = heap_bytes();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20);
    let server_addr = socket.local_addr().unwrap();
    let mut server =
        CoreEndpoint::new(0, 1, socket, shared.server.clone(), shared.reset_key.clone()).unwrap();
    let mut clients = Clients::new(server_addr, &chain[0]);
    let mut answered = HashMap::new();
    let heap_start = heap_bytes();

    let started = Instant::now();
    while clients.conns.len() < CONNS {
        for _ in 0..BATCH.min(CONNS - clients.conns.len()) {
            clients.connect(Instant::now());
        }
        run_until_answered(&mut clients, &mut server, &mut answered);
    }
    let handshakes = started.elapsed();
    settle(&mut clients, &mut server, &mut answered);
    assert_eq!(server.open(), CONNS);
    let heap_idle = heap_bytes();

    for _ in 0..HEARTBEATS {
        clients.heartbeat();
        run_until_answered(&mut clients, &mut server, &mut answered);
        settle(&mut clients, &mut server, &mut answered);
    }
    let heap_both = heap_bytes();
    drop(clients);
    let heap_server = heap_bytes();
    let per = |a: usize, b: usize| (a as f64 - b as f64) / CONNS as f64;
    println!("{CONNS} sessions, handshakes + login + heartbeat in {handshakes:?}");
    println!("server endpoint before any connection: {} B", heap_start - heap_empty);
    println!("server heap per idle session: {:.0} B", per(heap_server, heap_start));
    println!("client heap per session: {:.0} B", per(heap_both, heap_server));
    println!(
        "heap growth per session over {HEARTBEATS} more heartbeats (both ends): {:.0} B",
        per(heap_both, heap_idle)
    );
    println!("size_of quinn_proto::Connection: {} B", size_of::<quinn_proto::Connection>());
    if std::env::var_os("FOOTPRINT_KEEP").is_some() {
        // Left to the process exit, so that a heap profiler lists them as live.
        std::mem::forget(server);
    }
}
