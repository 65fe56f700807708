//! The scenarios: hold, storm, fanout, burst, latency, and the raw floor beside fanout and burst.
//! Each reads Herald only through its sockets, admin API, metrics and `/proc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};

use crate::admin::{ALL_TOPIC, user_name};
use crate::clock::now_ns;
use crate::floor::{self, Floor};
use crate::hist;
use crate::mqtt;
use crate::pool::{Merged, Pool};
use crate::procfs::KernelMem;
use crate::target::{Counters, Listeners, Target, TargetArgs};
use crate::wire::{Cmd, Cred, Proto, TIMELINE_BUCKET_NS, Transport};
use crate::worker::T_NS_KEY;

/// Knobs shared by every scenario (each uses the ones that concern it).
#[derive(Debug, Clone, clap::Args)]
pub struct Knobs {
    /// What the terminals speak: Herald's frames or MQTT 3.1.1 (Herald's MQTT listener).
    #[arg(long, value_enum, default_value_t = Proto::Herald)]
    pub proto: Proto,
    /// What carries Herald's frames: TCP or QUIC (Herald's QUIC listener).
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// MQTT: keep-alive the terminals announce in CONNECT, seconds (0 = none).
    #[arg(long, default_value_t = mqtt::KEEP_ALIVE_SECS)]
    pub mqtt_keep_alive: u16,
    /// QUIC: client endpoints (UDP sockets, each its own source port) per worker process.
    #[arg(long, default_value_t = 8)]
    pub quic_endpoints: usize,
    /// Terminal connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Worker processes at least (more are started past 6,000 connections each).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Connects plus logins in flight at once, over all workers.
    #[arg(long, default_value_t = 512)]
    pub inflight: usize,
    /// Threads issuing credentials and groups through the admin API.
    #[arg(long, default_value_t = 16)]
    pub provision_threads: usize,
    /// hold: heartbeat interval per connection, ms.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// hold: how long to heartbeat, seconds.
    #[arg(long, default_value_t = 10)]
    pub hold_secs: u64,
    /// fanout: pushes to all, one after another.
    #[arg(long, default_value_t = 5)]
    pub repeats: u32,
    /// burst: pushes.
    #[arg(long, default_value_t = 100)]
    pub pushes: u32,
    /// burst: body bytes per push.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// burst and latency: threads posting pushes.
    #[arg(long, default_value_t = 4)]
    pub push_threads: usize,
    /// latency: single-user pushes per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// latency: seconds.
    #[arg(long, default_value_t = 10)]
    pub latency_secs: u64,
    /// TTL of bench pushes, seconds (0 = fire-and-forget to whoever is online).
    #[arg(long, default_value_t = 0)]
    pub ttl_secs: u32,
    /// Give up waiting for deliveries after this long without a new one, seconds.
    #[arg(long, default_value_t = 5)]
    pub stall_secs: u64,
    /// burst: after the last delivery, how long Herald's RSS may take to come back to within
    /// 10 % of its level before the burst (memory must be given back), seconds.
    #[arg(long, default_value_t = 30)]
    pub settle_secs: u64,
    /// `raw`: also run fanout and burst as a bare send(2) loop (the floor).
    #[arg(long, value_enum, default_value_t = Baseline::None)]
    pub baseline: Baseline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    None,
    Raw,
}

/// Figures of the bare send(2) loop beside a scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FloorFigures {
    /// How the bare loop sent: `send_per_frame` (the floor) or `coalesced` (all frames of a
    /// connection in as few sends as its socket takes: the ceiling).
    pub method: String,
    pub conns: usize,
    pub frame_bytes: usize,
    pub first_delivery_ms: Option<f64>,
    pub last_delivery_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub deliveries: u64,
    pub deliveries_per_s: Option<f64>,
}

/// burst: Herald's RSS after the burst must come back to within this factor of its RSS before
/// (issue #12 item 10); above it the result carries a note.
const RSS_SETTLED_RATIO: f64 = 1.10;

