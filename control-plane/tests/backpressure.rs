//! A gateway node that stops reading: its link queue stays bounded, stored pushes all arrive
//! (in order per stream) once it reads again, and fire-and-forget pushes meanwhile are dropped
//! and counted.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Admin, FakeGateway, config, eventually, online};
use herald_protocol::link::LinkMessage;
use serde_json::json;

#[test]
fn a_stalled_node_falls_behind_then_resyncs_without_losing_stored_pushes() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.link_queue_messages = 8;
    // 800 pushes of 16 KB to one user: past the default inbox cap (4 MiB), which is not the
    // subject here.
    cfg.max_inbox_bytes_per_user = 64 << 20;
    let cp = herald_control_plane::start(cfg).unwrap();
    let admin = Admin::new(&cp);
    admin.token("alice", "phone");
    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![online("alice", "phone", 1, vec![])]);
    gw.expect("subscriptions", |m| matches!(m, LinkMessage::Subscriptions(_)));
    // The node stops reading; 16 KB pushes fill the socket buffers, then the queue.
    let big = "x".repeat(16_000);
    let stored: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (admin, big) = (Admin::new(&cp), big.clone());
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|_| {
                            admin.push(json!({"to": {"user": "alice"}, "payload": {"data": {"k": big}}, "ttl_secs": 60}))
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    eventually("the node falls behind", || (cp.metrics().link_queue_full.get() >= 1).then_some(()));
    let ff = admin.push(json!({"to": {"user": "alice"}, "ttl_secs": 0}));
    let st = admin.status(ff);
    assert_eq!((st["targeted"].as_u64(), st["dropped"].as_u64()), (Some(1), Some(1)), "{st}");
    assert_eq!(cp.metrics().fire_and_forget_dropped.get(), 1);

    // Reading again: every stored push arrives, first copies in sequence order.
    let want: BTreeSet<u64> = stored.iter().copied().collect();
    let mut got = BTreeSet::new();
    let mut seqs = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while got != want {
        let left = end.saturating_duration_since(Instant::now());
        let Some(m) = gw.recv_within(left) else {
            panic!("{} of {} stored pushes arrived", got.len(), want.len());
        };
        if let LinkMessage::Push(p) = m {
            assert_ne!(p.push_id, ff, "the dropped fire-and-forget push was not queued later");
            if got.insert(p.push_id) {
                seqs.push(p.seq);
            }
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order per stream kept: {seqs:?}");
    assert!(cp.metrics().link_resyncs.get() >= 1);
    // Caught up: live pushes flow again.
    let live = admin.push(json!({"to": {"user": "alice"}, "ttl_secs": 60}));
    gw.expect("a live push after the resync", |m| matches!(m, LinkMessage::Push(p) if p.push_id == live));
}
