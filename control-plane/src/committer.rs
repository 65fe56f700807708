//! Group commit: one thread owns the store's write side and applies every batch of changes that
//! queued up while the previous commit was in flight as ONE transaction (one fsync), then tells
//! each submitter. Under load a commit covers hundreds of pushes, which is how a store that costs
//! a millisecond per fsync accepts tens of thousands of durable pushes per second.
//!
//! Jobs are applied and published in submission order, and submitters enqueue while holding the
//! core lock, so the order of commits is the order of sequence numbers on every stream.
//!
//! A failed commit is not retried: its batch and every job queued after it fail (their callers
//! get 503 / `Unavailable`), `/healthz` reports the store failing, and the committer reopens the
//! store and rebuilds the working state from it (see `health.rs`), retrying with backoff until
//! that works. Nothing a failed job changed in memory survives the rebuild.
//!
//! **Bound.** The queue is bounded in bytes (`commit_queue_bytes`, an estimate of what the queued
//! changes hold in memory): a job is never refused once its changes are made in memory (that
//! would make memory and store diverge), so the bound is enforced *before* the work: the admin
//! API answers `429` while the queue is over it ([`Committer::is_full`]), and each link
//! connection stops reading from its gateway until there is room ([`Committer::room`]), which
//! pushes back over TCP to the gateway. After a large batch the thread's buffers are shrunk so a
//! burst's worth of changes is not kept allocated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use crate::health::StoreHealth;
use crate::metrics::Metrics;
use crate::store::{Op, Snapshot, Store};

/// Most jobs folded into one transaction.
const MAX_BATCH_JOBS: usize = 4096;

/// First and longest wait before an attempt to reopen a failed store.
const REOPEN_BACKOFF_FIRST: Duration = Duration::from_millis(50);
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A failure within this long of the last recovery continues that recovery's backoff instead
/// of starting again at the first wait: a disk that takes small writes but not a push would
/// otherwise fail, reload and resync every gateway link many times a second.
const REFAIL_WINDOW: Duration = Duration::from_secs(60);

/// Rebuilds the working state from a reloaded store (under the core lock, bumping the
/// generation) and returns the store changes that made (see `Core::reload`).
pub(crate) type Reload = Box<dyn Fn(Snapshot) -> Vec<Op> + Send>;

/// Ops the commit thread's buffer keeps allocated between batches; a larger batch's buffer is
/// freed (a burst of receipts can make one batch of hundreds of thousands of ops).
const KEEP_OPS: usize = 16 * 1024;

/// What one queued op is counted for beyond its strings and payload (enum, record fields).
const OP_OVERHEAD_BYTES: u64 = 160;

/// Memory a queued op holds, estimated (the bound only has to be proportional).
fn op_bytes(op: &Op) -> u64 {
    let var = match op {
        Op::User(name, rec) => {
            name.len()
                + (rec.groups.len() + rec.topics.len()) * 32
                + (rec.since.len() + rec.devices.len()) * 48
        }
        Op::Group(name, topics) => name.len() + topics.iter().map(|t| t.len() + 24).sum::<usize>(),
        Op::Revocation(user, r) => user.len() + r.devices.len() * 48,
        Op::RevocationRemoved(user) => user.len(),
        Op::Stream(rec) => rec.name.len(),
        Op::Message(_, _, m) => m.as_ref().map_or(0, |m| m.payload.len()),
        Op::Push(p) => p.messages.len() * 8 + p.idempotency_key.as_ref().map_or(0, String::len),
        Op::Cursor { user, device, cursor, .. } => user.len() + device.len() + cursor.above.len() * 4,
        Op::Key(_) | Op::KeyRemoved(_) | Op::PushRemoved(_) | Op::LastPushId(_) => 0,
    };
    OP_OVERHEAD_BYTES + var as u64
}

fn job_bytes(job: &Job) -> u64 {
    job.ops.iter().map(op_bytes).sum::<u64>() + job.publish.len() as u64 * 8
}

