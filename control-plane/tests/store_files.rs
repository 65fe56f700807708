//! The store file at start (issue #12 items 5 and 12): an empty, truncated or overwritten
//! `herald.redb` is refused with a clear error (never a panic, never a fresh database with new
//! signing keys), and the data directory and its files are private.

mod common;

use std::path::Path;

use herald_control_plane::store::{MessageRecord, Op, RedbStore, Store, StoreError, UserRecord};

/// A store with enough records to span many pages, closed cleanly.
fn filled_store(dir: &Path) -> std::path::PathBuf {
    let store = RedbStore::open(dir).unwrap();
    for batch in 0..8u32 {
        let mut ops = Vec::new();
        for i in 0..50u32 {
            let seq = batch * 50 + i + 1;
            ops.push(Op::User(format!("user-{seq}"), UserRecord::default()));
            ops.push(Op::Message(
                1,
                seq,
                Some(MessageRecord {
                    push_id: u64::from(seq),
                    created_ms: 1,
                    expires_ms: 2,
                    flags: 1,
                    ttl_secs: 60,
                    collapse_key: None,
                    payload: vec![(seq % 251) as u8; 1500],
                }),
            ));
        }
        store.commit(&ops).unwrap();
    }
    assert_eq!(store.load().unwrap().messages.len(), 400);
    drop(store);
    dir.join("herald.redb")
}

/// Opens and reads the store as the control plane does at start.
fn open_and_load(dir: &Path) -> Result<(), StoreError> {
    let store = RedbStore::open(dir)?;
    store.load().map(drop)
}

fn assert_refused(r: Result<(), StoreError>, what: &str) {
    let e = r.expect_err(what);
    assert!(e.is_data_error(), "{what}: {e}");
    let text = e.to_string();
    assert!(text.contains("herald.redb"), "{what}: names the file: {text}");
    assert!(text.contains("refusing"), "{what}: says it refuses: {text}");
}

#[test]
fn an_empty_store_file_is_refused_not_replaced_by_a_fresh_database() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.redb");
    std::fs::write(&file, b"").unwrap();
    let e = RedbStore::open(dir.path()).expect_err("an empty file is refused");
    assert!(matches!(e, StoreError::Empty { .. }), "{e}");
    assert!(e.to_string().contains("is empty; refusing to start a new database"), "{e}");
    assert!(e.to_string().contains("delete it to start fresh"), "{e}");
    // Through the control plane's entry point too, and the file is left as it was.
    let err = herald_control_plane::start(common::config(dir.path())).expect_err("refused");
    assert!(matches!(err, herald_control_plane::Error::Store(StoreError::Empty { .. })), "{err}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
}

#[test]
fn a_store_truncated_to_half_is_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = filled_store(dir.path());
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    assert_refused(open_and_load(dir.path()), "truncated to half");
}

#[test]
fn a_store_with_overwritten_pages_is_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = filled_store(dir.path());
    let mut bytes = std::fs::read(&file).unwrap();
    // Every 4 KiB page after the header page gets pseudo-random bytes (xorshift, fixed seed).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in bytes.iter_mut().skip(4096) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&file, &bytes).unwrap();
    assert_refused(open_and_load(dir.path()), "random pages");
}

#[cfg(unix)]
#[test]
fn the_data_directory_is_0700_and_its_files_0600_and_looser_ones_are_tightened() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = tempfile::tempdir().unwrap();

    // Created private.
    let dir = root.path().join("new").join("data");
    let cfg = herald_control_plane::ControlPlaneConfig { admin_key: None, ..common::config(&dir) };
    let cp = herald_control_plane::start(cfg.clone()).unwrap();
    cp.shutdown();
    cp.join().unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("herald.redb")), 0o600);
    assert_eq!(mode(&dir.join("admin.key")), 0o600);

    // Loosened by hand (or an older version): tightened at the next start.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("herald.redb"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.join("admin.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let cp = herald_control_plane::start(cfg).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("herald.redb")), 0o600);
    assert_eq!(mode(&dir.join("admin.key")), 0o600);
    drop(cp);
}
