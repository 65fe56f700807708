//! Caps on what the control plane holds in memory (issue #12 item 10), over the real admin
//! socket and link: a full inbox and a full store answer `507` with a reason and take pushes
//! again once messages leave; TTL-0 push records leave after their own short retention; a
//! store that falls behind makes the admin API answer `429` instead of queueing without bound.

mod common;

use std::sync::{Arc, Condvar, Mutex};

use common::{Admin, DEADLINE, FakeGateway, config, eventually, online, pushes};
use herald_control_plane::store::{Op, RedbStore, Snapshot, Store, StoreError};
use serde_json::{Value, json};

/// A 1 KiB body.
fn body() -> String {
    "x".repeat(1024)
}

/// Posts pushes built by `req` until one is refused (at most `max`); the accepted count and the
/// refusal.
fn fill(admin: &Admin, max: usize, req: impl Fn() -> Value) -> (usize, u16, Value) {
    for n in 0..max {
        let (s, v) = admin.call("POST", "/v1/pushes", Some(req()));
        if s != 202 {
            return (n, s, v);
        }
    }
    panic!("{max} pushes accepted, no cap reached");
}

#[test]
fn a_full_inbox_answers_507_with_a_reason_until_its_messages_are_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_inbox_bytes_per_user = 16 * 1024;
    let cp = herald_control_plane::start(cfg).unwrap();
    let admin = Admin::new(&cp);
    admin.token("u", "d");
    admin.token("v", "d");

    let (accepted, status, refusal) =
        fill(&admin, 100, || json!({"to": {"user": "u"}, "payload": {"body": body()}, "ttl_secs": 600}));
    // 16 KiB holds a dozen 1 KiB messages (each also pays for its record), not a hundred.
    assert!((8..=16).contains(&accepted), "{accepted} accepted");
    assert_eq!(status, 507, "{refusal}");
    let reason = refusal["error"].as_str().unwrap();
    assert!(
        reason.contains("inbox of user u is full") && reason.contains("max_inbox_bytes_per_user"),
        "{reason}"
    );
    // Another user's inbox is not affected; a TTL-0 push (never stored) still goes.
    admin.push(json!({"to": {"user": "v"}, "payload": {"body": body()}, "ttl_secs": 600}));
    admin.push(json!({"to": {"user": "u"}, "payload": {"body": body()}, "ttl_secs": 0}));
    let metrics = admin.text("/metrics");
    assert!(metrics.contains("herald_cp_pushes_refused_full_total 1"), "{metrics}");

    // The device comes online, gets its backlog and acknowledges it: the inbox has room again.
    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![online("u", "d", 1, vec![])]);
    let mut got = Vec::new();
    let end = std::time::Instant::now() + DEADLINE;
    while got.len() < accepted && std::time::Instant::now() < end {
        let msgs = gw.drain(std::time::Duration::from_millis(200));
        got.extend(pushes(&msgs).iter().filter(|p| p.ttl_secs > 0).map(|p| (p.stream, p.seq)));
    }
    assert_eq!(got.len(), accepted, "backlog {got:?}");
    let (stream, last) = (got[0].0, got.iter().map(|g| g.1).max().unwrap());
    gw.ack("u", "d", stream, 0, last);
    eventually("the inbox takes pushes again", || {
        let (s, _) = admin.call(
            "POST",
            "/v1/pushes",
            Some(json!({"to": {"user": "u"}, "payload": {"body": body()}, "ttl_secs": 600})),
        );
        (s == 202).then_some(())
    });
}

#[test]
fn the_stored_bytes_cap_answers_507_for_group_and_topic_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_stored_bytes = 32 * 1024;
    let cp = herald_control_plane::start(cfg).unwrap();
    let admin = Admin::new(&cp);
    let (accepted, status, refusal) =
        fill(&admin, 100, || json!({"to": {"topic": "news"}, "payload": {"body": body()}, "ttl_secs": 600}));
    assert!((16..=32).contains(&accepted), "{accepted} accepted");
    assert_eq!(status, 507, "{refusal}");
    assert!(refusal["error"].as_str().unwrap().contains("max_stored_bytes"), "{refusal}");
    let (s, v) = admin.call(
        "POST",
        "/v1/pushes",
        Some(json!({"to": {"group": "g"}, "payload": {"body": body()}, "ttl_secs": 1})),
    );
    assert_eq!(s, 507, "{v}");
    // A refused push took no id: the next accepted one follows the last accepted one.
    let last = admin.status(accepted as u64)["push_id"].as_u64();
    assert_eq!(last, Some(accepted as u64));
    assert_eq!(admin.call("GET", &format!("/v1/pushes/{}", accepted + 1), None).0, 404);
}

