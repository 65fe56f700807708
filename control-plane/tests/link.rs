//! The link server against a fake gateway node over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::{Admin, FakeGateway, online, pushes, start};
use herald_protocol::frame::PushFlags;
use herald_protocol::link::{LinkMessage, PushOrder, StreamSeq, TableChange, Target};
use herald_protocol::payload::PushPayload;
use serde_json::json;

fn is_push(m: &LinkMessage) -> bool {
    matches!(m, LinkMessage::Push(_))
}

fn push_of(m: LinkMessage) -> PushOrder {
    match m {
        LinkMessage::Push(p) => p,
        other => panic!("not a push: {other:?}"),
    }
}

#[test]
fn hello_gets_welcome_then_tables() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    admin.ok("PUT", "/v1/groups/team", json!({"topics": ["t1", "t2"]}));
    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![]);
    let first = gw.recv_within(common::DEADLINE).unwrap();
    assert!(matches!(first, LinkMessage::Welcome(_)), "{first:?}");
    let LinkMessage::Tables(t) = gw.recv_within(common::DEADLINE).unwrap() else { panic!("tables expected") };
    assert_eq!(t.keys.len(), 1);
    assert!(t.groups.iter().any(|g| g.group == "team" && g.topics == ["t1", "t2"]));
    // Admin changes reach the node as deltas.
    admin.ok("PUT", "/v1/groups/ops", json!({"topics": ["x"]}));
    gw.expect("group delta", |m| {
        matches!(m, LinkMessage::TablesDelta(ch) if ch.iter().any(|c| matches!(c, TableChange::Group(g) if g.group == "ops")))
    });
    let rotated = admin.ok("POST", "/v1/keys/rotate", json!({}));
    let new_id = rotated["key_id"].as_u64().unwrap() as u32;
    gw.expect("key delta", |m| {
        matches!(m, LinkMessage::TablesDelta(ch) if ch.iter().any(|c| matches!(c, TableChange::KeyAdded(k) if k.key_id == new_id)))
    });
}

#[test]
fn offline_push_then_login_gets_subscriptions_then_backlog_and_ack_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    admin.token("alice", "phone");
    admin.ok("PUT", "/v1/users/alice/groups", json!({"groups": ["team"]}));
    let id = admin.push(json!({"to": {"user": "alice"}, "payload": {"title": "hi", "data": {"k": "v"}}, "ttl_secs": 60, "priority": "high"}));
    let st = admin.status(id);
    assert_eq!((st["targeted"].as_u64(), st["pending_offline"].as_u64()), (Some(1), Some(1)));

    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![online("alice", "phone", 7, vec![])]);
    let subs = gw.expect("subscriptions", |m| matches!(m, LinkMessage::Subscriptions(_)));
    let LinkMessage::Subscriptions(s) = subs else { unreachable!() };
    assert_eq!(s[0].user, "alice");
    assert_eq!(s[0].groups, ["team"]);
    let p = push_of(gw.expect("backlog", is_push));
    assert_eq!(p.target, Target::Device { user: "alice".into(), device: "phone".into() });
    assert_eq!(p.origin, Some(Target::User("alice".into())), "a backlog push names its first target");
    assert_eq!((p.push_id, p.seq), (id, 1));
    let flags = PushFlags(p.flags);
    assert!(flags.contains(PushFlags::ACK_REQUIRED) && flags.contains(PushFlags::HIGH_PRIORITY));
    let payload = PushPayload::from_bytes(&p.payload).unwrap();
    assert_eq!(payload.title.as_deref(), Some("hi"));
    assert_eq!(payload.push_id, id);

    gw.ack("alice", "phone", p.stream, 0, p.seq);
    let st = admin.wait_status(id, |v| v["delivered"] == 1);
    assert_eq!(st["pending_offline"], 0);
    assert_eq!(st["state"], "delivered");

    // Presence shows the device on the node.
    let (_, user) = admin.call("GET", "/v1/users/alice", None);
    assert_eq!(user["presence"][0]["device"], "phone");
    assert_eq!(user["presence"][0]["node"], "n1");
}

