//! `abuse`: the floods of issue #12 (items 1 and 2) replayed against a running Herald, one after
//! another, each bounded in bytes (`--flood-bytes`) and time (`--flood-secs`):
//!
//! - `abuse_preauth_ping`: a connection that never logs in writes PINGs;
//! - `abuse_ping`: a logged-in terminal writes PINGs and never reads;
//! - `abuse_mqtt_pingreq`: a connected MQTT client writes PINGREQs and never reads;
//! - `abuse_ack`: a logged-in terminal writes ACK frames of `--ack-ranges` ranges each.
//!
//! For each: the hostile bytes the gateway accepted (written into the socket), the gateway's peak
//! RSS growth over its RSS before (sampled every 20 ms during the flood and for a second after)
//! and that growth per hostile byte, how the flood ended (closed by the gateway, blocked because
//! the gateway stopped reading, or the budget spent), and meanwhile the push latency of a
//! legitimate terminal on its own connection: single-user pushes through the admin API, one at
//! a time at `--probe-rate` per second, each timed from the API call to the PUSH frame's arrival.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use herald_protocol::frame::{Ack, AckRange, Decoder, Frame, Login};
use serde_json::json;

use crate::hist;
use crate::scenario::ScenarioResult;
use crate::target::Target;

/// The knobs of `abuse`.
#[derive(Debug, Clone, clap::Args)]
pub struct AbuseKnobs {
    /// abuse: most bytes each flood writes.
    #[arg(long, default_value_t = 64 << 20)]
    pub flood_bytes: usize,
    /// abuse: most seconds each flood lasts.
    #[arg(long, default_value_t = 10)]
    pub flood_secs: u64,
    /// abuse: ranges per ACK frame in the ACK flood.
    #[arg(long, default_value_t = 1000)]
    pub ack_ranges: u32,
    /// abuse: pushes per second to the legitimate terminal during each flood.
    #[arg(long, default_value_t = 20)]
    pub probe_rate: u32,
}

/// The floods, in the order they run.
pub const FLOODS: [&str; 4] = ["abuse_preauth_ping", "abuse_ping", "abuse_mqtt_pingreq", "abuse_ack"];

/// How long the gateway's memory is watched after a flood's last byte (it may still be
/// decoding what it read).
const SETTLE: Duration = Duration::from_secs(1);
/// RSS sampling period.
const SAMPLE: Duration = Duration::from_millis(20);
/// Longest wait for one probe push.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs every flood against `target`; one result each.
pub fn run(target: &Target, k: &AbuseKnobs) -> anyhow::Result<Vec<ScenarioResult>> {
    let legit = Legit::login(target)?;
    let mut out = Vec::new();
    for name in FLOODS {
        println!("== {name}");
        out.push(one(target, k, &legit, name)?);
    }
    Ok(out)
}

/// A flood's socket, set up (logged in or connected as needed) and the bytes it repeats.
fn hostile(target: &Target, name: &str, k: &AbuseKnobs) -> anyhow::Result<(TcpStream, Bytes)> {
    match name {
        "abuse_preauth_ping" => Ok((connect(target.tcp)?, Bytes::from_static(&[0x01, 0x00]))),
        "abuse_ping" => {
            let (s, _) = herald_login(target, "abuse-flood-ping", "d")?;
            Ok((s, Bytes::from_static(&[0x01, 0x00])))
        }
        "abuse_mqtt_pingreq" => {
            let addr = target.mqtt.context("abuse_mqtt_pingreq needs Herald's MQTT listener")?;
            let s = mqtt_connect(target, addr, "abuse-flood-mqtt", "d")?;
            Ok((s, Bytes::from_static(&[0xc0, 0x00])))
        }
        "abuse_ack" => {
            let (s, _) = herald_login(target, "abuse-flood-ack", "d")?;
            let ranges: Vec<AckRange> =
                (0..k.ack_ranges).map(|i| AckRange { stream: i + 1, first: 1, last: 1 }).collect();
            let mut b = BytesMut::new();
            Frame::Ack(Ack::new(&ranges)).encode(&mut b)?;
            Ok((s, b.freeze()))
        }
        _ => bail!("unknown flood {name}"),
    }
}