#[test]
fn fire_and_forget_push_records_leave_after_their_own_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.fire_and_forget_record_retention_secs = 1;
    let cp = herald_control_plane::start(cfg).unwrap();
    let admin = Admin::new(&cp);
    admin.token("u", "d");
    let ttl0 = admin.push(json!({"to": {"user": "u"}, "payload": {"body": "now or never"}, "ttl_secs": 0}));
    let kept = admin.push(json!({"to": {"user": "u"}, "payload": {"body": "later"}, "ttl_secs": 1}));
    assert_eq!(admin.call("GET", &format!("/v1/pushes/{ttl0}"), None).0, 200);
    let reason = eventually("the TTL-0 record is pruned", || {
        let (s, v) = admin.call("GET", &format!("/v1/pushes/{ttl0}"), None);
        (s == 404).then_some(v)
    });
    assert!(reason["error"].as_str().unwrap().contains("pruned"), "{reason}");
    // A push with a TTL keeps its record for push_record_retention_secs after it expired.
    let st = admin.wait_status(kept, |v| v["state"] == "expired");
    assert_eq!(st["push_id"].as_u64(), Some(kept));
}

/// A store whose commits wait while the gate is shut.
#[derive(Debug)]
struct Gated {
    inner: RedbStore,
    /// (open, a commit is waiting at the shut gate)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Gated {
    /// A store in `dir` with its gate open.
    fn open(dir: &std::path::Path) -> Arc<Gated> {
        Arc::new(Gated {
            inner: RedbStore::open(dir).unwrap(),
            state: Mutex::new((true, false)),
            changed: Condvar::new(),
        })
    }

    fn set(&self, open: bool) {
        self.state.lock().unwrap().0 = open;
        self.changed.notify_all();
    }

    /// Waits (bounded) until a commit is stuck at the shut gate.
    fn wait_stuck(&self) {
        let st = self.state.lock().unwrap();
        let (st, _) = self.changed.wait_timeout_while(st, DEADLINE, |s| !s.1).unwrap();
        assert!(st.1, "no commit reached the store");
    }
}

impl Store for Gated {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }

    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut st = self.state.lock().unwrap();
        if !st.0 {
            st.1 = true;
            self.changed.notify_all();
        }
        // Bounded: a test that forgets to open the gate fails instead of hanging.
        let (mut st, _) = self.changed.wait_timeout_while(st, DEADLINE * 2, |s| !s.0).unwrap();
        st.1 = false;
        drop(st);
        self.inner.commit(ops)
    }
}

#[test]
fn a_store_that_falls_behind_makes_the_api_answer_429_instead_of_queueing_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = Gated::open(dir.path());
    let mut cfg = config(dir.path());
    // Any one job fills the queue while the store is stuck.
    cfg.commit_queue_bytes = 1;
    let cp = herald_control_plane::start_with_store(cfg, store.clone()).unwrap();
    let admin = Admin::new(&cp);
    admin.token("u", "d");
    store.set(false);
    let push = json!({"to": {"user": "u"}, "ttl_secs": 60});
    std::thread::scope(|s| {
        // This push's commit is stuck behind the gate: the queue is over its bound.
        let first = s.spawn(|| {
            // (A 429 here means the sweeper's own job was still queued: try again.)
            eventually("a push gets past the bound", || {
                let (s, v) = Admin::new(&cp).call("POST", "/v1/pushes", Some(push.clone()));
                (s != 429).then_some((s, v))
            })
        });
        store.wait_stuck();
        let (status, refusal) = admin.call("POST", "/v1/pushes", Some(push.clone()));
        assert_eq!(status, 429, "{refusal}");
        assert!(refusal["error"].as_str().unwrap().contains("store is behind"), "{refusal}");
        // Not even an admin change that would not store a message gets in.
        assert_eq!(admin.call("PUT", "/v1/users/w/groups", Some(json!({"groups": ["g"]}))).0, 429);
        store.set(true);
        let (s, v) = first.join().unwrap();
        assert_eq!(s, 202, "{v}");
    });
    eventually("writes are taken again", || {
        let (s, _) = admin.call("POST", "/v1/pushes", Some(push.clone()));
        (s == 202).then_some(())
    });
    // Both refusals counted (more if a retry above met the queue busy again: the bound is 1 B).
    let metrics = admin.text("/metrics");
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_cp_commit_queue_full_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(refused >= 2, "{metrics}");
}

#[test]
fn while_the_store_is_behind_the_link_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Gated::open(dir.path());
    let mut cfg = config(dir.path());
    cfg.commit_queue_bytes = 1;
    let cp = herald_control_plane::start_with_store(cfg, store.clone()).unwrap();
    store.set(false);
    // A device the control plane has never seen: recording it is a store change, stuck at the gate.
    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![online("u", "new-device", 1, vec![])]);
    store.wait_stuck();
    gw.ack("u", "new-device", 1, 1, 1);
    // Not read while the store is behind. (An absence can only be watched for a while.)
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(cp.metrics().receipts.get(), 0, "a receipt was read while the store was behind");
    store.set(true);
    eventually("the receipt is read once the store caught up", || {
        (cp.metrics().receipts.get() == 1).then_some(())
    });
}
