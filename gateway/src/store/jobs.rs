//! The job log: jobs, their page files and the attempts of each pipeline
//! step. Written by whichever server accepted the job.
//!
//! Ownership: every job names the server that accepted it and the server
//! that owns its processing (the acceptor, until a takeover moves it), by
//! server id. Workers claim only jobs their server owns. Jobs are numbered
//! per acceptor (`seq`), and replication cursors follow those numbers: two
//! servers' clocks never order anything across the pair.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;
use uuid::Uuid;

use pair_core::ServerId;

use super::{Store, StoreError, now_text, parse_time, time_text};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Durable in the spool, waiting for a worker.
    Received,
    /// A worker runs its pipeline.
    Processing,
    /// Every step completed.
    Done,
    /// Dead letter: a step failed for good; `reason` says which and why. An
    /// admin can send it back to `received`.
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Received => "received",
            JobState::Processing => "processing",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    /// The state a name stands for (`received`, `processing`, `done`,
    /// `failed`), as stored and as admins type it.
    pub fn from_name(name: &str) -> Option<JobState> {
        [
            JobState::Received,
            JobState::Processing,
            JobState::Done,
            JobState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    pub(super) fn parse(s: &str) -> Result<JobState, StoreError> {
        JobState::from_name(s)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown job state `{s}`")))
    }
}

/// A job to commit, after its files are durable in the spool.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub device_id: Uuid,
    pub user: String,
    pub workflow: String,
    pub manifest: String,
    pub manifest_sha256: String,
    pub bytes: u64,
    pub accepted_by: String,
    pub accepted_role: String,
    pub accepted_epoch: u64,
    pub client_addr: Option<String>,
    pub received_at: DateTime<Utc>,
    pub pages: Vec<NewPage>,
    /// The server that accepted the job; it also owns it at first.
    pub acceptor: ServerId,
}

/// Whether the peer has a copy of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Accepted here; the peer has no copy yet.
    Local,
    /// Accepted here; the peer stored a copy.
    Replicated,
    /// A copy of a job the peer accepted.
    Replica,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Local => "local",
            ReplicaState::Replicated => "replicated",
            ReplicaState::Replica => "replica",
        }
    }

    fn parse(s: &str) -> Result<ReplicaState, StoreError> {
        match s {
            "local" => Ok(ReplicaState::Local),
            "replicated" => Ok(ReplicaState::Replicated),
            "replica" => Ok(ReplicaState::Replica),
            other => Err(StoreError::Corrupt(format!(
                "unknown replica state `{other}`"
            ))),
        }
    }
}

/// One page file of a job.
#[derive(Debug, Clone, Serialize)]
pub struct NewPage {
    pub seq: u32,
    pub file_name: String,
    pub format: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A job as stored.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub id: Uuid,
    pub device_id: Uuid,
    pub user: String,
    pub workflow: String,
    #[serde(skip)]
    pub manifest: String,
    #[serde(skip)]
    pub manifest_sha256: String,
    pub page_count: u32,
    pub bytes: u64,
    pub accepted_by: String,
    pub accepted_role: String,
    pub accepted_epoch: u64,
    pub client_addr: Option<String>,
    pub state: JobState,
    pub reason: Option<String>,
    pub received_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub acceptor_server: ServerId,
    pub owner_server: ServerId,
    /// The acceptor's sequence number of this job.
    pub seq: u64,
    pub replica_state: ReplicaState,
}

/// One attempt of one pipeline step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StepRow {
    pub step: u32,
    pub attempt: u32,
    pub plugin: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
}

pub(super) const JOB_COLUMNS: &str = "id, device_id, user_name, workflow, manifest, manifest_sha256, page_count, bytes, \
     accepted_by, accepted_role, accepted_epoch, client_addr, state, reason, received_at, updated_at, \
     acceptor_server, owner_server, seq, replica_state";

