//! Terminal credentials: tokens the control plane signs and every gateway verifies locally, with
//! no round trip (see `PROTOCOL.md`, "Credentials", for the layout and the threat model).
//!
//! A token is HMAC-SHA256 over `version | key_id | issued_at | expires_at | user | device`,
//! carried as unpadded base64url text. Verification decodes into a stack buffer, looks the key up
//! by id and compares the MAC in constant time (ring): about a microsecond.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use crate::code::CloseCode;

/// Token format version.
pub const TOKEN_VERSION: u8 = 1;
const MAC_BYTES: usize = 32;
const FIXED_BYTES: usize = 1 + 4 + 8 + 8;
/// Longest user or device id, in bytes.
pub const MAX_ID_BYTES: usize = 255;
/// Longest token text a verifier accepts.
pub const MAX_TOKEN_TEXT: usize = (FIXED_BYTES + 2 + 2 * MAX_ID_BYTES + MAC_BYTES).div_ceil(3) * 4;

/// A signing key: an id (carried in tokens, so keys can rotate) and a 32-byte secret.
#[derive(Clone)]
pub struct SigningKey {
    pub id: u32,
    secret: [u8; 32],
    key: hmac::Key,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn new(id: u32, secret: [u8; 32]) -> Self {
        SigningKey { id, secret, key: hmac::Key::new(hmac::HMAC_SHA256, &secret) }
    }

    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub key_id: u32,
    pub user: String,
    pub device: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the token is refused at and after this instant.
    pub expires_at: u64,
}

/// Why a token is refused. Each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not base64url, wrong version, or lengths that do not add up (the terminal's fault).
    #[error("credential is malformed")]
    Malformed,
    /// Signature does not verify, or no key with its id is known.
    #[error("credential signature is invalid")]
    Forged,
    #[error("credential has expired")]
    Expired,
    #[error("credential was revoked")]
    Revoked,
    /// Issuing only: a user or device id is empty or longer than 255 bytes.
    #[error("user and device ids must be 1..=255 bytes")]
    BadId,
}

impl CredentialError {
    pub fn close_code(self) -> CloseCode {
        match self {
            CredentialError::Malformed | CredentialError::BadId => CloseCode::AUTH_MALFORMED,
            CredentialError::Forged => CloseCode::AUTH_FORGED,
            CredentialError::Expired => CloseCode::AUTH_EXPIRED,
            CredentialError::Revoked => CloseCode::AUTH_REVOKED,
        }
    }
}

/// Signs a token for `claims` (whose `key_id` is replaced by the key's).
pub fn issue(key: &SigningKey, claims: &Claims) -> Result<String, CredentialError> {
    let (user, device) = (claims.user.as_bytes(), claims.device.as_bytes());
    if user.is_empty() || device.is_empty() || user.len() > MAX_ID_BYTES || device.len() > MAX_ID_BYTES {
        return Err(CredentialError::BadId);
    }
    let mut raw = Vec::with_capacity(FIXED_BYTES + 2 + user.len() + device.len() + MAC_BYTES);
    raw.push(TOKEN_VERSION);
    raw.extend_from_slice(&key.id.to_le_bytes());
    raw.extend_from_slice(&claims.issued_at.to_le_bytes());
    raw.extend_from_slice(&claims.expires_at.to_le_bytes());
    raw.push(user.len() as u8);
    raw.extend_from_slice(user);
    raw.push(device.len() as u8);
    raw.extend_from_slice(device);
    let tag = hmac::sign(&key.key, &raw);
    raw.extend_from_slice(tag.as_ref());
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

/// The keys a gateway verifies with. Cheap to clone into a snapshot.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<u32, SigningKey>,
}

impl KeySet {
    pub fn new(keys: impl IntoIterator<Item = SigningKey>) -> Self {
        KeySet { keys: keys.into_iter().map(|k| (k.id, k)).collect() }
    }

    pub fn insert(&mut self, key: SigningKey) {
        self.keys.insert(key.id, key);
    }

