//! A live session keeps being checked against its credential after login: it is closed when the
//! credential expires (`AUTH_EXPIRED`: the terminal must fetch a new one), when a revocation
//! covers it, or when its signing key leaves the tables (withdrawn: `AUTH_REVOKED`), whichever
//! transport and protocol carry it (Herald over TCP or QUIC: CLOSE; MQTT 5.0: DISCONNECT 0x87
//! Not authorized; MQTT 3.1.1: the connection is closed).
//!
//! What a session must remember for that: its key id (in [`super::Auth`], where it fills
//! padding) and, here, its credential's `issued_at` and `expires_at` in a side table indexed by
//! slot (8 bytes per slot, so the slab slot itself does not grow). Seconds are kept in a `u32`:
//! Unix time fits until 2106; a later expiry saturates, which means "never" for any session.
//!
//! Expiry uses the core's one deadline heap (no timer per connection): a logged-in connection's
//! next deadline is the earlier of its heartbeat grace and its credential's expiry. Revocations
//! and key withdrawals arrive as new table snapshots: a core walks its live sessions once per
//! snapshot whose `auth_epoch` moved (see `crate::tables`), which happens on a revocation, a
//! key removal or a whole `Tables` after a reconnect (so a revocation made while the link was
//! down is applied as soon as it is back), never per frame; a walk costs a hash lookup or two
//! per session. Before fanning out a push, a core makes sure it has walked the tables that push
//! came with, so a push sent after a revocation never reaches the revoked session.

use herald_protocol::CloseCode;

use super::{Auth, Worker, unix_now};
use crate::tables::Snapshot;

/// The parts of a session's credential that the clock or the tables can invalidate later.
#[derive(Debug, Clone, Copy, Default)]
struct Times {
    /// The credential's signing key: the session ends if the key is withdrawn. Kept here, not
    /// in the connection's slot, which must stay within its size guard.
    key_id: u32,
    /// Unix seconds, saturated.
    issued_at: u32,
    /// Unix seconds, saturated; the credential is refused at and after this second.
    expires_at: u32,
}

/// Per core: [`Times`] per slot, and the tables the live sessions were last checked against.
#[derive(Debug, Default)]
pub(super) struct Creds {
    times: Vec<Times>,
    /// The `auth_epoch` of the snapshot the sessions were last walked against.
    checked_epoch: u64,
    /// Sessions found invalid by a walk (reused).
    closing: Vec<(usize, CloseCode)>,
}

fn secs32(s: u64) -> u32 {
    s.min(u64::from(u32::MAX)) as u32
}

impl Creds {
    /// Records the credential of the session now in `slot`.
    pub(super) fn set(&mut self, slot: usize, key_id: u32, issued_at: u64, expires_at: u64) {
        if self.times.len() <= slot {
            self.times.resize(slot + 1, Times::default());
        }
        self.times[slot] = Times { key_id, issued_at: secs32(issued_at), expires_at: secs32(expires_at) };
    }

    fn times(&self, slot: usize) -> Times {
        self.times.get(slot).copied().unwrap_or_default()
    }

    /// Milliseconds from `now_unix_ms` until the credential in `slot` expires (0: expired).
    pub(super) fn left_ms(&self, slot: usize, now_unix_ms: u64) -> u64 {
        (u64::from(self.times(slot).expires_at) * 1000).saturating_sub(now_unix_ms)
    }

    /// Why the session in `slot` no longer holds against `snap` at `now_secs`, if it does not.
    fn refuse(&self, slot: usize, auth: &Auth, snap: &Snapshot, now_secs: u64) -> Option<CloseCode> {
        let t = self.times(slot);
        if now_secs >= u64::from(t.expires_at) {
            return Some(CloseCode::AUTH_EXPIRED);
        }
        // A withdrawn key is a revocation of every credential it signed; a new login with such
        // a credential is refused AUTH_FORGED (its key is unknown, PROTOCOL.md §4).
        if !snap.keys.contains(t.key_id)
            || snap.revocations.revoked(&auth.user, &auth.device, u64::from(t.issued_at))
        {
            return Some(CloseCode::AUTH_REVOKED);
        }
        None
    }
}

impl Worker {
    /// Walks the live sessions if the tables changed what is authenticated since the last walk
    /// (see the module doc), and closes those whose credential no longer holds.
    pub(super) fn recheck_sessions(&mut self) {
        let snap = self.node.tables.load_full();
        if snap.auth_epoch == self.creds.checked_epoch {
            return;
        }
        self.creds.checked_epoch = snap.auth_epoch;
        let now = unix_now().as_secs();
        let mut closing = std::mem::take(&mut self.creds.closing);
        closing.clear();
        for (slot, c) in &self.conns {
            if let (Some(a), None) = (&c.auth, c.closing)
                && let Some(code) = self.creds.refuse(slot, a, &snap, now)
            {
                closing.push((slot, code));
            }
        }
        for &(slot, code) in &closing {
            tracing::debug!(core = self.n, code = %code, "a live session's credential no longer holds");
            self.close_conn(slot, code, false, false);
        }
        self.creds.closing = closing;
    }

    /// Before fanning out a push that came with tables newer than those last walked.
    pub(super) fn recheck_for(&mut self, snap: &Snapshot) {
        if snap.auth_epoch != self.creds.checked_epoch {
            self.recheck_sessions();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use herald_protocol::link::{KeyEntry, RevocationEntry, Tables};

    use super::*;

    /// What one re-check walk costs per live session (the walk runs once per snapshot that
    /// moves `auth_epoch`, never per frame): `cargo test --release -p herald-gateway --lib
    /// worker::creds::tests::walk_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement; run it in release"]
    fn walk_cost() {
        const SESSIONS: usize = 100_000;
        let tables = Tables {
            version: 1,
            keys: vec![KeyEntry { key_id: 1, secret: [1; 32] }, KeyEntry { key_id: 2, secret: [2; 32] }],
            revocations: (0..10_000)
                .map(|i| RevocationEntry { user: format!("user-{i}"), all_before: 50, devices: vec![] })
                .collect(),
            groups: vec![],
        };
        let snap = Snapshot::from_tables(&tables);
        let mut creds = Creds::default();
        let sessions: Vec<Auth> = (0..SESSIONS)
            .map(|i| {
                creds.set(i, 1 + (i % 2) as u32, 100, u64::from(u32::MAX));
                Auth {
                    user: Arc::from(format!("user-{i}")),
                    device: Arc::from("phone"),
                    session_id: i as u64,
                    uid: i as u32,
                    ack_credit: 0,
                }
            })
            .collect();
        let started = Instant::now();
        let refused = sessions
            .iter()
            .enumerate()
            .filter(|(slot, a)| creds.refuse(*slot, a, &snap, 1_000).is_some())
            .count();
        let took = started.elapsed();
        assert_eq!(refused, 0);
        println!(
            "re-check walk: {SESSIONS} sessions in {took:?}, {:.0} ns per session",
            took.as_nanos() as f64 / SESSIONS as f64
        );
    }
}
