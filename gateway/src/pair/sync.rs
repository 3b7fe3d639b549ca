//! The replication side of the pair driver: what it does with the store
//! when the protocol node grants a write, asks for a snapshot, applies one
//! or hands one over for comparison, and the clock and time-zone check
//! that admits sync. The node decides *whether*; this module carries out
//! *what*, always in one store transaction, and keeps what status shows of
//! replication.
//!
//! Rules owned here:
//! * a granted write is stored under exactly the granted stamp; the change
//!   pushed to the secondary is the rows it wrote plus the stamp it was
//!   made on, applied only on exactly that stamp (anything else asks for
//!   the whole configuration);
//! * a received snapshot must carry the stamp the node applies it under
//!   and a matching checksum, or nothing of it is applied;
//! * the zone compared is the configured `time_zone`, else the system's,
//!   read at each check; a zone that cannot be determined is sent as
//!   unknown and blocks sync with its own reason.

use std::time::Instant;

use chrono::{DateTime, Utc};
use pair_core::sync::{ClockReading, ClockSample, SyncBlock, admit_sync};
use pair_core::{ConfigStamp, WritePermit};
use serde::Serialize;

use crate::changes::{self, Applied, Change, ChangeError};
use crate::core::Core;
use crate::settings::{PairLinkSettings, system_time_zone_name};
use crate::store::conflicts::Conflict;
use crate::store::snapshot::ConfigSnapshot;
use crate::store::time_text;

/// What status shows of replication.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// `ok`, `blocked` or `failing`; `None` while unpaired.
    pub sync: Option<&'static str>,
    /// Why sync is blocked or failing, in plain words.
    pub reason: Option<String>,
    pub config_version: u64,
    pub peer_config_version: Option<u64>,
    pub epoch: u64,
    pub peer_epoch: Option<u64>,
    /// When both servers were last seen holding the same configuration.
    pub last_sync_at: Option<DateTime<Utc>>,
    /// How long the two have held different configurations (0 when the
    /// same).
    pub lag_ms: Option<u64>,
    /// Conflict report entries not re-applied yet.
    pub open_conflicts: u64,
    /// Jobs: `ok`, or `degraded` while a job acknowledged without the
    /// peer's copy waits for it; `None` while unpaired.
    pub replication: Option<&'static str>,
    /// Jobs accepted here that the peer has no copy of yet.
    pub unreplicated_jobs: u64,
    /// The peer's last refusal of a job copy (a full disk, a digest that
    /// did not match), until it stores one again.
    pub replication_error: Option<String>,
    /// Jobs accepted on both servers while cut off: copies here that the
    /// other server keeps, and jobs both had started delivering.
    pub superseded_jobs: u64,
    pub jobs_delivered_by_both: u64,
}

/// The driver's replication state.
#[derive(Default)]
pub struct Replication {
    /// The change waiting for the node's grant.
    pub pending: Option<(
        Change,
        tokio::sync::oneshot::Sender<Result<Applied, ChangeError>>,
    )>,
    /// Since when the two configurations differ.
    differ_since: Option<Instant>,
    last_sync_at: Option<DateTime<Utc>>,
    /// The last apply that failed, until one succeeds.
    pub failure: Option<String>,
    /// The wall-clock stamp of the clock probe in flight.
    pub probe_sent_ms: Option<u64>,
    pub last_probe: Option<Instant>,
    /// The last block admins were told of (not repeated on reconnects).
    pub reported_block: Option<String>,
    pub open_conflicts: u64,
    /// `(superseded, delivered by both)` as last counted.
    pub duplicates: (u64, u64),
}

impl Replication {
    /// Notes the two stamps as the node sees them now.
    pub fn observe(&mut self, ours: ConfigStamp, theirs: Option<ConfigStamp>, now: DateTime<Utc>) {
        match theirs {
            Some(t) if t == ours => {
                self.differ_since = None;
                self.last_sync_at = Some(now);
            }
            Some(_) => {
                self.differ_since.get_or_insert_with(Instant::now);
            }
            None => {}
        }
    }

