//! A core's subscriber index: which of its own connections belong to a user, follow a topic
//! directly, or are members of a group. Owned by one core, so no locks; effective topics of a
//! connection are its user's direct topics plus the topics of its groups in the current tables
//! snapshot, so a group's topic change reaches the next push without touching the index.
//!
//! Memory is per connection, so it is kept compact: group and topic names are interned once per
//! core (a user holds `u32` ids), a name's followers are a `Vec<u32>` of user ids, and a user's
//! connection slots are inline while it has one (most users have one device).

use std::collections::HashMap;
use std::sync::Arc;

use herald_protocol::condition::Condition;
use slab::Slab;

use crate::intern::Interner;
use crate::tables::Snapshot;

/// A user's connection slots on this core: one inline, more on the heap.
#[derive(Debug)]
enum Slots {
    One([u32; 1]),
    Many(Vec<u32>),
}

impl Slots {
    fn as_slice(&self) -> &[u32] {
        match self {
            Slots::One(s) => s,
            Slots::Many(v) => v,
        }
    }

    fn push(&mut self, slot: u32) {
        match self {
            Slots::One([s]) => *self = Slots::Many(vec![*s, slot]),
            Slots::Many(v) => v.push(slot),
        }
    }

    /// Removes `slot`; true when none is left.
    fn remove(&mut self, slot: u32) -> bool {
        match self {
            Slots::One([s]) => *s == slot,
            Slots::Many(v) => {
                v.retain(|&s| s != slot);
                if let [only] = v[..] {
                    *self = Slots::One([only]);
                    return false;
                }
                v.is_empty()
            }
        }
    }
}

/// A user with at least one connection on this core.
#[derive(Debug)]
struct LocalUser {
    conns: Slots,
    /// Interned ids: the first `n_groups` are groups, the rest direct topics.
    follows: Box<[u32]>,
    n_groups: u32,
    /// The control plane's subscriptions for the user have arrived since it joined this core.
    synced: bool,
    /// Fan-out pass that last visited this user (dedupes users reached along several paths).
    mark: u64,
}

impl LocalUser {
    fn groups(&self) -> &[u32] {
        &self.follows[..self.n_groups as usize]
    }

    fn topics(&self) -> &[u32] {
        &self.follows[self.n_groups as usize..]
    }

    fn follows(&self, topic: &str, groups: &Names, topics: &Names, snap: &Snapshot) -> bool {
        self.topics().iter().any(|&t| topics.name(t) == topic)
            || self.groups().iter().any(|&g| snap.group_has(groups.name(g), topic))
    }
}

/// Group or topic names followed by this core's users, each held once, with the local ids of
/// the users following it; a name is forgotten with its last follower.
type Names = Interner<Vec<u32>>;

impl Names {
    fn users(&self, name: &str) -> &[u32] {
        self.id(name).map_or(&[], |id| self.get(id))
    }

    fn join(&mut self, id: u32, uid: u32) {
        self.get_mut(id).push(uid);
    }

    /// `uid` stops following `id`; the name is forgotten with its last follower.
    fn leave(&mut self, id: u32, uid: u32) {
        let users = self.get_mut(id);
        if let Some(i) = users.iter().position(|&u| u == uid) {
            users.swap_remove(i);
        }
        if users.is_empty() {
            self.forget(id);
        }
    }
}

/// What a user follows, as the control plane last said.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Follows<'a> {
    user: &'a LocalUser,
    groups: &'a Names,
    topics: &'a Names,
}

impl<'a> Follows<'a> {
    pub(crate) fn groups(self) -> impl Iterator<Item = &'a str> {
        self.user.groups().iter().map(move |&g| self.groups.name(g))
    }

    /// Direct topics.
    pub(crate) fn topics(self) -> impl Iterator<Item = &'a str> {
        self.user.topics().iter().map(move |&t| self.topics.name(t))
    }
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
    by_name: HashMap<Arc<str>, u32>,
    topics: Names,
    groups: Names,
    pass: u64,
}

impl Index {
    /// Registers a logged-in connection; returns its user's local id.
    pub(crate) fn add_conn(&mut self, user: &Arc<str>, slot: usize) -> u32 {
        let slot = slot as u32;
        if let Some(&uid) = self.by_name.get(user) {
            self.users[uid as usize].conns.push(slot);
            return uid;
        }
        let uid = self.users.insert(LocalUser {
            conns: Slots::One([slot]),
            follows: Box::default(),
            n_groups: 0,
            synced: false,
            mark: 0,
        }) as u32;
        self.by_name.insert(user.clone(), uid);
        uid
    }

    /// Unregisters a connection of `user` (local id `uid`); the user leaves the index with its
    /// last connection.
    pub(crate) fn remove_conn(&mut self, user: &str, uid: u32, slot: usize) {
        let Some(u) = self.users.get_mut(uid as usize) else { return };
        if !u.conns.remove(slot as u32) {
            return;
        }
        self.unindex(uid);
        self.users.remove(uid as usize);
        self.by_name.remove(user);
    }

