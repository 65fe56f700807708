//! QUIC packet and header protection keys that keep their raw bytes, not ring's expanded key.
//!
//! A ring `LessSafeKey` for AES-GCM carries the AES key schedule and the GHASH table: ~540 B,
//! and an enum sized by that variant whatever the cipher (ChaCha20 keys are as large). A live
//! connection holds six of them (1-RTT keys in both directions, the next generation quinn
//! precomputes for a key update, and the two header protection keys): ~2.8 KB of an idle
//! session's ~18 KB (measured by `footprint`). These keys hold the 16–32 key bytes and the IV
//! and expand the key on the stack for each packet instead; ring's expansion costs well under
//! a microsecond, a few per heartbeat, next to the ~25 µs a heartbeat costs.
//!
//! They are plugged into rustls where it asks for QUIC keys: [`provider`] is ring's provider
//! with each TLS 1.3 suite's `quic` algorithm swapped for one that builds these keys, so
//! quinn-proto sees ordinary `rustls::quic` keys.

use std::sync::LazyLock;

use ring::aead;
use rustls::crypto::CryptoProvider;
use rustls::crypto::cipher::{AeadKey, Iv, Nonce};
use rustls::quic::{self, Tag};
use rustls::{CipherSuite, CipherSuiteCommon, SupportedCipherSuite, Tls13CipherSuite};

/// How one suite's QUIC keys are made (the limits are RFC 9001's, as ring's builder has them).
struct CompactAlgorithm {
    packet: &'static aead::Algorithm,
    header: &'static aead::quic::Algorithm,
    confidentiality_limit: u64,
    integrity_limit: u64,
}

static AES_128_GCM: CompactAlgorithm = CompactAlgorithm {
    packet: &aead::AES_128_GCM,
    header: &aead::quic::AES_128,
    confidentiality_limit: 1 << 23,
    integrity_limit: 1 << 52,
};
static AES_256_GCM: CompactAlgorithm = CompactAlgorithm {
    packet: &aead::AES_256_GCM,
    header: &aead::quic::AES_256,
    confidentiality_limit: 1 << 23,
    integrity_limit: 1 << 52,
};
static CHACHA20_POLY1305: CompactAlgorithm = CompactAlgorithm {
    packet: &aead::CHACHA20_POLY1305,
    header: &aead::quic::CHACHA20,
    confidentiality_limit: u64::MAX,
    integrity_limit: 1 << 36,
};

impl quic::Algorithm for CompactAlgorithm {
    fn packet_key(&self, key: AeadKey, iv: Iv) -> Box<dyn quic::PacketKey> {
        Box::new(PacketKey {
            alg: self.packet,
            confidentiality_limit: self.confidentiality_limit,
            integrity_limit: self.integrity_limit,
            key,
            iv,
        })
    }

    fn header_protection_key(&self, key: AeadKey) -> Box<dyn quic::HeaderProtectionKey> {
        Box::new(HeaderKey { alg: self.header, key })
    }

    fn aead_key_len(&self) -> usize {
        self.packet.key_len()
    }
}

/// ring's provider whose TLS 1.3 suites make [`CompactAlgorithm`] keys for QUIC (same suites,
/// same order, same TLS record protection).
pub(crate) fn provider() -> CryptoProvider {
    static SUITES: LazyLock<Vec<SupportedCipherSuite>> = LazyLock::new(|| {
        rustls::crypto::ring::default_provider()
            .cipher_suites
            .into_iter()
            .map(|s| match s.tls13() {
                Some(t) => {
                    let quic: Option<&'static dyn quic::Algorithm> = match t.common.suite {
                        CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(&AES_128_GCM),
                        CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(&AES_256_GCM),
                        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some(&CHACHA20_POLY1305),
                        _ => t.quic,
                    };
                    // Made once per process; rustls wants its suites for 'static.
                    let t: &'static Tls13CipherSuite = Box::leak(Box::new(Tls13CipherSuite {
                        common: CipherSuiteCommon {
                            suite: t.common.suite,
                            hash_provider: t.common.hash_provider,
                            confidentiality_limit: t.common.confidentiality_limit,
                        },
                        hkdf_provider: t.hkdf_provider,
                        aead_alg: t.aead_alg,
                        quic,
                    }));
                    SupportedCipherSuite::Tls13(t)
                }
                None => s,
            })
            .collect()
    });
    CryptoProvider { cipher_suites: SUITES.clone(), ..rustls::crypto::ring::default_provider() }
}

/// A packet protection key: the key bytes and the IV.
struct PacketKey {
    alg: &'static aead::Algorithm,
    confidentiality_limit: u64,
    integrity_limit: u64,
    key: AeadKey,
    iv: Iv,
}

impl PacketKey {
    /// The ring key for one packet. rustls derived the bytes at this algorithm's length
    /// (`aead_key_len`), so `err` is never returned in practice.
    fn expand(&self, err: rustls::Error) -> Result<aead::LessSafeKey, rustls::Error> {
        let key = aead::UnboundKey::new(self.alg, self.key.as_ref()).map_err(|_| err)?;
        Ok(aead::LessSafeKey::new(key))
    }

    fn nonce(&self, packet_number: u64) -> aead::Nonce {
        aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, packet_number).0)
    }
}

impl quic::PacketKey for PacketKey {
    fn encrypt_in_place(
        &self,
        packet_number: u64,
        header: &[u8],
        payload: &mut [u8],
    ) -> Result<Tag, rustls::Error> {
        let tag = self
            .expand(rustls::Error::EncryptError)?
            .seal_in_place_separate_tag(self.nonce(packet_number), aead::Aad::from(header), payload)
            .map_err(|_| rustls::Error::EncryptError)?;
        Ok(Tag::from(tag.as_ref()))
    }

