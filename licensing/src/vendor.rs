//! Vendor keys: the Ed25519 public keys a server trusts, their short ids, and the vendor's signing key pair. Never holds or embeds a private key; only the vendor's tooling loads one.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::LicenseError;
use crate::ids::VendorKeyId;

/// The product's built-in vendor public key (raw Ed25519, 32 bytes).
///
/// Only the public half lives here. The private half is kept offline by the
/// vendor; whoever holds it can issue licenses, so it never enters this
/// repository. Text form `CXNY/vbmwc0hOqAr12yoeL4FY26d/QsM8jKcPv4ysT8=`,
/// key id `ef353087`.
const BUILTIN_PUBLIC_KEY: [u8; 32] = [
    0x09, 0x73, 0x58, 0xfe, 0xf6, 0xe6, 0xc1, 0xcd, 0x21, 0x3a, 0xa0, 0x2b, 0xd7, 0x6c, 0xa8, 0x78,
    0xbe, 0x05, 0x63, 0x6e, 0x9d, 0xfd, 0x0b, 0x0c, 0xf2, 0x32, 0x9c, 0x3e, 0xfe, 0x32, 0xb1, 0x3f,
];

/// A vendor's Ed25519 public key: what a server needs to check signatures.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VendorPublicKey {
    bytes: [u8; 32],
}

impl VendorPublicKey {
    /// Wraps the 32 raw bytes of an Ed25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self { bytes }
    }

    /// Parses the text form: standard base64 of the 32 raw bytes, as written
    /// to `vendor.pub`. Surrounding whitespace is ignored.
    pub fn from_text(text: &str) -> Result<Self, LicenseError> {
        let decoded = BASE64
            .decode(text.trim())
            .map_err(|e| LicenseError::InvalidVendorKey {
                reason: format!(
                    "a vendor public key is base64 text (as in vendor.pub), but this is not base64: {e}"
                ),
            })?;
        let bytes: [u8; 32] =
            decoded
                .as_slice()
                .try_into()
                .map_err(|_| LicenseError::InvalidVendorKey {
                    reason: format!(
                        "a vendor public key is 32 bytes, but this decodes to {} bytes; use the contents of vendor.pub",
                        decoded.len()
                    ),
                })?;
        Ok(Self { bytes })
    }

    /// The text form: standard base64 of the 32 raw bytes.
    pub fn to_text(&self) -> String {
        BASE64.encode(self.bytes)
    }

    /// The raw 32 bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The short id license keys name their signer by.
    pub fn id(&self) -> VendorKeyId {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.bytes);
        let mut id = [0u8; 4];
        id.copy_from_slice(&digest.as_ref()[..4]);
        VendorKeyId(id)
    }

    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for VendorPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VendorPublicKey({} {})", self.id(), self.to_text())
    }
}

/// The vendor public keys a server accepts license keys from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<VendorPublicKey>,
}

impl TrustedKeys {
    /// Only the product's built-in vendor key: what a production server trusts.
    pub fn builtin() -> Self {
        Self {
            keys: vec![VendorPublicKey::from_bytes(BUILTIN_PUBLIC_KEY)],
        }
    }

    /// These keys plus `key` (added once, however often it is given).
    pub fn with(mut self, key: VendorPublicKey) -> Self {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
        self
    }

    /// The trusted keys, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &VendorPublicKey> {
        self.keys.iter()
    }

    /// Trusted keys with this id. Usually one; two only if distinct keys share
    /// the first four bytes of their hash, which verification then tries both.
    pub(crate) fn with_id(&self, id: VendorKeyId) -> impl Iterator<Item = &VendorPublicKey> {
        self.keys.iter().filter(move |k| k.id() == id)
    }
}

impl FromIterator<VendorPublicKey> for TrustedKeys {
    fn from_iter<I: IntoIterator<Item = VendorPublicKey>>(iter: I) -> Self {
        iter.into_iter()
            .fold(Self { keys: Vec::new() }, |trusted, key| trusted.with(key))
    }
}

/// The vendor's signing key pair: issues license keys. Only vendor tooling
/// (`license-tool`) and tests hold one; a server never does.
pub struct VendorKeyPair {
    pair: Ed25519KeyPair,
    public: VendorPublicKey,
}

