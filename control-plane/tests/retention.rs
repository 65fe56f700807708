//! Retention over a real store in a temp dir: expired messages leave memory and the store in
//! batched commits, push records and idempotency keys are deleted once their retention after
//! expiry is over, and push ids stay monotonic across a restart after that.

mod common;

use std::sync::{Arc, Mutex};

use common::{Admin, config, eventually};
use herald_control_plane::store::{Op, RedbStore, Snapshot, Store, StoreError};
use serde_json::json;

/// A store that records, per commit, how many message and push deletions it carried.
#[derive(Debug)]
struct Recording {
    inner: RedbStore,
    commits: Mutex<Vec<(usize, usize)>>,
}

impl Store for Recording {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }

    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let messages = ops.iter().filter(|o| matches!(o, Op::Message(_, _, None))).count();
        let pushes = ops.iter().filter(|o| matches!(o, Op::PushRemoved(_))).count();
        self.commits.lock().unwrap().push((messages, pushes));
        self.inner.commit(ops)
    }
}

#[test]
fn expired_messages_and_pruned_pushes_leave_in_batches_and_ids_stay_monotonic() {
    const N: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Recording { inner: RedbStore::open(dir.path()).unwrap(), commits: Mutex::new(Vec::new()) });
    let mut cfg = config(dir.path());
    cfg.push_record_retention_secs = 1;
    let cp = herald_control_plane::start_with_store(cfg, store.clone()).unwrap();
    let admin = Admin::new(&cp);
    admin.token("u", "d");
    let ids: Vec<u64> = (0..N)
        .map(|i| admin.push(json!({"to": {"user": "u"}, "ttl_secs": 1, "idempotency_key": format!("k{i}")})))
        .collect();
    let (first, last) = (ids[0], ids[ids.len() - 1]);
    // Counted as expired while the record is retained.
    let st = admin.wait_status(first, |v| v["state"] == "expired");
    assert_eq!((st["expired"].as_u64(), st["pending_offline"].as_u64()), (Some(1), Some(0)), "{st}");
    // Then pruned: 404 with a reason.
    let reason = eventually("the last push is pruned", || {
        let (s, v) = admin.call("GET", &format!("/v1/pushes/{last}"), None);
        (s == 404).then_some(v)
    });
    assert!(reason["error"].as_str().unwrap().contains("pruned"), "{reason}");
    for id in &ids {
        assert_eq!(admin.call("GET", &format!("/v1/pushes/{id}"), None).0, 404);
    }
    let (s, v) = admin.call("GET", "/v1/pushes/999999", None);
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("unknown"), "{v}");
    let commits = store.commits.lock().unwrap().clone();
    let (msg_deletes, push_deletes): (usize, usize) =
        commits.iter().fold((0, 0), |(m, p), (dm, dp)| (m + dm, p + dp));
    assert_eq!((msg_deletes, push_deletes), (N as usize, N as usize));
    let batches = |pick: fn(&(usize, usize)) -> usize| commits.iter().filter(|c| pick(c) > 0).count();
    assert!(batches(|c| c.0) <= 8, "expired messages deleted in {} commits", batches(|c| c.0));
    assert!(batches(|c| c.1) <= 8, "push records deleted in {} commits", batches(|c| c.1));

    // The idempotency key was pruned with its push: the retry is a new push.
    let (s, again) = admin.call(
        "POST",
        "/v1/pushes",
        Some(json!({"to": {"user": "u"}, "ttl_secs": 60, "idempotency_key": "k0"})),
    );
    assert_eq!((s, again["replayed"].as_bool()), (202, Some(false)), "{again}");
    let retry = again["push_id"].as_u64().unwrap();
    assert!(retry > last);
    drop(admin);
    drop(cp);
    drop(store);
    let snap = RedbStore::open(dir.path()).unwrap().load().unwrap();
    assert!(snap.messages.iter().all(|(_, _, m)| m.push_id == retry), "expired messages left the store");
    assert_eq!(snap.pushes.iter().map(|p| p.id).collect::<Vec<_>>(), vec![retry]);
    assert!(snap.last_push_id >= last);

    let cp = common::start(dir.path());
    let admin = Admin::new(&cp);
    let (s, v) = admin.call("GET", &format!("/v1/pushes/{first}"), None);
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("pruned"), "{v}");
    assert_eq!(admin.status(retry)["targeted"], 1);
    let next = admin.push(json!({"to": {"user": "u"}, "ttl_secs": 60}));
    assert!(next > retry, "push ids stay monotonic: {next} after {retry}");
}
