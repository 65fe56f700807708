//! Herald's control plane: the admin HTTP API, credentials and signing keys, the users / groups /
//! topics tables, push acceptance and dispatch, presence, offline queues and push status, and the
//! [`Store`] they persist into. It serves gateway nodes over the link (`herald_protocol::link`)
//! and knows nothing of how gateways hold terminal sockets.
//!
//! Entry point: [`start`] opens the store, binds the admin and link listeners (port 0 is
//! resolved before it returns) and runs everything on its own tokio runtime thread; the returned
//! [`ControlPlane`] handle reports the addresses and the admin key and stops it.
//!
//! # Delivery model
//!
//! - **Streams.** The control plane owns message streams (`u32` ids): one per user inbox
//!   (`u:USER`), per group (`g:GROUP`), per topic (`t:TOPIC`) and one for all condition pushes
//!   (`c`). Each stream numbers its messages from 1; `(stream, seq)` is the message id the
//!   terminal sees, deduplicates by and acknowledges. A stream's last sequence is stored with
//!   every push, so numbers are never reused, even after every message expired and a restart.
//! - **Messages are stored once** (TTL > 0), whatever the number of recipients. A direct push
//!   goes to the user's inbox stream (`users`: one message per inbox, one push id). Group,
//!   topic and condition pushes go to their stream.
//! - **Who a message is owed to.** Positions are push ids (one global, monotonic counter): a
//!   device is owed a message if the device was known (credential issued or seen online) before
//!   the push, and, for group/topic streams, the user's subscription to that group/topic started
//!   before the push; for condition pushes, the condition holds over the user's topics that were
//!   followed before the push. So a device gets group/topic messages published after its user
//!   subscribed, never older ones.
//! - **Cursors.** Per (device, stream): the highest sequence up to which everything owed is
//!   acknowledged, plus the acknowledged sequences above it. Not one row per recipient per
//!   message. Receipts (terminal acks) and a login's resume positions both advance cursors.
//! - **TTL 0** is fire-and-forget: not stored, no `ACK_REQUIRED`, sent to the nodes where an
//!   interested device is online at that moment. It still takes a sequence number.
//! - **TTL > 0**: `ACK_REQUIRED`, stored, sent live to interested online devices, and on each
//!   login (`Online`) the device gets its user's `Subscriptions` and then its backlog (every owed,
//!   unexpired, unacknowledged message, per stream in order, `Target::Device`), until it acks or
//!   the TTL passes. Backlog messages the device may have seen live carry `REDELIVERY`.
//! - **Collapse key**: a newer message with the same key on the same stream replaces the older
//!   one, which is deleted and never redelivered (its push reports `collapsed`).
//! - **Idempotency key**: a POST with a key already used answers the same push id and does
//!   nothing else (after that push is durable).
//! - **Durability.** Every admin change is durable before the API answers; a push is durable
//!   before `202`, and reaches the gateways only after it is durable (a crash can never leave
//!   a terminal holding a message id the store does not know). Writes are group-committed.
//! - **A failed commit** (disk full, I/O error) fails its batch and every write queued after it
//!   (`503`, or `Unavailable` to a terminal), writes are refused and `/healthz` answers `503`
//!   while the store is failing, and the control plane reopens the store and rebuilds its state
//!   from it (retrying with backoff until that works), as a restart would, without one: so
//!   nothing that did not become durable — a push, its id and idempotency key, a revocation, a
//!   group change, a key — stays in effect. Gateway links are closed at the rebuild and resync;
//!   pending wills are lost. Push ids are not reused. See `health.rs`.
//!
//! **Push status** (`GET /v1/pushes/{id}`): `targeted` = the devices the push was for when it
//! was accepted (TTL > 0: every known device of every target user; TTL 0: the interested devices
//! online then); `sent` / `dropped` = sums of the nodes' reports (frames queued to connections,
//! redeliveries included; recipients skipped by backpressure — the gateways', and TTL-0
//! recipients on a node that was behind); `delivered` = targeted devices that acknowledged it;
//! while the TTL runs, every other targeted device is either `awaiting_ack` (online, with a copy
//! queued to its node — live, as login backlog or as a resync — and no ack yet) or
//! `pending_offline` (no copy in flight: it was not online when the push was dispatched, went
//! offline before acknowledging, or sits on a node that is behind until the resync sends it);
//! `expired` = targeted devices that had not acknowledged when the TTL passed (both kinds);
//! `collapsed` = those that never got it because a newer message replaced it. So for a stored
//! push `targeted = delivered + awaiting_ack + pending_offline + expired + collapsed` (for every
//! target kind; `awaiting_ack` is capped at `targeted - delivered`, and `pending_offline` is
//! the rest). A device whose user left the group/topic before acknowledging is no longer owed
//! the push: it counts as `pending_offline` until the TTL passes. In-flight copies are tracked
//! in memory only: after a restart every device counts as pending_offline until its node
//! reconnects and resends it.
//!
//! **What a push costs.** A group or topic push costs O(nodes), whatever the number of
//! members: nothing is walked per member. The control plane keeps counts, updated where they
//! change rather than per push: known devices per group/topic stream (when a user's groups or
//! topics change, when a group's topics change, when a device registers) give `targeted`;
//! online devices per (group/topic stream, node), keyed by the position each is owed messages
//! from (updated on login, logout, node loss and subscription changes), give the nodes a push
//! is routed to, the TTL-0 `targeted` and the number of live copies in flight. That number is
//! set at dispatch and decremented per device only where the device acts: when it
//! acknowledges, logs out or starts a new session, or leaves the stream (each walks that
//! device's own unacknowledged stored messages, as a login's backlog does). Login backlogs,
//! resyncs and direct (`user`/`users`) pushes track copies per device. An online device is
//! indexed once, on the node of its latest login. Condition pushes are not indexed: accepting
//! one walks the subscribers of the smallest covering set of positively named topics (all
//! users if the condition has none), and dispatching one walks the online users and evaluates
//! the condition on each, tracking copies per device.
//!
//! **Retention.** A stored message leaves memory and the store when its TTL passes (the
//! sweeper, every 250 ms, removes every message due in one committer job, so one transaction
//! covers them all) or as soon as every device it was targeted at acknowledged it, whichever
//! comes first; so memory holds the undelivered messages, not everything within TTL. A push
//! record (its status counters) and its idempotency key are kept for
//! [`ControlPlaneConfig::push_record_retention_secs`] (default 24 h) after the push expired,
//! so `expired` is reported for that long; a TTL-0 push, which can never be delivered later,
//! keeps its record only [`ControlPlaneConfig::fire_and_forget_record_retention_secs`]
//! (default 5 min) after it was accepted (its 425 B would otherwise stay a day); then both are
//! deleted, `GET /v1/pushes/{id}` answers 404 saying the push was pruned, and a POST reusing the
//! key is a new push. Records are also bounded in bytes overall
//! ([`ControlPlaneConfig::max_push_record_bytes`], default 256 MiB, ~600,000 records): past it
//! the records of pushes that have expired are pruned early, soonest-due first, and a push is
//! refused `507` if only unexpired ones remain. Push ids stay monotonic across pruning and
//! restarts (the last id is stored).
//!
//! **Caps.** Everything stored is also held in memory (backlogs are served from it), so
//! undelivered messages are capped in bytes (payload + collapse key + 128 B of bookkeeping
//! each): [`ControlPlaneConfig::max_inbox_bytes_per_user`] (default 4 MiB) per user inbox
//! (`user`/`users` pushes) and [`ControlPlaneConfig::max_stored_bytes`] (default 512 MiB)
//! over every stream. A push (TTL > 0) that does not fit is **refused** with `507` and a reason
//! naming the cap — a `users` push as a whole if any one inbox is full — and takes no push id;
//! nothing already accepted is dropped to make room (a `202` keeps meaning "delivered or
//! expired"; the application decides what matters). Bytes are charged when a push is accepted
//! and given back when its message leaves (acknowledged, expired, collapsed); the gauge
//! `herald_cp_stored_bytes` and the counter `herald_cp_pushes_refused_full_total` show them. A
//! terminal's MQTT PUBLISH refused this way is answered `Unavailable` (it may retry). Changes
//! waiting for the store are bounded by [`ControlPlaneConfig::commit_queue_bytes`]: past it
//! the admin API answers `429` (nothing changed) and link connections stop reading from their
//! gateways until the store catches up (see `committer.rs`).
//!
//! **Link backpressure.** Each node's outbound queue holds at most
//! [`ControlPlaneConfig::link_queue_messages`] pushes and
//! [`ControlPlaneConfig::link_queue_bytes`] of them (control messages — tables, deltas,
//! subscriptions, kicks — are always admitted: they are few and must not be lost). A push that
//! does not fit marks the node *behind*: from then on no live push is queued to it. Stored
//! pushes (TTL > 0) lose nothing: once the node's writer has drained the queue to half its
//! bounds, every device online on the node is resent, from its cursors, the stored messages
//! from the first push that was not queued (a device that logged in meanwhile, or whose login
//! backlog did not fit, gets its whole backlog), in order per stream, and live pushes are
//! queued again. A resync is queued whole, so it may take the queue past its bound once.
//! Fire-and-forget pushes (TTL 0) for a behind node are dropped: each online recipient there
//! counts in the push's `dropped` and in `herald_cp_fire_and_forget_dropped_total`.
//!
//! **Routing**: the control plane knows each node's online devices (presence) and each user's
//! subscriptions, and sends a push only to nodes holding at least one interested connection
//! (group/topic pushes: from the per-(stream, node) online counts above).
//!
//! # Layout
//! `store.rs` (trait, records, redb backend), `committer.rs` (group commit), `core.rs` (state and
//! delivery rules), `api.rs` (admin HTTP), `openapi.rs`, `link.rs` (link server), `queue.rs`
//! (a node's bounded outbound queue), `metrics.rs`.

