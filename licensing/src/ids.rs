//! The small values every other module names: the role a key gives and the
//! short id of a vendor key. No parsing, no signatures, no errors: kept
//! apart so that the error type, the key format and the vendor keys can all
//! use them without using each other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The role a key gives the server it activates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Role code `03`: owns every configuration write.
    Primary,
    /// Role code `04`: read-only for configuration, takes jobs on failover.
    Secondary,
}

impl Role {
    /// The two-digit code written in keys: `"03"` or `"04"`.
    pub fn code(self) -> &'static str {
        match self {
            Role::Primary => "03",
            Role::Secondary => "04",
        }
    }

    /// The role for a two-digit code, if it is one.
    pub fn from_code(code: &str) -> Option<Role> {
        match code {
            "03" => Some(Role::Primary),
            "04" => Some(Role::Secondary),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        })
    }
}

/// Short id of a vendor public key: the first four bytes of its SHA-256.
///
/// Keys carry it so that verification can tell "signed by a key this server
/// does not trust" apart from "signature does not match". Four bytes are
/// enough to pick among a handful of trusted keys; they are not a security
/// boundary, the signature is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VendorKeyId(pub(crate) [u8; 4]);

impl VendorKeyId {
    /// The four bytes of the id.
    pub fn bytes(self) -> [u8; 4] {
        self.0
    }
}

impl fmt::Display for VendorKeyId {
    /// Eight lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Serialize for VendorKeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
