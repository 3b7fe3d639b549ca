//! Job ownership across the pair in the store: the news of a job's
//! progress and owner that the peer has not acknowledged, taking it in from
//! the peer (only from a higher ownership term, or from the owner in the
//! same term), takeovers of a silent peer's jobs and their announcement,
//! handovers at a clean stop (what admins are told of them is kept by
//! [`super::pair_events`]). The rules that decide when any of this happens are the
//! pair protocol's (`pair_core::ownership`); this module only keeps the
//! records consistent.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use pair_core::{Epoch, ServerId};
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::jobs::{JobState, StepRow, completed_steps, step_rows, uuid_col};
use super::{Store, StoreError, parse_time, time_text};

/// A job's progress and owner, as the peer's copy should take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobNews {
    pub job: Uuid,
    /// The sender's revision of the job; the answer acknowledges it.
    pub rev: u64,
    pub owner: ServerId,
    pub owner_term: u64,
    pub state: String,
    pub reason: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Every step attempt recorded for the job (so a takeover skips the
    /// steps already done, destinations included).
    pub steps: Vec<StepRow>,
}

/// What became of a job's news from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewsTaken {
    /// Taken: the job changed here.
    Applied,
    /// Older than what this server holds, or about a job it does not
    /// hold: nothing to do, and the sender may stop sending it.
    Stale,
    /// Not yet: the news moves a job this server owns to the sender, which
    /// only its takeover announcement may do. The sender sends it again.
    NotYet,
    /// From a lower ownership term than this server holds: the sender has
    /// not applied a takeover or handover yet. Not confirmed, so the sender
    /// never starts a delivery step on it; it sends again once it has.
    Behind,
}

/// One job of a takeover, as the announcement carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenJob {
    pub job: Uuid,
    /// The term the taker holds it in.
    pub owner_term: u64,
    /// Steps `0..from_step` were done when it was taken; the taker runs
    /// the rest.
    pub from_step: u32,
}

/// What a takeover moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Takeover {
    pub jobs: Vec<Uuid>,
    /// Step attempts the silent owner had running, closed here as
    /// interrupted: `(job, step, plugin)`. The step runs again here.
    pub in_flight: Vec<(Uuid, u32, String)>,
}

impl Takeover {
    /// Notes the attempts of `job` closed because the job moved.
    fn cut_short(&mut self, job: Uuid, attempts: Vec<(u32, String)>) {
        self.in_flight.extend(
            attempts
                .into_iter()
                .map(|(step, plugin)| (job, step, plugin)),
        );
    }
}

/// What applying a peer's takeover announcement changed here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakeoversApplied {
    /// Jobs now recorded as the peer's.
    pub moved: Vec<Uuid>,
    /// Step attempts this server ran at or after the step the taker
    /// resumed from: `(job, step, plugin)`. Both servers ran that step.
    pub both_ran: Vec<(Uuid, u32, String)>,
}

/// A job row with news: id, rev, owner, term, state, reason, updated_at.
type NewsRow = (Uuid, i64, String, i64, String, Option<String>, String);

