//! The data service: the database, the spool and (through the worker pool,
//! which follows its state) the job pipeline. It has a lifecycle of its own,
//! separate from the web service, because "web service up but data service
//! down" is one of the four failover causes devices must be able to see (R1).
//!
//! It goes down for real reasons only:
//! * an admin stops it (`gateway service stop data`); it stays down until
//!   started again, across restarts of the process too (the wish is kept in
//!   a small file beside the store, not in the store, which is part of what
//!   is stopped);
//! * the database or spool cannot be written (disk full, read-only, gone),
//!   noticed by a request or by the periodic write probe;
//! * a worker crashed (a panic).
//!
//! * the instance shuts down ([`DataService::close`]); nothing starts it
//!   again in this process.
//!
//! After a failure or a crash, a supervisor tries to bring it back with
//! backoff; a start succeeds only when both the database and the spool take
//! a write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use plugins::fsutil::create_private_dir_all;
use serde::Serialize;
use tokio::sync::{Mutex, watch};

use crate::commit::{CommitError, Committer};
use crate::paths::InstancePaths;
use crate::spool::JobSpool;
use crate::store::{Store, StoreError};

/// How the supervisor paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisorTiming {
    /// How often a running data service proves it can still write.
    pub probe_interval: Duration,
    /// The first wait before restarting after a failure; doubled after
    /// each failed restart up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for SupervisorTiming {
    fn default() -> Self {
        SupervisorTiming {
            probe_interval: Duration::from_secs(2),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Why the data service is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DownReason {
    /// Not started yet.
    Starting,
    /// Stopped by an admin.
    Stopped,
    /// The database or spool failed to take a write.
    Failed,
    /// A worker panicked.
    Crashed,
    /// The instance is shutting down.
    #[serde(rename = "shutting_down")]
    ShuttingDown,
}

/// The data service's state as health and status report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataState {
    pub up: bool,
    pub reason: Option<DownReason>,
    /// The cause in words (never secrets): "disk full writing the spool".
    pub detail: Option<String>,
    pub since: DateTime<Utc>,
    /// Raised on every start, so followers can tell restarts apart.
    #[serde(skip)]
    pub generation: u64,
}

/// What exists while the data service is up.
pub struct DataParts {
    pub store: Arc<Store>,
    pub spool: JobSpool,
    /// Makes new jobs durable, in batches (see [`crate::commit`]).
    pub committer: Committer,
}

/// A request could not use the data service.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The service is down (or went down because of this request).
    #[error("data service is down: {0}")]
    Down(String),
    /// The store refused the request itself (a constraint, a bug).
    #[error(transparent)]
    Store(StoreError),
}

struct Inner {
    paths: InstancePaths,
    state: watch::Sender<DataState>,
    parts: RwLock<Option<Arc<DataParts>>>,
    /// Serialises start and stop.
    lifecycle: Mutex<()>,
    /// Whether the admin wants it running (false after `service stop data`,
    /// also when that was said before this process started).
    wanted: AtomicBool,
    /// Set once by [`DataService::close`]: nothing may start it again.
    closed: AtomicBool,
    /// The file whose presence records an admin's stop.
    stop_file: PathBuf,
    timing: SupervisorTiming,
}

/// Handle to the data service; cheap to clone.
#[derive(Clone)]
pub struct DataService {
    inner: Arc<Inner>,
}

impl DataService {
    pub fn new(paths: InstancePaths, timing: SupervisorTiming) -> DataService {
        let stop_file = admin_stop_file(&paths);
        // An admin's stop outlives the process that heard it.
        let wanted = !stop_file.exists();
        DataService {
            inner: Arc::new(Inner {
                paths,
                state: watch::Sender::new(DataState {
                    up: false,
                    reason: Some(if wanted {
                        DownReason::Starting
                    } else {
                        DownReason::Stopped
                    }),
                    detail: None,
                    since: Utc::now(),
                    generation: 0,
                }),
                parts: RwLock::new(None),
                lifecycle: Mutex::new(()),
                wanted: AtomicBool::new(wanted),
                closed: AtomicBool::new(false),
                stop_file,
                timing,
            }),
        }
    }

    /// Whether an admin has stopped the service (and not started it since).
    pub fn stopped_by_admin(&self) -> bool {
        !self.inner.wanted.load(Ordering::SeqCst)
    }

    pub fn state(&self) -> DataState {
        self.inner.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<DataState> {
        self.inner.state.subscribe()
    }

    /// The database and spool, while up.
    pub fn parts(&self) -> Result<Arc<DataParts>, DataError> {
        self.inner
            .parts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| DataError::Down(self.down_cause()))
    }

