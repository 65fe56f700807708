//! Floods from peers that send but do not read (issue #12, item 1), under both drivers: a PING
//! before LOGIN is a protocol error, and a logged-in PING flood (TCP and QUIC) / MQTT PINGREQ
//! flood that never reads leaves the gateway's queues bounded because the gateway stops reading
//! a connection whose output is blocked (the flooder's own writes block, and the gateway's
//! `herald_bytes_in_total` stops moving), and a PONG replaces a waiting one.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use herald_gateway::{Driver, Gateway};
use herald_protocol::CloseCode;
use herald_protocol::frame::{Decoder, Frame, Login};

/// Most bytes a flood writes before the test calls the gateway unbounded: what fills the socket
/// buffers in flight (with the test's small buffers, ~4.9 MB measured: the gateway's send
/// buffer, autotuned up to `tcp_wmem` max, holds the PONGs of most of it) but not more.
const FLOOD_CAP: usize = 32 << 20;
/// How long a write waits for room before the flood checks whether the gateway paused it.
const STALL: Duration = Duration::from_millis(100);
/// Once paused, how long the test watches the gateway read nothing more from the connection
/// (a gateway that kept reading, however slowly, would move `herald_bytes_in_total`).
const CONFIRM: Duration = Duration::from_secs(1);

/// A TCP connection with small socket buffers on the test's side, so that what the flood
/// leaves in flight is mostly the gateway's.
fn connect_small(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(16 * 1024).unwrap();
    s.set_send_buffer_size(16 * 1024).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_nodelay(true).unwrap();
    s
}

/// Writes `unit` (one 2-byte frame) over and over without reading, until the gateway has
/// paused the connection's input (its metric says so) and then reads nothing for [`CONFIRM`]
/// (the socket stays unwritable and `herald_bytes_in_total` does not move), or [`FLOOD_CAP`]
/// bytes were written (the gateway kept reading). A pause may end early on its own while the
/// kernel grows the gateway's send buffer (its socket takes more PONGs): the flood goes on then.
/// Returns the bytes written; the socket is left blocking.
fn flood(gw: &Gateway, s: &mut TcpStream, unit: [u8; 2]) -> usize {
    let chunk: Vec<u8> = unit.iter().copied().cycle().take(64 * 1024).collect();
    s.set_nonblocking(true).unwrap();
    let mut total = 0usize;
    let started = Instant::now();
    loop {
        assert!(
            total < FLOOD_CAP,
            "the gateway kept reading {total} bytes from a peer that reads nothing (in {:?})",
            started.elapsed()
        );
        assert!(started.elapsed() < WAIT * 3, "flood did not finish in time ({total} bytes)");
        // Keep frame boundaries: after an odd write, start with the unit's second byte.
        let from = total % 2;
        match s.write(&chunk[from..]) {
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut p = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(s),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut p, 1, STALL.as_millis() as i32) };
                if r == 0 && metric(gw, "herald_input_paused_total") >= 1 {
                    let before = metric(gw, "herald_bytes_in_total");
                    // SAFETY: one valid pollfd.
                    let r = unsafe { libc::poll(&mut p, 1, CONFIRM.as_millis() as i32) };
                    if r == 0 && metric(gw, "herald_bytes_in_total") == before {
                        break;
                    }
                }
            }
            Err(e) => panic!("flood write failed after {total} bytes: {e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
    eprintln!("flood: {total} bytes written before the gateway stopped reading, in {:?}", started.elapsed());
    total
}

