//! License activation, deactivation and promotion, and reading the role
//! back from the store: the only code that turns stored local state into a
//! [`RoleSnapshot`]. It reads and writes the store; it decides nothing about
//! configuration writes (the role module does).
//!
//! Epoch rules enforced here (see `pair_core::epoch` for the order):
//! * every activation with an `03` key takes a new epoch above every epoch
//!   this server has seen — its own, the one its configuration carries, a
//!   peer's — and persists it *before* the activation is stored, so the
//!   server never writes as primary under an epoch it has not recorded;
//! * a server holding an `03` activation whose own epoch is older than the
//!   newest epoch it has seen is **fenced**. Both epochs are persisted, so it
//!   stays fenced across a restart; only a new activation ends it (an `04`
//!   key makes it a secondary, an `03` key a primary of a newer epoch, which
//!   in turn fences the other server);
//! * a stored epoch that cannot be read is an error, never 0.

use chrono::{DateTime, NaiveDate, Utc};
use licensing::{Activation, Deactivation, LicenseError, Role, TrustedKeys};
use pair_core::{Epoch, ServerId};

use crate::role::{LicenseSummary, RoleSnapshot, ServerRole};
use crate::security::hex;
use crate::store::{Store, StoreError};

const ACTIVATION_KEY: &str = "license.activation";
/// The epoch this server took at its last activation as primary.
const OWN_EPOCH_KEY: &str = "role.epoch";

/// Why an activation, deactivation or promotion failed.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(transparent)]
    License(#[from] LicenseError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store cannot be reached right now.
    #[error("{0}")]
    DataServiceDown(String),
    #[error("this server has no license to deactivate")]
    NotActivated,
    #[error("the stored activation cannot be read ({0}); deactivate and activate again")]
    CorruptActivation(String),
    /// `promote` needs a secondary to promote.
    #[error(
        "promotion turns a secondary (04) into the primary, but this server {0}; \
         use `gateway license activate` instead"
    )]
    NotSecondary(&'static str),
    /// `promote` was given a key that does not make a primary.
    #[error(
        "the key given for promotion has role 04; promotion needs an 03 key. The 04 activation stays in place"
    )]
    NotPrimaryKey,
}

/// Where this server's identity for licensing comes from: its instance name
/// and an install id that changes when the data directory moves to another
/// machine or path, so a copied activation does not follow.
#[derive(Debug, Clone)]
pub struct LicenseContext {
    pub trusted: TrustedKeys,
    pub instance: String,
    pub install_id: String,
}

fn stored_activation(store: &Store) -> Result<Option<Activation>, RoleError> {
    match store.local_get(ACTIVATION_KEY)? {
        None => Ok(None),
        Some(json) => serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| RoleError::CorruptActivation(e.to_string())),
    }
}

/// The role and serial of the activation stored in `store`, when one is
/// there and readable. Works on a store opened read-only, so the command
/// line can look at another instance's activation without disturbing it.
pub fn stored_serial(store: &Store) -> Option<(Role, u32)> {
    stored_activation(store)
        .ok()
        .flatten()
        .map(|a| (a.role(), a.serial()))
}

/// This server's id, made (from the system's random source) on first use.
pub fn server_id(store: &Store) -> Result<ServerId, StoreError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| StoreError::Corrupt("the system random source failed".into()))?;
    store.server_id_or_init(ServerId::from_bytes(bytes))
}

/// The epoch this server took as primary, if it ever did. Stores written
/// before epochs carried a server id hold a plain number, which was this
/// server's own.
fn own_epoch(store: &Store, me: ServerId) -> Result<Option<Epoch>, StoreError> {
    let Some(text) = store.local_get(OWN_EPOCH_KEY)? else {
        return Ok(None);
    };
    if let Ok(number) = text.parse::<u64>() {
        return Ok(Some(Epoch::new(number, me)));
    }
    text.parse()
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("this server's stored epoch `{text}`: {e}")))
}

