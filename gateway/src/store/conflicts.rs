//! The conflict report: configuration changes a primary made that the
//! line of a newer primary does not contain, kept for an admin to review
//! and re-apply (migration 0005): the entries, their ids and how they are
//! kept. Which rows are conflicts is decided where snapshots are compared
//! and applied (`store::snapshot`).

use pair_core::Epoch;
use rusqlite::{Transaction, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::security::sha256_hex;

/// What kind of row a conflict is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictKind {
    Document,
    Device,
}

impl ConflictKind {
    fn as_str(self) -> &'static str {
        match self {
            ConflictKind::Document => "document",
            ConflictKind::Device => "device",
        }
    }
}

/// A configuration change made by a primary that was replaced, which the
/// new primary's line does not contain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// Derived from kind, name and stamp: the same on both servers.
    pub id: String,
    pub kind: ConflictKind,
    /// The document's name or the device's name.
    pub name: String,
    pub version: u64,
    pub epoch: Epoch,
    /// The document's JSON body, or the device row as JSON
    /// ([`SnapshotDevice`]).
    pub body: String,
    /// The instance whose change it was.
    pub origin: String,
    /// The configuration it was compared with, `VERSION@EPOCH`.
    pub against: String,
    pub found_at: String,
    pub applied_at: Option<String>,
    /// The stamp it was re-applied under on the primary, `VERSION@EPOCH`.
    pub applied_as: Option<String>,
}

pub(super) fn conflict_id(kind: ConflictKind, name: &str, version: u64, epoch: Epoch) -> String {
    let text = format!("{}\n{name}\n{version}\n{epoch}", kind.as_str());
    sha256_hex(text.as_bytes())[..12].to_owned()
}

pub(super) fn insert_conflicts(
    tx: &Transaction<'_>,
    conflicts: &[Conflict],
) -> Result<usize, StoreError> {
    let mut added = 0;
    for c in conflicts {
        added += tx.execute(
            "INSERT INTO config_conflicts (id, kind, name, version, epoch, body, origin, against, found_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (id) DO NOTHING",
            params![
                c.id,
                c.kind.as_str(),
                c.name,
                c.version as i64,
                c.epoch.to_string(),
                c.body,
                c.origin,
                c.against,
                c.found_at
            ],
        )?;
    }
    Ok(added)
}

impl Store {
    /// Keeps conflicts the peer found (idempotent: one id is kept once).
    pub fn record_conflicts(&self, conflicts: &[Conflict]) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let added = insert_conflicts(&tx, conflicts)?;
        tx.commit()?;
        Ok(added)
    }

    /// Every conflict, oldest first.
    pub fn conflicts(&self) -> Result<Vec<Conflict>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, kind, name, version, epoch, body, origin, against, found_at, applied_at, applied_as
             FROM config_conflicts ORDER BY found_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, Option<String>>(9)?,
                r.get::<_, Option<String>>(10)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                kind,
                name,
                version,
                epoch,
                body,
                origin,
                against,
                found_at,
                applied_at,
                applied_as,
            ) = row?;
            out.push(Conflict {
                id,
                kind: match kind.as_str() {
                    "document" => ConflictKind::Document,
                    "device" => ConflictKind::Device,
                    other => return Err(StoreError::Corrupt(format!("conflict kind `{other}`"))),
                },
                name,
                version: version as u64,
                epoch: epoch
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("conflict epoch `{epoch}`: {e}")))?,
                body,
                origin,
                against,
                found_at,
                applied_at,
                applied_as,
            });
        }
        Ok(out)
    }

    /// Marks a conflict as re-applied under `stamp`.
    pub fn mark_conflict_applied(
        &self,
        id: &str,
        stamp: &str,
        at: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.conn().execute(
            "UPDATE config_conflicts SET applied_at = ?2, applied_as = ?3 WHERE id = ?1",
            params![id, at, stamp],
        )? > 0)
    }
}
