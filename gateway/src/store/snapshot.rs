//! The whole shared configuration as one value, as the pair replicates it:
//! every configuration document and device row with the (version, epoch)
//! stamp it was written under, the configuration's own stamp, and the
//! lineage (where each earlier primary's line ended, migration 0005).
//!
//! A change the primary pushes has the same shape with only the rows it
//! wrote and the stamp it was made on (`base`).
//!
//! Rules owned here:
//! * a snapshot or a change is read in one transaction and applied in one
//!   transaction: the receiver holds either all of it or none of it; a
//!   change is applied only on exactly its base;
//! * rows keep the stamps the primary gave them, so the lineage can tell,
//!   row by row, what belongs to the sender's line;
//! * before a snapshot replaces this server's configuration (or when a
//!   fenced server only compares it), every local row that the sender's
//!   line does not contain is kept in the conflict report
//!   (`store::conflicts`): a change made by a primary that was since
//!   replaced is never dropped silently;
//! * on the wire a snapshot carries the SHA-256 of its encoding, and one
//!   whose digest does not match is refused whole.

use pair_core::Epoch;
use rusqlite::{Transaction, params};
use serde::{Deserialize, Serialize};

use super::config::{epoch_from, held_meta, newest_epoch as newest_epoch_seen, raise_seen};
use super::conflicts::{Conflict, ConflictKind, conflict_id, insert_conflicts};
use super::{Store, StoreError};
use crate::role::{ConfigWrite, WriteKind};
use crate::security::sha256_hex;

/// The whole shared configuration at one stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSnapshot {
    pub version: u64,
    pub epoch: Epoch,
    pub docs: Vec<SnapshotDoc>,
    pub devices: Vec<SnapshotDevice>,
    pub lineage: Vec<LineEnd>,
    /// `None`: the whole configuration. `Some((version, epoch))`: one
    /// change, made on top of that stamp: only the rows it wrote (rows are
    /// never deleted by a change, only written), applied by a server that
    /// holds exactly that stamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<(u64, Epoch)>,
}

/// One configuration document with its stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDoc {
    pub name: String,
    pub body: String,
    pub version: u64,
    pub epoch: Epoch,
}

/// One device row, copied verbatim (token digest and approval order
/// included: seats go by approval order on both servers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDevice {
    pub id: String,
    pub name: String,
    pub serial: Option<String>,
    pub token_sha256: String,
    pub status: String,
    pub created_at: String,
    pub approved_at: Option<String>,
    pub approval_seq: Option<i64>,
    pub version: u64,
    pub epoch: Epoch,
}

/// Every change of `epoch` up to `last_version` is part of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineEnd {
    pub epoch: Epoch,
    pub last_version: u64,
}

/// Why received bytes are not a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("the configuration snapshot is damaged: its checksum does not match its content")]
    Checksum,
    #[error("the configuration snapshot cannot be read: {0}")]
    Format(String),
}

impl ConfigSnapshot {
    /// The wire form: the SHA-256 of the JSON encoding in hex, a newline,
    /// then the JSON.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_string(self).expect("snapshots serialise");
        let mut out = sha256_hex(json.as_bytes()).into_bytes();
        out.push(b'\n');
        out.extend_from_slice(json.as_bytes());
        out
    }

    /// Reads the wire form, refusing it whole when the checksum does not
    /// match.
    pub fn decode(bytes: &[u8]) -> Result<ConfigSnapshot, SnapshotError> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| SnapshotError::Format("not UTF-8".into()))?;
        let (sum, json) = text
            .split_once('\n')
            .ok_or_else(|| SnapshotError::Format("no checksum line".into()))?;
        if sha256_hex(json.as_bytes()) != sum {
            return Err(SnapshotError::Checksum);
        }
        serde_json::from_str(json).map_err(|e| SnapshotError::Format(e.to_string()))
    }

    /// Whether a change stamped (`version`, `epoch`) is part of this
    /// snapshot's line: the version-0 seed always is; a change of the
    /// snapshot's own epoch is when not newer than the snapshot; a change
    /// of an earlier epoch is when that epoch's line ended at or after it.
    pub fn contains(&self, version: u64, epoch: Epoch) -> bool {
        version == 0
            || (epoch == self.epoch && version <= self.version)
            || self
                .lineage
                .iter()
                .any(|l| l.epoch == epoch && version <= l.last_version)
    }
}

