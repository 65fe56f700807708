//! Herald's gateway: the thread-per-core TCP front (Herald protocol, and MQTT 3.1.1/5.0 when
//! [`GatewayConfig::mqtt_addr`] is set) that holds terminal connections, verifies
//! their credentials locally, keeps per-core subscriber indexes and fans pushes out; plus its link
//! to the control plane. It does not store messages, own tables or decide who a push is for
//! beyond matching the targets the control plane sends (that is `herald-control-plane`), and it
//! does not parse config or install a logger (that is the `herald` binary).
//!
//! # Using it
//! ```no_run
//! # fn main() -> Result<(), herald_gateway::GatewayError> {
//! let gw = herald_gateway::start(herald_gateway::GatewayConfig::default())?;
//! println!("terminals connect to {}", gw.tcp_addr());
//! herald_gateway::install_signal_drain(&gw)?; // SIGTERM/SIGINT → gw.shutdown()
//! gw.join()?;
//! # Ok(()) }
//! ```
//! [`start`] binds every core's `SO_REUSEPORT` listener (resolving port 0 once for all cores)
//! before it returns, then runs one named thread `herald-core-{n}` per core with its own monoio
//! runtime (io_uring, or the epoll driver: see [`Driver`]), one `herald-link` thread that keeps
//! the connection to the control plane (reconnecting with backoff and resyncing presence), and
//! `herald-metrics` serving Prometheus text when [`GatewayConfig::metrics_addr`] is set.
//! [`Gateway::shutdown`] starts a graceful drain; [`Gateway::join`] waits for it.
//!
//! # Policies
//! - **Login**: a connection must send a valid LOGIN within `login_timeout_ms` (`LOGIN_TIMEOUT`).
//!   The credential is verified against the current tables snapshot (keys, revocations); refusals
//!   close with the credential error's code, `DEVICE_MISMATCH`, `UNSUPPORTED_VERSION`, or
//!   `OVERLOADED` while no tables have arrived yet. A newer login of the same (user, device), on
//!   any core, replaces older ones: they get GOAWAY `REPLACED` and are closed.
//! - **Heartbeats**: any frame counts; a logged-in connection silent for `heartbeat_grace_secs`
//!   is closed with `HEARTBEAT_TIMEOUT` and reported offline.
//! - **Backpressure**: each connection queues at most `outbound_queue_frames` push frames and
//!   `outbound_queue_bytes` bytes beyond what its socket takes. When full, the oldest queued
//!   frame without `ACK_REQUIRED` is
//!   dropped; if the new frame has no `ACK_REQUIRED` and all queued frames do, the new one is
//!   dropped; if both are persistent, the connection is closed with `SLOW_CONSUMER`. Each case is
//!   counted (`herald_drops_total`, `herald_closes_total`) and reported per push (`dropped`).
//!   Replies count too: a PONG (MQTT PINGRESP) replaces a waiting one, any other reply (SUBACK,
//!   PUBACK, ...) must fit or the connection is closed `SLOW_CONSUMER`
//!   (`herald_reply_overflows_total`). A connection whose socket is full is not read until it
//!   drains (`herald_input_paused_total`): a peer that sends without reading fills its own
//!   socket, not the gateway's memory.
//! - **Hostile bytes**: a frame that does not decode, or is not allowed in the connection's
//!   state, closes that connection only, with the decoder's close code.
//! - **Drain**: stop accepting, GOAWAY `SHUTTING_DOWN` with `drain_reconnect_after_ms`, flush for
//!   up to `drain_timeout_ms`, close; the link reports the offlines, then every thread exits.
//!
//! The `all-in-one` feature (default) only serves the `herald` binary, which also embeds the
//! control plane; `--no-default-features` builds the gateway library alone.
//!
//! # Layout
//! - `worker`: one core's world: accept loop, connections (slab), login, heartbeats (each
//!   connection's `herald_protocol::server::Liveness`, due times in a heap swept by one timer
//!   per core), subscriber index, fan-out and outbound queues. A TCP connection is no task:
//!   its slab slot owns the socket, registered in the core's one epoll instance, and one
//!   readiness task per core reads every ready connection. An idle logged-in connection costs
//!   its slot, its index entries, a deadline entry and its strings (~590 B of RSS at 15,000
//!   connections, against ~985 B with a task, a readiness future and an `Rc<TcpStream>` each).
//!   Its `worker::mqtt` turns MQTT packets into the same session calls.
//! - `quic`: the QUIC listener (ALPN `herald/1`, [`GatewayConfig::quic_addr`]): one
//!   `quinn-proto` endpoint per core on its own `SO_REUSEPORT` UDP socket, connection IDs that
//!   name their core (datagrams that land on another core are forwarded to it), TLS and the
//!   development certificate ([`quic_dev_certificate`]). Sessions are the same as over TCP.
//! - `mqtt`: the MQTT adapter's policies (topics, QoS, payload, sessions, reason codes), and the
//!   PUBLISH form of a push, prepared once per node by the link thread.
//! - `index`: a core's `user / topic / group → local connections` index (names interned per
//!   core, users hold `u32` ids).
//! - `outbound`: a connection's bounded outbound queue, coalesced into one `writev`.
//! - `link`: the control-plane client: tables, subscriptions, pushes and kicks down; presence,
//!   receipts and push reports up, batched and split under the frame limit; heartbeats with a
//!   deadline both ways; after a reconnect it asks the cores for their live sessions to resync
//!   presence.
//! - `receipts`: a core's terminal acks, coalesced per (device, stream) and bounded, handed to
//!   the link on a bounded channel.
//! - `tables`: immutable snapshots of keys, revocations and group → topics, swapped atomically.
//! - `mailbox`: the per-core queue other threads use to reach a core (pushes bounded in bytes).
//! - `metrics`: per-core single-writer counters and the HTTP endpoint.

