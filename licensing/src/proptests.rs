//! Property tests of key parsing and verification: no input panics, no single typing mistake is accepted, and no forgery passes, even one whose check characters the forger recomputed.

use std::sync::LazyLock;

use chrono::NaiveDate;
use proptest::prelude::*;

use crate::base32::{self, Typed};
use crate::key::testkit::{forge_body, forge_readable, reseal, vendor};
use crate::{KeySpec, LicenseError, Role, TrustedKeys, VendorKeyPair, verify};

/// One vendor for the whole run: generating a key pair per case would only
/// make the run slower, not the properties stronger.
static VENDOR: LazyLock<(VendorKeyPair, TrustedKeys)> = LazyLock::new(vendor);
static STRANGER: LazyLock<(VendorKeyPair, TrustedKeys)> = LazyLock::new(vendor);

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 5, 1).unwrap()
}

fn arb_spec() -> impl Strategy<Value = KeySpec> {
    (
        prop_oneof![Just(Role::Primary), Just(Role::Secondary)],
        0..=crate::MAX_SERIAL,
        1..=u16::MAX,
        prop_oneof![Just(None), (10_000u64..60_000).prop_map(Some)],
    )
        .prop_map(|(role, serial, seats, days)| KeySpec {
            role,
            serial,
            seats,
            // Only future dates, so every issued key is valid on `today`.
            expires: days
                .map(|d| NaiveDate::from_ymd_opt(2000, 1, 1).unwrap() + chrono::Days::new(d)),
        })
}

fn issue(spec: &KeySpec) -> String {
    VENDOR.0.issue(spec).unwrap()
}

/// Byte offsets of the significant (non-dash) characters of a canonical key.
fn significant(text: &str) -> Vec<usize> {
    text.char_indices()
        .filter(|&(_, c)| c != '-')
        .map(|(i, _)| i)
        .collect()
}

/// Characters a person might mistype into a key: symbols, their lower-case
/// and confusable spellings, and characters that are never valid.
fn arb_typed_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::sample::select(base32::ALPHABET.to_vec()).prop_map(char::from),
        1 => proptest::sample::select(vec!['a', 'z', 'o', 'O', 'i', 'I', 'l', 'L', 'U', 'u', '#', '.', 'é', '0', '1'])
    ]
}

