//! Activation records: binding one verified key to one server instance, re-checking that binding, and releasing it. Pure: the caller persists the record and supplies the time, instance name and install id.
//!
//! # What the binding protects against
//!
//! An [`Activation`] names the instance and the install id it was made for,
//! and [`Activation::check`] refuses it anywhere else, so a copied data
//! directory or a record restored onto another machine does not license that
//! machine. The record itself is not signed: the key inside it is, and
//! `check` re-verifies the key and refuses a record whose role, serial, seats
//! or expiry were edited. Whether the same key is active on two servers at
//! once is a question this library cannot answer alone; the pair compares
//! the serials it reports (see [`Activation::serial`]).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::LicenseError;
use crate::key::{LicenseKey, Role, verify};
use crate::vendor::TrustedKeys;

/// One key activated on one server instance. The gateway stores it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    key: String,
    role: Role,
    serial: u32,
    seats: u16,
    expires: Option<NaiveDate>,
    instance: String,
    install_id: String,
    activated_at: DateTime<Utc>,
}

/// What a deactivation released: the receipt an admin or the audit log keeps.
/// Nothing is trusted from it, so its fields are plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deactivation {
    /// Canonical text of the released key; it may now be activated elsewhere.
    pub key: String,
    /// Serial of the released key.
    pub serial: u32,
    /// Role the server had under that key.
    pub role: Role,
    /// Instance the key was bound to.
    pub instance: String,
    /// Install id the key was bound to.
    pub install_id: String,
    /// When the key was released.
    pub deactivated_at: DateTime<Utc>,
}

/// Activates `key` on this server (`instance`, `install_id`) at `now`.
///
/// Refuses when the server already holds an activation (`current`): keys are
/// never replaced in place, so that changing role is always the explicit
/// two-step "deactivate, then activate" an admin can audit. Promotion of a
/// secondary is exactly that: deactivate its `04` key, activate an `03` key.
pub fn activate(
    key: &str,
    trusted: &TrustedKeys,
    instance: &str,
    install_id: &str,
    now: DateTime<Utc>,
    current: Option<&Activation>,
) -> Result<Activation, LicenseError> {
    if let Some(current) = current {
        return Err(LicenseError::AlreadyActivated {
            serial: current.serial,
            role: current.role,
        });
    }
    check_binding("instance name", instance)?;
    check_binding("install id", install_id)?;
    let verified = verify(key, trusted, now.date_naive())?;
    Ok(Activation {
        key: verified.text().to_owned(),
        role: verified.role(),
        serial: verified.serial(),
        seats: verified.seats(),
        expires: verified.expires(),
        instance: instance.to_owned(),
        install_id: install_id.to_owned(),
        activated_at: now,
    })
}

/// Instance names and install ids end up in logs, paths and error messages,
/// so they must be visible text: not empty, no surrounding blanks, no control
/// characters.
fn check_binding(what: &'static str, value: &str) -> Result<(), LicenseError> {
    let reason = if value.trim().is_empty() {
        "it is empty; pass this server's own value"
    } else if value.trim() != value {
        "it has leading or trailing spaces"
    } else if value.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(LicenseError::InvalidBinding {
        what,
        reason: reason.to_owned(),
    })
}

impl Activation {
    /// Re-checks the record on `today` for the server (`instance`,
    /// `install_id`) reading it: the binding, the key's signature and expiry,
    /// and that the record still says what the key says. Returns the verified
    /// key, whose role is the role this server has.
    pub fn check(
        &self,
        trusted: &TrustedKeys,
        instance: &str,
        install_id: &str,
        today: NaiveDate,
    ) -> Result<LicenseKey, LicenseError> {
        if self.instance != instance || self.install_id != install_id {
            return Err(LicenseError::WrongInstance {
                bound_instance: self.instance.clone(),
                bound_install_id: self.install_id.clone(),
                instance: instance.to_owned(),
                install_id: install_id.to_owned(),
            });
        }
        let key = verify(&self.key, trusted, today)?;
        let field = if key.role() != self.role {
            "role"
        } else if key.serial() != self.serial {
            "serial"
        } else if key.seats() != self.seats {
            "seats"
        } else if key.expires() != self.expires {
            "expiry"
        } else if key.text() != self.key {
            "key text"
        } else {
            return Ok(key);
        };
        Err(LicenseError::RecordMismatch { field })
    }

