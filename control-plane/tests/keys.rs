//! `POST /v1/keys/{id}/withdraw` over the real admin socket, with a fake gateway on the link:
//! the key leaves the tables at once, the signing key is replaced first, the answer is
//! idempotent, unknown keys are 404, and all of it survives a restart.

mod common;

use common::{Admin, FakeGateway, start};
use herald_protocol::credential;
use herald_protocol::link::{LinkMessage, TableChange};
use serde_json::json;

fn tables_keys(gw: &mut FakeGateway) -> Vec<u32> {
    match gw.expect("tables", |m| matches!(m, LinkMessage::Tables(_))) {
        LinkMessage::Tables(t) => t.keys.iter().map(|k| k.key_id).collect(),
        _ => unreachable!(),
    }
}

fn key_of(token: &str) -> u32 {
    credential::peek(token).unwrap().key_id
}

#[test]
fn a_withdrawn_key_leaves_the_tables_at_once_and_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![]);
    let first = key_of(&admin.token("u", "d"));
    assert_eq!(tables_keys(&mut gw), [first]);

    // The signing key itself: a new one is made current first, then the old one leaves.
    let w = admin.ok("POST", &format!("/v1/keys/{first}/withdraw"), json!({}));
    let second = w["rotated_to"].as_u64().expect("rotated") as u32;
    assert_eq!(
        (w["key_id"].as_u64(), w["current_key_id"].as_u64()),
        (Some(first.into()), Some(second.into()))
    );
    gw.expect("the new key", |m| {
        matches!(m, LinkMessage::TablesDelta(ch) if ch.iter().any(|c| matches!(c, TableChange::KeyAdded(k) if k.key_id == second)))
    });
    gw.expect(
        "the withdrawn key removed",
        |m| matches!(m, LinkMessage::TablesDelta(ch) if ch.contains(&TableChange::KeyRemoved(first))),
    );
    assert_eq!(key_of(&admin.token("u", "d")), second, "credentials are signed with the new key");

    // Idempotent: the same answer, nothing rotated again.
    let again = admin.ok("POST", &format!("/v1/keys/{first}/withdraw"), json!({}));
    assert_eq!(again["withdrawn_at"], w["withdrawn_at"]);
    assert!(again["rotated_to"].is_null(), "{again}");
    assert_eq!(again["current_key_id"].as_u64(), Some(second.into()));

    // A key that is not the signing key leaves without a rotation; it is not "retiring".
    let third = admin.ok("POST", "/v1/keys/rotate", json!({}))["key_id"].as_u64().unwrap() as u32;
    let (s, w2) = admin.call("POST", &format!("/v1/keys/{second}/withdraw"), None);
    assert_eq!(s, 200, "{w2}");
    assert!(w2["rotated_to"].is_null(), "{w2}");
    let rotated = admin.ok("POST", "/v1/keys/rotate", json!({}));
    let retiring: Vec<u64> =
        rotated["retiring"].as_array().unwrap().iter().map(|r| r["key_id"].as_u64().unwrap()).collect();
    assert_eq!(retiring, [u64::from(third)], "withdrawn keys are not retiring");
    let fourth = rotated["key_id"].as_u64().unwrap() as u32;

    for (path, status) in [("/v1/keys/999/withdraw", 404), ("/v1/keys/abc/withdraw", 400)] {
        let (s, v) = admin.call("POST", path, None);
        assert_eq!(s, status, "{path}: {v}");
        assert!(v["error"].is_string(), "{path}: {v}");
    }

    // After a restart the withdrawn keys are still gone from what gateways get, and still known
    // as withdrawn.
    let withdrawn_at = w["withdrawn_at"].clone();
    drop(gw);
    drop(cp);
    let cp = start(dir.path());
    let admin = Admin::new(&cp);
    let mut gw = FakeGateway::connect(cp.link_addr(), "n1", vec![]);
    assert_eq!(tables_keys(&mut gw), [third, fourth]);
    let after = admin.ok("POST", &format!("/v1/keys/{first}/withdraw"), json!({}));
    assert_eq!(after["withdrawn_at"], withdrawn_at);
    assert!(after["rotated_to"].is_null());
    assert_eq!(key_of(&admin.token("u", "d")), fourth);
}
