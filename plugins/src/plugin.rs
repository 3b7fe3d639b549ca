//! The contract between the runner and a step: the [`Plugin`] trait and the
//! [`StepError`] that tells the runner whether to retry. It must not know any
//! particular plugin or how progress is stored.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::job::JobContext;

/// The future a step returns.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StepError>> + Send + 'a>>;

/// One step of a workflow, configured for its place in that workflow.
///
/// A step must be safe to run again after it completed or was interrupted:
/// the runner re-runs the step a job was in when the server stopped. Steps
/// write their outputs atomically and deliveries deduplicate by job id.
/// Dropping the returned future must stop all work it started (child
/// processes included): the runner drops it on timeout and the gateway when
/// it shuts down.
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's name as written in workflow configuration.
    fn name(&self) -> &'static str;

    /// This step's own time limit, from its `timeout_secs` setting; `None`
    /// uses the runner's default.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// Runs the step for `job`.
    fn run<'a>(&'a self, job: &'a JobContext) -> StepFuture<'a>;
}

/// Why a step did not complete. The reason is a sentence for the job log
/// that names what was being done, the destination, and the cause.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Worth trying again later (a server down, a timeout, a 5xx answer).
    #[error("{0}")]
    Transient(String),
    /// Trying again cannot help (bad credentials, a 4xx answer, a missing
    /// engine, an unreadable page); the job goes to the dead-letter state.
    #[error("{0}")]
    Permanent(String),
}

impl StepError {
    /// A transient failure with `reason`.
    pub fn transient(reason: impl Into<String>) -> Self {
        StepError::Transient(reason.into())
    }

    /// A permanent failure with `reason`.
    pub fn permanent(reason: impl Into<String>) -> Self {
        StepError::Permanent(reason.into())
    }

    /// Whether the runner should retry.
    pub fn is_transient(&self) -> bool {
        matches!(self, StepError::Transient(_))
    }

    /// The human-readable reason.
    pub fn reason(&self) -> &str {
        match self {
            StepError::Transient(r) | StepError::Permanent(r) => r,
        }
    }

    /// The permanent failure for a page that cannot be read: the reason
    /// (shown to the device) names the page and the problem; the log gets
    /// the file's path on the server and the full error.
    pub fn unreadable_page(error: crate::page::PageReadError) -> Self {
        tracing::warn!(
            path = %error.path().map(|p| p.display().to_string()).unwrap_or_default(),
            error = ?error,
            "a page file could not be read"
        );
        StepError::Permanent(error.to_string())
    }

    /// Classifies a local file-system failure: a full disk or an I/O hiccup
    /// may pass; missing permissions or a read-only mount will not fix
    /// themselves within a retry budget.
    pub fn from_io(what: impl std::fmt::Display, error: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let reason = format!("{what}: {}", crate::fsutil::io_cause(error));
        match error.kind() {
            K::PermissionDenied | K::ReadOnlyFilesystem | K::InvalidInput | K::InvalidFilename => {
                StepError::Permanent(reason)
            }
            _ => StepError::Transient(reason),
        }
    }
}

/// Runs blocking work (file I/O, image decoding) off the async workers and
/// turns a panic in it into a permanent failure instead of a crash.
pub(crate) async fn blocking<T, F>(what: &str, work: F) -> Result<T, StepError>
where
    F: FnOnce() -> Result<T, StepError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(StepError::permanent(format!(
            "{what} failed unexpectedly: {e}"
        ))),
    }
}
