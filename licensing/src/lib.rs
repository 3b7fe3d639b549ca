//! License keys: format, signatures, roles and activation records. Pure: no I/O, no clock, no HTTP, no SQL; the caller passes the date, the trusted keys, the instance name and the install id.
//!
//! A scan gateway server is licensed by one key. A key with role `03` makes
//! the server the **primary** of its pair, a key with role `04` the
//! **secondary**. Promoting a secondary is: deactivate its `04` key, then
//! activate an `03` key (see [`activate`] and [`Activation::deactivate`]).
//!
//! # Key format (version 1)
//!
//! A key as printed, e.g. for primary serial 85:
//!
//! ```text
//! SCANGWP030000085-XXXXX-XXXXX-…-XXXXX      (16 characters, then 24 groups of 5)
//! ```
//!
//! **Readable part** (16 characters): the product code `SCANGWP`, the role
//! `03` (primary) or `04` (secondary), and the serial as 7 zero-padded digits
//! (0 to 9 999 999). A person can tell what a key is for at a glance.
//!
//! **Body** (117 characters): 73 bytes in Crockford base32, most significant
//! bit first, the last character carrying one zero padding bit:
//!
//! | bytes | field |
//! |-------|-------|
//! | 1     | format version, `1` |
//! | 2     | device seats, big-endian `u16`, at least 1 |
//! | 2     | expiry, big-endian `u16` days after 2000-01-01 (0 = never expires); the key is valid up to and including that day |
//! | 4     | vendor key id: first 4 bytes of SHA-256 of the signing vendor's raw Ed25519 public key |
//! | 64    | Ed25519 signature |
//!
//! The signature covers the byte string
//! `"scan-gateway-pair license key\0" ‖ version ‖ "SCANGWP" ‖ role code ("03"/"04") ‖ serial (u32 BE) ‖ seats (u16 BE) ‖ expiry days (u16 BE) ‖ vendor key id`,
//! so no field of the key, readable or not, can be changed without breaking
//! it. The domain prefix keeps these signatures apart from anything else the
//! vendor key might ever sign.
//!
//! **Check characters** (3 characters): a linear code over all 136 symbols
//! (readable part included) that detects every single changed character and
//! every swap of two neighbours, and names the position of a single changed
//! character (details in the `check` module). They are there for typing
//! mistakes; they give no protection against forgery, which the signature
//! provides.
//!
//! The canonical text is the readable part followed by the other 120
//! characters in dash-separated groups of five, all upper case.
//!
//! # Reading what a person typed
//!
//! Before checking, input is normalised: letters may be lower case; spaces,
//! dashes and underscores anywhere are ignored; `O` is read as `0` and `I`
//! and `L` as `1` (Crockford's confusables; `U` is not used). Positions in
//! errors (`at`, `first`, `second`) count characters of the input as given,
//! starting at 1, separators included.
//!
//! Checks run in this order, and the first failure is reported:
//! empty input → characters outside the alphabet → check characters (when
//! the length is right, so a typo is named by position) → product code, role
//! and serial → length → format version and seats → vendor key id among the
//! trusted keys → signature → expiry. Every input gives either a
//! [`LicenseKey`] or a [`LicenseError`]; parsing never panics.
//!
//! # Example: a secondary promoted to primary
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use licensing::{KeySpec, Role, TrustedKeys, VendorKeyPair, activate};
//!
//! // Vendor side (what `license-tool issue` does).
//! let (vendor, _private_pkcs8) = VendorKeyPair::generate()?;
//! let spec = |role, serial| KeySpec { role, serial, seats: 10, expires: None };
//! let key_04 = vendor.issue(&spec(Role::Secondary, 45))?;
//! let key_03 = vendor.issue(&spec(Role::Primary, 85))?;
//! assert!(key_04.starts_with("SCANGWP040000045-"));
//!
//! // Server side: the caller supplies trust, identity and time.
//! let trusted = TrustedKeys::builtin().with(vendor.public_key());
//! let now = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
//! let secondary = activate(&key_04, &trusted, "gw-b", "install-b", now, None)?;
//! let key = secondary.check(&trusted, "gw-b", "install-b", now.date_naive())?;
//! assert_eq!(key.role(), Role::Secondary);
//!
//! // Promotion: release the 04 key, then activate an 03 key.
//! let _receipt = secondary.deactivate(now);
//! let primary = activate(&key_03, &trusted, "gw-b", "install-b", now, None)?;
//! assert_eq!(primary.role(), Role::Primary);
//! # Ok::<(), licensing::LicenseError>(())
//! ```
//!
//! # Trust
//!
//! Servers trust the product's built-in vendor public key
//! ([`TrustedKeys::builtin`]). The matching private key is held offline by the
//! vendor and is never part of this source tree.

mod activation;
mod base32;
mod check;
mod error;
mod ids;
mod key;
mod vendor;

#[cfg(test)]
mod proptests;

pub use activation::{Activation, Deactivation, activate};
pub use error::LicenseError;
pub use ids::{Role, VendorKeyId};
pub use key::{KeySpec, LicenseKey, MAX_SERIAL, PRODUCT, verify};
pub use vendor::{TrustedKeys, VendorKeyPair, VendorPublicKey};