    /// A snapshot was applied.
    pub fn applied(&mut self, now: DateTime<Utc>) {
        self.failure = None;
        self.last_sync_at = Some(now);
    }

    /// The status block for `view`.
    /// `patience`: how long the two may hold different configurations
    /// before that counts as failing (a push is at once; a pull follows
    /// within the replication period).
    pub fn status(
        &self,
        view: &pair_core::RoleView,
        paired: bool,
        link_up: bool,
        patience: std::time::Duration,
    ) -> SyncStatus {
        let peer_version = view.peer.as_ref().and_then(|p| p.config).map(|c| c.version);
        let stuck = self.differ_since.filter(|t| t.elapsed() > patience);
        let (sync, reason) = if !paired {
            (None, None)
        } else if let Some(block) = &view.sync_blocked {
            (Some("blocked"), Some(block.to_string()))
        } else if !link_up {
            (
                Some("failing"),
                Some("no link to the peer: configuration cannot be exchanged".to_owned()),
            )
        } else if let Some(failure) = &self.failure {
            (Some("failing"), Some(failure.clone()))
        } else if let Some(since) = stuck {
            (
                Some("failing"),
                Some(format!(
                    "the peer holds configuration version {}, this server {}, for {} s; see the peer's status and log",
                    peer_version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                    view.config.version,
                    since.elapsed().as_secs()
                )),
            )
        } else {
            (Some("ok"), None)
        };
        let peer = view.peer.as_ref();
        SyncStatus {
            sync,
            reason,
            config_version: view.config.version,
            peer_config_version: peer_version,
            epoch: view.highest_seen.number,
            peer_epoch: peer.map(|p| p.epoch.number),
            last_sync_at: self.last_sync_at,
            lag_ms: paired.then(|| {
                self.differ_since
                    .map_or(0, |t| t.elapsed().as_millis() as u64)
            }),
            open_conflicts: self.open_conflicts,
            replication: None,
            unreplicated_jobs: 0,
            replication_error: None,
            superseded_jobs: self.duplicates.0,
            jobs_delivered_by_both: self.duplicates.1,
        }
    }
}

/// Refuses what would fail before the node grants a version.
pub async fn check(core: &Core, change: &Change) -> Result<(), ChangeError> {
    let change = change.clone();
    core.data
        .run(move |store| Ok(changes::check(store, &change)))
        .await
        .map_err(|e| ChangeError::Unavailable(e.to_string()))?
}

/// Stores a granted change under the permit's stamp and loads the
/// configuration it gives.
pub async fn commit(
    core: &Core,
    change: Change,
    permit: WritePermit,
) -> Result<Applied, ChangeError> {
    let role = core.role.snapshot();
    let instance = core.name().to_owned();
    let (device, meta) = core
        .data
        .run(move |store| {
            Ok((|| {
                let write = role.permitted_write(&permit, &instance)?;
                let device = changes::execute(store, &change, write)?;
                Ok::<_, ChangeError>((device, store.config_meta()?))
            })())
        })
        .await
        .map_err(|e| ChangeError::Unavailable(e.to_string()))??;
    if let Err(e) = core.reload_config().await {
        tracing::error!(
            error = e,
            "the configuration could not be loaded after a change"
        );
    }
    Ok(Applied {
        version: Some(meta.version),
        epoch: meta.epoch.to_string(),
        device,
    })
}

/// The whole configuration at `stamp`, encoded, or `None` when the store
/// holds another (it moved on, or a write failed): the peer asks again.
pub async fn snapshot_at(core: &Core, stamp: ConfigStamp) -> Option<Vec<u8>> {
    let read = core.data.run(|store| store.config_snapshot()).await;
    match read {
        Ok(s) if s.version == stamp.version && s.epoch == stamp.epoch => Some(s.encode()),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "the configuration snapshot could not be read");
            None
        }
    }
}

