//! Admin operations on the store, shared by the admin channel of a running
//! instance and by the command line when the instance is not running, so
//! that both enforce the same rules (the secondary refuses configuration
//! writes, ids are checked, and so on).

use serde::Serialize;
use uuid::Uuid;

use crate::changes::{self, Change, ChangeError};
use crate::role::{ReadOnly, RoleSnapshot};
use crate::security::tokens;
use crate::spool::JobSpool;
use crate::store::{Device, DeviceStatus, JobRecord, JobState, Store, StoreError};

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    /// A configuration change on a server that is not the primary.
    #[error(transparent)]
    ReadOnly(#[from] ReadOnly),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl AdminError {
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::Invalid(_) => "invalid",
            AdminError::NotFound(_) => "not_found",
            AdminError::Refused(_) => "refused",
            AdminError::ReadOnly(r) => r.code(),
            AdminError::Store(StoreError::Fenced { .. }) => "fenced",
            AdminError::Store(_) => "store",
        }
    }
}

/// A device added by an admin, with its token (shown this once).
#[derive(Debug, Serialize)]
pub struct ProvisionedDevice {
    pub device: Device,
    pub token: String,
}

impl From<ChangeError> for AdminError {
    fn from(e: ChangeError) -> AdminError {
        match e {
            ChangeError::Invalid(m) => AdminError::Invalid(m),
            ChangeError::NotFound(m) => AdminError::NotFound(m),
            ChangeError::ReadOnly(r) => AdminError::ReadOnly(r),
            ChangeError::Store(s) => AdminError::Store(s),
            e @ (ChangeError::Refused(_)
            | ChangeError::DeviceNameTaken(_)
            | ChangeError::TooManyPending(_)
            | ChangeError::Unavailable(_)) => AdminError::Refused(e.to_string()),
        }
    }
}

/// The change that pre-provisions an approved device, and its new token.
pub fn add_device_change(name: &str, serial: Option<&str>) -> (Change, String) {
    let token = tokens::new_device_token();
    let change = Change::AddDevice {
        name: name.to_owned(),
        serial: serial.map(str::to_owned),
        token_sha256: tokens::token_digest(&token),
        status: DeviceStatus::Approved,
    };
    (change, token)
}

/// Makes `change` directly on the store of a server that is not running
/// (the command line's offline path); a running server goes through
/// [`crate::core::Core::change_config`].
pub fn change_offline(
    store: &Store,
    role: &RoleSnapshot,
    instance: &str,
    change: &Change,
) -> Result<Option<Device>, AdminError> {
    let write = role.config_write(instance)?;
    changes::check(store, change)?;
    Ok(changes::execute(store, change, write)?)
}

/// Pre-provisions an approved device and returns its token.
pub fn add_device(
    store: &Store,
    role: &RoleSnapshot,
    instance: &str,
    name: &str,
    serial: Option<&str>,
) -> Result<ProvisionedDevice, AdminError> {
    let (change, token) = add_device_change(name, serial);
    let device = change_offline(store, role, instance, &change)?
        .ok_or_else(|| AdminError::Refused("the device was not registered".into()))?;
    Ok(ProvisionedDevice { device, token })
}

/// Finds a device by id or name.
pub fn find_device(store: &Store, id_or_name: &str) -> Result<Device, AdminError> {
    Ok(changes::find_device(store, id_or_name)?)
}

/// Approves or revokes a device.
pub fn set_device_status(
    store: &Store,
    role: &RoleSnapshot,
    instance: &str,
    id_or_name: &str,
    status: DeviceStatus,
) -> Result<Device, AdminError> {
    let change = Change::SetDeviceStatus {
        device: id_or_name.to_owned(),
        status,
    };
    change_offline(store, role, instance, &change)?
        .ok_or_else(|| AdminError::NotFound(format!("no device `{id_or_name}`")))
}

/// Sends a dead-lettered job back to the pipeline.
pub fn retry_job(store: &Store, id: &str) -> Result<JobRecord, AdminError> {
    let id = Uuid::parse_str(id)
        .map_err(|_| AdminError::Invalid(format!("`{id}` is not a job id (a UUID)")))?;
    let job = store
        .job(id)?
        .ok_or_else(|| AdminError::NotFound(format!("no job {id} on this server")))?;
    if job.state != JobState::Failed {
        return Err(AdminError::Refused(format!(
            "job {id} is {}, not failed; only failed (dead-letter) jobs are retried",
            job.state.as_str()
        )));
    }
    store.retry_failed_job(id)?;
    store
        .job(id)?
        .ok_or_else(|| AdminError::NotFound(format!("job {id} vanished")))
}

/// The result of `gateway db check`.
#[derive(Debug, Serialize)]
pub struct DbReport {
    pub schema_version: u32,
    pub problems: Vec<String>,
    pub jobs_checked: u64,
}