/// Takes one news of the peer's inside `tx` (the rules are
/// [`Store::apply_job_news`]'s). Returns before writing when the news is
/// not taken.
fn apply_news_in(
    tx: &Transaction<'_>,
    sender: ServerId,
    news: &JobNews,
    state: JobState,
    now: DateTime<Utc>,
    delivery: &[&str],
) -> Result<NewsTaken, StoreError> {
    let id = news.job.to_string();
    let held: Option<(String, i64)> = tx
        .query_row(
            "SELECT owner_server, owner_term FROM jobs WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((owner, term)) = held else {
        return Ok(NewsTaken::Stale);
    };
    let term = term as u64;
    let owner = server(&owner)?;
    if news.owner_term < term {
        // The sender has not learnt that the job moved on (a takeover
        // or handover it has yet to apply): its news is not confirmed,
        // so it cannot start a delivery of a job that is no longer its.
        return Ok(NewsTaken::Behind);
    }
    let newer_term = news.owner_term > term;
    if newer_term && owner != sender && news.owner != owner {
        // A job this server owns, taken by the sender: that comes with
        // the sender's takeover announcement (which finds the steps
        // both ran), never with news alone.
        return Ok(NewsTaken::NotYet);
    }
    let from_owner =
        news.owner == sender && (newer_term || (news.owner_term == term && owner == sender));
    if !newer_term && !from_owner {
        return Ok(NewsTaken::Stale);
    }
    if newer_term {
        tx.execute(
            "UPDATE jobs SET owner_server = ?2, owner_term = ?3 WHERE id = ?1",
            params![id, news.owner.to_string(), news.owner_term as i64],
        )?;
    }
    if from_owner {
        tx.execute(
            "UPDATE jobs SET state = ?2, reason = ?3, updated_at = ?4,
                 replica_done_at = CASE WHEN ?2 = 'done' THEN coalesce(replica_done_at, ?5) END
             WHERE id = ?1",
            params![
                id,
                state.as_str(),
                news.reason,
                time_text(news.updated_at),
                time_text(now)
            ],
        )?;
        tx.execute("DELETE FROM job_steps WHERE job_id = ?1", [&id])?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO job_steps (job_id, step, attempt, plugin, started_at, finished_at, outcome, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for s in &news.steps {
            insert.execute(params![
                id,
                s.step,
                s.attempt,
                s.plugin,
                time_text(s.started_at),
                s.finished_at.map(time_text),
                s.outcome,
                s.reason
            ])?;
        }
    }
    if newer_term && news.owner != sender {
        // Handed to this server: the steps whose output stayed on the
        // sender run again here; done deliveries stay done.
        forget_local_steps(tx, news.job, delivery)?;
    }
    // The peer knows this; only later changes go back to it.
    tx.execute("UPDATE jobs SET peer_rev = rev WHERE id = ?1", [&id])?;
    Ok(NewsTaken::Applied)
}

fn server(text: &str) -> Result<ServerId, StoreError> {
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("job server id `{text}`: {e}")))
}

