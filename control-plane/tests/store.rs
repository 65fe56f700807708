//! The redb store on a real temp dir: what is committed survives the store being dropped and
//! reopened.

use std::collections::BTreeMap;

use herald_control_plane::store::{
    CursorRecord, DeviceRecord, KeyRecord, MessageRecord, Op, PushRecord, RedbStore, RevocationRecord, Store,
    StreamRecord, TargetSpec, UserRecord,
};

#[test]
fn committed_records_survive_reopen_and_deletes_stick() {
    let dir = tempfile::tempdir().unwrap();
    let user = UserRecord {
        groups: vec!["g".into()],
        topics: vec!["t".into()],
        since: BTreeMap::from([("t:t".to_owned(), 3)]),
        devices: BTreeMap::from([("d".to_owned(), DeviceRecord { registered_pos: 1, offline_pos: 2 })]),
    };
    let msg = |push_id| MessageRecord {
        push_id,
        created_ms: 10,
        expires_ms: 20,
        flags: 1,
        ttl_secs: 10,
        collapse_key: Some("c".into()),
        payload: vec![9; 100],
    };
    let push = PushRecord {
        id: 5,
        created_ms: 10,
        expires_ms: 20,
        ttl_secs: 10,
        target: TargetSpec::Condition("'a' in topics".into()),
        messages: vec![(1, 1)],
        targeted: 3,
        sent: 2,
        delivered: 1,
        dropped: 0,
        collapsed: false,
        collapse_key: None,
        idempotency_key: Some("idem".into()),
    };
    {
        let store = RedbStore::open(dir.path()).unwrap();
        store
            .commit(&[
                Op::User("alice".into(), user.clone()),
                Op::Group("g".into(), vec!["t".into()]),
                Op::Key(KeyRecord {
                    id: 1,
                    secret: [7; 32],
                    created_secs: 1,
                    max_expires_at: 9,
                    current: true,
                    withdrawn_secs: None,
                }),
                Op::Key(KeyRecord {
                    id: 2,
                    secret: [8; 32],
                    created_secs: 1,
                    max_expires_at: 9,
                    current: false,
                    withdrawn_secs: Some(5),
                }),
                Op::Revocation(
                    "bob".into(),
                    RevocationRecord { all_before: 4, devices: BTreeMap::new(), covers_until: 0 },
                ),
                Op::Stream(StreamRecord { id: 1, name: "u:alice".into(), head: 2 }),
                Op::Message(1, 1, Some(msg(5))),
                Op::Message(1, 2, Some(msg(6))),
                Op::Push(push.clone()),
                Op::Cursor {
                    user: "alice".into(),
                    device: "d".into(),
                    stream: 1,
                    cursor: CursorRecord { cursor: 1, above: vec![3] },
                },
            ])
            .unwrap();
        store.commit(&[Op::Message(1, 2, None), Op::KeyRemoved(2)]).unwrap();
    }
    let store = RedbStore::open(dir.path()).unwrap();
    let s = store.load().unwrap();
    assert_eq!(s.users, vec![("alice".to_owned(), user)]);
    assert_eq!(s.groups, vec![("g".to_owned(), vec!["t".to_owned()])]);
    assert_eq!(s.keys.iter().map(|k| k.id).collect::<Vec<_>>(), vec![1]);
    assert_eq!(s.keys[0].secret, [7; 32]);
    assert_eq!(s.revocations[0].1.all_before, 4);
    assert_eq!(s.streams[0].head, 2);
    assert_eq!(s.messages, vec![(1, 1, msg(5))]);
    assert_eq!(s.pushes, vec![push]);
    assert_eq!(s.cursors, vec![("alice".into(), "d".into(), 1, CursorRecord { cursor: 1, above: vec![3] })]);
}

#[test]
fn empty_store_loads_empty_and_a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let s = store.load().unwrap();
    assert!(s.users.is_empty() && s.pushes.is_empty() && s.messages.is_empty());
    assert!(RedbStore::open(dir.path()).is_err(), "redb holds an exclusive lock");
}
