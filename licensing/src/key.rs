//! The license key format: roles, composing a signed key, and parsing and verifying what a person typed. Pure: the caller supplies the date and the trusted keys.

use std::str::FromStr;

use chrono::NaiveDate;
use serde::Serialize;

use crate::LicenseError;
use crate::base32::{self, Typed};
use crate::check::{self, Verdict};
pub use crate::ids::Role;
use crate::ids::VendorKeyId;
use crate::vendor::{TrustedKeys, VendorKeyPair};

/// Product code at the start of every key.
pub const PRODUCT: &str = "SCANGWP";

/// Highest serial: it is printed as seven digits.
pub const MAX_SERIAL: u32 = 9_999_999;

/// Format version written into (and required of) the key body.
const FORMAT_VERSION: u8 = 1;

/// Prefix of every signed payload, so a license signature can never be
/// mistaken for a signature the vendor key makes for any other purpose.
const DOMAIN: &[u8] = b"scan-gateway-pair license key\0";

/// Expiry dates are stored as days since this date; 0 means "no expiry".
const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(2000, 1, 1) {
    Some(date) => date,
    None => panic!("2000-01-01 is a valid date"),
};

/// Product (7) + role (2) + serial (7).
const READABLE: usize = 16;
/// Version, seats, expiry, vendor key id, signature.
const BODY_BYTES: usize = 1 + 2 + 2 + 4 + 64;
const BODY_SYMBOLS: usize = base32::encoded_len(BODY_BYTES);
const _: () = assert!(READABLE + BODY_SYMBOLS + 3 == check::LEN);

impl FromStr for Role {
    type Err = LicenseError;

    /// Accepts the code (`03`, `04`) or the name (`primary`, `secondary`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Role::from_code(s)
            .or_else(|| match s.to_ascii_lowercase().as_str() {
                "primary" => Some(Role::Primary),
                "secondary" => Some(Role::Secondary),
                _ => None,
            })
            .ok_or_else(|| LicenseError::UnknownRole {
                found: s.to_owned(),
            })
    }
}

impl VendorKeyPair {
    /// Issues a license key for `spec`, in canonical text form.
    ///
    /// Fails when the spec is out of range: serial above 9 999 999, no seats,
    /// or an expiry date outside 2000-01-02 ..= 2179-06-06.
    pub fn issue(&self, spec: &KeySpec) -> Result<String, LicenseError> {
        compose(spec, self.public_key().id(), |payload| self.sign(payload))
    }
}

/// What a vendor puts into a key it issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Primary (`03`) or secondary (`04`).
    pub role: Role,
    /// 0 ..= 9 999 999.
    pub serial: u32,
    /// Number of devices the server may serve; at least 1.
    pub seats: u16,
    /// Last valid day, or `None` for a permanent key.
    pub expires: Option<NaiveDate>,
}

/// A license key whose signature was verified by a trusted vendor key and
/// which had not expired on the day it was checked. Only [`verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LicenseKey {
    role: Role,
    serial: u32,
    seats: u16,
    expires: Option<NaiveDate>,
    vendor_key_id: VendorKeyId,
    text: String,
}

impl LicenseKey {
    /// Always [`PRODUCT`]: keys for other products are refused.
    pub fn product(&self) -> &'static str {
        PRODUCT
    }
    /// The role the key grants.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The serial number.
    pub fn serial(&self) -> u32 {
        self.serial
    }
    /// Number of device seats.
    pub fn seats(&self) -> u16 {
        self.seats
    }
    /// Last valid day, `None` for a permanent key.
    pub fn expires(&self) -> Option<NaiveDate> {
        self.expires
    }
    /// Id of the vendor key that signed it.
    pub fn vendor_key_id(&self) -> VendorKeyId {
        self.vendor_key_id
    }
    /// The canonical text form (upper case, grouped by dashes).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Verifies a key as a person typed it: format, typos, product, role,
/// signature by one of the `trusted` keys, and expiry on `today`.
///
/// A key is valid up to and including its expiry date.
pub fn verify(
    text: &str,
    trusted: &TrustedKeys,
    today: NaiveDate,
) -> Result<LicenseKey, LicenseError> {
    let parsed = parse(text)?;
    let mut signers = trusted.with_id(parsed.vendor_key_id).peekable();
    if signers.peek().is_none() {
        return Err(LicenseError::UnknownVendorKey {
            id: parsed.vendor_key_id,
        });
    }
    let payload = signed_payload(
        parsed.role,
        parsed.serial,
        parsed.seats,
        parsed.expiry_days,
        parsed.vendor_key_id,
    );
    if !signers.any(|key| key.verifies(&payload, &parsed.signature)) {
        return Err(LicenseError::BadSignature);
    }
    if let Some(on) = parsed.expires
        && today > on
    {
        return Err(LicenseError::Expired { on });
    }
    Ok(LicenseKey {
        role: parsed.role,
        serial: parsed.serial,
        seats: parsed.seats,
        expires: parsed.expires,
        vendor_key_id: parsed.vendor_key_id,
        text: parsed.text,
    })
}

