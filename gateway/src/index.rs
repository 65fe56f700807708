//! A core's subscriber index: which of its own connections belong to a user, follow a topic
//! directly, or are members of a group. Owned by one core, so no locks; effective topics of a
//! connection are its user's direct topics plus the topics of its groups in the current tables
//! snapshot, so a group's topic change reaches the next push without touching the index.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_protocol::condition::Condition;
use slab::Slab;

use crate::tables::Snapshot;

/// A user with at least one connection on this core.
#[derive(Debug)]
struct LocalUser {
    name: Arc<str>,
    /// Slots of the user's connections on this core.
    conns: Vec<usize>,
    groups: Vec<Box<str>>,
    topics: Vec<Box<str>>,
    /// The control plane's subscriptions for the user have arrived since it joined this core.
    synced: bool,
    /// Fan-out pass that last visited this user (dedupes users reached along several paths).
    mark: u64,
}

impl LocalUser {
    fn follows(&self, topic: &str, snap: &Snapshot) -> bool {
        self.topics.iter().any(|t| &**t == topic) || self.groups.iter().any(|g| snap.group_has(g, topic))
    }
}

/// What a user follows, as the control plane last said.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Follows<'a> {
    pub(crate) groups: &'a [Box<str>],
    /// Direct topics.
    pub(crate) topics: &'a [Box<str>],
}

/// Who a push is for, prepared once per push per node.
#[derive(Debug)]
pub(crate) enum Plan {
    User(Box<str>),
    Users(Vec<Box<str>>),
    Device {
        user: Box<str>,
        device: Box<str>,
    },
    Group(Box<str>),
    Topic(Box<str>),
    Condition(Condition),
    /// A condition that does not parse: reaches nobody.
    Nobody,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    users: Slab<LocalUser>,
    by_name: HashMap<Arc<str>, usize>,
    topic_users: HashMap<Box<str>, HashSet<usize>>,
    group_users: HashMap<Box<str>, HashSet<usize>>,
    pass: u64,
}

impl Index {
    /// Registers a logged-in connection; returns its user's local id.
    pub(crate) fn add_conn(&mut self, user: &Arc<str>, slot: usize) -> usize {
        if let Some(&uid) = self.by_name.get(user) {
            self.users[uid].conns.push(slot);
            return uid;
        }
        let uid = self.users.insert(LocalUser {
            name: user.clone(),
            conns: vec![slot],
            groups: Vec::new(),
            topics: Vec::new(),
            synced: false,
            mark: 0,
        });
        self.by_name.insert(user.clone(), uid);
        uid
    }

    /// Unregisters a connection; the user leaves the index with its last connection.
    pub(crate) fn remove_conn(&mut self, uid: usize, slot: usize) {
        let Some(u) = self.users.get_mut(uid) else { return };
        u.conns.retain(|&s| s != slot);
        if !u.conns.is_empty() {
            return;
        }
        self.unindex(uid);
        let u = self.users.remove(uid);
        self.by_name.remove(&u.name);
    }

    /// The user's local id and connection slots, if it has connections here.
    pub(crate) fn user_conns(&self, user: &str) -> &[usize] {
        self.by_name.get(user).map_or(&[], |&uid| self.users[uid].conns.as_slice())
    }

