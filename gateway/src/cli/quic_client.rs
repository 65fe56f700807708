//! The terminal side of QUIC for `herald listen`: a quinn connection on a tokio current-thread
//! runtime owned by the listen loop (which drives it whenever it waits for input), carrying the
//! same frames on one bidirectional stream as a TCP connection carries.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How long a handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One QUIC session to a gateway.
#[derive(Debug)]
pub(crate) struct QuicConn {
    rt: tokio::runtime::Runtime,
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// The client's TLS settings: trust `ca` (PEM), or with `insecure` any certificate at all (for
/// the development certificate of `herald serve`; never in production).
pub(crate) fn client_config(ca: Option<&Path>, insecure: bool) -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut tls = match (ca, insecure) {
        (_, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        (Some(ca), false) => {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                roots.add(c.with_context(|| format!("{}: not a PEM certificate", ca.display()))?)?;
            }
            if roots.is_empty() {
                bail!("{}: no certificate in the file", ca.display());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (None, false) => {
            bail!("--transport quic needs --ca CERT (or --insecure-dev-cert for a development gateway)")
        }
    };
    tls.alpn_protocols = vec![herald_gateway::QUIC_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

impl QuicConn {
    pub(crate) fn connect(
        addr: SocketAddr,
        server_name: &str,
        cfg: quinn::ClientConfig,
    ) -> io::Result<QuicConn> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let (endpoint, conn, send, recv) = rt.block_on(async {
            let mut ep = quinn::Endpoint::client(bind)?;
            ep.set_default_client_config(cfg);
            let connecting = ep.connect(addr, server_name).map_err(io::Error::other)?;
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
                .map_err(io::Error::other)?;
            let (send, recv) = conn.open_bi().await.map_err(io::Error::other)?;
            Ok::<_, io::Error>((ep, conn, send, recv))
        })?;
        Ok(QuicConn { rt, _endpoint: endpoint, conn, send, recv })
    }

    /// Queues bytes on the stream (sent while the loop next waits for input).
    pub(crate) fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.rt.block_on(self.send.write_all(b)).map_err(io::Error::other)
    }

    /// Reads what arrives within `wait`: `Ok(0)` at the end of the stream, `TimedOut` if nothing
    /// came.
    pub(crate) fn read_timeout(&mut self, buf: &mut [u8], wait: Duration) -> io::Result<usize> {
        let recv = &mut self.recv;
        let read = self.rt.block_on(async { tokio::time::timeout(wait, recv.read(buf)).await });
        match read {
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
            Ok(Ok(Some(n))) => Ok(n),
            Ok(Ok(None)) => Ok(0),
            Ok(Err(e)) => Err(io::Error::other(e)),
        }
    }
}

impl Drop for QuicConn {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"");
        let ep = self._endpoint.clone();
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_millis(200), ep.wait_idle()).await });
    }
}

/// Accepts any server certificate (`--insecure-dev-cert`); handshake signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
