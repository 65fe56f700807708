//! Connection IDs that name their owning core, and the routing of a datagram by them.
//!
//! `SO_REUSEPORT` picks a core by hashing the 4-tuple, so after a NAT rebinding or a migration a
//! connection's datagrams land on a core that does not hold it. Every connection ID a core issues
//! carries the core's index in its first byte (the rest is random), so any core can tell which
//! core owns a short-header packet and forward it there before its own endpoint would answer
//! with a stateless reset.

use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator};
use ring::rand::{SecureRandom, SystemRandom};

/// Length of every connection ID this gateway issues.
pub(crate) const CID_LEN: usize = 8;

/// Issues connection IDs for core `core`: `[core, 7 random bytes]`.
#[derive(Debug)]
pub(crate) struct CoreCids {
    core: u8,
    rng: SystemRandom,
}

impl CoreCids {
    pub(crate) fn new(core: usize) -> CoreCids {
        CoreCids { core: core as u8, rng: SystemRandom::new() }
    }
}

impl ConnectionIdGenerator for CoreCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut b = [0u8; CID_LEN];
        b[0] = self.core;
        // The kernel's generator does not fail once it has been seeded; a zero tail would still
        // route correctly.
        let _ = self.rng.fill(&mut b[1..]);
        ConnectionId::new(&b)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The core that owns the connection a datagram is for, when its header says so: short-header
/// packets and long-header Handshake packets carry a destination ID this gateway issued.
/// Initial and 0-RTT packets carry an ID the client chose, so they stay where the kernel put them
/// (their 4-tuple is the one the handshake runs on). `None` for anything unparseable.
pub(crate) fn owner(datagram: &[u8]) -> Option<usize> {
    let first = *datagram.first()?;
    let dcid = if first & 0x80 == 0 {
        datagram.get(1..1 + CID_LEN)?
    } else {
        // Long header: flags, version (4), DCID length, DCID. Type 2 is Handshake (QUIC v1).
        if (first >> 4) & 0x3 != 2 {
            return None;
        }
        let len = usize::from(*datagram.get(5)?);
        if len != CID_LEN {
            return None;
        }
        datagram.get(6..6 + CID_LEN)?
    };
    Some(usize::from(dcid[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_ids_name_their_core_and_route_back_to_it() {
        for core in [0, 1, 7] {
            let mut g = CoreCids::new(core);
            let a = g.generate_cid();
            let b = g.generate_cid();
            assert_ne!(a, b);
            let mut short = vec![0x40];
            short.extend_from_slice(&a);
            short.extend_from_slice(&[0; 20]);
            assert_eq!(owner(&short), Some(core));
            let mut handshake = vec![0xe0, 0, 0, 0, 1, CID_LEN as u8];
            handshake.extend_from_slice(&b);
            assert_eq!(owner(&handshake), Some(core));
        }
    }

    #[test]
    fn initials_and_garbage_are_not_routed() {
        let mut initial = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8, 1];
        initial.extend_from_slice(&[0; 40]);
        assert_eq!(owner(&initial), None);
        assert_eq!(owner(&[]), None);
        assert_eq!(owner(&[0x40, 1, 2]), None);
        assert_eq!(owner(&[0xe0, 0, 0, 0, 1, 20]), None);
    }
}