    /// A user's groups and direct topics; `None` until the control plane has sent them for its
    /// connections here (or when it has none).
    pub(crate) fn subscriptions(&self, user: &str) -> Option<Follows<'_>> {
        let u = &self.users[*self.by_name.get(user)?];
        u.synced.then_some(Follows { groups: &u.groups, topics: &u.topics })
    }

    /// Replaces a user's groups and direct topics (no-op when it has no connection here).
    pub(crate) fn set_subscriptions(&mut self, user: &str, groups: &[String], topics: &[String]) {
        let Some(&uid) = self.by_name.get(user) else { return };
        self.unindex(uid);
        let u = &mut self.users[uid];
        u.synced = true;
        u.groups = groups.iter().map(|g| g.as_str().into()).collect();
        u.topics = topics.iter().map(|t| t.as_str().into()).collect();
        for g in &u.groups {
            self.group_users.entry(g.clone()).or_default().insert(uid);
        }
        for t in &u.topics {
            self.topic_users.entry(t.clone()).or_default().insert(uid);
        }
    }

    fn unindex(&mut self, uid: usize) {
        let u = &self.users[uid];
        for g in &u.groups {
            if let Some(set) = self.group_users.get_mut(g) {
                set.remove(&uid);
                if set.is_empty() {
                    self.group_users.remove(g);
                }
            }
        }
        for t in &u.topics {
            if let Some(set) = self.topic_users.get_mut(t) {
                set.remove(&uid);
                if set.is_empty() {
                    self.topic_users.remove(t);
                }
            }
        }
    }

    /// Local users following `topic`, directly or through a group.
    fn local_count(&self, topic: &str, snap: &Snapshot) -> usize {
        self.topic_users.get(topic).map_or(0, HashSet::len)
            + snap
                .groups_of(topic)
                .iter()
                .map(|g| self.group_users.get(g).map_or(0, HashSet::len))
                .sum::<usize>()
    }

    /// Appends to `out` the connection slots `plan` reaches on this core (each slot once).
    /// `Plan::Device` yields the user's slots; the caller filters by device.
    pub(crate) fn collect(&mut self, plan: &Plan, snap: &Snapshot, out: &mut Vec<usize>) {
        self.pass += 1;
        let pass = self.pass;
        let Index { users, by_name, topic_users, group_users, .. } = self;
        let mut visit = |uid: usize, out: &mut Vec<usize>| {
            let u = &mut users[uid];
            if u.mark != pass {
                u.mark = pass;
                out.extend_from_slice(&u.conns);
            }
        };
        match plan {
            Plan::User(name) | Plan::Device { user: name, .. } => {
                if let Some(&uid) = by_name.get(&**name) {
                    visit(uid, out);
                }
            }
            Plan::Users(names) => {
                for name in names {
                    if let Some(&uid) = by_name.get(&**name) {
                        visit(uid, out);
                    }
                }
            }
            Plan::Group(g) => {
                for &uid in group_users.get(g).into_iter().flatten() {
                    visit(uid, out);
                }
            }
            Plan::Topic(t) => {
                for &uid in topic_users.get(t).into_iter().flatten() {
                    visit(uid, out);
                }
                for g in snap.groups_of(t) {
                    for &uid in group_users.get(g).into_iter().flatten() {
                        visit(uid, out);
                    }
                }
            }
            Plan::Condition(c) => self.collect_condition(c, snap, out),
            Plan::Nobody => {}
        }
    }

    fn collect_condition(&mut self, c: &Condition, snap: &Snapshot, out: &mut Vec<usize>) {
        let names = c.topics();
        let cover = c.cover(&|i| self.local_count(&names[i], snap));
        let pass = self.pass;
        let Index { users, topic_users, group_users, .. } = self;
        match cover {
            Some(topics) => {
                for i in topics {
                    let t = names[i].as_str();
                    let via_groups = snap.groups_of(t).iter().filter_map(|g| group_users.get(g));
                    for set in topic_users.get(t).into_iter().chain(via_groups) {
                        for &uid in set {
                            check_condition(&mut users[uid], pass, c, snap, out);
                        }
                    }
                }
            }
            None => {
                for (_, u) in users.iter_mut() {
                    check_condition(u, pass, c, snap, out);
                }
            }
        }
    }
}

