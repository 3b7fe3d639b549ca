//! The server's role in the pair, derived from its license activation, and
//! the epoch that orders primaries over time.
//!
//! Rules enforced here:
//! * an `03` activation makes the server the primary, an `04` the secondary,
//!   no (valid) activation makes it unlicensed;
//! * only the primary writes configuration (R5); everyone else gets a
//!   [`ReadOnly`] error that names the rule and how to promote;
//! * every activation as primary takes a new epoch, greater than any epoch
//!   this server has seen, so a promoted server always outranks the primary it
//!   replaces (R6). The pair link will compare epochs; this module only keeps
//!   them monotonic.
//!
//! The activation record and the epoch are local state in the store; the live
//! server keeps a snapshot in a watch channel so request handlers never touch
//! the database to learn the role.

use chrono::{DateTime, NaiveDate, Utc};
use licensing::{Activation, Deactivation, LicenseError, Role, TrustedKeys};
use serde::Serialize;
use tokio::sync::watch;

use crate::store::{ConfigWrite, Store, StoreError};

const ACTIVATION_KEY: &str = "license.activation";
const EPOCH_KEY: &str = "role.epoch";

/// What this server is in the pair right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    Primary,
    Secondary,
    Unlicensed,
    /// A primary that learned of a newer epoch and stepped down. Set by the
    /// pair link; listed here so status and health have one vocabulary.
    Fenced,
}

impl ServerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerRole::Primary => "primary",
            ServerRole::Secondary => "secondary",
            ServerRole::Unlicensed => "unlicensed",
            ServerRole::Fenced => "fenced",
        }
    }
}

/// The license as status output shows it (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LicenseSummary {
    pub role_code: &'static str,
    pub serial: u32,
    pub seats: u16,
    pub expires: Option<NaiveDate>,
    pub activated_at: DateTime<Utc>,
}

/// The role, epoch and license at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleSnapshot {
    pub role: ServerRole,
    pub epoch: u64,
    pub license: Option<LicenseSummary>,
    /// Why a stored activation does not count (expired, moved install, ...).
    pub license_problem: Option<String>,
}

impl RoleSnapshot {
    /// Whether the license lets this server take jobs.
    pub fn licensed(&self) -> bool {
        matches!(self.role, ServerRole::Primary | ServerRole::Secondary)
    }

    /// Device seats of the license (0 when unlicensed).
    pub fn seats(&self) -> u16 {
        self.license.as_ref().map_or(0, |l| l.seats)
    }

    /// How a configuration write by this server is stamped, or why it may not
    /// write at all.
    pub fn config_write<'a>(&self, by: &'a str) -> Result<ConfigWrite<'a>, ReadOnly> {
        match self.role {
            ServerRole::Primary => Ok(ConfigWrite::Primary {
                epoch: self.epoch,
                by,
            }),
            role => Err(ReadOnly { role }),
        }
    }
}

/// A configuration write refused because this server is not the primary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ReadOnly {
    pub role: ServerRole,
}

impl std::fmt::Display for ReadOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.role {
            ServerRole::Secondary => f.write_str(
                "this server is the secondary (license role 04), and the secondary cannot change configuration: \
                 make the change on the primary, or promote this server with \
                 `gateway license deactivate` then `gateway license activate <03 key>`",
            ),
            ServerRole::Fenced => f.write_str(
                "this server stepped down because a newer primary exists; configuration changes go to that primary",
            ),
            _ => f.write_str(
                "this server has no license: activate it with `gateway license activate <key>`; \
                 only the primary (license role 03) changes configuration",
            ),
        }
    }
}

