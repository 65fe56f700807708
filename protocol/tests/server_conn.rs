//! The gateway's per-connection deadline: size, login deadline, heartbeat grace, the wrap.

use herald_protocol::code::CloseCode;
use herald_protocol::server::{Liveness, Tick};

#[test]
fn a_deadline_is_small() {
    let size = std::mem::size_of::<Liveness>();
    assert!(size <= 12, "Liveness is {size} bytes");
}

#[test]
fn login_deadline_then_heartbeat_grace() {
    let t0 = Tick(u32::MAX - 1_000); // across the u32 wrap
    let mut c = Liveness::accepted(t0, 5_000);
    assert_eq!(c.check(t0), Ok(5_000));
    assert_eq!(c.check(t0.plus_millis(5_000)), Ok(0));
    assert_eq!(c.check(t0.plus_millis(5_001)), Err(CloseCode::LOGIN_TIMEOUT));
    // Bytes before login do not extend the deadline.
    c.touch(t0.plus_millis(4_000));
    assert_eq!(c.check(t0.plus_millis(5_001)), Err(CloseCode::LOGIN_TIMEOUT));

    let t1 = t0.plus_millis(1_000);
    c.logged_in(t1, 40_000);
    assert_eq!(c.check(t1.plus_millis(40_000)), Ok(0));
    c.touch(t1.plus_millis(30_000));
    assert_eq!(c.check(t1.plus_millis(40_000)), Ok(30_000));
    assert_eq!(c.check(t1.plus_millis(69_000)), Ok(1_000));
    assert_eq!(c.check(t1.plus_millis(70_001)), Err(CloseCode::HEARTBEAT_TIMEOUT));
}
