//! Configuration as the pair shares it: named JSON documents (workflows,
//! users, limits, the session key) and the device registry. Every change
//! raises the config-set version by one and stamps the changed rows with that
//! version and the writer's epoch, which is what the pair link will replicate.
//! Whether this server may write at all is decided by the role module, not
//! here.

use chrono::{DateTime, Utc};
use ring::digest;
use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreError, hex, now_text, parse_time};

/// The version and epoch of the configuration set as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConfigMeta {
    pub version: u64,
    pub epoch: u64,
}

/// One configuration document.
#[derive(Debug, Clone)]
pub struct ConfigDoc {
    pub name: String,
    pub body: String,
    pub sha256: String,
    pub version: u64,
    pub epoch: u64,
}

/// A registered device's approval state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Pending,
    Approved,
    Revoked,
}

impl DeviceStatus {
    fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Approved => "approved",
            DeviceStatus::Revoked => "revoked",
        }
    }
}

/// A registered device.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: Uuid,
    pub name: String,
    pub serial: Option<String>,
    pub status: DeviceStatus,
    pub created_at: DateTime<Utc>,
    pub approved_at: Option<DateTime<Utc>>,
}

/// How a configuration write is stamped.
#[derive(Debug, Clone, Copy)]
pub enum ConfigWrite<'a> {
    /// A write by the primary of `epoch`: raises the version.
    Primary { epoch: u64, by: &'a str },
    /// A server that is not (yet) primary seeds its empty configuration from
    /// its file so it can work alone; stamped version 0 so that anything the
    /// primary sends supersedes it.
    Bootstrap,
}

fn sha256_hex(body: &str) -> String {
    hex(digest::digest(&digest::SHA256, body.as_bytes()).as_ref())
}

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Device, StoreError>> {
    let id: String = row.get(0)?;
    let status: String = row.get(3)?;
    let created: String = row.get(4)?;
    let approved: Option<String> = row.get(5)?;
    let name: String = row.get(1)?;
    let serial: Option<String> = row.get(2)?;
    Ok((|| {
        Ok(Device {
            id: Uuid::parse_str(&id)
                .map_err(|e| StoreError::Corrupt(format!("device id `{id}`: {e}")))?,
            name,
            serial,
            status: match status.as_str() {
                "pending" => DeviceStatus::Pending,
                "approved" => DeviceStatus::Approved,
                "revoked" => DeviceStatus::Revoked,
                other => return Err(StoreError::Corrupt(format!("device status `{other}`"))),
            },
            created_at: parse_time(&created)?,
            approved_at: approved.as_deref().map(parse_time).transpose()?,
        })
    })())
}

const DEVICE_COLUMNS: &str = "id, name, serial, status, created_at, approved_at";

/// Raises the set version inside `tx` and returns the new version.
fn bump(tx: &Transaction<'_>, write: ConfigWrite<'_>) -> Result<(u64, u64), StoreError> {
    match write {
        ConfigWrite::Primary { epoch, by } => {
            let version: i64 = tx.query_row(
                "UPDATE config_meta SET version = version + 1, epoch = ?1, updated_at = ?2, updated_by = ?3
                 WHERE id = 1 RETURNING version",
                params![epoch as i64, now_text(), by],
                |r| r.get(0),
            )?;
            Ok((version as u64, epoch))
        }
        ConfigWrite::Bootstrap => Ok((0, 0)),
    }
}

impl Store {
    /// The configuration set's version and epoch.
    pub fn config_meta(&self) -> Result<ConfigMeta, StoreError> {
        Ok(self.conn().query_row(
            "SELECT version, epoch FROM config_meta WHERE id = 1",
            [],
            |r| {
                Ok(ConfigMeta {
                    version: r.get::<_, i64>(0)? as u64,
                    epoch: r.get::<_, i64>(1)? as u64,
                })
            },
        )?)
    }

