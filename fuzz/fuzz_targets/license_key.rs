//! Fuzz target: a license key as a person typed it (`licensing::verify`),
//! and a vendor public key in its text form. Every input must give a key or
//! a `LicenseError`, never a panic; a key that verifies must verify again
//! from its canonical text.

#![no_main]

use std::sync::LazyLock;

use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;
use licensing::{TrustedKeys, VendorPublicKey, verify};

/// The public half of the vendor key that signed the seed keys in
/// `corpus/license_key`, so that inputs near a real key reach the signature
/// and expiry checks.
const SEED_VENDOR: &str = "nfFsifCBZ8h4mHPjhLA6zaLjMrMEloRjbhDL6G1NLhs=";

static TRUSTED: LazyLock<TrustedKeys> = LazyLock::new(|| {
    TrustedKeys::builtin().with(VendorPublicKey::from_text(SEED_VENDOR).expect("seed vendor key"))
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let today = NaiveDate::from_ymd_opt(2026, 5, 1).expect("a date");
    if let Ok(key) = verify(text, &TRUSTED, today) {
        let again = verify(key.text(), &TRUSTED, today).expect("the canonical text verifies");
        assert_eq!(again, key);
    }
    if let Ok(public) = VendorPublicKey::from_text(text) {
        let again =
            VendorPublicKey::from_text(&public.to_text()).expect("the canonical text reads back");
        assert_eq!(again.bytes(), public.bytes());
    }
});