fn one(target: &Target, k: &AbuseKnobs, legit: &Legit, name: &str) -> anyhow::Result<ScenarioResult> {
    let (mut s, unit) = hostile(target, name, k)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = target.gateway_rss();
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(before);
    let (flood, probes) = std::thread::scope(|sc| {
        sc.spawn(|| {
            // Sample until the flood and its settle time are over.
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(target.gateway_rss(), Ordering::Relaxed);
                std::thread::sleep(SAMPLE);
            }
        });
        let probe = sc.spawn(|| legit.probe(target, k.probe_rate, &done));
        let flood = flood(&mut s, &unit, k.flood_bytes, Duration::from_secs(k.flood_secs));
        let settle = Instant::now() + SETTLE;
        while Instant::now() < settle {
            peak.fetch_max(target.gateway_rss(), Ordering::Relaxed);
            std::thread::sleep(SAMPLE);
        }
        done.store(true, Ordering::Relaxed);
        (flood, probe.join())
    });
    let outcome = match (peer_closed(&mut s), flood.stalled) {
        (true, _) => "closed by the gateway",
        (false, true) => "blocked: the gateway stopped reading",
        (false, false) => "open: the gateway read it all",
    };
    let probes = probes.map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
    let after = target.gateway_rss();
    drop(s);
    let peak = peak.load(Ordering::Relaxed);
    let growth = peak as i64 - before as i64;
    let mut res = ScenarioResult {
        scenario: name.into(),
        conns: 1,
        rss_growth_bytes: (before > 0).then_some(growth),
        deliveries: Some(probes.got),
        expected_deliveries: Some(probes.sent),
        params: json!({
            "hostile_bytes": flood.bytes,
            "flood_secs": flood.secs,
            "outcome": outcome,
            "rss_before_bytes": before,
            "rss_peak_bytes": peak,
            "rss_after_bytes": after,
            "rss_per_hostile_byte": (before > 0 && flood.bytes > 0).then(|| growth as f64 / flood.bytes as f64),
            "flood_bytes_cap": k.flood_bytes,
            "flood_secs_cap": k.flood_secs,
            "ack_ranges": (name == "abuse_ack").then_some(k.ack_ranges),
            "probe_rate": k.probe_rate,
            "probe_errors": probes.errors,
        }),
        ..Default::default()
    };
    res.p50_ms = hist::pct_ms(&probes.hist, 50.0);
    res.p99_ms = hist::pct_ms(&probes.hist, 99.0);
    res.max_ms = (!probes.hist.is_empty()).then(|| probes.hist.max() as f64 / 1000.0);
    if probes.got < probes.sent {
        res.notes.push(format!(
            "{} of {} probe pushes did not arrive",
            probes.sent - probes.got,
            probes.sent
        ));
    }
    println!(
        "{name}: {} hostile bytes in {:.1} s ({}), RSS {} -> peak {} MB ({:+.2} B per hostile byte), legit p50 {:?} ms p99 {:?} ms",
        flood.bytes,
        flood.secs,
        outcome,
        before >> 20,
        peak >> 20,
        res.params["rss_per_hostile_byte"].as_f64().unwrap_or(f64::NAN),
        res.p50_ms,
        res.p99_ms
    );
    Ok(res)
}

struct Flood {
    bytes: u64,
    secs: f64,
    /// The writes had stalled for a while when the flood ended (the gateway stopped reading).
    stalled: bool,
}

/// Writes `unit` again and again (never reading) until `max_bytes` were written, `max_time`
/// has passed or a write fails (the gateway closed the connection). The chunk is whole units,
/// and a partial write continues where it stopped, so frames stay whole.
fn flood(s: &mut TcpStream, unit: &[u8], max_bytes: usize, max_time: Duration) -> Flood {
    let reps = (64 * 1024 / unit.len()).max(1);
    let chunk: Vec<u8> = unit.iter().copied().cycle().take(reps * unit.len()).collect();
    let _ = s.set_nonblocking(true);
    let started = Instant::now();
    let mut total = 0usize;
    let mut last_write = Instant::now();
    while total < max_bytes && started.elapsed() < max_time {
        let from = total % chunk.len();
        let end = chunk.len().min(from + (max_bytes - total));
        match s.write(&chunk[from..end]) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                last_write = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 50) };
            }
            Err(_) => break,
        }
    }
    Flood {
        bytes: total as u64,
        secs: started.elapsed().as_secs_f64(),
        stalled: last_write.elapsed() > Duration::from_millis(500),
    }
}