/// `VERSION@EPOCH/SERVER`, as conflicts and status show a stamp (the
/// server id shortened).
pub fn stamp_text(version: u64, epoch: Epoch) -> String {
    format!("{version}@{}/{}", epoch.number, epoch.server.short())
}

fn read_snapshot(tx: &Transaction<'_>) -> Result<ConfigSnapshot, StoreError> {
    read_rows(tx, false)
}

/// The configuration's stamp and lineage with its rows: all of them, or
/// (`only_latest`) the rows written under the configuration's own stamp.
fn read_rows(tx: &Transaction<'_>, only_latest: bool) -> Result<ConfigSnapshot, StoreError> {
    let held = held_meta(tx)?;
    // `?1 = 0` reads every row; otherwise only the rows of this stamp.
    let filter = (
        i64::from(only_latest),
        held.version as i64,
        held.epoch.number as i64,
        held.epoch.server.to_string(),
    );
    let where_latest = "WHERE ?1 = 0 OR (version = ?2 AND epoch = ?3 AND epoch_server = ?4)";
    let mut docs = Vec::new();
    {
        let mut stmt = tx.prepare(&format!(
            "SELECT name, body, version, epoch, epoch_server FROM config_docs {where_latest} ORDER BY name"
        ))?;
        let rows = stmt.query_map(params![filter.0, filter.1, filter.2, filter.3], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        for row in rows {
            let (name, body, version, number, server) = row?;
            docs.push(SnapshotDoc {
                name,
                body,
                version: version as u64,
                epoch: epoch_from(number, &server)?,
            });
        }
    }
    let mut devices = Vec::new();
    {
        let mut stmt = tx.prepare(&format!(
            "SELECT id, name, serial, token_sha256, status, created_at, approved_at, approval_seq,
                    version, epoch, epoch_server
             FROM devices {where_latest} ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![filter.0, filter.1, filter.2, filter.3], |r| {
            Ok((
                SnapshotDevice {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    serial: r.get(2)?,
                    token_sha256: r.get(3)?,
                    status: r.get(4)?,
                    created_at: r.get(5)?,
                    approved_at: r.get(6)?,
                    approval_seq: r.get(7)?,
                    version: r.get::<_, i64>(8)? as u64,
                    epoch: Epoch::ZERO,
                },
                r.get::<_, i64>(9)?,
                r.get::<_, String>(10)?,
            ))
        })?;
        for row in rows {
            let (mut device, number, server) = row?;
            device.epoch = epoch_from(number, &server)?;
            devices.push(device);
        }
    }
    let mut lineage = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT epoch, epoch_server, last_version FROM config_lineage ORDER BY epoch, epoch_server",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (number, server, last) = row?;
            lineage.push(LineEnd {
                epoch: epoch_from(number, &server)?,
                last_version: last as u64,
            });
        }
    }
    Ok(ConfigSnapshot {
        version: held.version,
        epoch: held.epoch,
        docs,
        devices,
        lineage,
        base: None,
    })
}

/// The sender's epoch from the permission to apply `rows`, which must be a
/// replicated write at exactly their version, from a primary at least as
/// new as the epoch they carry.
fn sender_of(rows: &ConfigSnapshot, write: ConfigWrite<'_>) -> Result<Epoch, StoreError> {
    let WriteKind::Replicated { epoch: by, version } = write.kind() else {
        return Err(StoreError::Corrupt(
            "configuration from the primary is applied only with a replicated-write permission"
                .into(),
        ));
    };
    if version != rows.version || rows.epoch > by {
        return Err(StoreError::Corrupt(format!(
            "the configuration is {} but the permission is for version {version} from epoch {}",
            stamp_text(rows.version, rows.epoch),
            by.short()
        )));
    }
    Ok(by)
}

