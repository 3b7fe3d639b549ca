//! The pipeline worker pool. It follows the data service: while the data
//! service is up, `workers` tasks take received jobs oldest first and run
//! their workflow through the plugin runner; when it goes down they are
//! stopped at once (each job resumes at the step it was in, because the
//! runner records every step attempt in the store before and after it runs).
//! A worker that panics takes the data service down as "crashed", and the
//! supervisor brings it back.
//!
//! Maintenance mode does not stop the pool: accepted jobs drain.
//!
//! Once the instance shuts down the pool never starts workers again: every
//! wait below looks at the shutdown signal first, and the workers are
//! spawned while the signal is held, so the instance's "shutdown requested"
//! can never be followed by "pipeline workers started". Workers already
//! running are stopped by a separate `stop` signal, which the instance
//! raises after its web service stopped taking connections: shutdown is one
//! ordered sequence, not a race between the adapters.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pair_core::ServerId;
use plugins::{
    JobContext, JobOutcome, JobProgress, JobRunner, PageFile, PageFormat, ProgressStore,
    RetryPolicy, StepRecord,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::core::Core;
use crate::data::{DataParts, DownReason};
use crate::manifest::Manifest;
use crate::store::{JobState, Store};

/// How long an idle worker sleeps when no commit woke it.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Runs until the instance shuts down: until `stop` is raised, or the
/// shutdown signal while no workers run. Each time the data service comes
/// up, the store-dependent state (role, configuration) is loaded first and
/// the workers start only after it: a worker must never see a job before
/// the configuration that says what to do with it.
pub async fn run_pool(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut data = core.data.subscribe();
    let mut shutdown = core.shutdown_signal();
    loop {
        if *shutdown.borrow() || *stop.borrow() {
            return;
        }
        // Wait for the data service. `biased`: when several are ready, the
        // shutdown wins (an unbiased select picks at random).
        let state = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return,
            _ = stop.wait_for(|s| *s) => return,
            s = data.wait_for(|s| s.up) => match s { Ok(s) => s.clone(), Err(_) => return },
        };
        let generation = state.generation;
        if let Err(e) = core.load_generation(generation).await {
            tracing::error!(
                error = e,
                "data service came up but its contents could not be loaded"
            );
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return,
                _ = stop.wait_for(|s| *s) => return,
                _ = data.wait_for(|s| !s.up || s.generation != generation) => continue,
            }
        }
        let Ok(parts) = core.data.parts() else {
            continue;
        };
        let Some(me) = core.server_id() else { continue };
        let runner = Arc::new(JobRunner::new(retry_policy(&core)));
        let mut set = JoinSet::new();
        {
            // Holding the signal's value blocks `Core::request_shutdown`
            // until the workers are spawned and announced: a shutdown is
            // either seen here, or requested (and logged) after this.
            let stopping = shutdown.borrow();
            if *stopping {
                return;
            }
            for _ in 0..core.settings.instance.workers {
                set.spawn(worker(core.clone(), parts.clone(), runner.clone(), me));
            }
            tracing::info!(
                workers = core.settings.instance.workers,
                "pipeline workers started"
            );
        }
        drop(parts);
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => {}
            _ = data.wait_for(|s| !s.up || s.generation != generation) => {}
            Some(ended) = set.join_next() => {
                if let Err(e) = ended
                    && e.is_panic()
                {
                    core.data.fail(DownReason::Crashed, &format!("a pipeline worker crashed: {e}"));
                }
            }
        }
        // Workers stop at once; a step attempt cut short is closed as
        // interrupted (by `DataService::close` on shutdown, by recovery
        // otherwise) and the job resumes at that step.
        set.abort_all();
        while set.join_next().await.is_some() {}
        tracing::info!("pipeline workers stopped");
    }
}

fn retry_policy(core: &Core) -> RetryPolicy {
    RetryPolicy {
        max_attempts: core.settings.instance.max_attempts,
        step_timeout: core.settings.instance.step_timeout,
        ..RetryPolicy::default()
    }
}

