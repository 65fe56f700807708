//! The Herald under test: addresses given on the command line, or processes the bench spawns
//! (`herald serve`, or a control plane plus K gateway nodes sharing one port) and stops after.

use std::fs::File;
use std::net::{SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::admin::{Admin, get_text};

/// Where Herald is, or how to start it.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Start Herald for the run and stop it after.
    #[arg(long)]
    pub spawn: bool,
    /// With --spawn: 0 = one `herald serve`; K > 0 = a control plane plus K gateway processes
    /// sharing the terminal port (SO_REUSEPORT).
    #[arg(long, default_value_t = 0)]
    pub nodes: usize,
    /// The herald binary (default: next to this one, then $HERALD_BIN, then PATH).
    #[arg(long)]
    pub herald: Option<PathBuf>,
    /// Terminal (TCP) address of a running gateway.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub tcp: SocketAddrV4,
    /// MQTT address of a running gateway (`--proto mqtt` without --spawn).
    #[arg(long)]
    pub mqtt: Option<SocketAddrV4>,
    /// QUIC (UDP) address of a running gateway (`--transport quic` without --spawn).
    #[arg(long)]
    pub quic: Option<SocketAddrV4>,
    /// PEM certificate the QUIC clients trust (with --spawn: the development certificate
    /// `herald serve` makes in its data directory).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Admin API address of a running control plane.
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub admin: String,
    /// Admin API key (with --spawn, the bench passes it to Herald as HERALD_ADMIN_KEY).
    #[arg(long, default_value = "herald-bench-admin-key-0123456789abcdef")]
    pub admin_key: String,
    /// Metrics addresses of running gateways (repeatable).
    #[arg(long)]
    pub metrics: Vec<String>,
    /// PIDs of running gateway processes, for /proc figures (repeatable).
    #[arg(long = "gateway-pid")]
    pub gateway_pids: Vec<u32>,
    /// Readiness deadline for spawned processes, seconds.
    #[arg(long, default_value_t = 60)]
    pub ready_secs: u64,
}

/// Gateway counters (Prometheus), summed over the nodes.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// `herald_deliveries_total`: push frames queued to recipients.
    pub deliveries: f64,
    /// `herald_pushes_total`: push orders handled by a core.
    pub pushes: f64,
    /// `herald_fanout_latency_us_sum` / `_count`: a push reaching the node to a core having
    /// written it to every local recipient (one sample per push per core).
    pub fanout_us_sum: f64,
    pub fanout_count: f64,
    /// `herald_drops_total` by reason.
    pub drops: std::collections::BTreeMap<String, f64>,
    /// `herald_closes_total` by reason.
    pub closes: std::collections::BTreeMap<String, f64>,
}

impl Counters {
    /// `self - before`, by field and reason.
    pub fn since(&self, before: &Counters) -> Counters {
        let diff = |a: &std::collections::BTreeMap<String, f64>,
                    b: &std::collections::BTreeMap<String, f64>| {
            a.iter().map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0))).collect()
        };
        Counters {
            deliveries: self.deliveries - before.deliveries,
            pushes: self.pushes - before.pushes,
            fanout_us_sum: self.fanout_us_sum - before.fanout_us_sum,
            fanout_count: self.fanout_count - before.fanout_count,
            drops: diff(&self.drops, &before.drops),
            closes: diff(&self.closes, &before.closes),
        }
    }

    pub fn total_drops(&self) -> f64 {
        self.drops.values().sum()
    }
}

/// Which listeners beside the Herald-protocol TCP one a spawned Herald needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Listeners {
    pub mqtt: bool,
    pub quic: bool,
}

/// A Herald (or, for `compare`, an MQTT broker) to measure. Spawned processes are stopped
/// (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Target {
    pub tcp: SocketAddrV4,
    pub mqtt: Option<SocketAddrV4>,
    pub quic: Option<SocketAddrV4>,
    pub ca: Option<PathBuf>,
    /// Set for a broker without Herald's admin API (`compare`): its name. Pushes are then
    /// published over MQTT by the bench itself and nothing is provisioned.
    pub broker: Option<String>,
    /// Lines a spawned process must print before it counts as ready, beside the usual ones:
    /// `(process name, line)`.
    extra_announce: Vec<(String, String)>,
    pub admin: Admin,
    pub admin_addr: String,
    pub metrics: Vec<String>,
    pub gateway_pids: Vec<u32>,
    pub version: String,
    /// How it was started, for the report.
    pub mode: String,
    children: Vec<(String, Child)>,
    _data: Option<tempfile::TempDir>,
    log_dir: Option<PathBuf>,
}

