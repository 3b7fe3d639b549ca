//! An in-memory [`ProgressStore`] for tools (the OCR benchmark) and tests:
//! it keeps progress per job and a log of every call. It must not be used
//! where progress has to survive a restart.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{JobProgress, ProgressStore, StepRecord, StoreError};

/// One call the runner made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    /// `step_started`.
    Started {
        /// The step, counting from 0.
        step: usize,
        /// Its plugin.
        plugin: String,
        /// The attempt, counting from 1.
        attempt: u32,
    },
    /// `step_finished`.
    Finished {
        /// The step, counting from 0.
        step: usize,
        /// The attempt, counting from 1.
        attempt: u32,
        /// How it ended.
        outcome: StepRecord,
    },
}

/// Progress kept in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    progress: HashMap<Uuid, JobProgress>,
    events: HashMap<Uuid, Vec<StoreEvent>>,
    fail_next: usize,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets where `job` stands, as if earlier runs had got that far.
    pub fn set_progress(&self, job: Uuid, progress: JobProgress) {
        self.lock().progress.insert(job, progress);
    }

    /// Where `job` stands.
    pub fn progress(&self, job: Uuid) -> JobProgress {
        self.lock().progress.get(&job).copied().unwrap_or_default()
    }

    /// Every call made for `job`, in order.
    pub fn events(&self, job: Uuid) -> Vec<StoreEvent> {
        self.lock().events.get(&job).cloned().unwrap_or_default()
    }

    /// Makes the next `calls` calls fail, to exercise the runner's handling
    /// of a broken store.
    pub fn fail_next_calls(&self, calls: usize) {
        self.lock().fail_next = calls;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data behind (each
        // update is a single insert), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(state: &mut State) -> Result<(), StoreError> {
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return Err(StoreError::new("the store is unavailable (simulated)"));
        }
        Ok(())
    }
}

impl ProgressStore for MemoryStore {
    fn load(&self, job: Uuid) -> Result<JobProgress, StoreError> {
        let mut state = self.lock();
        Self::check(&mut state)?;
        Ok(state.progress.get(&job).copied().unwrap_or_default())
    }

    fn step_started(
        &self,
        job: Uuid,
        step: usize,
        plugin: &str,
        attempt: u32,
        _at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        Self::check(&mut state)?;
        state.progress.insert(
            job,
            JobProgress {
                completed_steps: step,
                attempts_on_next: attempt,
            },
        );
        state
            .events
            .entry(job)
            .or_default()
            .push(StoreEvent::Started {
                step,
                plugin: plugin.to_string(),
                attempt,
            });
        Ok(())
    }

    fn step_finished(
        &self,
        job: Uuid,
        step: usize,
        attempt: u32,
        outcome: &StepRecord,
        _at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        Self::check(&mut state)?;
        if *outcome == StepRecord::Done {
            state.progress.insert(
                job,
                JobProgress {
                    completed_steps: step + 1,
                    attempts_on_next: 0,
                },
            );
        }
        state
            .events
            .entry(job)
            .or_default()
            .push(StoreEvent::Finished {
                step,
                attempt,
                outcome: outcome.clone(),
            });
        Ok(())
    }
}