/// The change that made the configuration at `stamp` out of `prev` (only
/// the rows it wrote), encoded, or `None` when the store holds another.
pub async fn change_at(core: &Core, stamp: ConfigStamp, prev: ConfigStamp) -> Option<Vec<u8>> {
    let base = (prev.version, prev.epoch);
    let read = core.data.run(move |store| store.config_change(base)).await;
    match read {
        Ok(c) if c.version == stamp.version && c.epoch == stamp.epoch => Some(c.encode()),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "the configuration change could not be read");
            None
        }
    }
}

/// Applies a snapshot from the primary at `stamp`, in one transaction, and
/// loads it. Returns the conflicts it found in what it replaced and how
/// many of them are new.
pub async fn apply(
    core: &Core,
    by: pair_core::Epoch,
    stamp: ConfigStamp,
    payload: &[u8],
) -> Result<(Vec<Conflict>, usize), String> {
    let snapshot = ConfigSnapshot::decode(payload).map_err(|e| e.to_string())?;
    if snapshot.version != stamp.version || snapshot.epoch != stamp.epoch {
        return Err(format!(
            "the snapshot holds version {} of epoch {}, not the version {} it was sent as",
            snapshot.version,
            snapshot.epoch.short(),
            stamp.version
        ));
    }
    let role = core.role.snapshot();
    let write = role
        .replicated_write(by, stamp.version)
        .ok_or("this server is the primary and takes no configuration from its peer")?;
    let origin = core.name().to_owned();
    let now = time_text(core.clock.now());
    let conflicts = core
        .data
        .run(move |store| {
            if snapshot.base.is_some() {
                // One change on top of what this server holds: nothing of
                // this server's can be missing from the primary's line.
                store.apply_config_change(&snapshot, write, &now)?;
                Ok((Vec::new(), 0))
            } else {
                store.replace_config(&snapshot, write, &origin, &now)
            }
        })
        .await
        .map_err(|e| format!("the configuration could not be stored: {e}"))?;
    core.reload_config().await?;
    Ok(conflicts)
}

/// A fenced server's comparison with the new primary's snapshot. Returns
/// every conflict and how many are new.
pub async fn compare(core: &Core, payload: &[u8]) -> Result<(Vec<Conflict>, usize), String> {
    let snapshot = ConfigSnapshot::decode(payload).map_err(|e| e.to_string())?;
    let origin = core.name().to_owned();
    let now = time_text(core.clock.now());
    core.data
        .run(move |store| store.compare_config(&snapshot, &origin, &now))
        .await
        .map_err(|e| e.to_string())
}

/// Conflicts not re-applied yet.
pub async fn open_conflicts(core: &Core) -> u64 {
    core.data
        .run(|store| store.conflicts())
        .await
        .map(|all| all.iter().filter(|c| c.applied_at.is_none()).count() as u64)
        .unwrap_or(0)
}

/// This server's zone for the check: configured, else the system's now.
pub fn time_zone(settings: &PairLinkSettings) -> Option<String> {
    settings
        .configured_time_zone
        .clone()
        .or_else(system_time_zone_name)
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn wall_ms(core: &Core) -> u64 {
    core.clock.now().timestamp_millis().max(0) as u64
}

/// The verdict on one probe's answer. The primary's side is named as such
/// in the reason, whichever server runs the check.
#[allow(clippy::too_many_arguments)]
pub fn verdict(
    me: &str,
    my_zone: Option<String>,
    i_am_primary: bool,
    peer: &str,
    peer_zone: Option<String>,
    sample: ClockSample,
    max_clock_skew_ms: u64,
) -> Result<(), SyncBlock> {
    let mine = ClockReading {
        instance: me.to_owned(),
        time_zone: my_zone,
    };
    let theirs = ClockReading {
        instance: peer.to_owned(),
        time_zone: peer_zone,
    };
    if i_am_primary {
        admit_sync(&mine, &theirs, sample, max_clock_skew_ms)
    } else {
        admit_sync(&theirs, &mine, sample, max_clock_skew_ms)
    }
}