    /// Why the service is down, in words for an error message.
    pub fn down_cause(&self) -> String {
        let s = self.state();
        match (s.reason, s.detail) {
            (_, Some(detail)) => detail,
            (Some(DownReason::Stopped), None) => {
                "stopped by an admin (`gateway service start data` starts it)".into()
            }
            (Some(DownReason::ShuttingDown), None) => "the instance is shutting down".into(),
            (Some(DownReason::Starting), None) => "starting".into(),
            _ => "down".into(),
        }
    }

    /// Runs `f` on the store in the blocking pool. An environmental store
    /// error (disk full, I/O) takes the service down and is answered as such.
    pub async fn run<T, F>(&self, f: F) -> Result<T, DataError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let parts = self.parts()?;
        let result = tokio::task::spawn_blocking(move || f(&parts.store))
            .await
            .map_err(|e| DataError::Down(format!("database task failed: {e}")))?;
        result.map_err(|e| self.classify(e))
    }

    /// Turns a store error into a request error, failing the service when the
    /// error is the machine's.
    pub fn classify(&self, e: StoreError) -> DataError {
        if e.is_environmental() {
            let cause = format!("the database cannot be written: {e}");
            self.fail(DownReason::Failed, &cause);
            DataError::Down(cause)
        } else {
            DataError::Store(e)
        }
    }

    /// Reports an I/O error on the spool or work directories. Errors that
    /// say the disk or directory is unusable take the service down; the
    /// returned error is what the request should answer.
    pub fn spool_error(&self, what: &str, e: &std::io::Error) -> DataError {
        let cause = format!("the spool cannot be written ({what}): {e}");
        if is_environmental_io(e) {
            self.fail(DownReason::Failed, &cause);
        }
        DataError::Down(cause)
    }

    /// Turns a failed job commit into a request error, failing the service
    /// when the cause is the machine's.
    pub fn commit_error(&self, e: CommitError) -> DataError {
        match e {
            CommitError::Spool { what, error } => self.spool_error(what, &error),
            CommitError::Store(e) => self.classify(e),
            CommitError::Closed => DataError::Down(self.down_cause()),
        }
    }

    /// Takes the service down because of a failure; the supervisor will try
    /// to bring it back.
    pub fn fail(&self, reason: DownReason, cause: &str) {
        let was_up = self.take_down(reason, Some(cause.to_owned()));
        if was_up {
            tracing::error!(cause, "data service down");
        }
    }

    fn take_down(&self, reason: DownReason, detail: Option<String>) -> bool {
        *self.inner.parts.write().unwrap_or_else(|p| p.into_inner()) = None;
        let mut was_up = false;
        self.inner.state.send_modify(|s| {
            was_up = s.up;
            if s.up || s.reason != Some(reason) || s.detail != detail {
                s.up = false;
                s.reason = Some(reason);
                s.detail = detail.clone();
                s.since = Utc::now();
            }
        });
        was_up
    }

    /// Starts the service on an admin's request, and records that the admin
    /// wants it running (undoing an earlier `service stop data`, also one
    /// made before a restart).
    pub async fn start(&self) -> Result<(), String> {
        let _guard = self.inner.lifecycle.lock().await;
        record_admin_stop(&self.inner.stop_file, false).map_err(|e| {
            format!(
                "cannot remove {} (the record of an admin's stop): {e}; the data service stays stopped",
                self.inner.stop_file.display()
            )
        })?;
        self.inner.wanted.store(true, Ordering::SeqCst);
        self.bring_up().await
    }

    /// Starts the service at start-up unless an admin stopped it (before
    /// this process, too): `Ok(false)` then, and it stays down.
    pub async fn resume(&self) -> Result<bool, String> {
        let _guard = self.inner.lifecycle.lock().await;
        if !self.inner.wanted.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.bring_up().await.map(|()| true)
    }

    /// Opens the store, applies migrations, opens the spool, proves both take
    /// writes, then recovers what a previous run left: jobs that were
    /// processing go back to the queue, spool directories without a job row
    /// (a crash before commit) are removed. The caller holds the lifecycle
    /// lock.
    async fn bring_up(&self) -> Result<(), String> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err("the instance is shutting down".into());
        }
        if self.state().up {
            return Ok(());
        }
        let paths = self.inner.paths.clone();
        let opened = tokio::task::spawn_blocking(move || open_parts(&paths))
            .await
            .map_err(|e| format!("start-up task failed: {e}"))
            .and_then(|r| r);
        match opened {
            Ok((parts, recovered)) => {
                *self.inner.parts.write().unwrap_or_else(|p| p.into_inner()) =
                    Some(Arc::new(parts));
                self.inner.state.send_modify(|s| {
                    s.up = true;
                    s.reason = None;
                    s.detail = None;
                    s.since = Utc::now();
                    s.generation += 1;
                });
                tracing::info!(
                    requeued = recovered.requeued,
                    orphans_removed = recovered.orphans,
                    "data service up"
                );
                Ok(())
            }
            Err(cause) => {
                self.take_down(DownReason::Failed, Some(cause.clone()));
                Err(cause)
            }
        }
    }

    /// Stops the service on an admin's request: no new jobs, workers stop at
    /// once (their jobs resume at the step they were in on the next start).
    /// The wish is recorded so a restart keeps it stopped; returns whether
    /// that record could be written.
    pub async fn stop(&self) -> bool {
        let _guard = self.inner.lifecycle.lock().await;
        self.inner.wanted.store(false, Ordering::SeqCst);
        let persisted = match record_admin_stop(&self.inner.stop_file, true) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(
                    file = %self.inner.stop_file.display(),
                    error = %e,
                    "cannot record the admin's stop; a restart will start the data service"
                );
                false
            }
        };
        if self.take_down(DownReason::Stopped, None) {
            tracing::warn!("data service stopped by an admin");
        }
        persisted
    }

    /// Closes the service for good as the last step of the instance's
    /// shutdown, after the workers have stopped: step attempts they left
    /// running are closed as interrupted now (recovery would do it at the
    /// next start, but this records the true time), the store and spool are
    /// released, and nothing starts the service again in this process.
    pub async fn close(&self) {
        let _guard = self.inner.lifecycle.lock().await;
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Ok(parts) = self.parts() {
            let closed = tokio::task::spawn_blocking(move || {
                let now = Utc::now();
                let closed = parts.store.close_interrupted_attempts(now)?;
                crate::ownership::report_repeated_deliveries(
                    &parts.store,
                    &closed,
                    None,
                    "was running when the server was told to stop",
                    now,
                )?;
                Ok::<_, crate::store::StoreError>(closed.len())
            })
            .await;
            if let Ok(Ok(n)) = closed
                && n > 0
            {
                tracing::warn!(
                    attempts = n,
                    "step attempts stopped by the shutdown recorded as interrupted"
                );
            }
        }
        self.take_down(DownReason::ShuttingDown, None);
        tracing::info!("data service closed");
    }

    /// Keeps the service honest while the process runs: probes writes while
    /// up, and restarts with backoff after a failure or crash (never after an
    /// admin stop).
    pub async fn supervise(self, mut shutdown: watch::Receiver<bool>) {
        let timing = self.inner.timing;
        let mut backoff = timing.first_backoff;
        loop {
            let state = self.state();
            let wait = if state.up {
                timing.probe_interval
            } else {
                backoff
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            // Once the instance shuts down nothing is restarted, whatever
            // the state says.
            if *shutdown.borrow() || self.inner.closed.load(Ordering::SeqCst) {
                return;
            }
            let state = self.state();
            if state.up {
                backoff = timing.first_backoff;
                if let Ok(parts) = self.parts() {
                    let probe = tokio::task::spawn_blocking(move || -> Result<(), String> {
                        parts
                            .spool
                            .probe()
                            .map_err(|e| format!("the spool cannot be written: {e}"))?;
                        parts
                            .store
                            .probe_write()
                            .map_err(|e| format!("the database cannot be written: {e}"))
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("probe task failed: {e}")));
                    if let Err(cause) = probe {
                        self.fail(DownReason::Failed, &cause);
                    }
                }
            } else if self.inner.wanted.load(Ordering::SeqCst)
                && matches!(
                    state.reason,
                    Some(DownReason::Failed | DownReason::Crashed | DownReason::Starting)
                )
            {
                let restarted = {
                    let _guard = self.inner.lifecycle.lock().await;
                    // An admin may have stopped it while this round waited
                    // for the lock.
                    if self.inner.wanted.load(Ordering::SeqCst) {
                        self.bring_up().await
                    } else {
                        Ok(())
                    }
                };
                match restarted {
                    Ok(()) => backoff = timing.first_backoff,
                    Err(cause) => {
                        tracing::warn!(
                            cause,
                            retry_in_secs = backoff.as_secs(),
                            "data service still down"
                        );
                        backoff = (backoff * 2).min(timing.max_backoff);
                    }
                }
            }
        }
    }
}

