//! The server's role in the pair as a value, and the permission to write
//! configuration that only this module can create.
//!
//! Rules decided here (the store and the license module enforce what is
//! decided; nothing else may decide it):
//! * an `03` activation makes the server the primary, an `04` the secondary,
//!   no (valid) activation makes it unlicensed; an `03` server that has seen
//!   a newer epoch than its own is **fenced**: it keeps taking jobs as a
//!   secondary would, and writes no configuration until it is activated
//!   again;
//! * only the primary writes configuration (R5). A [`ConfigWrite`] is the
//!   proof that a write is allowed; its fields are private and it is built
//!   only by [`RoleSnapshot::config_write`] (a write as primary),
//!   [`RoleSnapshot::permitted_write`] (a write as primary under the stamp
//!   the pair protocol granted),
//!   [`RoleSnapshot::replicated_write`] (applying the primary's change with
//!   the version and epoch the primary stamped) and
//!   [`RoleSnapshot::seed_write`] (the version-0 seed of an empty store), so
//!   the compiler checks that nothing else writes configuration;
//! * everyone else gets a typed [`ReadOnly`] refusal that names the rule and
//!   the way out.
//!
//! The live server keeps a snapshot in a watch channel ([`RoleState`]) so
//! request handlers never touch the database to learn the role. This module
//! does no I/O.

use chrono::{DateTime, NaiveDate, Utc};
use pair_core::Epoch;
use serde::{Serialize, Serializer};
use tokio::sync::watch;

/// What this server is in the pair right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    Primary,
    Secondary,
    Unlicensed,
    /// A primary that learned of a newer epoch and stepped down.
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

/// The role, epochs and license at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSnapshot {
    pub role: ServerRole,
    /// The epoch this server works under: its own term while primary (or
    /// the term it was fenced in), otherwise the newest epoch it has seen.
    pub epoch: Epoch,
    /// The newest epoch this server has seen, its own or a peer's.
    pub seen_epoch: Epoch,
    /// The newer epoch that fenced this server, while fenced.
    pub fenced_by: Option<Epoch>,
    pub license: Option<LicenseSummary>,
    /// Why a stored activation does not count (expired, moved install, ...).
    pub license_problem: Option<String>,
}

/// Status JSON: `epoch` stays the plain number people and older tools
/// read; `epoch_id` and the other epochs are written in full
/// (`NUMBER/SERVER-ID`) for tools that compare them.
impl Serialize for RoleSnapshot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            role: ServerRole,
            epoch: u64,
            epoch_id: String,
            seen_epoch: String,
            fenced_by: Option<String>,
            license: &'a Option<LicenseSummary>,
            license_problem: &'a Option<String>,
        }
        View {
            role: self.role,
            epoch: self.epoch.number,
            epoch_id: self.epoch.to_string(),
            seen_epoch: self.seen_epoch.to_string(),
            fenced_by: self.fenced_by.map(|e| e.to_string()),
            license: &self.license,
            license_problem: &self.license_problem,
        }
        .serialize(s)
    }
}

impl RoleSnapshot {
    /// A server with no license and no history (before the store is read).
    pub fn unlicensed(problem: Option<String>) -> RoleSnapshot {
        RoleSnapshot {
            role: ServerRole::Unlicensed,
            epoch: Epoch::ZERO,
            seen_epoch: Epoch::ZERO,
            fenced_by: None,
            license: None,
            license_problem: problem,
        }
    }

    /// Whether the license lets this server take jobs. A fenced server
    /// does: it stepped down from configuration, not from work.
    pub fn licensed(&self) -> bool {
        match self.role {
            ServerRole::Primary | ServerRole::Secondary | ServerRole::Fenced => true,
            ServerRole::Unlicensed => false,
        }
    }

    /// Device seats of the license (0 when unlicensed).
    pub fn seats(&self) -> u16 {
        self.license.as_ref().map_or(0, |l| l.seats)
    }