fn metric(gw: &Gateway, name: &str) -> u64 {
    let text = gw.metrics_text();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn ping_before_login_is_a_protocol_error(driver: Driver) {
    let (gw, _cp) = gateway(driver, |_| {});
    let mut t = Term::connect(gw.tcp_addr());
    t.ping(1);
    t.expect_close(CloseCode::PROTOCOL_ERROR);
    assert_eq!(metric(&gw, "herald_heartbeats_total"), 0, "a PING before LOGIN was answered");
}

/// A logged-in terminal floods PINGs and reads nothing: the gateway stops reading it (its writes
/// block) with at most a PONG queued; once it reads, the connection still works and the last
/// answer it gets is the latest PONG.
fn ping_flood_without_reading_stays_bounded(driver: Driver) {
    let (gw, cp) = gateway(driver, |_| {});
    let mut s = connect_small(gw.tcp_addr());
    let login = Login::new(Bytes::from(token("flooder", "d")), Bytes::from_static(b"d"), &[]);
    let mut b = BytesMut::new();
    Frame::Login(login).encode(&mut b).unwrap();
    s.write_all(&b).unwrap();
    let dec = Decoder::new(1 << 16);
    let mut buf = BytesMut::new();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(f) = dec.decode(&mut buf).unwrap() {
            assert!(matches!(f, Frame::LoginOk(_)), "login refused: {f:?}");
            break;
        }
        assert!(read_some(&mut s, deadline, "LOGIN_OK", |b| buf.extend_from_slice(b)), "closed");
    }
    cp.wait_online("flooder", "d");
    let written = flood(&gw, &mut s, [0x01, 0x00]);
    let queued = metric(&gw, "herald_queued_frames");
    assert!(queued <= 2, "{queued} frames queued for a peer that does not read (flood of {written} B)");
    // Finish the frame in flight, then a PING of another nonce: it must be answered last.
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let tail: &[u8] = if written % 2 == 1 { &[0x00, 0x01, 0x07] } else { &[0x01, 0x07] };
        w.write_all(tail).unwrap();
    });
    let deadline = Instant::now() + WAIT;
    let mut pongs = 0u64;
    'read: loop {
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            match f {
                Frame::Pong { nonce: 0 } => pongs += 1,
                Frame::Pong { nonce: 7 } => break 'read,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(read_some(&mut s, deadline, "the last PONG", |b| buf.extend_from_slice(b)), "closed");
    }
    writer.join().unwrap();
    assert!(pongs >= 1 && pongs <= written as u64 / 2);
}

fn connect_mqtt(addr: SocketAddr, user: &str, device: &str) -> TcpStream {
    let mut s = connect_small(addr);
    let put = |b: &mut Vec<u8>, x: &[u8]| {
        b.extend_from_slice(&(x.len() as u16).to_be_bytes());
        b.extend_from_slice(x);
    };
    let mut body = Vec::new();
    put(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0xc2, 0, 60]);
    put(&mut body, device.as_bytes());
    put(&mut body, user.as_bytes());
    put(&mut body, token(user, device).as_bytes());
    assert!(body.len() < 128);
    let mut p = vec![0x10, body.len() as u8];
    p.extend_from_slice(&body);
    s.write_all(&p).unwrap();
    let mut connack = [0u8; 4];
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK");
    s
}

fn mqtt_pingreq_before_connect_is_refused(driver: Driver) {
    let (gw, _cp) = gateway(driver, |c| c.mqtt_addr = Some("127.0.0.1:0".parse().unwrap()));
    let mut s = TcpStream::connect(gw.mqtt_addr().unwrap()).unwrap();
    s.write_all(&[0xc0, 0x00]).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while read_some(&mut s, deadline, "the close", |b| got.extend_from_slice(b)) {}
    assert!(got.is_empty(), "answered a PINGREQ before CONNECT: {got:?}");
    assert_eq!(metric(&gw, "herald_heartbeats_total"), 0);
}