fn server_col(row: &Row<'_>, i: usize) -> Result<ServerId, StoreError> {
    let s: String = row.get(i)?;
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("job server id: {e}")))
}

pub(super) fn uuid_col(row: &Row<'_>, i: usize) -> rusqlite::Result<Uuid> {
    let s: String = row.get(i)?;
    Uuid::parse_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub(super) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Result<JobRecord, StoreError>> {
    let state: String = row.get(12)?;
    let received: String = row.get(14)?;
    let updated: String = row.get(15)?;
    let build = || -> Result<JobRecord, StoreError> {
        Ok(JobRecord {
            id: uuid_col(row, 0)?,
            device_id: uuid_col(row, 1)?,
            user: row.get(2)?,
            workflow: row.get(3)?,
            manifest: row.get(4)?,
            manifest_sha256: row.get(5)?,
            page_count: row.get(6)?,
            bytes: row.get::<_, i64>(7)? as u64,
            accepted_by: row.get(8)?,
            accepted_role: row.get(9)?,
            accepted_epoch: row.get::<_, i64>(10)? as u64,
            client_addr: row.get(11)?,
            state: JobState::parse(&state)?,
            reason: row.get(13)?,
            received_at: parse_time(&received)?,
            updated_at: parse_time(&updated)?,
            acceptor_server: server_col(row, 16)?,
            owner_server: server_col(row, 17)?,
            seq: row.get::<_, Option<i64>>(18)?.unwrap_or(0) as u64,
            replica_state: ReplicaState::parse(&row.get::<_, String>(19)?)?,
        })
    };
    Ok(build())
}

impl Store {
    /// Commits a job and its pages in one transaction. Returns `false` (and
    /// changes nothing) when a job with this id already exists.
    pub fn insert_job(&self, job: &NewJob) -> Result<bool, StoreError> {
        Ok(self.insert_jobs(&[(job, None)])?[0])
    }

    /// Stores a copy of a job the peer accepted (manifest and page rows;
    /// the page files are already durable in the spool) under the peer's
    /// sequence number. A replica is owned by its acceptor, so this server
    /// does not process it. Returns `false` (and changes nothing) when a
    /// job with this id already exists.
    pub fn insert_replica(&self, job: &NewJob, seq: u64) -> Result<bool, StoreError> {
        Ok(self.insert_jobs(&[(job, Some(seq))])?[0])
    }

    /// Commits several jobs in one transaction (one WAL fsync for all): each
    /// a job accepted here (`None`) or a copy of the peer's under its
    /// sequence number. Returns, per job, whether it was stored: `false`
    /// when a job with its id already existed (that one is left as it was).
    pub fn insert_jobs(&self, jobs: &[(&NewJob, Option<u64>)]) -> Result<Vec<bool>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut stored = Vec::with_capacity(jobs.len());
        {
            let mut job_stmt = tx.prepare_cached(
                "INSERT INTO jobs (id, device_id, user_name, workflow, manifest, manifest_sha256, page_count, bytes,
                                   accepted_by, accepted_role, accepted_epoch, client_addr, state, reason, received_at, updated_at,
                                   acceptor_server, owner_server, seq, replica_state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'received', NULL, ?13, ?13, ?14, ?14,
                         coalesce(?15, (SELECT coalesce(max(seq), 0) + 1 FROM jobs WHERE acceptor_server = ?14)),
                         CASE WHEN ?15 IS NULL THEN 'local' ELSE 'replica' END)
                 ON CONFLICT (id) DO NOTHING",
            )?;
            let mut page_stmt = tx.prepare_cached(
                "INSERT INTO job_pages (job_id, seq, file_name, format, bytes, sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (job, replica_seq) in jobs {
                let id = job.id.to_string();
                let inserted = job_stmt.execute(params![
                    id,
                    job.device_id.to_string(),
                    job.user,
                    job.workflow,
                    job.manifest,
                    job.manifest_sha256,
                    job.pages.len() as u32,
                    job.bytes as i64,
                    job.accepted_by,
                    job.accepted_role,
                    job.accepted_epoch as i64,
                    job.client_addr,
                    time_text(job.received_at),
                    job.acceptor.to_string(),
                    replica_seq.map(|s| s as i64),
                ])? == 1;
                if inserted {
                    for page in &job.pages {
                        page_stmt.execute(params![
                            id,
                            page.seq,
                            page.file_name,
                            page.format,
                            page.bytes as i64,
                            page.sha256
                        ])?;
                    }
                }
                stored.push(inserted);
            }
        }
        tx.commit()?;
        Ok(stored)
    }

    /// One job by id.
    pub fn job(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
        self.reader()
            .prepare_cached(&sql)?
            .query_row([id.to_string()], job_from_row)
            .optional()?
            .transpose()
    }

    /// Whether a job row exists (the spool uses this to tell orphans apart).
    pub fn job_exists(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM jobs WHERE id = ?1", [id.to_string()], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// A device's jobs, newest first.
    pub fn jobs_of_device(&self, device: Uuid, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE device_id = ?1 ORDER BY received_at DESC, id LIMIT ?2"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![device.to_string(), limit], job_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// Jobs in a given state, oldest first (the admin's dead-letter list).
    pub fn jobs_in_state(&self, state: JobState, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state = ?1 ORDER BY received_at, id LIMIT ?2"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![state.as_str(), limit], job_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// The page files of a job, in order.
    pub fn job_pages(&self, id: Uuid) -> Result<Vec<NewPage>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, file_name, format, bytes, sha256 FROM job_pages WHERE job_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([id.to_string()], |r| {
            Ok(NewPage {
                seq: r.get(0)?,
                file_name: r.get(1)?,
                format: r.get(2)?,
                bytes: r.get::<_, i64>(3)? as u64,
                sha256: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Jobs waiting for or in the pipeline.
    pub fn queue_depth(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT count(*) FROM jobs WHERE state IN ('received', 'processing')
                 AND replica_state <> 'replica' AND superseded_by IS NULL",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Number of jobs in `state`.
    pub fn count_in_state(&self, state: JobState) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT count(*) FROM jobs WHERE state = ?1",
            [state.as_str()],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Takes the oldest received job that `owner` owns, for a worker. Jobs
    /// owned by the peer (replicas) are never taken here; a takeover moves
    /// their ownership first.
    pub fn claim_next_job(&self, owner: ServerId) -> Result<Option<Uuid>, StoreError> {
        self.claim_next_job_except(owner, &[])
    }

    /// As [`Store::claim_next_job`], leaving the jobs in `except` (held from
    /// the pipeline until the peer has seen them).
    pub fn claim_next_job_except(
        &self,
        owner: ServerId,
        except: &[Uuid],
    ) -> Result<Option<Uuid>, StoreError> {
        let except = serde_json::to_string(&except.iter().map(Uuid::to_string).collect::<Vec<_>>())
            .expect("ids serialise");
        let conn = self.conn();
        let id: Option<String> = conn
            .query_row(
                "UPDATE jobs SET state = 'processing', updated_at = ?1
                 WHERE id = (SELECT id FROM jobs WHERE owner_server = ?2 AND state = 'received'
                                 AND superseded_by IS NULL
                                 AND id NOT IN (SELECT value FROM json_each(?3))
                             ORDER BY received_at, id LIMIT 1)
                 RETURNING id",
                params![now_text(), owner.to_string(), except],
                |r| r.get(0),
            )
            .optional()?;
        id.map(|s| {
            Uuid::parse_str(&s).map_err(|e| StoreError::Corrupt(format!("job id `{s}`: {e}")))
        })
        .transpose()
    }

    /// At start-up, before the jobs are requeued: the step attempts a
    /// previous run left open (it died while they ran) are closed as
    /// `interrupted` at `at`, the time of recovery, instead of showing as
    /// running forever. Only jobs this server owns and was processing have
    /// attempts it ran. Returns the attempts closed: `(job, step, plugin)`.
    pub fn close_interrupted_attempts(
        &self,
        at: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, u32, String)>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let owned = "job_id IN (SELECT id FROM jobs WHERE state = 'processing'
                        AND owner_server = coalesce((SELECT value FROM local_state WHERE key = 'server.id'), owner_server))";
        let closed: Vec<(Uuid, u32, String)> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT job_id, step, plugin FROM job_steps WHERE finished_at IS NULL AND {owned}"
            ))?;
            stmt.query_map([], |r| Ok((uuid_col(r, 0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?
        };
        tx.execute(
            &format!(
                "UPDATE job_steps SET finished_at = ?1, outcome = 'interrupted',
                     reason = 'the server stopped while this attempt ran; it was closed when the server started again'
                 WHERE finished_at IS NULL AND {owned}"
            ),
            [time_text(at)],
        )?;
        tx.commit()?;
        Ok(closed)
    }

    /// At start-up: jobs a previous run was processing go back to the queue;
    /// the pipeline resumes each at the step it was in.
    pub fn requeue_processing(&self) -> Result<u64, StoreError> {
        Ok(self.conn().execute(
            "UPDATE jobs SET state = 'received', updated_at = ?1
             WHERE state = 'processing'
               AND owner_server = coalesce((SELECT value FROM local_state WHERE key = 'server.id'), owner_server)",
            [now_text()],
        )? as u64)
    }

    /// Jobs stored before jobs had owners were all accepted and owned by
    /// this server: give them its id, numbered in the order received.
    /// Returns how many were adopted.
    pub fn adopt_unowned_jobs(&self, me: ServerId) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ids: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT id FROM jobs WHERE acceptor_server = '' ORDER BY received_at, id",
            )?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        for id in &ids {
            tx.execute(
                "UPDATE jobs SET acceptor_server = ?2, owner_server = ?2,
                     seq = (SELECT coalesce(max(seq), 0) + 1 FROM jobs WHERE acceptor_server = ?2)
                 WHERE id = ?1",
                params![id, me.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(ids.len() as u64)
    }

    /// Sets a job's state and reason.
    pub fn set_job_state(
        &self,
        id: Uuid,
        state: JobState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET state = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1",
            params![id.to_string(), state.as_str(), reason, now_text()],
        )?;
        Ok(())
    }

    /// Sends a dead-lettered job back to the queue with a fresh retry budget
    /// for the step that failed. Returns `false` when the job is not failed.
    pub fn retry_failed_job(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE jobs SET state = 'received', reason = NULL, updated_at = ?2 WHERE id = ?1 AND state = 'failed'",
            params![id.to_string(), now_text()],
        )?;
        if changed == 1 {
            // Attempts of steps that never completed are forgotten, so the
            // retry budget starts afresh; completed steps stay completed.
            tx.execute(
                "DELETE FROM job_steps WHERE job_id = ?1 AND step NOT IN
                   (SELECT step FROM job_steps WHERE job_id = ?1 AND outcome = 'done')",
                [id.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(changed == 1)
    }

    // ----- pipeline progress ------------------------------------------------------

    /// How far a job's pipeline got: the number of leading steps completed,
    /// and how many attempts the next step has had (a crash mid-step counts
    /// as an attempt, so a job that kills the server cannot loop forever).
    pub fn job_progress(&self, id: Uuid) -> Result<(usize, u32), StoreError> {
        let conn = self.conn();
        let completed = completed_steps(&conn, id)?;
        let attempts: u32 = conn.query_row(
            "SELECT count(*) FROM job_steps WHERE job_id = ?1 AND step = ?2",
            params![id.to_string(), completed],
            |r| r.get(0),
        )?;
        Ok((completed as usize, attempts))
    }

    /// Records the start of a step attempt, only while `owner` owns the
    /// job (a takeover or handover may have moved it since the worker took
    /// it). Returns whether it was recorded; a step that was not must not
    /// run.
    pub fn step_started(
        &self,
        id: Uuid,
        step: u32,
        plugin: &str,
        attempt: u32,
        at: DateTime<Utc>,
        owner: ServerId,
    ) -> Result<bool, StoreError> {
        Ok(self.conn().execute(
            "INSERT INTO job_steps (job_id, step, attempt, plugin, started_at)
             SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS
                 (SELECT 1 FROM jobs WHERE id = ?1 AND owner_server = ?6)
             ON CONFLICT (job_id, step, attempt) DO UPDATE SET started_at = excluded.started_at,
                 finished_at = NULL, outcome = NULL, reason = NULL",
            params![
                id.to_string(),
                step,
                attempt,
                plugin,
                time_text(at),
                owner.to_string()
            ],
        )? > 0)
    }

    /// Records how a step attempt ended.
    pub fn step_finished(
        &self,
        id: Uuid,
        step: u32,
        attempt: u32,
        outcome: &str,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE job_steps SET finished_at = ?4, outcome = ?5, reason = ?6 WHERE job_id = ?1 AND step = ?2 AND attempt = ?3",
            params![id.to_string(), step, attempt, time_text(at), outcome, reason],
        )?;
        Ok(())
    }

    /// Every recorded step attempt of a job.
    pub fn job_steps(&self, id: Uuid) -> Result<Vec<StepRow>, StoreError> {
        step_rows(&self.conn(), id)
    }
}

/// Every recorded step attempt of a job, in step and attempt order.
pub(super) fn step_rows(conn: &rusqlite::Connection, id: Uuid) -> Result<Vec<StepRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT step, attempt, plugin, started_at, finished_at, outcome, reason FROM job_steps
         WHERE job_id = ?1 ORDER BY step, attempt",
    )?;
    let rows = stmt.query_map([id.to_string()], |r| {
        Ok((
            r.get::<_, u32>(0)?,
            r.get::<_, u32>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, Option<String>>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (step, attempt, plugin, started, finished, outcome, reason) = row?;
        out.push(StepRow {
            step,
            attempt,
            plugin,
            started_at: parse_time(&started)?,
            finished_at: finished.as_deref().map(parse_time).transpose()?,
            outcome,
            reason,
        });
    }
    Ok(out)
}

/// How many leading steps of a job are recorded done.
pub(super) fn completed_steps(conn: &rusqlite::Connection, id: Uuid) -> Result<u32, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT step FROM job_steps WHERE job_id = ?1 AND outcome = 'done' ORDER BY step",
    )?;
    let done: Vec<u32> = stmt
        .query_map([id.to_string()], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(done
        .iter()
        .enumerate()
        .take_while(|(i, step)| *i as u32 == **step)
        .count() as u32)
}

/// A job as the tests of the store modules make one.
#[cfg(test)]
pub(crate) fn sample_job(id: Uuid) -> NewJob {
    NewJob {
        id,
        device_id: Uuid::new_v4(),
        user: "alice".into(),
        workflow: "scan-to-folder".into(),
        manifest: "{}".into(),
        manifest_sha256: "00".into(),
        bytes: 10,
        accepted_by: "gw-a".into(),
        accepted_role: "primary".into(),
        accepted_epoch: 1,
        client_addr: Some("127.0.0.1:5000".into()),
        received_at: Utc::now(),
        acceptor: ServerId::from_u128(1),
        pages: vec![NewPage {
            seq: 1,
            file_name: "page-0001.png".into(),
            format: "png".into(),
            bytes: 10,
            sha256: "ab".into(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: ServerId = ServerId::from_u128(1);
    const PEER: ServerId = ServerId::from_u128(2);

    #[test]
    fn insert_is_idempotent_by_job_id() {
        let store = Store::open_in_memory().unwrap();
        let id = Uuid::new_v4();
        assert!(store.insert_job(&sample_job(id)).unwrap());
        assert!(!store.insert_job(&sample_job(id)).unwrap());
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Received);
        assert_eq!(job.page_count, 1);
        assert_eq!(store.job_pages(id).unwrap().len(), 1);
        assert_eq!(store.queue_depth().unwrap(), 1);
        assert_eq!(store.count_in_state(JobState::Received).unwrap(), 1);
        assert_eq!(store.count_in_state(JobState::Failed).unwrap(), 0);
        for state in [
            JobState::Received,
            JobState::Processing,
            JobState::Done,
            JobState::Failed,
        ] {
            assert_eq!(JobState::from_name(state.as_str()), Some(state));
        }
        assert_eq!(JobState::from_name("Done"), None);
    }

    /// The replication stream's bookkeeping: jobs leave in sequence order,
    /// a replica keeps the acceptor's number and is never this server's
    /// work, state news follow until acknowledged, and a replica learns its
    /// owner's progress.
    #[test]
    fn replication_bookkeeping_in_the_store() {
        let store = Store::open_in_memory().unwrap();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for id in [a, b] {
            store.insert_job(&sample_job(id)).unwrap();
        }
        let waiting: Vec<Uuid> = store
            .unreplicated_jobs(ME, 10)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(waiting, vec![a, b]);
        assert_eq!(store.count_unreplicated(ME).unwrap(), 2);
        assert!(store.mark_replicated(a).unwrap());
        assert!(!store.mark_replicated(a).unwrap(), "once");
        assert_eq!(store.count_unreplicated(ME).unwrap(), 1);
        // A job finished before the peer took a copy needs none.
        store.set_job_state(b, JobState::Done, None).unwrap();
        assert_eq!(store.count_unreplicated(ME).unwrap(), 0);

        // The replicated job's progress is news until the peer has it.
        assert!(store.job_news(10, &Default::default()).unwrap().is_empty());
        store.set_job_state(a, JobState::Processing, None).unwrap();
        let news = store.job_news(10, &Default::default()).unwrap();
        assert_eq!(
            (news[0].job, news[0].state.as_str(), news[0].owner),
            (a, "processing", ME)
        );
        store.mark_peer_rev(a, news[0].rev).unwrap();
        assert!(store.job_news(10, &Default::default()).unwrap().is_empty());

        // A replica of the peer's job: its number, not this server's work.
        let mut theirs = sample_job(c);
        theirs.acceptor = PEER;
        assert!(store.insert_replica(&theirs, 41).unwrap());
        let copy = store.job(c).unwrap().unwrap();
        assert_eq!((copy.seq, copy.replica_state), (41, ReplicaState::Replica));
        assert_eq!(copy.owner_server, PEER);
        assert_eq!(
            store.claim_next_job(ME).unwrap(),
            None,
            "the replica is the peer's work"
        );
        assert_eq!(
            store.queue_depth().unwrap(),
            1,
            "a is processing; the replica is not counted"
        );
        let now = Utc::now();
        let done = |owner| crate::store::job_owners::JobNews {
            job: c,
            rev: 3,
            owner,
            owner_term: 0,
            state: "done".into(),
            reason: None,
            updated_at: now,
            steps: Vec::new(),
        };
        let delivery = crate::ownership::DELIVERY_PLUGINS;
        use crate::store::job_owners::NewsTaken;
        assert_eq!(
            store.apply_job_news(ME, &done(ME), now, delivery).unwrap(),
            NewsTaken::Stale,
            "only the owner's news count in its term"
        );
        assert_eq!(
            store
                .apply_job_news(PEER, &done(PEER), now, delivery)
                .unwrap(),
            NewsTaken::Applied
        );
        assert!(
            store.job_news(10, &Default::default()).unwrap().is_empty(),
            "news taken from the peer is not sent back"
        );
        assert!(
            store
                .replicas_done_before(now - chrono::Duration::seconds(1), 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .replicas_done_before(now + chrono::Duration::seconds(1), 10)
                .unwrap(),
            vec![c]
        );
        store.mark_pages_removed(c, now).unwrap();
        assert!(
            store
                .replicas_done_before(now + chrono::Duration::seconds(1), 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.job(c).unwrap().unwrap().state,
            JobState::Done,
            "the row stays"
        );
    }

    #[test]
    fn a_superseded_copy_is_never_claimed_and_only_an_unstarted_one_is_superseded() {
        let store = Store::open_in_memory().unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        store.insert_job(&sample_job(a)).unwrap();
        store.insert_job(&sample_job(b)).unwrap();
        assert!(store.supersede_job(a, PEER, "superseded: test").unwrap());
        assert!(
            store.supersede_job(a, PEER, "superseded: test").unwrap(),
            "same decision again"
        );
        assert!(
            !store.supersede_job(a, ME, "other keeper").unwrap(),
            "never changed"
        );
        assert_eq!(store.superseded_by(a).unwrap(), Some(PEER));
        assert_eq!(
            store.claim_next_job_except(ME, &[b]).unwrap(),
            None,
            "b is held"
        );
        assert_eq!(store.claim_next_job(ME).unwrap(), Some(b));
        assert_eq!(
            store.claim_next_job(ME).unwrap(),
            None,
            "a is never processed here"
        );
        assert!(
            !store.supersede_job(b, PEER, "started").unwrap(),
            "b has started"
        );
        store.record_both_delivered(b, PEER).unwrap();
        assert_eq!(store.duplicate_counts().unwrap(), (1, 1));
        assert_eq!(
            store.count_unreplicated(ME).unwrap(),
            0,
            "neither is offered again"
        );
        assert_eq!(store.queue_depth().unwrap(), 1, "b, processing; not a");
    }

    #[test]
    fn claim_takes_oldest_once() {
        let store = Store::open_in_memory().unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut ja = sample_job(a);
        ja.received_at = Utc::now() - chrono::Duration::seconds(5);
        store.insert_job(&ja).unwrap();
        store.insert_job(&sample_job(b)).unwrap();
        assert_eq!(store.claim_next_job(ME).unwrap(), Some(a));
        assert_eq!(store.claim_next_job(ME).unwrap(), Some(b));
        assert_eq!(store.claim_next_job(ME).unwrap(), None);
        assert_eq!(store.requeue_processing().unwrap(), 2);
        assert_eq!(store.claim_next_job(ME).unwrap(), Some(a));
    }

    #[test]
    fn workers_claim_only_jobs_their_server_owns_and_seq_counts_per_acceptor() {
        let store = Store::open_in_memory().unwrap();
        let (mine, theirs, mine2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        store.insert_job(&sample_job(mine)).unwrap();
        let mut other = sample_job(theirs);
        other.acceptor = PEER;
        store.insert_job(&other).unwrap();
        store.insert_job(&sample_job(mine2)).unwrap();
        let seqs: Vec<(ServerId, u64)> = [mine, theirs, mine2]
            .iter()
            .map(|id| {
                let j = store.job(*id).unwrap().unwrap();
                assert_eq!(j.owner_server, j.acceptor_server);
                assert_eq!(j.replica_state, ReplicaState::Local);
                (j.acceptor_server, j.seq)
            })
            .collect();
        assert_eq!(seqs, [(ME, 1), (PEER, 1), (ME, 2)]);
        assert_eq!(store.claim_next_job(PEER).unwrap(), Some(theirs));
        assert_eq!(store.claim_next_job(PEER).unwrap(), None);
        let mut claimed = vec![
            store.claim_next_job(ME).unwrap().unwrap(),
            store.claim_next_job(ME).unwrap().unwrap(),
        ];
        claimed.sort();
        let mut expected = vec![mine, mine2];
        expected.sort();
        assert_eq!(claimed, expected);
        assert_eq!(store.claim_next_job(ME).unwrap(), None);
    }

    /// A second insert of the same id must never look like a new job: the
    /// intake answers it as a replay.
    #[test]
    fn a_second_insert_of_an_id_changes_nothing() {
        let store = Store::open_in_memory().unwrap();
        let id = Uuid::new_v4();
        assert!(store.insert_job(&sample_job(id)).unwrap());
        let mut again = sample_job(id);
        again.user = "mallory".into();
        again.acceptor = PEER;
        assert!(!store.insert_job(&again).unwrap());
        let job = store.job(id).unwrap().unwrap();
        assert_eq!((job.user.as_str(), job.acceptor_server), ("alice", ME));
    }

    #[test]
    fn progress_counts_leading_done_steps_and_attempts() {
        let store = Store::open_in_memory().unwrap();
        let id = Uuid::new_v4();
        store.insert_job(&sample_job(id)).unwrap();
        let now = Utc::now();
        assert_eq!(store.job_progress(id).unwrap(), (0, 0));
        store.step_started(id, 0, "ocr", 1, now, ME).unwrap();
        store.step_finished(id, 0, 1, "done", None, now).unwrap();
        store.step_started(id, 1, "assemble", 1, now, ME).unwrap();
        store
            .step_finished(id, 1, 1, "retry", Some("busy"), now)
            .unwrap();
        // An attempt that was started but never finished (a crash) counts too.
        store.step_started(id, 1, "assemble", 2, now, ME).unwrap();
        assert_eq!(store.job_progress(id).unwrap(), (1, 2));
        store
            .step_finished(id, 1, 2, "failed", Some("bad"), now)
            .unwrap();
        store
            .set_job_state(id, JobState::Failed, Some("bad"))
            .unwrap();
        assert!(store.retry_failed_job(id).unwrap());
        assert!(
            !store.retry_failed_job(id).unwrap(),
            "only failed jobs are retried"
        );
        assert_eq!(
            store.job_progress(id).unwrap(),
            (1, 0),
            "completed step kept, budget reset"
        );
        assert_eq!(store.job(id).unwrap().unwrap().state, JobState::Received);
    }

    // Regression: an attempt cut short by a crash stayed without an outcome
    // ("running") forever.
    #[test]
    fn recovery_closes_attempts_left_running_as_interrupted_and_they_still_count() {
        let store = Store::open_in_memory().unwrap();
        let (crashed, queued) = (Uuid::new_v4(), Uuid::new_v4());
        store.insert_job(&sample_job(crashed)).unwrap();
        assert_eq!(store.claim_next_job(ME).unwrap(), Some(crashed));
        let started = Utc::now() - chrono::Duration::seconds(60);
        store
            .step_started(crashed, 0, "ocr", 1, started, ME)
            .unwrap();
        store
            .step_finished(crashed, 0, 1, "retry", Some("busy"), started)
            .unwrap();
        store
            .step_started(crashed, 0, "ocr", 2, started, ME)
            .unwrap();
        store.insert_job(&sample_job(queued)).unwrap();

        let recovered = Utc::now();
        assert_eq!(
            store.close_interrupted_attempts(recovered).unwrap().len(),
            1
        );
        assert_eq!(
            store.close_interrupted_attempts(recovered).unwrap().len(),
            0
        );
        let steps = store.job_steps(crashed).unwrap();
        assert_eq!(steps[0].outcome.as_deref(), Some("retry"));
        assert_eq!(steps[1].outcome.as_deref(), Some("interrupted"));
        assert_eq!(
            steps[1].finished_at.map(|t| t.timestamp_millis()),
            Some(recovered.timestamp_millis())
        );
        assert!(steps[1].reason.as_deref().unwrap().contains("stopped"));
        // Both attempts count: the step resumes with attempt 3.
        assert_eq!(store.job_progress(crashed).unwrap(), (0, 2));
        assert!(store.job_steps(queued).unwrap().is_empty());
    }
}
