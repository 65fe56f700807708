//! One core's QUIC endpoint: its UDP socket, its `quinn_proto::Endpoint`, every connection it
//! holds and their deadlines in one ordered set. It is told the time and does no waiting of its
//! own: the core's QUIC task calls [`CoreEndpoint::recv`] on readiness, [`CoreEndpoint::expire`]
//! when the earliest deadline passes and [`CoreEndpoint::drive`] whenever a connection has work,
//! and hands the resulting [`AppEvent`]s to the session logic the TCP path uses too.

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, EcnCodepoint, Endpoint, EndpointConfig, Event, ReadError,
    ServerConfig, StreamEvent, StreamId, Transmit, VarInt, WriteError,
};
use quinn_udp::{RecvMeta, UdpSocketState};

use super::cid::{self, CoreCids};

/// A connection of this core's endpoint (quinn's handle index).
pub(crate) type ConnRef = usize;

/// The session a connection belongs to: the core's connection slot and its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) slot: usize,
    pub(crate) generation: u32,
}

/// A datagram received by one core for a connection another core owns.
#[derive(Debug)]
pub(crate) struct Datagram {
    remote: SocketAddr,
    local_ip: Option<IpAddr>,
    ecn: Option<EcnCodepoint>,
    data: BytesMut,
}

/// What the session logic must hear about.
#[derive(Debug)]
pub(crate) enum AppEvent {
    /// A new connection; give it a session with [`CoreEndpoint::attach`].
    Accepted(ConnRef),
    /// Bytes of the session's stream, in order.
    Input(Owner, Bytes),
    /// The peer finished (or reset) its side of the stream: no more input.
    Eof(Owner),
    /// The stream takes more bytes again after a blocked write.
    Writable(Owner),
    /// The session is over (connection lost, or the session asked to be finished).
    Ended(Owner),
}

/// How long a finished connection waits for the peer to acknowledge its last frames (GOAWAY,
/// CLOSE) before it is closed anyway.
const LINGER: Duration = Duration::from_secs(2);
/// Datagrams read per turn before other tasks of the core get to run.
const RECV_BUDGET: usize = 256;

#[derive(Debug)]
struct Conn {
    conn: quinn_proto::Connection,
    owner: Option<Owner>,
    stream: Option<StreamId>,
    /// The stream has unread data (or its end) that waits for an owner.
    want_read: bool,
    /// The owner's output is blocked: its stream is not read (quinn's flow control then stops
    /// the peer), so a peer that sends but never reads cannot make the core buffer for it.
    paused: bool,
    /// The owner's last write did not fit. quinn-proto reports `Writable` when stream or peer
    /// flow control reopens, but not when acknowledgements free our own send window, so the
    /// owner is also told after each datagram for this connection (an ack may have freed it).
    want_write: bool,
    /// A datagram for this connection arrived since it was last driven.
    got_datagram: bool,
    /// The deadline this connection has in the core's set.
    timer: Option<Instant>,
    /// Finished: close at this time unless the peer acknowledged everything first.
    linger: Option<Instant>,
    code: VarInt,
    dirty: bool,
}

/// Connections held in place, by quinn's handle index, in chunks of [`CHUNK`]. A connection is
/// ~6.3 KB (`quinn_proto::Connection` alone is 6,160 B), just over mimalloc's 6 KiB size class:
/// boxed one by one, each took a 7 KiB block (~900 B of RSS per connection for nothing). A chunk
/// is one large allocation, freed when its last connection goes (after a mass disconnect the
/// memory goes back, as it did with one box each); quinn reuses freed handles first.
#[derive(Debug)]
struct ConnTable<T = Conn> {
    chunks: Vec<Option<Chunk<T>>>,
}

/// Connections per chunk (~400 KB).
const CHUNK: usize = 64;

#[derive(Debug)]
struct Chunk<T> {
    slots: Box<[Option<T>]>,
    used: usize,
}

impl<T> Default for ConnTable<T> {
    fn default() -> Self {
        ConnTable { chunks: Vec::new() }
    }
}

impl<T> ConnTable<T> {
    fn get_mut(&mut self, c: ConnRef) -> Option<&mut T> {
        self.chunks.get_mut(c / CHUNK)?.as_mut()?.slots[c % CHUNK].as_mut()
    }

