//! Command line of the `herald` binary. Flags override the config file, which overrides the
//! defaults; every flag has a key of the same name in `herald.example.toml`.

mod config;
mod fds;
mod listen;
mod quic_client;

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use herald_control_plane::{ControlPlane, ControlPlaneConfig};
use herald_gateway::{Driver, Gateway, GatewayConfig};

use config::FileConfig;

/// Exit code for bad arguments or configuration (EX_USAGE).
pub(crate) const EXIT_USAGE: u8 = 64;
/// Exit code for a store file that is empty, damaged or undecodable (EX_DATAERR): refused
/// rather than replaced; restore it or move it away.
pub(crate) const EXIT_DATAERR: u8 = 65;
/// Exit code for a store that cannot be created, opened or read for a system reason: disk,
/// permissions, already open (EX_IOERR).
pub(crate) const EXIT_IOERR: u8 = 74;

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
    /// Most TCP terminal connections at once [default: what the open-file limit leaves after a
    /// reserve for the API, store, link and metrics].
    #[arg(long)]
    max_connections: Option<usize>,
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
        Err(Failure::Exit(code, e)) => {
            eprintln!("herald: {e:#}");
            ExitCode::from(code)
        }
    }
}

enum Failure {
    Usage(Usage),
    Runtime(anyhow::Error),
    /// A failure with its own exit code (sysexits).
    Exit(u8, anyhow::Error),
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
            configured_admin_key(std::env::var("HERALD_ADMIN_KEY").ok(), file.admin_key.as_deref())?;
            println!("configuration is valid");
            Ok(())
        }
        Mode::Listen(args) => listen::run(args).map_err(Failure::Runtime),
        Mode::ControlPlane { cp } => {
            raise_fd_limit();
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
            let fds = raise_fd_limit();
            let gw = start_gateway(&file, &gw, addr, None, fds, 0)?;
            wait_for_signal()?;
            drain(gw)
        }
        Mode::Serve { cp, gw } => {
            let mut cp_args = cp;
            // All-in-one: the link stays on loopback, on any free port unless configured.
            if cp_args.link.is_none() && file.link.is_none() {
                cp_args.link = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            }
            let fds = raise_fd_limit();
            let cp = start_control_plane(&file, &cp_args)?;
            let data = cp_args
                .data
                .clone()
                .or(file.data.clone())
                .unwrap_or_else(|| ControlPlaneConfig::default().data_dir);
            let admin_connections =
                file.admin_max_connections.unwrap_or(ControlPlaneConfig::default().admin_max_connections);
            let gw = start_gateway(&file, &gw, cp.link_addr(), Some(&data), fds, admin_connections)?;
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
        .with_ansi(log_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref()))
        .try_init();
}

/// Colour codes only for a person at a terminal: a log file or a pipe into a collector would
/// keep the raw `ESC[` sequences. `NO_COLOR` set to anything non-empty turns colour off too
/// (<https://no-color.org>).
fn log_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Shortest admin key accepted from the config file or `HERALD_ADMIN_KEY`. The key guards
/// every admin route (minting credentials included); 32 characters of a random alphabet are
/// beyond guessing, and the generated key is 43.
pub(crate) const MIN_ADMIN_KEY_CHARS: usize = 32;

/// The admin key the operator chose (the environment wins over the file), refused if short;
/// `None`: the control plane reads or generates `<data>/admin.key`.
fn configured_admin_key(env: Option<String>, file: Option<&str>) -> Result<Option<String>, Failure> {
    let (key, from) = match env.filter(|k| !k.is_empty()) {
        Some(k) => (k, "HERALD_ADMIN_KEY"),
        None => match file {
            Some(k) => (k.to_owned(), "control_plane.admin_key"),
            None => return Ok(None),
        },
    };
    let chars = key.trim().chars().count();
    if chars < MIN_ADMIN_KEY_CHARS {
        return Err(usage(format!(
            "{from} is {chars} characters; an admin key needs at least {MIN_ADMIN_KEY_CHARS} \
             (unset it to have one generated into the data dir)"
        )));
    }
    Ok(Some(key))
}

