//! Caps on what the control plane holds in memory for messages waiting for their recipients:
//! bytes per user inbox and bytes over every stream. Everything stored is also in memory (the
//! backlog is served from it), so these caps bound both.
//!
//! A push that would take a stream past its cap is **refused** with `507 Insufficient Storage`
//! and a reason naming the cap, rather than dropping older messages to make room: a `202` keeps
//! meaning "delivered or expired, never silently lost", and the application server (which knows
//! whether the new message or the old ones matter) decides what to do. This is EMQX's
//! `max_mqueue_len` with `mqueue_store_qos0 = false` taken one step further — the sender learns
//! at once instead of the oldest message being discarded — and plays the role of Centrifugo's
//! per-channel `history_size`. A message's bytes are charged when it is accepted (so a burst
//! cannot overshoot while its commits are in flight) and given back when it leaves (acknowledged
//! by every recipient, expired, collapsed) — see `Core::accept_push`, `Core::publish`,
//! `Core::drop_message`.

use super::Core;
use crate::api::ApiError;
use crate::store::{MessageRecord, PushRecord, TargetSpec};

/// What one stored message costs beyond its payload and collapse key: the record itself, its
/// `BTreeMap` slot, its expiry entry (an estimate; it only has to be proportional).
const MESSAGE_OVERHEAD_BYTES: u64 = 128;

/// What one push record costs beyond its strings: the record, its map slot and prune entry
/// (425 B measured per TTL-0 push in issue #12, strings included).
const RECORD_OVERHEAD_BYTES: u64 = 320;

/// Most prune entries looked at to make room for one push record (bounds the time a full
/// record table can add to one request).
const MAX_EVICTION_SCAN: usize = 4096;

/// The caps (see the crate docs for the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Bytes of undelivered messages one user's inbox (`u:USER`) may hold.
    pub max_inbox_bytes_per_user: u64,
    /// Bytes of undelivered messages every stream together may hold.
    pub max_stored_bytes: u64,
    /// How long a TTL-0 push's record (its status) is kept after it was accepted.
    pub fire_and_forget_record_retention_ms: u64,
    /// Bytes of push records (status, idempotency key) kept; past it the records of expired
    /// pushes are pruned early, oldest first, and if that is not enough the push is refused.
    pub max_push_record_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_inbox_bytes_per_user: u64::MAX,
            max_stored_bytes: u64::MAX,
            fire_and_forget_record_retention_ms: u64::MAX,
            max_push_record_bytes: u64::MAX,
        }
    }
}

/// Memory a push record is charged for.
pub(super) fn record_cost(p: &PushRecord) -> u64 {
    request_record_cost(&p.target, p.idempotency_key.as_deref(), p.collapse_key.as_deref(), p.messages.len())
}

/// [`record_cost`] of the record a request will make, before it is made.
pub(super) fn request_record_cost(
    target: &TargetSpec,
    idempotency_key: Option<&str>,
    collapse_key: Option<&str>,
    messages: usize,
) -> u64 {
    let target = match target {
        TargetSpec::User(s) | TargetSpec::Group(s) | TargetSpec::Topic(s) | TargetSpec::Condition(s) => {
            s.len()
        }
        TargetSpec::Users(us) => us.iter().map(|u| u.len() + 24).sum(),
    };
    // The idempotency key is held twice: in the record and in the key index.
    let keys = idempotency_key.map_or(0, |k| 2 * k.len()) + collapse_key.map_or(0, str::len);
    RECORD_OVERHEAD_BYTES + (target + keys + messages * 8) as u64
}

/// Memory a stored message is charged for.
pub(super) fn message_cost(m: &MessageRecord) -> u64 {
    m.payload.len() as u64 + m.collapse_key.as_ref().map_or(0, |k| k.len() as u64) + MESSAGE_OVERHEAD_BYTES
}

