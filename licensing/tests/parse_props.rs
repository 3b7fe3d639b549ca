//! Property tests of the license key parser through the public API, the
//! same entry points the `license_key` fuzz target drives: no input panics
//! (arbitrary text, and real keys with characters changed, inserted,
//! removed or cut off), every issued key verifies back to what was issued
//! from its canonical text and from a sloppy spelling of it, and vendor
//! public keys read back from their text.

use std::sync::LazyLock;

use chrono::NaiveDate;
use licensing::{KeySpec, Role, TrustedKeys, VendorKeyPair, VendorPublicKey, verify};
use proptest::prelude::*;

static VENDOR: LazyLock<(VendorKeyPair, TrustedKeys)> = LazyLock::new(|| {
    let (vendor, _) = VendorKeyPair::generate().expect("a vendor key");
    let trusted = TrustedKeys::builtin().with(vendor.public_key());
    (vendor, trusted)
});

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 5, 1).expect("a date")
}

fn arb_spec() -> impl Strategy<Value = KeySpec> {
    (
        prop_oneof![Just(Role::Primary), Just(Role::Secondary)],
        0..=licensing::MAX_SERIAL,
        1..=u16::MAX,
        // Expiry after `today()` (2026-05-01 is day 9 617 after 2000-01-01):
        // an issued key must verify, so it must not have expired yet.
        prop_oneof![Just(None), (9_618u64..65_535).prop_map(Some)],
    )
        .prop_map(|(role, serial, seats, days)| KeySpec {
            role,
            serial,
            seats,
            expires: days.map(|d| {
                NaiveDate::from_ymd_opt(2000, 1, 1).expect("a date") + chrono::Days::new(d)
            }),
        })
}

/// A change a person (or a damaged paste) might make to a key.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, char),
    Insert(usize, char),
    Remove(usize),
    Truncate(usize),
}

fn arb_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => proptest::sample::select(
            "0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghjkmnpqrstvwxyz".chars().collect::<Vec<_>>()
        ),
        1 => proptest::sample::select(vec!['-', ' ', '_', 'O', 'I', 'L', 'U', 'u', '\u{e9}', '\u{1F600}', '\0', '\n']),
        1 => any::<char>(),
    ]
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), arb_char()).prop_map(|(i, c)| Edit::Replace(i, c)),
        (any::<usize>(), arb_char()).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for edit in edits {
        let len = chars.len();
        match *edit {
            Edit::Replace(i, c) if len > 0 => chars[i % len] = c,
            Edit::Insert(i, c) => chars.insert(i % (len + 1), c),
            Edit::Remove(i) if len > 0 => {
                chars.remove(i % len);
            }
            Edit::Truncate(i) => chars.truncate(i % (len + 1)),
            _ => {}
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_is_a_key_or_an_error(text in "\\PC{0,200}") {
        let _ = verify(&text, &VENDOR.1, today());
        let _ = VendorPublicKey::from_text(&text);
    }

    #[test]
    fn arbitrary_key_shaped_text_is_a_key_or_an_error(
        text in "SCANGWP0[0-9]{8}(-[0-9A-Za-z]{5}){20,26}",
    ) {
        let _ = verify(&text, &VENDOR.1, today());
    }

    #[test]
    fn damaged_keys_never_panic(spec in arb_spec(), edits in proptest::collection::vec(arb_edit(), 1..4)) {
        let text = VENDOR.0.issue(&spec).expect("the spec is in range");
        let damaged = apply(&text, &edits);
        if let Ok(key) = verify(&damaged, &VENDOR.1, today()) {
            // Only separators or confusable spellings may have changed.
            prop_assert_eq!(key.text(), text.as_str());
        }
    }

    #[test]
    fn issued_keys_round_trip(spec in arb_spec()) {
        let text = VENDOR.0.issue(&spec).expect("the spec is in range");
        let key = verify(&text, &VENDOR.1, today()).expect("an issued key verifies");
        prop_assert_eq!(key.role(), spec.role);
        prop_assert_eq!(key.serial(), spec.serial);
        prop_assert_eq!(key.seats(), spec.seats);
        prop_assert_eq!(key.expires(), spec.expires);
        prop_assert_eq!(key.text(), text.as_str());
        // As a person might type it: lower case, no dashes, spaces around.
        let sloppy = format!("  {}  ", text.to_lowercase().replace('-', ""));
        prop_assert_eq!(verify(&sloppy, &VENDOR.1, today()).expect("a sloppy spelling verifies"), key);
    }

    #[test]
    fn vendor_public_keys_round_trip(bytes in any::<[u8; 32]>()) {
        let key = VendorPublicKey::from_bytes(bytes);
        let again = VendorPublicKey::from_text(&key.to_text()).expect("the text reads back");
        prop_assert_eq!(again.bytes(), &bytes);
    }
}