/// A free loopback port: bind port 0, read it, close. Another process could take it before
/// Herald binds it; acceptable for a bench, and reported as a readiness failure if it happens.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The herald binary: explicit, next to this executable, `$HERALD_BIN`, or `herald` on PATH.
pub fn find_herald(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(3) {
            let cand = dir.join("herald");
            if cand.is_file() {
                return cand;
            }
        }
    }
    if let Ok(p) = std::env::var("HERALD_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from("herald")
}

fn version_of(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The lines a spawned process prints on stdout once it serves, by process name.
/// A self-signed certificate for `localhost` and 127.0.0.1 with its key, written into `dir`,
/// for spawned `herald gateway --quic` nodes (and trusted by the bench's terminals).
fn quic_certificate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let (cert, key) = (dir.join("quic-cert.pem"), dir.join("quic-key.pem"));
    std::fs::write(&cert, made.cert.pem())?;
    std::fs::write(&key, made.key_pair.serialize_pem())?;
    Ok((cert, key))
}

fn announcements(name: &str) -> &'static [&'static str] {
    const SERVE: &[&str] =
        &["herald: admin API on http://", "herald: gateway on tcp://", "herald: metrics on http://"];
    const CONTROL_PLANE: &[&str] = &["herald: admin API on http://", "herald: link for gateways on "];
    const GATEWAY: &[&str] = &["herald: gateway on tcp://", "herald: metrics on http://"];
    match name {
        "serve" => SERVE,
        "control-plane" => CONTROL_PLANE,
        _ => GATEWAY,
    }
}

impl Target {
    pub fn open(args: &TargetArgs, log_dir: Option<&Path>, need: Listeners) -> anyhow::Result<Target> {
        if args.spawn {
            return Target::spawn(args, log_dir, need);
        }
        let admin = Admin::new(&args.admin, &args.admin_key);
        if !admin.healthy() {
            bail!("no healthy admin API at {} (start Herald, or use --spawn)", args.admin);
        }
        if need.mqtt && args.mqtt.is_none() {
            bail!("--proto mqtt against a running Herald needs --mqtt ADDR (or use --spawn)");
        }
        if need.quic && (args.quic.is_none() || args.ca.is_none()) {
            bail!(
                "--transport quic against a running Herald needs --quic ADDR and --ca CERT (or use --spawn)"
            );
        }
        Ok(Target {
            tcp: args.tcp,
            mqtt: args.mqtt,
            quic: args.quic,
            ca: args.ca.clone(),
            broker: None,
            extra_announce: Vec::new(),
            admin,
            admin_addr: args.admin.clone(),
            metrics: args.metrics.clone(),
            gateway_pids: args.gateway_pids.clone(),
            version: "unknown (not spawned)".into(),
            mode: "external".into(),
            children: Vec::new(),
            _data: None,
            log_dir: None,
        })
    }

