//! Device tokens: 256 random bits, shown once, stored only as SHA-256. A
//! plain hash is enough here (unlike passwords) because the token has full
//! entropy: there is nothing to brute-force.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::rand::{SecureRandom, SystemRandom};

/// Prefix that makes a device token recognisable in a config file or a
/// secret scanner, and lets a typo be reported as such.
const PREFIX: &str = "sgd_";

/// A new random device token.
pub fn new_device_token() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    format!("{PREFIX}{}", B64URL.encode(bytes))
}

/// The stored form of a token.
pub fn token_digest(token: &str) -> String {
    super::sha256_hex(token.as_bytes())
}

/// Whether a string has the shape of a device token (before any lookup).
pub fn looks_like_device_token(token: &str) -> bool {
    token.len() == PREFIX.len() + 43
        && token.starts_with(PREFIX)
        && token[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// 32 random bytes, for keys.
pub fn random_key() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_well_formed() {
        let a = new_device_token();
        let b = new_device_token();
        assert_ne!(a, b);
        assert!(looks_like_device_token(&a));
        assert!(!looks_like_device_token(&a[1..]));
        assert!(!looks_like_device_token("sgd_short"));
        assert_eq!(token_digest(&a).len(), 64);
    }
}