#[test]
fn pushes_reach_only_nodes_with_interested_connections_with_the_right_target() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    for (u, d) in [("alice", "a1"), ("bob", "b1")] {
        admin.token(u, d);
    }
    admin.ok("PUT", "/v1/users/alice/topics", json!({"topics": ["news"]}));
    admin.ok("PUT", "/v1/users/bob/groups", json!({"groups": ["team"]}));
    let mut n1 = FakeGateway::connect(cp.link_addr(), "n1", vec![online("alice", "a1", 1, vec![])]);
    let mut n2 = FakeGateway::connect(cp.link_addr(), "n2", vec![online("bob", "b1", 2, vec![])]);
    n1.expect("subs", |m| matches!(m, LinkMessage::Subscriptions(_)));
    n2.expect("subs", |m| matches!(m, LinkMessage::Subscriptions(_)));

    // bob-only pushes first, then one for alice: n1's next push must be alice's.
    let g = admin.push(json!({"to": {"group": "team"}, "ttl_secs": 60}));
    let p = push_of(n2.expect("group push", is_push));
    assert_eq!((p.push_id, p.target.clone()), (g, Target::Group("team".into())));
    let t = admin.push(json!({"to": {"topic": "team"}, "ttl_secs": 60}));
    let p = push_of(n2.expect("topic push via group", is_push));
    assert_eq!((p.push_id, p.target.clone()), (t, Target::Topic("team".into())));
    let u = admin.push(json!({"to": {"user": "alice"}, "ttl_secs": 60}));
    let p = push_of(n1.expect("user push", is_push));
    assert_eq!((p.push_id, p.target.clone()), (u, Target::User("alice".into())));
    let t = admin.push(json!({"to": {"topic": "news"}}));
    let p = push_of(n1.expect("topic push", is_push));
    assert_eq!((p.push_id, p.target.clone()), (t, Target::Topic("news".into())));
    let cond = "'news' in topics && !('team' in topics)";
    let c = admin.push(json!({"to": {"condition": cond}}));
    let p = push_of(n1.expect("condition push", is_push));
    assert_eq!((p.push_id, p.target.clone()), (c, Target::Condition(cond.into())));
    let us = admin.push(json!({"to": {"users": ["alice", "bob"]}}));
    let p1 = push_of(n1.expect("users push", is_push));
    let p2 = push_of(n2.expect("users push", is_push));
    assert_eq!((p1.push_id, p1.target), (us, Target::User("alice".into())));
    assert_eq!((p2.push_id, p2.target), (us, Target::User("bob".into())));
    assert_ne!(p1.stream, p2.stream, "one inbox stream per user");
    // n2 got nothing meant for alice in between.
    let rest = pushes(&n2.drain(Duration::from_millis(100))).iter().map(|p| p.push_id).collect::<Vec<_>>();
    assert!(rest.is_empty(), "{rest:?}");

    // TTL 0: no ACK_REQUIRED, and not stored (no backlog on a second device's login).
    let f = admin.push(json!({"to": {"user": "alice"}, "ttl_secs": 0}));
    let p = push_of(n1.expect("fire and forget", is_push));
    assert_eq!(p.push_id, f);
    assert!(!PushFlags(p.flags).contains(PushFlags::ACK_REQUIRED));
    assert_eq!(admin.status(f)["state"], "fire_and_forget");

    // Reports drive `sent` and `dropped`.
    n1.send(LinkMessage::Reports(vec![herald_protocol::link::PushReport {
        push_id: u,
        sent: 1,
        dropped: 0,
    }]));
    admin.wait_status(u, |v| v["sent"] == 1);
}

#[test]
fn group_change_while_online_sends_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    admin.token("carol", "c1");
    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![online("carol", "c1", 1, vec![])]);
    gw.expect("initial subs", |m| matches!(m, LinkMessage::Subscriptions(_)));
    admin.ok("PUT", "/v1/users/carol/groups", json!({"groups": ["new-group"]}));
    // The implicit group's table entry comes first, then the user's subscriptions.
    gw.expect("implicit group", |m| {
        matches!(m, LinkMessage::TablesDelta(ch) if ch.iter().any(|c| matches!(c, TableChange::Group(g) if g.group == "new-group" && g.topics == ["new-group"])))
    });
    let LinkMessage::Subscriptions(s) =
        gw.expect("changed subs", |m| matches!(m, LinkMessage::Subscriptions(_)))
    else {
        unreachable!()
    };
    assert_eq!(s[0].groups, ["new-group"]);
    // Revocation: a delta and a kick for the online user.
    admin.ok("POST", "/v1/credentials/revoke", json!({"user": "carol"}));
    gw.expect("kick", |m| matches!(m, LinkMessage::Kick(k) if k.user == "carol" && k.device.is_none()));
}