fn check_condition(u: &mut LocalUser, pass: u64, c: &Condition, snap: &Snapshot, out: &mut Vec<usize>) {
    if u.mark == pass {
        return;
    }
    u.mark = pass;
    let names = c.topics();
    if c.eval(&mut |i| u.follows(&names[i], snap)) {
        out.extend_from_slice(&u.conns);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use herald_protocol::link::{GroupTopics, Tables};
    use proptest::prelude::*;

    use super::*;

    const TOPICS: [&str; 5] = ["t0", "t1", "t2", "t3", "t4"];
    const GROUPS: [&str; 3] = ["g0", "g1", "g2"];

    fn condition() -> impl Strategy<Value = String> {
        let leaf = (0..TOPICS.len()).prop_map(|i| format!("'{}' in topics", TOPICS[i]));
        leaf.prop_recursive(4, 24, 3, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| format!("!({e})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
                (inner.clone(), inner).prop_map(|(a, b)| format!("({a} || {b})")),
            ]
        })
    }

    /// (groups, direct topics) per user, as bit sets over GROUPS / TOPICS.
    fn users() -> impl Strategy<Value = Vec<(u8, u8)>> {
        proptest::collection::vec((0u8..8, 0u8..32), 1..12)
    }

    fn names<const N: usize>(bits: u8, all: [&str; N]) -> Vec<String> {
        (0..N).filter(|i| bits & (1 << i) != 0).map(|i| all[i].to_string()).collect()
    }

    proptest! {
        /// Every target kind reaches exactly the connections a brute-force evaluation names.
        #[test]
        fn collect_matches_brute_force(
            users in users(),
            group_bits in proptest::collection::vec(0u8..32, 3),
            cond in condition(),
            topic in 0..TOPICS.len(),
            group in 0..GROUPS.len(),
        ) {
            let tables = Tables {
                version: 1,
                groups: GROUPS.iter().zip(&group_bits)
                    .map(|(g, &b)| GroupTopics { group: g.to_string(), topics: names(b, TOPICS) })
                    .collect(),
                ..Tables::default()
            };
            let snap = Snapshot::from_tables(&tables);
            let mut index = Index::default();
            // Two connections per user (slots 2u and 2u+1).
            for (u, &(gb, tb)) in users.iter().enumerate() {
                let name: Arc<str> = format!("u{u}").into();
                index.add_conn(&name, 2 * u);
                index.add_conn(&name, 2 * u + 1);
                index.set_subscriptions(&name, &names(gb, GROUPS), &names(tb, TOPICS));
            }
            let follows = |u: usize, t: &str| {
                let (gb, tb) = users[u];
                names(tb, TOPICS).iter().any(|x| x == t)
                    || names(gb, GROUPS).iter().any(|g| snap.group_has(g, t))
            };
            let expect = |pred: &dyn Fn(usize) -> bool| -> BTreeSet<usize> {
                (0..users.len()).filter(|&u| pred(u)).flat_map(|u| [2 * u, 2 * u + 1]).collect()
            };
            let mut run = |plan: &Plan| {
                let mut out = Vec::new();
                index.collect(plan, &snap, &mut out);
                let set: BTreeSet<usize> = out.iter().copied().collect();
                assert_eq!(set.len(), out.len(), "a connection was reached twice");
                set
            };
            let c = Condition::parse(&cond).unwrap();
            prop_assert_eq!(
                run(&Plan::Condition(c.clone())),
                expect(&|u| c.eval_names(|t| follows(u, t)))
            );
            prop_assert_eq!(run(&Plan::Topic(TOPICS[topic].into())), expect(&|u| follows(u, TOPICS[topic])));
            prop_assert_eq!(
                run(&Plan::Group(GROUPS[group].into())),
                expect(&|u| users[u].0 & (1 << group) != 0)
            );
            prop_assert_eq!(run(&Plan::User("u0".into())), expect(&|u| u == 0));
        }
    }

    #[test]
    fn last_connection_leaves_the_index() {
        let mut index = Index::default();
        let snap = Snapshot::default();
        let a: Arc<str> = "a".into();
        let uid = index.add_conn(&a, 3);
        index.set_subscriptions("a", &[], &["t".to_string()]);
        index.remove_conn(uid, 3);
        let mut out = Vec::new();
        index.collect(&Plan::Topic("t".into()), &snap, &mut out);
        assert!(out.is_empty() && index.by_name.is_empty() && index.topic_users.is_empty());
    }
}
