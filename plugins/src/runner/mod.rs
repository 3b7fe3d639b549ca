//! Running a job through its workflow: resume at the step the job was in,
//! time-limit each step, retry transient failures with exponential backoff,
//! dead-letter permanent ones, and record every start and finish through the
//! gateway's [`ProgressStore`]. It must not know any plugin or any storage
//! engine.
//!
//! The rules:
//! - A step counts as done only once `step_finished(Done)` is stored. A job
//!   resumes at the first step not recorded done, so nothing that completed
//!   is redone and nothing is skipped; a step interrupted by a crash runs
//!   again, which is why steps are idempotent.
//! - Attempts are counted per step, across restarts: the store says how many
//!   the next step already had. A job that crashes the server on every
//!   attempt therefore still ends in the dead-letter state.
//! - A timeout drops the step's future, which kills its child processes and
//!   closes its connections; it counts as a transient failure.
//! - If the store fails, the runner stops with [`JobOutcome::Interrupted`]:
//!   continuing without a record would break the resume guarantee.

mod memory;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use memory::{MemoryStore, StoreEvent};

use crate::job::JobContext;
use crate::plugin::StepError;
use crate::workflow::Workflow;

/// Where a job stands, as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// Steps `0..completed_steps` are done.
    pub completed_steps: usize,
    /// Attempts already started on step `completed_steps`.
    pub attempts_on_next: u32,
}

/// How an attempt ended, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StepRecord {
    /// The step completed.
    Done,
    /// The attempt failed and the step will be tried again.
    Retry {
        /// What went wrong, naming destination and cause.
        reason: String,
    },
    /// The step failed for good; the job is dead-lettered.
    Failed {
        /// What went wrong, naming destination and cause.
        reason: String,
    },
}

/// A failure of the gateway's progress store, or its refusal to let a step
/// start now.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct StoreError {
    error: Box<dyn std::error::Error + Send + Sync>,
    not_now: bool,
}

impl StoreError {
    /// Wraps the store's own error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError {
            error: error.into(),
            not_now: false,
        }
    }

    /// The step may not start now: this server no longer owns the job, or
    /// may not start steps at the moment. The run stops as
    /// [`JobOutcome::Yielded`]; nothing failed.
    pub fn not_now(reason: impl Into<String>) -> Self {
        StoreError {
            error: reason.into().into(),
            not_now: true,
        }
    }

    /// Whether this is [`StoreError::not_now`].
    pub fn is_not_now(&self) -> bool {
        self.not_now
    }
}

