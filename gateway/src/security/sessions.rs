//! User sessions at the panel: signed tokens (HMAC-SHA256, ring) that carry
//! the user, the device and the expiry. The key is part of the pair's shared
//! configuration, so a session started on the primary stays valid on the
//! secondary after a failover (R2) without any shared session table. Logout
//! is recorded locally by session id.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, TimeZone, Utc};
use ring::hmac;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const VERSION: &str = "sgs1";

/// The pair's session signing key.
#[derive(Clone)]
pub struct SessionKey(hmac::Key);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(redacted)")
    }
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "sid")]
    pub id: Uuid,
    #[serde(rename = "usr")]
    pub user: String,
    #[serde(rename = "dev")]
    pub device: Uuid,
    pub iat: i64,
    pub exp: i64,
}

impl Session {
    pub fn expires_at(&self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.exp, 0).single().unwrap_or_default()
    }
}

/// Why a session token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Not a session token at all.
    #[error("the session token is malformed: log in again")]
    Malformed,
    /// Signed by another key, or altered.
    #[error("the session token's signature does not verify: log in again")]
    BadSignature,
    /// Past its expiry.
    #[error("the session expired at {0}: log in again")]
    Expired(DateTime<Utc>),
}

impl SessionKey {
    pub fn from_bytes(bytes: &[u8]) -> SessionKey {
        SessionKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// Issues a token for `user` at `device`, valid for `ttl_secs` from `now`.
    pub fn issue(
        &self,
        user: &str,
        device: Uuid,
        now: DateTime<Utc>,
        ttl_secs: u64,
    ) -> (String, Session) {
        let session = Session {
            id: Uuid::new_v4(),
            user: user.to_owned(),
            device,
            iat: now.timestamp(),
            exp: now.timestamp() + ttl_secs as i64,
        };
        let payload = B64URL.encode(serde_json::to_vec(&session).expect("session serialises"));
        let signed = format!("{VERSION}.{payload}");
        let tag = hmac::sign(&self.0, signed.as_bytes());
        (format!("{signed}.{}", B64URL.encode(tag.as_ref())), session)
    }

    /// Verifies a token's signature and expiry.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Session, SessionError> {
        let session = self.verify_signature(token)?;
        if session.exp <= now.timestamp() {
            return Err(SessionError::Expired(session.expires_at()));
        }
        Ok(session)
    }

    /// Checks the token's signature only, not its expiry: for replays of
    /// jobs scanned while the session was valid (the caller applies the
    /// replay window).
    pub fn verify_signature(&self, token: &str) -> Result<Session, SessionError> {
        if token.len() > 1024 {
            return Err(SessionError::Malformed);
        }
        let (signed, tag) = token.rsplit_once('.').ok_or(SessionError::Malformed)?;
        let (version, payload) = signed.split_once('.').ok_or(SessionError::Malformed)?;
        if version != VERSION {
            return Err(SessionError::Malformed);
        }
        let tag = B64URL.decode(tag).map_err(|_| SessionError::Malformed)?;
        hmac::verify(&self.0, signed.as_bytes(), &tag).map_err(|_| SessionError::BadSignature)?;
        let json = B64URL
            .decode(payload)
            .map_err(|_| SessionError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| SessionError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_verifies_with_the_same_key_only() {
        let key = SessionKey::from_bytes(&[7; 32]);
        let other = SessionKey::from_bytes(&[8; 32]);
        let now = Utc::now();
        let dev = Uuid::new_v4();
        let (token, session) = key.issue("alice", dev, now, 60);
        assert_eq!(key.verify(&token, now).unwrap(), session);
        assert_eq!(other.verify(&token, now), Err(SessionError::BadSignature));
    }

    #[test]
    fn expiry_is_checked_against_the_given_clock() {
        let key = SessionKey::from_bytes(&[7; 32]);
        let now = Utc::now();
        let (token, _) = key.issue("alice", Uuid::new_v4(), now, 60);
        assert!(
            key.verify(&token, now + chrono::Duration::seconds(59))
                .is_ok()
        );
        assert!(matches!(
            key.verify(&token, now + chrono::Duration::seconds(60)),
            Err(SessionError::Expired(_))
        ));
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let key = SessionKey::from_bytes(&[7; 32]);
        let now = Utc::now();
        let (token, _) = key.issue("alice", Uuid::new_v4(), now, 60);
        let (signed, tag) = token.rsplit_once('.').unwrap();
        let forged_payload = B64URL.encode(
            serde_json::to_vec(&serde_json::json!({"sid": Uuid::new_v4(), "usr": "root", "dev": Uuid::new_v4(), "iat": 0, "exp": i64::MAX}))
                .unwrap(),
        );
        let forged = format!("{VERSION}.{forged_payload}.{tag}");
        assert_eq!(key.verify(&forged, now), Err(SessionError::BadSignature));
        assert_eq!(
            key.verify(&format!("{signed}.!!"), now),
            Err(SessionError::Malformed)
        );
        for junk in ["", ".", "a.b.c", "sgs2.x.y", &"x".repeat(5000)] {
            assert!(key.verify(junk, now).is_err(), "{junk:?}");
        }
    }
}
