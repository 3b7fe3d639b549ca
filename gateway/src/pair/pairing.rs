//! Pairing: the one-time code an admin carries from the primary to the
//! secondary, the exchange it opens, and the record each server keeps of
//! the peer it paired with.
//!
//! The code is `sgp1.<primary fingerprint>.<secret>.<expiry>`: the secondary
//! verifies the primary by the fingerprint (so it needs no other trust), and
//! proves it holds the secret by an HMAC over both certificates'
//! fingerprints, which binds the proof to the very TLS connection's
//! certificates. The primary accepts a code once, before its expiry.

use chrono::{DateTime, Utc};
use pair_core::ServerId;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::security::hex;
use crate::store::{Store, StoreError};

/// How long a pairing code may be used.
pub const CODE_VALID_SECS: i64 = 600;
const PEER_KEY: &str = "pair.peer";

/// Why a pairing code cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this is not a pairing code ({0}); copy the whole code `gateway pair init` printed on the primary"
)]
pub struct BadCode(&'static str);

/// A pairing code as the secondary reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingCode {
    pub primary_fingerprint: [u8; 32],
    pub secret: [u8; 16],
    pub expires_at: DateTime<Utc>,
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl PairingCode {
    pub fn text(&self) -> String {
        format!(
            "sgp1.{}.{}.{}",
            hex(&self.primary_fingerprint),
            hex(&self.secret),
            self.expires_at.timestamp()
        )
    }

    pub fn parse(text: &str) -> Result<PairingCode, BadCode> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [version, fp, secret, expiry] = parts.as_slice() else {
            return Err(BadCode("it must have four parts separated by dots"));
        };
        if *version != "sgp1" {
            return Err(BadCode("it must start with sgp1."));
        }
        let primary_fingerprint =
            unhex::<32>(fp).ok_or(BadCode("the fingerprint part is not 64 hex digits"))?;
        let secret = unhex::<16>(secret).ok_or(BadCode("the secret part is not 32 hex digits"))?;
        let expires_at = expiry
            .parse::<i64>()
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .ok_or(BadCode("the expiry part is not a time"))?;
        Ok(PairingCode {
            primary_fingerprint,
            secret,
            expires_at,
        })
    }

    /// The secondary's proof that it holds the secret, bound to both
    /// certificates of the connection.
    pub fn proof(&self, secondary_fingerprint: &[u8; 32]) -> String {
        proof(
            &self.secret,
            secondary_fingerprint,
            &self.primary_fingerprint,
        )
    }
}

fn proof_input(
    secret: &[u8; 16],
    secondary: &[u8; 32],
    primary: &[u8; 32],
) -> (hmac::Key, Vec<u8>) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut msg = b"scangw-pair-proof/1".to_vec();
    msg.extend_from_slice(secondary);
    msg.extend_from_slice(primary);
    (key, msg)
}

fn proof(secret: &[u8; 16], secondary: &[u8; 32], primary: &[u8; 32]) -> String {
    let (key, msg) = proof_input(secret, secondary, primary);
    hex(hmac::sign(&key, &msg).as_ref())
}

/// A code the primary handed out, waiting for its one use.
#[derive(Debug, Clone)]
pub struct OpenCode {
    pub code: PairingCode,
    pub used: bool,
}

impl OpenCode {
    /// Checks a secondary's proof. Refusals say why, in words for both
    /// admins (the secondary prints it, the primary logs it).
    pub fn accept(
        &mut self,
        proof_text: &str,
        secondary: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        if self.used {
            return Err("the pairing code was already used; run `gateway pair init` on the primary for a new one".into());
        }
        if now > self.code.expires_at {
            return Err(
                "the pairing code expired; run `gateway pair init` on the primary for a new one"
                    .into(),
            );
        }
        let (key, msg) = proof_input(&self.code.secret, secondary, &self.code.primary_fingerprint);
        // ring's verify compares in constant time: the proof is derived
        // from the secret.
        let given = unhex::<32>(proof_text).unwrap_or([0; 32]);
        if hmac::verify(&key, &msg, &given).is_err() {
            return Err(
                "the pairing code is wrong; copy it again from `gateway pair init` on the primary"
                    .into(),
            );
        }
        self.used = true;
        Ok(())
    }
}

/// The pairing exchange: the secondary's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub proof: String,
    pub server: ServerId,
    pub instance: String,
}

/// The primary's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum JoinAnswer {
    Accepted { server: ServerId, instance: String },
    Refused { reason: String },
}

/// The peer a server paired with, as it keeps it (local state, never
/// replicated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub server: ServerId,
    pub instance: String,
    /// `sha256:` and the hex digest of the peer's pair certificate.
    pub fingerprint: String,
    pub paired_at: DateTime<Utc>,
}

impl PeerRecord {
    pub fn fingerprint_bytes(&self) -> Option<[u8; 32]> {
        unhex::<32>(self.fingerprint.strip_prefix("sha256:")?)
    }

    pub fn load(store: &Store) -> Result<Option<PeerRecord>, StoreError> {
        match store.local_get(PEER_KEY)? {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("the paired peer record: {e}"))),
        }
    }

    pub fn save(&self, store: &Store) -> Result<(), StoreError> {
        let json = serde_json::to_string(self).expect("peer records serialise");
        store.local_set(PEER_KEY, Some(&json))
    }

    pub fn remove(store: &Store) -> Result<(), StoreError> {
        store.local_set(PEER_KEY, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(expires_in: i64) -> PairingCode {
        PairingCode {
            primary_fingerprint: [1; 32],
            secret: [2; 16],
            expires_at: Utc::now() + chrono::Duration::seconds(expires_in),
        }
    }

    #[test]
    fn codes_round_trip_and_bad_text_says_what_is_wrong() {
        let c = code(60);
        let parsed = PairingCode::parse(&c.text()).unwrap();
        assert_eq!(parsed.primary_fingerprint, c.primary_fingerprint);
        assert_eq!(parsed.secret, c.secret);
        for (bad, why) in [
            ("hello", "four parts"),
            ("sgp2.a.b.c", "sgp1"),
            ("sgp1.zz.00.1", "fingerprint"),
        ] {
            let e = PairingCode::parse(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_code_opens_once_with_the_right_proof_before_it_expires() {
        let secondary = [9; 32];
        let mut open = OpenCode {
            code: code(60),
            used: false,
        };
        let wrong = code(60);
        let mut wrong_secret = wrong.clone();
        wrong_secret.secret = [3; 16];
        let e = open
            .accept(&wrong_secret.proof(&secondary), &secondary, Utc::now())
            .unwrap_err();
        assert!(e.contains("wrong"), "{e}");
        // A proof made for another certificate does not open it either.
        let e = open
            .accept(&open.code.proof(&[8; 32]), &secondary, Utc::now())
            .unwrap_err();
        assert!(e.contains("wrong"), "{e}");
        let good = open.code.proof(&secondary);
        open.accept(&good, &secondary, Utc::now()).unwrap();
        let e = open.accept(&good, &secondary, Utc::now()).unwrap_err();
        assert!(e.contains("already used"), "{e}");

        let mut late = OpenCode {
            code: code(-1),
            used: false,
        };
        let e = late
            .accept(&late.code.proof(&secondary), &secondary, Utc::now())
            .unwrap_err();
        assert!(e.contains("expired"), "{e}");
    }
}