mod index;
mod intern;
mod link;
mod mailbox;
mod metrics;
mod mqtt;
mod outbound;
mod quic;
mod receipts;
mod scrape;
#[doc(hidden)]
pub use quic::hostile as quic_hostile;
mod tables;
mod worker;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::mailbox::MailboxSender;
use crate::worker::CoreCmd;

pub use quic::{ALPN as QUIC_ALPN, TlsError, dev_certificate as quic_dev_certificate};

/// Which monoio driver the cores run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    /// io_uring when the kernel (and seccomp) allow it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring; [`start`] fails if it is unavailable.
    Uring,
    /// The legacy epoll driver.
    Epoll,
}

impl Driver {
    /// The driver `Auto` resolves to on this machine (probes `io_uring_setup`).
    pub fn detect() -> Driver {
        if monoio::utils::detect_uring() { Driver::Uring } else { Driver::Epoll }
    }

    pub fn label(self) -> &'static str {
        match self {
            Driver::Auto => "auto",
            Driver::Uring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// Everything a gateway node needs. Units are in the field names.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where terminals connect (port 0: any free port, see [`Gateway::tcp_addr`]).
    pub tcp_addr: SocketAddr,
    /// Prometheus text endpoint; `None` serves none.
    pub metrics_addr: Option<SocketAddr>,
    /// The control plane's link listener.
    pub control_plane_addr: SocketAddr,
    /// Stable name of this node among the control plane's nodes.
    pub node_id: String,
    /// Core threads (0 = one per available CPU).
    pub cores: usize,
    pub driver: Driver,
    /// A new connection that has not logged in by then is closed with `LOGIN_TIMEOUT`.
    pub login_timeout_ms: u64,
    /// Heartbeat interval told to terminals at login.
    pub heartbeat_interval_secs: u16,
    /// A logged-in connection silent for this long is closed with `HEARTBEAT_TIMEOUT`.
    pub heartbeat_grace_secs: u32,
    /// Largest frame accepted from a terminal, prefix included.
    pub max_frame_bytes: usize,
    /// Frames a connection's outbound queue holds before the slow-consumer policy applies.
    pub outbound_queue_frames: usize,
    /// Bytes a connection's outbound queue holds (pushes and replies alike) before the
    /// slow-consumer policy applies; a frame alone in the queue is always taken.
    pub outbound_queue_bytes: usize,
    /// How long a drain waits for outbound queues to flush before closing anyway.
    pub drain_timeout_ms: u64,
    /// Reconnect hint sent in GOAWAY on drain.
    pub drain_reconnect_after_ms: u32,
    /// Where QUIC terminals connect (UDP; port 0: any free port, see [`Gateway::quic_addr`]);
    /// `None` (the default) serves no QUIC. Needs `quic_cert` and `quic_key`.
    pub quic_addr: Option<SocketAddr>,
    /// PEM certificate chain the QUIC listener presents (ALPN `herald/1`).
    pub quic_cert: Option<PathBuf>,
    /// PEM private key of `quic_cert`.
    pub quic_key: Option<PathBuf>,
    /// Where MQTT 3.1.1/5.0 terminals connect (port 0: any free port, see
    /// [`Gateway::mqtt_addr`]); `None` (the default) serves no MQTT.
    pub mqtt_addr: Option<SocketAddr>,
    /// Whether MQTT terminals may PUBLISH: when true a PUBLISH is acknowledged and dropped (Herald
    /// takes pushes from the admin API only); when false (the default) it is refused.
    pub mqtt_allow_publish: bool,
    /// Most TCP terminal connections (Herald and MQTT) held at once; each core holds at most its
    /// share (rounded up) and closes connections over it at once (Herald: CLOSE `OVERLOADED`),
    /// counted in `herald_connections_refused_total`. Every connection is a file descriptor:
    /// the binary sets this below the process's descriptor limit, keeping a reserve for the
    /// admin API, the store, the link and the metrics endpoint. QUIC connections share the
    /// core's UDP socket and are not counted. Default: no cap.
    pub max_connections: usize,
    /// The link writes a heartbeat when it has written nothing for this long (also the TCP
    /// keepalive idle time and probe interval).
    pub link_heartbeat_secs: u64,
    /// The link is dropped (and reconnected, resynced) when the control plane has sent nothing,
    /// or not read, for this long. Keep it a few heartbeats.
    pub link_dead_after_secs: u64,
}

impl GatewayConfig {
    pub(crate) fn link_heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.link_heartbeat_secs.max(1))
    }

    pub(crate) fn link_dead_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.link_dead_after_secs.max(1))
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            tcp_addr: SocketAddr::from(([0, 0, 0, 0], 7400)),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9400))),
            control_plane_addr: SocketAddr::from(([127, 0, 0, 1], 7500)),
            node_id: String::from("gateway-1"),
            cores: 0,
            driver: Driver::Auto,
            login_timeout_ms: 5_000,
            heartbeat_interval_secs: 240,
            heartbeat_grace_secs: 600,
            max_frame_bytes: herald_protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            outbound_queue_frames: 256,
            outbound_queue_bytes: 4 << 20,
            drain_timeout_ms: 5_000,
            drain_reconnect_after_ms: 1_000,
            quic_addr: None,
            quic_cert: None,
            quic_key: None,
            mqtt_addr: None,
            mqtt_allow_publish: false,
            max_connections: usize::MAX,
            link_heartbeat_secs: 5,
            link_dead_after_secs: 15,
        }
    }
}