    /// Starts Mosquitto (`bin`) on a free loopback port with a config the bench writes: no
    /// connection limit, anonymous clients, no persistence, `allow_duplicate_messages true`,
    /// otherwise its defaults, then each of `extra_options` as a line of its own.
    ///
    /// `allow_duplicate_messages true`: 2.0.11 otherwise remembers every client a message was
    /// sent to and, for each MQTT 3.1.1 recipient, compares its id with all earlier ones
    /// (`strcmp` in `db__message_insert`: 41–44% of its CPU in a fan-out profile here), so one
    /// message to 15,000 took ~640 ms instead of ~215 ms. That check only serves overlapping
    /// subscriptions, which bench terminals (one filter each) never have; its man page calls the
    /// option deprecated and says it can safely be true then. `set_tcp_nodelay true` changed
    /// nothing measurable (fan-out 215 ms, burst 63k/s), so Nagle stays at its default.
    pub fn mosquitto(
        bin: &Path,
        extra_options: &[String],
        log_dir: Option<&Path>,
        ready_secs: u64,
    ) -> anyhow::Result<Target> {
        let data = tempfile::Builder::new().prefix("herald-bench-mosquitto").tempdir()?;
        let logs = match log_dir {
            Some(d) => d.to_path_buf(),
            None => data.path().to_path_buf(),
        };
        std::fs::create_dir_all(&logs)?;
        let port = free_port()?;
        let addr = SocketAddrV4::new([127, 0, 0, 1].into(), port);
        let conf = data.path().join("mosquitto.conf");
        let mut text = format!(
            "# written by herald-bench compare\nlistener {port} 127.0.0.1\nmax_connections -1\n\
             allow_anonymous true\npersistence false\nallow_duplicate_messages true\n\
             log_dest stdout\nconnection_messages false\n"
        );
        for line in extra_options {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&conf, text)?;
        let version = Command::new(bin)
            .arg("-h")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_else(|| "unknown".into());
        let log = File::create(logs.join("mosquitto.log"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} -c {}", bin.display(), conf.display()))?;
        let mut t = Target {
            tcp: addr,
            mqtt: Some(addr),
            quic: None,
            ca: None,
            broker: Some("mosquitto".into()),
            extra_announce: Vec::new(),
            admin: Admin::new("127.0.0.1:9", ""),
            admin_addr: String::new(),
            metrics: Vec::new(),
            gateway_pids: vec![child.id()],
            version,
            mode: if extra_options.is_empty() {
                format!("{} -c {}", bin.display(), conf.display())
            } else {
                format!("{} -c {} (added: {})", bin.display(), conf.display(), extra_options.join("; "))
            },
            children: vec![("mosquitto".into(), child)],
            _data: Some(data),
            log_dir: Some(logs),
        };
        let deadline = Instant::now() + Duration::from_secs(ready_secs);
        loop {
            t.check_alive().map_err(|e| anyhow::anyhow!("{e}; log:\n{}", t.log_tail("mosquitto")))?;
            if crate::mqtt::Publisher::connect(addr, "herald-bench-probe").is_ok() {
                return Ok(t);
            }
            if Instant::now() > deadline {
                bail!("mosquitto not ready after {ready_secs} s; log:\n{}", t.log_tail("mosquitto"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(args: &TargetArgs, log_dir: Option<&Path>, need: Listeners) -> anyhow::Result<Target> {
        let bin = find_herald(args.herald.as_deref());
        let version = version_of(&bin);
        let data = tempfile::Builder::new().prefix("herald-bench-data").tempdir()?;
        let logs = match log_dir {
            Some(d) => d.to_path_buf(),
            None => data.path().to_path_buf(),
        };
        std::fs::create_dir_all(&logs)?;
        let tcp = SocketAddrV4::new([127, 0, 0, 1].into(), free_port()?);
        let admin_addr = format!("127.0.0.1:{}", free_port()?);
        let mqtt = need
            .mqtt
            .then(|| free_port().map(|p| SocketAddrV4::new([127, 0, 0, 1].into(), p)))
            .transpose()?;
        let quic = need
            .quic
            .then(|| free_port().map(|p| SocketAddrV4::new([127, 0, 0, 1].into(), p)))
            .transpose()?;
        let mut t = Target {
            tcp,
            mqtt,
            quic,
            ca: None,
            broker: None,
            extra_announce: Vec::new(),
            admin: Admin::new(&admin_addr, &args.admin_key),
            admin_addr: admin_addr.clone(),
            metrics: Vec::new(),
            gateway_pids: Vec::new(),
            version,
            mode: String::new(),
            children: Vec::new(),
            _data: None,
            log_dir: Some(logs.clone()),
        };
        let start = |name: &str, argv: Vec<String>| -> anyhow::Result<Child> {
            let log = File::create(logs.join(format!("{name}.log")))?;
            Command::new(&bin)
                .args(&argv)
                .env("HERALD_ADMIN_KEY", &args.admin_key)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {} {}", bin.display(), argv.join(" ")))
        };
        let dir = data.path().join("store").display().to_string();
        let mut listener_args = Vec::new();
        // `serve` listens on 1883 by default; the bench never takes a fixed port.
        match mqtt {
            Some(m) => listener_args.extend(["--mqtt".to_string(), m.to_string()]),
            None => listener_args.extend(["--mqtt".to_string(), "off".to_string()]),
        }
        if let Some(q) = quic {
            listener_args.extend(["--quic".to_string(), q.to_string()]);
            if args.nodes == 0 {
                // `herald serve` makes a development certificate in its data dir.
                t.ca = Some(
                    args.ca.clone().unwrap_or_else(|| data.path().join("store").join("quic-dev-cert.pem")),
                );
            } else {
                // `herald gateway` needs one: every node gets the same, made here. The kernel
                // keeps a client's datagrams on one node's socket while its address stays the
                // same (SO_REUSEPORT hashes the 4-tuple), which is all these scenarios need.
                let (cert, key) = quic_certificate(data.path())?;
                listener_args.extend(["--quic-cert".to_string(), cert.display().to_string()]);
                listener_args.extend(["--quic-key".to_string(), key.display().to_string()]);
                t.ca = Some(cert);
            }
        }
        if args.nodes == 0 {
            let metrics = format!("127.0.0.1:{}", free_port()?);
            let mut argv = vec![
                "serve".into(),
                "--data".into(),
                dir,
                "--tcp".into(),
                tcp.to_string(),
                "--admin".into(),
                admin_addr,
                "--metrics".into(),
                metrics.clone(),
            ];
            argv.extend(listener_args.iter().cloned());
            t.announce("serve", mqtt.is_some(), quic.is_some());
            t.mode = format!("herald {}", argv.join(" "));
            let child = start("serve", argv)?;
            t.gateway_pids.push(child.id());
            t.children.push(("serve".into(), child));
            t.metrics.push(metrics);
        } else {
            let link = format!("127.0.0.1:{}", free_port()?);
            let argv = vec![
                "control-plane".into(),
                "--data".into(),
                dir,
                "--admin".into(),
                admin_addr,
                "--link".into(),
                link.clone(),
            ];
            t.mode = format!("herald {}; {} × herald gateway", argv.join(" "), args.nodes);
            let child = start("control-plane", argv)?;
            t.children.push(("control-plane".into(), child));
            // Gateways join a control plane that already listens on its link.
            t.wait_ready(Duration::from_secs(args.ready_secs))?;
            for k in 0..args.nodes {
                let metrics = format!("127.0.0.1:{}", free_port()?);
                let mut argv = vec![
                    "gateway".into(),
                    "--control-plane".into(),
                    link.clone(),
                    "--tcp".into(),
                    tcp.to_string(),
                    "--metrics".into(),
                    metrics.clone(),
                    "--node-id".into(),
                    format!("bench-gw{k}"),
                ];
                argv.extend(listener_args.iter().cloned());
                let name = format!("gateway-{k}");
                t.announce(&name, mqtt.is_some(), quic.is_some());
                let child = start(&name, argv)?;
                t.gateway_pids.push(child.id());
                t.children.push((name, child));
                t.metrics.push(metrics);
            }
        }
        t._data = Some(data);
        t.wait_ready(Duration::from_secs(args.ready_secs))?;
        Ok(t)
    }

    /// Waits until every spawned process announced itself on stdout (`herald: admin API on`,
    /// `herald: gateway on tcp://` — printed only once the gateway got the control plane's
    /// tables —, `herald: metrics on`), the admin API answers and every metrics port serves.
    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut exited = None;
            for (name, c) in &mut self.children {
                if let Some(status) = c.try_wait()? {
                    exited = Some((name.clone(), status));
                }
            }
            if let Some((name, status)) = exited {
                bail!("{name} exited during start ({status}); log:\n{}", self.log_tail(&name));
            }
            let missing: Vec<String> = self
                .children
                .iter()
                .flat_map(|(name, _)| {
                    let log = self.log_text(name);
                    announcements(name)
                        .iter()
                        .copied()
                        .chain(self.extra_announce.iter().filter(|(n, _)| n == name).map(|(_, l)| l.as_str()))
                        .filter(|l| !log.contains(*l))
                        .map(|l| format!("{name}: {l:?}"))
                        .collect::<Vec<_>>()
                })
                .collect();
            let metrics_ok = missing.is_empty()
                && self.metrics.iter().all(|m| get_text(&format!("http://{m}/metrics")).is_ok());
            if metrics_ok && self.admin.healthy() {
                let waiting: Vec<&str> = self
                    .children
                    .iter()
                    .filter(|(n, _)| self.log_text(n).contains("no tables from the control plane yet"))
                    .map(|(n, _)| n.as_str())
                    .collect();
                if waiting.is_empty() {
                    return Ok(());
                }
                // Announced without tables (after its own 10 s wait): logins would be refused.
                if Instant::now() > deadline {
                    bail!("gateway(s) {waiting:?} never got the control plane's tables");
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> =
                    self.children.iter().map(|(n, _)| format!("--- {n}\n{}", self.log_tail(n))).collect();
                bail!(
                    "Herald not ready after {within:?} (not yet announced: {missing:?}, metrics {metrics_ok}); logs:\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn announce(&mut self, name: &str, mqtt: bool, quic: bool) {
        if mqtt {
            self.extra_announce.push((name.into(), "herald: mqtt on tcp://".into()));
        }
        if quic {
            self.extra_announce.push((name.into(), "herald: quic on udp://".into()));
        }
    }

    fn log_text(&self, name: &str) -> String {
        let Some(d) = &self.log_dir else { return String::new() };
        std::fs::read_to_string(d.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn log_tail(&self, name: &str) -> String {
        let s = self.log_text(name);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Summed RSS of the gateway processes, bytes (0 when none is known).
    pub fn gateway_rss(&self) -> u64 {
        self.gateway_pids.iter().filter_map(|&p| crate::procfs::rss_bytes(p)).sum()
    }

    /// Summed CPU time of the gateway processes, µs.
    pub fn gateway_cpu_us(&self) -> u64 {
        self.gateway_pids.iter().filter_map(|&p| crate::procfs::cpu_us(p)).sum()
    }

    /// The gateways' counters the bench reports, summed over every node; `None` without
    /// metrics addresses or when one node does not answer.
    pub fn counters(&self) -> Option<Counters> {
        use crate::admin::{
            M_CLOSES, M_DELIVERIES, M_DROPS, M_FANOUT_COUNT, M_FANOUT_SUM, M_PUSHES, metric_by_reason,
            sum_metric,
        };
        if self.metrics.is_empty() {
            return None;
        }
        let mut c = Counters::default();
        for m in &self.metrics {
            let t = get_text(&format!("http://{m}/metrics")).ok()?;
            c.deliveries += sum_metric(&t, M_DELIVERIES);
            c.pushes += sum_metric(&t, M_PUSHES);
            c.fanout_us_sum += sum_metric(&t, M_FANOUT_SUM);
            c.fanout_count += sum_metric(&t, M_FANOUT_COUNT);
            for (r, v) in metric_by_reason(&t, M_DROPS) {
                *c.drops.entry(r).or_insert(0.0) += v;
            }
            for (r, v) in metric_by_reason(&t, M_CLOSES) {
                *c.closes.entry(r).or_insert(0.0) += v;
            }
        }
        Some(c)
    }

    /// Whether every spawned process is still running.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, c) in &mut self.children {
            if let Some(status) = c.try_wait()? {
                bail!("{name} exited during the run ({status})");
            }
        }
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Gateways first (they drain and tell the control plane), then the control plane, so
        // no gateway sees its link drop during its drain.
        let (gateways, cps): (Vec<_>, Vec<_>) =
            self.children.iter_mut().partition(|(name, _)| name != "control-plane");
        for group in [gateways, cps] {
            for (_, c) in &group {
                // SAFETY: signalling a child this process spawned and has not reaped yet.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            for (_, c) in group {
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if let Ok(None) = c.try_wait() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }
}