    /// Releases the key at `now`. The record is consumed: once deactivated,
    /// it cannot be checked or used again.
    pub fn deactivate(self, now: DateTime<Utc>) -> Deactivation {
        Deactivation {
            key: self.key,
            serial: self.serial,
            role: self.role,
            instance: self.instance,
            install_id: self.install_id,
            deactivated_at: now,
        }
    }

    /// Canonical text of the activated key.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// The role this activation gives the server.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Serial of the activated key.
    pub fn serial(&self) -> u32 {
        self.serial
    }
    /// Device seats of the activated key.
    pub fn seats(&self) -> u16 {
        self.seats
    }
    /// Last valid day of the key, `None` when permanent.
    pub fn expires(&self) -> Option<NaiveDate> {
        self.expires
    }
    /// Instance name the key is bound to.
    pub fn instance(&self) -> &str {
        &self.instance
    }
    /// Install id the key is bound to.
    pub fn install_id(&self) -> &str {
        &self.install_id
    }
    /// When the key was activated.
    pub fn activated_at(&self) -> DateTime<Utc> {
        self.activated_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeySpec, VendorKeyPair};
    use chrono::TimeZone;

    struct Fixture {
        vendor: VendorKeyPair,
        trusted: TrustedKeys,
    }

    impl Fixture {
        fn new() -> Self {
            let (vendor, _) = VendorKeyPair::generate().unwrap();
            let trusted = [vendor.public_key()].into_iter().collect();
            Self { vendor, trusted }
        }