/// Most connections the metrics endpoint serves at once (each is a file descriptor).
pub const MAX_METRICS_CONNECTIONS: usize = scrape::MAX_SCRAPES;

/// Why the gateway could not start or stopped badly. Every variant is a local fault (bad config
/// or an OS refusal): terminals and the control plane cannot cause one.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A listener could not be bound (address in use, permission).
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// `Driver::Uring` was asked for and the kernel refuses io_uring.
    #[error("io_uring is not available here; use the epoll driver")]
    UringUnavailable,
    /// A thread or a runtime could not be created.
    #[error("cannot start {what}: {source}")]
    Spawn { what: &'static str, source: std::io::Error },
    /// The QUIC listener's certificate or key is missing or unusable.
    #[error("quic: {0}")]
    Tls(#[from] TlsError),
    /// `quic_addr` is set without `quic_cert` and `quic_key`.
    #[error("quic_addr needs quic_cert and quic_key")]
    QuicCertMissing,
    /// A gateway thread panicked.
    #[error("thread {0} panicked")]
    Panicked(String),
}

/// What the threads of one node share. Written rarely, read by every core.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) config: GatewayConfig,
    pub(crate) driver: Driver,
    pub(crate) tcp_addr: SocketAddr,
    pub(crate) quic_addr: Option<SocketAddr>,
    pub(crate) quic: Option<quic::QuicShared>,
    pub(crate) mqtt_addr: Option<SocketAddr>,
    /// Stream id → MQTT topic, learned by the link thread from live pushes (backlog pushes name
    /// only their stream). Touched by the link reader only, never by a core.
    pub(crate) stream_topics: parking_lot::Mutex<std::collections::HashMap<u32, mqtt::StreamTopic>>,
    pub(crate) tables: tables::SharedTables,
    pub(crate) metrics: Arc<metrics::Registry>,
    pub(crate) cores: Vec<MailboxSender<CoreCmd>>,
    pub(crate) upstream: crossbeam_channel::Sender<link::Upstream>,
    /// Terminals' messages sent to the link thread and not yet written or answered (see
    /// [`link::MAX_QUEUED_PUBLISHES`]).
    pub(crate) publishes_queued: AtomicUsize,
    session_seq: AtomicU64,
    pub(crate) stopping: AtomicBool,
    /// Core threads not yet finished (the link thread outlives them to report their offlines).
    pub(crate) cores_running: AtomicUsize,
}

