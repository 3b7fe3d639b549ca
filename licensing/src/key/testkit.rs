//! Test helpers that play the attacker: they edit a key's fields and recompute its check characters, which only someone forging a key would do. Test-only; never part of the product.

use super::{BODY_SYMBOLS, READABLE, render};
use crate::base32::{self, Typed};
use crate::check;
use crate::{KeySpec, Role, TrustedKeys, VendorKeyPair};

/// A fresh vendor key pair and the trust set holding only its public key.
pub(crate) fn vendor() -> (VendorKeyPair, TrustedKeys) {
    let (pair, _) = VendorKeyPair::generate().expect("key generation works in tests");
    let trusted = [pair.public_key()].into_iter().collect();
    (pair, trusted)
}

pub(crate) fn spec(role: Role, serial: u32) -> KeySpec {
    KeySpec {
        role,
        serial,
        seats: 10,
        expires: None,
    }
}

/// The symbol values of a canonical key text.
pub(crate) fn symbols(text: &str) -> [u8; check::LEN] {
    let values: Vec<u8> = text
        .chars()
        .filter_map(|c| match base32::classify(c) {
            Typed::Symbol(v) => Some(v),
            Typed::Separator | Typed::Invalid => None,
        })
        .collect();
    values.try_into().expect("a canonical key has 136 symbols")
}

/// Replaces part of the readable text (e.g. the role at offset 7) and
/// recomputes the check characters.
pub(crate) fn forge_readable(text: &str, offset: usize, replacement: &str) -> String {
    let mut symbols = symbols(text);
    for (i, c) in replacement.chars().enumerate() {
        assert!(offset + i < READABLE);
        symbols[offset + i] = match base32::classify(c) {
            Typed::Symbol(v) => v,
            other => panic!("{c:?} is {other:?}, not a symbol"),
        };
    }
    check::seal(&mut symbols);
    render(&symbols)
}

/// Lets `edit` change the body bytes (version, seats, expiry, key id,
/// signature) and recomputes the check characters.
pub(crate) fn forge_body(text: &str, edit: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut symbols = symbols(text);
    let body_symbols = &mut symbols[READABLE..READABLE + BODY_SYMBOLS];
    let mut body = base32::decode(body_symbols).expect("a canonical key has a decodable body");
    edit(&mut body);
    body_symbols.copy_from_slice(&base32::encode(&body));
    check::seal(&mut symbols);
    render(&symbols)
}

/// Recomputes the check characters of an edited symbol array.
pub(crate) fn reseal(mut symbols: [u8; check::LEN]) -> String {
    check::seal(&mut symbols);
    render(&symbols)
}