mod api;
mod committer;
mod core;
mod health;
mod http;
mod link;
mod metrics;
mod openapi;
mod perms;
mod queue;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{oneshot, watch};

pub use crate::api::ApiError;
pub use crate::core::{PushStatus, UserView};
pub use crate::metrics::Metrics;
pub use crate::store::{RedbStore, Store, StoreError};

use crate::committer::{Committer, Job};
use crate::core::Core;
use crate::health::StoreHealth;
use crate::store::Snapshot;

/// How the control plane runs. Units are in the field names.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Where the store (`herald.redb`) and a generated `admin.key` live.
    pub data_dir: PathBuf,
    /// Admin HTTP API listen address (loopback by default).
    pub admin_addr: SocketAddr,
    /// Link listen address for gateway nodes.
    pub link_addr: SocketAddr,
    /// The admin API key; `None`: read `<data_dir>/admin.key`, generating it on first start.
    /// (The binary passes `HERALD_ADMIN_KEY` here.)
    pub admin_key: Option<String>,
    /// TTL of a push that does not say.
    pub default_ttl_secs: u32,
    /// Longest TTL a push may ask for.
    pub max_ttl_secs: u32,
    /// Lifetime of a credential that does not say.
    pub credential_ttl_secs: u64,
    /// Longest credential lifetime a caller may ask for.
    pub max_credential_ttl_secs: u64,
    /// Tokio worker threads for the API and the link.
    pub worker_threads: usize,
    /// How long a push record (its status, and its idempotency key) is kept after the push
    /// expired; then `GET /v1/pushes/{id}` answers 404 and the key may be used again.
    pub push_record_retention_secs: u64,
    /// Pushes queued for one gateway node before it counts as behind (see the crate docs).
    pub link_queue_messages: usize,
    /// A request head (line and headers) must arrive within this time of the server waiting
    /// for it, which also closes keep-alive connections idle that long (slow loris, idle fds).
    pub admin_header_timeout_secs: u64,
    /// A request body must arrive within this time of its head (else `408`): a client trickling
    /// a body cannot hold a connection. 5 MiB (the body limit) at 1 Mbit/s takes 42 s.
    pub admin_body_timeout_secs: u64,
    /// Admin API connections served at once; more wait in the listen backlog. The binary
    /// reserves this many file descriptors for the API out of the process's limit.
    pub admin_max_connections: usize,
    /// The link writes a heartbeat to a node when it has written nothing for this long (also the
    /// TCP keepalive idle time and probe interval).
    pub link_heartbeat_secs: u64,
    /// A node's link is dropped when the node has sent nothing, or not read, for this long.
    pub link_dead_after_secs: u64,
    /// Bytes of pushes queued for one gateway node before it counts as behind, whichever of
    /// this and `link_queue_messages` is reached first.
    pub link_queue_bytes: usize,
    /// Bytes of undelivered messages one user's inbox may hold; a direct push past it is
    /// refused `507` (see **Caps** in the crate docs).
    pub max_inbox_bytes_per_user: u64,
    /// Bytes of undelivered messages all streams together may hold; a push past it is
    /// refused `507`.
    pub max_stored_bytes: u64,
    /// How long the record of a TTL-0 push (its status) is kept after it was accepted (it can
    /// never be delivered later, so there is nothing to wait for).
    pub fire_and_forget_record_retention_secs: u64,
    /// Bytes of push records (statuses, idempotency keys) kept: past it the records of expired
    /// pushes are pruned early, oldest first, and a push is refused `507` if that is not enough.
    pub max_push_record_bytes: u64,
    /// Bytes of changes waiting for the store: past it the admin API answers `429` and link
    /// connections stop reading from their gateways until the store catches up.
    pub commit_queue_bytes: u64,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        ControlPlaneConfig {
            data_dir: PathBuf::from("./data"),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            link_addr: SocketAddr::from(([127, 0, 0, 1], 7001)),
            admin_key: None,
            default_ttl_secs: 86_400,
            max_ttl_secs: 28 * 86_400,
            credential_ttl_secs: 30 * 86_400,
            max_credential_ttl_secs: 365 * 86_400,
            worker_threads: 2,
            push_record_retention_secs: 86_400,
            link_queue_messages: 65_536,
            admin_header_timeout_secs: 10,
            admin_body_timeout_secs: 60,
            admin_max_connections: 64,
            link_heartbeat_secs: 5,
            link_dead_after_secs: 15,
            link_queue_bytes: 64 << 20,
            max_inbox_bytes_per_user: 4 << 20,
            max_stored_bytes: 512 << 20,
            fire_and_forget_record_retention_secs: 300,
            max_push_record_bytes: 256 << 20,
            commit_queue_bytes: 64 << 20,
        }
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened or read (disk, permissions, corruption).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound (address in use, permissions).
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The admin key file could not be read or written.
    #[error("admin key file {path}: {source}")]
    AdminKey { path: PathBuf, source: std::io::Error },
    /// The control plane's main thread panicked (a bug); reported by [`ControlPlane::join`].
    #[error("the control plane thread panicked")]
    Panicked,
    /// Threads or the runtime could not be created.
    #[error("cannot start the control plane runtime: {0}")]
    Runtime(std::io::Error),
}

