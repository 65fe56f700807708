//! Tables every core reads (signing keys, revocations, group → topics), published by the link
//! thread as immutable snapshots behind an atomic pointer swap: readers never block and never see
//! a half-applied change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use herald_protocol::credential::{KeySet, Revocations, SigningKey};
use herald_protocol::link::{TableChange, Tables};

/// One immutable version of the shared tables.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// 0 until the control plane sent its first `Tables`; logins are refused until then.
    pub(crate) version: u64,
    pub(crate) keys: KeySet,
    pub(crate) revocations: Revocations,
    /// group → topics its members follow.
    pub(crate) group_topics: HashMap<Box<str>, HashSet<Box<str>>>,
    /// topic → groups that follow it (the reverse of `group_topics`).
    pub(crate) topic_groups: HashMap<Box<str>, Vec<Box<str>>>,
    /// Moves (gateway-local, stamped by [`SharedTables::store`]) whenever a snapshot may
    /// invalidate a live session: a whole `Tables` (after a reconnect: what happened during a
    /// partition is only in there) or a delta that removes a key or adds a revocation. Each core
    /// re-checks its live sessions when it sees it move, and only then: a group change does
    /// not make cores walk their connections.
    pub(crate) auth_epoch: u64,
    /// Set by the constructors: whether this snapshot may refuse a credential the one before it
    /// accepted.
    auth_changed: bool,
}

impl Snapshot {
    pub(crate) fn from_tables(t: &Tables) -> Snapshot {
        let keys = KeySet::new(t.keys.iter().map(|k| SigningKey::new(k.key_id, k.secret)));
        let mut revocations = Revocations::default();
        for r in &t.revocations {
            apply_revocation(&mut revocations, r);
        }
        let group_topics = t
            .groups
            .iter()
            .map(|g| (g.group.as_str().into(), g.topics.iter().map(|s| s.as_str().into()).collect()))
            .collect();
        let mut s = Snapshot {
            version: t.version.max(1),
            keys,
            revocations,
            group_topics,
            topic_groups: HashMap::new(),
            auth_epoch: 0,
            auth_changed: true,
        };
        s.reindex();
        s
    }

    /// A new snapshot: this one with `changes` applied.
    pub(crate) fn with_changes(&self, changes: &[TableChange]) -> Snapshot {
        let mut s = Snapshot {
            version: self.version + 1,
            keys: self.keys.clone(),
            revocations: self.revocations.clone(),
            group_topics: self.group_topics.clone(),
            topic_groups: HashMap::new(),
            auth_epoch: 0,
            auth_changed: changes
                .iter()
                .any(|c| matches!(c, TableChange::KeyRemoved(_) | TableChange::Revoked(_))),
        };
        for c in changes {
            match c {
                TableChange::KeyAdded(k) => s.keys.insert(SigningKey::new(k.key_id, k.secret)),
                TableChange::KeyRemoved(id) => s.keys.remove(*id),
                TableChange::Revoked(r) => apply_revocation(&mut s.revocations, r),
                TableChange::Group(g) => {
                    s.group_topics.insert(
                        g.group.as_str().into(),
                        g.topics.iter().map(|t| t.as_str().into()).collect(),
                    );
                }
                TableChange::GroupRemoved(g) => {
                    s.group_topics.remove(g.as_str());
                }
                TableChange::RevocationRemoved(user) => s.revocations.forget(user),
            }
        }
        s.reindex();
        s
    }

    fn reindex(&mut self) {
        self.topic_groups.clear();
        for (g, topics) in &self.group_topics {
            for t in topics {
                self.topic_groups.entry(t.clone()).or_default().push(g.clone());
            }
        }
    }

    /// Whether members of `group` follow `topic`.
    pub(crate) fn group_has(&self, group: &str, topic: &str) -> bool {
        self.group_topics.get(group).is_some_and(|t| t.contains(topic))
    }

    /// Groups whose members follow `topic`.
    pub(crate) fn groups_of(&self, topic: &str) -> &[Box<str>] {
        self.topic_groups.get(topic).map_or(&[], Vec::as_slice)
    }
}

fn apply_revocation(r: &mut Revocations, e: &herald_protocol::link::RevocationEntry) {
    if e.all_before > 0 {
        r.revoke(&e.user, None, e.all_before);
    }
    for (d, t) in &e.devices {
        r.revoke(&e.user, Some(d), *t);
    }
}

/// The current snapshot, shared by the link thread (writer) and every core (readers).
#[derive(Debug, Default)]
pub(crate) struct SharedTables {
    current: ArcSwap<Snapshot>,
}

impl SharedTables {
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub(crate) fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes `s`, stamping its `auth_epoch`. Only the link thread stores, so reading the
    /// current epoch and storing its successor is not a race.
    pub(crate) fn store(&self, mut s: Snapshot) {
        s.auth_epoch = self.current.load().auth_epoch + u64::from(s.auth_changed);
        self.current.store(Arc::new(s));
    }
}