    fn decrypt_in_place<'a>(
        &self,
        packet_number: u64,
        header: &[u8],
        payload: &'a mut [u8],
    ) -> Result<&'a [u8], rustls::Error> {
        let plain = self
            .expand(rustls::Error::DecryptError)?
            .open_in_place(self.nonce(packet_number), aead::Aad::from(header), payload)
            .map_err(|_| rustls::Error::DecryptError)?;
        Ok(plain)
    }

    fn tag_len(&self) -> usize {
        self.alg.tag_len()
    }

    fn confidentiality_limit(&self) -> u64 {
        self.confidentiality_limit
    }

    fn integrity_limit(&self) -> u64 {
        self.integrity_limit
    }
}

/// A header protection key: the key bytes.
struct HeaderKey {
    alg: &'static aead::quic::Algorithm,
    key: AeadKey,
}

impl HeaderKey {
    /// RFC 9001 §5.4.1 "Header Protection Application", as rustls's own key applies it.
    fn xor(
        &self,
        sample: &[u8],
        first: &mut u8,
        packet_number: &mut [u8],
        masked: bool,
    ) -> Result<(), rustls::Error> {
        let hp = aead::quic::HeaderProtectionKey::new(self.alg, self.key.as_ref())
            .map_err(|_| rustls::Error::General("header protection key".into()))?;
        let mask =
            hp.new_mask(sample).map_err(|_| rustls::Error::General("sample of invalid length".into()))?;
        let (first_mask, pn_mask) = mask.split_first().expect("a mask is 5 bytes");
        if packet_number.len() > pn_mask.len() {
            return Err(rustls::Error::General("packet number too long".into()));
        }
        let bits = if *first & 0x80 != 0 { 0x0f } else { 0x1f };
        let first_plain = if masked { *first ^ (first_mask & bits) } else { *first };
        let pn_len = usize::from(first_plain & 0x03) + 1;
        *first ^= first_mask & bits;
        for (b, m) in packet_number.iter_mut().zip(pn_mask).take(pn_len) {
            *b ^= m;
        }
        Ok(())
    }
}

impl quic::HeaderProtectionKey for HeaderKey {
    fn encrypt_in_place(
        &self,
        sample: &[u8],
        first: &mut u8,
        packet_number: &mut [u8],
    ) -> Result<(), rustls::Error> {
        self.xor(sample, first, packet_number, false)
    }

    fn decrypt_in_place(
        &self,
        sample: &[u8],
        first: &mut u8,
        packet_number: &mut [u8],
    ) -> Result<(), rustls::Error> {
        self.xor(sample, first, packet_number, true)
    }

    fn sample_len(&self) -> usize {
        self.alg.sample_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys rustls derives through [`provider`] protect packets exactly as ring's own keys do
    /// (RFC 9001 Appendix A's client Initial keys, for each suite the provider offers).
    #[test]
    fn compact_keys_protect_like_ring_keys() {
        let cid = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
        let ours = provider();
        let ring = rustls::crypto::ring::default_provider();
        let initial = |p: &CryptoProvider| {
            let t = p
                .cipher_suites
                .iter()
                .find_map(|s| match s {
                    SupportedCipherSuite::Tls13(t)
                        if t.common.suite == CipherSuite::TLS13_AES_128_GCM_SHA256 =>
                    {
                        Some(*t)
                    }
                    _ => None,
                })
                .unwrap();
            t.quic_suite().unwrap().keys(&cid, rustls::Side::Client, quic::Version::V1)
        };
        let (a, b) = (initial(&ours), initial(&ring));
        let header = [0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0x44, 0x9e, 0, 0, 0, 2];
        let mut pa = *b"a heartbeat and a little more!!!";
        let mut pb = pa;
        let ta = a.local.packet.encrypt_in_place(2, &header, &mut pa).unwrap();
        let tb = b.local.packet.encrypt_in_place(2, &header, &mut pb).unwrap();
        assert_eq!((pa, ta.as_ref()), (pb, tb.as_ref()));
        let mut sealed = pa.to_vec();
        sealed.extend_from_slice(ta.as_ref());
        assert_eq!(
            b.local.packet.decrypt_in_place(2, &header, &mut sealed.clone()).unwrap(),
            b"a heartbeat and a little more!!!"
        );
        let mut sealed_ours = sealed.clone();
        let plain = a.local.packet.decrypt_in_place(2, &header, &mut sealed_ours).unwrap();
        assert_eq!(plain, b"a heartbeat and a little more!!!");
        sealed[0] ^= 1;
        assert!(a.local.packet.decrypt_in_place(2, &header, &mut sealed).is_err());

        let sample = &pa[..16];
        let (mut fa, mut fb) = (0xc3u8, 0xc3u8);
        let (mut na, mut nb) = ([0, 0, 0, 2], [0, 0, 0, 2]);
        a.local.header.encrypt_in_place(sample, &mut fa, &mut na).unwrap();
        b.local.header.encrypt_in_place(sample, &mut fb, &mut nb).unwrap();
        assert_eq!((fa, na), (fb, nb));
        assert_ne!(na, [0, 0, 0, 2]);
        a.local.header.decrypt_in_place(sample, &mut fa, &mut na).unwrap();
        assert_eq!((fa, na), (0xc3, [0, 0, 0, 2]));
        assert_eq!(ours.cipher_suites.len(), ring.cipher_suites.len());
    }
}