/// One scenario's figures. Every field is always present (null where it does not apply).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub conns: usize,
    pub rss_bytes_per_conn: Option<f64>,
    /// Kernel memory (slab + TCP buffers) per server-side socket: the delta over both ends of
    /// each loopback connection, halved.
    pub kernel_bytes_per_conn: Option<f64>,
    pub logins_per_s: Option<f64>,
    pub connect_failures: Option<usize>,
    pub connect_retries: Option<u64>,
    pub cpu_us_per_heartbeat: Option<f64>,
    pub heartbeats: Option<u64>,
    pub disconnects: Option<u64>,
    pub recovery_ms: Option<f64>,
    pub first_delivery_ms: Option<f64>,
    pub last_delivery_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub deliveries: Option<u64>,
    pub expected_deliveries: Option<u64>,
    pub deliveries_per_s: Option<f64>,
    pub rss_growth_bytes: Option<i64>,
    pub drops: Option<f64>,
    /// Herald's figure as a fraction of the floor's (1.0 = as fast as a bare send(2) loop).
    pub floor_ratio: Option<f64>,
    pub floor: Option<FloorFigures>,
    /// burst only: the bare loop with perfect per-connection coalescing (one `send(2)` of all
    /// frames), the best this machine allows; Herald's deliveries/s as a fraction of it.
    pub ceiling: Option<FloorFigures>,
    pub ceiling_ratio: Option<f64>,
    pub params: Value,
    pub notes: Vec<String>,
}

/// Chart material gathered during a run.
#[derive(Debug, Default)]
pub struct Charts {
    /// `(scenario, latency CDF points)`.
    pub cdfs: Vec<(String, Vec<(f64, f64)>)>,
    /// `(conns, gateway RSS growth per conn)` while connecting.
    pub mem_curve: Vec<(f64, f64)>,
    /// `(series, (ms since the first push, deliveries/s))` during burst (Herald and floor).
    pub burst: Vec<(String, Vec<(f64, f64)>)>,
}