fn is_symbol(c: char) -> Option<u8> {
    match base32::classify(c) {
        Typed::Symbol(v) => Some(v),
        Typed::Separator | Typed::Invalid => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = verify(&text, &VENDOR.1, today());
    }

    #[test]
    fn key_like_text_never_panics_and_is_never_accepted(
        role in "0[0-9]",
        rest in "[0-9A-Za-z_ -]{0,180}",
    ) {
        let text = format!("SCANGWP{role}{rest}");
        prop_assert!(verify(&text, &VENDOR.1, today()).is_err());
    }

    #[test]
    fn full_length_symbols_with_valid_checks_are_never_accepted(
        symbols in proptest::collection::vec(0u8..32, 136),
        role in prop_oneof![Just("03"), Just("04")],
    ) {
        // Correct check characters and a well-formed readable part take the
        // input past every format check into decoding and signature checks.
        let mut symbols: [u8; 136] = symbols.try_into().unwrap();
        let readable = format!("SCANGWP{role}0000085");
        for (slot, c) in symbols.iter_mut().zip(readable.chars()) {
            *slot = is_symbol(c).unwrap();
        }
        // Format version 1 (the first eight body bits are 00000 001..), so
        // that most inputs get as far as the vendor key and signature checks.
        symbols[16] = 0;
        symbols[17] = 0b00100 | (symbols[17] & 0b11);
        prop_assert!(verify(&reseal(symbols), &VENDOR.1, today()).is_err());
    }

    #[test]
    fn issued_keys_verify(spec in arb_spec()) {
        let text = issue(&spec);
        let key = verify(&text, &VENDOR.1, today()).unwrap();
        prop_assert_eq!((key.role(), key.serial(), key.seats(), key.expires()), (spec.role, spec.serial, spec.seats, spec.expires));
        prop_assert_eq!(key.text(), text.as_str());
    }

    #[test]
    fn a_changed_character_is_never_accepted_and_is_located(
        spec in arb_spec(),
        index in 0usize..136,
        with in arb_typed_char(),
    ) {
        let text = issue(&spec);
        let offset = significant(&text)[index];
        let original = text[offset..].chars().next().unwrap();
        // A different spelling of the same symbol ('o' for '0') is no mistake.
        prop_assume!(is_symbol(with).is_none() || is_symbol(with) != is_symbol(original));
        let mut typed = text.clone();
        typed.replace_range(offset..offset + 1, &with.to_string());
        let result = verify(&typed, &VENDOR.1, today());
        let at = typed[..offset].chars().count() + 1;
        if is_symbol(with).is_some() {
            prop_assert_eq!(result.unwrap_err(), LicenseError::Typo { at });
        } else {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn a_deleted_character_is_never_accepted(spec in arb_spec(), index in 0usize..136) {
        let text = issue(&spec);
        let offset = significant(&text)[index];
        let mut typed = text.clone();
        typed.remove(offset);
        let result = verify(&typed, &VENDOR.1, today());
        // The length is wrong, so the check characters cannot help; the
        // shifted readable part may first show up as a role such as "30".
        prop_assert!(
            matches!(result, Err(LicenseError::Malformed { .. } | LicenseError::UnknownRole { .. })),
            "{:?}", result
        );
    }

    #[test]
    fn an_inserted_character_is_never_accepted(
        spec in arb_spec(),
        position in 0usize..=160,
        with in arb_typed_char(),
    ) {
        let text = issue(&spec);
        let mut typed = text.clone();
        typed.insert(text.char_indices().nth(position).map_or(text.len(), |(i, _)| i), with);
        let result = verify(&typed, &VENDOR.1, today());
        // The length is wrong, so the check characters cannot help; the
        // shifted readable part may first show up as a role such as "30".
        prop_assert!(
            matches!(result, Err(LicenseError::Malformed { .. } | LicenseError::UnknownRole { .. })),
            "{:?}", result
        );
    }

    #[test]
    fn two_swapped_characters_are_never_accepted(
        spec in arb_spec(),
        first in 0usize..135,
        distance in prop_oneof![3 => Just(1usize), 1 => 2usize..40],
    ) {
        let text = issue(&spec);
        let offsets = significant(&text);
        let second = (first + distance).min(135);
        let (a, b) = (offsets[first], offsets[second]);
        let (ca, cb) = (text.as_bytes()[a], text.as_bytes()[b]);
        prop_assume!(ca != cb);
        let mut bytes = text.clone().into_bytes();
        bytes.swap(a, b);
        let typed = String::from_utf8(bytes).unwrap();
        let result = verify(&typed, &VENDOR.1, today());
        if second == first + 1 {
            let located = LicenseError::Swapped { first: a + 1, second: b + 1 };
            prop_assert!(
                result == Err(located) || result == Err(LicenseError::Checksum),
                "{:?}", result
            );
        } else {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn a_forged_readable_part_is_a_bad_signature(spec in arb_spec(), serial in 0..=crate::MAX_SERIAL) {
        let text = issue(&spec);
        let other_role = match spec.role { Role::Primary => "04", Role::Secondary => "03" };
        let forged = forge_readable(&text, 7, other_role);
        prop_assert_eq!(verify(&forged, &VENDOR.1, today()).unwrap_err(), LicenseError::BadSignature);
        prop_assume!(serial != spec.serial);
        let forged = forge_readable(&text, 9, &format!("{serial:07}"));
        prop_assert_eq!(verify(&forged, &VENDOR.1, today()).unwrap_err(), LicenseError::BadSignature);
    }

    #[test]
    fn a_forged_body_is_a_bad_signature(spec in arb_spec(), seats in 1..=u16::MAX, days in 1..=u16::MAX, flip in 9usize..73) {
        let text = issue(&spec);
        prop_assume!(seats != spec.seats);
        let forged = forge_body(&text, |body| body[1..3].copy_from_slice(&seats.to_be_bytes()));
        prop_assert_eq!(verify(&forged, &VENDOR.1, today()).unwrap_err(), LicenseError::BadSignature);
        let forged = forge_body(&text, |body| body[3..5].copy_from_slice(&days.to_be_bytes()));
        if forged != text {
            prop_assert_eq!(verify(&forged, &VENDOR.1, today()).unwrap_err(), LicenseError::BadSignature);
        }
        let forged = forge_body(&text, |body| body[flip] ^= 0x40);
        prop_assert_eq!(verify(&forged, &VENDOR.1, today()).unwrap_err(), LicenseError::BadSignature);
    }

    #[test]
    fn another_vendors_key_is_untrusted_and_cannot_borrow_a_trusted_id(spec in arb_spec()) {
        let text = STRANGER.0.issue(&spec).unwrap();
        prop_assert_eq!(
            verify(&text, &VENDOR.1, today()).unwrap_err(),
            LicenseError::UnknownVendorKey { id: STRANGER.0.public_key().id() }
        );
        let trusted_id = VENDOR.0.public_key().id().bytes();
        let disguised = forge_body(&text, |body| body[5..9].copy_from_slice(&trusted_id));
        prop_assert_eq!(verify(&disguised, &VENDOR.1, today()).unwrap_err(), LicenseError::BadSignature);
    }
}
