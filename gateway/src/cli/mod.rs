//! Command line of the `herald` binary. Flags override the config file, which overrides the
//! defaults; every flag has a key of the same name in `herald.example.toml`.

mod config;
mod listen;
mod quic_client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use herald_control_plane::{ControlPlane, ControlPlaneConfig};
use herald_gateway::{Driver, Gateway, GatewayConfig};

use config::FileConfig;

/// Exit code for bad arguments or configuration (EX_USAGE).
pub(crate) const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "herald", version, about = "Herald push gateway")]
pub(crate) struct Cli {
    /// TOML configuration file (see herald.example.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Control plane and gateway in one process, on the embedded store.
    Serve {
        #[command(flatten)]
        cp: CpArgs,
        #[command(flatten)]
        gw: GwArgs,
    },
    /// The control plane alone: admin API, store, link server for gateways.
    ControlPlane {
        #[command(flatten)]
        cp: CpArgs,
    },
    /// A gateway node connected to a control plane.
    Gateway {
        /// The control plane's link address.
        #[arg(long, value_name = "ADDR")]
        control_plane: Option<SocketAddr>,
        #[command(flatten)]
        gw: GwArgs,
    },
    /// A terminal for people: log in, print each push as a JSON line, acknowledge it.
    Listen(listen::ListenArgs),
    /// Parse the configuration, report every problem, and exit.
    CheckConfig,
}

