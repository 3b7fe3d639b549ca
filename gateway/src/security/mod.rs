//! Secrets and credentials: password hashes, device tokens and signed user
//! sessions. Nothing here logs a secret; `Debug` output is redacted.

pub mod passwords;
pub mod sessions;
pub mod tokens;

pub use passwords::PasswordHash;
pub use sessions::{Session, SessionError, SessionKey};

/// The SHA-256 of `bytes` in lower-case hex (job manifests, configuration
/// documents, secrets written as digests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Lower-case hex of some bytes (digests, ids).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