    /// The permission for a configuration write by this server as primary,
    /// stamped with its epoch, or why it may not write at all.
    pub fn config_write<'a>(&self, by: &'a str) -> Result<ConfigWrite<'a>, ReadOnly> {
        match self.role {
            ServerRole::Primary => Ok(ConfigWrite {
                kind: WriteKind::Primary {
                    epoch: self.epoch,
                    by,
                },
            }),
            ServerRole::Secondary => Err(ReadOnly::Secondary),
            ServerRole::Fenced => Err(ReadOnly::Fenced {
                by: self.fenced_by.unwrap_or(self.seen_epoch),
            }),
            ServerRole::Unlicensed => Err(ReadOnly::Unlicensed),
        }
    }

    /// The permission to apply a change the primary of `epoch` made as
    /// `version`, kept as the primary stamped it. Only a server that is not
    /// itself the primary applies other servers' changes; the store still
    /// refuses the change when `epoch` is older than the one it holds.
    pub fn replicated_write(&self, epoch: Epoch, version: u64) -> Option<ConfigWrite<'static>> {
        (self.role != ServerRole::Primary).then_some(ConfigWrite {
            kind: WriteKind::Replicated { epoch, version },
        })
    }

    /// The permission for a write the pair protocol granted as primary:
    /// stored under exactly the stamp of `permit` (the protocol persisted
    /// its epoch first and gives each version once), so the change and its
    /// replication carry the same (epoch, version).
    pub fn permitted_write<'a>(
        &self,
        permit: &pair_core::WritePermit,
        by: &'a str,
    ) -> Result<ConfigWrite<'a>, ReadOnly> {
        self.config_write(by)?;
        let stamp = permit.stamp();
        Ok(ConfigWrite {
            kind: WriteKind::Stamped {
                epoch: stamp.epoch,
                version: stamp.version,
                by,
            },
        })
    }

    /// How this server seeds its configuration from its file: as a new
    /// version when it is the primary, otherwise as the version-0 seed that
    /// anything the primary sends supersedes (the store refuses the seed
    /// once a real version exists).
    pub fn seed_write<'a>(&self, by: &'a str) -> ConfigWrite<'a> {
        self.config_write(by).unwrap_or(ConfigWrite {
            kind: WriteKind::Bootstrap,
        })
    }
}

/// A configuration write allowed by the role; see the module comment for
/// who may create one. The store reads it with [`ConfigWrite::kind`].
#[derive(Debug, Clone, Copy)]
pub struct ConfigWrite<'a> {
    kind: WriteKind<'a>,
}

/// How a configuration write is stamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind<'a> {
    /// A write by the primary of `epoch`: takes the next version.
    Primary { epoch: Epoch, by: &'a str },
    /// A write by the primary under the stamp the pair protocol granted:
    /// `version` must be the next one.
    Stamped {
        epoch: Epoch,
        version: u64,
        by: &'a str,
    },
    /// The primary's change, applied as it was stamped.
    Replicated { epoch: Epoch, version: u64 },
    /// The version-0 seed of a store that has no configuration yet.
    Bootstrap,
}

impl<'a> ConfigWrite<'a> {
    pub fn kind(&self) -> WriteKind<'a> {
        self.kind
    }

    /// A write as primary of `epoch`, for the store's own unit tests.
    #[cfg(test)]
    pub const fn for_tests(epoch: Epoch, by: &'a str) -> ConfigWrite<'a> {
        ConfigWrite {
            kind: WriteKind::Primary { epoch, by },
        }
    }

    /// A write under a granted stamp, for the store's own unit tests.
    #[cfg(test)]
    pub const fn stamped_for_tests(epoch: Epoch, version: u64) -> ConfigWrite<'static> {
        ConfigWrite {
            kind: WriteKind::Stamped {
                epoch,
                version,
                by: "test",
            },
        }
    }
}