#[test]
fn ttl_expiry_collapse_and_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    admin.token("dave", "d1");
    let short = admin.push(json!({"to": {"user": "dave"}, "ttl_secs": 1}));
    let old = admin.push(json!({"to": {"user": "dave"}, "ttl_secs": 60, "collapse_key": "score"}));
    let new = admin.push(json!({"to": {"user": "dave"}, "ttl_secs": 60, "collapse_key": "score"}));
    assert_eq!(admin.status(old)["state"], "collapsed");
    assert_eq!(admin.status(old)["collapsed"], 1);
    let body = json!({"to": {"user": "dave"}, "ttl_secs": 60, "idempotency_key": "req-1"});
    let once = admin.push(body.clone());
    let (s, again) = admin.call("POST", "/v1/pushes", Some(body));
    assert_eq!(s, 202);
    assert_eq!(again["push_id"].as_u64(), Some(once));
    assert_eq!(again["replayed"], true);
    let st = admin.wait_status(short, |v| v["state"] == "expired");
    assert_eq!((st["expired"].as_u64(), st["pending_offline"].as_u64()), (Some(1), Some(0)));

    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![online("dave", "d1", 1, vec![])]);
    gw.expect("subs", |m| matches!(m, LinkMessage::Subscriptions(_)));
    let got: Vec<u64> = pushes(&gw.drain(Duration::from_millis(300))).iter().map(|p| p.push_id).collect();
    assert_eq!(got, vec![new, once], "expired, collapsed and replayed pushes are not delivered");
}

#[test]
fn restart_mid_stream_keeps_backlog_and_never_redelivers_acked() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c);
    {
        let cp = start(dir.path());
        let admin = Admin::new(&cp);
        admin.token("erin", "e1");
        admin.ok("PUT", "/v1/users/erin/topics", json!({"topics": ["sport"]}));
        let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![online("erin", "e1", 1, vec![])]);
        gw.expect("subs", |m| matches!(m, LinkMessage::Subscriptions(_)));
        a = admin.push(json!({"to": {"topic": "sport"}, "ttl_secs": 60}));
        b = admin.push(json!({"to": {"topic": "sport"}, "ttl_secs": 60}));
        c = admin.push(json!({"to": {"user": "erin"}, "ttl_secs": 60}));
        let pa = push_of(gw.expect("a", is_push));
        assert_eq!(pa.push_id, a);
        gw.ack("erin", "e1", pa.stream, 0, pa.seq);
        admin.wait_status(a, |v| v["delivered"] == 1);
        drop(gw);
    }
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    assert_eq!(admin.status(a)["delivered"], 1);
    let d = admin.push(json!({"to": {"topic": "sport"}, "ttl_secs": 60}));
    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![online("erin", "e1", 2, vec![])]);
    gw.expect("subs", |m| matches!(m, LinkMessage::Subscriptions(_)));
    let got = gw.drain(Duration::from_millis(300));
    let got: Vec<(u64, u32)> = pushes(&got).iter().map(|p| (p.push_id, p.seq)).collect();
    let mut ids: Vec<u64> = got.iter().map(|g| g.0).collect();
    ids.sort();
    assert_eq!(ids, vec![b, c, d], "acked {a} must not come again: {got:?}");
    // Per stream in order: sport's b (seq 2) before d (seq 3).
    let pos = |id| got.iter().position(|g| g.0 == id).unwrap();
    assert!(pos(b) < pos(d));
    // A resume position counts as an acknowledgement.
    drop(gw);
    let sport_stream = {
        let mut gw2 = FakeGateway::connect(cp.link_addr(), "n2", vec![online("erin", "e1", 3, vec![])]);
        let msgs = gw2.drain(Duration::from_millis(300));
        pushes(&msgs).iter().find(|p| p.push_id == d).unwrap().stream
    };
    let mut gw3 = FakeGateway::connect(
        cp.link_addr(),
        "n3",
        vec![online("erin", "e1", 4, vec![StreamSeq { stream: sport_stream, seq: 3 }])],
    );
    let msgs = gw3.drain(Duration::from_millis(300));
    let ids: Vec<u64> = pushes(&msgs).iter().map(|p| p.push_id).collect();
    assert_eq!(ids, vec![c], "sport is resumed up to seq 3");
    admin.wait_status(d, |v| v["delivered"] == 1);
}

