//! Server ids and epochs: the order of primaries over time.
//!
//! Every server makes a random [`ServerId`] once, on its first start, and
//! keeps it for life. Instance names are not unique across hosts and license
//! serials are not either (the promotion procedure may reactivate a secondary
//! with the primary's own `03` key), so neither can break a tie.
//!
//! An [`Epoch`] is the term of one primary: a number, raised by every
//! activation as primary, and the id of the server that took it. Epochs are
//! ordered by number first, then by server id, so any two epochs are
//! comparable and two primaries that both took number 2 are still strictly
//! ordered. The rules built on that order (enforced by the store and the
//! pair link, written there too):
//! - a server never moves its highest seen epoch backwards, across restarts;
//! - a configuration change stamped with an epoch older than the highest one
//!   a server has seen is refused;
//! - a primary that meets a primary of a newer epoch is fenced.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A server's identity in the pair: 128 random bits, written as 32
/// lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(u128);

impl ServerId {
    /// The id of no server: the epoch before any primary existed carries it.
    pub const NONE: ServerId = ServerId(0);

    /// An id from 16 random bytes (the caller owns the randomness).
    pub fn from_bytes(bytes: [u8; 16]) -> ServerId {
        ServerId(u128::from_be_bytes(bytes))
    }

    /// An id from a number (tests and the model checker use small ones).
    pub const fn from_u128(n: u128) -> ServerId {
        ServerId(n)
    }

    /// The first 8 hex digits, enough for people to tell servers apart.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_owned()
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerId({self})")
    }
}

/// A server id or epoch that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    /// Not 32 hex digits.
    #[error("server id `{0}` is not valid: it must be 32 hex digits")]
    BadServerId(String),
    /// Not `NUMBER/SERVER-ID`.
    #[error("epoch `{0}` is not valid: it must be NUMBER/SERVER-ID, e.g. 3/<32 hex digits>")]
    BadEpoch(String),
}

impl FromStr for ServerId {
    type Err = EpochError;

    fn from_str(s: &str) -> Result<ServerId, EpochError> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EpochError::BadServerId(s.chars().take(40).collect()));
        }
        u128::from_str_radix(s, 16)
            .map(ServerId)
            .map_err(|_| EpochError::BadServerId(s.to_owned()))
    }
}

impl Serialize for ServerId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ServerId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The term of one primary. Ordered by `number`, then by `server`: the
/// derive below compares the fields in that order, and that order is the
/// rule.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Epoch {
    pub number: u64,
    pub server: ServerId,
}

impl Epoch {
    /// Before any primary: every real epoch is newer.
    pub const ZERO: Epoch = Epoch {
        number: 0,
        server: ServerId::NONE,
    };

    pub const fn new(number: u64, server: ServerId) -> Epoch {
        Epoch { number, server }
    }

    /// The epoch `server` takes when it becomes primary having seen `self`
    /// as the newest epoch: strictly newer than `self` and than any other
    /// epoch with `self`'s number.
    pub fn next_for(self, server: ServerId) -> Epoch {
        Epoch {
            number: self.number + 1,
            server,
        }
    }
}

impl fmt::Display for Epoch {
    /// `3/<server id>`; the short form for people is [`Epoch::short`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.number, self.server)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({}/{})", self.number, self.server.short())
    }
}

impl Epoch {
    /// `3 (by 1a2b3c4d)`, for messages people read.
    pub fn short(&self) -> String {
        if self.server == ServerId::NONE {
            self.number.to_string()
        } else {
            format!("{} (by {})", self.number, self.server.short())
        }
    }
}

impl FromStr for Epoch {
    type Err = EpochError;

    fn from_str(s: &str) -> Result<Epoch, EpochError> {
        let bad = || EpochError::BadEpoch(s.chars().take(60).collect());
        let (number, server) = s.split_once('/').ok_or_else(bad)?;
        Ok(Epoch {
            number: number.parse().map_err(|_| bad())?,
            server: server.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ServerId = ServerId::from_u128(0xa);
    const B: ServerId = ServerId::from_u128(0xb);

    #[test]
    fn number_orders_first_then_server() {
        assert!(Epoch::new(2, A) < Epoch::new(3, A));
        assert!(Epoch::new(2, B) < Epoch::new(3, A));
        assert!(Epoch::new(2, A) < Epoch::new(2, B));
        assert!(Epoch::ZERO < Epoch::new(0, A));
    }

    #[test]
    fn two_primaries_promoted_to_the_same_number_are_strictly_ordered() {
        let seen = Epoch::new(1, A);
        let a = seen.next_for(A);
        let b = seen.next_for(B);
        assert_eq!(a.number, b.number);
        assert_ne!(a, b);
        assert!(a < b);
        assert!(seen < a);
    }

    #[test]
    fn text_round_trips_and_bad_text_is_refused() {
        let e = Epoch::new(7, ServerId::from_bytes([0x12; 16]));
        assert_eq!(e.to_string().parse::<Epoch>().unwrap(), e);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Epoch>(&json).unwrap(), e);
        assert!("7".parse::<Epoch>().is_err());
        assert!("x/0".parse::<Epoch>().is_err());
        assert!(matches!(
            "abc".parse::<ServerId>(),
            Err(EpochError::BadServerId(_))
        ));
        assert!("+".repeat(32).parse::<ServerId>().is_err());
    }
}