/// The store's epoch rule for a sender: a primary older than the newest
/// epoch seen is refused; a newer one is remembered.
fn admit_sender(tx: &Transaction<'_>, by: Epoch) -> Result<(), StoreError> {
    let newest = newest_epoch_seen(tx)?;
    if by < newest {
        return Err(StoreError::Fenced {
            offered: by,
            newest,
        });
    }
    raise_seen(tx, by)?;
    Ok(())
}

fn upsert_rows(tx: &Transaction<'_>, rows: &ConfigSnapshot, at: &str) -> Result<(), StoreError> {
    for d in &rows.docs {
        tx.execute(
            "INSERT INTO config_docs (name, body, sha256, version, epoch, epoch_server, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (name) DO UPDATE SET body = excluded.body, sha256 = excluded.sha256,
                 version = excluded.version, epoch = excluded.epoch,
                 epoch_server = excluded.epoch_server, updated_at = excluded.updated_at",
            params![
                d.name,
                d.body,
                sha256_hex(d.body.as_bytes()),
                d.version as i64,
                d.epoch.number as i64,
                d.epoch.server.to_string(),
                at
            ],
        )?;
    }
    for d in &rows.devices {
        tx.execute(
            "INSERT INTO devices (id, name, serial, token_sha256, status, created_at, approved_at,
                                  approval_seq, version, epoch, epoch_server)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, serial = excluded.serial,
                 token_sha256 = excluded.token_sha256, status = excluded.status,
                 created_at = excluded.created_at, approved_at = excluded.approved_at,
                 approval_seq = excluded.approval_seq, version = excluded.version,
                 epoch = excluded.epoch, epoch_server = excluded.epoch_server",
            params![
                d.id,
                d.name,
                d.serial,
                d.token_sha256,
                d.status,
                d.created_at,
                d.approved_at,
                d.approval_seq,
                d.version as i64,
                d.epoch.number as i64,
                d.epoch.server.to_string()
            ],
        )?;
    }
    tx.execute("DELETE FROM config_lineage", [])?;
    for l in &rows.lineage {
        tx.execute(
            "INSERT INTO config_lineage (epoch, epoch_server, last_version) VALUES (?1, ?2, ?3)",
            params![
                l.epoch.number as i64,
                l.epoch.server.to_string(),
                l.last_version as i64
            ],
        )?;
    }
    tx.execute(
        "UPDATE config_meta SET version = ?1, epoch = ?2, epoch_server = ?3, updated_at = ?4,
             updated_by = ?5 WHERE id = 1",
        params![
            rows.version as i64,
            rows.epoch.number as i64,
            rows.epoch.server.to_string(),
            at,
            format!("replicated from epoch {}", rows.epoch.short())
        ],
    )?;
    Ok(())
}

/// The local rows `theirs` does not contain, as conflicts (not stored).
fn diverged(
    local: &ConfigSnapshot,
    theirs: &ConfigSnapshot,
    origin: &str,
    found_at: &str,
) -> Vec<Conflict> {
    let against = stamp_text(theirs.version, theirs.epoch);
    let conflict = |kind, name: &str, version, epoch, body: String| Conflict {
        id: conflict_id(kind, name, version, epoch),
        kind,
        name: name.to_owned(),
        version,
        epoch,
        body,
        origin: origin.to_owned(),
        against: against.clone(),
        found_at: found_at.to_owned(),
        applied_at: None,
        applied_as: None,
    };
    let mut out = Vec::new();
    for doc in &local.docs {
        let same = theirs
            .docs
            .iter()
            .any(|d| d.name == doc.name && d.body == doc.body);
        if !same && !theirs.contains(doc.version, doc.epoch) {
            out.push(conflict(
                ConflictKind::Document,
                &doc.name,
                doc.version,
                doc.epoch,
                doc.body.clone(),
            ));
        }
    }
    for device in &local.devices {
        let same = theirs.devices.iter().any(|d| {
            d.id == device.id && d.token_sha256 == device.token_sha256 && d.status == device.status
        });
        if !same && !theirs.contains(device.version, device.epoch) {
            out.push(conflict(
                ConflictKind::Device,
                &device.name,
                device.version,
                device.epoch,
                serde_json::to_string(device).expect("device rows serialise"),
            ));
        }
    }
    out
}