/// State shared by the API handlers, the link connections and the committer.
#[derive(Debug)]
pub(crate) struct Shared {
    core: Mutex<Core>,
    committer: Committer,
    pub(crate) health: Arc<StoreHealth>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) admin_key: String,
    pub(crate) config: ControlPlaneConfig,
    committed: watch::Sender<u64>,
    rng: SystemRandom,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn random(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        // The OS random source failing is not recoverable; a zero key would be worse.
        if self.rng.fill(&mut b).is_err() {
            panic!("system random source failed");
        }
        b
    }

    /// Runs `f` on the core, queues its store changes and waits until they are durable.
    /// `f` returns its result and the push ids to publish after the commit.
    pub(crate) async fn write<T>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<(T, Vec<u64>), ApiError>,
    ) -> Result<T, ApiError> {
        // While the store is failing, memory is about to be rebuilt from it: a change made now
        // would be lost, and its answer could only be 503 anyway.
        if let Some(reason) = self.health.failing() {
            return Err(ApiError::store_failing(&reason));
        }
        if self.committer.is_full() {
            self.metrics.commit_queue_full.inc();
            return Err(ApiError::too_many_requests(
                "the store is behind (commit_queue_bytes of changes are waiting to be written); retry later",
            ));
        }
        let (value, durable) = self.submit(f)?;
        match durable {
            None => Ok(value),
            Some(rx) => match rx.await {
                Ok(true) => Ok(value),
                _ => Err(match self.health.failing() {
                    Some(reason) => ApiError::store_failing(&reason),
                    None => ApiError::unavailable("the store is not accepting writes"),
                }),
            },
        }
    }

    /// The synchronous half of [`Shared::write`]: runs `f` on the core now (so callers on one
    /// task are applied in their order) and queues its store changes; the receiver, if any,
    /// says when they are durable.
    pub(crate) fn submit<T, E>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<(T, Vec<u64>), E>,
    ) -> Result<(T, Option<oneshot::Receiver<bool>>), E> {
        let mut core = self.lock();
        let result = f(&mut core);
        let ops = core.take_ops();
        let generation = self.health.generation();
        let (value, publish) = match result {
            Ok(v) => v,
            Err(e) => {
                if !ops.is_empty() {
                    self.committer.submit(Job { ops, publish: Vec::new(), done: None, generation });
                }
                return Err(e);
            }
        };
        if ops.is_empty() && publish.is_empty() {
            return Ok((value, None));
        }
        let (tx, rx) = oneshot::channel();
        self.committer.submit(Job { ops, publish, done: Some(tx), generation });
        Ok((value, Some(rx)))
    }

    /// Runs `f` on the core and queues its store changes without waiting (link traffic).
    pub(crate) fn fire<T>(&self, f: impl FnOnce(&mut Core) -> T) -> T {
        let mut core = self.lock();
        let v = f(&mut core);
        let ops = core.take_ops();
        if !ops.is_empty() {
            let generation = self.health.generation();
            self.committer.submit(Job { ops, publish: Vec::new(), done: None, generation });
        }
        v
    }

    /// Resolves once the committer's queue is under `commit_queue_bytes`.
    pub(crate) async fn committer_room(&self) {
        self.committer.room().await;
    }

    /// Waits until push `id` is durable (an idempotent retry of a push still in flight).
    pub(crate) async fn wait_committed(&self, id: u64) -> Result<(), ApiError> {
        let mut rx = self.committed.subscribe();
        let wait = rx.wait_for(|&c| c >= id);
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError::unavailable("the push is not durable yet")),
        }
    }
}