    pub fn remove(&mut self, id: u32) {
        self.keys.remove(&id);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether key `id` is in the set: a live session signed with a key that left it (withdrawn)
    /// no longer holds.
    pub fn contains(&self, id: u32) -> bool {
        self.keys.contains_key(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `token` (its text bytes) at `now_secs` (Unix seconds). Revocation is checked by
    /// the caller against its revocation table with [`Revocations::check`].
    pub fn verify(&self, token: &[u8], now_secs: u64) -> Result<Claims, CredentialError> {
        let mut buf = [0u8; MAX_TOKEN_TEXT];
        let raw = Raw::decode(token, &mut buf)?;
        let key = self.keys.get(&raw.key_id).ok_or(CredentialError::Forged)?;
        hmac::verify(&key.key, raw.signed, raw.tag).map_err(|_| CredentialError::Forged)?;
        if now_secs >= raw.expires_at {
            return Err(CredentialError::Expired);
        }
        raw.claims()
    }
}

/// Reads a token's claims WITHOUT checking its signature or expiry. For terminals, which hold
/// no keys but need to know which device id the token names; never for authorization.
pub fn peek(token: &str) -> Result<Claims, CredentialError> {
    let mut buf = [0u8; MAX_TOKEN_TEXT];
    Raw::decode(token.as_bytes(), &mut buf)?.claims()
}

/// A decoded, not yet verified token.
struct Raw<'a> {
    signed: &'a [u8],
    tag: &'a [u8],
    key_id: u32,
    issued_at: u64,
    expires_at: u64,
    dev_at: usize,
}

impl<'a> Raw<'a> {
    fn decode(token: &[u8], buf: &'a mut [u8; MAX_TOKEN_TEXT]) -> Result<Raw<'a>, CredentialError> {
        if token.len() > MAX_TOKEN_TEXT {
            return Err(CredentialError::Malformed);
        }
        let n = URL_SAFE_NO_PAD.decode_slice(token, buf).map_err(|_| CredentialError::Malformed)?;
        let raw = &buf[..n];
        if n < FIXED_BYTES + 2 + MAC_BYTES || raw[0] != TOKEN_VERSION {
            return Err(CredentialError::Malformed);
        }
        let (signed, tag) = raw.split_at(n - MAC_BYTES);
        let le8 = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&signed[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let key_id = u32::from_le_bytes([signed[1], signed[2], signed[3], signed[4]]);
        let dev_at = FIXED_BYTES + 1 + signed[FIXED_BYTES] as usize;
        if dev_at >= signed.len() || dev_at + 1 + signed[dev_at] as usize != signed.len() {
            return Err(CredentialError::Malformed);
        }
        Ok(Raw { signed, tag, key_id, issued_at: le8(5), expires_at: le8(13), dev_at })
    }

    fn claims(&self) -> Result<Claims, CredentialError> {
        let s = self.signed;
        let user =
            std::str::from_utf8(&s[FIXED_BYTES + 1..self.dev_at]).map_err(|_| CredentialError::Malformed)?;
        let device = std::str::from_utf8(&s[self.dev_at + 1..]).map_err(|_| CredentialError::Malformed)?;
        if user.is_empty() || device.is_empty() {
            return Err(CredentialError::Malformed);
        }
        Ok(Claims {
            key_id: self.key_id,
            user: user.to_owned(),
            device: device.to_owned(),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
        })
    }
}

/// Revoked credentials: every token of a user (or of one of its devices) issued before a
/// moment is refused. Revoking never needs to list tokens.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    /// user → (all devices: tokens issued strictly before this second are revoked, per device).
    by_user: HashMap<String, UserRevocation>,
}

#[derive(Debug, Clone, Default)]
struct UserRevocation {
    all_before: u64,
    device_before: HashMap<String, u64>,
}

impl Revocations {
    /// Revokes tokens of `user` (one `device`, or all when `None`) issued before `before_secs`.
    pub fn revoke(&mut self, user: &str, device: Option<&str>, before_secs: u64) {
        let entry = self.by_user.entry(user.to_owned()).or_default();
        let slot = match device {
            None => &mut entry.all_before,
            Some(d) => entry.device_before.entry(d.to_owned()).or_insert(0),
        };
        *slot = (*slot).max(before_secs);
    }

    /// Forgets `user`'s revocations (every credential they covered has expired).
    pub fn forget(&mut self, user: &str) {
        self.by_user.remove(user);
    }

    /// Refuses `claims` if a revocation covers them. No allocation.
    pub fn check(&self, claims: &Claims) -> Result<(), CredentialError> {
        if self.revoked(&claims.user, &claims.device, claims.issued_at) {
            return Err(CredentialError::Revoked);
        }
        Ok(())
    }

    /// Whether a token of `user`/`device` issued at `issued_at` (Unix seconds) is revoked: what
    /// [`Revocations::check`] decides, for a server that kept only these parts of the claims
    /// (re-checking live sessions when the table changes). No allocation.
    pub fn revoked(&self, user: &str, device: &str, issued_at: u64) -> bool {
        let Some(r) = self.by_user.get(user) else {
            return false;
        };
        let device_before = r.device_before.get(device).copied().unwrap_or(0);
        issued_at < r.all_before.max(device_before)
    }

    /// Every revocation: (user, device or `None` for all devices, issued-before second).
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>, u64)> {
        self.by_user.iter().flat_map(|(u, r)| {
            let all = (r.all_before > 0).then_some((u.as_str(), None, r.all_before));
            all.into_iter()
                .chain(r.device_before.iter().map(move |(d, &t)| (u.as_str(), Some(d.as_str()), t)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(user: &str, device: &str) -> Claims {
        Claims { key_id: 0, user: user.into(), device: device.into(), issued_at: 100, expires_at: 200 }
    }

    #[test]
    fn issue_verify_and_each_refusal() {
        let k1 = SigningKey::new(1, [1; 32]);
        let keys = KeySet::new([k1.clone()]);
        let token = issue(&k1, &claims("alice", "phone")).unwrap();
        let got = keys.verify(token.as_bytes(), 150).unwrap();
        assert_eq!((got.key_id, got.user.as_str(), got.device.as_str()), (1, "alice", "phone"));
        assert_eq!(peek(&token).unwrap(), got);

        assert_eq!(keys.verify(token.as_bytes(), 200), Err(CredentialError::Expired));
        let other = issue(&SigningKey::new(1, [2; 32]), &claims("alice", "phone")).unwrap();
        assert_eq!(keys.verify(other.as_bytes(), 150), Err(CredentialError::Forged));
        let unknown = issue(&SigningKey::new(9, [1; 32]), &claims("alice", "phone")).unwrap();
        assert_eq!(keys.verify(unknown.as_bytes(), 150), Err(CredentialError::Forged));
        for bad in ["", "!!!", "AAAA", &token[..token.len() - 3]] {
            assert!(
                matches!(
                    keys.verify(bad.as_bytes(), 150),
                    Err(CredentialError::Malformed | CredentialError::Forged)
                ),
                "{bad:?}"
            );
        }
        assert_eq!(keys.verify(&[b'A'; MAX_TOKEN_TEXT + 1], 150), Err(CredentialError::Malformed));
        // One flipped bit anywhere in the signed bytes is a forgery or malformed, never accepted.
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 1;
            let t = URL_SAFE_NO_PAD.encode(&raw);
            assert!(keys.verify(t.as_bytes(), 150).is_err(), "bit flip at {i} accepted");
            raw[i] ^= 1;
        }
        assert_eq!(issue(&k1, &claims("", "d")), Err(CredentialError::BadId));
        assert_eq!(issue(&k1, &claims(&"u".repeat(256), "d")), Err(CredentialError::BadId));
    }

    #[test]
    fn revocation_by_user_and_by_device() {
        let c = claims("bob", "tablet");
        let mut r = Revocations::default();
        assert_eq!(r.check(&c), Ok(()));
        r.revoke("bob", Some("phone"), 150);
        assert_eq!(r.check(&c), Ok(()));
        r.revoke("bob", Some("tablet"), 100);
        assert_eq!(r.check(&c), Ok(()), "issued at the revocation second is not before it");
        r.revoke("bob", None, 101);
        assert_eq!(r.check(&c), Err(CredentialError::Revoked));
        assert_eq!(r.iter().count(), 3);
        // What a gateway re-checks a live session with: the same answer from the kept parts.
        assert!(r.revoked("bob", "tablet", c.issued_at));
        assert!(!r.revoked("bob", "tablet", 101));
        assert!(r.revoked("bob", "phone", 149));
        assert!(!r.revoked("alice", "tablet", 0));
    }

    #[test]
    fn a_removed_key_is_no_longer_contained() {
        let mut keys = KeySet::new([SigningKey::new(1, [1; 32]), SigningKey::new(2, [2; 32])]);
        assert!(keys.contains(1) && keys.contains(2));
        keys.remove(2);
        assert!(keys.contains(1) && !keys.contains(2));
    }
}
