//! User passwords: PBKDF2-HMAC-SHA256 hashes (ring) in a self-describing
//! text form, `pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>`, so the
//! iteration count can be raised later without breaking stored hashes.

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

/// Iterations for new hashes (OWASP's 2023 figure for PBKDF2-HMAC-SHA256).
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// Hashes weaker than this are refused when the configuration is loaded.
pub const MIN_ITERATIONS: u32 = 10_000;

const PREFIX: &str = "pbkdf2-sha256";
const HASH_LEN: usize = 32;

/// A parsed, well-formed password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not a secret in the strict sense, but it is an offline
        // attack target: keep it out of logs.
        write!(f, "PasswordHash({PREFIX}, {} iterations)", self.iterations)
    }
}

impl PasswordHash {
    /// Parses the text form, saying what is wrong with a bad one.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let parts: Vec<&str> = text.split('$').collect();
        let [prefix, iterations, salt, hash] = parts.as_slice() else {
            return Err(format!(
                "expected `{PREFIX}$ITERATIONS$SALT$HASH`; create one with `gateway user hash-password`"
            ));
        };
        if *prefix != PREFIX {
            return Err(format!(
                "unknown hash scheme `{prefix}`; only `{PREFIX}` is supported"
            ));
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| format!("iteration count `{iterations}` is not a number"))?;
        if iterations < MIN_ITERATIONS {
            return Err(format!(
                "iteration count {iterations} is below the minimum {MIN_ITERATIONS}; hash the password again"
            ));
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| "salt is not base64".to_string())?;
        let hash = B64
            .decode(hash)
            .map_err(|_| "hash is not base64".to_string())?;
        if salt.len() < 16 {
            return Err("salt is shorter than 16 bytes".into());
        }
        if hash.len() != HASH_LEN {
            return Err(format!(
                "hash must be {HASH_LEN} bytes, found {}",
                hash.len()
            ));
        }
        Ok(PasswordHash {
            iterations: NonZeroU32::new(iterations).expect("checked above"),
            salt,
            hash,
        })
    }

    /// Hashes a password with a fresh random salt.
    pub fn create(password: &str, iterations: u32) -> PasswordHash {
        let iterations = NonZeroU32::new(iterations.max(MIN_ITERATIONS)).expect("non-zero");
        let mut salt = vec![0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .expect("the system random source works");
        let mut hash = vec![0u8; HASH_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password.as_bytes(),
            &mut hash,
        );
        PasswordHash {
            iterations,
            salt,
            hash,
        }
    }

    /// A hash to verify against when the named user does not exist. Its
    /// salt and hash bytes are random rather than derived from a password,
    /// so making one costs nothing, yet verifying against it runs the same
    /// PBKDF2 with `iterations` as a real user's check does (and never
    /// matches, but for a 2^-256 chance).
    pub fn decoy(iterations: u32) -> PasswordHash {
        let iterations = NonZeroU32::new(iterations.max(MIN_ITERATIONS)).expect("non-zero");
        let mut salt = vec![0u8; 16];
        let mut hash = vec![0u8; HASH_LEN];
        let random = SystemRandom::new();
        random
            .fill(&mut salt)
            .expect("the system random source works");
        random
            .fill(&mut hash)
            .expect("the system random source works");
        PasswordHash {
            iterations,
            salt,
            hash,
        }
    }

    /// The PBKDF2 iteration count: the cost of checking a password.
    pub fn iterations(&self) -> u32 {
        self.iterations.get()
    }

    /// Checks a password in constant time.
    pub fn verify(&self, password: &str) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }

    /// The text form.
    pub fn to_text(&self) -> String {
        format!(
            "{PREFIX}${}${}${}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.hash)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_verify() {
        let h = PasswordHash::create("correct horse", MIN_ITERATIONS);
        let parsed = PasswordHash::parse(&h.to_text()).unwrap();
        assert!(parsed.verify("correct horse"));
        assert!(!parsed.verify("correct horsf"));
        assert!(!parsed.verify(""));
        assert!(!format!("{parsed:?}").contains(&B64.encode(&h.hash)));
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        assert!(
            PasswordHash::parse("secret")
                .unwrap_err()
                .contains("gateway user hash-password")
        );
        assert!(
            PasswordHash::parse("md5$1$a$b")
                .unwrap_err()
                .contains("unknown hash scheme")
        );
        assert!(
            PasswordHash::parse("pbkdf2-sha256$10$AAAAAAAAAAAAAAAAAAAAAA$AAAA")
                .unwrap_err()
                .contains("below the minimum")
        );
        assert!(
            PasswordHash::parse("pbkdf2-sha256$20000$!!$AAAA")
                .unwrap_err()
                .contains("salt is not base64")
        );
    }
}