/// SQLite's integrity checks plus the promise the intake makes: every job
/// that is not finished has its spool directory with every page file of the
/// recorded size.
pub fn db_check(store: &Store, spool: Option<&JobSpool>) -> Result<DbReport, AdminError> {
    let mut problems = store.integrity_problems()?;
    let mut checked = 0;
    if let Some(spool) = spool {
        for state in [JobState::Received, JobState::Processing, JobState::Failed] {
            for job in store.jobs_in_state(state, u32::MAX)? {
                checked += 1;
                let dir = spool.job_dir(job.id);
                for page in store.job_pages(job.id)? {
                    let path = dir.join(&page.file_name);
                    match std::fs::metadata(&path) {
                        Ok(m) if m.len() == page.bytes => {}
                        Ok(m) => problems.push(format!(
                            "job {}: {} has {} bytes, {} were recorded",
                            job.id,
                            path.display(),
                            m.len(),
                            page.bytes
                        )),
                        Err(e) => problems.push(format!("job {}: {}: {e}", job.id, path.display())),
                    }
                }
            }
        }
    }
    Ok(DbReport {
        schema_version: store.schema_version()?,
        problems,
        jobs_checked: checked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::ServerRole;

    fn role(role: ServerRole) -> RoleSnapshot {
        let epoch = pair_core::Epoch::new(1, pair_core::ServerId::from_u128(1));
        RoleSnapshot {
            role,
            epoch,
            seen_epoch: epoch,
            fenced_by: None,
            license: None,
            license_problem: None,
        }
    }

    #[test]
    fn secondary_refuses_device_changes_with_the_rule_and_the_way_out() {
        let store = Store::open_in_memory().unwrap();
        let err =
            add_device(&store, &role(ServerRole::Secondary), "gw-b", "mfd-1", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("secondary cannot change configuration"),
            "{err}"
        );
        assert!(err.to_string().contains("gateway license promote"), "{err}");
        assert_eq!(err.code(), "read_only_secondary");
        let mut fenced = role(ServerRole::Fenced);
        fenced.fenced_by = Some(pair_core::Epoch::new(2, pair_core::ServerId::from_u128(2)));
        let err = add_device(&store, &fenced, "gw-a", "mfd-1", None).unwrap_err();
        assert_eq!(err.code(), "fenced");
        assert!(err.to_string().contains("epoch 2"), "{err}");
        let added = add_device(&store, &role(ServerRole::Primary), "gw-a", "mfd-1", None).unwrap();
        assert!(tokens::looks_like_device_token(&added.token));
        assert_eq!(added.device.status, DeviceStatus::Approved);
        let dup =
            add_device(&store, &role(ServerRole::Primary), "gw-a", "mfd-1", None).unwrap_err();
        assert!(dup.to_string().contains("already registered"));
        let revoked = set_device_status(
            &store,
            &role(ServerRole::Primary),
            "gw-a",
            "mfd-1",
            DeviceStatus::Revoked,
        )
        .unwrap();
        assert_eq!(revoked.status, DeviceStatus::Revoked);
        assert!(matches!(
            find_device(&store, "nope"),
            Err(AdminError::NotFound(_))
        ));
        assert!(matches!(
            add_device(
                &store,
                &role(ServerRole::Primary),
                "gw-a",
                "bad name!",
                None
            ),
            Err(AdminError::Invalid(_))
        ));
    }

    #[test]
    fn only_failed_jobs_are_retried() {
        let store = Store::open_in_memory().unwrap();
        assert!(matches!(
            retry_job(&store, "x"),
            Err(AdminError::Invalid(_))
        ));
        assert!(matches!(
            retry_job(&store, &Uuid::new_v4().to_string()),
            Err(AdminError::NotFound(_))
        ));
        let id = Uuid::new_v4();
        store
            .insert_job(&crate::store::NewJob {
                id,
                device_id: Uuid::new_v4(),
                user: "ann".into(),
                workflow: "w".into(),
                manifest: "{}".into(),
                manifest_sha256: "00".into(),
                bytes: 1,
                accepted_by: "gw-a".into(),
                accepted_role: "primary".into(),
                accepted_epoch: 1,
                client_addr: None,
                received_at: chrono::Utc::now(),
                acceptor: pair_core::ServerId::from_u128(1),
                pages: vec![crate::store::NewPage {
                    seq: 1,
                    file_name: "page-0001.png".into(),
                    format: "png".into(),
                    bytes: 1,
                    sha256: "ab".into(),
                }],
            })
            .unwrap();
        // A job that is not failed is refused and stays as it was.
        let err = retry_job(&store, &id.to_string()).unwrap_err();
        assert!(matches!(err, AdminError::Refused(_)), "{err}");
        assert!(err.to_string().contains("is received, not failed"), "{err}");
        assert_eq!(store.job(id).unwrap().unwrap().state, JobState::Received);
        // A failed one goes back to the queue without its reason.
        store
            .set_job_state(id, JobState::Failed, Some("webhook down"))
            .unwrap();
        let retried = retry_job(&store, &id.to_string()).unwrap();
        assert_eq!((retried.state, retried.reason), (JobState::Received, None));
    }
}
