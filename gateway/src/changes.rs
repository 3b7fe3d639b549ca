//! Configuration changes as values, and how one is carried out.
//!
//! Every configuration change an admin or a device asks for (a device
//! registered, approved or revoked, a declarative file applied, a conflict
//! re-applied) is a [`Change`]. It is carried out in two steps with the
//! store, both on the data service:
//! 1. [`check`] refuses what would fail (a taken name, an unknown device)
//!    before a version is granted, so a granted version is never wasted;
//! 2. [`execute`] writes it in one transaction under the permission it is
//!    given.
//!
//! Where the permission comes from is the [`ChangeRoute`]: on a paired
//! server the pair link's protocol grants each write its (epoch, version)
//! and replicates it (see `pair::driver`); without a pair link the role
//! alone decides ([`crate::core::Core::change_config`]).

use serde::Serialize;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::declared::ApplyPlan;
use crate::names::DeviceName;
use crate::role::{ConfigWrite, ReadOnly};
use crate::store::conflicts::{Conflict, ConflictKind};
use crate::store::snapshot::SnapshotDevice;
use crate::store::{Device, DeviceStatus, DeviceUpsert, Store, StoreError, time_text};

/// At most this many devices may wait for approval: the unauthenticated
/// registration endpoint cannot fill the store.
pub const MAX_PENDING_DEVICES: u64 = 100;

/// One configuration change.
#[derive(Debug, Clone)]
pub enum Change {
    /// Register a device with the digest of its token.
    AddDevice {
        name: String,
        serial: Option<String>,
        token_sha256: String,
        status: DeviceStatus,
    },
    /// Approve or revoke a device, by id or name.
    SetDeviceStatus {
        device: String,
        status: DeviceStatus,
    },
    /// A declarative file, planned by [`crate::declared::plan`].
    Declared(ApplyPlan),
    /// Re-apply a change from the conflict report.
    Restore(Conflict),
}

impl Change {
    /// A few words for logs.
    pub fn describe(&self) -> String {
        match self {
            Change::AddDevice { name, .. } => format!("register device {name}"),
            Change::SetDeviceStatus { device, status } => {
                format!("set device {device} {}", status.as_str())
            }
            Change::Declared(plan) => format!("apply a file ({} changes)", plan.diff.len()),
            Change::Restore(c) => format!("re-apply conflict {}", c.id),
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// The configuration version it made; `None` when nothing changed.
    pub version: Option<u64>,
    /// The epoch it was written under, `NUMBER/SERVER-ID`.
    pub epoch: String,
    /// The device it registered or changed.
    pub device: Option<Device>,
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("a device named `{0}` is already registered")]
    DeviceNameTaken(String),
    #[error(
        "{0} devices are already waiting for approval; an admin must approve or revoke some first"
    )]
    TooManyPending(u64),
    /// Not the primary (secondary, fenced, unlicensed).
    #[error(transparent)]
    ReadOnly(#[from] ReadOnly),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The data service or the pair link cannot take the change now.
    #[error("{0}")]
    Unavailable(String),
}

/// Where changes go to be granted and carried out.
pub trait ChangeRoute: Send + Sync {
    /// Hands `change` over; the answer comes when it is durable (or
    /// refused).
    fn submit(&self, change: Change) -> oneshot::Receiver<Result<Applied, ChangeError>>;
}