        fn key(&self, role: Role, serial: u32, expires: Option<NaiveDate>) -> String {
            let spec = KeySpec {
                role,
                serial,
                seats: 25,
                expires,
            };
            self.vendor.issue(&spec).unwrap()
        }
    }

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 9, 30, 0).unwrap()
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn promotion_deactivates_the_04_key_and_activates_an_03_key() {
        let f = Fixture::new();
        let key_04 = f.key(Role::Secondary, 45, None);
        let key_03 = f.key(Role::Primary, 85, None);

        // The server starts as the secondary.
        let secondary = activate(
            &key_04,
            &f.trusted,
            "gw-b",
            "install-b",
            at(2026, 3, 1),
            None,
        )
        .unwrap();
        let checked = secondary
            .check(&f.trusted, "gw-b", "install-b", day(2026, 3, 2))
            .unwrap();
        assert_eq!(checked.role(), Role::Secondary);
        assert_eq!(
            (secondary.role(), secondary.serial()),
            (Role::Secondary, 45)
        );

        // The 03 key cannot be put on top of the active 04 key.
        let refused = activate(
            &key_03,
            &f.trusted,
            "gw-b",
            "install-b",
            at(2026, 3, 5),
            Some(&secondary),
        );
        assert_eq!(
            refused,
            Err(LicenseError::AlreadyActivated {
                serial: 45,
                role: Role::Secondary
            })
        );

        // Deactivate the 04 key, then activate the 03 key: now primary.
        let released = secondary.deactivate(at(2026, 3, 5));
        assert_eq!(released.serial, 45);
        assert_eq!(released.role, Role::Secondary);
        assert_eq!(released.instance, "gw-b");
        assert_eq!(released.deactivated_at, at(2026, 3, 5));
        let primary = activate(
            &key_03,
            &f.trusted,
            "gw-b",
            "install-b",
            at(2026, 3, 5),
            None,
        )
        .unwrap();
        let checked = primary
            .check(&f.trusted, "gw-b", "install-b", day(2026, 3, 6))
            .unwrap();
        assert_eq!(checked.role(), Role::Primary);
        assert_eq!(checked.serial(), 85);
        assert_eq!(primary.role(), Role::Primary);
        assert_eq!(primary.activated_at(), at(2026, 3, 5));

        // The released 04 key may now license another server as secondary.
        let elsewhere = activate(
            &released.key,
            &f.trusted,
            "gw-c",
            "install-c",
            at(2026, 3, 6),
            None,
        )
        .unwrap();
        assert_eq!(elsewhere.role(), Role::Secondary);
    }

    #[test]
    fn the_record_survives_a_json_round_trip() {
        let f = Fixture::new();
        let key = f.key(Role::Primary, 7, Some(day(2030, 12, 31)));
        let activation = activate(&key, &f.trusted, "gw-a", "id-a", at(2026, 1, 1), None).unwrap();
        let json = serde_json::to_string(&activation).unwrap();
        assert!(json.contains(r#""role":"primary""#), "{json}");
        assert!(json.contains(r#""expires":"2030-12-31""#), "{json}");
        let back: Activation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, activation);
        assert_eq!(back.seats(), 25);
        assert_eq!(back.expires(), Some(day(2030, 12, 31)));
        back.check(&f.trusted, "gw-a", "id-a", day(2030, 12, 31))
            .unwrap();
    }

    #[test]
    fn a_record_checked_on_another_instance_is_refused() {
        let f = Fixture::new();
        let key = f.key(Role::Primary, 7, None);
        let activation = activate(&key, &f.trusted, "gw-a", "id-a", at(2026, 1, 1), None).unwrap();
        let err = activation
            .check(&f.trusted, "gw-b", "id-a", day(2026, 1, 2))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "this activation belongs to instance 'gw-a' (install id id-a), not to instance 'gw-b' (install id id-a): activate this server with its own key"
        );
        let err = activation
            .check(&f.trusted, "gw-a", "id-other", day(2026, 1, 2))
            .unwrap_err();
        assert!(matches!(err, LicenseError::WrongInstance { .. }));
    }

    #[test]
    fn an_edited_record_is_refused() {
        let f = Fixture::new();
        let key = f.key(Role::Secondary, 7, None);
        let activation = activate(&key, &f.trusted, "gw-a", "id-a", at(2026, 1, 1), None).unwrap();
        let json = serde_json::to_string(&activation).unwrap();
        let edited: Activation =
            serde_json::from_str(&json.replace(r#""role":"secondary""#, r#""role":"primary""#))
                .unwrap();
        assert_eq!(
            edited.check(&f.trusted, "gw-a", "id-a", day(2026, 1, 2)),
            Err(LicenseError::RecordMismatch { field: "role" })
        );
        let edited: Activation =
            serde_json::from_str(&json.replace(r#""seats":25"#, r#""seats":500"#)).unwrap();
        assert_eq!(
            edited.check(&f.trusted, "gw-a", "id-a", day(2026, 1, 2)),
            Err(LicenseError::RecordMismatch { field: "seats" })
        );
    }

    #[test]
    fn an_activation_expires_with_its_key() {
        let f = Fixture::new();
        let key = f.key(Role::Primary, 7, Some(day(2026, 6, 30)));
        let activation = activate(&key, &f.trusted, "gw-a", "id-a", at(2026, 1, 1), None).unwrap();
        activation
            .check(&f.trusted, "gw-a", "id-a", day(2026, 6, 30))
            .unwrap();
        assert_eq!(
            activation.check(&f.trusted, "gw-a", "id-a", day(2026, 7, 1)),
            Err(LicenseError::Expired {
                on: day(2026, 6, 30)
            })
        );
        // An already expired key cannot be activated at all.
        let refused = activate(&key, &f.trusted, "gw-a", "id-a", at(2026, 7, 1), None);
        assert_eq!(
            refused,
            Err(LicenseError::Expired {
                on: day(2026, 6, 30)
            })
        );
    }

    #[test]
    fn a_record_stops_checking_when_its_vendor_key_is_no_longer_trusted() {
        let f = Fixture::new();
        let key = f.key(Role::Primary, 7, None);
        let activation = activate(&key, &f.trusted, "gw-a", "id-a", at(2026, 1, 1), None).unwrap();
        let err = activation
            .check(&TrustedKeys::builtin(), "gw-a", "id-a", day(2026, 1, 2))
            .unwrap_err();
        assert!(matches!(err, LicenseError::UnknownVendorKey { .. }));
    }

    #[test]
    fn unusable_instance_names_and_install_ids_are_refused() {
        let f = Fixture::new();
        let key = f.key(Role::Primary, 7, None);
        let now = at(2026, 1, 1);
        let err = activate(&key, &f.trusted, "", "id-a", now, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid instance name for activation: it is empty; pass this server's own value"
        );
        let err = activate(&key, &f.trusted, "gw-a", "  ", now, None).unwrap_err();
        assert_eq!(
            err,
            LicenseError::InvalidBinding {
                what: "install id",
                reason: "it is empty; pass this server's own value".to_owned()
            }
        );
        assert!(activate(&key, &f.trusted, " gw-a", "id", now, None).is_err());
        assert!(activate(&key, &f.trusted, "gw\na", "id", now, None).is_err());
    }
}