#[test]
fn node_disconnect_marks_its_devices_offline() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    admin.token("fay", "f1");
    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![online("fay", "f1", 1, vec![])]);
    gw.expect("subs", |m| matches!(m, LinkMessage::Subscriptions(_)));
    drop(gw);
    let end = std::time::Instant::now() + common::DEADLINE;
    loop {
        let (_, v) = admin.call("GET", "/v1/users/fay", None);
        if v["presence"].as_array().is_some_and(|p| p.is_empty()) {
            break;
        }
        assert!(std::time::Instant::now() < end, "still online: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of a metric line `name value` in the control plane's metrics text.
fn metric(admin: &Admin, name: &str) -> u64 {
    let text = admin.text("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn a_second_link_with_a_node_id_in_use_is_refused_and_the_first_keeps_its_link() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    let mut first = FakeGateway::connect(cp.link_addr(), "twin", vec![]);
    first.expect("welcome", |m| matches!(m, LinkMessage::Welcome(_)));
    first.expect("tables", |m| matches!(m, LinkMessage::Tables(_)));
    let mut second = FakeGateway::connect(cp.link_addr(), "twin", vec![]);
    let refused = second.expect("refused", |m| matches!(m, LinkMessage::Refused(_)));
    let LinkMessage::Refused(reason) = refused else { unreachable!() };
    assert!(reason.contains("twin") && reason.contains("already connected"), "{reason}");
    assert_eq!(second.recv_within(Duration::from_secs(2)), None, "the refused link is closed");
    assert_eq!(metric(&admin, "herald_cp_link_refused_total"), 1);
    // The first link was not replaced: it still gets what the node is sent.
    admin.ok("PUT", "/v1/groups/after", json!({"topics": ["x"]}));
    first.expect("group delta on the first link", |m| {
        matches!(m, LinkMessage::TablesDelta(ch) if ch.iter().any(|c| matches!(c, TableChange::Group(g) if g.group == "after")))
    });
    assert_eq!(metric(&admin, "herald_cp_nodes"), 1);
    assert_eq!(metric(&admin, "herald_cp_link_connects_total"), 1);
    // Once the first link is gone the id is free again.
    drop(first);
    let mut again = FakeGateway::connect(cp.link_addr(), "twin", vec![]);
    again.expect("welcome after the first left", |m| matches!(m, LinkMessage::Welcome(_)));
}

#[test]
fn a_silent_node_is_dropped_within_the_deadline_and_a_live_one_keeps_its_link() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path());
    cfg.link_heartbeat_secs = 1;
    cfg.link_dead_after_secs = 2;
    let cp = herald_control_plane::start(cfg).unwrap();
    let admin = Admin::new(&cp);
    // Connects, says Hello, then never reads nor writes again (a stopped or vanished node).
    let silent = FakeGateway::connect(cp.link_addr(), "silent", vec![]);
    let mut live = FakeGateway::connect(cp.link_addr(), "live", vec![]);
    let start = Instant::now();
    common::eventually("both nodes connected", || (metric(&admin, "herald_cp_nodes") == 2).then_some(()));
    // The live node answers the heartbeats it gets (FakeGateway does) for 4 s: twice the deadline.
    let mut heartbeats_answered = live.drain(Duration::from_millis(4_000));
    heartbeats_answered.retain(|m| !matches!(m, LinkMessage::Welcome(_) | LinkMessage::Tables(_)));
    assert!(heartbeats_answered.is_empty(), "{heartbeats_answered:?}");
    let end = Instant::now() + Duration::from_secs(5);
    while metric(&admin, "herald_cp_nodes") != 1 {
        assert!(Instant::now() < end, "the silent node was never dropped");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(start.elapsed() < Duration::from_secs(9));
    assert!(metric(&admin, "herald_cp_link_timeouts_total") >= 1);
    let (_, nodes) = admin.call("GET", "/v1/nodes", None);
    assert!(nodes.to_string().contains("live") && !nodes.to_string().contains("silent"), "{nodes}");
    drop(silent);
}

#[test]
fn a_snapshot_over_the_frame_limit_reaches_a_node_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    // 100 groups × 10,000 topics: within the API's limits, ~25 MB of snapshot.
    for g in 0..100 {
        let topics: Vec<String> = (0..10_000).map(|t| format!("group-{g}-topic-{t:05}")).collect();
        admin.ok("PUT", &format!("/v1/groups/group-{g}"), json!({ "topics": topics }));
    }
    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![]);
    gw.expect("welcome", |m| matches!(m, LinkMessage::Welcome(_)));
    let mut tables = herald_protocol::link::Tables::default();
    let mut parts = 0;
    loop {
        match gw.expect("tables", |m| matches!(m, LinkMessage::Tables(_) | LinkMessage::TablesPart(_))) {
            LinkMessage::TablesPart(t) => {
                parts += 1;
                tables.extend(t);
            }
            LinkMessage::Tables(t) => {
                tables.extend(t);
                break;
            }
            _ => unreachable!(),
        }
    }
    assert!(parts >= 1, "a snapshot this large comes in parts");
    assert_eq!(tables.keys.len(), 1);
    assert_eq!(tables.groups.len(), 100);
    assert!(tables.groups.iter().all(|g| g.topics.len() == 10_000));
    assert_eq!(metric(&admin, "herald_cp_link_encode_failures_total"), 0);
}
