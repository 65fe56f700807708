//! A failing store (issue #12 item 4): commits made to fail on purpose by a wrapper around the
//! real redb store, and (when this test may mount a filesystem) a real full disk. While commits
//! fail, writes answer 503 with a reason and `/healthz` is 503; once the fault clears the store
//! is reopened and the state reloaded from it without a restart: nothing the failed commit
//! changed in memory is in effect.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Admin, FakeGateway, config, eventually};
use herald_control_plane::store::{Op, RedbStore, Snapshot, Store, StoreError};
use herald_protocol::link::LinkMessage;
use serde_json::json;

/// The real store, whose commits (and reopens) fail while `fail` is set.
#[derive(Debug)]
struct FaultyStore {
    inner: RedbStore,
    fail: AtomicBool,
    /// Commits of more ops than this fail too (a disk that takes small writes only).
    fail_over_ops: AtomicUsize,
}

impl FaultyStore {
    fn new(dir: &std::path::Path) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner: RedbStore::open(dir).unwrap(),
            fail: AtomicBool::new(false),
            fail_over_ops: AtomicUsize::new(usize::MAX),
        })
    }
}

impl Store for FaultyStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }

    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) || ops.len() > self.fail_over_ops.load(Ordering::SeqCst) {
            return Err(StoreError::Db("injected fault: No space left on device".into()));
        }
        self.inner.commit(ops)
    }

    fn reopen(&self) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Db("injected fault: still failing".into()));
        }
        self.inner.reopen()
    }
}

fn healthz(admin: &Admin) -> u16 {
    admin.call("GET", "/healthz", None).0
}

fn metric(admin: &Admin, name: &str) -> u64 {
    let text = admin.text("/metrics");
    let line = text.lines().find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '));
    line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name}"))
}

#[test]
fn a_failed_commit_is_rolled_back_and_the_store_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(dir.path());
    let cp = herald_control_plane::start_with_store(config(dir.path()), store.clone()).unwrap();
    let admin = Admin::new(&cp);
    admin.token("alice", "phone");
    let before =
        admin.push(json!({"to": {"user": "alice"}, "payload": {"body": "1"}, "idempotency_key": "k1"}));
    assert_eq!(healthz(&admin), 200);

    // A push whose commit fails: 503 with a reason, health flips.
    store.fail.store(true, Ordering::SeqCst);
    let push_k2 = json!({"to": {"user": "alice"}, "payload": {"body": "2"}, "idempotency_key": "k2"});
    let (status, body) = admin.call("POST", "/v1/pushes", Some(push_k2.clone()));
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("store is failing"), "{body}");
    let (status, health) = admin.call("GET", "/healthz", None);
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["store"], "failing");
    assert_eq!(metric(&admin, "herald_cp_store_failing"), 1);
    assert!(metric(&admin, "herald_cp_store_errors_total") >= 1);
    // Refused at once while failing, memory untouched.
    let (status, body) = admin.call("PUT", "/v1/groups/g", Some(json!({"topics": ["t"]})));
    assert_eq!(status, 503, "{body}");

    // The fault clears: back to healthy without a restart.
    store.fail.store(false, Ordering::SeqCst);
    eventually("healthz back to 200", || (healthz(&admin) == 200).then_some(()));
    assert_eq!(metric(&admin, "herald_cp_store_failing"), 0);
    assert!(metric(&admin, "herald_cp_store_recoveries_total") >= 1);
    // The failed push's idempotency key was rolled back: a retry is a new push, not `replayed`.
    let v = admin.ok("POST", "/v1/pushes", push_k2);
    assert_eq!(v["replayed"], false, "{v}");
    let after = v["push_id"].as_u64().unwrap();
    assert!(after > before);
    admin.status(after);
    // What was durable before the fault is still there.
    admin.status(before);
    let v = admin.ok("POST", "/v1/pushes", json!({"to": {"user": "alice"}, "idempotency_key": "k1"}));
    assert_eq!((v["replayed"].clone(), v["push_id"].as_u64()), (json!(true), Some(before)));

    // A revocation whose commit fails is not in effect: a gateway connecting after the recovery
    // gets tables without it (and one connected during the fault is disconnected, to resync).
    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", Vec::new());
    gw.expect("tables", |m| matches!(m, LinkMessage::Tables(_)));
    assert_eq!(metric(&admin, "herald_cp_nodes"), 1);
    store.fail.store(true, Ordering::SeqCst);
    let (status, body) = admin.call("POST", "/v1/credentials/revoke", Some(json!({"user": "alice"})));
    assert_eq!(status, 503, "{body}");
    assert_eq!(healthz(&admin), 503);
    store.fail.store(false, Ordering::SeqCst);
    eventually("healthz back to 200", || (healthz(&admin) == 200).then_some(()));
    // The node's link was closed at the reload: the node is gone until it reconnects.
    assert_eq!(metric(&admin, "herald_cp_nodes"), 0);
    let closed = gw.drain(Duration::from_millis(100));
    assert!(gw.recv_within(Duration::from_secs(2)).is_none(), "link closed at the reload; got {closed:?}");
    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", Vec::new());
    let tables = gw.expect("tables", |m| matches!(m, LinkMessage::Tables(_)));
    let LinkMessage::Tables(t) = tables else { unreachable!() };
    assert!(t.revocations.iter().all(|r| r.user != "alice"), "{:?}", t.revocations);
    // And writes work again: the revocation, now durable.
    admin.ok("POST", "/v1/credentials/revoke", json!({"user": "alice"}));
    gw.expect("the revocation", |m| matches!(m, LinkMessage::TablesDelta(cs) if !cs.is_empty()));
}