    fn insert(&mut self, c: ConnRef, conn: T) {
        if self.chunks.len() <= c / CHUNK {
            self.chunks.resize_with(c / CHUNK + 1, || None);
        }
        let chunk = self.chunks[c / CHUNK].get_or_insert_with(|| Chunk {
            slots: std::iter::repeat_with(|| None).take(CHUNK).collect(),
            used: 0,
        });
        if chunk.slots[c % CHUNK].replace(conn).is_none() {
            chunk.used += 1;
        }
    }

    fn remove(&mut self, c: ConnRef) {
        let Some(entry) = self.chunks.get_mut(c / CHUNK) else { return };
        let Some(chunk) = entry else { return };
        if chunk.slots[c % CHUNK].take().is_some() {
            chunk.used -= 1;
            if chunk.used == 0 {
                *entry = None;
            }
        }
    }

    /// One past the highest handle that may be held.
    fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }
}

/// Per-core QUIC counters (single writer: the core).
#[derive(Debug, Default)]
pub(crate) struct QuicCounters {
    pub(crate) handshakes: u64,
    pub(crate) forwarded_out: u64,
    pub(crate) forwarded_in: u64,
    pub(crate) dropped: u64,
}

/// One core's endpoint. See the module documentation.
#[derive(Debug)]
pub(crate) struct CoreEndpoint {
    core: usize,
    cores: usize,
    endpoint: Endpoint,
    socket: UdpSocket,
    state: UdpSocketState,
    conns: ConnTable,
    open: usize,
    /// One entry per connection with a deadline. A heap with lazily skipped stale entries kept
    /// one per heartbeat for the whole idle timeout (each PING moves the deadline to the loss
    /// timer and back to the idle timeout, ten minutes ahead): hundreds of entries per idle
    /// connection with frequent heartbeats. Entries here are replaced, not left behind.
    timers: BTreeSet<(Instant, ConnRef)>,
    dirty: Vec<ConnRef>,
    events: VecDeque<AppEvent>,
    forward: Vec<(usize, Datagram)>,
    waker: Option<Waker>,
    accepting: bool,
    /// The last read stopped at its budget: the socket may hold more.
    rx_more: bool,
    rx: Box<[u8]>,
    tx: Vec<u8>,
    pub(crate) counters: QuicCounters,
}

