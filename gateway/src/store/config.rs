//! Configuration as the pair shares it: named JSON documents (workflows,
//! users, limits, the session key) and the device registry, and the newest
//! epoch this server has seen. Every change raises the config-set version by
//! one and stamps the changed rows with that version and the writer's epoch,
//! which is what the pair link replicates.
//!
//! Whether this server may write at all is decided by the role module (a
//! write needs its [`ConfigWrite`] permission). What is enforced here, in the
//! same transaction as the write, is the epoch rule: a write or a replicated
//! change stamped with an epoch older than the newest one this store has
//! seen is refused with [`StoreError::Fenced`], and the stored epoch never
//! moves backwards. A newer epoch is taken and remembered.

use chrono::{DateTime, Utc};
use pair_core::Epoch;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreError, now_text, parse_time};
use crate::role::{ConfigWrite, WriteKind};
use crate::security::sha256_hex;

/// Where the newest epoch this server has seen is kept (local state).
const SEEN_EPOCH_KEY: &str = "epoch.seen";

/// The version and epoch of the configuration set as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigMeta {
    pub version: u64,
    pub epoch: Epoch,
}

/// One configuration document.
#[derive(Debug, Clone)]
pub struct ConfigDoc {
    pub name: String,
    pub body: String,
    pub sha256: String,
    pub version: u64,
    pub epoch: Epoch,
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
    /// The status from its stored spelling.
    pub fn parse(text: &str) -> Option<DeviceStatus> {
        match text {
            "pending" => Some(DeviceStatus::Pending),
            "approved" => Some(DeviceStatus::Approved),
            "revoked" => Some(DeviceStatus::Revoked),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Approved => "approved",
            DeviceStatus::Revoked => "revoked",
        }
    }
}

/// A device as a configuration change declares it (by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUpsert {
    pub id: Uuid,
    pub name: String,
    pub serial: Option<String>,
    pub token_sha256: String,
    pub status: DeviceStatus,
    /// RFC 3339, as the store writes times.
    pub created_at: String,
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

pub(super) fn epoch_from(number: i64, server: &str) -> Result<Epoch, StoreError> {
    Ok(Epoch::new(
        number as u64,
        server
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("epoch server id: {e}")))?,
    ))
}

/// The newest epoch recorded in the store: the one the last configuration
/// change carried, or a newer one the server has seen since.
pub(super) fn newest_epoch(conn: &Connection) -> Result<Epoch, StoreError> {
    let (number, server): (i64, String) = conn.query_row(
        "SELECT epoch, epoch_server FROM config_meta WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(epoch_from(number, &server)?.max(seen_epoch(conn)?))
}

fn seen_epoch(conn: &Connection) -> Result<Epoch, StoreError> {
    let text: Option<String> = conn
        .query_row(
            "SELECT value FROM local_state WHERE key = ?1",
            [SEEN_EPOCH_KEY],
            |r| r.get(0),
        )
        .optional()?;
    match text {
        None => Ok(Epoch::ZERO),
        // A damaged value must never read as "no epoch": that would let an
        // old primary's changes in again.
        Some(t) => t
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("the stored newest epoch `{t}`: {e}"))),
    }
}

pub(super) fn raise_seen(conn: &Connection, epoch: Epoch) -> Result<Epoch, StoreError> {
    let seen = seen_epoch(conn)?;
    if epoch > seen {
        conn.execute(
            "INSERT INTO local_state (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![SEEN_EPOCH_KEY, epoch.to_string()],
        )?;
        return Ok(epoch);
    }
    Ok(seen)
}

/// Checks the write's epoch against the newest one stored and raises the
/// set version inside `tx`. Returns the (version, epoch) the changed rows
/// are stamped with.
fn bump(tx: &Transaction<'_>, write: ConfigWrite<'_>) -> Result<(u64, Epoch), StoreError> {
    let current: i64 = tx.query_row("SELECT version FROM config_meta WHERE id = 1", [], |r| {
        r.get(0)
    })?;
    let (version, epoch, by) = match write.kind() {
        WriteKind::Bootstrap => return Ok((0, Epoch::ZERO)),
        WriteKind::Primary { epoch, by } => (current as u64 + 1, epoch, by.to_owned()),
        WriteKind::Stamped { epoch, version, by } => {
            if version != current as u64 + 1 {
                return Err(StoreError::OutOfLine {
                    offered: version,
                    stored: current as u64,
                });
            }
            (version, epoch, by.to_owned())
        }
        WriteKind::Replicated { epoch, version } => {
            if version <= current as u64 {
                return Err(StoreError::StaleVersion {
                    offered: version,
                    stored: current as u64,
                });
            }
            (
                version,
                epoch,
                format!("replicated from epoch {}", epoch.short()),
            )
        }
    };
    let newest = newest_epoch(tx)?;
    if epoch < newest {
        return Err(StoreError::Fenced {
            offered: epoch,
            newest,
        });
    }
    raise_seen(tx, epoch)?;
    if !matches!(write.kind(), WriteKind::Replicated { .. }) {
        end_line_before(tx, epoch)?;
    }
    tx.execute(
        "UPDATE config_meta SET version = ?1, epoch = ?2, epoch_server = ?3, updated_at = ?4, updated_by = ?5
         WHERE id = 1",
        params![
            version as i64,
            epoch.number as i64,
            epoch.server.to_string(),
            now_text(),
            by
        ],
    )?;
    Ok((version, epoch))
}

