//! Terminals' messages (MQTT PUBLISH and wills, as gateways forward them) against the real
//! control plane over the link: who may publish where, the answer once durable, the push that
//! follows, and delayed wills cancelled or pushed.

mod common;

use std::time::Duration;

use common::{Admin, FakeGateway, online, start};
use herald_protocol::link::{
    LinkMessage, Offline, PresenceChange, PublishOutcome, PublishRef, PushOrder, Target, TerminalPublish,
};
use herald_protocol::payload::PushPayload;
use serde_json::json;

fn message(user: &str, target: Target, body: &str, packet_id: Option<u16>) -> TerminalPublish {
    TerminalPublish {
        user: user.into(),
        device: "d".into(),
        target,
        body: body.into(),
        ttl_secs: None,
        reply: packet_id.map(|packet_id| PublishRef { core: 1, slot: 4, session_id: 9, packet_id }),
        will_delay_secs: None,
    }
}

fn body_of(p: &PushOrder) -> Option<String> {
    PushPayload::from_bytes(&p.payload).ok().and_then(|pl| pl.body)
}

/// The answer to `packet_id` and the live pushes sent before it (an accepted message is pushed
/// once durable, then answered).
fn result(gw: &mut FakeGateway, packet_id: u16) -> (PublishOutcome, Vec<PushOrder>) {
    let mut pushes = Vec::new();
    loop {
        match gw.recv_within(common::DEADLINE).expect("publish result") {
            LinkMessage::PublishResult(r) if r.reference.packet_id == packet_id => {
                assert_eq!((r.reference.core, r.reference.slot, r.reference.session_id), (1, 4, 9));
                return (r.outcome, pushes);
            }
            LinkMessage::Push(p) if !matches!(p.target, Target::Device { .. }) => pushes.push(p),
            _ => {}
        }
    }
}

fn push_with_body(gw: &mut FakeGateway, body: &str) -> PushOrder {
    let m = gw.expect("push", |m| matches!(m, LinkMessage::Push(p) if body_of(p).as_deref() == Some(body)));
    let LinkMessage::Push(p) = m else { unreachable!() };
    p
}

fn offline(user: &str, session: u64) -> LinkMessage {
    LinkMessage::Presence(vec![PresenceChange::Offline(Offline {
        user: user.into(),
        device: "d".into(),
        session_id: session,
        code: 0,
    })])
}

#[test]
fn terminals_publish_to_what_they_follow_and_get_an_answer_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    for u in ["alice", "bob"] {
        admin.token(u, "d");
    }
    admin.ok("PUT", "/v1/users/alice/groups", json!({"groups": ["fleet"]}));
    admin.ok("PUT", "/v1/users/bob/groups", json!({"groups": ["fleet"]}));
    admin.ok("PUT", "/v1/users/bob/topics", json!({"topics": ["news"]}));
    let mut gw = FakeGateway::connect(
        cp.link_addr(),
        "n1",
        vec![online("alice", "d", 1, vec![]), online("bob", "d", 2, vec![])],
    );
    gw.expect("subscriptions", |m| matches!(m, LinkMessage::Subscriptions(_)));

    // To a group alice belongs to: accepted, pushed to the group, stored with the default TTL.
    gw.send(LinkMessage::Publish(message("alice", Target::Group("fleet".into()), "hello fleet", Some(7))));
    let (PublishOutcome::Accepted { push_id }, pushes) = result(&mut gw, 7) else { panic!("refused") };
    let [p] = &pushes[..] else { panic!("one push before the answer: {pushes:?}") };
    assert_eq!((p.push_id, &p.target, p.ttl_secs), (push_id, &Target::Group("fleet".into()), 86_400));
    assert_eq!(body_of(p).as_deref(), Some("hello fleet"));
    let st = admin.status(push_id);
    assert_eq!(st["targeted"], 2, "{st}");

    // A topic bob follows and alice does not: refused for alice, accepted for bob; QoS 0 style
    // (TTL 0, no answer asked) reaches online followers only and is not stored.
    gw.send(LinkMessage::Publish(message("alice", Target::Topic("news".into()), "no", Some(8))));
    assert_eq!(result(&mut gw, 8), (PublishOutcome::NotAuthorized, vec![]));
    let mut live = message("bob", Target::Topic("news".into()), "breaking", None);
    live.ttl_secs = Some(0);
    gw.send(LinkMessage::Publish(live));
    let p = push_with_body(&mut gw, "breaking");
    assert_eq!((p.target, p.ttl_secs), (Target::Topic("news".into()), 0));
    // Inboxes and conditions are not publishable; a body over the payload limit is invalid.
    gw.send(LinkMessage::Publish(message("alice", Target::User("bob".into()), "x", Some(9))));
    assert_eq!(result(&mut gw, 9), (PublishOutcome::NotAuthorized, vec![]));
    let big = "x".repeat(17 * 1024);
    gw.send(LinkMessage::Publish(message("alice", Target::Group("fleet".into()), &big, Some(10))));
    assert_eq!(result(&mut gw, 10), (PublishOutcome::Invalid, vec![]));
    // A message expiry above the maximum TTL is lowered to it.
    let mut long = message("alice", Target::Group("fleet".into()), "long", Some(11));
    long.ttl_secs = Some(u32::MAX);
    gw.send(LinkMessage::Publish(long));
    let (outcome, pushes) = result(&mut gw, 11);
    assert!(matches!(outcome, PublishOutcome::Accepted { .. }), "{outcome:?}");
    assert_eq!(pushes.iter().map(|p| p.ttl_secs).collect::<Vec<_>>(), [28 * 86_400]);
}

