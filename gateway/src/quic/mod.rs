//! The QUIC listener: the same terminal sessions as over TCP (the same frames on one
//! bidirectional stream), carried by a `quinn-proto` endpoint that each core drives itself.
//!
//! - `endpoint`: one core's socket, endpoint, connections and deadlines ([`CoreEndpoint`]), told
//!   the time and driven by the core's QUIC task (in `worker::quic`, which also feeds its events
//!   to the session logic shared with TCP).
//! - `cid`: connection IDs that carry the owning core, and routing by them, so that datagrams
//!   that land on the wrong core after a NAT rebinding or a migration reach their connection.
//! - `tls`: certificate and key, the transport tuned for idle sessions, the development
//!   certificate.
//! - `hostile`: a server endpoint set up like a core's, fed a script of datagrams and validly
//!   protected Initial packets around arbitrary frames (the fuzz target `quic_initial` and a test).

mod cid;
mod crypto;
mod endpoint;
#[cfg(test)]
mod footprint;
#[doc(hidden)]
pub mod hostile;
mod keys;
mod tls;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use endpoint::{AppEvent, ConnRef, CoreEndpoint, Datagram, Owner};
pub use tls::{ALPN, TlsError, dev_certificate};

use crate::GatewayError;

/// What every core's endpoint shares: the server configuration (certificate, transport, token
/// key) and the stateless-reset key. Sharing them is safe because datagrams are routed to the
/// core that owns their connection ID before any endpoint would answer them with a reset.
#[derive(Debug)]
pub(crate) struct QuicShared {
    pub(crate) server: Arc<quinn_proto::ServerConfig>,
    pub(crate) reset_key: Arc<ring::hmac::Key>,
}

impl QuicShared {
    pub(crate) fn new(cert: &Path, key: &Path, idle: Duration) -> Result<QuicShared, GatewayError> {
        let (chain, key) = tls::load(cert, key).map_err(GatewayError::Tls)?;
        let server = tls::server_config(chain, key, idle).map_err(GatewayError::Tls)?;
        let rng = ring::rand::SystemRandom::new();
        let reset_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| GatewayError::Tls(TlsError::Generate("no randomness for the reset key".into())))?;
        Ok(QuicShared { server: Arc::new(server), reset_key: Arc::new(reset_key) })
    }
}

/// Binds one `SO_REUSEPORT` UDP socket per core on `addr` (port 0 resolved once, by the first).
pub(crate) fn bind(addr: SocketAddr, cores: usize) -> Result<(SocketAddr, Vec<UdpSocket>), GatewayError> {
    let first = bind_one(addr)?;
    let addr = first.local_addr().map_err(|source| GatewayError::Bind { addr, source })?;
    let mut all = vec![first];
    for _ in 1..cores {
        all.push(bind_one(addr)?);
    }
    Ok((addr, all))
}

/// Receive buffer asked for each core's UDP socket.
const RECV_BUFFER_BYTES: usize = 8 << 20;

fn bind_one(addr: SocketAddr) -> Result<UdpSocket, GatewayError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| GatewayError::Bind { addr, source };
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_reuse_port(true).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    // One socket carries every QUIC connection of a core: the default ~208 KiB receive buffer
    // overflowed at 15,000 connections (~100k datagrams dropped per benchmark scenario). Ask for
    // more; the kernel caps it at net.core.rmem_max, which is fine (best effort, not an error).
    let _ = s.set_recv_buffer_size(RECV_BUFFER_BYTES);
    s.bind(&addr.into()).map_err(err)?;
    Ok(s.into())
}