impl Node {
    /// A session id unique on this node and, with high probability, across its restarts.
    pub(crate) fn next_session_id(&self) -> u64 {
        self.session_seq.fetch_add(1, Ordering::Relaxed)
    }
}

/// A running gateway node. Dropping it does not stop it: call [`Gateway::shutdown`] then
/// [`Gateway::join`].
#[derive(Debug)]
pub struct Gateway {
    node: Arc<Node>,
    metrics_addr: Option<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    link_thread: Option<JoinHandle<()>>,
    metrics_thread: Option<JoinHandle<()>>,
    metrics_stop: Arc<AtomicBool>,
}

impl Gateway {
    /// The address terminals connect to (port resolved).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.node.tcp_addr
    }

    /// The QUIC listener's UDP address (port resolved), if [`GatewayConfig::quic_addr`] was set.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.node.quic_addr
    }

    /// QUIC datagrams this node's cores passed to the core owning their connection (after a
    /// client's address changed). Tests and benchmarks read it.
    pub fn quic_forwarded(&self) -> u64 {
        self.node.metrics.sum(|m| m.quic_forwarded.get())
    }

    /// The MQTT listener's address (port resolved), if [`GatewayConfig::mqtt_addr`] was set.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.node.mqtt_addr
    }

    /// The metrics endpoint (port resolved), if one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The driver the cores run (never `Auto`).
    pub fn driver(&self) -> Driver {
        self.node.driver
    }

    /// Version of the tables snapshot in use; 0 until the control plane sent its tables (logins
    /// are refused with `OVERLOADED` until then). Tests wait on it.
    pub fn tables_version(&self) -> u64 {
        self.node.tables.load().version
    }

    /// Whether the link to the control plane is up (the control plane answered `Welcome`).
    pub fn link_connected(&self) -> bool {
        self.node.metrics.link_connected.load(Ordering::Relaxed) == 1
    }

    /// Open terminal connections, all cores.
    pub fn connections(&self) -> u64 {
        self.node.metrics.sum(|m| m.connections.get())
    }

    /// The Prometheus text the metrics endpoint serves.
    pub fn metrics_text(&self) -> String {
        self.node.metrics.render()
    }

    /// Begins a graceful drain: every core stops accepting, sends GOAWAY (`SHUTTING_DOWN`, with
    /// the reconnect hint) to each connection, flushes and closes. Returns at once; idempotent.
    pub fn shutdown(&self) {
        self.node.begin_shutdown();
    }

    /// A handle that can start the drain from another thread (e.g. a signal handler thread).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.node.clone())
    }

    /// Waits until the drain has finished and every thread of the node has exited.
    pub fn join(mut self) -> Result<(), GatewayError> {
        let mut failed = None;
        for t in self.threads.drain(..).chain(self.link_thread.take()) {
            let name = t.thread().name().unwrap_or("herald").to_owned();
            if t.join().is_err() {
                failed = Some(name);
            }
        }
        self.metrics_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.metrics_thread.take() {
            let _ = t.join();
        }
        failed.map_or(Ok(()), |n| Err(GatewayError::Panicked(n)))
    }
}

/// Starts a node's drain from any thread. See [`Gateway::shutdown`].
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<Node>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.begin_shutdown();
    }
}

impl Node {
    fn begin_shutdown(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!("drain started");
        for c in &self.cores {
            c.send(CoreCmd::Drain);
        }
    }
}

/// Starts a drain when the process receives SIGTERM or SIGINT (a `herald-signals` thread).
pub fn install_signal_drain(gateway: &Gateway) -> Result<(), GatewayError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|source| GatewayError::Spawn { what: "signal handler", source })?;
    let handle = gateway.shutdown_handle();
    std::thread::Builder::new()
        .name("herald-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "signal received");
                handle.shutdown();
            }
        })
        .map_err(|source| GatewayError::Spawn { what: "signal thread", source })?;
    Ok(())
}

fn bind_reuseport(addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| GatewayError::Bind { addr, source };
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_reuse_port(true).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(4096).map_err(err)?;
    Ok(s.into())
}