impl CoreEndpoint {
    /// Core `core` of `cores`, on its own non-blocking `SO_REUSEPORT` socket.
    pub(crate) fn new(
        core: usize,
        cores: usize,
        socket: UdpSocket,
        server: Arc<ServerConfig>,
        reset_key: Arc<ring::hmac::Key>,
    ) -> io::Result<CoreEndpoint> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let mut cfg = EndpointConfig::new(reset_key);
        cfg.cid_generator(move || Box::new(CoreCids::new(core)));
        let endpoint = Endpoint::new(Arc::new(cfg), Some(server), !state.may_fragment(), None);
        let rx_len = (state.gro_segments() * 1500).max(64 * 1024);
        Ok(CoreEndpoint {
            core,
            cores,
            endpoint,
            socket,
            state,
            conns: ConnTable::default(),
            open: 0,
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            events: VecDeque::new(),
            forward: Vec::new(),
            waker: None,
            accepting: true,
            rx_more: false,
            rx: vec![0u8; rx_len].into_boxed_slice(),
            tx: Vec::with_capacity(64 * 1024),
            counters: QuicCounters::default(),
        })
    }

    /// Connections not yet drained.
    pub(crate) fn open(&self) -> usize {
        self.open
    }

    /// New connections are refused from now on (drain).
    pub(crate) fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    /// Whether a turn has something to do now (besides waiting for the socket or a deadline).
    pub(crate) fn has_work(&self) -> bool {
        !self.dirty.is_empty() || self.rx_more || !self.events.is_empty()
    }

    /// Remembers the task to wake when a connection gets work from outside a turn.
    pub(crate) fn set_waker(&mut self, waker: &Waker) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
    }

    /// The earliest connection deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _)| t)
    }

    pub(crate) fn next_event(&mut self) -> Option<AppEvent> {
        self.events.pop_front()
    }

    /// Datagrams read by this core for connections of other cores: `(core, datagram)`.
    pub(crate) fn take_forwards(&mut self) -> impl Iterator<Item = (usize, Datagram)> + '_ {
        self.forward.drain(..)
    }

    fn mark(&mut self, c: ConnRef) {
        let Some(q) = self.conns.get_mut(c) else { return };
        if !q.dirty {
            q.dirty = true;
            if self.dirty.is_empty()
                && let Some(w) = &self.waker
            {
                w.wake_by_ref();
            }
            self.dirty.push(c);
        }
    }

    /// Reads what the socket holds (up to a budget), handling this core's datagrams and setting
    /// aside those of other cores.
    pub(crate) fn recv(&mut self, now: Instant) {
        self.rx_more = false;
        let mut meta = [RecvMeta::default()];
        for _ in 0..RECV_BUDGET {
            let n = {
                let mut bufs = [IoSliceMut::new(&mut self.rx)];
                match self.state.recv((&self.socket).into(), &mut bufs, &mut meta) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            };
            if n == 0 {
                return;
            }
            let m = meta[0];
            let ecn = m.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
            let stride = m.stride.max(1);
            let mut at = 0;
            while at < m.len {
                let end = (at + stride).min(m.len);
                let d = Datagram {
                    remote: m.addr,
                    local_ip: m.dst_ip,
                    ecn,
                    data: BytesMut::from(&self.rx[at..end]),
                };
                at = end;
                match cid::owner(&d.data) {
                    Some(o) if o == self.core => self.handle(now, d),
                    Some(o) if o < self.cores => {
                        self.counters.forwarded_out += 1;
                        self.forward.push((o, d));
                    }
                    // An ID no core of this node issued: nobody holds that connection.
                    Some(_) => self.counters.dropped += 1,
                    None => self.handle(now, d),
                }
            }
        }
        self.rx_more = true;
    }

    /// A datagram another core read for one of this core's connections.
    pub(crate) fn forwarded(&mut self, now: Instant, d: Datagram) {
        self.counters.forwarded_in += 1;
        self.handle(now, d);
    }

    fn handle(&mut self, now: Instant, d: Datagram) {
        let event = self.endpoint.handle(now, d.remote, d.local_ip, d.ecn, d.data, &mut self.tx);
        match event {
            None => {}
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(q) = self.conns.get_mut(ch.0) {
                    q.conn.handle_event(ev);
                    q.got_datagram = true;
                    self.mark(ch.0);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                self.tx.clear();
                if !self.accepting {
                    let t = self.endpoint.refuse(incoming, &mut self.tx);
                    send(&self.socket, &self.state, &t, &self.tx);
                } else {
                    match self.endpoint.accept(incoming, now, &mut self.tx, None) {
                        Ok((ch, conn)) => self.insert(ch, conn),
                        Err(e) => {
                            if let Some(t) = e.response {
                                send(&self.socket, &self.state, &t, &self.tx);
                            }
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => send(&self.socket, &self.state, &t, &self.tx),
        }
        self.tx.clear();
    }

    fn insert(&mut self, ch: ConnectionHandle, conn: quinn_proto::Connection) {
        let i = ch.0;
        self.conns.insert(
            i,
            Conn {
                conn,
                owner: None,
                stream: None,
                want_read: false,
                paused: false,
                want_write: false,
                got_datagram: false,
                timer: None,
                linger: None,
                code: VarInt::from_u32(0),
                dirty: false,
            },
        );
        self.open += 1;
        self.counters.handshakes += 1;
        self.events.push_back(AppEvent::Accepted(i));
        self.mark(i);
    }

    /// Gives a new connection its session.
    pub(crate) fn attach(&mut self, c: ConnRef, owner: Owner) {
        if let Some(q) = self.conns.get_mut(c) {
            q.owner = Some(owner);
            self.mark(c);
        }
    }

    /// Lets every connection whose deadline has passed handle it.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(t, c)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            let Some(q) = self.conns.get_mut(c) else { continue };
            if q.timer != Some(t) {
                continue;
            }
            q.timer = None;
            q.conn.handle_timeout(now);
            self.mark(c);
        }
    }

    /// Writes as much of `iov` to the connection's stream as its windows allow. `WouldBlock`
    /// when nothing fits (a [`AppEvent::Writable`] follows) or the stream is not open yet.
    pub(crate) fn write(&mut self, c: ConnRef, iov: &[libc::iovec]) -> io::Result<usize> {
        let Some(q) = self.conns.get_mut(c) else { return Err(io::ErrorKind::NotConnected.into()) };
        let Some(id) = q.stream else { return Err(io::ErrorKind::WouldBlock.into()) };
        let mut total = 0;
        let mut failed = None;
        for v in iov {
            // SAFETY: the caller's iovecs point at live bytes of the given lengths (see
            // `Outbound::flush`) for the duration of this call.
            let bytes = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            match q.conn.send_stream(id).write(bytes) {
                Ok(n) => {
                    total += n;
                    if n < bytes.len() {
                        break;
                    }
                }
                Err(WriteError::Blocked) => break,
                Err(_) => {
                    failed = Some(io::ErrorKind::BrokenPipe);
                    break;
                }
            }
        }
        let wanted: usize = iov.iter().map(|v| v.iov_len).sum();
        if failed.is_none() && total < wanted {
            q.want_write = true;
        }
        self.mark(c);
        match (total, failed) {
            (0, Some(k)) => Err(k.into()),
            (0, None) if iov.iter().any(|v| v.iov_len > 0) => Err(io::ErrorKind::WouldBlock.into()),
            (n, _) => Ok(n),
        }
    }

    /// Stops (`true`) or resumes reading the connection's stream (see [`Conn::paused`]).
    pub(crate) fn pause_input(&mut self, c: ConnRef, paused: bool) {
        let Some(q) = self.conns.get_mut(c) else { return };
        q.paused = paused;
        if !paused && q.want_read {
            self.mark(c);
        }
    }

    /// The session is done sending: finish the stream and close once the peer has acknowledged
    /// it (or after [`LINGER`]). The session is detached: no more events for it.
    pub(crate) fn end(&mut self, c: ConnRef, code: u16, now: Instant) {
        let Some(q) = self.conns.get_mut(c) else { return };
        q.owner = None;
        q.code = VarInt::from_u32(u32::from(code));
        match q.stream {
            Some(id) if !q.conn.is_closed() && q.conn.send_stream(id).finish().is_ok() => {
                q.linger = Some(now + LINGER);
            }
            _ => {
                if !q.conn.is_closed() {
                    q.conn.close(now, q.code, Bytes::new());
                }
            }
        }
        self.mark(c);
    }

    /// Closes the connection at once (its stream's unsent bytes are lost).
    pub(crate) fn abort(&mut self, c: ConnRef, code: u16, now: Instant) {
        let Some(q) = self.conns.get_mut(c) else { return };
        if !q.conn.is_closed() {
            q.conn.close(now, VarInt::from_u32(u32::from(code)), Bytes::new());
        }
        self.mark(c);
    }

    /// Asks for the session to be ended from a turn (never from inside the session logic's own
    /// call, which may still be using the connection's slot): an [`AppEvent::Ended`] follows.
    pub(crate) fn request_end(&mut self, c: ConnRef) {
        let Some(q) = self.conns.get_mut(c) else { return };
        if let Some(o) = q.owner.take() {
            self.events.push_back(AppEvent::Ended(o));
            if let Some(w) = &self.waker {
                w.wake_by_ref();
            }
        }
    }

    /// Closes every connection now (end of a drain).
    pub(crate) fn close_all(&mut self, now: Instant) {
        for c in 0..self.conns.capacity() {
            self.abort(c, 0, now);
        }
    }

    /// Handles everything connections with work have to do: endpoint bookkeeping, stream
    /// events (queued as [`AppEvent`]s), transmissions and new deadlines.
    pub(crate) fn drive(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &c in &dirty {
            self.drive_conn(c, now);
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn drive_conn(&mut self, c: ConnRef, now: Instant) {
        let CoreEndpoint { endpoint, socket, state, conns, timers, events, tx, open, .. } = self;
        let Some(q) = conns.get_mut(c) else { return };
        q.dirty = false;
        if q.linger.is_some_and(|t| t <= now) {
            q.linger = None;
            q.conn.close(now, q.code, Bytes::new());
        }
        while let Some(ev) = q.conn.poll() {
            match ev {
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) if q.stream.is_none() => {
                    q.stream = q.conn.streams().accept(Dir::Bi);
                    q.want_read = q.stream.is_some();
                }
                Event::Stream(StreamEvent::Readable { id }) if q.stream == Some(id) => q.want_read = true,
                Event::Stream(StreamEvent::Writable { id }) if q.stream == Some(id) => {
                    if let Some(o) = q.owner {
                        events.push_back(AppEvent::Writable(o));
                    }
                }
                Event::Stream(StreamEvent::Finished { .. }) => {
                    // Everything we sent, GOAWAY or CLOSE included, was acknowledged.
                    q.linger = None;
                    q.conn.close(now, q.code, Bytes::new());
                }
                Event::Stream(StreamEvent::Stopped { .. }) => q.conn.close(now, q.code, Bytes::new()),
                Event::ConnectionLost { .. } => {
                    if let Some(o) = q.owner.take() {
                        events.push_back(AppEvent::Ended(o));
                    }
                }
                _ => {}
            }
        }
        if std::mem::take(&mut q.got_datagram)
            && q.want_write
            && let Some(o) = q.owner
        {
            q.want_write = false;
            events.push_back(AppEvent::Writable(o));
        }
        if q.want_read
            && !q.paused
            && let (Some(o), Some(id)) = (q.owner, q.stream)
        {
            q.want_read = false;
            read_stream(q, id, o, events);
        }
        let segments = state.max_gso_segments();
        loop {
            tx.clear();
            match q.conn.poll_transmit(now, segments, tx) {
                Some(t) => send(socket, state, &t, tx),
                None => break,
            }
        }
        tx.clear();
        while let Some(ev) = q.conn.poll_endpoint_events() {
            if let Some(back) = endpoint.handle_event(ConnectionHandle(c), ev) {
                q.conn.handle_event(back);
            }
        }
        if q.conn.is_drained() {
            if let Some(o) = q.owner.take() {
                events.push_back(AppEvent::Ended(o));
            }
            if let Some(t) = q.timer {
                timers.remove(&(t, c));
            }
            conns.remove(c);
            *open -= 1;
            return;
        }
        let next = match (q.conn.poll_timeout(), q.linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next != q.timer {
            if let Some(t) = q.timer {
                timers.remove(&(t, c));
            }
            q.timer = next;
            if let Some(t) = next {
                timers.insert((t, c));
            }
        }
    }
}

fn read_stream(q: &mut Conn, id: StreamId, o: Owner, events: &mut VecDeque<AppEvent>) {
    let mut rs = q.conn.recv_stream(id);
    let Ok(mut chunks) = rs.read(true) else { return };
    loop {
        match chunks.next(usize::MAX) {
            Ok(Some(chunk)) => events.push_back(AppEvent::Input(o, chunk.bytes)),
            Ok(None) | Err(ReadError::Reset(_)) => {
                events.push_back(AppEvent::Eof(o));
                break;
            }
            Err(ReadError::Blocked) => break,
        }
    }
    // A window update is sent by the next `poll_transmit`.
    let _ = chunks.finalize();
}

fn send(socket: &UdpSocket, state: &UdpSocketState, t: &Transmit, buf: &[u8]) {
    let tr = quinn_udp::Transmit {
        destination: t.destination,
        ecn: t.ecn.and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
        contents: &buf[..t.size],
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    };
    // A full socket buffer drops the datagram; QUIC's loss recovery resends what mattered.
    let _ = state.send(socket.into(), &tr);
}

/// Writes a session's outbound queue into its connection's stream.
#[derive(Debug)]
pub(crate) struct StreamWriter<'a> {
    ep: &'a mut CoreEndpoint,
    c: ConnRef,
}

impl CoreEndpoint {
    pub(crate) fn writer(&mut self, c: ConnRef) -> StreamWriter<'_> {
        StreamWriter { ep: self, c }
    }
}

impl crate::outbound::WriteVectored for StreamWriter<'_> {
    fn write_iov(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        self.ep.write(self.c, iov)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds_by_handle_and_frees_a_chunk_with_its_last_connection() {
        let mut t = ConnTable::<u32>::default();
        t.insert(3, 30);
        t.insert(CHUNK + 1, 65);
        assert_eq!(t.get_mut(3), Some(&mut 30));
        assert_eq!(t.get_mut(CHUNK + 1), Some(&mut 65));
        assert_eq!(t.get_mut(4), None);
        assert_eq!(t.get_mut(10 * CHUNK), None);
        assert_eq!(t.capacity(), 2 * CHUNK);
        t.insert(3, 31);
        t.insert(5, 50);
        t.remove(3);
        assert_eq!(t.get_mut(3), None);
        assert!(t.chunks[0].is_some(), "a chunk with a connection left is kept");
        t.remove(5);
        t.remove(5);
        assert!(t.chunks[0].is_none(), "the chunk went with its last connection");
        assert_eq!(t.get_mut(CHUNK + 1), Some(&mut 65));
        t.insert(7, 70);
        assert_eq!(t.get_mut(7), Some(&mut 70));
        assert_eq!(t.chunks[0].as_ref().map(|c| c.used), Some(1));
    }
}