/// Bytes queued for the commit thread, and who waits for room.
#[derive(Debug)]
struct Backlog {
    bytes: AtomicU64,
    max_bytes: u64,
    room: Notify,
}

/// A unit of work for the committer.
#[derive(Debug, Default)]
pub(crate) struct Job {
    pub ops: Vec<Op>,
    /// Pushes to hand to the gateways once the ops are durable.
    pub publish: Vec<u64>,
    /// Told `true` once durable (and published), `false` if the store failed.
    pub done: Option<oneshot::Sender<bool>>,
    /// The store generation the changes were made in ([`StoreHealth::generation`]): a job of
    /// an earlier one was made on state a rebuild discarded, and fails.
    pub generation: u64,
}

/// The sending side; dropping every clone of it (via [`Committer::close`]) stops the thread
/// after it has drained what was queued.
#[derive(Debug)]
pub(crate) struct Committer {
    tx: Mutex<Option<mpsc::Sender<(Job, u64)>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    backlog: Arc<Backlog>,
}

impl Committer {
    /// Starts the commit thread. `publish` runs on it after each durable commit, in order.
    /// `max_queued_bytes`: see the module docs.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        health: Arc<StoreHealth>,
        max_queued_bytes: u64,
        publish: impl Fn(&[u64]) + Send + 'static,
        reload: Reload,
    ) -> std::io::Result<Committer> {
        let (tx, rx) = mpsc::channel::<(Job, u64)>();
        let backlog = Arc::new(Backlog {
            bytes: AtomicU64::new(0),
            max_bytes: max_queued_bytes.max(1),
            room: Notify::new(),
        });
        let thread_backlog = backlog.clone();
        let thread = std::thread::Builder::new()
            .name("herald-cp-store".into())
            .spawn(move || run(&*store, &metrics, &health, &thread_backlog, rx, publish, &reload))?;
        Ok(Committer { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), backlog })
    }
    /// Whether the queued changes are at or over the bound: callers that can refuse work
    /// (the admin API) refuse it before changing anything.
    pub(crate) fn is_full(&self) -> bool {
        self.queued_bytes() >= self.backlog.max_bytes
    }

    /// Bytes of changes queued and not yet committed (estimated).
    pub(crate) fn queued_bytes(&self) -> u64 {
        self.backlog.bytes.load(Ordering::Acquire)
    }

    /// Resolves once the queue is under its bound (callers that can wait: link readers).
    pub(crate) async fn room(&self) {
        loop {
            let notified = self.backlog.room.notified();
            if !self.is_full() {
                return;
            }
            notified.await;
        }
    }

    /// Queues a job. Returns false if the committer is closed (the job's `done` sees `false`).
    /// Never refuses for lack of room (see the module docs).
    pub(crate) fn submit(&self, job: Job) -> bool {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => {
                let bytes = job_bytes(&job);
                self.backlog.bytes.fetch_add(bytes, Ordering::AcqRel);
                match tx.send((job, bytes)) {
                    Ok(()) => true,
                    Err(mpsc::SendError((job, bytes))) => {
                        self.backlog.bytes.fetch_sub(bytes, Ordering::AcqRel);
                        if let Some(done) = job.done {
                            let _ = done.send(false);
                        }
                        false
                    }
                }
            }
            None => {
                if let Some(done) = job.done {
                    let _ = done.send(false);
                }
                false
            }
        }
    }

    /// Stops accepting jobs, waits until everything queued is committed.
    pub(crate) fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// Fails a job queued on a failing store; its bytes leave the count.
fn fail(backlog: &Backlog, (job, bytes): (Job, u64)) {
    backlog.bytes.fetch_sub(bytes, Ordering::AcqRel);
    backlog.room.notify_waiters();
    if let Some(done) = job.done {
        let _ = done.send(false);
    }
}