impl Core {
    /// Sets the caps; until called there are none (unit tests of other rules).
    /// TTL-0 records loaded from the store are rescheduled with the new retention.
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        let ttl0: Vec<(u64, u64)> = self
            .pushes
            .values()
            .filter(|p| p.ttl_secs == 0)
            .map(|p| (self.prune_at(0, p.created_ms, p.expires_ms), p.id))
            .collect();
        for (at, id) in ttl0 {
            // An id due twice is pruned once (`prune_pushes` skips ids already gone).
            self.prunes.entry(at).or_default().push(id);
        }
    }

    /// Bytes held by stored messages, every stream together.
    #[cfg(test)]
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// Whether a message of `cost` bytes fits in each of `streams` (named) and overall;
    /// otherwise the `507` the API answers.
    pub(super) fn check_room(&self, streams: &[String], cost: u64) -> Result<(), ApiError> {
        let total = cost.saturating_mul(streams.len() as u64);
        if self.stored_bytes.saturating_add(total) > self.limits.max_stored_bytes {
            self.metrics.pushes_refused_full.inc();
            return Err(ApiError::insufficient_storage(format!(
                "the control plane holds {} bytes of undelivered messages (max_stored_bytes {}); \
                     retry once recipients have acknowledged or messages expired",
                self.stored_bytes, self.limits.max_stored_bytes
            )));
        }
        for name in streams.iter().filter(|n| n.starts_with("u:")) {
            let held = self.stream_ids.get(name).and_then(|id| self.streams.get(id)).map_or(0, |st| st.bytes);
            if held.saturating_add(cost) > self.limits.max_inbox_bytes_per_user {
                self.metrics.pushes_refused_full.inc();
                return Err(ApiError::insufficient_storage(format!(
                    "the inbox of user {} is full: {held} bytes of undelivered messages \
                         (max_inbox_bytes_per_user {}); retry once the user's devices have \
                         acknowledged or messages expired",
                    &name[2..],
                    self.limits.max_inbox_bytes_per_user
                )));
            }
        }
        Ok(())
    }

    /// Makes room for a push record of `cost` bytes: past `max_push_record_bytes`, the records
    /// of pushes that have expired are pruned early, soonest-due first (their `GET` answers 404
    /// "pruned", as after their retention); if that is not enough, the `507` the API answers.
    pub(super) fn make_record_room(&mut self, cost: u64, now_ms: u64) -> Result<(), ApiError> {
        let max = self.limits.max_push_record_bytes;
        if self.record_bytes.saturating_add(cost) <= max {
            return Ok(());
        }
        let mut freed = 0u64;
        let mut early = Vec::new();
        'scan: for ids in self.prunes.values().take(MAX_EVICTION_SCAN) {
            for &id in ids {
                if let Some(p) = self.pushes.get(&id)
                    && (p.expires_ms <= now_ms || p.ttl_secs == 0)
                    && !self.pending.contains_key(&id)
                {
                    freed += record_cost(p);
                    early.push(id);
                    if self.record_bytes.saturating_sub(freed).saturating_add(cost) <= max {
                        break 'scan;
                    }
                }
            }
        }
        if !early.is_empty() {
            // Due now: `prune_pushes` deletes them (and skips their later entries).
            self.prunes.entry(0).or_default().extend(early);
            self.prune_pushes(now_ms);
        }
        if self.record_bytes.saturating_add(cost) <= max {
            return Ok(());
        }
        self.metrics.pushes_refused_full.inc();
        Err(ApiError::insufficient_storage(format!(
            "the control plane holds {} bytes of push records of pushes that have not expired \
             (max_push_record_bytes {}); retry once some have expired",
            self.record_bytes, max
        )))
    }

    /// Charges `cost` bytes to stream `id`.
    pub(super) fn charge(&mut self, id: u32, cost: u64) {
        if let Some(st) = self.streams.get_mut(&id) {
            st.bytes += cost;
            self.stored_bytes += cost;
        }
    }

    /// Gives back `cost` bytes charged to stream `id`.
    pub(super) fn release(&mut self, id: u32, cost: u64) {
        if let Some(st) = self.streams.get_mut(&id) {
            let cost = cost.min(st.bytes);
            st.bytes -= cost;
            self.stored_bytes = self.stored_bytes.saturating_sub(cost);
        }
    }

    /// When a push record is pruned: TTL 0 (nothing to report past "sent") after
    /// `fire_and_forget_record_retention_ms`, others `retention_ms` after they expired.
    pub(super) fn prune_at(&self, ttl_secs: u32, created_ms: u64, expires_ms: u64) -> u64 {
        if ttl_secs == 0 {
            created_ms.saturating_add(self.limits.fire_and_forget_record_retention_ms.min(self.retention_ms))
        } else {
            expires_ms.saturating_add(self.retention_ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Accepted, NewPush};
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::{Op, Snapshot, TargetSpec};

    fn core(limits: Limits) -> Core {
        let mut c = Core::load(Snapshot::default(), Arc::new(Metrics::default()), 1, 1_000, [1; 32], 60_000);
        c.set_limits(limits);
        c
    }

    fn push(
        c: &mut Core,
        target: TargetSpec,
        ttl_secs: u32,
        collapse: Option<&str>,
    ) -> Result<u64, ApiError> {
        push_at(c, target, ttl_secs, collapse, 1_000_000)
    }

    fn push_at(
        c: &mut Core,
        target: TargetSpec,
        ttl_secs: u32,
        collapse: Option<&str>,
        now_ms: u64,
    ) -> Result<u64, ApiError> {
        let req = NewPush {
            target,
            title: None,
            body: Some("b".repeat(1000)),
            data: Vec::new(),
            ttl_secs,
            high_priority: false,
            collapse_key: collapse.map(str::to_owned),
            idempotency_key: None,
        };
        let Accepted::New { push_id, .. } = c.accept_push(req, now_ms)? else { panic!("replayed") };
        c.publish(&[push_id]);
        Ok(push_id)
    }

    #[test]
    fn bytes_are_charged_at_acceptance_and_given_back_when_messages_leave() {
        let mut c = core(Limits { max_inbox_bytes_per_user: 4_000, ..Limits::default() });
        c.issue_credential("u", "d", 60, 1_000).unwrap();
        push(&mut c, TargetSpec::User("u".into()), 60, Some("k")).unwrap();
        let one = c.stored_bytes();
        assert!(one > 1_000, "{one}");
        // Collapsed: the older message's bytes are given back.
        push(&mut c, TargetSpec::User("u".into()), 60, Some("k")).unwrap();
        assert_eq!(c.stored_bytes(), one);
        push(&mut c, TargetSpec::User("u".into()), 60, None).unwrap();
        push(&mut c, TargetSpec::User("u".into()), 60, None).unwrap();
        // (Those two carry no collapse key: one byte less each.)
        assert_eq!(c.stored_bytes(), 3 * one - 2);
        let refused = push(&mut c, TargetSpec::User("u".into()), 60, None).unwrap_err();
        assert_eq!(refused.status(), axum::http::StatusCode::INSUFFICIENT_STORAGE);
        // TTL 0 is never stored, and other users have their own inbox.
        push(&mut c, TargetSpec::User("u".into()), 0, None).unwrap();
        push(&mut c, TargetSpec::Users(vec!["v".into()]), 60, None).unwrap();
        assert_eq!(c.stored_bytes(), 4 * one - 3);
        // Acknowledged by the only device: gone, bytes back; expired: gone too.
        let stream = c.stream_ids["u:u"];
        let ops_before = c.take_ops().len();
        assert!(ops_before > 0);
        c.ack("u", "d", stream, 0, u32::MAX);
        assert_eq!(c.stored_bytes(), one - 1);
        // Three records changed by the acks are written once each.
        let writes = c.take_ops().iter().filter(|o| matches!(o, Op::Push(_))).count();
        assert_eq!(writes, 3);
        c.sweep(1_000_000 + 61_000);
        assert_eq!(c.stored_bytes(), 0);
        push(&mut c, TargetSpec::User("u".into()), 60, None).unwrap();
    }

    #[test]
    fn push_records_are_bounded_in_bytes_expired_ones_go_first() {
        let one = request_record_cost(&TargetSpec::Topic("t".into()), None, None, 1);
        let mut c = core(Limits { max_push_record_bytes: 10 * one, ..Limits::default() });
        let expired: Vec<u64> =
            (0..5).map(|_| push(&mut c, TargetSpec::Topic("t".into()), 1, None).unwrap()).collect();
        let live: Vec<u64> =
            (0..5).map(|_| push(&mut c, TargetSpec::Topic("t".into()), 600, None).unwrap()).collect();
        // Full. Once the first five have expired, each new push prunes one of them early (the
        // sweeper would keep them `retention_ms`, 60 s here).
        c.sweep(1_002_000);
        assert!(expired.iter().all(|id| !c.was_pruned(*id)));
        for (i, old) in expired.iter().enumerate() {
            push_at(&mut c, TargetSpec::Topic("t".into()), 600, None, 1_002_000).unwrap();
            assert!(c.was_pruned(*old), "push {i}: the oldest expired record made room");
            assert_eq!(c.pushes.len(), 10);
        }
        // Only unexpired records left: refused, and they are all still there.
        let refused = push_at(&mut c, TargetSpec::Topic("t".into()), 600, None, 1_002_000).unwrap_err();
        assert_eq!(refused.status(), axum::http::StatusCode::INSUFFICIENT_STORAGE);
        assert!(refused.reason().contains("max_push_record_bytes"), "{}", refused.reason());
        assert!(live.iter().all(|id| c.push_status(*id, 1_001_000).is_some()));
    }

    #[test]
    fn fire_and_forget_records_are_pruned_after_their_own_retention() {
        let mut c = core(Limits { fire_and_forget_record_retention_ms: 5_000, ..Limits::default() });
        let ttl0 = push(&mut c, TargetSpec::Topic("t".into()), 0, None).unwrap();
        let stored = push(&mut c, TargetSpec::Topic("t".into()), 1, None).unwrap();
        c.sweep(1_000_000 + 4_000);
        assert!(c.push_status(ttl0, 1_004_000).is_some());
        c.sweep(1_000_000 + 5_000);
        assert!(c.push_status(ttl0, 1_005_000).is_none() && c.was_pruned(ttl0));
        // A stored push keeps its record `retention_ms` (60 s here) after it expired.
        c.sweep(1_000_000 + 1_000 + 59_000);
        assert!(c.push_status(stored, 1_060_000).is_some());
        c.sweep(1_000_000 + 1_000 + 60_000);
        assert!(c.push_status(stored, 1_061_000).is_none());
    }
}