    /// The user's connection slots, if it has connections here.
    pub(crate) fn user_conns(&self, user: &str) -> &[u32] {
        self.by_name.get(user).map_or(&[], |&uid| self.users[uid as usize].conns.as_slice())
    }

    /// A user's groups and direct topics; `None` until the control plane has sent them for its
    /// connections here (or when it has none).
    pub(crate) fn subscriptions(&self, user: &str) -> Option<Follows<'_>> {
        let u = &self.users[*self.by_name.get(user)? as usize];
        u.synced.then_some(Follows { user: u, groups: &self.groups, topics: &self.topics })
    }

    /// Replaces a user's groups and direct topics (no-op when it has no connection here).
    pub(crate) fn set_subscriptions(&mut self, user: &str, groups: &[String], topics: &[String]) {
        let Some(&uid) = self.by_name.get(user) else { return };
        self.unindex(uid);
        let mut ids: Vec<u32> = groups.iter().map(|g| self.groups.intern(g)).collect();
        ids.sort_unstable();
        ids.dedup();
        let n_groups = ids.len();
        ids.extend(topics.iter().map(|t| self.topics.intern(t)));
        ids[n_groups..].sort_unstable();
        let mut n = n_groups;
        for i in n_groups..ids.len() {
            if n == n_groups || ids[n - 1] != ids[i] {
                ids[n] = ids[i];
                n += 1;
            }
        }
        ids.truncate(n);
        for &g in &ids[..n_groups] {
            self.groups.join(g, uid);
        }
        for &t in &ids[n_groups..] {
            self.topics.join(t, uid);
        }
        let u = &mut self.users[uid as usize];
        u.synced = true;
        u.n_groups = n_groups as u32;
        u.follows = ids.into_boxed_slice();
    }

    fn unindex(&mut self, uid: u32) {
        let u = &mut self.users[uid as usize];
        let follows = std::mem::take(&mut u.follows);
        let n_groups = std::mem::take(&mut u.n_groups) as usize;
        for &g in &follows[..n_groups] {
            self.groups.leave(g, uid);
        }
        for &t in &follows[n_groups..] {
            self.topics.leave(t, uid);
        }
    }

    /// Local users following `topic`, directly or through a group.
    fn local_count(&self, topic: &str, snap: &Snapshot) -> usize {
        self.topics.users(topic).len()
            + snap.groups_of(topic).iter().map(|g| self.groups.users(g).len()).sum::<usize>()
    }

    /// Appends to `out` the connection slots `plan` reaches on this core (each slot once).
    /// `Plan::Device` yields the user's slots; the caller filters by device.
    pub(crate) fn collect(&mut self, plan: &Plan, snap: &Snapshot, out: &mut Vec<usize>) {
        self.pass += 1;
        let pass = self.pass;
        let Index { users, by_name, topics, groups, .. } = self;
        let mut visit = |uid: u32, out: &mut Vec<usize>| {
            let u = &mut users[uid as usize];
            if u.mark != pass {
                u.mark = pass;
                out.extend(u.conns.as_slice().iter().map(|&s| s as usize));
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
                for &uid in groups.users(g) {
                    visit(uid, out);
                }
            }
            Plan::Topic(t) => {
                for &uid in topics.users(t) {
                    visit(uid, out);
                }
                for g in snap.groups_of(t) {
                    for &uid in groups.users(g) {
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
        let Index { users, topics, groups, .. } = self;
        let mut check = |u: &mut LocalUser| {
            if u.mark == pass {
                return;
            }
            u.mark = pass;
            if c.eval(&mut |i| u.follows(&names[i], groups, topics, snap)) {
                out.extend(u.conns.as_slice().iter().map(|&s| s as usize));
            }
        };
        match cover {
            Some(cover) => {
                for i in cover {
                    let t = names[i].as_str();
                    let via_groups = snap.groups_of(t).iter().map(|g| groups.users(g));
                    for set in std::iter::once(topics.users(t)).chain(via_groups) {
                        for &uid in set {
                            check(&mut users[uid as usize]);
                        }
                    }
                }
            }
            None => {
                for (_, u) in users.iter_mut() {
                    check(u);
                }
            }
        }
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
        index.remove_conn("a", uid, 3);
        let mut out = Vec::new();
        index.collect(&Plan::Topic("t".into()), &snap, &mut out);
        assert!(out.is_empty() && index.by_name.is_empty() && index.topics.len() == 0);
        // The freed name id is reused.
        let uid = index.add_conn(&a, 4);
        index.set_subscriptions("a", &[], &["u".to_string(), "u".to_string()]);
        index.collect(&Plan::Topic("u".into()), &snap, &mut out);
        assert_eq!(out, [4]);
        assert_eq!(index.topics.capacity(), 1);
        index.remove_conn("a", uid, 4);
        assert!(index.users.is_empty() && index.topics.len() == 0);
    }
}