/// Refuses, before any version is granted, a change that would fail.
pub fn check(store: &Store, change: &Change) -> Result<(), ChangeError> {
    match change {
        Change::AddDevice { name, status, .. } => {
            DeviceName::parse(name).map_err(ChangeError::Invalid)?;
            if store.device_by_name(name)?.is_some() {
                return Err(ChangeError::DeviceNameTaken(name.clone()));
            }
            if *status == DeviceStatus::Pending {
                let pending = store.pending_devices()?;
                if pending >= MAX_PENDING_DEVICES {
                    return Err(ChangeError::TooManyPending(pending));
                }
            }
        }
        Change::SetDeviceStatus { device, .. } => {
            find_device(store, device)?;
        }
        Change::Declared(_) => {}
        Change::Restore(conflict) => {
            if conflict.kind == ConflictKind::Device {
                let row = conflict_device(conflict)?;
                if let Some(other) = store.device_by_name(&row.name)?
                    && other.id.to_string() != row.id
                {
                    return Err(ChangeError::Refused(format!(
                        "a device named `{}` with another id is registered on this primary; \
                         revoke or rename one of them, then apply the conflict again",
                        row.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Carries out `change` under `write`, in one transaction.
pub fn execute(
    store: &Store,
    change: &Change,
    write: ConfigWrite<'_>,
) -> Result<Option<Device>, ChangeError> {
    match change {
        Change::AddDevice {
            name,
            serial,
            token_sha256,
            status,
        } => Ok(Some(store.insert_device(
            name,
            serial.as_deref(),
            token_sha256,
            *status,
            write,
        )?)),
        Change::SetDeviceStatus { device, status } => {
            let found = find_device(store, device)?;
            store.set_device_status(found.id, *status, write)?;
            Ok(store.device(found.id)?)
        }
        Change::Declared(plan) => {
            let docs: Vec<(&str, String)> = plan
                .docs
                .iter()
                .map(|(name, body)| (name.as_str(), body.clone()))
                .collect();
            let devices: Vec<DeviceUpsert> = plan
                .devices
                .iter()
                .map(|d| DeviceUpsert {
                    id: d.id,
                    name: d.name.clone(),
                    serial: d.serial.clone(),
                    token_sha256: d.token_sha256.clone(),
                    status: d.status,
                    created_at: time_text(d.created_at),
                })
                .collect();
            store.write_config(&docs, &devices, write)?;
            Ok(None)
        }
        Change::Restore(conflict) => match conflict.kind {
            ConflictKind::Document => {
                store.write_config(
                    &[(conflict.name.as_str(), conflict.body.clone())],
                    &[],
                    write,
                )?;
                Ok(None)
            }
            ConflictKind::Device => {
                let row = conflict_device(conflict)?;
                let id = Uuid::parse_str(&row.id).map_err(|_| {
                    ChangeError::Invalid(format!("conflict {} has a bad device id", conflict.id))
                })?;
                let status = DeviceStatus::parse(&row.status).ok_or_else(|| {
                    ChangeError::Invalid(format!(
                        "conflict {} has a bad device status",
                        conflict.id
                    ))
                })?;
                store.write_config(
                    &[],
                    &[DeviceUpsert {
                        id,
                        name: row.name.clone(),
                        serial: row.serial.clone(),
                        token_sha256: row.token_sha256.clone(),
                        status,
                        created_at: row.created_at.clone(),
                    }],
                    write,
                )?;
                Ok(store.device(id)?)
            }
        },
    }
}

fn conflict_device(conflict: &Conflict) -> Result<SnapshotDevice, ChangeError> {
    serde_json::from_str(&conflict.body).map_err(|e| {
        ChangeError::Invalid(format!(
            "conflict {} does not hold a device row: {e}",
            conflict.id
        ))
    })
}

/// Finds a device by id or name.
pub fn find_device(store: &Store, id_or_name: &str) -> Result<Device, ChangeError> {
    let found = match Uuid::parse_str(id_or_name) {
        Ok(id) => store.device(id)?,
        Err(_) => store.device_by_name(id_or_name)?,
    };
    found.ok_or_else(|| {
        ChangeError::NotFound(format!(
            "no device `{id_or_name}`; `gateway device list` shows them"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pair_core::{Epoch, ServerId};

    const E: Epoch = Epoch::new(1, ServerId::from_u128(0xa));

    #[test]
    fn checks_refuse_before_a_version_is_granted() {
        let store = Store::open_in_memory().unwrap();
        let add = |name: &str| Change::AddDevice {
            name: name.into(),
            serial: None,
            token_sha256: format!("digest-{name}"),
            status: DeviceStatus::Approved,
        };
        check(&store, &add("mfd-1")).unwrap();
        execute(&store, &add("mfd-1"), ConfigWrite::for_tests(E, "t")).unwrap();
        assert!(matches!(
            check(&store, &add("mfd-1")),
            Err(ChangeError::DeviceNameTaken(_))
        ));
        assert!(matches!(
            check(&store, &add("bad name!")),
            Err(ChangeError::Invalid(_))
        ));
        let revoke = |d: &str| Change::SetDeviceStatus {
            device: d.into(),
            status: DeviceStatus::Revoked,
        };
        assert!(matches!(
            check(&store, &revoke("nope")),
            Err(ChangeError::NotFound(_))
        ));
        let device = execute(&store, &revoke("mfd-1"), ConfigWrite::for_tests(E, "t"))
            .unwrap()
            .unwrap();
        assert_eq!(device.status, DeviceStatus::Revoked);
        assert_eq!(store.config_meta().unwrap().version, 2);
    }
}