fn run(
    store: &dyn Store,
    metrics: &Metrics,
    health: &StoreHealth,
    backlog: &Backlog,
    rx: mpsc::Receiver<(Job, u64)>,
    publish: impl Fn(&[u64]),
    reload: &Reload,
) {
    let mut batch: Vec<Job> = Vec::new();
    let mut ops: Vec<Op> = Vec::new();
    let mut ids: Vec<u64> = Vec::new();
    let mut backoff = REOPEN_BACKOFF_FIRST;
    let mut recovered_at: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let mut bytes = first.1;
        batch.push(first.0);
        while batch.len() < MAX_BATCH_JOBS {
            match rx.try_recv() {
                Ok((job, b)) => {
                    bytes += b;
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let generation = health.generation();
        for job in &mut batch {
            if job.generation == generation {
                ops.append(&mut job.ops);
                ids.extend_from_slice(&job.publish);
            }
        }
        let started = std::time::Instant::now();
        let ok = match ops.is_empty() {
            true => true,
            false => match store.commit(&ops) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, ops = ops.len(), "store commit failed; reopening the store");
                    metrics.store_errors.inc();
                    metrics.store_failing.set(1);
                    health.set_failing(e.to_string());
                    false
                }
            },
        };
        metrics.store_commits.inc();
        metrics.store_ops.add(ops.len() as u64);
        metrics.store_commit_micros.add(started.elapsed().as_micros() as u64);
        if ok && !ids.is_empty() {
            publish(&ids);
        }
        // No longer waiting: room again before the submitters hear (one that writes again at
        // once must not find its own committed job still counted).
        let left = backlog.bytes.fetch_sub(bytes, Ordering::AcqRel) - bytes;
        metrics.commit_queue_bytes.set(left);
        backlog.room.notify_waiters();
        for job in batch.drain(..) {
            if let Some(done) = job.done {
                let _ = done.send(ok && job.generation == generation);
            }
        }
        ops.clear();
        ids.clear();
        if ops.capacity() > KEEP_OPS {
            ops = Vec::new();
        }
        if ids.capacity() > KEEP_OPS {
            ids = Vec::new();
        }
        if !ok {
            if recovered_at.is_none_or(|t| t.elapsed() > REFAIL_WINDOW) {
                backoff = REOPEN_BACKOFF_FIRST;
            }
            if !recover(store, metrics, health, backlog, &rx, reload, &mut backoff) {
                return;
            }
            recovered_at = Some(Instant::now());
        }
    }
}

/// After a failed commit: reopens the store and rebuilds the working state from it, failing
/// every job queued meanwhile, until it works. False if the committer was closed meanwhile.
fn recover(
    store: &dyn Store,
    metrics: &Metrics,
    health: &StoreHealth,
    backlog: &Backlog,
    rx: &mpsc::Receiver<(Job, u64)>,
    reload: &Reload,
    backoff: &mut Duration,
) -> bool {
    for attempt in 1u64.. {
        // The wait fails whatever is queued meanwhile (made on the state being discarded, or
        // link traffic: the API refuses writes while failing) and ends at once on shutdown.
        let until = Instant::now() + *backoff;
        *backoff = (*backoff * 2).min(REOPEN_BACKOFF_MAX);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(job) => fail(backlog, job),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
            if left.is_zero() {
                break;
            }
        }
        let outcome = store.reopen().and_then(|()| store.load()).and_then(|snap| {
            // Reopening needs no space: a write proves the store takes writes again before the
            // state is rebuilt (and links closed) and `/healthz` says so. It rewrites a value
            // the store already holds.
            store.commit(&[Op::LastPushId(snap.last_push_id)])?;
            store.commit(&reload(snap))
        });
        match outcome {
            Ok(()) => {
                health.set_ok();
                metrics.store_failing.set(0);
                metrics.store_recoveries.inc();
                tracing::warn!(
                    attempt,
                    "store reopened; working state reloaded from it, writes accepted again"
                );
                return true;
            }
            // Logged at attempts 1, 2, 4, 8...: a long outage does not flood the log.
            Err(e) if attempt.is_power_of_two() => {
                tracing::error!(error = %e, attempt, "store still failing; retrying")
            }
            Err(_) => {}
        }
    }
    false
}
