//! This server's pair certificate: made once (rcgen) on first start with the
//! fixed name `<server id>.pair.invalid`, kept in the data directory, and
//! presented on the pair link. The link is verified by pinning this
//! certificate, never by an address, which may differ behind NAT or a test
//! proxy. It owns only the files; trust decisions are in `trust`.

use std::path::Path;

use anyhow::Context;
use pair_core::ServerId;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// This server's pair certificate and key.
pub struct PairIdentity {
    pub cert: CertificateDer<'static>,
    key_pem: String,
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for PairIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PairIdentity({})", fingerprint_text(&self.fingerprint))
    }
}

/// The name every pair certificate carries.
pub fn pair_name(server: ServerId) -> String {
    format!("{server}.pair.invalid")
}

/// SHA-256 of a certificate's DER: what the other server pins.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// `sha256:` and 64 hex digits, as status shows a fingerprint.
pub fn fingerprint_text(fp: &[u8; 32]) -> String {
    format!("sha256:{}", crate::security::hex(fp))
}

impl PairIdentity {
    /// Loads the pair certificate from `dir`, making it on first use.
    pub fn load_or_create(dir: &Path, server: ServerId) -> anyhow::Result<PairIdentity> {
        let cert_path = dir.join("pair.cert.pem");
        let key_path = dir.join("pair.key.pem");
        if !(cert_path.exists() && key_path.exists()) {
            let certified = rcgen::generate_simple_self_signed(vec![pair_name(server)])
                .context("generating the pair certificate")?;
            plugins::fsutil::create_private_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            plugins::fsutil::write_atomic(
                &key_path,
                certified.signing_key.serialize_pem().as_bytes(),
                "new",
            )
            .with_context(|| format!("cannot write {}", key_path.display()))?;
            plugins::fsutil::write_atomic(&cert_path, certified.cert.pem().as_bytes(), "new")
                .with_context(|| format!("cannot write {}", cert_path.display()))?;
        }
        let cert = CertificateDer::from_pem_file(&cert_path)
            .with_context(|| format!("cannot read the pair certificate {}", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read the pair key {}", key_path.display()))?;
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .with_context(|| format!("{} holds no usable private key", key_path.display()))?;
        let fingerprint = fingerprint(cert.as_ref());
        Ok(PairIdentity {
            cert,
            key_pem,
            fingerprint,
        })
    }

    /// The private key, for a TLS configuration.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("checked when loaded")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = ServerId::from_u128(7);
        let a = PairIdentity::load_or_create(dir.path(), id).unwrap();
        let b = PairIdentity::load_or_create(dir.path(), id).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("pair.key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(fingerprint_text(&a.fingerprint).starts_with("sha256:"));
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }
}