/// The file that records an admin's `service stop data`, beside the store
/// (`NAME.data-stopped`). It is not in the store on purpose: the store is
/// part of what the admin stopped, and the wish must be readable before
/// the store is opened.
pub fn admin_stop_file(paths: &InstancePaths) -> PathBuf {
    paths.database.with_extension("data-stopped")
}

/// Records (`stopped`) or clears an admin's stop of the data service, for
/// a running instance and for the command line while it is not running.
pub fn record_admin_stop(file: &Path, stopped: bool) -> std::io::Result<()> {
    if stopped {
        plugins::fsutil::write_atomic(
            file,
            b"the data service was stopped by an admin; `gateway service start data` starts it\n",
            "stop",
        )
    } else {
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// What start-up recovered.
struct Recovered {
    requeued: u64,
    orphans: u64,
}

fn open_parts(paths: &InstancePaths) -> Result<(DataParts, Recovered), String> {
    // The data directory and everything in it are the service user's alone:
    // the store holds the session signing key and the license, the spool
    // people's documents.
    create_private_dir_all(&paths.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            paths.data_dir.display()
        )
    })?;
    let store = Store::open(&paths.database).map_err(|e| {
        let fix = if e.is_environmental() {
            format!(
                " — the store and {} must be writable by the service user: run the instance as the user \
                 that owns them, or give them back to it",
                paths.data_dir.display()
            )
        } else {
            String::new()
        };
        format!("cannot open database {}: {e}{fix}", paths.database.display())
    })?;
    let spool = JobSpool::open(&paths.spool)
        .map_err(|e| format!("cannot open spool {}: {e}", paths.spool.display()))?;
    create_private_dir_all(&paths.work)
        .map_err(|e| format!("cannot create {}: {e}", paths.work.display()))?;
    spool
        .probe()
        .map_err(|e| format!("the spool {} cannot be written: {e}", paths.spool.display()))?;
    store
        .probe_write()
        .map_err(|e| format!("the database cannot be written: {e}"))?;
    let now = Utc::now();
    let interrupted = store
        .close_interrupted_attempts(now)
        .map_err(|e| e.to_string())?;
    if !interrupted.is_empty() {
        tracing::warn!(
            attempts = interrupted.len(),
            "closed step attempts that a previous run left running as interrupted"
        );
        // A delivery that left its record finished: its re-run finds the
        // record and sends nothing. Only the others may deliver twice.
        let unproven: Vec<_> = interrupted
            .iter()
            .filter(|(job, step, plugin)| {
                !plugins::delivery_record_in(&paths.work_dir(*job), plugin, *step as usize)
                    .is_file()
            })
            .cloned()
            .collect();
        crate::ownership::report_repeated_deliveries(
            &store,
            &unproven,
            None,
            "was running when the server stopped",
            now,
        )
        .map_err(|e| e.to_string())?;
    }
    let requeued = store.requeue_processing().map_err(|e| e.to_string())?;
    let mut orphans = 0;
    for id in spool
        .job_ids()
        .map_err(|e| format!("cannot list the spool: {e}"))?
    {
        if !store.job_exists(id).map_err(|e| e.to_string())? {
            spool
                .remove_job(id)
                .map_err(|e| format!("cannot remove orphan spool directory of {id}: {e}"))?;
            orphans += 1;
        }
    }
    let store = Arc::new(store);
    let committer = Committer::start(store.clone(), spool.clone())
        .map_err(|e| format!("cannot start the job commit thread: {e}"))?;
    Ok((
        DataParts {
            store,
            spool,
            committer,
        },
        Recovered { requeued, orphans },
    ))
}

