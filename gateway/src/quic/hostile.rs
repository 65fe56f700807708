//! Hostile input for a QUIC server endpoint set up exactly as a gateway core sets up its own
//! (the gateway's TLS and crypto session, transport parameters and core-carrying connection IDs),
//! shared by the fuzz target `quic_initial` (`gateway/fuzz`) and a bounded test.
//!
//! Random datagrams die at the first header check or fail authentication, so most of what a
//! hostile client can reach lies behind a correctly protected Initial packet: anyone can make
//! one, since Initial keys derive from the destination connection ID the client picks (RFC 9001
//! §5.2). [`HostileServer::run`] therefore reads its input as a script of records, most of which
//! become Initial packets *with valid protection* around arbitrary frame bytes — CRYPTO frames
//! reach rustls and the gateway's crypto session (`crypto.rs`), other frames quinn-proto's frame
//! parsing, which Herald vendors and patches (`vendor/quinn-proto`).
//!
//! Record: `kind` (1 byte), `len` (1 byte), then `len` bytes (fewer at the end of the input):
//! - kind % 4 == 0: the bytes as a raw datagram;
//! - 1 and 2: an Initial packet from client A or B (each its own address and connection IDs,
//!   packet numbers counting up) whose payload is the bytes, padded to 1,200 bytes;
//! - 3: time moves on by `bytes[0]` × 10 ms and every timer due fires.
//!
//! After each record every connection is driven until it is quiet. A panic anywhere is a bug:
//! one datagram must never take a core down.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::crypto::Keys;
use quinn_proto::{ConnectionHandle, ConnectionId, DatagramEvent, Endpoint, EndpointConfig, ServerConfig};

use super::cid::CoreCids;
use super::tls;

/// The smallest datagram that may carry a client's Initial packet (RFC 9000 §14.1).
const INITIAL_DATAGRAM: usize = 1200;
/// Packet number length used in the Initial packets made here.
const PN_LEN: usize = 4;
/// Transmits drained per connection per step, so that a bug cannot spin forever here.
const MAX_TRANSMITS: usize = 64;

/// What a run did, for a test to check that the input reached past the first checks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Datagrams handed to the endpoint
    pub datagrams: usize,
    /// Initial packets that passed the endpoint's checks and authentication and were offered as
    /// new connections
    pub incoming: usize,
    /// New connections whose first packet was then processed without a connection error
    pub accepted: usize,
    /// Datagrams the server sent back
    pub transmits: usize,
}

/// A server configuration like a gateway core's, made once (certificate generation is slow)
/// and reused for every run.
#[derive(Debug)]
pub struct HostileServer {
    server: Arc<ServerConfig>,
}

impl Default for HostileServer {
    fn default() -> Self {
        Self::new()
    }
}

impl HostileServer {
    /// A self-signed certificate for `localhost` and the gateway's server configuration.
    pub fn new() -> HostileServer {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        let chain = vec![made.cert.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
        let server = tls::server_config(chain, key, Duration::from_secs(90)).expect("server configuration");
        HostileServer { server: Arc::new(server) }
    }

    /// Plays the script `input` against a fresh endpoint (see the module documentation).
    pub fn run(&self, input: &[u8]) -> Outcome {
        let mut cfg = EndpointConfig::default();
        cfg.cid_generator(|| Box::new(CoreCids::new(0)));
        let mut run = Run {
            endpoint: Endpoint::new(Arc::new(cfg), Some(self.server.clone()), true, None),
            conns: HashMap::new(),
            clients: [Client::new(1), Client::new(2)],
            now: Instant::now(),
            buf: Vec::new(),
            outcome: Outcome::default(),
        };
        let mut rest = input;
        while let [kind, len, tail @ ..] = rest {
            let (bytes, next) = tail.split_at(usize::from(*len).min(tail.len()));
            rest = next;
            match kind % 4 {
                0 => run.datagram(run.clients[0].addr, bytes),
                3 => {
                    run.now += Duration::from_millis(10 * u64::from(bytes.first().copied().unwrap_or(1)));
                    run.timeouts();
                }
                c => {
                    let client = &mut run.clients[usize::from(c - 1)];
                    let (addr, packet) = (client.addr, client.initial(&self.server, bytes));
                    run.datagram(addr, &packet);
                }
            }
            run.drive();
        }
        run.outcome
    }
}

/// One client's identity: its address, the connection IDs it claims, its next packet number.
struct Client {
    addr: SocketAddr,
    dcid: ConnectionId,
    scid: ConnectionId,
    pn: u32,
}

impl Client {
    fn new(n: u8) -> Client {
        Client {
            addr: SocketAddr::from((Ipv4Addr::new(127, 0, 0, n), 40_000 + u16::from(n))),
            dcid: ConnectionId::new(&[n; 8]),
            scid: ConnectionId::new(&[n ^ 0xff; 8]),
            pn: 0,
        }
    }