/// A primary's first write under a new epoch ends the line of the epoch
/// before it at the version held until then (see migration 0005).
fn end_line_before(tx: &Transaction<'_>, epoch: Epoch) -> Result<(), StoreError> {
    let held = held_meta(tx)?;
    if held.version > 0 && held.epoch != epoch {
        tx.execute(
            "INSERT INTO config_lineage (epoch, epoch_server, last_version) VALUES (?1, ?2, ?3)
             ON CONFLICT (epoch, epoch_server) DO UPDATE SET last_version = excluded.last_version",
            params![
                held.epoch.number as i64,
                held.epoch.server.to_string(),
                held.version as i64
            ],
        )?;
    }
    Ok(())
}

/// The version and epoch of the configuration held (in `conn`'s
/// transaction, when it has one).
pub(super) fn held_meta(conn: &Connection) -> Result<ConfigMeta, StoreError> {
    let (version, number, server): (i64, i64, String) = conn.query_row(
        "SELECT version, epoch, epoch_server FROM config_meta WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(ConfigMeta {
        version: version as u64,
        epoch: epoch_from(number, &server)?,
    })
}

impl Store {
    /// The configuration set's version and epoch.
    pub fn config_meta(&self) -> Result<ConfigMeta, StoreError> {
        held_meta(&self.conn())
    }

    /// The newest epoch this server has seen: its own, a peer's, or the one
    /// its configuration carries, whichever is newest.
    pub fn newest_epoch(&self) -> Result<Epoch, StoreError> {
        newest_epoch(&self.conn())
    }