/// Builds and signs the canonical text of a key; `sign` signs the payload.
pub(crate) fn compose(
    spec: &KeySpec,
    vendor_key_id: VendorKeyId,
    sign: impl FnOnce(&[u8]) -> [u8; 64],
) -> Result<String, LicenseError> {
    if spec.serial > MAX_SERIAL {
        return Err(LicenseError::InvalidSpec {
            reason: format!(
                "serial {} does not fit in 7 digits (0 to {MAX_SERIAL})",
                spec.serial
            ),
        });
    }
    if spec.seats == 0 {
        return Err(LicenseError::InvalidSpec {
            reason: "a key must grant at least 1 seat".to_owned(),
        });
    }
    let expiry_days = match spec.expires {
        None => 0,
        Some(date) => u16::try_from((date - EPOCH).num_days())
            .ok()
            .filter(|&days| days > 0)
            .ok_or_else(|| LicenseError::InvalidSpec {
                reason: format!(
                    "expiry date {date} is outside the range a key can carry ({} to {})",
                    EPOCH + chrono::Days::new(1),
                    EPOCH + chrono::Days::new(u64::from(u16::MAX))
                ),
            })?,
    };
    let signature = sign(&signed_payload(
        spec.role,
        spec.serial,
        spec.seats,
        expiry_days,
        vendor_key_id,
    ));

    let mut body = Vec::with_capacity(BODY_BYTES);
    body.push(FORMAT_VERSION);
    body.extend_from_slice(&spec.seats.to_be_bytes());
    body.extend_from_slice(&expiry_days.to_be_bytes());
    body.extend_from_slice(&vendor_key_id.bytes());
    body.extend_from_slice(&signature);

    let readable = format!("{PRODUCT}{}{:07}", spec.role.code(), spec.serial);
    let mut symbols = [0u8; check::LEN];
    for (slot, c) in symbols.iter_mut().zip(readable.chars()) {
        // The product code and digits are all symbols of the alphabet.
        *slot = match base32::classify(c) {
            Typed::Symbol(value) => value,
            Typed::Separator | Typed::Invalid => 0,
        };
    }
    symbols[READABLE..READABLE + BODY_SYMBOLS].copy_from_slice(&base32::encode(&body));
    check::seal(&mut symbols);
    Ok(render(&symbols))
}

/// The bytes the vendor signs. Every field of the key is in it, behind a
/// domain prefix and the format version, in a fixed binary layout so that
/// two different keys can never share a payload.
fn signed_payload(
    role: Role,
    serial: u32,
    seats: u16,
    expiry_days: u16,
    id: VendorKeyId,
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(DOMAIN.len() + 24);
    payload.extend_from_slice(DOMAIN);
    payload.push(FORMAT_VERSION);
    payload.extend_from_slice(PRODUCT.as_bytes());
    payload.extend_from_slice(role.code().as_bytes());
    payload.extend_from_slice(&serial.to_be_bytes());
    payload.extend_from_slice(&seats.to_be_bytes());
    payload.extend_from_slice(&expiry_days.to_be_bytes());
    payload.extend_from_slice(&id.bytes());
    payload
}

/// The canonical text: the readable part, then the rest in dash-separated
/// groups of five.
pub(crate) fn render(symbols: &[u8; check::LEN]) -> String {
    let mut text: String = symbols[..READABLE]
        .iter()
        .map(|&v| base32::symbol_char(v))
        .collect();
    for group in symbols[READABLE..].chunks(5) {
        text.push('-');
        text.extend(group.iter().map(|&v| base32::symbol_char(v)));
    }
    text
}

/// A key whose format is sound but whose signature is not yet checked.
struct Parsed {
    role: Role,
    serial: u32,
    seats: u16,
    expires: Option<NaiveDate>,
    expiry_days: u16,
    vendor_key_id: VendorKeyId,
    signature: [u8; 64],
    text: String,
}

/// One significant (non-separator) character as typed.
struct Char {
    /// The character, upper-cased, for messages and the product code.
    shown: char,
    /// 1-based position in the input.
    at: usize,
    /// Its value in the key alphabet, if it is a symbol.
    symbol: Option<u8>,
}

/// Splits the input into significant characters. Letters outside the key
/// alphabet are allowed only in the product code, so that another product's
/// key (which may use any letters) is reported as such.
fn read(text: &str) -> Result<(Vec<Char>, usize), LicenseError> {
    let mut chars = Vec::new();
    let mut count = 0;
    for (index, c) in text.chars().enumerate() {
        count = index + 1;
        let symbol = match base32::classify(c) {
            Typed::Separator => continue,
            Typed::Symbol(value) => Some(value),
            Typed::Invalid if chars.len() < PRODUCT.len() && c.is_ascii_alphabetic() => None,
            Typed::Invalid => {
                let reason = if c.eq_ignore_ascii_case(&'u') {
                    "the letter U is never used in license keys (is it a V?)".to_owned()
                } else {
                    format!("'{}' cannot appear in a license key", c.escape_debug())
                };
                return Err(LicenseError::Malformed { at: count, reason });
            }
        };
        chars.push(Char {
            shown: c.to_ascii_uppercase(),
            at: count,
            symbol,
        });
    }
    if chars.is_empty() {
        return Err(LicenseError::Empty);
    }
    Ok((chars, count + 1))
}

