//! The store's health, shared by the committer (which sets it), the API (`/healthz`, and writes
//! refused while failing) and every submitter (the generation their changes were made in).
//!
//! A failed commit leaves memory ahead of the store: the failed batch, and everything queued
//! after it (built on top of it), were applied in memory but are not durable. The committer
//! then fails every such job, reopens the store and rebuilds the working state from it (see
//! `Core::reload`), exactly what a restart would do, without the restart. The generation tells
//! jobs made before the rebuild (discarded) from those made after it (committed).
//!
//! "Failing" lasts from a failed commit until the store has been reopened and has taken a write
//! (a small one: a disk that is still nearly full may take it and fail the next push, which
//! starts the cycle again, with the backoff carried over so that it cannot churn).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct StoreHealth {
    /// Bumped by each rebuild, under the core lock (so a submitter, which holds that lock, reads
    /// the generation its changes belong to).
    generation: AtomicU64,
    failing: AtomicBool,
    /// The last failure, for the API's 503 and the log. Written only when a failure starts.
    reason: Mutex<String>,
}

impl StoreHealth {
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A rebuild happened: every job of an earlier generation is void.
    pub(crate) fn next_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The failure's reason while the store is failing.
    pub(crate) fn failing(&self) -> Option<String> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        Some(self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    pub(crate) fn set_failing(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        self.failing.store(true, Ordering::Release);
    }

    pub(crate) fn set_ok(&self) {
        self.failing.store(false, Ordering::Release);
    }
}
