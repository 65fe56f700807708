//! Messages from terminals (MQTT PUBLISH and wills, forwarded by gateways as
//! [`TerminalPublish`]): checked and turned into ordinary pushes.
//!
//! Rules, the same whichever gateway forwarded the message:
//! - A user may publish to a `Topic` it follows (directly or through a group) and to a `Group`
//!   it belongs to; anything else is `NotAuthorized`. The push reaches every follower, the
//!   publishing device included (as an MQTT broker delivers to a publisher subscribed to its own
//!   topic).
//! - The body, TTL and size limits are an admin push's: a body over the API's payload limit is
//!   `Invalid`; a TTL above `max_ttl_secs` is lowered to it (a message expiry is a wish, not a
//!   contract); no TTL = `default_ttl_secs`.
//! - A will with a delay waits here, in memory, until the delay has passed; the device logging
//!   in again before then cancels it (MQTT 5 will delay). A control-plane restart forgets waiting
//!   wills (EMQX keeps them in memory too); a will without delay is pushed at once.

use std::collections::BTreeSet;

use herald_protocol::link::{PublishOutcome, Target, TerminalPublish};

use super::{Accepted, Core, NewPush};
use crate::store::TargetSpec;

/// A will waiting for its delay.
#[derive(Debug)]
pub(crate) struct WaitingWill {
    due_ms: u64,
    publish: TerminalPublish,
    default_ttl_secs: u32,
    max_ttl_secs: u32,
}

/// Waiting wills, one per device (a newer will of a device replaces its older one).
#[derive(Debug, Default)]
pub(crate) struct Wills {
    by_device: std::collections::HashMap<(String, String), WaitingWill>,
    due: BTreeSet<(u64, String, String)>,
}

impl Wills {
    pub(crate) fn len(&self) -> usize {
        self.by_device.len()
    }

    fn insert(&mut self, w: WaitingWill) {
        let key = (w.publish.user.clone(), w.publish.device.clone());
        self.cancel(&key.0, &key.1);
        self.due.insert((w.due_ms, key.0.clone(), key.1.clone()));
        self.by_device.insert(key, w);
    }

    /// Forgets `(user, device)`'s waiting will; whether there was one.
    fn cancel(&mut self, user: &str, device: &str) -> bool {
        let key = (user.to_owned(), device.to_owned());
        match self.by_device.remove(&key) {
            Some(w) => {
                self.due.remove(&(w.due_ms, key.0, key.1));
                true
            }
            None => false,
        }
    }

    fn take_due(&mut self, now_ms: u64) -> Vec<WaitingWill> {
        let mut out = Vec::new();
        while let Some(first) = self.due.first().filter(|(due, _, _)| *due <= now_ms).cloned() {
            self.due.remove(&first);
            if let Some(w) = self.by_device.remove(&(first.1, first.2)) {
                out.push(w);
            }
        }
        out
    }
}

/// What a terminal's message became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Published {
    /// A push; durable once its job commits (publish it then).
    Push(u64),
    /// A will, waiting for its delay; or dropped because its device is online again.
    Waiting,
}

impl Core {
    /// Checks a terminal's message and accepts it as a push (or keeps a delayed will). The
    /// caller submits the queued ops with `publish: [push_id]` for `Published::Push`.
    pub(crate) fn terminal_publish(
        &mut self,
        p: TerminalPublish,
        default_ttl_secs: u32,
        max_ttl_secs: u32,
        now_ms: u64,
    ) -> Result<Published, PublishOutcome> {
        if let Err(e) = self.may_publish(&p) {
            self.metrics.terminal_publishes_refused.inc();
            return Err(e);
        }
        // The will of a connection whose device has logged in again since (the gateway sends
        // the will after the Offline, so an Online seen here is newer).
        if p.will_delay_secs.is_some() && self.online.contains_key(&(p.user.clone(), p.device.clone())) {
            self.metrics.wills_cancelled.inc();
            return Ok(Published::Waiting);
        }
        if let Some(delay) = p.will_delay_secs.filter(|&d| d > 0) {
            let due_ms = now_ms.saturating_add(u64::from(delay) * 1000);
            self.wills.insert(WaitingWill { due_ms, publish: p, default_ttl_secs, max_ttl_secs });
            self.metrics.pending_wills.set(self.wills.len() as u64);
            return Ok(Published::Waiting);
        }
        let will = p.will_delay_secs.is_some();
        let id = self.accept_terminal(p, default_ttl_secs, max_ttl_secs, now_ms)?;
        if will {
            self.metrics.wills_published.inc();
        }
        Ok(Published::Push(id))
    }

    fn may_publish(&self, p: &TerminalPublish) -> Result<(), PublishOutcome> {
        let allowed = match &p.target {
            Target::Topic(t) => self.users.get(&p.user).is_some_and(|u| u.effective.contains(t)),
            Target::Group(g) => self.group_members.get(g).is_some_and(|m| m.contains(&p.user)),
            _ => false,
        };
        if allowed { Ok(()) } else { Err(PublishOutcome::NotAuthorized) }
    }

    fn accept_terminal(
        &mut self,
        p: TerminalPublish,
        default_ttl_secs: u32,
        max_ttl_secs: u32,
        now_ms: u64,
    ) -> Result<u64, PublishOutcome> {
        if p.body.len() > crate::api::MAX_PAYLOAD_BYTES {
            return Err(PublishOutcome::Invalid);
        }
        let target = match p.target {
            Target::Topic(t) => TargetSpec::Topic(t),
            Target::Group(g) => TargetSpec::Group(g),
            _ => return Err(PublishOutcome::NotAuthorized),
        };
        let req = NewPush {
            target,
            title: None,
            body: Some(p.body),
            data: Vec::new(),
            ttl_secs: p.ttl_secs.unwrap_or(default_ttl_secs).min(max_ttl_secs),
            high_priority: false,
            collapse_key: None,
            idempotency_key: None,
        };
        match self.accept_push(req, now_ms) {
            Ok(Accepted::New { push_id, .. } | Accepted::Existing { push_id }) => {
                self.metrics.terminal_publishes.inc();
                Ok(push_id)
            }
            // A full inbox or store: the terminal may send it again later.
            Err(e) if e.status().is_server_error() => Err(PublishOutcome::Unavailable),
            Err(_) => Err(PublishOutcome::Invalid),
        }
    }

    /// The device logged in again: its waiting will is not pushed.
    pub(super) fn cancel_will(&mut self, user: &str, device: &str) {
        if self.wills.cancel(user, device) {
            self.metrics.wills_cancelled.inc();
            self.metrics.pending_wills.set(self.wills.len() as u64);
        }
    }

    /// Pushes the wills whose delay has passed; returns the push ids to publish once durable.
    pub(crate) fn due_wills(&mut self, now_ms: u64) -> Vec<u64> {
        let due = self.wills.take_due(now_ms);
        if due.is_empty() {
            return Vec::new();
        }
        self.metrics.pending_wills.set(self.wills.len() as u64);
        let mut ids = Vec::with_capacity(due.len());
        for w in due {
            // Checked again: the user may have left the group or topic since.
            if self.may_publish(&w.publish).is_err() {
                self.metrics.terminal_publishes_refused.inc();
                continue;
            }
            if let Ok(id) = self.accept_terminal(w.publish, w.default_ttl_secs, w.max_ttl_secs, now_ms) {
                self.metrics.wills_published.inc();
                ids.push(id);
            }
        }
        ids
    }
}