/// Marks open conflicts whose change `snapshot` holds (the same device id
/// and token digest, or the same document body) as resolved in it.
fn resolve_present(
    tx: &Transaction<'_>,
    snapshot: &ConfigSnapshot,
    at: &str,
) -> Result<(), StoreError> {
    let open: Vec<(String, String, String, String)> = {
        let mut stmt = tx.prepare(
            "SELECT id, kind, name, body FROM config_conflicts WHERE applied_at IS NULL",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let stamp = stamp_text(snapshot.version, snapshot.epoch);
    for (id, kind, name, body) in open {
        let present = match kind.as_str() {
            "document" => snapshot
                .docs
                .iter()
                .any(|d| d.name == name && d.body == body),
            _ => serde_json::from_str::<SnapshotDevice>(&body).is_ok_and(|row| {
                snapshot
                    .devices
                    .iter()
                    .any(|d| d.id == row.id && d.token_sha256 == row.token_sha256)
            }),
        };
        if present {
            tx.execute(
                "UPDATE config_conflicts SET applied_at = ?2, applied_as = ?3 WHERE id = ?1",
                params![id, at, stamp],
            )?;
        }
    }
    Ok(())
}

impl Store {
    /// The whole shared configuration, read in one transaction.
    pub fn config_snapshot(&self) -> Result<ConfigSnapshot, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        read_snapshot(&tx)
    }

    /// Replaces the whole shared configuration by `snapshot` in one
    /// transaction, after keeping in the conflict report every local row
    /// the snapshot's line does not contain. `write` must be the permission
    /// to apply what the primary of its epoch sent, at the snapshot's
    /// version. The epoch rule of the store applies to that sender: a
    /// primary older than the newest epoch seen is refused. The snapshot's
    /// own stamp may carry an older epoch (a primary that raised its epoch
    /// has not written under the new one yet). An open conflict whose
    /// change the snapshot now holds (re-applied on the primary) is marked
    /// resolved. Returns the conflicts found and how many are new.
    pub fn replace_config(
        &self,
        snapshot: &ConfigSnapshot,
        write: ConfigWrite<'_>,
        origin: &str,
        found_at: &str,
    ) -> Result<(Vec<Conflict>, usize), StoreError> {
        let by = sender_of(snapshot, write)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        admit_sender(&tx, by)?;
        let local = read_snapshot(&tx)?;
        let conflicts = diverged(&local, snapshot, origin, found_at);
        let added = insert_conflicts(&tx, &conflicts)?;
        resolve_present(&tx, snapshot, found_at)?;
        tx.execute("DELETE FROM config_docs", [])?;
        tx.execute("DELETE FROM devices", [])?;
        upsert_rows(&tx, snapshot, found_at)?;
        tx.commit()?;
        Ok((conflicts, added))
    }

    /// The change that made the current configuration out of `base`: the
    /// rows written under the current stamp, the lineage and the stamp
    /// (what the primary pushes; the whole configuration is sent only when
    /// a server asks for it).
    pub fn config_change(&self, base: (u64, Epoch)) -> Result<ConfigSnapshot, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut change = read_rows(&tx, true)?;
        change.base = Some(base);
        Ok(change)
    }

    /// Applies one change from the primary in one transaction: only on top
    /// of exactly its base stamp (otherwise [`StoreError::OutOfLine`]: the
    /// caller asks for the whole configuration), under the store's epoch
    /// rule for the sender, as [`Store::replace_config`].
    pub fn apply_config_change(
        &self,
        change: &ConfigSnapshot,
        write: ConfigWrite<'_>,
        at: &str,
    ) -> Result<(), StoreError> {
        let Some((base_version, base_epoch)) = change.base else {
            return Err(StoreError::Corrupt(
                "a whole configuration is not a change".into(),
            ));
        };
        let by = sender_of(change, write)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        admit_sender(&tx, by)?;
        let held = held_meta(&tx)?;
        if (held.version, held.epoch) != (base_version, base_epoch) {
            return Err(StoreError::OutOfLine {
                offered: change.version,
                stored: held.version,
            });
        }
        upsert_rows(&tx, change, at)?;
        tx.commit()?;
        Ok(())
    }

    /// A fenced server's comparison: records, without changing its own
    /// configuration, every local row `snapshot`'s line does not contain.
    /// Returns every conflict found (recorded before or now) and how many
    /// of them are new.
    pub fn compare_config(
        &self,
        snapshot: &ConfigSnapshot,
        origin: &str,
        found_at: &str,
    ) -> Result<(Vec<Conflict>, usize), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let local = read_snapshot(&tx)?;
        let conflicts = diverged(&local, snapshot, origin, found_at);
        let added = insert_conflicts(&tx, &conflicts)?;
        tx.commit()?;
        Ok((conflicts, added))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::RoleSnapshot;
    use crate::store::DeviceStatus;
    use crate::store::conflicts::ConflictKind;
    use pair_core::ServerId;

    const A: ServerId = ServerId::from_u128(0xa);
    const B: ServerId = ServerId::from_u128(0xb);

    fn primary(epoch: Epoch) -> ConfigWrite<'static> {
        ConfigWrite::for_tests(epoch, "test")
    }

    fn replicated(s: &ConfigSnapshot) -> ConfigWrite<'static> {
        RoleSnapshot::unlicensed(None)
            .replicated_write(s.epoch, s.version)
            .unwrap()
    }

    #[test]
    fn a_snapshot_round_trips_and_a_damaged_one_is_refused() {
        let store = Store::open_in_memory().unwrap();
        let e1 = Epoch::new(1, A);
        store
            .put_config_docs(&[("users", "{\"ann\":1}".into())], primary(e1))
            .unwrap();
        store
            .insert_device(
                "mfd-1",
                Some("S1"),
                "digest-1",
                DeviceStatus::Approved,
                primary(e1),
            )
            .unwrap();
        let snap = store.config_snapshot().unwrap();
        assert_eq!((snap.version, snap.epoch), (2, e1));
        let bytes = snap.encode();
        assert_eq!(ConfigSnapshot::decode(&bytes).unwrap(), snap);
        let mut damaged = bytes.clone();
        let last = damaged.len() - 2;
        damaged[last] ^= 1;
        assert_eq!(
            ConfigSnapshot::decode(&damaged),
            Err(SnapshotError::Checksum)
        );
        assert!(ConfigSnapshot::decode(b"no newline").is_err());

        // Applied on another store it gives the same rows and stamps.
        let other = Store::open_in_memory().unwrap();
        let (conflicts, _) = other
            .replace_config(&snap, replicated(&snap), "gw-b", "2026-01-01T00:00:00Z")
            .unwrap();
        assert!(conflicts.is_empty());
        assert_eq!(other.config_snapshot().unwrap(), snap);
        assert_eq!(
            other.device_by_token("digest-1").unwrap().unwrap().name,
            "mfd-1"
        );
        assert_eq!(
            other.seat_rank(other.devices().unwrap()[0].id).unwrap(),
            Some(1)
        );
    }

    /// The partition story: A is primary at epoch 1 and B holds its
    /// version 2; B is promoted (epoch 1 of B, newer) and writes; A, cut
    /// off, writes too. A's partition-time rows are conflicts, the rows B
    /// already had are not, and a row B changed later is not either.
    #[test]
    fn only_changes_outside_the_new_line_are_conflicts() {
        let a = Store::open_in_memory().unwrap();
        let b = Store::open_in_memory().unwrap();
        let ea = Epoch::new(1, A);
        a.put_config_docs(&[("users", "{\"ann\":1}".into())], primary(ea))
            .unwrap();
        a.put_config_docs(&[("limits", "{\"x\":1}".into())], primary(ea))
            .unwrap();
        let shared = a.config_snapshot().unwrap();
        b.replace_config(&shared, replicated(&shared), "gw-b", "t0")
            .unwrap();

        // Partition: A goes on at epoch 1, B is promoted to a newer epoch.
        a.insert_device(
            "mfd-a",
            None,
            "digest-a",
            DeviceStatus::Approved,
            primary(ea),
        )
        .unwrap();
        a.put_config_docs(&[("limits", "{\"x\":2}".into())], primary(ea))
            .unwrap();
        let eb = Epoch::new(2, B);
        b.put_config_docs(&[("users", "{\"bob\":1}".into())], primary(eb))
            .unwrap();
        let theirs = b.config_snapshot().unwrap();
        assert_eq!(
            theirs.lineage,
            vec![LineEnd {
                epoch: ea,
                last_version: 2
            }]
        );

        // A compares while fenced: its two partition-time changes.
        let (found, added) = a.compare_config(&theirs, "gw-a", "t1").unwrap();
        assert_eq!(added, 2);
        let mut names: Vec<_> = found.iter().map(|c| (c.kind, c.name.as_str())).collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                (ConflictKind::Document, "limits"),
                (ConflictKind::Device, "mfd-a")
            ]
        );
        // Comparing again records nothing twice.
        a.compare_config(&theirs, "gw-a", "t2").unwrap();
        assert_eq!(a.conflicts().unwrap().len(), 2);
        assert_eq!(
            a.config_meta().unwrap().version,
            4,
            "comparing changes nothing"
        );

        // Rejoining: the snapshot replaces A's configuration, the conflicts stay.
        let eb_seen = a.note_epoch(eb).unwrap();
        assert_eq!(eb_seen, eb);
        a.replace_config(&theirs, replicated(&theirs), "gw-a", "t3")
            .unwrap();
        assert_eq!(a.config_snapshot().unwrap(), theirs);
        assert!(a.device_by_name("mfd-a").unwrap().is_none());
        let kept = a.conflicts().unwrap();
        assert_eq!(kept.len(), 2);
        let device = kept
            .iter()
            .find(|c| c.kind == ConflictKind::Device)
            .unwrap();
        let row: SnapshotDevice = serde_json::from_str(&device.body).unwrap();
        assert_eq!(row.token_sha256, "digest-a", "the token digest is kept");
        assert_eq!(device.against, stamp_text(3, eb));

        // The peer keeps the same conflicts under the same ids.
        assert_eq!(b.record_conflicts(&kept).unwrap(), 2);
        assert_eq!(b.record_conflicts(&kept).unwrap(), 0);
        assert!(b.mark_conflict_applied(&device.id, "4@2", "t4").unwrap());
        let applied = b.conflicts().unwrap();
        assert!(
            applied
                .iter()
                .any(|c| c.applied_as.as_deref() == Some("4@2"))
        );

        // The primary re-applies the device; when A receives that
        // configuration, its own entry is resolved too, and nothing is new.
        let row: SnapshotDevice = serde_json::from_str(&device.body).unwrap();
        b.write_config(
            &[],
            &[crate::store::DeviceUpsert {
                id: uuid::Uuid::parse_str(&row.id).unwrap(),
                name: row.name.clone(),
                serial: None,
                token_sha256: row.token_sha256.clone(),
                status: DeviceStatus::Approved,
                created_at: row.created_at.clone(),
            }],
            primary(eb),
        )
        .unwrap();
        let latest = b.config_snapshot().unwrap();
        let (_, added) = a
            .replace_config(&latest, replicated(&latest), "gw-a", "t5")
            .unwrap();
        assert_eq!(added, 0);
        let on_a = a.conflicts().unwrap();
        let dev = on_a
            .iter()
            .find(|c| c.kind == ConflictKind::Device)
            .unwrap();
        assert_eq!(dev.applied_as, Some(stamp_text(latest.version, eb)));
        let doc = on_a
            .iter()
            .find(|c| c.kind == ConflictKind::Document)
            .unwrap();
        assert_eq!(doc.applied_as, None, "the limits change is still open");
    }

    /// A pushed change carries only the rows it wrote; applied on the
    /// configuration it was made on, it gives exactly the primary's; on any
    /// other it is refused, changing nothing.
    #[test]
    fn a_change_carries_its_rows_and_applies_only_on_its_base() {
        let primary_store = Store::open_in_memory().unwrap();
        let replica = Store::open_in_memory().unwrap();
        let e = Epoch::new(1, A);
        for i in 0..20 {
            primary_store
                .insert_device(
                    &format!("mfd-{i}"),
                    None,
                    &format!("d{i}"),
                    DeviceStatus::Approved,
                    primary(e),
                )
                .unwrap();
        }
        primary_store
            .put_config_docs(&[("users", "{\"ann\":1}".into())], primary(e))
            .unwrap();
        let full = primary_store.config_snapshot().unwrap();
        replica
            .replace_config(&full, replicated(&full), "gw-b", "t")
            .unwrap();
        let base = (full.version, full.epoch);
        primary_store
            .insert_device("mfd-new", None, "dnew", DeviceStatus::Pending, primary(e))
            .unwrap();
        let change = primary_store.config_change(base).unwrap();
        assert_eq!(change.devices.len(), 1, "only the row the change wrote");
        assert!(change.docs.is_empty());
        let decoded = ConfigSnapshot::decode(&change.encode()).unwrap();
        assert_eq!(decoded.base, Some(base));
        replica
            .apply_config_change(&decoded, replicated(&decoded), "t2")
            .unwrap();
        assert_eq!(
            replica.config_snapshot().unwrap(),
            primary_store.config_snapshot().unwrap()
        );

        // Not on its base: refused whole.
        let err = replica
            .apply_config_change(&decoded, replicated(&decoded), "t3")
            .unwrap_err();
        assert!(matches!(err, StoreError::OutOfLine { .. }), "{err}");
        let whole = primary_store.config_snapshot().unwrap();
        assert!(
            replica
                .apply_config_change(&whole, replicated(&whole), "t4")
                .is_err(),
            "a whole configuration is not a change"
        );
    }

    #[test]
    fn a_snapshot_from_an_older_epoch_is_refused_and_changes_nothing() {
        let store = Store::open_in_memory().unwrap();
        let old = Epoch::new(1, A);
        let new = Epoch::new(2, B);
        let donor = Store::open_in_memory().unwrap();
        donor
            .put_config_docs(&[("users", "{}".into())], primary(old))
            .unwrap();
        let stale = donor.config_snapshot().unwrap();
        store
            .put_config_docs(&[("users", "{\"b\":1}".into())], primary(new))
            .unwrap();
        let err = store
            .replace_config(&stale, replicated(&stale), "x", "t")
            .unwrap_err();
        assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
        assert_eq!(
            store.config_doc("users").unwrap().unwrap().body,
            "{\"b\":1}"
        );

        // The same configuration sent by a primary of the newest epoch (one
        // that raised its epoch and has not written under it yet) is taken,
        // with the stamp it carries.
        let by_current = RoleSnapshot::unlicensed(None)
            .replicated_write(new, stale.version)
            .unwrap();
        store.replace_config(&stale, by_current, "x", "t").unwrap();
        assert_eq!(store.config_doc("users").unwrap().unwrap().body, "{}");
        assert_eq!(store.config_meta().unwrap().epoch, old);
        assert_eq!(store.newest_epoch().unwrap(), new);
    }

    #[test]
    fn a_granted_stamp_must_be_the_next_version() {
        let store = Store::open_in_memory().unwrap();
        let e = Epoch::new(1, A);
        store
            .put_config_docs(&[("users", "{}".into())], primary(e))
            .unwrap();
        let permit = |version| ConfigWrite::stamped_for_tests(e, version);
        let err = store
            .put_config_docs(&[("users", "{\"a\":1}".into())], permit(3))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::OutOfLine {
                    offered: 3,
                    stored: 1
                }
            ),
            "{err}"
        );
        assert_eq!(
            store
                .put_config_docs(&[("users", "{\"a\":1}".into())], permit(2))
                .unwrap(),
            Some(2)
        );
    }
}