/// Reads the role from the store, checking the activation against the
/// trusted keys, this install and `today`.
pub fn read_role(
    store: &Store,
    ctx: &LicenseContext,
    today: NaiveDate,
) -> Result<RoleSnapshot, StoreError> {
    let me = server_id(store)?;
    let seen = store.newest_epoch()?;
    let own = own_epoch(store, me)?;
    let unlicensed = |license, problem| RoleSnapshot {
        role: ServerRole::Unlicensed,
        epoch: seen,
        seen_epoch: seen,
        fenced_by: None,
        license,
        license_problem: problem,
    };
    let activation = match stored_activation(store) {
        Ok(Some(a)) => a,
        Ok(None) => return Ok(unlicensed(None, None)),
        Err(e) => return Ok(unlicensed(None, Some(e.to_string()))),
    };
    let summary = LicenseSummary {
        role_code: activation.role().code(),
        serial: activation.serial(),
        seats: activation.seats(),
        expires: activation.expires(),
        activated_at: activation.activated_at(),
    };
    let key = match activation.check(&ctx.trusted, &ctx.instance, &ctx.install_id, today) {
        Ok(key) => key,
        Err(e) => return Ok(unlicensed(Some(summary), Some(e.to_string()))),
    };
    Ok(match key.role() {
        Role::Secondary => RoleSnapshot {
            role: ServerRole::Secondary,
            epoch: seen,
            seen_epoch: seen,
            fenced_by: None,
            license: Some(summary),
            license_problem: None,
        },
        Role::Primary => {
            let own = own.unwrap_or(Epoch::ZERO);
            // A newer epoch exists: another server was made primary after
            // this one. Stepping down is the only safe answer until an admin
            // activates this server again.
            let fenced = seen > own;
            RoleSnapshot {
                role: if fenced {
                    ServerRole::Fenced
                } else {
                    ServerRole::Primary
                },
                epoch: own,
                seen_epoch: seen,
                fenced_by: fenced.then_some(seen),
                license: Some(summary),
                license_problem: None,
            }
        }
    })
}

/// The pair protocol's durable state (`pair_core::Persisted`) as this
/// store holds it: the newest epoch seen, the activation, this server's own
/// term and fence, and the configuration stamp. The pair link starts its
/// protocol node from it.
pub fn pair_state(
    store: &Store,
    ctx: &LicenseContext,
    today: NaiveDate,
) -> Result<pair_core::Persisted, StoreError> {
    use pair_core::{ActivationKind, ConfigStamp};
    let role = read_role(store, ctx, today)?;
    let meta = store.config_meta()?;
    let (activation, term) = match role.role {
        ServerRole::Primary | ServerRole::Fenced => (ActivationKind::Primary, role.epoch),
        ServerRole::Secondary => (ActivationKind::Secondary, Epoch::ZERO),
        ServerRole::Unlicensed => (ActivationKind::None, Epoch::ZERO),
    };
    Ok(pair_core::Persisted {
        highest_seen: role.seen_epoch,
        activation,
        term,
        fenced_by: role.fenced_by,
        config: ConfigStamp {
            version: meta.version,
            epoch: meta.epoch,
        },
        takeovers: local_count(store, TAKEOVERS_KEY)?,
        takeovers_applied: local_count(store, TAKEOVERS_APPLIED_KEY)?,
    })
}

/// How many takeovers of the peer's jobs this server made, and how many of
/// the peer's takeovers of its own jobs it applied (the pair protocol's
/// job-ownership counts).
const TAKEOVERS_KEY: &str = "pair.takeovers";
const TAKEOVERS_APPLIED_KEY: &str = "pair.takeovers_applied";

fn local_count(store: &Store, key: &str) -> Result<u64, StoreError> {
    match store.local_get(key)? {
        None => Ok(0),
        Some(text) => text
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("`{key}` is `{text}`: {e}"))),
    }
}

