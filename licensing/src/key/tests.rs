//! Unit tests of the key format: round trips, normalisation, one input per error, and the wording of the messages people read.

use chrono::NaiveDate;

use super::testkit::{forge_body, forge_readable, spec, symbols, vendor};
use super::*;
use crate::{KeySpec, TrustedKeys};

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn today() -> NaiveDate {
    day(2026, 5, 1)
}

/// 1-based position in the canonical text of the symbol at index `p`
/// (the readable part has no dashes; each later group of five follows one).
fn canonical_position(p: usize) -> usize {
    if p < READABLE {
        p + 1
    } else {
        p + 2 + (p - READABLE) / 5
    }
}

/// Replaces the character at 1-based position `at` of `text`.
fn replace_at(text: &str, at: usize, with: char) -> String {
    text.chars()
        .enumerate()
        .map(|(i, c)| if i + 1 == at { with } else { c })
        .collect()
}

#[test]
fn keys_round_trip_for_both_roles_with_and_without_expiry() {
    let (pair, trusted) = vendor();
    for role in [Role::Primary, Role::Secondary] {
        for expires in [None, Some(day(2027, 12, 31))] {
            let spec = KeySpec {
                role,
                serial: 85,
                seats: 40,
                expires,
            };
            let text = pair.issue(&spec).unwrap();
            let key = verify(&text, &trusted, today()).unwrap();
            assert_eq!(key.role(), role);
            assert_eq!(key.serial(), 85);
            assert_eq!(key.seats(), 40);
            assert_eq!(key.expires(), expires);
            assert_eq!(key.product(), "SCANGWP");
            assert_eq!(key.vendor_key_id(), pair.public_key().id());
            assert_eq!(key.text(), text);
        }
    }
}

#[test]
fn the_canonical_text_has_the_documented_shape() {
    let (pair, _) = vendor();
    let text = pair.issue(&spec(Role::Primary, 85)).unwrap();
    assert!(text.starts_with("SCANGWP030000085-"), "{text}");
    let groups: Vec<&str> = text.split('-').collect();
    assert_eq!(groups.len(), 25);
    assert!(groups[1..].iter().all(|g| g.len() == 5));
    assert_eq!(text.len(), 160);
    let text = pair.issue(&spec(Role::Secondary, 9_999_999)).unwrap();
    assert!(text.starts_with("SCANGWP049999999-"), "{text}");
    let text = pair.issue(&spec(Role::Secondary, 0)).unwrap();
    assert!(text.starts_with("SCANGWP040000000-"), "{text}");
}

#[test]
fn the_extreme_expiry_dates_round_trip() {
    let (pair, trusted) = vendor();
    for on in [day(2000, 1, 2), day(2179, 6, 6)] {
        let text = pair
            .issue(&KeySpec {
                expires: Some(on),
                ..spec(Role::Primary, 1)
            })
            .unwrap();
        let key = verify(&text, &trusted, day(2000, 1, 1)).unwrap();
        assert_eq!(key.expires(), Some(on));
    }
}

#[test]
fn what_people_type_is_normalised() {
    let (pair, trusted) = vendor();
    let text = pair.issue(&spec(Role::Secondary, 45)).unwrap();
    let compact: String = text.chars().filter(|&c| c != '-').collect();
    let spaced = text.replace('-', " ");
    let underscored = text.replace('-', "_");
    let regrouped: String = compact
        .chars()
        .enumerate()
        .flat_map(|(i, c)| (i > 0 && i % 4 == 0).then_some('-').into_iter().chain([c]))
        .collect();
    let confused = text.replace('0', "O").replace('1', "I");
    let confused_lower = text.replace('1', "l").to_lowercase().replace('0', "o");
    let padded = format!("  {text}\n");
    for variant in [
        text.to_lowercase(),
        compact,
        spaced,
        underscored,
        regrouped,
        confused,
        confused_lower,
        padded,
    ] {
        let key = verify(&variant, &trusted, today()).unwrap_or_else(|e| panic!("{variant}: {e}"));
        assert_eq!(key.text(), text, "normalised from {variant}");
    }
}

#[test]
fn empty_input_is_refused() {
    for input in ["", "   ", " - _ \t"] {
        assert_eq!(
            verify(input, &TrustedKeys::builtin(), today()).unwrap_err(),
            LicenseError::Empty
        );
    }
}