/// A Herald, its provisioned users and the workers holding their connections.
#[derive(Debug)]
pub struct Session {
    pub target: Target,
    pub pool: Pool,
    pub knobs: Knobs,
    pub conns: usize,
    pub charts: Charts,
    pub provision_s: f64,
    rss_before_conns: u64,
    kernel_before_conns: KernelMem,
    connected: bool,
    floor: Option<Floor>,
}

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_prefix(what.to_string());
    b
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Session {
    pub fn open(
        targs: &TargetArgs,
        knobs: &Knobs,
        log_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Session> {
        crate::procfs::raise_fd_limit();
        if knobs.proto == Proto::Mqtt && knobs.transport == Transport::Quic {
            anyhow::bail!("--proto mqtt runs over TCP only (Herald's QUIC listener speaks Herald frames)");
        }
        if knobs.transport == Transport::Quic && knobs.baseline == Baseline::Raw {
            anyhow::bail!("--baseline raw is a TCP floor; not with --transport quic");
        }
        let need = Listeners { mqtt: knobs.proto == Proto::Mqtt, quic: knobs.transport == Transport::Quic };
        let target = Target::open(targs, log_dir, need)?;
        Session::with_target(target, knobs)
    }

    /// A session on a target already started (Herald, or a broker for `compare`).
    pub fn with_target(target: Target, knobs: &Knobs) -> anyhow::Result<Session> {
        crate::procfs::raise_fd_limit();
        let n = knobs.conns;
        let t = Instant::now();
        let creds = if target.broker.is_some() {
            // A broker without Herald's admin API: anonymous clients, nothing to provision.
            (0..n)
                .map(|i| Cred { user: user_name(i), device: format!("bench-d{i}"), token: String::new() })
                .collect()
        } else {
            let b = bar(n as u64, "provision");
            let creds =
                target.admin.provision(n, knobs.provision_threads, &b).context("provisioning users")?;
            b.finish_and_clear();
            creds
        };
        let provision_s = t.elapsed().as_secs_f64();
        let (addr, mut extra) = match (knobs.proto, knobs.transport) {
            (Proto::Mqtt, _) => {
                let ka = knobs.mqtt_keep_alive.to_string();
                (
                    target.mqtt.context("no MQTT address")?,
                    vec!["--proto".into(), "mqtt".into(), "--keep-alive".into(), ka],
                )
            }
            (Proto::Herald, Transport::Quic) => {
                let ca = target.ca.as_ref().context("no certificate for QUIC")?;
                (
                    target.quic.context("no QUIC address")?,
                    vec![
                        "--transport".to_string(),
                        "quic".into(),
                        "--ca".into(),
                        ca.display().to_string(),
                        "--endpoints".into(),
                        knobs.quic_endpoints.to_string(),
                    ],
                )
            }
            (Proto::Herald, Transport::Tcp) => (target.tcp, Vec::new()),
        };
        extra.shrink_to_fit();
        let mut pool = Pool::start(n, knobs.workers, addr, knobs.inflight, &extra)?;
        pool.give_creds(&creds)?;
        // Let the gateway settle before the baseline.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Session {
            rss_before_conns: target.gateway_rss(),
            kernel_before_conns: KernelMem::read(),
            target,
            pool,
            knobs: knobs.clone(),
            conns: n,
            charts: Charts::default(),
            provision_s,
            connected: false,
            floor: None,
        })
    }

    /// Connects every terminal (once per session; scenarios after the first reuse them).
    pub fn ensure_connected(&mut self) -> anyhow::Result<Option<ScenarioResult>> {
        if self.connected {
            return Ok(None);
        }
        self.connected = true;
        Ok(Some(self.connect_phase()?))
    }

    fn connect_phase(&mut self) -> anyhow::Result<ScenarioResult> {
        let b = bar(self.conns as u64, "connect");
        let rss0 = self.rss_before_conns;
        let target = &self.target;
        let curve = &mut self.charts.mem_curve;
        let mut last_sample = Instant::now();
        let r = self.pool.connect(Duration::from_secs(300), |ready, failed| {
            b.set_position(ready as u64);
            b.set_message(format!("{failed} failed"));
            if ready > 0 && last_sample.elapsed() > Duration::from_millis(100) {
                last_sample = Instant::now();
                let rss = target.gateway_rss();
                curve.push((ready as f64, (rss as f64 - rss0 as f64) / ready as f64));
            }
        })?;
        b.finish_and_clear();
        std::thread::sleep(Duration::from_secs(1));
        let rss1 = self.target.gateway_rss();
        let k1 = KernelMem::read();
        let ready = r.ready.max(1) as f64;
        self.charts.mem_curve.push((r.ready as f64, (rss1 as f64 - rss0 as f64) / ready));
        let span = r.last_ok_ns.saturating_sub(r.first_start_ns);
        let mut res = ScenarioResult {
            scenario: "hold".into(),
            conns: r.ready,
            rss_bytes_per_conn: (rss0 > 0).then(|| (rss1 as f64 - rss0 as f64) / ready),
            kernel_bytes_per_conn: Some(
                (k1.total() as f64 - self.kernel_before_conns.total() as f64) / ready / 2.0,
            ),
            logins_per_s: (span > 0).then(|| r.ready as f64 / (span as f64 / 1e9)),
            connect_failures: Some(r.failed),
            connect_retries: Some(r.retries),
            ..Default::default()
        };
        if !r.errors.is_empty() {
            res.notes.push(format!("connect errors (sample): {}", r.errors.join("; ")));
        }
        Ok(res)
    }

    /// hold: connect all, then heartbeat every `heartbeat_ms` for `hold_secs`.
    pub fn hold(&mut self) -> anyhow::Result<ScenarioResult> {
        let mut res = match self.ensure_connected()? {
            Some(r) => r,
            None => ScenarioResult { scenario: "hold".into(), conns: self.conns, ..Default::default() },
        };
        let k = &self.knobs;
        let before = self.pool.merged(false)?;
        let cpu0 = self.target.gateway_cpu_us();
        self.pool.broadcast(&Cmd::Heartbeat { interval_ms: k.heartbeat_ms })?;
        let b = bar(k.hold_secs, "hold");
        for _ in 0..k.hold_secs {
            std::thread::sleep(Duration::from_secs(1));
            b.inc(1);
        }
        b.finish_and_clear();
        let cpu1 = self.target.gateway_cpu_us();
        let after = self.pool.merged(false)?;
        self.pool.broadcast(&Cmd::Heartbeat { interval_ms: 0 })?;
        let pongs = after.pongs - before.pongs;
        res.heartbeats = Some(pongs);
        res.cpu_us_per_heartbeat =
            (pongs > 0 && !self.target.gateway_pids.is_empty()).then(|| (cpu1 - cpu0) as f64 / pongs as f64);
        res.disconnects = Some(after.disconnects);
        let codes: serde_json::Map<String, Value> = after
            .close_codes
            .iter()
            .map(|(c, n)| (crate::worker::close_label(*c).to_string(), json!(n)))
            .collect();
        res.params = json!({"proto": k.proto.name(), "transport": k.transport.name(), "quic_endpoints_per_worker": (k.transport == Transport::Quic).then_some(k.quic_endpoints), "heartbeat_ms": k.heartbeat_ms, "hold_secs": k.hold_secs, "pings_sent": after.pings_sent - before.pings_sent, "provision_s": self.provision_s, "close_codes_seen": codes});
        res.notes.push("cpu_us_per_heartbeat is all gateway CPU during the hold divided by heartbeats answered (idle work included)".into());
        if k.transport == Transport::Quic {
            res.notes.push("QUIC: logins_per_s is handshakes (TLS 1.3 + LOGIN on a new stream) per second; kernel_bytes_per_conn is the slab delta halved as for TCP, but a QUIC connection has no socket of its own (shared UDP sockets), so it is mostly noise".into());
        }
        if k.proto == Proto::Mqtt {
            res.notes.push(
                "MQTT: logins_per_s counts CONNECT→CONNACK→SUBSCRIBE→SUBACK; heartbeats are PINGREQ/PINGRESP"
                    .into(),
            );
        }
        Ok(res)
    }

    /// storm: every terminal drops at once and reconnects.
    pub fn storm(&mut self) -> anyhow::Result<ScenarioResult> {
        self.ensure_connected()?;
        self.pool.broadcast(&Cmd::Drop)?;
        let t0 = now_ns();
        let b = bar(self.conns as u64, "storm");
        let r = self.pool.connect(Duration::from_secs(300), |ready, _| b.set_position(ready as u64))?;
        b.finish_and_clear();
        let span = r.last_ok_ns.saturating_sub(r.first_start_ns);
        let mut res = ScenarioResult {
            scenario: "storm".into(),
            conns: r.ready,
            recovery_ms: Some(ms(r.last_ok_ns.saturating_sub(t0))),
            logins_per_s: (span > 0).then(|| r.ready as f64 / (span as f64 / 1e9)),
            connect_failures: Some(r.failed),
            connect_retries: Some(r.retries),
            ..Default::default()
        };
        if !r.errors.is_empty() {
            res.notes.push(format!("connect errors (sample): {}", r.errors.join("; ")));
        }
        // Give the gateway a moment to finish closing the old connections.
        std::thread::sleep(Duration::from_millis(500));
        Ok(res)
    }

    /// Polls the workers until `expected` deliveries arrived or none came for `stall_secs`.
    fn await_deliveries(&mut self, expected: u64, b: &ProgressBar) -> anyhow::Result<Merged> {
        let stall = Duration::from_secs(self.knobs.stall_secs);
        let mut last = 0;
        let mut last_change = Instant::now();
        loop {
            let m = self.pool.merged(false)?;
            b.set_position(m.deliveries);
            if m.deliveries >= expected {
                return self.pool.merged(true);
            }
            if m.deliveries != last {
                last = m.deliveries;
                last_change = Instant::now();
            } else if last_change.elapsed() > stall {
                self.target.check_alive()?;
                return self.pool.merged(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ready(&mut self) -> anyhow::Result<usize> {
        Ok(self.pool.merged(false)?.ready)
    }

    /// fanout: one push to the topic all terminals follow, `repeats` times.
    pub fn fanout(&mut self) -> anyhow::Result<ScenarioResult> {
        self.ensure_connected()?;
        let n = self.ready()?;
        let repeats = self.knobs.repeats.max(1);
        self.pool.merged(true)?;
        let cp0 = self.target.admin.cp_counters();
        let mut all = hist::new_us();
        let (mut firsts, mut lasts) = (Vec::new(), Vec::new());
        let mut got = 0;
        for r in 0..repeats {
            let b = bar(n as u64, &format!("fanout {}/{repeats}", r + 1));
            let mut pusher = self.pusher()?;
            let t = now_ns();
            pusher.push_all(t, None)?;
            let m = self.await_deliveries(n as u64, &b)?;
            b.finish_and_clear();
            got += m.deliveries;
            all.add(&m.hist).ok();
            if m.first_recv_ns != 0 {
                firsts.push(ms(m.first_recv_ns.saturating_sub(t)));
                lasts.push(ms(m.last_recv_ns.saturating_sub(t)));
            }
        }
        let mut res = ScenarioResult {
            scenario: "fanout".into(),
            conns: n,
            first_delivery_ms: median(&firsts),
            last_delivery_ms: median(&lasts),
            deliveries: Some(got),
            expected_deliveries: Some(n as u64 * u64::from(repeats)),
            params: json!({
                "repeats": repeats, "first_delivery_ms_each": firsts, "last_delivery_ms_each": lasts,
                "ttl_secs": self.knobs.ttl_secs,
                "cp_fire_and_forget_dropped": self.target.admin.cp_counters().zip(cp0).map(|(a, b)| a.0 - b.0),
            }),
            ..Default::default()
        };
        fill_latency(&mut res, &all);
        res.notes.push("first/last_delivery_ms: median over repeats, from the admin API call to the first/last terminal receipt".into());
        self.charts.cdfs.push(("fanout".into(), hist::cdf_ms(&all)));
        if self.knobs.baseline == Baseline::Raw {
            let f = self.floor_fanout(n, repeats)?;
            res.floor_ratio = match (f.last_delivery_ms, res.last_delivery_ms) {
                (Some(fl), Some(h)) if h > 0.0 => Some(fl / h),
                _ => None,
            };
            res.floor = Some(f);
        }
        Ok(res)
    }

    /// burst: `pushes` pushes of `payload_bytes` to the topic all terminals follow.
    pub fn burst(&mut self) -> anyhow::Result<ScenarioResult> {
        self.ensure_connected()?;
        let n = self.ready()?;
        let k = self.knobs.clone();
        let before = self.pool.merged(true)?;
        let counters0 = self.target.counters();
        let cp0 = self.target.admin.cp_counters();
        let cpu0 = self.target.gateway_cpu_us();
        let rss0 = self.target.gateway_rss();
        let peak = Arc::new(AtomicU64::new(rss0));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, stop, pids) = (peak.clone(), stop.clone(), self.target.gateway_pids.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let rss: u64 = pids.iter().filter_map(|&p| crate::procfs::rss_bytes(p)).sum();
                    peak.fetch_max(rss, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let t_start = now_ns();
        let errors = AtomicU64::new(0);
        let next = AtomicU64::new(0);
        let target = &self.target;
        std::thread::scope(|s| {
            for _ in 0..k.push_threads.max(1) {
                s.spawn(|| {
                    let Ok(mut pusher) = pusher(target, &k) else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    while next.fetch_add(1, Ordering::Relaxed) < u64::from(k.pushes) {
                        if pusher.push_all(now_ns(), Some(k.payload_bytes)).is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let posted_ns = now_ns();
        let expected = n as u64 * u64::from(k.pushes);
        let b = bar(expected, "burst");
        let m = self.await_deliveries(expected, &b)?;
        b.finish_and_clear();
        // The peak is watched while the receipts that follow the deliveries are processed too.
        let rss_after = self.settled_rss(rss0, k.settle_secs);
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let rss_peak = peak.load(Ordering::Relaxed).max(rss_after);
        let cpu_us = self.target.gateway_cpu_us().saturating_sub(cpu0);
        let counters = self.target.counters().zip(counters0).map(|(a, b)| a.since(&b));
        let cp = self.target.admin.cp_counters().zip(cp0).map(|(a, b)| (a.0 - b.0, a.1 - b.1));
        let window = m.last_recv_ns.saturating_sub(m.first_recv_ns);
        let mut res = ScenarioResult {
            scenario: "burst".into(),
            conns: n,
            first_delivery_ms: (m.first_recv_ns != 0).then(|| ms(m.first_recv_ns.saturating_sub(t_start))),
            last_delivery_ms: (m.last_recv_ns != 0).then(|| ms(m.last_recv_ns.saturating_sub(t_start))),
            deliveries: Some(m.deliveries),
            expected_deliveries: Some(expected),
            deliveries_per_s: (window > 0).then(|| m.deliveries as f64 / (window as f64 / 1e9)),
            rss_growth_bytes: (rss0 > 0).then(|| peak.load(Ordering::Relaxed) as i64 - rss0 as i64),
            drops: counters.as_ref().map(Counters::total_drops),
            params: json!({
                "pushes": k.pushes, "payload_bytes": k.payload_bytes, "push_threads": k.push_threads,
                "ttl_secs": k.ttl_secs, "push_errors": errors.load(Ordering::Relaxed),
                "post_ms": ms(posted_ns - t_start),
                "deliveries_per_s_from_first_post": (m.last_recv_ns > t_start).then(|| m.deliveries as f64 / ((m.last_recv_ns - t_start) as f64 / 1e9)),
                "gateway_deliveries": counters.as_ref().map(|c| c.deliveries),
                "gateway_pushes": counters.as_ref().map(|c| c.pushes),
                "gateway_drops_by_reason": counters.as_ref().map(|c| &c.drops),
                "gateway_closes_by_reason": counters.as_ref().map(|c| &c.closes),
                "terminal_disconnects": m.disconnects - before.disconnects,
                "deliveries_per_connection": (!m.per_conn.is_empty()).then(|| m.per_conn.iter().map(|(d, c)| json!({"deliveries": d, "connections": c})).collect::<Vec<_>>()),
                "cp_fire_and_forget_dropped": cp.map(|c| c.0),
                "cp_link_queue_full": cp.map(|c| c.1),
                "gateway_cpu_ms": cpu_us as f64 / 1e3,
                "gateway_cpu_us_per_delivery": (m.deliveries > 0).then(|| cpu_us as f64 / m.deliveries as f64),
                "gateway_fanout_mean_us_per_push_per_core": counters.as_ref().filter(|c| c.fanout_count > 0.0).map(|c| c.fanout_us_sum / c.fanout_count),
                "rss_before_bytes": rss0, "rss_peak_bytes": rss_peak, "rss_after_bytes": rss_after,
                "rss_after_over_before": (rss0 > 0).then(|| rss_after as f64 / rss0 as f64),
                "settle_secs": k.settle_secs,
            }),
            ..Default::default()
        };
        fill_latency(&mut res, &m.hist);
        if rss0 > 0 && rss_after as f64 > rss0 as f64 * RSS_SETTLED_RATIO {
            res.notes.push(format!(
                "RSS NOT GIVEN BACK: {:.1} MiB before the burst, {:.1} MiB at peak, {:.1} MiB {} s after it (ratio {:.2} > {RSS_SETTLED_RATIO})",
                rss0 as f64 / 1048576.0,
                rss_peak as f64 / 1048576.0,
                rss_after as f64 / 1048576.0,
                k.settle_secs,
                rss_after as f64 / rss0 as f64,
            ));
        }
        res.notes.push("deliveries_per_s: deliveries between the first and the last receipt; first/last_delivery_ms from the first admin API call".into());
        self.charts.cdfs.push(("burst".into(), hist::cdf_ms(&m.hist)));
        self.charts.burst.push(("herald".into(), timeline_rate(&m, t_start)));
        if k.baseline == Baseline::Raw {
            let ratio = |h: Option<f64>, f: &FloorFigures| match (h, f.deliveries_per_s) {
                (Some(h), Some(fl)) if fl > 0.0 => Some(h / fl),
                _ => None,
            };
            let (f, tl) = self.floor_burst(n, k.pushes, k.payload_bytes, false)?;
            res.floor_ratio = ratio(res.deliveries_per_s, &f);
            res.floor = Some(f);
            self.charts.burst.push(("floor: send(2) per frame".into(), tl));
            let (c, tl) = self.floor_burst(n, k.pushes, k.payload_bytes, true)?;
            res.ceiling_ratio = ratio(res.deliveries_per_s, &c);
            res.ceiling = Some(c);
            self.charts.burst.push(("ceiling: one send(2) per conn".into(), tl));
        }
        Ok(res)
    }

    /// Herald's RSS once it is back within [`RSS_SETTLED_RATIO`] of `before`, or after
    /// `settle_secs` if it never is (polled every 250 ms: memory given back shows at once).
    fn settled_rss(&self, before: u64, settle_secs: u64) -> u64 {
        let rss =
            || self.target.gateway_pids.iter().filter_map(|&p| crate::procfs::rss_bytes(p)).sum::<u64>();
        let deadline = std::time::Instant::now() + Duration::from_secs(settle_secs);
        loop {
            let now = rss();
            if now as f64 <= before as f64 * RSS_SETTLED_RATIO || std::time::Instant::now() >= deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// How this session sends a push to every terminal: the admin API, or (for a broker) an MQTT
    /// connection of its own.
    fn pusher(&self) -> anyhow::Result<Pusher<'_>> {
        pusher(&self.target, &self.knobs)
    }

    /// latency: single-user pushes at `rate` per second for `latency_secs`.
    pub fn latency(&mut self) -> anyhow::Result<ScenarioResult> {
        if self.target.broker.is_some() {
            anyhow::bail!("latency needs Herald's admin API (not run against a broker)");
        }
        self.ensure_connected()?;
        let n = self.conns.max(1);
        let k = self.knobs.clone();
        self.pool.merged(true)?;
        let total = u64::from(k.rate) * k.latency_secs;
        let threads = k.push_threads.max(1) as u64;
        let interval_ns = 1_000_000_000 / u64::from(k.rate.max(1));
        let sent = AtomicU64::new(0);
        let errors = AtomicU64::new(0);
        let b = bar(total, "latency");
        let t0 = now_ns();
        std::thread::scope(|s| {
            for th in 0..threads {
                let (sent, errors, b, admin) = (&sent, &errors, &b, &self.target.admin);
                s.spawn(move || {
                    let mut i = th;
                    while i < total {
                        // Open loop: request i is due at t0 + i/rate, whatever came before.
                        let due = t0 + i * interval_ns;
                        let now = now_ns();
                        if due > now {
                            std::thread::sleep(Duration::from_nanos(due - now));
                        }
                        let t = now_ns();
                        let to = json!({"user": user_name(i as usize % n)});
                        let payload = match k.proto {
                            Proto::Herald => json!({"data": {T_NS_KEY: t.to_string()}}),
                            Proto::Mqtt => {
                                json!({"body": mqtt::stamped_body(t, 0), "data": {T_NS_KEY: t.to_string()}})
                            }
                        };
                        match admin.push(to, payload, k.ttl_secs) {
                            Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                        b.inc(1);
                        i += threads;
                    }
                });
            }
        });
        b.finish_and_clear();
        let elapsed = ms(now_ns() - t0) / 1e3;
        let sent = sent.load(Ordering::Relaxed);
        let b = bar(sent, "deliveries");
        let m = self.await_deliveries(sent, &b)?;
        b.finish_and_clear();
        let mut res = ScenarioResult {
            scenario: "latency".into(),
            conns: self.conns,
            deliveries: Some(m.deliveries),
            expected_deliveries: Some(sent),
            params: json!({"rate": k.rate, "secs": k.latency_secs, "achieved_rate": sent as f64 / elapsed, "push_errors": errors.load(Ordering::Relaxed), "ttl_secs": k.ttl_secs}),
            ..Default::default()
        };
        fill_latency(&mut res, &m.hist);
        self.charts.cdfs.push(("latency".into(), hist::cdf_ms(&m.hist)));
        Ok(res)
    }

    fn floor(&mut self, n: usize) -> anyhow::Result<&Floor> {
        if self.floor.is_none() {
            self.floor = Some(Floor::open(&mut self.pool, n)?);
        }
        self.floor.as_ref().context("floor")
    }

    fn floor_fanout(&mut self, n: usize, repeats: u32) -> anyhow::Result<FloorFigures> {
        self.floor(n)?;
        self.pool.merged(true)?;
        let (mut lasts, mut firsts) = (Vec::new(), Vec::new());
        let mut all = hist::new_us();
        let mut got = 0;
        for _ in 0..repeats {
            let b = bar(n as u64, "floor fanout");
            let t = self.floor.as_ref().context("floor")?.blast(1, 0)?;
            let m = self.await_deliveries(n as u64, &b)?;
            b.finish_and_clear();
            got += m.deliveries;
            all.add(&m.hist).ok();
            if m.first_recv_ns != 0 {
                firsts.push(ms(m.first_recv_ns.saturating_sub(t)));
                lasts.push(ms(m.last_recv_ns.saturating_sub(t)));
            }
        }
        self.charts.cdfs.push(("fanout floor".into(), hist::cdf_ms(&all)));
        Ok(FloorFigures {
            method: "send_per_frame".into(),
            conns: n,
            frame_bytes: floor::wire_bytes(0)?,
            first_delivery_ms: median(&firsts),
            last_delivery_ms: median(&lasts),
            p50_ms: hist::pct_ms(&all, 50.0),
            p99_ms: hist::pct_ms(&all, 99.0),
            deliveries: got,
            deliveries_per_s: None,
        })
    }

    fn floor_burst(
        &mut self,
        n: usize,
        pushes: u32,
        bytes: usize,
        coalesced: bool,
    ) -> anyhow::Result<(FloorFigures, Vec<(f64, f64)>)> {
        self.floor(n)?;
        self.pool.merged(true)?;
        let fl = self.floor.as_ref().context("floor")?;
        let t = if coalesced { fl.blast_coalesced(pushes, bytes)? } else { fl.blast(pushes, bytes)? };
        let expected = n as u64 * u64::from(pushes);
        let name = if coalesced { "burst ceiling" } else { "burst floor" };
        let b = bar(expected, name);
        let m = self.await_deliveries(expected, &b)?;
        b.finish_and_clear();
        let window = m.last_recv_ns.saturating_sub(m.first_recv_ns);
        self.charts.cdfs.push((name.into(), hist::cdf_ms(&m.hist)));
        Ok((
            FloorFigures {
                method: if coalesced { "coalesced" } else { "send_per_frame" }.into(),
                conns: n,
                frame_bytes: floor::wire_bytes(bytes)?,
                first_delivery_ms: (m.first_recv_ns != 0).then(|| ms(m.first_recv_ns.saturating_sub(t))),
                last_delivery_ms: (m.last_recv_ns != 0).then(|| ms(m.last_recv_ns.saturating_sub(t))),
                p50_ms: hist::pct_ms(&m.hist, 50.0),
                p99_ms: hist::pct_ms(&m.hist, 99.0),
                deliveries: m.deliveries,
                deliveries_per_s: (window > 0).then(|| m.deliveries as f64 / (window as f64 / 1e9)),
            },
            timeline_rate(&m, t),
        ))
    }

    pub fn close(mut self) {
        if self.floor.take().is_some() {
            let _ = self.pool.broadcast(&Cmd::FloorClose);
        }
        self.pool.quit();
    }
}

fn pusher<'a>(target: &'a Target, knobs: &Knobs) -> anyhow::Result<Pusher<'a>> {
    match (&target.broker, target.mqtt) {
        (Some(_), Some(addr)) => {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let id = format!("herald-bench-pub{}", NEXT.fetch_add(1, Ordering::Relaxed));
            Ok(Pusher::Mqtt(mqtt::Publisher::connect(addr, &id)?, u8::from(knobs.ttl_secs > 0)))
        }
        _ => Ok(Pusher::Admin(&target.admin, knobs.ttl_secs, knobs.proto == Proto::Mqtt)),
    }
}

/// Sends one push to the topic every bench terminal follows.
enum Pusher<'a> {
    /// Herald's admin API with this TTL; `true`: the terminals speak MQTT, so the send time goes
    /// into the body (what MQTT terminals receive) as well.
    Admin(&'a crate::admin::Admin, u32, bool),
    /// MQTT PUBLISH to a broker at this QoS.
    Mqtt(mqtt::Publisher, u8),
}

impl Pusher<'_> {
    /// A push sent at `t` whose body is `body_bytes` long (`None`: fan-out's push, no body
    /// beyond what carries the time).
    fn push_all(&mut self, t: u64, body_bytes: Option<usize>) -> anyhow::Result<()> {
        match self {
            Pusher::Admin(admin, ttl, mqtt_terminals) => {
                let mut payload = json!({"data": {T_NS_KEY: t.to_string()}});
                match (body_bytes, *mqtt_terminals) {
                    (_, true) => payload["body"] = json!(mqtt::stamped_body(t, body_bytes.unwrap_or(0))),
                    (Some(b), false) => payload["body"] = json!("x".repeat(b)),
                    (None, false) => {}
                }
                admin.push(json!({"topic": ALL_TOPIC}), payload, *ttl)?;
            }
            Pusher::Mqtt(p, qos) => {
                p.publish(ALL_TOPIC, mqtt::stamped_body(t, body_bytes.unwrap_or(0)).as_bytes(), *qos)?;
            }
        }
        Ok(())
    }
}

fn fill_latency(res: &mut ScenarioResult, h: &Histogram<u64>) {
    res.p50_ms = hist::pct_ms(h, 50.0);
    res.p99_ms = hist::pct_ms(h, 99.0);
    res.max_ms = (!h.is_empty()).then(|| h.max() as f64 / 1000.0);
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(s[s.len() / 2])
}

/// Deliveries per second in each timeline bucket, against ms since `t0`.
fn timeline_rate(m: &Merged, t0: u64) -> Vec<(f64, f64)> {
    let per_s = 1e9 / TIMELINE_BUCKET_NS as f64;
    let Some((&first, _)) = m.timeline.iter().next() else { return Vec::new() };
    let last = *m.timeline.keys().next_back().unwrap_or(&first);
    let mut out = vec![(ms((first * TIMELINE_BUCKET_NS).saturating_sub(t0)), 0.0)];
    for b in first..=last {
        let n = m.timeline.get(&b).copied().unwrap_or(0);
        out.push((ms((b * TIMELINE_BUCKET_NS).saturating_sub(t0)), n as f64 * per_s));
    }
    out.push((ms(((last + 1) * TIMELINE_BUCKET_NS).saturating_sub(t0)), 0.0));
    out
}