    /// An Initial packet (RFC 9000 §17.2.2) carrying `frames`, protected with the client's
    /// Initial keys for its destination ID, in a datagram padded to 1,200 bytes.
    fn initial(&mut self, server: &ServerConfig, frames: &[u8]) -> Vec<u8> {
        let keys: Keys = server.crypto.initial_keys(1, &self.dcid).expect("QUIC v1 is supported");
        // The server's keys: `remote` is what the client protects with.
        let (packet_key, header_key) = (&keys.packet.remote, &keys.header.remote);
        let tag = packet_key.tag_len();
        let mut p = vec![0xc0 | (PN_LEN as u8 - 1)];
        p.extend_from_slice(&1u32.to_be_bytes());
        for id in [&self.dcid, &self.scid] {
            p.push(id.len() as u8);
            p.extend_from_slice(id);
        }
        p.push(0); // no token
        let header_without_length = p.len();
        // Payload: the frames, then PADDING frames up to a full datagram.
        let fixed = header_without_length + 2 + PN_LEN + tag;
        let payload_len = frames.len().max(INITIAL_DATAGRAM.saturating_sub(fixed));
        let length = PN_LEN + payload_len + tag;
        p.extend_from_slice(&(0x4000 | length as u16).to_be_bytes());
        let pn_offset = p.len();
        p.extend_from_slice(&self.pn.to_be_bytes());
        let header_len = p.len();
        p.extend_from_slice(frames);
        p.resize(header_len + payload_len + tag, 0);
        packet_key.encrypt(u64::from(self.pn), &mut p, header_len);
        header_key.encrypt(pn_offset, &mut p);
        self.pn += 1;
        p
    }
}

struct Run {
    endpoint: Endpoint,
    conns: HashMap<ConnectionHandle, quinn_proto::Connection>,
    clients: [Client; 2],
    now: Instant,
    buf: Vec<u8>,
    outcome: Outcome,
}

impl Run {
    fn datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        self.outcome.datagrams += 1;
        self.buf.clear();
        let event = self.endpoint.handle(self.now, from, None, None, BytesMut::from(bytes), &mut self.buf);
        match event {
            Some(DatagramEvent::NewConnection(incoming)) => {
                self.outcome.incoming += 1;
                self.buf.clear();
                match self.endpoint.accept(incoming, self.now, &mut self.buf, None) {
                    Ok((ch, conn)) => {
                        self.outcome.accepted += 1;
                        self.conns.insert(ch, conn);
                    }
                    Err(e) => self.outcome.transmits += usize::from(e.response.is_some()),
                }
            }
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(conn) = self.conns.get_mut(&ch) {
                    conn.handle_event(event);
                }
            }
            Some(DatagramEvent::Response(_)) => self.outcome.transmits += 1,
            None => {}
        }
    }

    fn timeouts(&mut self) {
        for conn in self.conns.values_mut() {
            if conn.poll_timeout().is_some_and(|t| t <= self.now) {
                conn.handle_timeout(self.now);
            }
        }
    }

    /// Drives every connection until it has nothing more to send or say.
    fn drive(&mut self) {
        let mut drained = Vec::new();
        for (&ch, conn) in self.conns.iter_mut() {
            for _ in 0..MAX_TRANSMITS {
                self.buf.clear();
                if conn.poll_transmit(self.now, 1, &mut self.buf).is_none() {
                    break;
                }
                self.outcome.transmits += 1;
            }
            while let Some(event) = conn.poll_endpoint_events() {
                if event.is_drained() {
                    drained.push(ch);
                }
                if let Some(reply) = self.endpoint.handle_event(ch, event) {
                    conn.handle_event(reply);
                }
            }
            while conn.poll().is_some() {}
        }
        for ch in drained {
            self.conns.remove(&ch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of a small deterministic generator (xorshift), so the test is the same every run.
    fn noise(seed: &mut u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    fn record(kind: u8, bytes: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, bytes.len() as u8];
        r.extend_from_slice(bytes);
        r
    }

    #[test]
    fn a_protected_initial_is_authenticated_and_answered() {
        // A PING frame alone: authenticated (a connection is accepted), though no handshake
        // can start without a ClientHello.
        let server = HostileServer::new();
        let out = server.run(&record(1, &[0x01]));
        assert_eq!(out.datagrams, 1);
        assert_eq!(out.incoming, 1, "the Initial packet made here must pass the server's checks");
        assert_eq!(out.accepted, 1);
    }

    #[test]
    fn hostile_frames_in_valid_initials_do_not_panic() {
        let server = HostileServer::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let (mut incoming, mut accepted, mut transmits) = (0, 0, 0);
        for round in 0..300 {
            let mut script = Vec::new();
            for i in 0..4 {
                let crypto = (round + i) % 3 != 0;
                let len = if crypto { 3 + noise(&mut seed, 1)[0] % 64 } else { noise(&mut seed, 1)[0] % 200 };
                let mut bytes = noise(&mut seed, usize::from(len));
                if crypto {
                    // A well-formed CRYPTO frame (offset 0, the right length) around noise: it
                    // reaches rustls through the gateway's crypto session.
                    bytes[..3].copy_from_slice(&[0x06, 0, len - 3]);
                }
                let kind = [1, 1, 2, 3, 0][(round + i) % 5];
                script.extend(record(kind, &bytes));
            }
            let out = server.run(&script);
            incoming += out.incoming;
            accepted += out.accepted;
            transmits += out.transmits;
        }
        // The input reached past packet protection, and some of it past the first frames; a
        // panic above would have failed the test.
        assert!(incoming > 300, "only {incoming} Initial packets authenticated");
        assert!(accepted > 0, "no connection got past its first packet");
        assert!(transmits > 0, "the server never answered (a CONNECTION_CLOSE for bad TLS at least)");
    }
}