/// Makes what the pair protocol asked to persist durable: the newest epoch
/// seen (only ever raised) and, for a primary, its term (a primary that met
/// a secondary which had seen a newer epoch raises its own term above it).
/// A fence needs no record of its own: an `03` server whose term is older
/// than the newest epoch seen is fenced (see [`read_role`]).
pub fn persist_pair_state(store: &Store, state: &pair_core::Persisted) -> Result<(), StoreError> {
    // The term first, then the newest epoch seen: a reader between the two
    // writes sees a raised term as primary, never as fenced by its own epoch.
    if state.activation == pair_core::ActivationKind::Primary {
        let me = server_id(store)?;
        let own = own_epoch(store, me)?.unwrap_or(Epoch::ZERO);
        if state.term > own {
            store.local_set(OWN_EPOCH_KEY, Some(&state.term.to_string()))?;
        }
    }
    store.note_epoch(state.highest_seen)?;
    // Counts only grow: a takeover is persisted before its jobs move.
    for (key, value) in [
        (TAKEOVERS_KEY, state.takeovers),
        (TAKEOVERS_APPLIED_KEY, state.takeovers_applied),
    ] {
        if value > local_count(store, key)? {
            store.local_set(key, Some(&value.to_string()))?;
        }
    }
    Ok(())
}

/// Takes a new epoch for this server as primary and persists it before
/// anything can be written under it.
fn take_primary_epoch(store: &Store) -> Result<Epoch, StoreError> {
    let me = server_id(store)?;
    let own = own_epoch(store, me)?.unwrap_or(Epoch::ZERO);
    let next = store.newest_epoch()?.max(own).next_for(me);
    store.local_set(OWN_EPOCH_KEY, Some(&next.to_string()))?;
    store.note_epoch(next)?;
    Ok(next)
}

fn store_activation(store: &Store, activation: &Activation) -> Result<(), RoleError> {
    let json = serde_json::to_string(activation)
        .map_err(|e| RoleError::CorruptActivation(e.to_string()))?;
    store.local_set(ACTIVATION_KEY, Some(&json))?;
    Ok(())
}

/// Activates a key on this server. Refuses when a key is already active
/// (deactivate first, or use [`promote`]). An `03` key takes a new epoch.
pub fn activate_license(
    store: &Store,
    ctx: &LicenseContext,
    key: &str,
    now: DateTime<Utc>,
) -> Result<RoleSnapshot, RoleError> {
    let current = stored_activation(store).unwrap_or(None);
    let activation = licensing::activate(
        key,
        &ctx.trusted,
        &ctx.instance,
        &ctx.install_id,
        now,
        current.as_ref(),
    )?;
    if activation.role() == Role::Primary {
        take_primary_epoch(store)?;
    }
    store_activation(store, &activation)?;
    Ok(read_role(store, ctx, now.date_naive())?)
}

/// Promotes a secondary: releases its `04` activation and activates the
/// `03` key in one step. The key is verified first, so a key that is not a
/// valid `03` key leaves the `04` activation in place; and the role goes
/// from secondary straight to primary, never through "unlicensed".
pub fn promote(
    store: &Store,
    ctx: &LicenseContext,
    key: &str,
    now: DateTime<Utc>,
) -> Result<(Deactivation, RoleSnapshot), RoleError> {
    let current = match stored_activation(store)? {
        Some(a) if a.role() == Role::Secondary => a,
        Some(_) => {
            return Err(RoleError::NotSecondary(
                "is already activated with an 03 key",
            ));
        }
        None => return Err(RoleError::NotSecondary("has no license")),
    };
    let activation =
        licensing::activate(key, &ctx.trusted, &ctx.instance, &ctx.install_id, now, None)?;
    if activation.role() != Role::Primary {
        return Err(RoleError::NotPrimaryKey);
    }
    take_primary_epoch(store)?;
    store_activation(store, &activation)?;
    let released = current.deactivate(now);
    Ok((released, read_role(store, ctx, now.date_naive())?))
}

/// Releases this server's license. A stored activation that no longer
/// verifies (expired, moved) can still be deactivated.
pub fn deactivate_license(store: &Store, now: DateTime<Utc>) -> Result<Deactivation, RoleError> {
    let activation = match stored_activation(store) {
        Ok(Some(a)) => a,
        Ok(None) => return Err(RoleError::NotActivated),
        Err(_) => {
            // An unreadable record is removed so the server can be
            // activated again; there is nothing to report about it.
            store.local_set(ACTIVATION_KEY, None)?;
            return Err(RoleError::NotActivated);
        }
    };
    store.local_set(ACTIVATION_KEY, None)?;
    Ok(activation.deactivate(now))
}