#[derive(Debug, Args)]
struct CpArgs {
    /// Data directory of the embedded store [default: ./data].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Admin HTTP API address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Link address gateways connect to [default: 127.0.0.1:7001].
    #[arg(long, value_name = "ADDR")]
    link: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct GwArgs {
    /// Terminal TCP address [default: 0.0.0.0:7400].
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// Prometheus metrics address [default: 127.0.0.1:9400].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// MQTT 3.1.1/5.0 listener address, or `off` [`herald serve` default: 0.0.0.0:1883, off
    /// with a warning if that port is taken; `herald gateway` default: off].
    #[arg(long, value_name = "ADDR|off")]
    mqtt: Option<Listen>,
    /// Let MQTT terminals publish (PUBLISH and wills become pushes to the groups and topics
    /// they follow) [default: refused].
    #[arg(long)]
    mqtt_allow_publish: bool,
    /// QUIC listener address (UDP, e.g. 0.0.0.0:7402) [default: off].
    #[arg(long, value_name = "ADDR")]
    quic: Option<SocketAddr>,
    /// PEM certificate chain for QUIC [`herald serve` default: a development certificate made
    /// in the data dir].
    #[arg(long, value_name = "FILE")]
    quic_cert: Option<PathBuf>,
    /// PEM private key of --quic-cert.
    #[arg(long, value_name = "FILE")]
    quic_key: Option<PathBuf>,
    /// Node name [default: <hostname>-<pid>].
    #[arg(long)]
    node_id: Option<String>,
    /// Worker threads, 0 = one per CPU.
    #[arg(long)]
    cores: Option<usize>,
    /// I/O driver: auto, uring or epoll.
    #[arg(long)]
    driver: Option<String>,
    /// Heartbeat interval told to terminals, in seconds.
    #[arg(long)]
    heartbeat_interval_secs: Option<u16>,
    /// Login deadline for new connections, in milliseconds.
    #[arg(long)]
    login_timeout_ms: Option<u64>,
}

/// A usage or configuration problem: printed, exit 64.
struct Usage(String);

pub(crate) fn run(cli: Cli) -> ExitCode {
    match run_inner(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(Usage(msg))) => {
            eprintln!("herald: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(Usage),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure::Usage(Usage(msg.into()))
}

fn run_inner(cli: Cli) -> Result<(), Failure> {
    let file = match &cli.config {
        Some(p) => FileConfig::load(p).map_err(|e| usage(e.to_string()))?,
        None => FileConfig::default(),
    };
    init_tracing(file.log_filter.as_deref());
    match cli.mode {
        Mode::CheckConfig => {
            println!("configuration is valid");
            Ok(())
        }
        Mode::Listen(args) => listen::run(args).map_err(Failure::Runtime),
        Mode::ControlPlane { cp } => {
            let cp = start_control_plane(&file, &cp)?;
            wait_for_signal()?;
            cp.shutdown();
            cp.join().map_err(anyhow::Error::from)?;
            Ok(())
        }
        Mode::Gateway { control_plane, gw } => {
            let addr = control_plane.or(file.control_plane).ok_or_else(|| {
                usage("`herald gateway` needs --control-plane ADDR (or gateway.control_plane in the config)")
            })?;
            let gw = start_gateway(&file, &gw, addr, None)?;
            wait_for_signal()?;
            drain(gw)
        }
        Mode::Serve { cp, gw } => {
            let mut cp_args = cp;
            // All-in-one: the link stays on loopback, on any free port unless configured.
            if cp_args.link.is_none() && file.link.is_none() {
                cp_args.link = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            }
            let cp = start_control_plane(&file, &cp_args)?;
            let data = cp_args
                .data
                .clone()
                .or(file.data.clone())
                .unwrap_or_else(|| ControlPlaneConfig::default().data_dir);
            let gw = start_gateway(&file, &gw, cp.link_addr(), Some(&data))?;
            wait_for_signal()?;
            let drained = drain(gw);
            cp.shutdown();
            cp.join().map_err(anyhow::Error::from)?;
            drained
        }
    }
}

fn init_tracing(file_filter: Option<&str>) {
    let filter =
        std::env::var("RUST_LOG").ok().or(file_filter.map(str::to_owned)).unwrap_or_else(|| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

fn start_control_plane(file: &FileConfig, args: &CpArgs) -> Result<ControlPlane, Failure> {
    let mut cfg = ControlPlaneConfig::default();
    if let Some(d) = args.data.clone().or(file.data.clone()) {
        cfg.data_dir = d;
    }
    if let Some(a) = args.admin.or(file.admin) {
        cfg.admin_addr = a;
    }
    if let Some(a) = args.link.or(file.link) {
        cfg.link_addr = a;
    }
    cfg.admin_key =
        std::env::var("HERALD_ADMIN_KEY").ok().filter(|k| !k.is_empty()).or(file.admin_key.clone());
    if let Some(t) = file.default_ttl_secs {
        cfg.default_ttl_secs = t;
    }
    if let Some(t) = file.credential_ttl_secs {
        cfg.credential_ttl_secs = t;
    }
    if let Some(b) = file.max_inbox_bytes_per_user {
        cfg.max_inbox_bytes_per_user = b;
    }
    if let Some(b) = file.max_stored_bytes {
        cfg.max_stored_bytes = b;
    }
    if let Some(t) = file.fire_and_forget_record_retention_secs {
        cfg.fire_and_forget_record_retention_secs = t;
    }
    if let Some(b) = file.max_push_record_bytes {
        cfg.max_push_record_bytes = b;
    }
    if let Some(b) = file.link_queue_bytes {
        cfg.link_queue_bytes = b;
    }
    if let Some(b) = file.commit_queue_bytes {
        cfg.commit_queue_bytes = b;
    }
    let cp = herald_control_plane::start(cfg).map_err(|e| anyhow::anyhow!("control plane: {e}"))?;
    if let Some(key) = cp.generated_admin_key() {
        println!("herald: generated admin key (stored in the data dir, shown once): {key}");
    }
    println!("herald: admin API on http://{}", cp.admin_addr());
    println!("herald: link for gateways on {}", cp.link_addr());
    Ok(cp)
}

/// `dev_cert_dir`: where `herald serve` keeps a development certificate for QUIC when none is
/// configured (`herald gateway` requires one).
fn start_gateway(
    file: &FileConfig,
    args: &GwArgs,
    control_plane: SocketAddr,
    dev_cert_dir: Option<&std::path::Path>,
) -> Result<Gateway, Failure> {
    let mut cfg = GatewayConfig { control_plane_addr: control_plane, ..GatewayConfig::default() };
    if let Some(a) = args.tcp.or(file.tcp) {
        cfg.tcp_addr = a;
    }
    cfg.metrics_addr = args.metrics.or(file.metrics).or(cfg.metrics_addr);
    cfg.mqtt_addr = match args.mqtt.or(file.mqtt) {
        Some(Listen::At(a)) => Some(a),
        Some(Listen::Off) => None,
        // `herald serve` listens on MQTT's port unless told not to; a port someone else holds
        // (another broker) only turns the default off.
        None if dev_cert_dir.is_some() => default_mqtt(),
        None => None,
    };
    cfg.mqtt_allow_publish = args.mqtt_allow_publish || file.mqtt_allow_publish.unwrap_or(false);
    cfg.quic_addr = args.quic.or(file.quic);
    cfg.quic_cert = args.quic_cert.clone().or(file.quic_cert.clone());
    cfg.quic_key = args.quic_key.clone().or(file.quic_key.clone());
    if cfg.quic_addr.is_some() {
        match (&cfg.quic_cert, &cfg.quic_key, dev_cert_dir) {
            (Some(_), Some(_), _) => {}
            (None, None, Some(dir)) => {
                let (cert, key, made) = herald_gateway::quic_dev_certificate(dir)
                    .map_err(|e| anyhow::anyhow!("quic development certificate: {e}"))?;
                let verb = if made { "generated" } else { "using" };
                println!(
                    "herald: {verb} a self-signed development certificate for QUIC: {} \
                     (terminals: --ca {} or --insecure-dev-cert; configure quic_cert/quic_key for production)",
                    cert.display(),
                    cert.display()
                );
                cfg.quic_cert = Some(cert);
                cfg.quic_key = Some(key);
            }
            _ => {
                return Err(usage(
                    "--quic needs both --quic-cert and --quic-key (gateway.quic_cert/quic_key)",
                ));
            }
        }
    }
    cfg.node_id = args.node_id.clone().or(file.node_id.clone()).unwrap_or_else(default_node_id);
    if let Some(c) = args.cores.or(file.cores) {
        cfg.cores = if c == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { c };
    }
    if let Some(d) = args.driver.clone().or(file.driver.clone()) {
        cfg.driver = match d.as_str() {
            "auto" => Driver::Auto,
            "uring" => Driver::Uring,
            "epoll" => Driver::Epoll,
            other => return Err(usage(format!("driver {other:?} is not one of auto, uring, epoll"))),
        };
    }
    if let Some(h) = args.heartbeat_interval_secs.or(file.heartbeat_interval_secs) {
        if h == 0 {
            return Err(usage("heartbeat_interval_secs must be at least 1"));
        }
        cfg.heartbeat_interval_secs = h;
    }
    if let Some(g) = file.heartbeat_grace_secs {
        cfg.heartbeat_grace_secs = g;
    }
    if let Some(t) = args.login_timeout_ms.or(file.login_timeout_ms) {
        cfg.login_timeout_ms = t;
    }
    if let Some(m) = file.max_frame_bytes {
        cfg.max_frame_bytes = m;
    }
    if let Some(q) = file.outbound_queue_frames {
        cfg.outbound_queue_frames = q;
    }
    if let Some(d) = file.drain_timeout_ms {
        cfg.drain_timeout_ms = d;
    }
    let gw = herald_gateway::start(cfg).map_err(|e| anyhow::anyhow!("gateway: {e}"))?;
    // Logins are refused (OVERLOADED) until the control plane's tables arrive; announce the
    // gateway once it can serve, or say that it is still waiting.
    let ready_by = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gw.tables_version() == 0 && std::time::Instant::now() < ready_by {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if gw.tables_version() == 0 {
        tracing::warn!(%control_plane, "no tables from the control plane yet; logins wait for them");
    }
    println!("herald: gateway on tcp://{} ({:?} driver)", gw.tcp_addr(), gw.driver());
    if let Some(q) = gw.quic_addr() {
        println!("herald: quic on udp://{q}");
    }
    if let Some(m) = gw.mqtt_addr() {
        println!("herald: mqtt on tcp://{m}");
    }
    if let Some(m) = gw.metrics_addr() {
        println!("herald: metrics on http://{m}/metrics");
    }
    Ok(gw)
}

/// MQTT's registered port on every interface, if it is free.
fn default_mqtt() -> Option<SocketAddr> {
    let addr = SocketAddr::from(([0, 0, 0, 0], DEFAULT_MQTT_PORT));
    match std::net::TcpListener::bind(addr) {
        Ok(_probe) => Some(addr),
        Err(e) => {
            eprintln!(
                "herald: MQTT listener off: cannot listen on {addr} ({e}); pass --mqtt ADDR to choose another"
            );
            None
        }
    }
}

const DEFAULT_MQTT_PORT: u16 = 1883;

/// A listener's address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listen {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Listen, String> {
        if s == "off" {
            return Ok(Listen::Off);
        }
        s.parse()
            .map(Listen::At)
            .map_err(|_| format!("{s:?} is not an address like \"0.0.0.0:1883\" or `off`"))
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_signal() -> Result<(), Failure> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(anyhow::Error::from)?;
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "draining");
    }
    Ok(())
}

fn drain(gw: Gateway) -> Result<(), Failure> {
    gw.shutdown();
    gw.join().map_err(|e| anyhow::anyhow!("gateway: {e}"))?;
    Ok(())
}