#[test]
fn garbage_is_malformed_at_the_first_wrong_character() {
    let trusted = TrustedKeys::builtin();
    let err = verify("hello world", &trusted, today()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a valid license key: after the product code come the 2-digit role (03 or 04) and the 7-digit serial, but this is 'R' (at character 9); copy the key again from the license document"
    );
    let err = verify("12345678901234567890", &trusted, today()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a valid license key: a license key starts with the 7-letter product code SCANGWP (at character 1); copy the key again from the license document"
    );
    let err = verify("SCANGWP03#", &trusted, today()).unwrap_err();
    assert_eq!(
        err,
        LicenseError::Malformed {
            at: 10,
            reason: "'#' cannot appear in a license key".to_owned()
        }
    );
    let err = verify("SCANGWP03000008U", &trusted, today()).unwrap_err();
    assert!(
        matches!(err, LicenseError::Malformed { at: 16, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("the letter U is never used"),
        "{err}"
    );
    let err = verify("SCANGWP03OOOOX85", &trusted, today()).unwrap_err();
    assert!(
        matches!(err, LicenseError::Malformed { at: 14, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("but this is 'X'"), "{err}");
    let err = verify("scangwp", &trusted, today()).unwrap_err();
    assert!(
        matches!(err, LicenseError::Malformed { at: 8, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("the key ends too early"), "{err}");
}

#[test]
fn a_key_without_its_signature_part_is_malformed() {
    let err = verify("SCANGWP030000085", &TrustedKeys::builtin(), today()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a valid license key: the signature part is missing: after the serial a key continues with 24 groups of 5 characters (at character 17); copy the key again from the license document"
    );
}

#[test]
fn a_cut_or_lengthened_key_is_malformed() {
    let (pair, trusted) = vendor();
    let text = pair.issue(&spec(Role::Primary, 85)).unwrap();
    let cut = &text[..text.len() - 3];
    let err = verify(cut, &trusted, today()).unwrap_err();
    assert_eq!(
        err,
        LicenseError::Malformed {
            at: 158,
            reason:
                "the key is 3 character(s) short (a character was left out, or the key was cut off)"
                    .to_owned()
        }
    );
    let err = verify(&format!("{text}-AB"), &trusted, today()).unwrap_err();
    assert!(
        matches!(err, LicenseError::Malformed { at: 162, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("2 character(s) too many"), "{err}");
}

#[test]
fn a_changed_character_is_named_by_its_position() {
    let (pair, trusted) = vendor();
    let text = pair.issue(&spec(Role::Primary, 85)).unwrap();
    // Position 40 is in the body; 12 is a serial digit; 160 the last character.
    for at in [12, 40, 160] {
        let original = text.chars().nth(at - 1).unwrap();
        let with = if original == 'X' { 'Y' } else { 'X' };
        let with = if at == 12 {
            if original == '7' { '8' } else { '7' }
        } else {
            with
        };
        let err = verify(&replace_at(&text, at, with), &trusted, today()).unwrap_err();
        assert_eq!(err, LicenseError::Typo { at });
    }
    let err = verify(&replace_at(&text, 40, '?'), &trusted, today()).unwrap_err();
    assert!(
        matches!(err, LicenseError::Malformed { at: 40, .. }),
        "{err:?}"
    );
}

#[test]
fn a_typo_message_reads_well() {
    assert_eq!(
        LicenseError::Typo { at: 23 }.to_string(),
        "character 23 of the license key is mistyped: compare it with the key you were given and correct it"
    );
}

#[test]
fn two_swapped_neighbours_are_detected() {
    let (pair, trusted) = vendor();
    let text = pair.issue(&spec(Role::Primary, 1_234_567)).unwrap();
    // Serial digits 1 and 2 swapped (positions 10 and 11).
    let swapped = text.replacen("SCANGWP031234567", "SCANGWP032134567", 1);
    let err = verify(&swapped, &trusted, today()).unwrap_err();
    assert!(
        matches!(
            err,
            LicenseError::Swapped {
                first: 10,
                second: 11
            } | LicenseError::Checksum
        ),
        "{err:?}"
    );
    if let LicenseError::Swapped { .. } = err {
        assert_eq!(
            err.to_string(),
            "characters 10 and 11 of the license key look swapped: compare them with the key you were given"
        );
    }
}

#[test]
fn several_mistakes_are_a_checksum_error_or_a_typo_never_acceptance() {
    let (pair, trusted) = vendor();
    let text = pair.issue(&spec(Role::Primary, 85)).unwrap();
    // Two changes can look like one change elsewhere (a wrong position is
    // then named), but most must be reported as unlocatable; over many
    // second positions some certainly are.
    let mut checksum_seen = false;
    for b in (30..=160).filter(|b| (b - 17) % 6 != 0) {
        let first = replace_at(
            &text,
            20,
            if text.as_bytes()[19] == b'Z' {
                'Y'
            } else {
                'Z'
            },
        );
        let damaged = replace_at(
            &first,
            b,
            if first.as_bytes()[b - 1] == b'Z' {
                'Y'
            } else {
                'Z'
            },
        );
        let err = verify(&damaged, &trusted, today()).unwrap_err();
        checksum_seen |= err == LicenseError::Checksum;
        assert!(
            matches!(
                err,
                LicenseError::Checksum
                    | LicenseError::Typo { .. }
                    | LicenseError::Swapped { .. }
                    | LicenseError::BadSignature
            ),
            "{err:?}"
        );
    }
    assert!(checksum_seen);
    assert_eq!(
        LicenseError::Checksum.to_string(),
        "the license key has typing mistakes (its check characters do not match): compare the whole key with the one you were given"
    );
}

#[test]
fn a_key_of_another_product_is_named_as_such() {
    // The activation key quoted in the GlobalScan 2.0 administrator's guide.
    let err = verify("JBVTXUI030000085", &TrustedKeys::builtin(), today()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "this is a key for product JBVTXUI, not for the scan gateway (SCANGWP): use the key issued for this product"
    );
    let (pair, trusted) = vendor();
    let text = pair.issue(&spec(Role::Primary, 85)).unwrap();
    let other = forge_readable(&text, 0, "SCANGWX");
    let err = verify(&other, &trusted, today()).unwrap_err();
    assert_eq!(
        err,
        LicenseError::WrongProduct {
            found: "SCANGWX".to_owned()
        }
    );
}

#[test]
fn an_unknown_role_is_refused() {
    let err = verify("SCANGWP050000085", &TrustedKeys::builtin(), today()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown role code 05: a scan gateway key has role 03 (primary) or 04 (secondary)"
    );
    let (pair, trusted) = vendor();
    let text = pair.issue(&spec(Role::Primary, 85)).unwrap();
    let err = verify(&forge_readable(&text, 7, "05"), &trusted, today()).unwrap_err();
    assert_eq!(
        err,
        LicenseError::UnknownRole {
            found: "05".to_owned()
        }
    );
}

#[test]
fn a_key_from_an_untrusted_vendor_is_told_apart_from_a_forgery() {
    let (pair, trusted) = vendor();
    let (stranger, _) = vendor();
    let text = stranger.issue(&spec(Role::Primary, 85)).unwrap();
    let err = verify(&text, &trusted, today()).unwrap_err();
    assert_eq!(
        err,
        LicenseError::UnknownVendorKey {
            id: stranger.public_key().id()
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the license key was signed by vendor key {}, which this server does not trust: use a key issued for this product, or add that vendor's public key to the trusted keys",
            stranger.public_key().id()
        )
    );
    // The stranger claims the trusted vendor's id: the signature gives it away.
    let disguised = forge_body(&text, |body| {
        body[5..9].copy_from_slice(&pair.public_key().id().bytes())
    });
    assert_eq!(
        verify(&disguised, &trusted, today()).unwrap_err(),
        LicenseError::BadSignature
    );
}

#[test]
fn altered_fields_break_the_signature() {
    let (pair, trusted) = vendor();
    let text = pair.issue(&spec(Role::Secondary, 45)).unwrap();
    let promoted = forge_readable(&text, 7, "03");
    assert_eq!(
        verify(&promoted, &trusted, today()).unwrap_err(),
        LicenseError::BadSignature
    );
    let more_seats = forge_body(&text, |body| {
        body[1..3].copy_from_slice(&500u16.to_be_bytes())
    });
    assert_eq!(
        verify(&more_seats, &trusted, today()).unwrap_err(),
        LicenseError::BadSignature
    );
    let expiring = forge_body(&text, |body| {
        body[3..5].copy_from_slice(&9000u16.to_be_bytes())
    });
    assert_eq!(
        verify(&expiring, &trusted, today()).unwrap_err(),
        LicenseError::BadSignature
    );
    assert_eq!(
        LicenseError::BadSignature.to_string(),
        "the license key's signature is not valid: the key was altered or forged; use the key exactly as the vendor issued it"
    );
}

#[test]
fn unreadable_bodies_are_refused_before_the_signature() {
    let (pair, trusted) = vendor();
    let text = pair.issue(&spec(Role::Primary, 85)).unwrap();
    let v2 = forge_body(&text, |body| body[0] = 2);
    assert_eq!(
        verify(&v2, &trusted, today()).unwrap_err(),
        LicenseError::UnsupportedVersion { found: 2 }
    );
    let no_seats = forge_body(&text, |body| body[1..3].fill(0));
    let err = verify(&no_seats, &trusted, today()).unwrap_err();
    assert!(
        matches!(err, LicenseError::Malformed { at: 18, .. }),
        "{err:?}"
    );
    // The last body symbol carries one padding bit, which must be zero.
    let mut padded = symbols(&text);
    padded[READABLE + BODY_SYMBOLS - 1] |= 1;
    let err = verify(&super::testkit::reseal(padded), &trusted, today()).unwrap_err();
    assert!(
        matches!(err, LicenseError::Malformed { at, .. } if at == canonical_position(READABLE + BODY_SYMBOLS - 1)),
        "{err:?}"
    );
}

#[test]
fn a_key_is_valid_through_its_expiry_day() {
    let (pair, trusted) = vendor();
    let on = day(2026, 12, 31);
    let text = pair
        .issue(&KeySpec {
            expires: Some(on),
            ..spec(Role::Primary, 85)
        })
        .unwrap();
    assert!(verify(&text, &trusted, on).is_ok());
    let err = verify(&text, &trusted, day(2027, 1, 1)).unwrap_err();
    assert_eq!(err, LicenseError::Expired { on });
    assert_eq!(
        err.to_string(),
        "the license key expired on 2026-12-31: ask the vendor for a renewed key"
    );
}

#[test]
fn out_of_range_specs_are_not_issued() {
    let (pair, _) = vendor();
    let err = pair.issue(&spec(Role::Primary, 10_000_000)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot issue a license key: serial 10000000 does not fit in 7 digits (0 to 9999999)"
    );
    let err = pair
        .issue(&KeySpec {
            seats: 0,
            ..spec(Role::Primary, 1)
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot issue a license key: a key must grant at least 1 seat"
    );
    for on in [day(2000, 1, 1), day(1999, 5, 5), day(2179, 6, 7)] {
        let err = pair
            .issue(&KeySpec {
                expires: Some(on),
                ..spec(Role::Primary, 1)
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot issue a license key: expiry date {on} is outside the range a key can carry (2000-01-02 to 2179-06-06)"
            )
        );
    }
}

#[test]
fn two_vendors_issue_different_keys_for_the_same_spec() {
    let (a, _) = vendor();
    let (b, _) = vendor();
    let spec = spec(Role::Primary, 85);
    assert_ne!(a.issue(&spec).unwrap(), b.issue(&spec).unwrap());
    // Ed25519 is deterministic: the same vendor issues the same text again.
    assert_eq!(a.issue(&spec).unwrap(), a.issue(&spec).unwrap());
}

#[test]
fn roles_have_codes_names_and_serde_forms() {
    assert_eq!(Role::Primary.code(), "03");
    assert_eq!(Role::Secondary.code(), "04");
    assert_eq!(Role::Primary.to_string(), "primary");
    assert_eq!(Role::Secondary.to_string(), "secondary");
    assert_eq!("03".parse::<Role>().unwrap(), Role::Primary);
    assert_eq!("Secondary".parse::<Role>().unwrap(), Role::Secondary);
    assert_eq!(
        "05".parse::<Role>().unwrap_err(),
        LicenseError::UnknownRole {
            found: "05".to_owned()
        }
    );
    assert_eq!(
        serde_json::to_string(&Role::Secondary).unwrap(),
        r#""secondary""#
    );
    assert_eq!(
        serde_json::from_str::<Role>(r#""primary""#).unwrap(),
        Role::Primary
    );
}

#[test]
fn a_test_vendor_key_is_not_the_builtin_one() {
    // Keys issued in tests must not verify against the product's key; if
    // they did, a test key could license a production server.
    let (pair, _) = vendor();
    let text = pair.issue(&spec(Role::Primary, 85)).unwrap();
    let err = verify(&text, &TrustedKeys::builtin(), today()).unwrap_err();
    assert!(matches!(err, LicenseError::UnknownVendorKey { .. }));
}