fn parse(text: &str) -> Result<Parsed, LicenseError> {
    let (chars, end) = read(text)?;

    // Typing mistakes first: when the length is right, the check characters
    // can name the mistyped position, which helps far more than a complaint
    // about the product or the role that the mistake happens to produce.
    let symbols: Option<Vec<u8>> = chars.iter().map(|c| c.symbol).collect();
    let symbols: Option<[u8; check::LEN]> = symbols.and_then(|s| s.try_into().ok());
    if let Some(symbols) = &symbols {
        match check::diagnose(symbols) {
            Verdict::Intact => {}
            Verdict::Changed(p) => return Err(LicenseError::Typo { at: chars[p].at }),
            Verdict::Swapped(p) => {
                return Err(LicenseError::Swapped {
                    first: chars[p].at,
                    second: chars[p + 1].at,
                });
            }
            Verdict::Damaged => return Err(LicenseError::Checksum),
        }
    }

    let (role, serial) = parse_readable(&chars, end)?;

    let Some(symbols) = symbols else {
        return Err(wrong_length(&chars, end));
    };
    let body = base32::decode(&symbols[READABLE..READABLE + BODY_SYMBOLS]).ok_or_else(|| {
        LicenseError::Malformed {
            at: chars[READABLE + BODY_SYMBOLS - 1].at,
            reason: "this character cannot end the signature part".to_owned(),
        }
    })?;
    if body[0] != FORMAT_VERSION {
        return Err(LicenseError::UnsupportedVersion { found: body[0] });
    }
    let seats = u16::from_be_bytes([body[1], body[2]]);
    if seats == 0 {
        return Err(LicenseError::Malformed {
            at: chars[READABLE].at,
            reason: "the key grants no seats".to_owned(),
        });
    }
    let expiry_days = u16::from_be_bytes([body[3], body[4]]);
    let expires = (expiry_days != 0).then(|| EPOCH + chrono::Days::new(u64::from(expiry_days)));
    let mut id = [0u8; 4];
    id.copy_from_slice(&body[5..9]);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&body[9..]);
    Ok(Parsed {
        role,
        serial,
        seats,
        expires,
        expiry_days,
        vendor_key_id: VendorKeyId(id),
        signature,
        text: render(&symbols),
    })
}

/// Checks the readable part: 7-letter product code, 2-digit role, 7-digit
/// serial. Works on inputs of any length, so that short or foreign keys get
/// the most specific message.
fn parse_readable(chars: &[Char], end: usize) -> Result<(Role, u32), LicenseError> {
    let product_len = PRODUCT.len();
    for (i, c) in chars.iter().take(READABLE).enumerate() {
        let is_digit = c.symbol.is_some_and(|v| v < 10);
        if i < product_len && !c.shown.is_ascii_alphabetic() {
            return Err(LicenseError::Malformed {
                at: c.at,
                reason: format!("a license key starts with the 7-letter product code {PRODUCT}"),
            });
        }
        if i >= product_len && !is_digit {
            return Err(LicenseError::Malformed {
                at: c.at,
                reason: format!(
                    "after the product code come the 2-digit role (03 or 04) and the 7-digit serial, but this is '{}'",
                    c.shown
                ),
            });
        }
    }
    if chars.len() < READABLE {
        return Err(LicenseError::Malformed {
            at: end,
            reason: format!(
                "the key ends too early: it is the product code {PRODUCT}, the role (03 or 04), a 7-digit serial and then the signature part"
            ),
        });
    }
    let product: String = chars[..product_len].iter().map(|c| c.shown).collect();
    if product != PRODUCT {
        return Err(LicenseError::WrongProduct { found: product });
    }
    // Every character from here to the end of the readable part was checked
    // above to be a digit, so its symbol value is the digit's value.
    let digits = &chars[product_len..READABLE];
    let value = |c: &Char| c.symbol.unwrap_or(0);
    let role_code: String = digits[..2]
        .iter()
        .map(|c| base32::symbol_char(value(c)))
        .collect();
    let role = Role::from_code(&role_code).ok_or(LicenseError::UnknownRole { found: role_code })?;
    let serial = digits[2..]
        .iter()
        .fold(0u32, |serial, c| serial * 10 + u32::from(value(c)));
    Ok((role, serial))
}

fn wrong_length(chars: &[Char], end: usize) -> LicenseError {
    let expected = check::LEN;
    if chars.len() == READABLE {
        LicenseError::Malformed {
            at: end,
            reason: "the signature part is missing: after the serial a key continues with 24 groups of 5 characters".to_owned(),
        }
    } else if chars.len() < expected {
        LicenseError::Malformed {
            at: end,
            reason: format!(
                "the key is {} character(s) short (a character was left out, or the key was cut off)",
                expected - chars.len()
            ),
        }
    } else {
        LicenseError::Malformed {
            at: chars.get(expected).map_or(end, |c| c.at),
            reason: format!(
                "the key has {} character(s) too many (a character was typed twice, or something was pasted with it)",
                chars.len() - expected
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
