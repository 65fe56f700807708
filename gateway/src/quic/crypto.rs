//! The TLS session quinn-proto drives for each connection, which lets go of rustls once the
//! handshake is over.
//!
//! quinn-proto's own session keeps the rustls `ServerConnection` for the connection's life:
//! its state machine, record-layer keys that QUIC never uses, message buffers and the peer's
//! transport parameters — ~3.9 KB of an idle session (measured by `footprint`). After the
//! handshake a QUIC server needs little of it: TLS 1.3 over QUIC has no post-handshake
//! messages from the client (no KeyUpdate, RFC 9001 §6; no client certificates asked, no
//! tickets sent), and key updates need only the traffic secrets, which rustls hands over with
//! the 1-RTT keys. So [`Session`] drops the rustls connection when the handshake is complete
//! and all of it has been written, and keeps the secrets for the next key generation and the
//! few facts `handshake_data` reports.
//!
//! After that point: keying material can no longer be exported (Herald uses none), and the
//! peer's transport parameters are no longer available from the session (quinn-proto reads
//! them on the server once, when the client's first flight arrives).

use std::any::Any;
use std::sync::Arc;

use quinn_proto::crypto::rustls::{HandshakeData, QuicServerConfig};
use quinn_proto::crypto::{self, ExportKeyingMaterialError, KeyPair, Keys, UnsupportedVersion};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::{ConnectionId, Side, TransportError, TransportErrorCode};
use rustls::quic::{Connection, KeyChange, Secrets, ServerConnection, Suite, Version};

use super::TlsError;

/// TLS alert `unexpected_message`, as a QUIC CRYPTO_ERROR (RFC 9001 §4.8).
const UNEXPECTED_MESSAGE: u8 = 10;

/// The server's crypto configuration: sessions are [`Session`]s; initial keys and retry tags
/// are quinn-proto's own.
pub(crate) struct ServerCrypto {
    tls: Arc<rustls::ServerConfig>,
    stock: QuicServerConfig,
    initial: Suite,
}

impl ServerCrypto {
    /// Checks what each session will need from `tls` (TLS 1.3, the initial suite, no partial
    /// early data), so that starting a session cannot fail.
    pub(crate) fn new(tls: rustls::ServerConfig) -> Result<ServerCrypto, TlsError> {
        let tls = Arc::new(tls);
        ServerConnection::new(tls.clone(), Version::V1, Vec::new())?;
        let initial = tls
            .crypto_provider()
            .cipher_suites
            .iter()
            .find_map(|s| match s.tls13() {
                Some(t) if s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => t.quic_suite(),
                _ => None,
            })
            .ok_or_else(|| TlsError::Generate("no QUIC initial suite (TLS13_AES_128_GCM_SHA256)".into()))?;
        let stock = QuicServerConfig::with_initial(tls.clone(), initial)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok(ServerCrypto { tls, stock, initial })
    }
}

impl crypto::ServerConfig for ServerCrypto {
    fn initial_keys(&self, version: u32, dst_cid: &ConnectionId) -> Result<Keys, UnsupportedVersion> {
        self.stock.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.stock.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        // quinn-proto only starts a session for a version `initial_keys` accepted.
        let version = quic_version(version).unwrap_or(Version::V1);
        let mut raw = Vec::new();
        params.write(&mut raw);
        let tls = ServerConnection::new(self.tls.clone(), version, raw)
            .expect("the configuration was checked by ServerCrypto::new");
        Box::new(Session {
            tls: Some(Box::new(Connection::Server(tls))),
            version,
            initial: self.initial,
            next: None,
            got_handshake_data: false,
            alpn: None,
            server_name: None,
        })
    }
}

/// One connection's TLS: the rustls connection during the handshake, then only what key
/// updates and `handshake_data` need.
pub(crate) struct Session {
    /// Boxed apart from the session so that its memory goes back when it is dropped.
    tls: Option<Box<Connection>>,
    version: Version,
    initial: Suite,
    /// The secrets of the next 1-RTT key generation.
    next: Option<Secrets>,
    got_handshake_data: bool,
    alpn: Option<Box<[u8]>>,
    server_name: Option<Box<str>>,
}

impl Session {
    /// Lets go of the rustls connection once nothing is left to do with it: the handshake is
    /// complete, its last flight written, and the 1-RTT secrets are ours.
    fn release_if_done(&mut self) {
        let Some(tls) = &self.tls else { return };
        if tls.is_handshaking() || self.next.is_none() {
            return;
        }
        self.alpn = tls.alpn_protocol().map(Box::from);
        self.server_name = server_name(tls).map(Box::from);
        self.tls = None;
    }
}