/// Whether the gateway has closed the connection: reads (and drops) what it sent until end of
/// stream or an error (closed), or until nothing more comes for 200 ms (open); at most 3 s.
fn peer_closed(s: &mut TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut sink = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut p, 1, 200) } == 0 {
                    return false;
                }
            }
            Err(_) => return true,
        }
    }
    false
}

fn connect(addr: SocketAddrV4) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A logged-in Herald connection of a fresh user; its decoder state (bytes after LOGIN_OK).
fn herald_login(target: &Target, user: &str, device: &str) -> anyhow::Result<(TcpStream, BytesMut)> {
    let token = target.admin.credential(user, device)?;
    let mut s = connect(target.tcp)?;
    let mut b = BytesMut::new();
    Frame::Login(Login::new(Bytes::from(token), Bytes::copy_from_slice(device.as_bytes()), &[]))
        .encode(&mut b)?;
    s.write_all(&b)?;
    let dec = Decoder::new(1 << 20);
    let mut buf = BytesMut::new();
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(f) = dec.decode(&mut buf)? {
            match f {
                Frame::LoginOk(_) => return Ok((s, buf)),
                other => bail!("login of {user} refused: {other:?}"),
            }
        }
        let n = s.read(&mut chunk).context("waiting for LOGIN_OK")?;
        if n == 0 {
            bail!("login of {user}: connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An MQTT 3.1.1 connection of a fresh user, CONNACK received.
fn mqtt_connect(target: &Target, addr: SocketAddrV4, user: &str, device: &str) -> anyhow::Result<TcpStream> {
    let token = target.admin.credential(user, device)?;
    let put = |b: &mut Vec<u8>, x: &[u8]| {
        b.extend_from_slice(&(x.len() as u16).to_be_bytes());
        b.extend_from_slice(x);
    };
    let mut body = Vec::new();
    put(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0xc2, 0, 60]);
    put(&mut body, device.as_bytes());
    put(&mut body, user.as_bytes());
    put(&mut body, token.as_bytes());
    let mut p = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        p.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    p.extend_from_slice(&body);
    let mut s = connect(addr)?;
    s.write_all(&p)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).context("waiting for CONNACK")?;
    if connack != [0x20, 2, 0, 0] {
        bail!("CONNACK of {user}: {connack:?}");
    }
    Ok(s)
}

/// The legitimate terminal: logged in on its own connection, reading its pushes.
struct Legit {
    user: String,
    conn: std::sync::Mutex<(TcpStream, BytesMut)>,
}

struct Probes {
    sent: u64,
    got: u64,
    errors: u64,
    hist: hdrhistogram::Histogram<u64>,
}

impl Legit {
    fn login(target: &Target) -> anyhow::Result<Legit> {
        let user = "abuse-legit".to_string();
        let conn = herald_login(target, &user, "d")?;
        Ok(Legit { user, conn: std::sync::Mutex::new(conn) })
    }

    /// Single-user pushes, one at a time, `rate` per second until `done`: each timed from the
    /// API call to its PUSH frame (a push not there within [`PROBE_TIMEOUT`] is lost).
    fn probe(&self, target: &Target, rate: u32, done: &AtomicBool) -> anyhow::Result<Probes> {
        let mut guard = self.conn.lock().map_err(|_| anyhow::anyhow!("legit terminal poisoned"))?;
        let (s, buf) = &mut *guard;
        let dec = Decoder::new(1 << 20);
        let interval = Duration::from_secs(1) / rate.max(1);
        let mut p = Probes { sent: 0, got: 0, errors: 0, hist: hist::new_us() };
        let mut chunk = vec![0u8; 65536];
        let mut next = Instant::now();
        while !done.load(Ordering::Relaxed) {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next += interval;
            let t = Instant::now();
            if target.admin.push(json!({"user": self.user}), json!({"data": {"probe": "1"}}), 0).is_err() {
                p.errors += 1;
                continue;
            }
            p.sent += 1;
            let deadline = t + PROBE_TIMEOUT;
            'wait: loop {
                while let Some(f) = dec.decode(buf)? {
                    if matches!(f, Frame::Push(_)) {
                        p.got += 1;
                        let _ = p.hist.record(t.elapsed().as_micros() as u64);
                        break 'wait;
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                s.set_read_timeout(Some(left))?;
                match s.read(&mut chunk) {
                    Ok(0) => bail!("the legitimate terminal's connection closed"),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(p)
    }
}