/// I/O errors that mean the storage itself is unusable, as opposed to a
/// client that went away.
pub fn is_environmental_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        StorageFull
            | ReadOnlyFilesystem
            | PermissionDenied
            | NotADirectory
            | NotFound
            | QuotaExceeded
    ) || e.raw_os_error().is_some_and(|c| c == 5 /* EIO */)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> (tempfile::TempDir, DataService) {
        let dir = tempfile::tempdir().unwrap();
        let paths = InstancePaths::new(dir.path(), "gw-t");
        (dir, DataService::new(paths, SupervisorTiming::default()))
    }

    #[tokio::test]
    async fn start_stop_and_refusals_while_down() {
        let (_dir, data) = service();
        assert!(matches!(data.parts(), Err(DataError::Down(_))));
        data.start().await.unwrap();
        assert!(data.state().up);
        assert_eq!(data.run(|s| s.queue_depth()).await.unwrap(), 0);
        data.stop().await;
        let s = data.state();
        assert_eq!((s.up, s.reason), (false, Some(DownReason::Stopped)));
        let err = data.run(|s| s.queue_depth()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "data service is down: stopped by an admin (`gateway service start data` starts it)"
        );
    }

    #[tokio::test]
    async fn unwritable_spool_fails_start_and_supervisor_recovers_when_fixed() {
        let (dir, data) = service();
        let spool = dir.path().join("gw-t-spool");
        std::fs::write(&spool, b"a file where the spool directory belongs").unwrap();
        let err = data.start().await.unwrap_err();
        assert!(err.contains("cannot open spool"), "{err}");
        assert_eq!(data.state().reason, Some(DownReason::Failed));

        let (tx, rx) = watch::channel(false);
        let sup = tokio::spawn(data.clone().supervise(rx));
        std::fs::remove_file(&spool).unwrap();
        let mut states = data.subscribe();
        tokio::time::timeout(Duration::from_secs(10), states.wait_for(|s| s.up))
            .await
            .unwrap()
            .unwrap();
        tx.send(true).unwrap();
        sup.await.unwrap();
    }

    #[tokio::test]
    async fn probe_notices_a_broken_spool_while_up() {
        let (dir, data) = service();
        data.start().await.unwrap();
        let (tx, rx) = watch::channel(false);
        let sup = tokio::spawn(data.clone().supervise(rx));
        let spool = dir.path().join("gw-t-spool");
        std::fs::remove_dir_all(&spool).unwrap();
        std::fs::write(&spool, b"x").unwrap();
        let mut states = data.subscribe();
        let down = tokio::time::timeout(Duration::from_secs(10), states.wait_for(|s| !s.up))
            .await
            .unwrap()
            .unwrap()
            .clone();
        assert_eq!(down.reason, Some(DownReason::Failed));
        assert!(down.detail.unwrap().contains("spool"));
        tx.send(true).unwrap();
        sup.await.unwrap();
    }

    // Regression: an admin's `service stop data` was forgotten by a
    // restart, which started the data service again.
    #[tokio::test]
    async fn an_admin_stop_survives_a_restart_until_an_admin_starts_it() {
        let (dir, data) = service();
        data.start().await.unwrap();
        assert!(data.stop().await, "the stop is recorded");
        drop(data);

        let paths = InstancePaths::new(dir.path(), "gw-t");
        let again = DataService::new(paths.clone(), SupervisorTiming::default());
        assert!(again.stopped_by_admin());
        assert_eq!(again.state().reason, Some(DownReason::Stopped));
        assert_eq!(
            again.resume().await,
            Ok(false),
            "start-up leaves it stopped"
        );
        assert!(!again.state().up);

        again.start().await.unwrap();
        assert!(again.state().up);
        assert!(!admin_stop_file(&paths).exists());
        let third = DataService::new(paths, SupervisorTiming::default());
        assert_eq!(third.resume().await, Ok(true));
    }

    #[tokio::test]
    async fn a_closed_service_never_starts_again() {
        let (_dir, data) = service();
        data.start().await.unwrap();
        data.close().await;
        let s = data.state();
        assert_eq!((s.up, s.reason), (false, Some(DownReason::ShuttingDown)));
        assert!(data.start().await.is_err());
        assert!(data.resume().await.is_err());
        assert!(!data.state().up);
        // Not an admin's stop: the next process starts it.
        assert!(!data.stopped_by_admin());
    }

    /// Time is paused: the supervisor runs through many of its rounds
    /// (probe interval and every backoff step) without the test waiting.
    #[tokio::test(start_paused = true)]
    async fn admin_stop_is_not_undone_by_the_supervisor() {
        let (_dir, data) = service();
        data.start().await.unwrap();
        data.stop().await;
        let (tx, rx) = watch::channel(false);
        let sup = tokio::spawn(data.clone().supervise(rx));
        let mut states = data.subscribe();
        let came_up = tokio::time::timeout(
            SupervisorTiming::default().max_backoff * 4,
            states.wait_for(|s| s.up),
        )
        .await;
        assert!(
            came_up.is_err(),
            "the supervisor restarted a stopped service"
        );
        assert!(!data.state().up);
        tx.send(true).unwrap();
        sup.await.unwrap();
    }
}