impl Store {
    /// Jobs the peer holds a copy of whose progress or owner changed since
    /// the peer last acknowledged, oldest change first.
    ///
    /// News already on its way (`(job, rev)` in `in_flight`) is passed
    /// over, so a slow peer is not sent the same news again and again.
    pub fn job_news(
        &self,
        limit: u32,
        in_flight: &HashMap<Uuid, u64>,
    ) -> Result<Vec<JobNews>, StoreError> {
        let conn = self.conn();
        let rows: Vec<NewsRow> = {
            let mut stmt = conn.prepare_cached(
                "SELECT id, rev, owner_server, owner_term, state, reason, updated_at FROM jobs
                 WHERE rev > peer_rev AND replica_state IN ('replicated', 'replica')
                   AND superseded_by IS NULL
                 ORDER BY updated_at LIMIT ?1",
            )?;
            let scan = u64::from(limit) + in_flight.len() as u64;
            stmt.query_map([scan as i64], |r| {
                Ok((
                    uuid_col(r, 0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?
            .collect::<Result<Vec<NewsRow>, _>>()?
            .into_iter()
            .filter(|row| in_flight.get(&row.0) != Some(&(row.1 as u64)))
            .take(limit as usize)
            .collect::<Vec<NewsRow>>()
        };
        let mut out = Vec::with_capacity(rows.len());
        for (job, rev, owner, term, state, reason, updated) in rows {
            out.push(JobNews {
                job,
                rev: rev as u64,
                owner: server(&owner)?,
                owner_term: term as u64,
                state,
                reason,
                updated_at: parse_time(&updated)?,
                steps: step_rows(&conn, job)?,
            });
        }
        Ok(out)
    }

    /// The peer acknowledged the job's news up to `rev`.
    pub fn mark_peer_rev(&self, id: Uuid, rev: u64) -> Result<(), StoreError> {
        self.mark_peer_revs(&[(id, rev)])
    }

    /// [`Store::mark_peer_rev`] for many acknowledgements, in one
    /// transaction.
    pub fn mark_peer_revs(&self, acks: &[(Uuid, u64)]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut mark =
                tx.prepare_cached("UPDATE jobs SET peer_rev = max(peer_rev, ?2) WHERE id = ?1")?;
            for (id, rev) in acks {
                mark.execute(params![id.to_string(), *rev as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Takes the peer's news of a job. Rules:
    /// - a higher ownership term is taken whoever sent it (a takeover or
    ///   handover this server had not heard of), with the progress if the
    ///   sender is the new owner;
    /// - in the same term, progress is taken only from the owner;
    /// - anything else is older than what this server holds and changes
    ///   nothing.
    ///
    /// A job handed to this server (a higher term naming another owner
    /// than the sender: this server) keeps only its delivery records
    /// (`delivery` names the delivering plugins), as after a takeover.
    ///
    /// `now` (this server's clock) records when a job not owned here was
    /// learnt to be done (the retention of its pages counts from it).
    /// What was taken is marked as known to the peer, so it is not sent
    /// back.
    pub fn apply_job_news(
        &self,
        sender: ServerId,
        news: &JobNews,
        now: DateTime<Utc>,
        delivery: &[&str],
    ) -> Result<NewsTaken, StoreError> {
        let mut taken =
            self.apply_job_news_batch(sender, std::slice::from_ref(news), now, delivery)?;
        taken.pop().unwrap_or_else(|| Ok(NewsTaken::Stale))
    }

    /// [`Store::apply_job_news`] for many news of one sender, in one
    /// transaction (one flush for all). The outer error is the store's
    /// (nothing was taken); an inner one is about that news alone (an
    /// unknown state), and the rest is taken.
    pub fn apply_job_news_batch(
        &self,
        sender: ServerId,
        news: &[JobNews],
        now: DateTime<Utc>,
        delivery: &[&str],
    ) -> Result<Vec<Result<NewsTaken, StoreError>>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(news.len());
        for one in news {
            out.push(match JobState::from_name(&one.state) {
                Some(state) => Ok(apply_news_in(&tx, sender, one, state, now, delivery)?),
                None => Err(StoreError::Corrupt(format!(
                    "the peer sent an unknown job state `{}`",
                    one.state
                ))),
            });
        }
        tx.commit()?;
        Ok(out)
    }

    /// The peer `from` is silent and its lease is over: every unfinished
    /// job it owns that this server holds becomes this server's, in the
    /// next ownership term, back in the queue. Attempts it had running are
    /// closed as interrupted (they run again here). Deliveries recorded
    /// done stay done (their destinations are skipped); the records of the
    /// other steps are dropped, since their output stayed on the silent
    /// server: they run again here. `delivery` names the delivering
    /// plugins. Recorded with the takeover's count and `epoch`, in one
    /// transaction.
    pub fn take_over_jobs(
        &self,
        me: ServerId,
        from: ServerId,
        count: u64,
        epoch: Epoch,
        now: DateTime<Utc>,
        delivery: &[&str],
    ) -> Result<Takeover, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut taken = Takeover::default();
        for id in unfinished_of(&tx, from, false)? {
            taken.cut_short(
                id,
                close_running(
                    &tx,
                    id,
                    now,
                    "the owner went silent while this attempt ran there; the job was taken over and the step runs again",
                )?,
            );
            let from_step = completed_steps(&tx, id)?;
            forget_local_steps(&tx, id, delivery)?;
            tx.execute(
                "UPDATE jobs SET owner_server = ?2, owner_term = owner_term + 1, state = 'received',
                     updated_at = ?3, taken_over_from = ?4, taken_over_at = ?3, takeover_epoch = ?5,
                     takeover_count = ?6, taken_at_step = ?7
                 WHERE id = ?1",
                params![
                    id.to_string(),
                    me.to_string(),
                    time_text(now),
                    from.to_string(),
                    epoch.to_string(),
                    count as i64,
                    from_step
                ],
            )?;
            taken.jobs.push(id);
        }
        tx.commit()?;
        Ok(taken)
    }

    /// Every job this server holds by a takeover from `peer`, for the
    /// announcement the peer must apply before it gets a lease again.
    pub fn takeovers_for_peer(
        &self,
        me: ServerId,
        peer: ServerId,
    ) -> Result<Vec<TakenJob>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, owner_term, coalesce(taken_at_step, 0) FROM jobs
             WHERE owner_server = ?1 AND taken_over_from = ?2 AND takeover_count IS NOT NULL
             ORDER BY taken_over_at, id",
        )?;
        let rows = stmt.query_map(params![me.to_string(), peer.to_string()], |r| {
            Ok(TakenJob {
                job: uuid_col(r, 0)?,
                owner_term: r.get::<_, i64>(1)? as u64,
                from_step: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Applies the peer's takeover announcement: each job held here in a
    /// lower term becomes `taker`'s. Step attempts this server ran at or
    /// after the step the taker resumed from are reported: both servers
    /// ran that step (a possible duplicate delivery).
    pub fn apply_takeovers(
        &self,
        taker: ServerId,
        jobs: &[TakenJob],
    ) -> Result<TakeoversApplied, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut applied = TakeoversApplied::default();
        for t in jobs {
            let id = t.job.to_string();
            let changed = tx.execute(
                "UPDATE jobs SET owner_server = ?2, owner_term = ?3 WHERE id = ?1 AND owner_term < ?3",
                params![id, taker.to_string(), t.owner_term as i64],
            )?;
            if changed == 0 {
                continue;
            }
            applied.moved.push(t.job);
            let mut stmt = tx.prepare(
                "SELECT DISTINCT step, plugin FROM job_steps WHERE job_id = ?1 AND step >= ?2",
            )?;
            let ran: Vec<(u32, String)> = stmt
                .query_map(params![id, t.from_step], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            applied
                .both_ran
                .extend(ran.into_iter().map(|(s, p)| (t.job, s, p)));
        }
        tx.commit()?;
        Ok(applied)
    }

    /// A clean stop with a LIVE peer: every unfinished job this server owns
    /// that the peer holds a copy of becomes the peer's, in the next term,
    /// at the first step not done (attempts cut short by the stop are
    /// closed as interrupted). Returns the jobs handed over and the
    /// attempts closed.
    pub fn hand_over_jobs(
        &self,
        me: ServerId,
        to: ServerId,
        now: DateTime<Utc>,
    ) -> Result<Takeover, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut handed = Takeover::default();
        for id in unfinished_of(&tx, me, true)? {
            handed.cut_short(
                id,
                close_running(
                    &tx,
                    id,
                    now,
                    "the server stopped cleanly while this attempt ran; the job was handed to the peer",
                )?,
            );
            tx.execute(
                "UPDATE jobs SET owner_server = ?2, owner_term = owner_term + 1, state = 'received',
                     updated_at = ?3
                 WHERE id = ?1",
                params![id.to_string(), to.to_string(), time_text(now)],
            )?;
            handed.jobs.push(id);
        }
        tx.commit()?;
        Ok(handed)
    }

    /// How many of `jobs` still have news the peer has not acknowledged.
    pub fn unacknowledged(&self, jobs: &[Uuid]) -> Result<u64, StoreError> {
        let ids = serde_json::to_string(&jobs.iter().map(Uuid::to_string).collect::<Vec<_>>())
            .expect("ids serialise");
        Ok(self.conn().query_row(
            "SELECT count(*) FROM jobs WHERE id IN (SELECT value FROM json_each(?1)) AND rev > peer_rev",
            [ids],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Whether the peer has acknowledged the job's news up to revision
    /// `rev` (which needs its copy of the job first). `None`: no such job.
    pub fn peer_knows(&self, id: Uuid, rev: u64) -> Result<Option<bool>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT replica_state <> 'local' AND peer_rev >= ?2 FROM jobs WHERE id = ?1",
                params![id.to_string(), rev as i64],
                |r| r.get::<_, bool>(0),
            )
            .optional()?)
    }

    /// The job's current revision.
    pub fn job_rev(&self, id: Uuid) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT rev FROM jobs WHERE id = ?1",
            [id.to_string()],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Forgets an attempt that was recorded as started but never ran (the
    /// peer did not confirm it in time): it does not count as an attempt.
    pub fn forget_unrun_attempt(
        &self,
        id: Uuid,
        step: u32,
        attempt: u32,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM job_steps WHERE job_id = ?1 AND step = ?2 AND attempt = ?3 AND finished_at IS NULL",
            params![id.to_string(), step, attempt],
        )?;
        Ok(())
    }

    /// How many jobs this server owns are in a pipeline step now.
    pub fn processing_count(&self, me: ServerId) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT count(*) FROM jobs WHERE owner_server = ?1 AND state = 'processing'",
            [me.to_string()],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Jobs this server took over that are not finished yet.
    pub fn open_takeovers(&self, me: ServerId) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT count(*) FROM jobs WHERE owner_server = ?1 AND takeover_count IS NOT NULL
               AND taken_over_from IS NOT NULL AND state IN ('received', 'processing')",
            [me.to_string()],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Puts a job this server owns that a worker had to leave (no permit,
    /// or the server is stopping) back in the queue.
    pub fn requeue_job(&self, id: Uuid, me: ServerId) -> Result<bool, StoreError> {
        Ok(self.conn().execute(
            "UPDATE jobs SET state = 'received' WHERE id = ?1 AND owner_server = ?2 AND state = 'processing'",
            params![id.to_string(), me.to_string()],
        )? > 0)
    }
}

/// The unfinished jobs `owner` owns, oldest first, and with `copied` only
/// those the other server holds a copy of.
fn unfinished_of(
    tx: &Transaction<'_>,
    owner: ServerId,
    copied: bool,
) -> Result<Vec<Uuid>, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT id FROM jobs WHERE owner_server = ?1 AND state IN ('received', 'processing')
           AND superseded_by IS NULL
           AND (?2 = 0 OR replica_state IN ('replicated', 'replica'))
         ORDER BY received_at, id",
    )?;
    let ids = stmt
        .query_map(params![owner.to_string(), copied], |r| uuid_col(r, 0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// Closes the job's running attempts as interrupted with `why`; returns
/// their `(step, plugin)`.
fn close_running(
    tx: &Transaction<'_>,
    id: Uuid,
    now: DateTime<Utc>,
    why: &str,
) -> Result<Vec<(u32, String)>, StoreError> {
    let running: Vec<(u32, String)> = {
        let mut stmt = tx.prepare(
            "SELECT step, plugin FROM job_steps WHERE job_id = ?1 AND finished_at IS NULL",
        )?;
        stmt.query_map([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    if !running.is_empty() {
        tx.execute(
            "UPDATE job_steps SET finished_at = ?2, outcome = 'interrupted', reason = ?3
             WHERE job_id = ?1 AND finished_at IS NULL",
            params![id.to_string(), time_text(now), why],
        )?;
    }
    Ok(running)
}

/// Drops the records of a job's steps that are not deliveries (their output
/// lives in the work directory of the server that ran them), so they run
/// again on the job's new owner; done deliveries keep their record and are
/// skipped there.
fn forget_local_steps(tx: &Transaction<'_>, id: Uuid, delivery: &[&str]) -> Result<(), StoreError> {
    let delivery = serde_json::to_string(delivery).expect("names serialise");
    tx.execute(
        "DELETE FROM job_steps WHERE job_id = ?1 AND plugin NOT IN (SELECT value FROM json_each(?2))",
        params![id.to_string(), delivery],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::sample_job;

    const ME: ServerId = ServerId::from_u128(1);
    const PEER: ServerId = ServerId::from_u128(2);
    const DELIVERY: &[&str] = &["folder", "mail", "webhook"];

    fn replica_of_peer(store: &Store) -> Uuid {
        let id = Uuid::new_v4();
        let mut job = sample_job(id);
        job.acceptor = PEER;
        let seq = store
            .conn()
            .query_row("SELECT count(*) + 1 FROM jobs", [], |r| r.get::<_, i64>(0));
        assert!(store.insert_replica(&job, seq.unwrap() as u64).unwrap());
        id
    }

    fn news(store: &Store, id: Uuid) -> JobNews {
        let job = store.job(id).unwrap().unwrap();
        JobNews {
            job: id,
            rev: 9,
            owner: job.owner_server,
            owner_term: 0,
            state: job.state.as_str().into(),
            reason: None,
            updated_at: Utc::now(),
            steps: store.job_steps(id).unwrap(),
        }
    }

    #[test]
    fn every_change_of_state_owner_or_step_counts_a_revision() {
        let store = Store::open_in_memory().unwrap();
        let id = Uuid::new_v4();
        store.insert_job(&sample_job(id)).unwrap();
        let rev = |s: &Store| {
            s.conn()
                .query_row(
                    "SELECT rev FROM jobs WHERE id = ?1",
                    [id.to_string()],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
        };
        assert_eq!(rev(&store), 0);
        store.set_job_state(id, JobState::Processing, None).unwrap();
        assert_eq!(rev(&store), 1);
        assert!(store.step_started(id, 0, "ocr", 1, Utc::now(), ME).unwrap());
        assert_eq!(rev(&store), 2);
        store
            .step_finished(id, 0, 1, "done", None, Utc::now())
            .unwrap();
        assert_eq!(rev(&store), 3);
    }

    #[test]
    fn a_step_starts_only_on_the_owner() {
        let store = Store::open_in_memory().unwrap();
        let id = replica_of_peer(&store);
        assert!(
            !store.step_started(id, 0, "ocr", 1, Utc::now(), ME).unwrap(),
            "the peer's job"
        );
        assert!(store.job_steps(id).unwrap().is_empty());
    }

    #[test]
    fn a_takeover_moves_unfinished_jobs_to_the_next_term_and_keeps_done_deliveries() {
        let store = Store::open_in_memory().unwrap();
        let (running, waiting, done) = (
            replica_of_peer(&store),
            replica_of_peer(&store),
            replica_of_peer(&store),
        );
        let now = Utc::now();
        // The owner's news: `running` had OCR and assembly done, its mail
        // delivered, and was in the middle of a webhook delivery.
        let mut n = news(&store, running);
        n.state = "processing".into();
        let step = |step, plugin: &str, outcome: Option<&str>| StepRow {
            step,
            attempt: 1,
            plugin: plugin.into(),
            started_at: now,
            finished_at: outcome.map(|_| now),
            outcome: outcome.map(str::to_owned),
            reason: None,
        };
        n.steps = vec![
            step(0, "ocr", Some("done")),
            step(1, "assemble", Some("done")),
            step(2, "mail", Some("done")),
            step(3, "webhook", None),
        ];
        assert_eq!(
            store.apply_job_news(PEER, &n, now, DELIVERY).unwrap(),
            NewsTaken::Applied
        );
        let mut d = news(&store, done);
        d.state = "done".into();
        assert_eq!(
            store.apply_job_news(PEER, &d, now, DELIVERY).unwrap(),
            NewsTaken::Applied
        );

        let epoch = Epoch::new(3, ME);
        let taken = store
            .take_over_jobs(ME, PEER, 1, epoch, now, DELIVERY)
            .unwrap();
        assert_eq!(taken.jobs.len(), 2, "the done job stays where it is");
        assert!(taken.jobs.contains(&running) && taken.jobs.contains(&waiting));
        assert_eq!(taken.in_flight, vec![(running, 3, "webhook".to_owned())]);
        let job = store.job(running).unwrap().unwrap();
        assert_eq!((job.owner_server, job.state), (ME, JobState::Received));
        // OCR and assembly run again here (their output stayed on the
        // peer); the done mail is kept and skipped.
        let steps = store.job_steps(running).unwrap();
        let kept: Vec<(u32, &str, Option<&str>)> = steps
            .iter()
            .map(|s| (s.step, s.plugin.as_str(), s.outcome.as_deref()))
            .collect();
        assert_eq!(
            kept,
            vec![
                (2, "mail", Some("done")),
                (3, "webhook", Some("interrupted"))
            ]
        );
        let announced = store.takeovers_for_peer(ME, PEER).unwrap();
        let r = announced.iter().find(|t| t.job == running).unwrap();
        assert_eq!((r.owner_term, r.from_step), (1, 3));
        assert_eq!(store.open_takeovers(ME).unwrap(), 2);
        // Claimed by this server's workers now.
        assert!(store.claim_next_job(ME).unwrap().is_some());
        // A second takeover in the same silence finds nothing more.
        let again = store
            .take_over_jobs(ME, PEER, 2, epoch, now, DELIVERY)
            .unwrap();
        assert!(again.jobs.is_empty());
    }

    #[test]
    fn the_owner_applies_a_takeover_once_and_reports_steps_both_ran() {
        let store = Store::open_in_memory().unwrap();
        let (quiet, raced) = (Uuid::new_v4(), Uuid::new_v4());
        store.insert_job(&sample_job(quiet)).unwrap();
        store.insert_job(&sample_job(raced)).unwrap();
        // This server delivered step 2 of `raced` although the peer, which
        // resumed it from step 2, had taken it over.
        for s in 0..3 {
            assert!(
                store
                    .step_started(
                        raced,
                        s,
                        ["ocr", "assemble", "mail"][s as usize],
                        1,
                        Utc::now(),
                        ME
                    )
                    .unwrap()
            );
        }
        let jobs = vec![
            TakenJob {
                job: quiet,
                owner_term: 1,
                from_step: 0,
            },
            TakenJob {
                job: raced,
                owner_term: 1,
                from_step: 2,
            },
        ];
        let applied = store.apply_takeovers(PEER, &jobs).unwrap();
        assert_eq!(applied.moved.len(), 2);
        assert_eq!(applied.both_ran, vec![(raced, 2, "mail".to_owned())]);
        assert_eq!(store.job(quiet).unwrap().unwrap().owner_server, PEER);
        assert!(
            !store
                .step_started(quiet, 0, "ocr", 1, Utc::now(), ME)
                .unwrap(),
            "never run here again"
        );
        // The same announcement again changes nothing.
        let again = store.apply_takeovers(PEER, &jobs).unwrap();
        assert!(again.moved.is_empty() && again.both_ran.is_empty());
    }

    #[test]
    fn news_moves_ownership_only_forward() {
        let store = Store::open_in_memory().unwrap();
        let id = Uuid::new_v4();
        store.insert_job(&sample_job(id)).unwrap();
        store.mark_replicated(id).unwrap();
        let now = Utc::now();
        // The peer took it in term 2 and reports progress: that waits for
        // its takeover announcement.
        let mut n = news(&store, id);
        n.owner = PEER;
        n.owner_term = 2;
        n.state = "processing".into();
        let take = |n: &JobNews| store.apply_job_news(PEER, n, now, DELIVERY).unwrap();
        assert_eq!(take(&n), NewsTaken::NotYet);
        assert_eq!(store.job(id).unwrap().unwrap().owner_server, ME);
        let taken = TakenJob {
            job: id,
            owner_term: 2,
            from_step: 0,
        };
        assert_eq!(
            store.apply_takeovers(PEER, &[taken]).unwrap().moved,
            vec![id]
        );
        assert_eq!(take(&n), NewsTaken::Applied);
        let job = store.job(id).unwrap().unwrap();
        assert_eq!((job.owner_server, job.state), (PEER, JobState::Processing));
        // A late message of term 1 naming this server changes nothing, and
        // is not confirmed: its sender is behind.
        let mut old = n.clone();
        old.owner = ME;
        old.owner_term = 1;
        old.state = "received".into();
        assert_eq!(take(&old), NewsTaken::Behind);
        assert_eq!(store.job(id).unwrap().unwrap().owner_server, PEER);
        // A handover back to this server (term 3, named by the peer).
        let mut back = n.clone();
        back.owner = ME;
        back.owner_term = 3;
        back.state = "received".into();
        assert_eq!(take(&back), NewsTaken::Applied);
        assert_eq!(store.job(id).unwrap().unwrap().owner_server, ME);
    }

    #[test]
    fn news_in_one_batch_is_taken_each_on_its_own_merits() {
        let store = Store::open_in_memory().unwrap();
        let (a, b) = (replica_of_peer(&store), replica_of_peer(&store));
        let mut processing = news(&store, a);
        processing.state = "processing".into();
        let mut garbled = news(&store, b);
        garbled.state = "exploded".into();
        let mut unknown = news(&store, b);
        unknown.job = Uuid::new_v4();
        let mut done = news(&store, b);
        done.state = "done".into();
        let taken = store
            .apply_job_news_batch(
                PEER,
                &[processing, garbled, unknown, done],
                Utc::now(),
                DELIVERY,
            )
            .unwrap();
        assert_eq!(taken.len(), 4);
        assert!(matches!(taken[0], Ok(NewsTaken::Applied)));
        assert!(
            matches!(&taken[1], Err(StoreError::Corrupt(why)) if why.contains("exploded")),
            "{:?}",
            taken[1]
        );
        assert!(matches!(taken[2], Ok(NewsTaken::Stale)));
        assert!(matches!(taken[3], Ok(NewsTaken::Applied)));
        assert_eq!(store.job(a).unwrap().unwrap().state, JobState::Processing);
        assert_eq!(store.job(b).unwrap().unwrap().state, JobState::Done);
    }

    #[test]
    fn news_on_its_way_is_not_read_again_until_it_changes() {
        let store = Store::open_in_memory().unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for id in [a, b] {
            store.insert_job(&sample_job(id)).unwrap();
            store.mark_replicated(id).unwrap();
            store.set_job_state(id, JobState::Processing, None).unwrap();
        }
        let all = store.job_news(10, &HashMap::new()).unwrap();
        assert_eq!(all.len(), 2);
        let rev_a = all.iter().find(|n| n.job == a).unwrap().rev;
        let on_the_way = HashMap::from([(a, rev_a)]);
        let rest = store.job_news(10, &on_the_way).unwrap();
        assert_eq!(rest.iter().map(|n| n.job).collect::<Vec<_>>(), vec![b]);
        // The limit counts what is read, not what is passed over.
        assert_eq!(store.job_news(1, &on_the_way).unwrap().len(), 1);
        // A newer revision of a job on its way is news again.
        store.set_job_state(a, JobState::Done, None).unwrap();
        let again = store.job_news(10, &on_the_way).unwrap();
        assert!(again.iter().any(|n| n.job == a && n.rev > rev_a));
        store
            .mark_peer_revs(&[(a, u64::MAX >> 1), (b, u64::MAX >> 1)])
            .unwrap();
        assert!(store.job_news(10, &HashMap::new()).unwrap().is_empty());
    }

    #[test]
    fn a_clean_stop_hands_over_only_jobs_the_peer_holds() {
        let store = Store::open_in_memory().unwrap();
        let (copied, alone) = (Uuid::new_v4(), Uuid::new_v4());
        store.insert_job(&sample_job(copied)).unwrap();
        store.insert_job(&sample_job(alone)).unwrap();
        store.mark_replicated(copied).unwrap();
        let handed = store.hand_over_jobs(ME, PEER, Utc::now()).unwrap();
        assert_eq!(handed.jobs, vec![copied]);
        assert_eq!(store.job(copied).unwrap().unwrap().owner_server, PEER);
        assert_eq!(store.job(alone).unwrap().unwrap().owner_server, ME);
        assert_eq!(store.unacknowledged(&[copied]).unwrap(), 1);
        let n = store.job_news(10, &Default::default()).unwrap();
        assert_eq!((n[0].job, n[0].owner, n[0].owner_term), (copied, PEER, 1));
        store.mark_peer_rev(copied, n[0].rev).unwrap();
        assert_eq!(store.unacknowledged(&[copied]).unwrap(), 0);
    }
}