#[test]
fn a_store_that_takes_small_writes_but_fails_pushes_does_not_reload_many_times_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(dir.path());
    let cp = herald_control_plane::start_with_store(config(dir.path()), store.clone()).unwrap();
    let admin = Admin::new(&cp);
    admin.token("alice", "phone");
    // The recovery's probe and reload write one op each; a push writes several.
    store.fail_over_ops.store(1, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let mut attempts = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let (status, v) = admin.call("POST", "/v1/pushes", Some(json!({"to": {"user": "alice"}})));
        assert_eq!(status, 503, "{v}");
        attempts += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let recoveries = metric(&admin, "herald_cp_store_recoveries_total");
    eprintln!("{attempts} pushes refused in 2.5 s, {recoveries} reloads");
    // Backoff carried over between failures: 50 + 100 + 200 + 400 + 800 ms... not one reload
    // (and gateway resync) per failed push.
    assert!(attempts >= 20, "{attempts}");
    assert!(recoveries <= 6, "{recoveries} reloads in 2.5 s");
    store.fail_over_ops.store(usize::MAX, Ordering::SeqCst);
    eventually("a push is accepted again", || {
        let (status, _) = admin.call("POST", "/v1/pushes", Some(json!({"to": {"user": "alice"}})));
        (status == 202).then_some(())
    });
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// None when this process may not mount (not root, no mount namespace): the caller skips.
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a small tmpfs for a real full disk ({}); the injected-fault test covers the logic",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e}); the injected-fault test covers the logic");
                None
            }
        }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes `max_bytes` to `path`, or less if the filesystem fills up first.
fn fill(path: &std::path::Path, max_bytes: usize) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 4096];
    let mut written = 0;
    while written < max_bytes {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n,
        }
    }
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_fails_writes_with_503_and_they_work_again_once_space_is_freed() {
    let Some(disk) = SmallDisk::mount("4m") else { return };
    let data = disk.path().join("data");
    let cp = herald_control_plane::start(config(&data)).unwrap();
    let admin = Admin::new(&cp);
    admin.token("alice", "phone");
    // About 1 MiB left: some pushes fit, then the disk is full.
    fill(&disk.path().join("filler"), 3 << 20);

    // Pushes of ~15 KB until one fails.
    let body = "x".repeat(15_000);
    let mut accepted = Vec::new();
    let mut failed_key = None;
    for i in 0..400 {
        let key = format!("k{i}");
        let push = json!({"to": {"user": "alice"}, "payload": {"body": body}, "idempotency_key": key});
        let (status, v) = admin.call("POST", "/v1/pushes", Some(push));
        match status {
            202 => accepted.push(v["push_id"].as_u64().unwrap()),
            503 => {
                assert!(v["error"].as_str().unwrap().contains("store is failing"), "{v}");
                failed_key = Some(key);
                break;
            }
            s => panic!("unexpected {s}: {v}"),
        }
    }
    let failed_key = failed_key.expect("a push failed once the disk was full");
    assert!(!accepted.is_empty());
    assert_eq!(healthz(&admin), 503);
    assert_eq!(metric(&admin, "herald_cp_store_failing"), 1);
    // Still failing while the disk is full: refused, not queued.
    let (status, _) = admin.call("PUT", "/v1/groups/g", Some(json!({"topics": ["t"]})));
    assert_eq!(status, 503);

    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let freed = std::time::Instant::now();
    eventually("healthz back to 200 once space is freed", || (healthz(&admin) == 200).then_some(()));
    eprintln!("healthy again {:?} after space was freed", freed.elapsed());
    // Without a restart: every accepted push is still there, the failed one is not.
    for id in &accepted {
        admin.status(*id);
    }
    let v = admin.ok("POST", "/v1/pushes", json!({"to": {"user": "alice"}, "idempotency_key": failed_key}));
    assert_eq!(v["replayed"], false, "{v}");
    admin.ok("PUT", "/v1/groups/g", json!({"topics": ["t"]}));
    eprintln!("{} pushes accepted before the disk was full", accepted.len());
    // And they were durable: a restart finds them.
    drop(cp);
    let cp = herald_control_plane::start(config(&data)).unwrap();
    let admin = Admin::new(&cp);
    for id in &accepted {
        admin.status(*id);
    }
    drop(cp);
}
