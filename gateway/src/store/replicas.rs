//! The pair's bookkeeping of jobs in the store: which jobs this server
//! accepted still need a copy on the peer, what the peer last acknowledged
//! of their progress, the peer's progress on the replicas held here and
//! their retention, and one job id accepted by both servers (superseded
//! copies, jobs both delivered). Storing a replica is the intake's insert
//! (`Store::insert_replica`).

use chrono::{DateTime, Utc};
use pair_core::ServerId;
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::jobs::{JOB_COLUMNS, JobRecord, job_from_row, uuid_col};
use super::{Store, StoreError, now_text, time_text};

/// The jobs of [`Store::unreplicated_jobs`], in stream order. The stream
/// asks every round, so it reads only the index of jobs waiting for a copy
/// (`jobs_unreplicated`, migration 0009), never the whole table.
const UNREPLICATED_JOBS: &str =
    "WHERE acceptor_server = ?1 AND replica_state = 'local' ORDER BY seq LIMIT ?2";

/// [`Store::count_unreplicated`]: counted after every answer from the
/// peer, through the same index.
const COUNT_UNREPLICATED: &str = "SELECT count(*) FROM jobs
     WHERE acceptor_server = ?1 AND replica_state = 'local' AND state <> 'done'";

impl Store {
    /// Jobs this server accepted that the peer has no copy of yet, in the
    /// order of their sequence number (the order of the replication stream).
    /// A job whose pipeline finished first needs no copy any more: its
    /// documents were delivered and its pages are gone.
    pub fn unreplicated_jobs(
        &self,
        me: ServerId,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn();
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs {UNREPLICATED_JOBS}");
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![me.to_string(), limit], job_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// How many jobs this server accepted have no copy on the peer yet (and
    /// still need one: not done).
    pub fn count_unreplicated(&self, me: ServerId) -> Result<u64, StoreError> {
        Ok(self
            .conn()
            .prepare_cached(COUNT_UNREPLICATED)?
            .query_row([me.to_string()], |r| r.get::<_, i64>(0))? as u64)
    }

    /// The peer stored a copy of the job this server accepted. Returns
    /// whether the job was waiting for it.
    pub fn mark_replicated(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self.conn().execute(
            "UPDATE jobs SET replica_state = 'replicated' WHERE id = ?1 AND replica_state = 'local'",
            [id.to_string()],
        )? > 0)
    }

    /// [`Store::mark_replicated`] for many jobs, in one transaction.
    pub fn mark_replicated_all(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut mark = tx.prepare_cached(
                "UPDATE jobs SET replica_state = 'replicated' WHERE id = ?1 AND replica_state = 'local'",
            )?;
            for id in ids {
                mark.execute([id.to_string()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Replicas this server learned were done before `before` (its own
    /// clock) and whose pages are still here.
    pub fn replicas_done_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id FROM jobs WHERE state = 'done' AND replica_done_at IS NOT NULL
               AND pages_removed_at IS NULL AND replica_done_at < ?1
             ORDER BY replica_done_at LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![time_text(before), limit], |r| uuid_col(r, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The job's page files were removed (a replica's by the janitor, or
    /// the spool copy of a job whose pipeline finished here).
    pub fn mark_pages_removed(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET pages_removed_at = ?2 WHERE id = ?1",
            params![id.to_string(), time_text(at)],
        )?;
        Ok(())
    }

    /// Whether job `id`'s page files were removed here: after its pipeline
    /// finished here, or (a replica) after its owner reported it done. So
    /// the job was done when they went.
    pub fn pages_removed(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT pages_removed_at IS NOT NULL FROM jobs WHERE id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    /// The other server keeps job `id` (the same id was accepted on both):
    /// this server's copy is never processed, and no longer offered to the
    /// peer. Done only while the copy has not started; returns `false`
    /// (and changes nothing) when a worker took it first. Superseding again
    /// for the same keeper is the same decision and returns `true` (the two
    /// sides of the pair may decide at the same moment).
    pub fn supersede_job(
        &self,
        id: Uuid,
        keeper: ServerId,
        reason: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.conn().execute(
            "UPDATE jobs SET superseded_by = ?2, reason = ?3, replica_state = 'replicated', updated_at = ?4
             WHERE id = ?1 AND replica_state <> 'replica'
               AND ((state = 'received' AND superseded_by IS NULL) OR superseded_by = ?2)",
            params![id.to_string(), keeper.to_string(), reason, now_text()],
        )? > 0)
    }

    /// Both servers had started delivering job `id` (accepted on both while
    /// cut off): recorded on this server's copy, which no longer goes to
    /// the peer.
    /// Returns whether this is the first time it is recorded.
    pub fn record_both_delivered(&self, id: Uuid, other: ServerId) -> Result<bool, StoreError> {
        let conn = self.conn();
        let first = conn.execute(
            "UPDATE jobs SET both_delivered_with = ?2 WHERE id = ?1 AND both_delivered_with IS NULL",
            params![id.to_string(), other.to_string()],
        )? > 0;
        conn.execute(
            "UPDATE jobs SET both_delivered_with = ?2, replica_state = 'replicated' WHERE id = ?1",
            params![id.to_string(), other.to_string()],
        )?;
        Ok(first)
    }

    /// Jobs whose copy here was superseded, and jobs both servers
    /// delivered: `(superseded, both delivered)`.
    pub fn duplicate_counts(&self) -> Result<(u64, u64), StoreError> {
        Ok(self.conn().query_row(
            "SELECT count(superseded_by), count(both_delivered_with) FROM jobs",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }

    /// Who keeps job `id` when this server's copy was superseded.
    pub fn superseded_by(&self, id: Uuid) -> Result<Option<ServerId>, StoreError> {
        let text: Option<Option<String>> = self
            .conn()
            .query_row(
                "SELECT superseded_by FROM jobs WHERE id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        text.flatten()
            .map(|t| {
                t.parse()
                    .map_err(|e| StoreError::Corrupt(format!("superseded_by `{t}`: {e}")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql`, one line per step.
    fn plan(store: &Store, sql: &str, args: &[&dyn rusqlite::ToSql]) -> String {
        let conn = store.conn();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let steps = stmt.query_map(args, |r| r.get::<_, String>(3)).unwrap();
        steps.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn the_stream_reads_only_the_jobs_waiting_for_a_copy() {
        let store = Store::open_in_memory().unwrap();
        let next = plan(
            &store,
            &format!("SELECT id FROM jobs {UNREPLICATED_JOBS}"),
            &[&"x", &16],
        );
        assert!(next.contains("USING INDEX jobs_unreplicated"), "{next}");
        assert!(!next.contains("TEMP B-TREE"), "sorted by the index: {next}");
        let count = plan(&store, COUNT_UNREPLICATED, &[&"x"]);
        assert!(count.contains("USING INDEX jobs_unreplicated"), "{count}");
    }
}