/// Takes jobs this server owns (`me`), one at a time.
async fn worker(core: Arc<Core>, parts: Arc<DataParts>, runner: Arc<JobRunner>, me: ServerId) {
    loop {
        if core.pipeline_paused() {
            let _ = tokio::time::timeout(IDLE_POLL, core.job_ready.notified()).await;
            continue;
        }
        // No job is taken while no step may start (no lease from the peer,
        // or a clean stop hands the jobs over).
        if core.ownership.check().is_err() {
            core.ownership.wait(IDLE_POLL).await;
            continue;
        }
        let store = parts.store.clone();
        // Jobs found unreplicated at start-up wait until the peer has seen
        // them: it may hold the same id (accepted while this server was
        // down), and then only one of the two may deliver it.
        let held = core.peer_acks.held();
        let claimed =
            tokio::task::spawn_blocking(move || store.claim_next_job_except(me, &held)).await;
        match claimed {
            Ok(Ok(Some(id))) => process(&core, &parts, &runner, id, me).await,
            Ok(Ok(None)) => {
                let _ = tokio::time::timeout(IDLE_POLL, core.job_ready.notified()).await;
            }
            Ok(Err(e)) => {
                core.data.classify(e);
                return;
            }
            Err(e) => {
                core.data
                    .fail(DownReason::Crashed, &format!("a database task failed: {e}"));
                return;
            }
        }
    }
}

async fn process(
    core: &Arc<Core>,
    parts: &Arc<DataParts>,
    runner: &JobRunner,
    id: Uuid,
    me: ServerId,
) {
    let store = parts.store.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((
            store.job(id)?,
            store.job_pages(id)?,
            store.pages_removed(id)?,
        ))
    })
    .await;
    let (job, pages) = match loaded {
        Ok(Ok((Some(_), _, true))) => {
            // Its pages went when it was done: it finished here, or its
            // owner reported it done. It came back by a takeover or a
            // handover from a server that had not heard of that (which
            // reports the steps both ran); nothing is delivered again.
            tracing::warn!(job = %id, "a job that was done here before came back to this server; it is recorded done again and not run");
            let store = parts.store.clone();
            let result =
                tokio::task::spawn_blocking(move || store.set_job_state(id, JobState::Done, None))
                    .await;
            if let Ok(Err(e)) = result {
                core.data.classify(e);
            }
            return;
        }
        Ok(Ok((Some(job), pages, false))) => (job, pages),
        Ok(Ok((None, _, _))) => return,
        Ok(Err(e)) => {
            core.data.classify(e);
            return;
        }
        Err(_) => return,
    };
    let finish = |state: JobState, reason: Option<String>| {
        let store = parts.store.clone();
        async move {
            let result = tokio::task::spawn_blocking(move || {
                store.set_job_state(id, state, reason.as_deref())
            })
            .await;
            if let Ok(Err(e)) = result {
                core.data.classify(e);
            }
        }
    };

    let config = core.config.current();
    let workflow = config
        .as_ref()
        .and_then(|c| c.workflows.get(&job.workflow).cloned());
    let Some(workflow) = workflow else {
        let why = config
            .as_ref()
            .and_then(|c| c.broken_workflows.get(&job.workflow).cloned())
            .unwrap_or_else(|| "it is no longer configured".into());
        let reason = format!(
            "workflow `{}` cannot run on this server: {why}",
            job.workflow
        );
        tracing::error!(job = %id, reason, "job failed");
        core.metrics.job_finished(false);
        finish(JobState::Failed, Some(reason)).await;
        return;
    };

    let metadata = serde_json::from_str::<Manifest>(&job.manifest)
        .map(|m| m.metadata)
        .unwrap_or_default();
    let job_dir = parts.spool.job_dir(id);
    let mut page_files = Vec::with_capacity(pages.len());
    for p in &pages {
        // The intake stored the format it sniffed from the content.
        match serde_json::from_value::<PageFormat>(serde_json::Value::String(p.format.clone())) {
            Ok(format) => page_files.push(PageFile {
                path: job_dir.join(&p.file_name),
                format,
            }),
            Err(_) => {
                let reason = format!("page {} has an unknown stored format `{}`", p.seq, p.format);
                core.metrics.job_finished(false);
                finish(JobState::Failed, Some(reason)).await;
                return;
            }
        }
    }
    let pages = page_files;
    let context = JobContext {
        job_id: id,
        workflow: job.workflow.clone(),
        user: job.user.clone(),
        device: device_name(parts, job.device_id).await,
        submitted_at: job.received_at,
        time_zone: core.settings.instance.time_zone,
        metadata,
        pages,
        work_dir: core.paths.work_dir(id),
        reports: Default::default(),
    };
    tracing::info!(job = %id, workflow = job.workflow, "pipeline started");
    let progress: Arc<dyn ProgressStore> = Arc::new(StoreProgress {
        store: parts.store.clone(),
        core: core.clone(),
        me,
    });
    // Workers are aborted when the data service goes down: what the steps
    // reported until then (a delivery made but not recorded, the disk being
    // full) must still reach the admin.
    let _unsaved = ReportsOnAbort {
        parts: parts.clone(),
        job: id,
        reports: context.reports.clone(),
    };
    let outcome = runner.run(&workflow, &context, progress).await;
    record_reports(parts, id, context.reports.take()).await;
    match outcome {
        JobOutcome::Done => {
            tracing::info!(job = %id, "pipeline done");
            core.metrics.job_finished(true);
            finish(JobState::Done, None).await;
            // The delivered document lives at its destinations now; the
            // spool copy and the scratch files are no longer needed.
            // Marked first: a job whose pages are gone is known to be done
            // should it ever come back here (see above).
            let (spool, work) = (parts.spool.clone(), context.work_dir.clone());
            let store = parts.store.clone();
            let now = core.clock.now();
            let _ = tokio::task::spawn_blocking(move || {
                if store.mark_pages_removed(id, now).is_ok() {
                    let _ = spool.remove_job(id);
                }
                let _ = std::fs::remove_dir_all(work);
            })
            .await;
        }
        JobOutcome::DeadLetter {
            step,
            plugin,
            reason,
        } => {
            let reason = format!("step {} ({plugin}) failed: {reason}", step + 1);
            tracing::error!(job = %id, reason, "job moved to the dead-letter state");
            core.metrics.job_finished(false);
            finish(JobState::Failed, Some(reason)).await;
        }
        JobOutcome::Yielded { reason } => {
            // Between two steps: nothing runs. A job still owned here goes
            // back to the queue; one taken or handed over is its new
            // owner's, who reports its progress.
            let store = parts.store.clone();
            let requeued = tokio::task::spawn_blocking(move || store.requeue_job(id, me)).await;
            match requeued {
                Ok(Ok(true)) => tracing::info!(job = %id, reason, "job back in the queue"),
                Ok(Ok(false)) => tracing::info!(job = %id, reason, "job left to its new owner"),
                Ok(Err(e)) => {
                    core.data.classify(e);
                }
                Err(_) => {}
            }
        }
        JobOutcome::Interrupted { reason } => {
            // The store failed under the runner: the job stays `processing`
            // and goes back to the queue when the data service restarts.
            core.data.fail(
                DownReason::Failed,
                &format!("pipeline progress could not be recorded: {reason}"),
            );
        }
    }
}