/// Starts a gateway node: binds every listener, then starts the cores, the link and the metrics
/// server. Returns once the listeners are bound (terminals may connect at once; logins are
/// refused with `OVERLOADED` until the control plane has sent its tables).
pub fn start(config: GatewayConfig) -> Result<Gateway, GatewayError> {
    let driver = match config.driver {
        Driver::Auto => Driver::detect(),
        Driver::Uring if !monoio::utils::detect_uring() => return Err(GatewayError::UringUnavailable),
        d => d,
    };
    let cores = if config.cores == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.cores
    };
    let first = bind_reuseport(config.tcp_addr)?;
    let tcp_addr =
        first.local_addr().map_err(|source| GatewayError::Bind { addr: config.tcp_addr, source })?;
    let mut listeners = vec![first];
    for _ in 1..cores {
        listeners.push(bind_reuseport(tcp_addr)?);
    }
    let mut quic_sockets: Vec<Option<std::net::UdpSocket>> = (0..cores).map(|_| None).collect();
    let (quic_addr, quic) = match config.quic_addr {
        Some(want) => {
            let (Some(cert), Some(key)) = (&config.quic_cert, &config.quic_key) else {
                return Err(GatewayError::QuicCertMissing);
            };
            let idle = std::time::Duration::from_secs(u64::from(config.heartbeat_grace_secs));
            let shared = quic::QuicShared::new(cert, key, idle)?;
            let (addr, sockets) = quic::bind(want, cores)?;
            quic_sockets = sockets.into_iter().map(Some).collect();
            (Some(addr), Some(shared))
        }
        None => (None, None),
    };
    let mut mqtt_listeners: Vec<Option<TcpListener>> = (0..cores).map(|_| None).collect();
    let mut mqtt_addr = None;
    if let Some(want) = config.mqtt_addr {
        let first = bind_reuseport(want)?;
        let addr = first.local_addr().map_err(|source| GatewayError::Bind { addr: want, source })?;
        mqtt_listeners[0] = Some(first);
        for l in mqtt_listeners.iter_mut().skip(1) {
            *l = Some(bind_reuseport(addr)?);
        }
        mqtt_addr = Some(addr);
    }
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(TcpListener::bind(addr).map_err(|source| GatewayError::Bind { addr, source })?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    tracing::info!(driver = driver.label(), cores, %tcp_addr, ?mqtt_addr, ?quic_addr, "gateway starting");

    // Bounded: cores coalesce receipts and keep them when it is full (see `receipts.rs`);
    // presence, reports and terminal messages wait for room, which the link thread makes
    // without blocking longer than `link_dead_after_secs` on a write.
    let (up_tx, up_rx) = crossbeam_channel::bounded(link::UPSTREAM_EVENTS);
    let mut senders = Vec::with_capacity(cores);
    let mut boxes = Vec::with_capacity(cores);
    for _ in 0..cores {
        let (tx, rx) = mailbox::mailbox();
        senders.push(tx);
        boxes.push(rx);
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let node = Arc::new(Node {
        config,
        driver,
        tcp_addr,
        quic_addr,
        quic,
        mqtt_addr,
        stream_topics: parking_lot::Mutex::default(),
        tables: tables::SharedTables::default(),
        metrics: Arc::new(metrics::Registry::new(cores)),
        cores: senders,
        upstream: up_tx,
        publishes_queued: AtomicUsize::new(0),
        session_seq: AtomicU64::new(now_ms << 16),
        stopping: AtomicBool::new(false),
        cores_running: AtomicUsize::new(cores),
    });

    let mut threads = Vec::with_capacity(cores);
    let listeners = listeners.into_iter().zip(mqtt_listeners).zip(quic_sockets);
    for (n, (((listener, mqtt), quic), inbox)) in listeners.zip(boxes).enumerate() {
        let node = node.clone();
        let t = std::thread::Builder::new()
            .name(format!("herald-core-{n}"))
            .spawn(move || worker::run(n, node, worker::Listeners { herald: listener, mqtt, quic }, inbox))
            .map_err(|source| GatewayError::Spawn { what: "core thread", source })?;
        threads.push(t);
    }
    let link_node = node.clone();
    let link_thread = std::thread::Builder::new()
        .name("herald-link".into())
        .spawn(move || link::run(link_node, up_rx))
        .map_err(|source| GatewayError::Spawn { what: "link thread", source })?;
    let metrics_stop = Arc::new(AtomicBool::new(false));
    let metrics_thread = match metrics_listener {
        Some(l) => {
            let (reg, stop) = (node.metrics.clone(), metrics_stop.clone());
            Some(
                std::thread::Builder::new()
                    .name("herald-metrics".into())
                    .spawn(move || scrape::serve(l, reg, stop))
                    .map_err(|source| GatewayError::Spawn { what: "metrics thread", source })?,
            )
        }
        None => None,
    };
    Ok(Gateway { node, metrics_addr, threads, link_thread: Some(link_thread), metrics_thread, metrics_stop })
}