#[test]
fn delayed_wills_wait_and_a_new_login_cancels_them() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    for u in ["carol", "dave", "erin"] {
        admin.token(u, "d");
        admin.ok("PUT", &format!("/v1/users/{u}/groups"), json!({"groups": ["fleet"]}));
    }
    let mut gw = FakeGateway::connect(
        cp.link_addr(),
        "n1",
        vec![online("carol", "d", 1, vec![]), online("dave", "d", 2, vec![]), online("erin", "d", 3, vec![])],
    );
    gw.expect("subscriptions", |m| matches!(m, LinkMessage::Subscriptions(_)));
    let will = |user: &str, delay: u32| {
        let mut w = message(user, Target::Group("fleet".into()), &format!("{user} is gone"), None);
        w.will_delay_secs = Some(delay);
        LinkMessage::Publish(w)
    };
    // carol's will waits 1 s and is pushed; dave logs in again within his 30 s: never pushed.
    gw.send(offline("carol", 1));
    gw.send(will("carol", 1));
    gw.send(offline("dave", 2));
    gw.send(will("dave", 30));
    gw.send(LinkMessage::Presence(vec![online("dave", "d", 4, vec![])]));
    let p = push_with_body(&mut gw, "carol is gone");
    assert_eq!(p.target, Target::Group("fleet".into()));
    // erin's will arrives after erin is back online (a newer session): dropped.
    gw.send(LinkMessage::Presence(vec![online("erin", "d", 5, vec![])]));
    gw.send(will("erin", 0));
    // A will without delay is pushed at once; it is the next will push on the link.
    gw.send(offline("carol", 0));
    gw.send(will("carol", 0));
    // (Backlog copies of carol's first will go to the devices logging in: `Device` targets.)
    let next = gw.expect("the next will", |m| {
        matches!(m, LinkMessage::Push(p) if !matches!(p.target, Target::Device { .. })
            && body_of(p).is_some_and(|b| b.ends_with("is gone")))
    });
    let LinkMessage::Push(p) = next else { unreachable!() };
    assert_eq!(body_of(&p).as_deref(), Some("carol is gone"));
    let text = admin.text("/metrics");
    assert!(text.contains("herald_cp_wills_published_total 2"), "{text}");
    assert!(text.contains("herald_cp_wills_cancelled_total 2"), "{text}");
    assert!(text.contains("herald_cp_pending_wills 0"), "{text}");
    // No push of dave's or erin's will shows up later either.
    let later = gw.drain(Duration::from_millis(300));
    assert!(
        later.iter().all(|m| !matches!(m, LinkMessage::Push(p)
            if body_of(p).is_some_and(|b| b.starts_with("dave") || b.starts_with("erin")))),
        "{later:?}"
    );
}