/// MQTT: a PINGREQ flood that reads nothing is bounded like the Herald PING flood.
fn mqtt_pingreq_flood_without_reading_stays_bounded(driver: Driver) {
    let (gw, cp) = gateway(driver, |c| c.mqtt_addr = Some("127.0.0.1:0".parse().unwrap()));
    let mut s = connect_mqtt(gw.mqtt_addr().unwrap(), "flooder", "d");
    cp.wait_online("flooder", "d");
    let written = flood(&gw, &mut s, [0xc0, 0x00]);
    let queued = metric(&gw, "herald_queued_frames");
    assert!(queued <= 2, "{queued} packets queued for a peer that does not read (flood of {written} B)");
    // Finish the packet in flight and stop sending: every answer is a PINGRESP, the gateway
    // reads the rest once it can write again, then closes at our end of stream.
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        if written % 2 == 1 {
            w.write_all(&[0x00]).unwrap();
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let deadline = Instant::now() + WAIT;
    let (mut n, mut bad) = (0usize, 0usize);
    while read_some(&mut s, deadline, "the end of the answers", |b| {
        for &x in b {
            bad += usize::from(x != [0xd0, 0x00][n % 2]);
            n += 1;
        }
    }) {}
    writer.join().unwrap();
    assert_eq!((bad, n % 2), (0, 0), "answers other than PINGRESP");
    assert!(n >= 2 && n <= written);
}

fn quic_client_config(ca_pem: &[u8]) -> quinn::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![herald_gateway::QUIC_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut cfg = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    // A small receive window, as the TCP tests' small socket buffers: the gateway's writes block
    // after a few PONGs instead of after quinn's default 1.25 MB (with PONGs coalesced per
    // datagram read, that would take ~1 GB of PINGs).
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(1024u32.into());
    cfg.transport_config(std::sync::Arc::new(t));
    cfg
}

/// QUIC: a logged-in terminal floods PINGs on its stream and never reads it: once the
/// gateway's writes are blocked it stops reading the stream, so flow control stops the
/// terminal's writes, and nothing more is read.
fn quic_ping_flood_without_reading_stays_bounded(driver: Driver) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = herald_gateway::quic_dev_certificate(dir.path()).unwrap();
    let ca = std::fs::read(&cert).unwrap();
    let (gw, cp) = gateway(driver, |c| {
        c.quic_addr = Some("127.0.0.1:0".parse().unwrap());
        c.quic_cert = Some(cert);
        c.quic_key = Some(key);
    });
    let addr = gw.quic_addr().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quic_client_config(&ca));
        let conn = tokio::time::timeout(WAIT, ep.connect(addr, "localhost").unwrap()).await.unwrap().unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut b = BytesMut::new();
        let login = Login::new(Bytes::from(token("flooder", "d")), Bytes::from_static(b"d"), &[]);
        Frame::Login(login).encode(&mut b).unwrap();
        send.write_all(&b).await.unwrap();
        let (dec, mut buf, mut chunk) = (Decoder::new(1 << 16), BytesMut::new(), vec![0u8; 4096]);
        loop {
            if let Some(f) = dec.decode(&mut buf).unwrap() {
                assert!(matches!(f, Frame::LoginOk(_)), "login refused: {f:?}");
                break;
            }
            let n = tokio::time::timeout(WAIT, recv.read(&mut chunk)).await.unwrap().unwrap().unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        cp.wait_online("flooder", "d");
        let pings: Vec<u8> = [0x01, 0x00].iter().copied().cycle().take(64 * 1024).collect();
        let (mut total, started) = (0usize, Instant::now());
        loop {
            assert!(
                total < FLOOD_CAP,
                "the gateway kept reading {total} bytes from a QUIC peer that reads nothing"
            );
            assert!(started.elapsed() < WAIT * 3, "flood did not finish in time ({total} bytes)");
            match tokio::time::timeout(STALL, send.write(&pings[total % 2..])).await {
                Ok(Ok(n)) => total += n,
                Ok(Err(e)) => panic!("flood write failed after {total} bytes: {e}"),
                Err(_) if metric(&gw, "herald_input_paused_total") >= 1 => {
                    // Paused: confirm that nothing more is read (else flood on).
                    let before = metric(&gw, "herald_bytes_in_total");
                    match tokio::time::timeout(CONFIRM, send.write(&pings[total % 2..])).await {
                        Ok(Ok(n)) => total += n,
                        Ok(Err(e)) => panic!("flood write failed after {total} bytes: {e}"),
                        Err(_) if metric(&gw, "herald_bytes_in_total") == before => break,
                        Err(_) => {}
                    }
                }
                Err(_) => {}
            }
        }
        let queued = metric(&gw, "herald_queued_frames");
        assert!(
            queued <= 2,
            "{queued} frames queued for a QUIC peer that does not read (flood of {total} B)"
        );
        eprintln!("quic flood: {total} bytes written before the gateway stopped reading");
        conn.close(0u32.into(), b"");
    });
}

both_drivers!(
    ping_before_login_is_a_protocol_error,
    ping_flood_without_reading_stays_bounded,
    mqtt_pingreq_before_connect_is_refused,
    mqtt_pingreq_flood_without_reading_stays_bounded,
    quic_ping_flood_without_reading_stays_bounded,
);