/// Why an activation or deactivation failed.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(transparent)]
    License(#[from] LicenseError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("this server has no license to deactivate")]
    NotActivated,
    #[error("the stored activation cannot be read ({0}); deactivate and activate again")]
    CorruptActivation(String),
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

fn stored_epoch(store: &Store) -> Result<u64, StoreError> {
    Ok(store
        .local_get(EPOCH_KEY)?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

/// Reads the role from the store, checking the activation against the
/// trusted keys, this install and `today`.
pub fn read_role(
    store: &Store,
    ctx: &LicenseContext,
    today: NaiveDate,
) -> Result<RoleSnapshot, StoreError> {
    let epoch = stored_epoch(store)?;
    let activation = match stored_activation(store) {
        Ok(a) => a,
        Err(e) => {
            return Ok(RoleSnapshot {
                role: ServerRole::Unlicensed,
                epoch,
                license: None,
                license_problem: Some(e.to_string()),
            });
        }
    };
    let Some(activation) = activation else {
        return Ok(RoleSnapshot {
            role: ServerRole::Unlicensed,
            epoch,
            license: None,
            license_problem: None,
        });
    };
    let summary = LicenseSummary {
        role_code: activation.role().code(),
        serial: activation.serial(),
        seats: activation.seats(),
        expires: activation.expires(),
        activated_at: activation.activated_at(),
    };
    Ok(
        match activation.check(&ctx.trusted, &ctx.instance, &ctx.install_id, today) {
            Ok(key) => RoleSnapshot {
                role: match key.role() {
                    Role::Primary => ServerRole::Primary,
                    Role::Secondary => ServerRole::Secondary,
                },
                epoch,
                license: Some(summary),
                license_problem: None,
            },
            Err(e) => RoleSnapshot {
                role: ServerRole::Unlicensed,
                epoch,
                license: Some(summary),
                license_problem: Some(e.to_string()),
            },
        },
    )
}

/// Activates a key on this server. Refuses when a key is already active
/// (deactivate first: that is the promotion procedure). An `03` key takes a
/// new epoch above every epoch this server knows, its own and the one on its
/// configuration.
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
        let known = stored_epoch(store)?.max(store.config_meta()?.epoch);
        store.local_set(EPOCH_KEY, Some(&(known + 1).to_string()))?;
    }
    let json = serde_json::to_string(&activation)
        .map_err(|e| RoleError::CorruptActivation(e.to_string()))?;
    store.local_set(ACTIVATION_KEY, Some(&json))?;
    Ok(read_role(store, ctx, now.date_naive())?)
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

/// The live server's view of its role.
#[derive(Debug, Clone)]
pub struct RoleState {
    tx: watch::Sender<RoleSnapshot>,
}

impl RoleState {
    pub fn new(initial: RoleSnapshot) -> RoleState {
        RoleState {
            tx: watch::Sender::new(initial),
        }
    }

    pub fn snapshot(&self) -> RoleSnapshot {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<RoleSnapshot> {
        self.tx.subscribe()
    }

    /// Publishes a new snapshot; returns whether the role or epoch changed.
    pub fn publish(&self, next: RoleSnapshot) -> bool {
        self.tx.send_if_modified(|cur| {
            let changed = *cur != next;
            *cur = next;
            changed
        })
    }
}

/// The install id of an instance: a digest of the machine id, the data
/// directory's absolute path and the instance name.
pub fn install_id(data_dir: &std::path::Path, instance: &str) -> String {
    let machine = std::fs::read_to_string("/etc/machine-id")
        .or_else(|_| std::fs::read_to_string("/var/lib/dbus/machine-id"))
        .unwrap_or_default();
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let text = format!("{}\n{}\n{}", machine.trim(), dir.display(), instance);
    crate::store::hex(&ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn promotion_deactivate_04_then_activate_03_raises_the_epoch() {
        let (store, ctx, vendor) = setup();
        let now = Utc::now();
        let today = now.date_naive();
        assert_eq!(
            read_role(&store, &ctx, today).unwrap().role,
            ServerRole::Unlicensed
        );

        let s = activate_license(&store, &ctx, &key(&vendor, Role::Secondary, 45), now).unwrap();
        assert_eq!((s.role, s.epoch), (ServerRole::Secondary, 0));
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

        // The secondary had seen the primary's configuration at epoch 3.
        store
            .put_config_docs(
                &[("users", "{}".into())],
                ConfigWrite::Primary {
                    epoch: 3,
                    by: "gw-a",
                },
            )
            .unwrap();
        let released = deactivate_license(&store, now).unwrap();
        assert_eq!(released.serial, 45);
        let s = activate_license(&store, &ctx, &key(&vendor, Role::Primary, 85), now).unwrap();
        assert_eq!(
            (s.role, s.epoch),
            (ServerRole::Primary, 4),
            "new epoch above the config's"
        );
        assert!(matches!(
            s.config_write("gw-b"),
            Ok(ConfigWrite::Primary { epoch: 4, .. })
        ));
        assert_eq!(s.license.as_ref().unwrap().serial, 85);

        // Survives a reload.
        assert_eq!(read_role(&store, &ctx, today).unwrap(), s);
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