    /// One configuration document.
    pub fn config_doc(&self, name: &str) -> Result<Option<ConfigDoc>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, body, sha256, version, epoch FROM config_docs WHERE name = ?1",
                [name],
                |r| {
                    Ok(ConfigDoc {
                        name: r.get(0)?,
                        body: r.get(1)?,
                        sha256: r.get(2)?,
                        version: r.get::<_, i64>(3)? as u64,
                        epoch: r.get::<_, i64>(4)? as u64,
                    })
                },
            )
            .optional()?)
    }

    /// Writes the documents that differ from what is stored, all under one new
    /// version. Returns the new version, or `None` when nothing changed (so a
    /// restart with the same file does not churn versions). A bootstrap write
    /// is refused once the set has a real version: a secondary never lets its
    /// file override what the primary sent.
    pub fn put_config_docs(
        &self,
        docs: &[(&str, String)],
        write: ConfigWrite<'_>,
    ) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let current: i64 =
            tx.query_row("SELECT version FROM config_meta WHERE id = 1", [], |r| {
                r.get(0)
            })?;
        if matches!(write, ConfigWrite::Bootstrap) && current > 0 {
            return Ok(None);
        }
        let mut changed = Vec::new();
        for (name, body) in docs {
            let sum = sha256_hex(body);
            let stored: Option<String> = tx
                .query_row(
                    "SELECT sha256 FROM config_docs WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()?;
            if stored.as_deref() != Some(sum.as_str()) {
                changed.push((*name, body, sum));
            }
        }
        if changed.is_empty() {
            return Ok(None);
        }
        let (version, epoch) = bump(&tx, write)?;
        for (name, body, sum) in changed {
            tx.execute(
                "INSERT INTO config_docs (name, body, sha256, version, epoch, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (name) DO UPDATE SET body = excluded.body, sha256 = excluded.sha256,
                     version = excluded.version, epoch = excluded.epoch, updated_at = excluded.updated_at",
                params![name, body, sum, version as i64, epoch as i64, now_text()],
            )?;
        }
        tx.commit()?;
        Ok(Some(version))
    }

    // ----- devices ----------------------------------------------------------------

    /// Registers a device. Fails with a constraint error when the name or
    /// token is taken (the caller turns that into a clear message).
    pub fn insert_device(
        &self,
        name: &str,
        serial: Option<&str>,
        token_sha256: &str,
        status: DeviceStatus,
        write: ConfigWrite<'_>,
    ) -> Result<Device, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let (version, epoch) = bump(&tx, write)?;
        let id = Uuid::new_v4();
        let now = now_text();
        let approved = (status == DeviceStatus::Approved).then(|| now.clone());
        tx.execute(
            "INSERT INTO devices (id, name, serial, token_sha256, status, created_at, approved_at, approval_seq, version, epoch)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
                     CASE WHEN ?5 = 'approved' THEN (SELECT coalesce(max(approval_seq), 0) + 1 FROM devices) END,
                     ?8, ?9)",
            params![id.to_string(), name, serial, token_sha256, status.as_str(), now, approved, version as i64, epoch as i64],
        )?;
        tx.commit()?;
        drop(conn);
        self.device(id)?
            .ok_or_else(|| StoreError::Corrupt("device vanished after insert".into()))
    }

    /// A device by id.
    pub fn device(&self, id: Uuid) -> Result<Option<Device>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1");
        self.conn()
            .query_row(&sql, [id.to_string()], device_from_row)
            .optional()?
            .transpose()
    }

    /// A device by name.
    pub fn device_by_name(&self, name: &str) -> Result<Option<Device>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE name = ?1");
        self.conn()
            .query_row(&sql, [name], device_from_row)
            .optional()?
            .transpose()
    }

    /// The device a token belongs to.
    pub fn device_by_token(&self, token_sha256: &str) -> Result<Option<Device>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE token_sha256 = ?1");
        self.conn()
            .query_row(&sql, [token_sha256], device_from_row)
            .optional()?
            .transpose()
    }

    /// Every device, oldest first.
    pub fn devices(&self) -> Result<Vec<Device>, StoreError> {
        let conn = self.conn();
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY created_at, id");
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([], device_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// Number of devices waiting for approval.
    pub fn pending_devices(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT count(*) FROM devices WHERE status = 'pending'",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Changes a device's status. Returns `false` for an unknown device.
    pub fn set_device_status(
        &self,
        id: Uuid,
        status: DeviceStatus,
        write: ConfigWrite<'_>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: bool = tx
            .query_row(
                "SELECT 1 FROM devices WHERE id = ?1",
                [id.to_string()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !exists {
            return Ok(false);
        }
        let (version, epoch) = bump(&tx, write)?;
        tx.execute(
            "UPDATE devices SET status = ?2, version = ?3, epoch = ?4,
                 approved_at = CASE WHEN ?2 = 'approved' THEN coalesce(approved_at, ?5) ELSE approved_at END,
                 approval_seq = CASE WHEN ?2 = 'approved'
                     THEN coalesce(approval_seq, (SELECT coalesce(max(approval_seq), 0) + 1 FROM devices))
                     ELSE approval_seq END
             WHERE id = ?1",
            params![id.to_string(), status.as_str(), version as i64, epoch as i64, now_text()],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// The device's place (1-based) among approved devices in order of
    /// approval: license seats go to the devices approved first.
    pub fn seat_rank(&self, id: Uuid) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT rank FROM (SELECT id, row_number() OVER (ORDER BY approval_seq) AS rank
                                   FROM devices WHERE status = 'approved') WHERE id = ?1",
                [id.to_string()],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|r| r as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIMARY: ConfigWrite<'static> = ConfigWrite::Primary {
        epoch: 1,
        by: "gw-a",
    };

    #[test]
    fn unchanged_documents_do_not_raise_the_version() {
        let store = Store::open_in_memory().unwrap();
        let docs = [
            ("workflows", "{\"a\":1}".to_string()),
            ("users", "{}".to_string()),
        ];
        assert_eq!(store.put_config_docs(&docs, PRIMARY).unwrap(), Some(1));
        assert_eq!(store.put_config_docs(&docs, PRIMARY).unwrap(), None);
        let changed = [
            ("workflows", "{\"a\":2}".to_string()),
            ("users", "{}".to_string()),
        ];
        assert_eq!(store.put_config_docs(&changed, PRIMARY).unwrap(), Some(2));
        assert_eq!(
            store.config_doc("users").unwrap().unwrap().version,
            1,
            "untouched doc keeps its version"
        );
        assert_eq!(store.config_doc("workflows").unwrap().unwrap().version, 2);
        assert_eq!(
            store.config_meta().unwrap(),
            ConfigMeta {
                version: 2,
                epoch: 1
            }
        );
    }

    #[test]
    fn bootstrap_never_overrides_a_real_version() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(
            store
                .put_config_docs(&[("users", "{}".into())], ConfigWrite::Bootstrap)
                .unwrap(),
            Some(0)
        );
        assert_eq!(store.config_meta().unwrap().version, 0);
        store
            .put_config_docs(&[("users", "{\"x\":1}".into())], PRIMARY)
            .unwrap();
        assert_eq!(
            store
                .put_config_docs(&[("users", "{}".into())], ConfigWrite::Bootstrap)
                .unwrap(),
            None
        );
        assert_eq!(
            store.config_doc("users").unwrap().unwrap().body,
            "{\"x\":1}"
        );
    }

    #[test]
    fn seats_go_to_devices_in_approval_order() {
        let store = Store::open_in_memory().unwrap();
        let a = store
            .insert_device("a", None, "ha", DeviceStatus::Approved, PRIMARY)
            .unwrap();
        let b = store
            .insert_device("b", Some("S2"), "hb", DeviceStatus::Pending, PRIMARY)
            .unwrap();
        let c = store
            .insert_device("c", None, "hc", DeviceStatus::Approved, PRIMARY)
            .unwrap();
        assert_eq!(store.seat_rank(a.id).unwrap(), Some(1));
        assert_eq!(store.seat_rank(b.id).unwrap(), None);
        assert_eq!(store.seat_rank(c.id).unwrap(), Some(2));
        assert!(
            store
                .set_device_status(b.id, DeviceStatus::Approved, PRIMARY)
                .unwrap()
        );
        assert_eq!(store.seat_rank(b.id).unwrap(), Some(3));
        assert!(
            store
                .set_device_status(a.id, DeviceStatus::Revoked, PRIMARY)
                .unwrap()
        );
        assert_eq!(store.seat_rank(c.id).unwrap(), Some(1));
        assert!(
            !store
                .set_device_status(Uuid::new_v4(), DeviceStatus::Approved, PRIMARY)
                .unwrap()
        );
        assert_eq!(store.device_by_token("hb").unwrap().unwrap().name, "b");
        assert_eq!(store.config_meta().unwrap().version, 5);
    }

    #[test]
    fn duplicate_device_name_is_a_constraint_error() {
        let store = Store::open_in_memory().unwrap();
        store
            .insert_device("a", None, "h1", DeviceStatus::Approved, PRIMARY)
            .unwrap();
        let err = store
            .insert_device("a", None, "h2", DeviceStatus::Approved, PRIMARY)
            .unwrap_err();
        assert!(!err.is_environmental());
        assert_eq!(
            store.config_meta().unwrap().version,
            1,
            "failed write leaves the version alone"
        );
    }
}