/// A running control plane. Dropping it shuts it down and waits.
#[derive(Debug)]
pub struct ControlPlane {
    admin_addr: SocketAddr,
    link_addr: SocketAddr,
    admin_key: String,
    admin_key_generated: bool,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl ControlPlane {
    /// The bound admin API address (port 0 resolved).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound link address gateways connect to.
    pub fn link_addr(&self) -> SocketAddr {
        self.link_addr
    }

    /// The admin API bearer key.
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// Whether the admin key was generated by this start (print it once, then never again).
    pub fn admin_key_generated(&self) -> bool {
        self.admin_key_generated
    }

    /// The admin key if this start generated it (into `<data_dir>/admin.key`), to print once.
    pub fn generated_admin_key(&self) -> Option<&str> {
        self.admin_key_generated.then_some(self.admin_key.as_str())
    }

    /// The counters behind `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The admin API router over this control plane's state, for in-process callers and tests
    /// (`tower::ServiceExt::oneshot`); the same router serves [`ControlPlane::admin_addr`].
    pub fn router(&self) -> axum::Router {
        api::router(self.shared.clone())
    }

    /// Asks the control plane to stop: listeners close, queued writes are committed.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until the control plane has stopped (after [`ControlPlane::shutdown`]); everything
    /// accepted is committed by then.
    pub fn join(mut self) -> Result<(), Error> {
        self.join_inner()
    }

    fn join_inner(&mut self) -> Result<(), Error> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| Error::Panicked),
            None => Ok(()),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
        let _ = self.join_inner();
    }
}