    /// Records that an epoch exists (the pair link tells of a peer's). The
    /// stored value only ever moves forward; returns the newest epoch known
    /// afterwards.
    pub fn note_epoch(&self, epoch: Epoch) -> Result<Epoch, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        raise_seen(&tx, epoch)?;
        let newest = newest_epoch(&tx)?;
        tx.commit()?;
        Ok(newest)
    }

    /// One configuration document.
    pub fn config_doc(&self, name: &str) -> Result<Option<ConfigDoc>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT name, body, sha256, version, epoch, epoch_server FROM config_docs WHERE name = ?1",
                [name],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(name, body, sha256, version, number, server)| {
            Ok(ConfigDoc {
                name,
                body,
                sha256,
                version: version as u64,
                epoch: epoch_from(number, &server)?,
            })
        })
        .transpose()
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
        self.write_config(docs, &[], write)
    }

    /// Writes documents and device rows that differ from what is stored,
    /// all under one new version in one transaction (see
    /// [`Store::put_config_docs`]). A device is matched by id: a new id is
    /// inserted, a known one takes the serial, token digest and status
    /// given; approval order is kept, and a device approved for the first
    /// time goes to the end of it.
    pub fn write_config(
        &self,
        docs: &[(&str, String)],
        devices: &[DeviceUpsert],
        write: ConfigWrite<'_>,
    ) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let current: i64 =
            tx.query_row("SELECT version FROM config_meta WHERE id = 1", [], |r| {
                r.get(0)
            })?;
        if matches!(write.kind(), WriteKind::Bootstrap) && current > 0 {
            return Ok(None);
        }
        let mut changed = Vec::new();
        for (name, body) in docs {
            let sum = sha256_hex(body.as_bytes());
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
        if changed.is_empty() && devices.is_empty() {
            return Ok(None);
        }
        let (version, epoch) = bump(&tx, write)?;
        for d in devices {
            tx.execute(
                "INSERT INTO devices (id, name, serial, token_sha256, status, created_at, approved_at, approval_seq,
                                      version, epoch, epoch_server)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6,
                         CASE WHEN ?5 = 'approved' THEN ?7 END,
                         CASE WHEN ?5 = 'approved' THEN (SELECT coalesce(max(approval_seq), 0) + 1 FROM devices) END,
                         ?8, ?9, ?10)
                 ON CONFLICT (id) DO UPDATE SET serial = excluded.serial,
                     token_sha256 = excluded.token_sha256, status = excluded.status,
                     approved_at = CASE WHEN excluded.status = 'approved' THEN coalesce(devices.approved_at, ?7)
                                        ELSE devices.approved_at END,
                     approval_seq = CASE WHEN excluded.status = 'approved'
                         THEN coalesce(devices.approval_seq, (SELECT coalesce(max(approval_seq), 0) + 1 FROM devices))
                         ELSE devices.approval_seq END,
                     version = excluded.version, epoch = excluded.epoch, epoch_server = excluded.epoch_server",
                params![
                    d.id.to_string(),
                    d.name,
                    d.serial,
                    d.token_sha256,
                    d.status.as_str(),
                    d.created_at,
                    now_text(),
                    version as i64,
                    epoch.number as i64,
                    epoch.server.to_string()
                ],
            )?;
        }
        for (name, body, sum) in changed {
            tx.execute(
                "INSERT INTO config_docs (name, body, sha256, version, epoch, epoch_server, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name) DO UPDATE SET body = excluded.body, sha256 = excluded.sha256,
                     version = excluded.version, epoch = excluded.epoch,
                     epoch_server = excluded.epoch_server, updated_at = excluded.updated_at",
                params![
                    name,
                    body,
                    sum,
                    version as i64,
                    epoch.number as i64,
                    epoch.server.to_string(),
                    now_text()
                ],
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
            "INSERT INTO devices (id, name, serial, token_sha256, status, created_at, approved_at, approval_seq,
                                  version, epoch, epoch_server)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
                     CASE WHEN ?5 = 'approved' THEN (SELECT coalesce(max(approval_seq), 0) + 1 FROM devices) END,
                     ?8, ?9, ?10)",
            params![
                id.to_string(),
                name,
                serial,
                token_sha256,
                status.as_str(),
                now,
                approved,
                version as i64,
                epoch.number as i64,
                epoch.server.to_string()
            ],
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
        self.reader()
            .prepare_cached(&sql)?
            .query_row([token_sha256], device_from_row)
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

    /// Every device's token digest, by device id (the configuration export
    /// and replication carry digests, never tokens).
    pub fn device_token_digests(
        &self,
    ) -> Result<std::collections::BTreeMap<Uuid, String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, token_sha256 FROM devices")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = std::collections::BTreeMap::new();
        for row in rows {
            let (id, digest) = row?;
            let id = Uuid::parse_str(&id)
                .map_err(|e| StoreError::Corrupt(format!("device id `{id}`: {e}")))?;
            out.insert(id, digest);
        }
        Ok(out)
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
            "UPDATE devices SET status = ?2, version = ?3, epoch = ?4, epoch_server = ?6,
                 approved_at = CASE WHEN ?2 = 'approved' THEN coalesce(approved_at, ?5) ELSE approved_at END,
                 approval_seq = CASE WHEN ?2 = 'approved'
                     THEN coalesce(approval_seq, (SELECT coalesce(max(approval_seq), 0) + 1 FROM devices))
                     ELSE approval_seq END
             WHERE id = ?1",
            params![
                id.to_string(),
                status.as_str(),
                version as i64,
                epoch.number as i64,
                now_text(),
                epoch.server.to_string()
            ],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// The device's place (1-based) among approved devices in order of
    /// approval: license seats go to the devices approved first.
    pub fn seat_rank(&self, id: Uuid) -> Result<Option<u64>, StoreError> {
        Ok(self
            .reader()
            .prepare_cached(
                "SELECT rank FROM (SELECT id, row_number() OVER (ORDER BY approval_seq) AS rank
                                   FROM devices WHERE status = 'approved') WHERE id = ?1",
            )?
            .query_row([id.to_string()], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|r| r as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::RoleSnapshot;
    use pair_core::ServerId;

    const A: ServerId = ServerId::from_u128(0xa);
    const B: ServerId = ServerId::from_u128(0xb);
    const E1: Epoch = Epoch::new(1, A);
    const PRIMARY: ConfigWrite<'static> = primary(E1);

    const fn primary(epoch: Epoch) -> ConfigWrite<'static> {
        ConfigWrite::for_tests(epoch, "gw-a")
    }

    fn seed() -> ConfigWrite<'static> {
        RoleSnapshot::unlicensed(None).seed_write("gw-b")
    }

    fn replicated(epoch: Epoch, version: u64) -> ConfigWrite<'static> {
        RoleSnapshot::unlicensed(None)
            .replicated_write(epoch, version)
            .unwrap()
    }

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
                epoch: E1
            }
        );
    }

    #[test]
    fn bootstrap_never_overrides_a_real_version() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(
            store
                .put_config_docs(&[("users", "{}".into())], seed())
                .unwrap(),
            Some(0)
        );
        assert_eq!(store.config_meta().unwrap().version, 0);
        store
            .put_config_docs(&[("users", "{\"x\":1}".into())], PRIMARY)
            .unwrap();
        assert_eq!(
            store
                .put_config_docs(&[("users", "{}".into())], seed())
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

    /// Regression: `bump()` used to set the epoch unconditionally, so a
    /// write stamped with an older epoch was accepted and lowered the
    /// stored epoch.
    #[test]
    fn stale_epoch_write_is_refused_and_the_stored_epoch_does_not_move() {
        let store = Store::open_in_memory().unwrap();
        let e3 = Epoch::new(3, A);
        store
            .put_config_docs(&[("users", "{}".into())], primary(e3))
            .unwrap();
        for stale in [Epoch::new(2, B), Epoch::new(3, ServerId::NONE)] {
            let err = store
                .put_config_docs(&[("users", "{\"x\":1}".into())], primary(stale))
                .unwrap_err();
            assert!(
                matches!(err, StoreError::Fenced { offered, newest } if offered == stale && newest == e3),
                "{err}"
            );
            assert!(err.to_string().contains("epoch 3"), "{err}");
            let err = store
                .insert_device("d", None, "hd", DeviceStatus::Approved, primary(stale))
                .unwrap_err();
            assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
            let err = store
                .put_config_docs(&[("users", "{\"y\":1}".into())], replicated(stale, 9))
                .unwrap_err();
            assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
        }
        assert_eq!(
            store.config_meta().unwrap(),
            ConfigMeta {
                version: 1,
                epoch: e3
            }
        );
        assert_eq!(store.config_doc("users").unwrap().unwrap().body, "{}");
        assert!(store.device_by_name("d").unwrap().is_none());

        // The current epoch goes through; a newer one is taken.
        store
            .put_config_docs(&[("users", "{\"z\":1}".into())], primary(e3))
            .unwrap();
        let e4 = Epoch::new(4, B);
        store
            .put_config_docs(&[("users", "{\"w\":1}".into())], replicated(e4, 3))
            .unwrap();
        assert_eq!(
            store.config_meta().unwrap(),
            ConfigMeta {
                version: 3,
                epoch: e4
            }
        );
        assert_eq!(store.config_doc("users").unwrap().unwrap().epoch, e4);
        assert!(matches!(
            store.put_config_docs(&[("users", "{}".into())], primary(e3)),
            Err(StoreError::Fenced { .. })
        ));
    }

    #[test]
    fn a_seen_epoch_fences_older_writes_before_any_change_carries_it() {
        let store = Store::open_in_memory().unwrap();
        store
            .put_config_docs(&[("users", "{}".into())], PRIMARY)
            .unwrap();
        let newer = Epoch::new(1, B);
        assert_eq!(store.note_epoch(newer).unwrap(), newer);
        assert_eq!(
            store.note_epoch(E1).unwrap(),
            newer,
            "the newest epoch never moves back"
        );
        assert!(matches!(
            store.put_config_docs(&[("users", "{\"a\":1}".into())], PRIMARY),
            Err(StoreError::Fenced { .. })
        ));
        assert_eq!(store.newest_epoch().unwrap(), newer);
    }

    #[test]
    fn replicated_changes_keep_the_primary_stamp_and_refuse_old_versions() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(
            store
                .put_config_docs(&[("users", "{}".into())], replicated(E1, 5))
                .unwrap(),
            Some(5)
        );
        assert_eq!(store.config_doc("users").unwrap().unwrap().version, 5);
        let err = store
            .put_config_docs(&[("limits", "{}".into())], replicated(E1, 5))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::StaleVersion {
                    offered: 5,
                    stored: 5
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_stored_epoch_is_an_error_not_zero() {
        let store = Store::open_in_memory().unwrap();
        store.local_set(SEEN_EPOCH_KEY, Some("garbage")).unwrap();
        assert!(matches!(store.newest_epoch(), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            store.put_config_docs(&[("users", "{}".into())], PRIMARY),
            Err(StoreError::Corrupt(_))
        ));
    }
}
