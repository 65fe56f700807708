//! TLS for the QUIC listener: the certificate and key from config, the server's QUIC
//! configuration tuned for idle push sessions, and the self-signed development certificate that
//! `herald serve` makes when none is configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn_proto::{IdleTimeout, ServerConfig, TransportConfig, VarInt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::crypto::ServerCrypto;

/// The ALPN protocol name of Herald's terminal protocol over QUIC.
pub const ALPN: &[u8] = b"herald/1";

/// Why the QUIC listener cannot be configured (a local fault: files or their contents).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A file holds no usable PEM certificate or private key.
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    /// rustls refused the certificate and key together (e.g. the key does not match).
    #[error("certificate or key refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The development certificate could not be generated or written.
    #[error("cannot make a development certificate: {0}")]
    Generate(String),
}

/// Bytes of stream data a peer may send ahead of what the core has read (one session's frames
/// are small; LOGIN is the largest).
const STREAM_RECEIVE_WINDOW: u32 = 8 * 1024;
/// Unacknowledged bytes the gateway keeps per connection; the outbound queue holds the rest and
/// applies the backpressure policy as over TCP.
const SEND_WINDOW: u64 = 32 * 1024;
/// Connection IDs a terminal holds at a time: the one in use and a spare to migrate with.
const ISSUED_CIDS: u64 = 2;

/// Reads a PEM certificate chain and private key.
pub(crate) fn load(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.into(), source });
    let pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: cert.into(), what: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Pem { path: cert.into(), what: "no certificate in the file".into() });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| TlsError::Pem { path: key.into(), what: e.to_string() })?;
    Ok((chain, key_der))
}

/// The transport parameters of a push session: one bidirectional stream, no unidirectional
/// streams, no datagrams, small windows, no MTU probing, no QUIC keep-alive (the Herald
/// heartbeat keeps the path alive), idle timeout = heartbeat grace, and two connection IDs held
/// by the terminal at a time (the one it uses and one spare to migrate with, replaced when it
/// retires one; a stock client asks for up to 5 and each costs routing state for the whole life of
/// the session; the limit is a patch of ours to quinn-proto, vendor/quinn-proto/HERALD.md).
pub(crate) fn transport(idle: Duration) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0)
        .mtu_discovery_config(None)
        .keep_alive_interval(None)
        .issued_cid_limit(ISSUED_CIDS)
        .max_idle_timeout(IdleTimeout::try_from(idle).ok());
    t
}

/// The server configuration every core's endpoint shares (one token key for the node).
pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    idle: Duration,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(super::keys::provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No session tickets: no 0-RTT (whose packets could not be routed by connection ID) and no
    // per-connection ticket state.
    tls.max_early_data_size = 0;
    tls.send_tls13_tickets = 0;
    let mut cfg = ServerConfig::with_crypto(Arc::new(ServerCrypto::new(tls)?));
    cfg.transport_config(Arc::new(transport(idle)));
    Ok(cfg)
}

/// A client configuration that trusts `ca` and speaks Herald's ALPN, for tests that drive a
/// quinn-proto client themselves.
#[cfg(test)]
pub(crate) fn client_config_for_tests(ca: &CertificateDer<'static>) -> quinn_proto::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("a certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).expect("a QUIC client config");
    quinn_proto::ClientConfig::new(Arc::new(crypto))
}

/// The development certificate in `dir` (`quic-dev-cert.pem`, `quic-dev-key.pem`), made and
/// stored on first use: self-signed for `localhost` and the loopback addresses. Returns the two
/// paths and whether they were just generated. Terminals trust it with `--ca` (the cert file) or
/// `--insecure-dev-cert`; never use it in production.
pub fn dev_certificate(dir: &Path) -> Result<(PathBuf, PathBuf, bool), TlsError> {
    let cert = dir.join("quic-dev-cert.pem");
    let key = dir.join("quic-dev-key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key, false));
    }
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    let write = |p: &Path, text: String| {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(p, text))
            .map_err(|e| TlsError::Generate(format!("{}: {e}", p.display())))
    };
    write(&key, made.key_pair.serialize_pem())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600));
    }
    write(&cert, made.cert.pem())?;
    Ok((cert, key, true))
}