/// What the job's steps reported for admins (a second copy a destination
/// refused, a name already taken): logged and kept with the pair events.
/// How long a delivery report that cannot be stored (the disk full or
/// failing, as when a delivery could not record itself) is tried again.
const REPORT_RETRY: Duration = Duration::from_secs(1);
const REPORT_TRIES: u32 = 300;

/// Records the reports a run made so far when the run is dropped before it
/// could (its worker aborted mid-step).
struct ReportsOnAbort {
    parts: Arc<DataParts>,
    job: Uuid,
    reports: plugins::JobReports,
}

impl Drop for ReportsOnAbort {
    fn drop(&mut self) {
        let pending = self.reports.take();
        if pending.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (parts, job) = (self.parts.clone(), self.job);
            runtime.spawn(async move { record_reports(&parts, job, pending).await });
        } else {
            tracing::error!(job = %self.job, reports = pending.len(), "delivery reports of an aborted run are lost: no runtime to store them");
        }
    }
}

async fn record_reports(parts: &Arc<DataParts>, job: Uuid, reports: Vec<plugins::DeliveryReport>) {
    if reports.is_empty() {
        return;
    }
    let at = chrono::Utc::now();
    let mut pending: Vec<(String, plugins::DeliveryReport)> = reports
        .into_iter()
        .map(|r| {
            let kind = match serde_json::to_value(r.kind) {
                Ok(serde_json::Value::String(k)) => k,
                _ => "delivery_report".to_owned(),
            };
            tracing::warn!(event = kind, %job, plugin = r.plugin, "{}", r.text);
            (kind, r)
        })
        .collect();
    // Stored in the background until it works: the admin must learn of a
    // possible second delivery even when the disk that would hold the
    // report was full at the time.
    let store = parts.store.clone();
    tokio::spawn(async move {
        for attempt in 1..=REPORT_TRIES {
            let batch = std::mem::take(&mut pending);
            let store = store.clone();
            let left = tokio::task::spawn_blocking(move || {
                batch
                    .into_iter()
                    .filter(|(kind, r)| {
                        store
                            .record_pair_event(at, kind, Some(job), None, &r.text)
                            .is_err()
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            if left.is_empty() {
                return;
            }
            if attempt == 1 {
                tracing::error!(%job, reports = left.len(), "a delivery report could not be stored; trying again");
            }
            pending = left;
            tokio::time::sleep(REPORT_RETRY).await;
        }
        tracing::error!(%job, reports = pending.len(), "a delivery report could not be stored and is lost: {:?}", pending.iter().map(|(_, r)| &r.text).collect::<Vec<_>>());
    });
}

async fn device_name(parts: &Arc<DataParts>, device: Uuid) -> String {
    let store = parts.store.clone();
    tokio::task::spawn_blocking(move || store.device(device))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .map_or_else(|| device.to_string(), |d| d.name)
}

/// The runner's view of the store: every step attempt is recorded before
/// and after it runs, and starts only with a permit (the pair's lease, no
/// clean stop under way) and while this server owns the job. A delivery
/// step of a paired server under a lease starts only once the peer holds
/// the job's copy and knows the step began: were this server to die
/// during it, the server taking the job over knows the delivery may have
/// happened, redoes it and reports it (the first exception of the delivery
/// guarantee), instead of delivering again unknowingly.
struct StoreProgress {
    store: Arc<Store>,
    core: Arc<Core>,
    me: ServerId,
}

fn store_error(e: crate::store::StoreError) -> plugins::StoreError {
    plugins::StoreError::new(e.to_string())
}

/// How long a delivery step waits for the peer to confirm it began,
/// before the job goes back to the queue (a loaded pair confirms within
/// milliseconds; this is for a peer that stopped answering).
const PEER_CONFIRM_LIMIT: Duration = Duration::from_secs(10);

impl StoreProgress {
    /// Waits (on the blocking pool) until the peer acknowledged the job's
    /// news up to the step start just recorded. Without a lease (the peer
    /// is silent or stopped, or there is none) nothing can be confirmed
    /// and the step goes on alone.
    fn peer_knows_the_start(&self, job: Uuid) -> Result<(), plugins::StoreError> {
        let rev = self.store.job_rev(job).map_err(store_error)?;
        let leased = |core: &Core| {
            let (permit, allowed, _) = core.ownership.view();
            (matches!(permit, pair_core::Permit::Leased { .. }), allowed)
        };
        if !leased(&self.core).0 && self.core.ownership.check().is_ok() {
            return Ok(());
        }
        let store = &self.store;
        let confirmed = self.core.peer_acks.wait_news_acknowledged(
            job,
            rev,
            PEER_CONFIRM_LIMIT,
            || matches!(store.peer_knows(job, rev), Ok(Some(true))),
            || match leased(&self.core) {
                // Nobody to confirm: the peer is silent or stopped.
                (false, true) => Some(true),
                (_, false) => Some(false),
                (true, true) => None,
            },
        );
        if confirmed {
            Ok(())
        } else if self.core.ownership.check().is_err() {
            Err(plugins::StoreError::not_now(
                "the lease ended before the peer confirmed the delivery step",
            ))
        } else {
            Err(plugins::StoreError::not_now(
                "the peer did not confirm the delivery step in time; the job waits in the queue",
            ))
        }
    }
}

impl ProgressStore for StoreProgress {
    fn load(&self, job: Uuid) -> Result<JobProgress, plugins::StoreError> {
        let (completed_steps, attempts_on_next) =
            self.store.job_progress(job).map_err(store_error)?;
        Ok(JobProgress {
            completed_steps,
            attempts_on_next,
        })
    }

    fn done_later(&self, job: Uuid) -> Result<Vec<usize>, plugins::StoreError> {
        let steps = self.store.job_steps(job).map_err(store_error)?;
        let mut done: Vec<usize> = steps
            .iter()
            .filter(|s| s.outcome.as_deref() == Some("done"))
            .map(|s| s.step as usize)
            .collect();
        done.dedup();
        Ok(done)
    }

    fn step_started(
        &self,
        job: Uuid,
        step: usize,
        plugin: &str,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> Result<(), plugins::StoreError> {
        self.core
            .ownership
            .check()
            .map_err(plugins::StoreError::not_now)?;
        match self
            .store
            .step_started(job, step as u32, plugin, attempt, at, self.me)
        {
            Ok(true) => {}
            Ok(false) => {
                return Err(plugins::StoreError::not_now(
                    "another server owns the job now (it was taken over or handed over)",
                ));
            }
            Err(e) => return Err(store_error(e)),
        }
        if crate::ownership::is_delivery(plugin)
            && let Err(e) = self.peer_knows_the_start(job)
        {
            let _ = self.store.forget_unrun_attempt(job, step as u32, attempt);
            return Err(e);
        }
        Ok(())
    }

    fn step_finished(
        &self,
        job: Uuid,
        step: usize,
        attempt: u32,
        outcome: &StepRecord,
        at: DateTime<Utc>,
    ) -> Result<(), plugins::StoreError> {
        let (name, reason) = match outcome {
            StepRecord::Done => ("done", None),
            StepRecord::Retry { reason } => ("retry", Some(reason.as_str())),
            StepRecord::Failed { reason } => ("failed", Some(reason.as_str())),
        };
        self.store
            .step_finished(job, step as u32, attempt, name, reason, at)
            .map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::tests::Captured;
    use crate::settings::LogFormat;

    fn core(dir: &std::path::Path) -> Arc<Core> {
        Core::for_tests_in(dir, "gw-t", "workers = 2\n")
    }

    // Regression: after SIGTERM, "pipeline workers started" was logged after
    // "shutdown requested" in about half of the stops: the pool's wait chose
    // at random between "data service up" and "shutdown", both ready.
    #[tokio::test(flavor = "current_thread")]
    async fn a_pool_told_to_shut_down_never_starts_workers() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let core = core(dir.path());
            let log = Captured::default();
            let _guard = tracing::subscriber::set_default(log.subscriber(LogFormat::Human));
            core.data.start().await.unwrap();
            core.request_shutdown();
            let stop = core.shutdown_signal();
            tokio::time::timeout(Duration::from_secs(10), run_pool(core.clone(), stop))
                .await
                .expect("the pool ends once shutdown was requested");
            assert!(
                !log.text().contains("pipeline workers started"),
                "round {round}: workers started during shutdown:\n{}",
                log.text()
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn running_workers_stop_when_told_after_shutdown_was_requested() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path());
        let log = Captured::default();
        let _guard = tracing::subscriber::set_default(log.subscriber(LogFormat::Human));
        core.data.start().await.unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let pool = tokio::spawn(run_pool(core.clone(), stop_rx));
        let started = tokio::time::timeout(Duration::from_secs(10), async {
            while !log.text().contains("pipeline workers started") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(started.is_ok(), "{}", log.text());
        core.request_shutdown();
        // Shutdown alone starts nothing and stops nothing: the instance
        // stops the workers after its web service.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!log.text().contains("pipeline workers stopped"));
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), pool)
            .await
            .expect("the pool ends")
            .unwrap();
        let text = log.text();
        let started = text.matches("pipeline workers started").count();
        assert_eq!(started, 1, "started once, never again:\n{text}");
        assert!(text.contains("pipeline workers stopped"), "{text}");
    }

    /// A job whose pages went when it was done here, back by a takeover or
    /// a handover (its state says unfinished again): recorded done, no step
    /// run, nothing delivered again, never dead-lettered for its missing
    /// pages.
    #[tokio::test(flavor = "current_thread")]
    async fn a_job_done_here_before_that_comes_back_is_done_not_failed() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path());
        core.data.start().await.unwrap();
        core.load_generation(core.data.state().generation)
            .await
            .unwrap();
        let parts = core.data.parts().unwrap();
        let me = core.server_id().unwrap();
        let id = Uuid::new_v4();
        let mut job = crate::store::jobs::sample_job(id);
        job.acceptor = me;
        parts.store.insert_job(&job).unwrap();
        parts.store.mark_pages_removed(id, Utc::now()).unwrap();
        let runner = JobRunner::new(retry_policy(&core));
        process(&core, &parts, &runner, id, me).await;
        let after = parts.store.job(id).unwrap().unwrap();
        assert_eq!(after.state, JobState::Done);
        assert!(parts.store.job_steps(id).unwrap().is_empty(), "no step ran");
    }

    /// A worker aborted mid-run (the data service went down) still hands
    /// what its steps reported to the store.
    #[tokio::test(flavor = "current_thread")]
    async fn reports_of_a_run_aborted_mid_step_are_still_stored() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path());
        core.data.start().await.unwrap();
        let parts = core.data.parts().unwrap();
        let job = Uuid::new_v4();
        let reports = plugins::JobReports::default();
        let run = {
            let (parts, reports) = (parts.clone(), reports.clone());
            tokio::spawn(async move {
                let _unsaved = ReportsOnAbort {
                    parts,
                    job,
                    reports: reports.clone(),
                };
                reports.push(plugins::DeliveryReport {
                    plugin: "mail".into(),
                    step: Some(2),
                    kind: plugins::DeliveryReportKind::PossibleDuplicate,
                    text: "step 3 (mail) delivered, record not written".into(),
                });
                std::future::pending::<()>().await;
            })
        };
        tokio::task::yield_now().await;
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        let stored = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let events = parts.store.pair_events(10).unwrap();
                if let Some(e) = events.iter().find(|e| e.job_id == Some(job)) {
                    return e.kind.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the report was stored after the abort");
        assert_eq!(stored, "possible_duplicate");
    }
}