/// A configuration write refused because this server is not the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadOnly {
    /// The secondary (`04`) never changes configuration.
    #[error(
        "this server is the secondary (license role 04), and the secondary cannot change configuration: \
         make the change on the primary, or promote this server with \
         `gateway license promote <03 key>` (or `gateway license deactivate` then `gateway license activate <03 key>`)"
    )]
    Secondary,
    /// A primary that met a newer primary stepped down.
    #[error(
        "fenced: a newer primary took over at epoch {} and this server stepped down; configuration changes go to that primary. \
         Reactivate this server with an 04 key to rejoin as secondary, or with an 03 key to take the primary role back",
        by.short()
    )]
    Fenced { by: Epoch },
    /// No license at all.
    #[error(
        "this server has no license: activate it with `gateway license activate <key>`; \
         only the primary (license role 03) changes configuration"
    )]
    Unlicensed,
}

impl ReadOnly {
    /// The stable code of the refusal (`docs/API.md`).
    pub fn code(&self) -> &'static str {
        match self {
            ReadOnly::Secondary => "read_only_secondary",
            ReadOnly::Fenced { .. } => "fenced",
            ReadOnly::Unlicensed => "not_licensed",
        }
    }
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

    /// Publishes a new snapshot; returns whether anything changed.
    pub fn publish(&self, next: RoleSnapshot) -> bool {
        self.tx.send_if_modified(|cur| {
            let changed = *cur != next;
            *cur = next;
            changed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pair_core::ServerId;

    fn snapshot(role: ServerRole) -> RoleSnapshot {
        let epoch = Epoch::new(2, ServerId::from_u128(7));
        RoleSnapshot {
            role,
            epoch,
            seen_epoch: epoch,
            fenced_by: (role == ServerRole::Fenced)
                .then_some(Epoch::new(3, ServerId::from_u128(9))),
            license: None,
            license_problem: None,
        }
    }

    #[test]
    fn only_the_primary_gets_a_write_and_refusals_are_typed() {
        let w = snapshot(ServerRole::Primary).config_write("gw-a").unwrap();
        assert!(matches!(w.kind(), WriteKind::Primary { epoch, by: "gw-a" } if epoch.number == 2));
        let e = snapshot(ServerRole::Secondary)
            .config_write("gw-b")
            .unwrap_err();
        assert_eq!(e.code(), "read_only_secondary");
        assert!(e.to_string().contains("gateway license promote"), "{e}");
        let e = snapshot(ServerRole::Fenced)
            .config_write("gw-a")
            .unwrap_err();
        assert_eq!(e.code(), "fenced");
        assert!(e.to_string().contains("epoch 3"), "{e}");
        assert!(e.to_string().contains("04 key"), "{e}");
        assert_eq!(
            snapshot(ServerRole::Unlicensed)
                .config_write("x")
                .unwrap_err()
                .code(),
            "not_licensed"
        );
    }

    #[test]
    fn a_fenced_server_still_takes_jobs() {
        assert!(snapshot(ServerRole::Fenced).licensed());
        assert!(!snapshot(ServerRole::Unlicensed).licensed());
    }

    #[test]
    fn the_primary_never_applies_replicated_changes_and_seeds_as_itself() {
        let e = Epoch::new(5, ServerId::from_u128(1));
        assert!(
            snapshot(ServerRole::Primary)
                .replicated_write(e, 3)
                .is_none()
        );
        let w = snapshot(ServerRole::Secondary)
            .replicated_write(e, 3)
            .unwrap();
        assert_eq!(
            w.kind(),
            WriteKind::Replicated {
                epoch: e,
                version: 3
            }
        );
        assert!(matches!(
            snapshot(ServerRole::Secondary).seed_write("gw-b").kind(),
            WriteKind::Bootstrap
        ));
        assert!(matches!(
            snapshot(ServerRole::Primary).seed_write("gw-a").kind(),
            WriteKind::Primary { .. }
        ));
    }

    #[test]
    fn status_json_keeps_the_epoch_number_and_adds_the_full_epoch() {
        let v = serde_json::to_value(snapshot(ServerRole::Fenced)).unwrap();
        assert_eq!(v["epoch"], 2);
        assert_eq!(v["epoch_id"], format!("2/{}", ServerId::from_u128(7)));
        assert!(v["fenced_by"].as_str().unwrap().starts_with("3/"));
    }
}