impl crypto::Session for Session {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        let side = match side {
            Side::Client => rustls::Side::Client,
            Side::Server => rustls::Side::Server,
        };
        let k = self.initial.keys(dst_cid, side, self.version);
        Keys {
            header: KeyPair { local: Box::new(k.local.header), remote: Box::new(k.remote.header) },
            packet: KeyPair { local: Box::new(k.local.packet), remote: Box::new(k.remote.packet) },
        }
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        if !self.got_handshake_data {
            return None;
        }
        let (protocol, server_name) = match &self.tls {
            Some(tls) => (tls.alpn_protocol().map(<[u8]>::to_vec), server_name(tls).map(String::from)),
            None => (self.alpn.as_deref().map(<[u8]>::to_vec), self.server_name.as_deref().map(String::from)),
        };
        Some(Box::new(HandshakeData { protocol, server_name }))
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        // No client certificates are asked for, so there is never one to keep.
        let certs = self.tls.as_ref()?.peer_certificates()?;
        let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
            certs.iter().map(|c| c.clone().into_owned()).collect();
        Some(Box::new(certs))
    }

    fn early_crypto(&self) -> Option<(Box<dyn crypto::HeaderKey>, Box<dyn crypto::PacketKey>)> {
        let keys = self.tls.as_ref()?.zero_rtt_keys()?;
        Some((Box::new(keys.header), Box::new(keys.packet)))
    }

    fn early_data_accepted(&self) -> Option<bool> {
        None
    }

    fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let Some(tls) = self.tls.as_mut() else {
            if buf.is_empty() {
                return Ok(false);
            }
            return Err(TransportError {
                code: TransportErrorCode::crypto(UNEXPECTED_MESSAGE),
                frame: None,
                reason: "TLS message after the handshake".into(),
            });
        };
        if let Err(e) = tls.read_hs(buf) {
            let code = match tls.alert() {
                Some(alert) => TransportErrorCode::crypto(alert.into()),
                None => TransportErrorCode::PROTOCOL_VIOLATION,
            };
            return Err(TransportError { code, frame: None, reason: e.to_string() });
        }
        if !self.got_handshake_data
            && (tls.alpn_protocol().is_some() || server_name(tls).is_some() || !tls.is_handshaking())
        {
            // As quinn-proto's session: rustls has no explicit signal that the ClientHello was
            // processed; a negotiated protocol or name (or the end of the handshake) shows it.
            self.got_handshake_data = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        let Some(raw) = self.tls.as_ref().and_then(|t| t.quic_transport_parameters()) else {
            return Ok(None);
        };
        TransportParameters::read(Side::Server, &mut std::io::Cursor::new(raw)).map(Some).map_err(Into::into)
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let change = self.tls.as_mut()?.write_hs(buf);
        let keys = match change {
            None => {
                self.release_if_done();
                return None;
            }
            Some(KeyChange::Handshake { keys }) => keys,
            Some(KeyChange::OneRtt { keys, next }) => {
                self.next = Some(next);
                keys
            }
        };
        Some(Keys {
            header: KeyPair { local: Box::new(keys.local.header), remote: Box::new(keys.remote.header) },
            packet: KeyPair { local: Box::new(keys.local.packet), remote: Box::new(keys.remote.packet) },
        })
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn crypto::PacketKey>>> {
        let keys = self.next.as_mut()?.next_packet_keys();
        #[cfg(test)]
        tests::NEXT_KEYS.with(|n| n.set(n.get() + 1));
        Some(KeyPair { local: Box::new(keys.local), remote: Box::new(keys.remote) })
    }

    fn is_valid_retry(&self, _orig_dst_cid: &ConnectionId, _header: &[u8], _payload: &[u8]) -> bool {
        // Only clients receive Retry packets.
        false
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        let tls = self.tls.as_ref().ok_or(ExportKeyingMaterialError)?;
        tls.export_keying_material(output, label, Some(context)).map_err(|_| ExportKeyingMaterialError)?;
        Ok(())
    }
}

fn server_name(tls: &Connection) -> Option<&str> {
    match tls {
        Connection::Server(s) => s.server_name(),
        Connection::Client(_) => None,
    }
}