impl VendorKeyPair {
    /// Generates a new key pair from the operating system's randomness.
    /// Returns the pair and its PKCS#8 document, which is the private key to
    /// store (and to keep secret).
    pub fn generate() -> Result<(Self, Vec<u8>), LicenseError> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| {
            LicenseError::InvalidVendorKey {
                reason: "the system random number generator failed; retry on a healthy system"
                    .to_owned(),
            }
        })?;
        let pkcs8 = document.as_ref().to_vec();
        Ok((Self::from_pkcs8(&pkcs8)?, pkcs8))
    }

    /// Loads a key pair from its PKCS#8 document (as made by [`generate`](Self::generate)).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, LicenseError> {
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| LicenseError::InvalidVendorKey {
                reason: format!(
                    "not an Ed25519 PKCS#8 private key ({e}); use the vendor.key written by keygen"
                ),
            })?;
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(pair.public_key().as_ref());
        Ok(Self {
            pair,
            public: VendorPublicKey::from_bytes(bytes),
        })
    }

    /// The public half, to give to servers.
    pub fn public_key(&self) -> VendorPublicKey {
        self.public.clone()
    }

    /// Signs `payload` with the vendor's private key.
    pub(crate) fn sign(&self, payload: &[u8]) -> [u8; 64] {
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.pair.sign(payload).as_ref());
        signature
    }
}

impl fmt::Debug for VendorKeyPair {
    /// Shows the public id only: a private key must never end up in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VendorKeyPair({})", self.public.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_text_round_trips() {
        let (pair, _) = VendorKeyPair::generate().unwrap();
        let public = pair.public_key();
        let parsed = VendorPublicKey::from_text(&format!("  {}\n", public.to_text())).unwrap();
        assert_eq!(parsed, public);
        assert_eq!(parsed.id(), public.id());
    }

    #[test]
    fn a_pair_reloads_from_its_pkcs8_document() {
        let (pair, pkcs8) = VendorKeyPair::generate().unwrap();
        let reloaded = VendorKeyPair::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(reloaded.public_key(), pair.public_key());
    }

    #[test]
    fn bad_vendor_key_text_is_explained() {
        let err = VendorPublicKey::from_text("not base64!").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid vendor key: a vendor public key is base64 text")
        );
        let err = VendorPublicKey::from_text("AAAA").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid vendor key: a vendor public key is 32 bytes, but this decodes to 3 bytes; use the contents of vendor.pub"
        );
        let err = VendorKeyPair::from_pkcs8(b"garbage").unwrap_err();
        assert!(matches!(err, LicenseError::InvalidVendorKey { .. }));
    }

    #[test]
    fn key_id_is_the_start_of_the_sha256_of_the_key() {
        // SHA-256 of 32 zero bytes starts with 66 68 7a ad.
        let id = VendorPublicKey::from_bytes([0; 32]).id();
        assert_eq!(id.to_string(), "66687aad");
    }

    #[test]
    fn the_builtin_key_is_the_documented_one() {
        let builtin: Vec<_> = TrustedKeys::builtin().iter().cloned().collect();
        assert_eq!(builtin.len(), 1);
        assert_eq!(
            builtin[0].to_text(),
            "CXNY/vbmwc0hOqAr12yoeL4FY26d/QsM8jKcPv4ysT8="
        );
        assert_eq!(builtin[0].id().to_string(), "ef353087");
    }

    #[test]
    fn trusted_keys_hold_each_key_once() {
        let (a, _) = VendorKeyPair::generate().unwrap();
        let (b, _) = VendorKeyPair::generate().unwrap();
        let trusted: TrustedKeys = [a.public_key(), b.public_key(), a.public_key()]
            .into_iter()
            .collect();
        assert_eq!(trusted.iter().count(), 2);
        assert_eq!(trusted.with_id(a.public_key().id()).count(), 1);
        let builtin = TrustedKeys::builtin().with(a.public_key());
        assert_eq!(builtin.iter().count(), 2);
    }

    #[test]
    fn debug_output_never_shows_private_material() {
        let (pair, pkcs8) = VendorKeyPair::generate().unwrap();
        let shown = format!("{pair:?}");
        assert_eq!(shown, format!("VendorKeyPair({})", pair.public_key().id()));
        assert!(!shown.contains(&BASE64.encode(&pkcs8[16..48])));
    }
}
