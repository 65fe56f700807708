//! Group commit: one thread owns the store's write side and applies every batch of changes that
//! queued up while the previous commit was in flight as ONE transaction (one fsync), then tells
//! each submitter. Under load a commit covers hundreds of pushes, which is how a store that costs
//! a millisecond per fsync accepts tens of thousands of durable pushes per second.
//!
//! Jobs are applied and published in submission order, and submitters enqueue while holding the
//! core lock, so the order of commits is the order of sequence numbers on every stream.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::store::{Op, Store};

/// Most jobs folded into one transaction.
const MAX_BATCH_JOBS: usize = 4096;

/// A unit of work for the committer.
#[derive(Debug, Default)]
pub(crate) struct Job {
    pub ops: Vec<Op>,
    /// Pushes to hand to the gateways once the ops are durable.
    pub publish: Vec<u64>,
    /// Told `true` once durable (and published), `false` if the store failed.
    pub done: Option<oneshot::Sender<bool>>,
}

/// The sending side; dropping every clone of it (via [`Committer::close`]) stops the thread
/// after it has drained what was queued.
#[derive(Debug)]
pub(crate) struct Committer {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    /// Starts the commit thread. `publish` runs on it after each durable commit, in order.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        publish: impl Fn(&[u64]) + Send + 'static,
    ) -> std::io::Result<Committer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("herald-cp-store".into())
            .spawn(move || run(&*store, &metrics, rx, publish))?;
        Ok(Committer { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) })
    }

    /// Queues a job. Returns false if the committer is closed (the job's `done` sees `false`).
    pub(crate) fn submit(&self, job: Job) -> bool {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => tx.send(job).is_ok(),
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

fn run(store: &dyn Store, metrics: &Metrics, rx: mpsc::Receiver<Job>, publish: impl Fn(&[u64])) {
    let mut batch: Vec<Job> = Vec::new();
    let mut ops: Vec<Op> = Vec::new();
    let mut ids: Vec<u64> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH_JOBS {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        for job in &mut batch {
            ops.append(&mut job.ops);
            ids.extend_from_slice(&job.publish);
        }
        let started = std::time::Instant::now();
        let ok = match ops.is_empty() {
            true => true,
            false => match store.commit(&ops) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, ops = ops.len(), "store commit failed");
                    metrics.store_errors.inc();
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
        for job in batch.drain(..) {
            if let Some(done) = job.done {
                let _ = done.send(ok);
            }
        }
        ops.clear();
        ids.clear();
    }
}
