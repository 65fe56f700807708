//! A script of raw datagrams, validly protected Initial packets around arbitrary frames and time
//! steps, played against a QUIC server endpoint set up like a gateway core's (see
//! `herald_gateway::quic_hostile`). It may not panic.

#![no_main]

use std::sync::LazyLock;

use herald_gateway::quic_hostile::HostileServer;
use libfuzzer_sys::fuzz_target;

static SERVER: LazyLock<HostileServer> = LazyLock::new(HostileServer::new);

fuzz_target!(|data: &[u8]| {
    SERVER.run(data);
});
