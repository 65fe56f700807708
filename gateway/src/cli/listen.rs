//! `herald listen`: a terminal for people and scripts. It drives the protocol crate's client
//! [`Session`] over a blocking TCP socket or a QUIC stream (`--transport quic`): logs in, prints every new push as one JSON line on
//! stdout, acknowledges it (batched), heartbeats, and reconnects with backoff. Status goes to
//! stderr. It exits 0 after `--count` pushes, 1 when the credential is refused or expires (the
//! gateway closes the session then; a new credential is a new `--token`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use clap::Args;
use herald_protocol::credential;
use herald_protocol::frame::PushFlags;
use herald_protocol::payload::PushPayload;
use herald_protocol::session::{Event, Session, SessionConfig};

#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
    /// Gateway address (TCP, or UDP with --transport quic).
    #[arg(long, value_name = "ADDR")]
    gateway: SocketAddr,
    /// tcp or quic.
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// QUIC: PEM certificate (or CA) to trust, e.g. the data dir's quic-dev-cert.pem.
    #[arg(long, value_name = "CERT")]
    ca: Option<PathBuf>,
    /// QUIC: trust any certificate (a `herald serve` development certificate). Never in
    /// production.
    #[arg(long)]
    insecure_dev_cert: bool,
    /// QUIC: the name the certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Credential token from `POST /v1/credentials`.
    #[arg(long)]
    token: String,
    /// Device id; defaults to the one the token names.
    #[arg(long)]
    device: Option<String>,
    /// Exit after printing this many pushes.
    #[arg(long)]
    count: Option<u64>,
}

pub(crate) fn run(args: ListenArgs) -> anyhow::Result<()> {
    let device = match args.device {
        Some(d) => d,
        None => credential::peek(&args.token).context("the token is not a Herald credential")?.device,
    };
    let mut config =
        SessionConfig::new(Bytes::from(args.token.into_bytes()), Bytes::from(device.into_bytes()));
    // A person watching pushes arrive wants each acknowledged at once (and `--count` exits right
    // after the last one), so acks are not batched here.
    config.ack_batch = 1;
    let seed = u64::from(std::process::id()) ^ Instant::now().elapsed().as_nanos() as u64;
    let mut session = Session::new(config, seed);
    let mut printed = 0u64;
    let quic = match args.transport.as_str() {
        "tcp" => None,
        "quic" => Some(super::quic_client::client_config(args.ca.as_deref(), args.insecure_dev_cert)?),
        other => bail!("--transport {other:?} is not one of tcp, quic"),
    };
    let mut conn: Option<Conn> = None;
    let mut rx = BytesMut::with_capacity(64 * 1024);
    let mut tx = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut want_connect = true;
    let stdout = std::io::stdout();
    loop {
        let now = Instant::now();
        if want_connect && conn.is_none() {
            want_connect = false;
            let connected = match &quic {
                None => TcpStream::connect(args.gateway).map(|s| {
                    s.set_nodelay(true).ok();
                    Conn::Tcp(s)
                }),
                Some(cfg) => {
                    super::quic_client::QuicConn::connect(args.gateway, &args.server_name, cfg.clone())
                        .map(|q| Conn::Quic(Box::new(q)))
                }
            };
            match connected {
                Ok(s) => {
                    rx.clear();
                    conn = Some(s);
                    session.handle_connected(now);
                }
                Err(e) => {
                    eprintln!("herald listen: connect {}: {e}", args.gateway);
                    session.handle_disconnected(now);
                }
            }
        }
        if let Some(s) = conn.as_mut() {
            session.poll_transmit(&mut tx);
            if !tx.is_empty() {
                if let Err(e) = s.write_all(&tx) {
                    eprintln!("herald listen: write: {e}");
                    conn = None;
                    session.handle_disconnected(Instant::now());
                }
                tx.clear();
            }
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                Event::Connect => want_connect = true,
                Event::LoggedIn { session_id, heartbeat_interval } => {
                    eprintln!(
                        "herald listen: logged in, session {session_id}, heartbeat every {heartbeat_interval:?}"
                    );
                }
                Event::Push { header, payload } => {
                    let line = push_json(header.stream, header.seq, header.flags, &payload);
                    let mut out = stdout.lock();
                    writeln!(out, "{line}")?;
                    out.flush()?;
                    printed += 1;
                }
                Event::Pong { .. } => {}
                Event::GoAway { reason, reconnect_after } => {
                    eprintln!("herald listen: goaway ({reason}), reconnecting in {reconnect_after:?}");
                    conn = None;
                }
                Event::Closed { code, reason, reconnect } => {
                    let reason = String::from_utf8_lossy(&reason);
                    eprintln!("herald listen: closed by server: {code} {reason}");
                    conn = None;
                    if code == herald_protocol::CloseCode::AUTH_EXPIRED {
                        // During a session too: the gateway closes it when the credential expires.
                        bail!("the credential expired: get a new one (POST /v1/credentials) and run again");
                    }
                    if !reconnect {
                        bail!("the gateway refused this terminal: {code} {reason}");
                    }
                }
                Event::Dead => {
                    eprintln!("herald listen: no answer from the gateway, reconnecting");
                    conn = None;
                }
                Event::ProtocolError(e) => {
                    eprintln!("herald listen: protocol error: {e}");
                    if let Some(s) = conn.as_mut() {
                        session.poll_transmit(&mut tx);
                        let _ = s.write_all(&tx);
                        tx.clear();
                    }
                    conn = None;
                }
            }
        }
        if args.count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
        if want_connect {
            continue;
        }
        let now = Instant::now();
        let wait = session
            .poll_timeout()
            .map_or(Duration::from_secs(3600), |t| t.saturating_duration_since(now))
            .max(Duration::from_millis(1));
        match conn.as_mut() {
            None => {
                std::thread::sleep(wait);
                session.handle_timeout(Instant::now());
            }
            Some(s) => match s.read_timeout(&mut chunk, wait) {
                Ok(0) => {
                    eprintln!("herald listen: connection closed");
                    conn = None;
                    session.handle_disconnected(Instant::now());
                }
                Ok(n) => {
                    rx.extend_from_slice(&chunk[..n]);
                    session.handle_input(&mut rx, Instant::now());
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    session.handle_timeout(Instant::now());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("herald listen: read: {e}");
                    conn = None;
                    session.handle_disconnected(Instant::now());
                }
            },
        }
    }
}

/// The connection to the gateway, either transport.
#[derive(Debug)]
enum Conn {
    Tcp(TcpStream),
    Quic(Box<super::quic_client::QuicConn>),
}

impl Conn {
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(b),
            Conn::Quic(q) => q.write_all(b),
        }
    }

    fn read_timeout(&mut self, buf: &mut [u8], wait: Duration) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(wait))?;
                s.read(buf)
            }
            Conn::Quic(q) => q.read_timeout(buf, wait),
        }
    }
}

fn push_json(stream: u32, seq: u32, flags: PushFlags, payload: &[u8]) -> serde_json::Value {
    let mut v = serde_json::json!({
        "stream": stream,
        "seq": seq,
        "redelivery": flags.contains(PushFlags::REDELIVERY),
    });
    match PushPayload::from_bytes(payload) {
        Ok(p) => {
            v["push_id"] = p.push_id.into();
            v["created_ms"] = p.created_ms.into();
            v["title"] = p.title.into();
            v["body"] = p.body.into();
            v["collapse_key"] = p.collapse_key.into();
            v["data"] = p.data.into_iter().map(|e| (e.key, serde_json::Value::String(e.value))).collect();
        }
        Err(e) => v["payload_error"] = e.to_string().into(),
    }
    v
}