/// Durable job progress, implemented by the gateway over its database. The
/// methods are synchronous and short; the runner calls them on the blocking
/// pool.
pub trait ProgressStore: Send + Sync + 'static {
    /// Where `job` stands.
    fn load(&self, job: Uuid) -> Result<JobProgress, StoreError>;
    /// Steps recorded done (the runner skips those after
    /// `completed_steps`): a job handed or taken over from the other
    /// server of a pair keeps its done deliveries (their destinations must
    /// not get the document twice) while the steps whose output stayed on
    /// that server run again. None by default.
    fn done_later(&self, job: Uuid) -> Result<Vec<usize>, StoreError> {
        let _ = job;
        Ok(Vec::new())
    }
    /// An attempt of `step` (counting from 0) begins.
    fn step_started(
        &self,
        job: Uuid,
        step: usize,
        plugin: &str,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// An attempt of `step` ended with `outcome`.
    fn step_finished(
        &self,
        job: Uuid,
        step: usize,
        attempt: u32,
        outcome: &StepRecord,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

/// Retry and timeout rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per step before the job is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failed attempt; it doubles after each one.
    pub base_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// A step's time limit unless its `timeout_secs` setting says otherwise.
    pub step_timeout: Duration,
}

impl Default for RetryPolicy {
    /// Five attempts spread over about seven minutes (waits of 5 s, 20 s,
    /// 80 s and 300 s): long enough to ride out a mail server restart, short
    /// enough that a dead destination surfaces within the hour.
    /// Fifteen minutes per step covers OCR of a few hundred pages.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            step_timeout: Duration::from_secs(15 * 60),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (counting from 1): the base
    /// times 4 to the power of `attempt - 1`, capped. Quadrupling spreads few
    /// attempts over a useful span.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        self.base_backoff
            .saturating_mul(4u32.saturating_pow(exponent))
            .min(self.max_backoff)
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JobOutcome {
    /// Every step is done.
    Done,
    /// A step failed for good; the job needs an admin.
    DeadLetter {
        /// The failed step, counting from 0.
        step: usize,
        /// Its plugin.
        plugin: String,
        /// Why, naming destination and cause.
        reason: String,
    },
    /// The progress store failed; stop, and run the job again later.
    Interrupted {
        /// What the store said.
        reason: String,
    },
    /// The store would not let the next step start (the job was taken over
    /// or handed over, or this server may not start steps now): the run
    /// stopped between steps, with nothing left running.
    Yielded {
        /// Why, as the store said.
        reason: String,
    },
}

/// Runs jobs with one [`RetryPolicy`].
#[derive(Clone, Debug, Default)]
pub struct JobRunner {
    policy: RetryPolicy,
}

impl JobRunner {
    /// A runner with `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        JobRunner { policy }
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Runs `job` through `workflow` from where the store says it stands.
    /// Dropping the returned future stops the job's work, child processes
    /// included; the job then resumes at the same step on the next run.
    pub async fn run(
        &self,
        workflow: &Workflow,
        job: &JobContext,
        store: Arc<dyn ProgressStore>,
    ) -> JobOutcome {
        let id = job.job_id;
        let (progress, done_later) = {
            let store = Arc::clone(&store);
            match call(move || Ok((store.load(id)?, store.done_later(id)?))).await {
                Ok(p) => p,
                Err(reason) => return JobOutcome::Interrupted { reason },
            }
        };
        let mut step = progress.completed_steps;
        let mut attempts_made = progress.attempts_on_next;
        let max_attempts = self.policy.max_attempts.max(1);
        while step < workflow.len() {
            if step > progress.completed_steps && done_later.contains(&step) {
                tracing::info!(job = %id, step, "step already done; skipped");
                step += 1;
                attempts_made = 0;
                continue;
            }
            let plugin = workflow.step(step);
            let name = plugin.name();
            if attempts_made >= max_attempts {
                // Earlier runs used up the budget without recording an end
                // (the server stopped during each of them).
                let reason = format!(
                    "gave up after {attempts_made} attempts of step {} (`{name}`); none of them finished",
                    step + 1
                );
                return self
                    .dead_letter(&store, id, step, name, attempts_made, reason)
                    .await;
            }
            let attempt = attempts_made + 1;
            {
                let store = Arc::clone(&store);
                let started = tokio::task::spawn_blocking(move || {
                    store.step_started(id, step, name, attempt, Utc::now())
                })
                .await;
                match started {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if e.is_not_now() => {
                        tracing::info!(job = %id, step, plugin = name, reason = %e, "step not started");
                        return JobOutcome::Yielded {
                            reason: e.to_string(),
                        };
                    }
                    Ok(Err(e)) => {
                        return JobOutcome::Interrupted {
                            reason: format!("progress store failed: {e}"),
                        };
                    }
                    Err(e) => {
                        return JobOutcome::Interrupted {
                            reason: format!("progress store call failed: {e}"),
                        };
                    }
                }
            }
            tracing::info!(job = %id, workflow = workflow.name(), step, plugin = name, attempt, "step started");
            let limit = plugin.timeout().unwrap_or(self.policy.step_timeout);
            let result = match tokio::time::timeout(limit, plugin.run(job)).await {
                Ok(result) => result,
                Err(_) => Err(StepError::transient(format!(
                    "step {} (`{name}`) did not finish within {}s and was stopped",
                    step + 1,
                    limit.as_secs_f64()
                ))),
            };
            match result {
                Ok(()) => {
                    if let Err(reason) = self
                        .finish(&store, id, step, attempt, StepRecord::Done)
                        .await
                    {
                        return JobOutcome::Interrupted { reason };
                    }
                    tracing::info!(job = %id, step, plugin = name, attempt, "step done");
                    step += 1;
                    attempts_made = 0;
                }
                Err(StepError::Transient(reason)) if attempt < max_attempts => {
                    let wait = self.policy.backoff(attempt);
                    tracing::warn!(job = %id, step, plugin = name, attempt, %reason, retry_in = ?wait, "step failed; will retry");
                    let record = StepRecord::Retry { reason };
                    if let Err(reason) = self.finish(&store, id, step, attempt, record).await {
                        return JobOutcome::Interrupted { reason };
                    }
                    tokio::time::sleep(wait).await;
                    attempts_made = attempt;
                }
                Err(StepError::Transient(reason)) => {
                    let reason = format!("{reason} (gave up after {attempt} attempts)");
                    return self
                        .dead_letter(&store, id, step, name, attempt, reason)
                        .await;
                }
                Err(StepError::Permanent(reason)) => {
                    return self
                        .dead_letter(&store, id, step, name, attempt, reason)
                        .await;
                }
            }
        }
        JobOutcome::Done
    }

    async fn finish(
        &self,
        store: &Arc<dyn ProgressStore>,
        id: Uuid,
        step: usize,
        attempt: u32,
        record: StepRecord,
    ) -> Result<(), String> {
        let store = Arc::clone(store);
        call(move || store.step_finished(id, step, attempt, &record, Utc::now())).await
    }

    async fn dead_letter(
        &self,
        store: &Arc<dyn ProgressStore>,
        id: Uuid,
        step: usize,
        plugin: &str,
        attempt: u32,
        reason: String,
    ) -> JobOutcome {
        tracing::error!(job = %id, step, plugin, attempt, %reason, "step failed for good; job dead-lettered");
        let record = StepRecord::Failed {
            reason: reason.clone(),
        };
        if let Err(store_reason) = self.finish(store, id, step, attempt, record).await {
            return JobOutcome::Interrupted {
                reason: store_reason,
            };
        }
        JobOutcome::DeadLetter {
            step,
            plugin: plugin.to_string(),
            reason,
        }
    }
}

/// Calls the store on the blocking pool.
async fn call<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("progress store failed: {e}")),
        Err(e) => Err(format!("progress store call failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_fourfold_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            step_timeout: Duration::from_secs(1),
        };
        let waits: Vec<u64> = (1..=6).map(|a| policy.backoff(a).as_secs()).collect();
        assert_eq!(waits, vec![5, 20, 80, 300, 300, 300]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(300));
    }
}