/// Reads or creates the admin key. Returns the key and whether it was generated now.
fn resolve_admin_key(config: &ControlPlaneConfig, rng: &SystemRandom) -> Result<(String, bool), Error> {
    if let Some(k) = &config.admin_key {
        return Ok((k.clone(), false));
    }
    let path = config.data_dir.join("admin.key");
    let err = |source| Error::AdminKey { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => return Ok((k.trim().to_owned(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut b = [0u8; 32];
    rng.fill(&mut b).map_err(|_| err(std::io::Error::other("system random source failed")))?;
    use base64::Engine as _;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    write_private(&path, &key).map_err(err)?;
    Ok((key, true))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Starts a control plane on the embedded redb store under `config.data_dir`.
pub fn start(config: ControlPlaneConfig) -> Result<ControlPlane, Error> {
    let store = RedbStore::open(&config.data_dir)?;
    start_with_store(config, Arc::new(store))
}

/// Starts a control plane on any [`Store`].
pub fn start_with_store(config: ControlPlaneConfig, store: Arc<dyn Store>) -> Result<ControlPlane, Error> {
    perms::private_dir(&config.data_dir)
        .map_err(|source| Error::AdminKey { path: config.data_dir.clone(), source })?;
    let rng = SystemRandom::new();
    let (admin_key, admin_key_generated) = resolve_admin_key(&config, &rng)?;
    let key_path = config.data_dir.join("admin.key");
    perms::private_file(&key_path).map_err(|source| Error::AdminKey { path: key_path, source })?;
    let snapshot = store.load()?;
    let metrics = Arc::new(Metrics::default());
    let mut first_secret = [0u8; 32];
    rng.fill(&mut first_secret)
        .map_err(|_| Error::Runtime(std::io::Error::other("system random source failed")))?;
    let now = now_ms();
    let retention_ms = config.push_record_retention_secs.saturating_mul(1000);
    let mut core = Core::load(snapshot, metrics.clone(), now, now / 1000, first_secret, retention_ms);
    core.set_limits(core::Limits {
        max_inbox_bytes_per_user: config.max_inbox_bytes_per_user,
        max_stored_bytes: config.max_stored_bytes,
        fire_and_forget_record_retention_ms: config
            .fire_and_forget_record_retention_secs
            .saturating_mul(1000),
        max_push_record_bytes: config.max_push_record_bytes,
    });
    let initial_ops = core.take_ops();
    if !initial_ops.is_empty() {
        store.commit(&initial_ops)?;
    }
    let committed_at = core.last_push_id();
    let slot: Arc<OnceLock<Weak<Shared>>> = Arc::new(OnceLock::new());
    let publish_slot = slot.clone();
    let reload_slot = slot.clone();
    let health = Arc::new(StoreHealth::default());
    let reload = Box::new(move |snap: Snapshot| {
        let Some(shared) = reload_slot.get().and_then(Weak::upgrade) else { return Vec::new() };
        let secret = shared.random();
        let mut core = shared.lock();
        core.reload(snap, now_ms(), secret);
        // Under the core lock: every job submitted from now on belongs to the new state.
        shared.health.next_generation();
        core.take_ops()
    });
    let committer = Committer::start(
        store,
        metrics.clone(),
        health.clone(),
        config.commit_queue_bytes,
        move |ids| {
            if let Some(shared) = publish_slot.get().and_then(Weak::upgrade) {
                shared.lock().publish(ids);
                if let Some(&max) = ids.iter().max() {
                    shared.committed.send_if_modified(|c| {
                        let changed = max > *c;
                        *c = (*c).max(max);
                        changed
                    });
                }
            }
        },
        reload,
    )
    .map_err(Error::Runtime)?;
    let (committed, _) = watch::channel(committed_at);
    let admin = bind(config.admin_addr)?;
    let link = bind(config.link_addr)?;
    let admin_addr = admin.local_addr().map_err(Error::Runtime)?;
    let link_addr = link.local_addr().map_err(Error::Runtime)?;
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        committer,
        health,
        metrics,
        admin_key: admin_key.clone(),
        config: config.clone(),
        committed,
        rng,
    });
    let _ = slot.set(Arc::downgrade(&shared));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.max(1))
        .thread_name("herald-cp")
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let run_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("herald-cp-main".into())
        .spawn(move || {
            runtime.block_on(run(run_shared.clone(), admin, link, shutdown_rx));
            // Everything accepted is committed before the store is let go.
            run_shared.committer.close();
            runtime.shutdown_timeout(Duration::from_secs(2));
        })
        .map_err(Error::Runtime)?;
    tracing::info!(%admin_addr, %link_addr, "control plane started");
    Ok(ControlPlane {
        admin_addr,
        link_addr,
        admin_key,
        admin_key_generated,
        shutdown,
        thread: Some(thread),
        shared,
    })
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|&s| s).await;
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let l = std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    l.set_nonblocking(true).map_err(|source| Error::Bind { addr, source })?;
    Ok(l)
}

async fn run(
    shared: Arc<Shared>,
    admin: std::net::TcpListener,
    link: std::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    let (admin, link) =
        match (tokio::net::TcpListener::from_std(admin), tokio::net::TcpListener::from_std(link)) {
            (Ok(a), Ok(l)) => (a, l),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot register listeners");
                return;
            }
        };
    tokio::spawn(link::serve(shared.clone(), link, shutdown.clone()));
    let sweeper_shared = shared.clone();
    let mut sweeper_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = now_ms();
                    sweeper_shared.fire(|core| core.sweep(now));
                    // Delayed wills become pushes; published once durable.
                    let _ = sweeper_shared.submit(|core| Ok::<_, ()>(((), core.due_wills(now))));
                }
                () = stopped(&mut sweeper_stop) => break,
            }
        }
    });
    let app = api::router(shared.clone());
    http::serve(admin, app, &shared.config, shared.metrics.clone(), shutdown).await;
}