/// Checks a side's link heartbeat and deadline: a deadline not above the heartbeat would drop
/// a healthy idle link.
fn link_liveness(section: &str, heartbeat_secs: u64, dead_after_secs: u64) -> Result<(u64, u64), Failure> {
    if heartbeat_secs == 0 || dead_after_secs <= heartbeat_secs {
        return Err(usage(format!(
            "{section}.link_dead_after_secs ({dead_after_secs}) must be above {section}.link_heartbeat_secs ({heartbeat_secs}), which must be at least 1"
        )));
    }
    Ok((heartbeat_secs, dead_after_secs))
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
    cfg.admin_key = configured_admin_key(std::env::var("HERALD_ADMIN_KEY").ok(), file.admin_key.as_deref())?;
    if let Some(t) = file.default_ttl_secs {
        cfg.default_ttl_secs = t;
    }
    if let Some(t) = file.credential_ttl_secs {
        cfg.credential_ttl_secs = t;
    }
    if let Some(t) = file.admin_header_timeout_secs {
        cfg.admin_header_timeout_secs = t;
    }
    if let Some(t) = file.admin_body_timeout_secs {
        cfg.admin_body_timeout_secs = t;
    }
    if let Some(n) = file.admin_max_connections {
        cfg.admin_max_connections = n;
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
    (cfg.link_heartbeat_secs, cfg.link_dead_after_secs) = link_liveness(
        "control_plane",
        file.cp_link_heartbeat_secs.unwrap_or(cfg.link_heartbeat_secs),
        file.cp_link_dead_after_secs.unwrap_or(cfg.link_dead_after_secs),
    )?;
    let cp = herald_control_plane::start(cfg).map_err(|e| {
        let code = match &e {
            herald_control_plane::Error::Store(s) if s.is_data_error() => Some(EXIT_DATAERR),
            herald_control_plane::Error::Store(_) => Some(EXIT_IOERR),
            _ => None,
        };
        let e = anyhow::anyhow!("control plane: {e}");
        match code {
            Some(code) => Failure::Exit(code, e),
            None => Failure::Runtime(e),
        }
    })?;
    if let Some(key) = cp.generated_admin_key() {
        println!("herald: generated admin key (stored in the data dir, shown once): {key}");
    }
    println!("herald: admin API on http://{}", cp.admin_addr());
    println!("herald: link for gateways on {}", cp.link_addr());
    Ok(cp)
}

/// Raises the open-file soft limit to the hard one and says so; returns the soft limit now.
fn raise_fd_limit() -> Option<u64> {
    match fds::raise_soft_limit() {
        Ok(l) => {
            if l.soft > l.before {
                tracing::info!(from = l.before, to = l.soft, hard = l.hard, "raised the open file limit");
            }
            Some(l.soft)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open file limit; terminal connections are not capped");
            None
        }
    }
}

/// `dev_cert_dir`: where `herald serve` keeps a development certificate for QUIC when none is
/// configured (`herald gateway` requires one). `fd_limit`: the open-file soft limit, and
/// `admin_connections` the admin API connections this process may also hold (0 without a
/// control plane), from which the terminal connection cap is derived (`fds.rs`).
fn start_gateway(
    file: &FileConfig,
    args: &GwArgs,
    control_plane: SocketAddr,
    dev_cert_dir: Option<&std::path::Path>,
    fd_limit: Option<u64>,
    admin_connections: usize,
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
    if let Some(q) = file.outbound_queue_bytes {
        cfg.outbound_queue_bytes = q;
    }
    if let Some(q) = file.outbound_queue_frames {
        cfg.outbound_queue_frames = q;
    }
    if let Some(d) = file.drain_timeout_ms {
        cfg.drain_timeout_ms = d;
    }
    let configured = args.max_connections.or(file.max_connections);
    if let Some(soft) = fd_limit {
        let cores = if cfg.cores == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.cores
        };
        let reserve = fds::reserve(cores, admin_connections);
        cfg.max_connections = match fds::terminal_cap(soft, reserve, configured) {
            Some(Ok(cap)) => cap,
            Some(Err(cap)) => {
                tracing::warn!(
                    configured = configured.unwrap_or_default(),
                    cap,
                    open_file_limit = soft,
                    reserve,
                    "max_connections is over what the open file limit allows; lowered"
                );
                cap
            }
            None => {
                return Err(usage(format!(
                    "the open file limit ({soft}) leaves fewer than {} descriptors for terminals after \
                     the {reserve} kept for the API, store, link and metrics; raise it (ulimit -n, LimitNOFILE=)",
                    fds::MIN_TERMINALS
                )));
            }
        };
        tracing::info!(
            max_connections = cfg.max_connections,
            open_file_limit = soft,
            reserve,
            "terminal connection cap"
        );
    } else if let Some(c) = configured {
        cfg.max_connections = c;
    }
    (cfg.link_heartbeat_secs, cfg.link_dead_after_secs) = link_liveness(
        "gateway",
        file.link_heartbeat_secs.unwrap_or(cfg.link_heartbeat_secs),
        file.link_dead_after_secs.unwrap_or(cfg.link_dead_after_secs),
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_admin_key_is_refused_from_the_environment_or_the_file() {
        let short = "x".repeat(MIN_ADMIN_KEY_CHARS - 1);
        let long = "k".repeat(MIN_ADMIN_KEY_CHARS);
        for (env, file, from) in [
            (Some(short.clone()), None, "HERALD_ADMIN_KEY"),
            (None, Some(short.as_str()), "control_plane.admin_key"),
            // The environment wins, so its short key is refused even beside a good file key.
            (Some(short.clone()), Some(long.as_str()), "HERALD_ADMIN_KEY"),
        ] {
            match configured_admin_key(env, file) {
                Err(Failure::Usage(Usage(msg))) => assert!(msg.contains(from), "{msg}"),
                _ => panic!("a {}-character key from {from} was accepted", MIN_ADMIN_KEY_CHARS - 1),
            }
        }
        assert!(matches!(configured_admin_key(Some(long.clone()), None), Ok(Some(k)) if k == long));
        assert!(matches!(configured_admin_key(Some(String::new()), Some(&long)), Ok(Some(k)) if k == long));
        assert!(matches!(configured_admin_key(None, None), Ok(None)));
    }

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(log_colour(true, None));
        assert!(log_colour(true, Some(OsStr::new(""))));
        assert!(!log_colour(true, Some(OsStr::new("1"))));
        assert!(!log_colour(false, None));
    }
}
