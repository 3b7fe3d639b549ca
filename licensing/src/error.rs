//! The one error type of the crate. Each message says what was wrong and what to do; messages must not contain secrets (a key's signature part is never quoted).

use chrono::NaiveDate;

use crate::ids::{Role, VendorKeyId};

/// Why a key, an activation or a vendor key was refused.
///
/// Positions (`at`, `first`, `second`) count characters of the text the
/// person gave, starting at 1, separators included, so they can be found by
/// counting along what was typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    /// The text was empty or held only separators.
    #[error("no license key was given: paste the whole key, starting with SCANGWP")]
    Empty,

    /// The text is not shaped like a license key (wrong characters, wrong length).
    #[error(
        "not a valid license key: {reason} (at character {at}); copy the key again from the license document"
    )]
    Malformed {
        /// Position of the first offending character, or one past the end
        /// when something is missing.
        at: usize,
        /// What was expected there.
        reason: String,
    },

    /// Exactly one character was mistyped, and the check characters say which.
    #[error(
        "character {at} of the license key is mistyped: compare it with the key you were given and correct it"
    )]
    Typo {
        /// Position of the mistyped character.
        at: usize,
    },

    /// Two neighbouring characters were swapped.
    #[error(
        "characters {first} and {second} of the license key look swapped: compare them with the key you were given"
    )]
    Swapped {
        /// Position of the first of the two characters.
        first: usize,
        /// Position of the second.
        second: usize,
    },

    /// The check characters do not match and the mistake cannot be located.
    #[error(
        "the license key has typing mistakes (its check characters do not match): compare the whole key with the one you were given"
    )]
    Checksum,

    /// A well-formed key, but for another product.
    #[error(
        "this is a key for product {found}, not for the scan gateway (SCANGWP): use the key issued for this product"
    )]
    WrongProduct {
        /// The product code the key carries.
        found: String,
    },

    /// The role code is neither `03` nor `04`.
    #[error(
        "unknown role code {found}: a scan gateway key has role 03 (primary) or 04 (secondary)"
    )]
    UnknownRole {
        /// The two characters found where the role belongs.
        found: String,
    },

    /// The key was written in a format version this build does not read.
    #[error(
        "license key format version {found} is not supported (this build reads version 1): update the gateway or ask the vendor for a version 1 key"
    )]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },

    /// The key was signed by a vendor key this server does not trust.
    #[error(
        "the license key was signed by vendor key {id}, which this server does not trust: use a key issued for this product, or add that vendor's public key to the trusted keys"
    )]
    UnknownVendorKey {
        /// Id of the signing key named in the license key.
        id: VendorKeyId,
    },

    /// The signature does not match the key's contents: altered or forged.
    #[error(
        "the license key's signature is not valid: the key was altered or forged; use the key exactly as the vendor issued it"
    )]
    BadSignature,

    /// The key is genuine but its last valid day has passed.
    #[error("the license key expired on {on}: ask the vendor for a renewed key")]
    Expired {
        /// The last day the key was valid.
        on: NaiveDate,
    },

    /// The server already holds an activation; keys are not swapped in place.
    #[error(
        "this server is already activated with {role} key serial {serial:07}: deactivate that key first, then activate the new one"
    )]
    AlreadyActivated {
        /// Serial of the key currently active.
        serial: u32,
        /// Role of the key currently active.
        role: Role,
    },

    /// The activation record belongs to another server instance.
    #[error(
        "this activation belongs to instance '{bound_instance}' (install id {bound_install_id}), not to instance '{instance}' (install id {install_id}): activate this server with its own key"
    )]
    WrongInstance {
        /// Instance name recorded at activation.
        bound_instance: String,
        /// Install id recorded at activation.
        bound_install_id: String,
        /// Instance name of the server checking the record.
        instance: String,
        /// Install id of the server checking the record.
        install_id: String,
    },

    /// The activation record disagrees with the key it holds: it was edited.
    #[error(
        "the activation record's {field} does not match its license key, so the record was edited: deactivate and activate the key again"
    )]
    RecordMismatch {
        /// The field that differs.
        field: &'static str,
    },

    /// An instance name or install id given for activation is unusable.
    #[error("invalid {what} for activation: {reason}")]
    InvalidBinding {
        /// `"instance name"` or `"install id"`.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// A key could not be issued from the given specification.
    #[error("cannot issue a license key: {reason}")]
    InvalidSpec {
        /// The field out of range and the allowed range.
        reason: String,
    },

    /// Vendor key material (public or private) could not be read.
    #[error("invalid vendor key: {reason}")]
    InvalidVendorKey {
        /// What was wrong with it.
        reason: String,
    },
}