/// The install id of an instance: a digest of the machine id, the data
/// directory's absolute path and the instance name.
pub fn install_id(data_dir: &std::path::Path, instance: &str) -> String {
    let machine = std::fs::read_to_string("/etc/machine-id")
        .or_else(|_| std::fs::read_to_string("/var/lib/dbus/machine-id"))
        .unwrap_or_default();
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let text = format!("{}\n{}\n{}", machine.trim(), dir.display(), instance);
    hex(&ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::WriteKind;
    use licensing::{KeySpec, VendorKeyPair};

    fn setup() -> (Store, LicenseContext, VendorKeyPair) {
        let (vendor, _) = VendorKeyPair::generate().unwrap();
        let ctx = LicenseContext {
            trusted: TrustedKeys::builtin().with(vendor.public_key()),
            instance: "gw-b".into(),
            install_id: "install-1".into(),
        };
        (Store::open_in_memory().unwrap(), ctx, vendor)
    }

    fn key(vendor: &VendorKeyPair, role: Role, serial: u32) -> String {
        vendor
            .issue(&KeySpec {
                role,
                serial,
                seats: 5,
                expires: None,
            })
            .unwrap()
    }

    fn replicate(store: &Store, epoch: Epoch, version: u64, body: &str) {
        let w = RoleSnapshot::unlicensed(None)
            .replicated_write(epoch, version)
            .unwrap();
        store.put_config_docs(&[("users", body.into())], w).unwrap();
    }

    #[test]
    fn promotion_deactivate_04_then_activate_03_raises_the_epoch() {
        let (store, ctx, vendor) = setup();
        let now = Utc::now();
        let today = now.date_naive();
        let me = server_id(&store).unwrap();
        assert_eq!(
            read_role(&store, &ctx, today).unwrap().role,
            ServerRole::Unlicensed
        );

        let s = activate_license(&store, &ctx, &key(&vendor, Role::Secondary, 45), now).unwrap();
        assert_eq!((s.role, s.epoch), (ServerRole::Secondary, Epoch::ZERO));
        assert!(
            s.config_write("gw-b")
                .unwrap_err()
                .to_string()
                .contains("promote this server")
        );

        // A second key while one is active is refused: deactivate first.
        let err =
            activate_license(&store, &ctx, &key(&vendor, Role::Primary, 85), now).unwrap_err();
        assert!(
            matches!(
                err,
                RoleError::License(LicenseError::AlreadyActivated { .. })
            ),
            "{err}"
        );

        // The secondary had received the primary's configuration at epoch 3.
        let theirs = Epoch::new(3, ServerId::from_u128(0xa));
        replicate(&store, theirs, 7, "{}");
        let released = deactivate_license(&store, now).unwrap();
        assert_eq!(released.serial, 45);
        let s = activate_license(&store, &ctx, &key(&vendor, Role::Primary, 85), now).unwrap();
        assert_eq!(s.role, ServerRole::Primary);
        assert_eq!(s.epoch, Epoch::new(4, me), "new epoch above the config's");
        assert!(matches!(
            s.config_write("gw-b").unwrap().kind(),
            WriteKind::Primary { epoch, .. } if epoch == Epoch::new(4, me)
        ));
        assert_eq!(s.license.as_ref().unwrap().serial, 85);

        // Survives a reload.
        assert_eq!(read_role(&store, &ctx, today).unwrap(), s);
    }

    /// Regression: promotion computed `max(local, config) + 1`, so a server
    /// re-activated with `03` and a promoted secondary could both hold
    /// epoch 2 with nothing to order them.
    #[test]
    fn two_servers_promoted_to_the_same_epoch_number_are_strictly_ordered() {
        let (a_store, ctx, vendor) = setup();
        let b_store = Store::open_in_memory().unwrap();
        let now = Utc::now();
        // Both start from the same replicated history at epoch 1.
        let first = Epoch::new(1, ServerId::from_u128(0x99));
        replicate(&a_store, first, 1, "{}");
        replicate(&b_store, first, 1, "{}");
        let a = activate_license(&a_store, &ctx, &key(&vendor, Role::Primary, 1), now).unwrap();
        let b = activate_license(&b_store, &ctx, &key(&vendor, Role::Primary, 1), now).unwrap();
        assert_eq!(a.epoch.number, 2);
        assert_eq!(b.epoch.number, 2);
        assert_ne!(a.epoch, b.epoch, "different servers, different epochs");
        let (older, newer, older_store) = if a.epoch < b.epoch {
            (a.epoch, b.epoch, &a_store)
        } else {
            (b.epoch, a.epoch, &b_store)
        };
        assert!(older < newer);
        // The moment the older learns of the newer, it is fenced.
        older_store.note_epoch(newer).unwrap();
        let fenced = read_role(older_store, &ctx, now.date_naive()).unwrap();
        assert_eq!(fenced.role, ServerRole::Fenced);
        assert_eq!(fenced.fenced_by, Some(newer));
        assert_eq!(fenced.config_write("x").unwrap_err().code(), "fenced");
    }

    #[test]
    fn a_fenced_server_stays_fenced_across_a_restart_until_activated_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let (_, ctx, vendor) = setup();
        let now = Utc::now();
        let today = now.date_naive();
        let store = Store::open(&path).unwrap();
        let mine = activate_license(&store, &ctx, &key(&vendor, Role::Primary, 1), now).unwrap();
        let newer = Epoch::new(mine.epoch.number + 1, ServerId::from_u128(5));
        store.note_epoch(newer).unwrap();
        drop(store);

        let store = Store::open(&path).unwrap();
        let s = read_role(&store, &ctx, today).unwrap();
        assert_eq!((s.role, s.fenced_by), (ServerRole::Fenced, Some(newer)));
        assert!(s.licensed(), "a fenced server still takes jobs");

        // Rejoining as secondary: an 04 activation.
        deactivate_license(&store, now).unwrap();
        let s = activate_license(&store, &ctx, &key(&vendor, Role::Secondary, 2), now).unwrap();
        assert_eq!(s.role, ServerRole::Secondary);
        // Switching back deliberately: an 03 activation takes an epoch above
        // everything seen.
        deactivate_license(&store, now).unwrap();
        let s = activate_license(&store, &ctx, &key(&vendor, Role::Primary, 1), now).unwrap();
        assert_eq!(s.role, ServerRole::Primary);
        assert!(s.epoch > newer);
    }

    #[test]
    fn promote_swaps_04_for_03_in_one_step_and_a_bad_key_changes_nothing() {
        let (store, ctx, vendor) = setup();
        let now = Utc::now();
        let today = now.date_naive();
        assert!(matches!(
            promote(&store, &ctx, &key(&vendor, Role::Primary, 1), now),
            Err(RoleError::NotSecondary(_))
        ));
        activate_license(&store, &ctx, &key(&vendor, Role::Secondary, 4), now).unwrap();
        let before = read_role(&store, &ctx, today).unwrap();

        assert!(matches!(
            promote(&store, &ctx, &key(&vendor, Role::Secondary, 5), now),
            Err(RoleError::NotPrimaryKey)
        ));
        assert!(matches!(
            promote(&store, &ctx, "SCANGWP0300000001-garbage", now),
            Err(RoleError::License(_))
        ));
        assert_eq!(read_role(&store, &ctx, today).unwrap(), before);

        let (released, s) = promote(&store, &ctx, &key(&vendor, Role::Primary, 1), now).unwrap();
        assert_eq!((released.serial, released.role), (4, Role::Secondary));
        assert_eq!(s.role, ServerRole::Primary);
        assert!(s.epoch.number >= 1);
        assert!(matches!(
            promote(&store, &ctx, &key(&vendor, Role::Primary, 1), now),
            Err(RoleError::NotSecondary(_))
        ));
    }

    /// The pair protocol's durable state round-trips through the store: a
    /// raised term stays primary, a fence reads back as fenced.
    #[test]
    fn the_pair_state_is_kept_as_the_protocol_asked() {
        let (store, ctx, vendor) = setup();
        let now = Utc::now();
        let today = now.date_naive();
        let mine = activate_license(&store, &ctx, &key(&vendor, Role::Primary, 1), now).unwrap();
        let state = pair_state(&store, &ctx, today).unwrap();
        assert_eq!(state.activation, pair_core::ActivationKind::Primary);
        assert_eq!(state.term, mine.epoch);

        // A secondary had seen a newer epoch: this primary raises its term.
        let other = ServerId::from_u128(0xb);
        let raised = server_id(&store).unwrap();
        let seen = Epoch::new(mine.epoch.number + 1, other);
        let term = seen.next_for(raised);
        let mut next = state.clone();
        next.highest_seen = term;
        next.term = term;
        persist_pair_state(&store, &next).unwrap();
        let r = read_role(&store, &ctx, today).unwrap();
        assert_eq!((r.role, r.epoch), (ServerRole::Primary, term));

        // A primary of a newer epoch fences it.
        let newer = Epoch::new(term.number + 1, other);
        let mut fenced = next.clone();
        fenced.highest_seen = newer;
        fenced.fenced_by = Some(newer);
        persist_pair_state(&store, &fenced).unwrap();
        let r = read_role(&store, &ctx, today).unwrap();
        assert_eq!((r.role, r.fenced_by), (ServerRole::Fenced, Some(newer)));
        assert_eq!(
            pair_state(&store, &ctx, today).unwrap().fenced_by,
            Some(newer)
        );
    }

    #[test]
    fn a_corrupt_own_epoch_is_an_error_and_a_legacy_number_is_read() {
        let (store, ctx, vendor) = setup();
        let now = Utc::now();
        activate_license(&store, &ctx, &key(&vendor, Role::Primary, 1), now).unwrap();
        store.local_set(OWN_EPOCH_KEY, Some("7")).unwrap();
        let s = read_role(&store, &ctx, now.date_naive()).unwrap();
        assert_eq!((s.role, s.epoch.number), (ServerRole::Primary, 7));
        store.local_set(OWN_EPOCH_KEY, Some("seven")).unwrap();
        assert!(matches!(
            read_role(&store, &ctx, now.date_naive()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn activation_from_another_install_does_not_count() {
        let (store, ctx, vendor) = setup();
        let now = Utc::now();
        activate_license(&store, &ctx, &key(&vendor, Role::Primary, 1), now).unwrap();
        let moved = LicenseContext {
            install_id: "install-2".into(),
            ..ctx
        };
        let s = read_role(&store, &moved, now.date_naive()).unwrap();
        assert_eq!(s.role, ServerRole::Unlicensed);
        assert!(s.license_problem.is_some());
        // It can still be released so a new activation is possible.
        deactivate_license(&store, now).unwrap();
        assert!(matches!(
            deactivate_license(&store, now),
            Err(RoleError::NotActivated)
        ));
    }

    #[test]
    fn expired_activation_makes_the_server_unlicensed() {
        let (store, ctx, vendor) = setup();
        let now = Utc::now();
        let k = vendor
            .issue(&KeySpec {
                role: Role::Primary,
                serial: 2,
                seats: 1,
                expires: Some(now.date_naive() + chrono::Days::new(1)),
            })
            .unwrap();
        activate_license(&store, &ctx, &k, now).unwrap();
        assert_eq!(
            read_role(&store, &ctx, now.date_naive()).unwrap().role,
            ServerRole::Primary
        );
        let later = read_role(&store, &ctx, now.date_naive() + chrono::Days::new(2)).unwrap();
        assert_eq!(later.role, ServerRole::Unlicensed);
        assert!(later.license_problem.unwrap().contains("expire"));
    }

    #[test]
    fn install_id_depends_on_instance_and_directory() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_eq!(install_id(a.path(), "x"), install_id(a.path(), "x"));
        assert_ne!(install_id(a.path(), "x"), install_id(a.path(), "y"));
        assert_ne!(install_id(a.path(), "x"), install_id(b.path(), "x"));
    }
}