/// The QUIC versions quinn-proto speaks, as rustls names them (the mapping of its own session).
fn quic_version(version: u32) -> Option<Version> {
    match version {
        0xff00_001d..=0xff00_0020 => Some(Version::V1Draft),
        0x0000_0001 | 0xff00_0021..=0xff00_0022 => Some(Version::V1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use bytes::BytesMut;
    use quinn_proto::{ConnectionHandle, DatagramEvent, Dir, Endpoint, Event, StreamEvent, StreamId};

    use super::super::tls;

    thread_local! {
        /// Key generations this thread's server sessions made after the first 1-RTT keys.
        pub(super) static NEXT_KEYS: Cell<u32> = const { Cell::new(0) };
    }

    /// A stock quinn-proto client and the gateway's server configuration, joined by queues of
    /// datagrams on a virtual clock (no sockets).
    struct Pair {
        now: Instant,
        client_ep: Endpoint,
        client: quinn_proto::Connection,
        client_ch: ConnectionHandle,
        server_ep: Endpoint,
        server: Option<(ConnectionHandle, quinn_proto::Connection)>,
        to_server: VecDeque<Vec<u8>>,
        to_client: VecDeque<Vec<u8>>,
        client_addr: SocketAddr,
        server_addr: SocketAddr,
    }

    impl Pair {
        fn new() -> (Pair, tempfile::TempDir) {
            let dir = tempfile::tempdir().unwrap();
            let (cert, key, _) = tls::dev_certificate(dir.path()).unwrap();
            let (chain, key) = tls::load(&cert, &key).unwrap();
            let server_cfg = tls::server_config(chain.clone(), key, Duration::from_secs(90)).unwrap();
            let now = Instant::now();
            let server_ep =
                Endpoint::new(Default::default(), Some(std::sync::Arc::new(server_cfg)), true, None);
            let mut client_ep = Endpoint::new(Default::default(), None, true, None);
            let server_addr: SocketAddr = "127.0.0.1:4433".parse().unwrap();
            let (client_ch, client) = client_ep
                .connect(now, tls::client_config_for_tests(&chain[0]), server_addr, "localhost")
                .unwrap();
            let pair = Pair {
                now,
                client_ep,
                client,
                client_ch,
                server_ep,
                server: None,
                to_server: VecDeque::new(),
                to_client: VecDeque::new(),
                client_addr: "127.0.0.1:5555".parse().unwrap(),
                server_addr,
            };
            (pair, dir)
        }

        fn server(&mut self) -> &mut quinn_proto::Connection {
            &mut self.server.as_mut().expect("the server accepted the connection").1
        }

        /// Moves every datagram both ways and handles due timers; when nothing is in flight,
        /// jumps the clock to the next timer.
        fn step(&mut self) {
            let mut buf = Vec::new();
            flush(&mut self.client, &mut self.client_ep, self.client_ch, self.now, &mut self.to_server);
            if let Some((ch, conn)) = self.server.as_mut() {
                flush(conn, &mut self.server_ep, *ch, self.now, &mut self.to_client);
            }
            while let Some(d) = self.to_server.pop_front() {
                buf.clear();
                match self.server_ep.handle(
                    self.now,
                    self.client_addr,
                    None,
                    None,
                    BytesMut::from(&d[..]),
                    &mut buf,
                ) {
                    Some(DatagramEvent::NewConnection(incoming)) => {
                        let (ch, conn) = self.server_ep.accept(incoming, self.now, &mut buf, None).unwrap();
                        self.server = Some((ch, conn));
                    }
                    Some(DatagramEvent::ConnectionEvent(_, ev)) => self.server().handle_event(ev),
                    Some(DatagramEvent::Response(t)) => self.to_client.push_back(buf[..t.size].to_vec()),
                    None => {}
                }
            }
            while let Some(d) = self.to_client.pop_front() {
                buf.clear();
                let ev = self.client_ep.handle(
                    self.now,
                    self.server_addr,
                    None,
                    None,
                    BytesMut::from(&d[..]),
                    &mut buf,
                );
                if let Some(DatagramEvent::ConnectionEvent(_, ev)) = ev {
                    self.client.handle_event(ev);
                }
            }
            let idle = self.to_server.is_empty() && self.to_client.is_empty();
            let next = [self.client.poll_timeout(), self.server.as_mut().and_then(|s| s.1.poll_timeout())]
                .into_iter()
                .flatten()
                .min();
            if idle && let Some(t) = next {
                self.now = self.now.max(t);
            }
            if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
                self.client.handle_timeout(self.now);
            }
            if let Some((_, s)) = self.server.as_mut()
                && s.poll_timeout().is_some_and(|t| t <= self.now)
            {
                s.handle_timeout(self.now);
            }
        }

        /// Steps until `done`, at most a few hundred times.
        fn until(&mut self, what: &str, mut done: impl FnMut(&mut Pair) -> bool) {
            for _ in 0..500 {
                if done(self) {
                    return;
                }
                self.step();
            }
            panic!("never happened: {what}");
        }
    }

    fn flush(
        conn: &mut quinn_proto::Connection,
        ep: &mut Endpoint,
        ch: ConnectionHandle,
        now: Instant,
        out: &mut VecDeque<Vec<u8>>,
    ) {
        let mut buf = Vec::new();
        while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            out.push_back(buf[..t.size].to_vec());
            buf.clear();
        }
        while let Some(ev) = conn.poll_endpoint_events() {
            if let Some(back) = ep.handle_event(ch, ev) {
                conn.handle_event(back);
            }
        }
    }

    /// Everything readable on `id` now.
    fn read(conn: &mut quinn_proto::Connection, id: StreamId) -> Vec<u8> {
        let mut got = Vec::new();
        let mut rs = conn.recv_stream(id);
        if let Ok(mut chunks) = rs.read(true) {
            while let Ok(Some(c)) = chunks.next(usize::MAX) {
                got.extend_from_slice(&c.bytes);
            }
            let _ = chunks.finalize();
        }
        got
    }

    fn connected(conn: &mut quinn_proto::Connection) -> bool {
        let mut yes = !conn.is_handshaking();
        while let Some(ev) = conn.poll() {
            yes |= matches!(ev, Event::Connected);
            assert!(!matches!(ev, Event::ConnectionLost { .. }), "connection lost: {ev:?}");
        }
        yes
    }

    /// Sends `bytes` from one end and steps until the other end has read them all.
    fn exchange(p: &mut Pair, id: StreamId, from_client: bool, bytes: &[u8]) {
        let sender = if from_client { &mut p.client } else { p.server() };
        assert_eq!(sender.send_stream(id).write(bytes).unwrap(), bytes.len());
        let mut got = Vec::new();
        p.until("the bytes arrive", |p| {
            let receiver = if from_client { p.server() } else { &mut p.client };
            while let Some(ev) = receiver.poll() {
                assert!(!matches!(ev, Event::ConnectionLost { .. }), "connection lost: {ev:?}");
            }
            got.extend(read(receiver, id));
            got == bytes
        });
    }

    /// A session whose handshake is over has let go of rustls (no keying material can be
    /// exported any more) but still reports the negotiated protocol, and key updates started by
    /// either end keep the connection working, with keys made from the secrets it kept.
    #[test]
    fn key_updates_work_after_the_tls_connection_is_gone() {
        let (mut p, _dir) = Pair::new();
        p.until("both ends connected", |p| {
            p.server.is_some() && connected(&mut p.client) && connected(p.server())
        });
        let id = p.client.streams().open(Dir::Bi).unwrap();
        p.client.send_stream(id).write(b"login").unwrap();
        let mut accepted = None;
        p.until("the server accepts the stream", |p| {
            while let Some(ev) = p.server().poll() {
                if let Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) = ev {
                    accepted = p.server().streams().accept(Dir::Bi);
                }
            }
            accepted.is_some()
        });
        assert_eq!(accepted, Some(id));
        let mut got = Vec::new();
        p.until("the login arrives", |p| {
            got.extend(read(p.server(), id));
            got == b"login"
        });

        let session = p.server().crypto_session();
        let mut out = [0u8; 16];
        assert!(
            session.export_keying_material(&mut out, b"label", b"").is_err(),
            "the rustls connection is still held"
        );
        let data = session
            .handshake_data()
            .unwrap()
            .downcast::<quinn_proto::crypto::rustls::HandshakeData>()
            .unwrap();
        assert_eq!(data.protocol.as_deref(), Some(super::super::ALPN));
        assert_eq!(data.server_name.as_deref(), Some("localhost"));

        let before = NEXT_KEYS.with(Cell::get);
        for (round, client_starts) in [true, false, true].into_iter().enumerate() {
            if client_starts {
                p.client.force_key_update();
            } else {
                p.server().force_key_update();
            }
            exchange(&mut p, id, true, format!("ping {round}").as_bytes());
            exchange(&mut p, id, false, format!("pong {round}").as_bytes());
            assert_eq!(
                NEXT_KEYS.with(Cell::get),
                before + round as u32 + 1,
                "round {round} made no new keys"
            );
            // Past three PTOs (~1 s each before the RTT is known), when both ends drop the
            // previous keys and may update again.
            let later = p.now + Duration::from_secs(10);
            p.until("the previous keys are dropped", |p| {
                p.now = p.now.max(later);
                p.to_server.is_empty() && p.to_client.is_empty()
            });
            p.step();
        }
    }
}
