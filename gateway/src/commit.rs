//! Group commit of new jobs: the last step before a job is acknowledged,
//! for a device's upload and for a copy from the peer alike.
//!
//! Uploads stream their pages into their job directories and fsync each
//! page file in parallel (see [`crate::spool`]). Each then hands its
//! directory and its row to the one commit thread here, which takes every
//! job waiting whenever it is free — no added wait: while one batch is
//! being flushed the next one gathers — and for the batch:
//!
//! 1. fsyncs each job's directory (its page files' names);
//! 2. fsyncs `jobs/` once (the job directories' names);
//! 3. inserts every row in one SQLite transaction (one WAL fsync);
//!
//! then answers each job. The design keeps page data and the row in two
//! journals (the file system's and SQLite's), so a job's acknowledgement
//! waits for two dependent flushes: its files first, then its row. On a
//! journaling file system the page file's fsync also commits the journal
//! holding the new directory and file names, so steps 1 and 2 find little
//! left to flush at one device; with many devices, every job of a batch
//! shares steps 2 and 3. A row is committed only after its directory is
//! durable: a crash leaves a job with its complete directory, or a
//! directory without a row (never acknowledged; removed at start-up), or
//! nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::spool::{JobSpool, SpoolUpload, sync_dir};
use crate::store::{NewJob, Store, StoreError};

/// At most this many jobs share one batch.
const MAX_BATCH: usize = 256;

/// Why a job was not committed. Its directory is removed either way.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A directory could not be fsynced.
    #[error("{what}: {error}")]
    Spool {
        what: &'static str,
        error: std::io::Error,
    },
    /// The batch's transaction failed.
    #[error(transparent)]
    Store(StoreError),
    /// The commit thread is gone (the data service went down).
    #[error("the job commit stopped (the data service went down)")]
    Closed,
}

/// The handle to a data service's commit thread. The thread ends when the
/// last handle is dropped, after the jobs already handed to it.
pub struct Committer {
    queue: mpsc::Sender<Request>,
    batches: Arc<AtomicU64>,
}

struct Request {
    upload: SpoolUpload,
    job: NewJob,
    /// `Some(peer's sequence number)` for a copy of the peer's job.
    replica_seq: Option<u64>,
    answer: oneshot::Sender<Result<bool, CommitError>>,
}

impl Committer {
    /// Starts the commit thread for a store and its spool.
    pub fn start(store: Arc<Store>, spool: JobSpool) -> std::io::Result<Committer> {
        let (queue, requests) = mpsc::channel();
        let batches = Arc::new(AtomicU64::new(0));
        let counted = batches.clone();
        std::thread::Builder::new()
            .name("job-commit".into())
            .spawn(move || run(&store, &spool, &requests, &counted))?;
        Ok(Committer { queue, batches })
    }

    /// Batches committed since the start (each one fsync of `jobs/` and
    /// one transaction).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Commits a job whose pages are written and fsynced: `Ok(true)` when
    /// it is durable, `Ok(false)` when a job with its id was stored
    /// meanwhile (this upload's directory is removed; the stored job is
    /// left as it was). `replica_seq` is the peer's sequence number of a
    /// copy of its job.
    pub async fn commit(
        &self,
        upload: SpoolUpload,
        job: NewJob,
        replica_seq: Option<u64>,
    ) -> Result<bool, CommitError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Request {
                upload,
                job,
                replica_seq,
                answer,
            })
            .map_err(|_| CommitError::Closed)?;
        answered.await.map_err(|_| CommitError::Closed)?
    }
}

fn run(store: &Store, spool: &JobSpool, requests: &mpsc::Receiver<Request>, batches: &AtomicU64) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        commit_batch(store, spool, batch);
        batches.fetch_add(1, Ordering::Relaxed);
    }
}

fn commit_batch(store: &Store, spool: &JobSpool, batch: Vec<Request>) {
    // Step 1: each job's directory. A job whose directory fails is
    // answered at once; the others go on.
    let mut ready = Vec::with_capacity(batch.len());
    for request in batch {
        match request.upload.sync() {
            Ok(()) => ready.push(request),
            Err(error) => answer(
                request,
                Err(CommitError::Spool {
                    what: "syncing the job directory",
                    error,
                }),
            ),
        }
    }
    if ready.is_empty() {
        return;
    }
    // Step 2: the directories' names, for the whole batch.
    if let Err(error) = sync_dir(&spool.jobs_dir()) {
        for request in ready {
            answer(
                request,
                Err(CommitError::Spool {
                    what: "syncing the spool's job directories",
                    error: same_error(&error),
                }),
            );
        }
        return;
    }
    // Step 3: every row in one transaction.
    let rows: Vec<_> = ready.iter().map(|r| (&r.job, r.replica_seq)).collect();
    match store.insert_jobs(&rows) {
        Ok(stored) => {
            for (request, stored) in ready.into_iter().zip(stored) {
                answer(request, Ok(stored));
            }
        }
        Err(_) => {
            // The batch was rolled back. Each job is tried alone, so one
            // that cannot be stored does not fail the others, and each
            // gets its own error (the data service decides whether it is
            // the machine's).
            for request in ready {
                let stored = store.insert_jobs(&[(&request.job, request.replica_seq)]);
                let result = stored.map(|stored| stored[0]).map_err(CommitError::Store);
                answer(request, result);
            }
        }
    }
}

/// A copy of an I/O error for each job of a batch, keeping what the data
/// service and the pair link judge it by: its OS error code (a full disk,
/// EIO) or else its kind, and its message.
fn same_error(error: &std::io::Error) -> std::io::Error {
    match error.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(error.kind(), error.to_string()),
    }
}

/// Answers one job: a stored job keeps its directory, any other outcome
/// removes it (dropping the upload does).
fn answer(request: Request, result: Result<bool, CommitError>) {
    if let Ok(true) = result {
        request.upload.committed();
    } else {
        drop(request.upload);
    }
    // The uploader may have gone (its device hung up): the job is durable
    // all the same, and a resubmission is answered from its row.
    let _ = request.answer.send(result);
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::store::jobs::sample_job;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        spool: JobSpool,
        committer: Arc<Committer>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store.sqlite")).unwrap());
        let spool = JobSpool::open(&dir.path().join("spool")).unwrap();
        let committer = Arc::new(Committer::start(store.clone(), spool.clone()).unwrap());
        Fixture {
            _dir: dir,
            store,
            spool,
            committer,
        }
    }

    /// An upload with one page written and fsynced, and its row.
    async fn upload(spool: &JobSpool, id: Uuid, bytes: &[u8]) -> (SpoolUpload, NewJob) {
        let mut upload = spool.begin(id);
        let mut page = upload.page(1, "png");
        page.write(bytes).await.unwrap();
        page.finish().await.unwrap();
        (upload, sample_job(id))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_committed_at_once_share_batches_and_each_is_stored_with_its_pages() {
        let f = fixture();
        let mut waiting = Vec::new();
        let mut ids = Vec::new();
        for i in 0..40u8 {
            let id = Uuid::new_v4();
            let (upload, job) = upload(&f.spool, id, &[i; 100]).await;
            let committer = f.committer.clone();
            ids.push(id);
            waiting.push(tokio::spawn(async move {
                committer.commit(upload, job, None).await
            }));
        }
        for w in waiting {
            assert!(w.await.unwrap().unwrap(), "stored");
        }
        for (i, id) in ids.iter().enumerate() {
            assert!(f.store.job_exists(*id).unwrap());
            let page = std::fs::read(f.spool.job_dir(*id).join("page-0001.png")).unwrap();
            assert_eq!(page, vec![i as u8; 100]);
        }
        assert!(
            f.committer.batches() < 40,
            "40 jobs committed at once took {} batches",
            f.committer.batches()
        );
    }

    /// One job that cannot be committed fails alone: its directory goes,
    /// the jobs beside it are stored.
    #[tokio::test]
    async fn a_job_that_fails_its_commit_leaves_nothing_and_fails_alone() {
        let f = fixture();
        // Its directory vanished before the commit.
        let gone = Uuid::new_v4();
        let (upload_gone, job_gone) = upload(&f.spool, gone, b"gone").await;
        std::fs::remove_dir_all(f.spool.job_dir(gone)).unwrap();
        let err = f
            .committer
            .commit(upload_gone, job_gone, None)
            .await
            .unwrap_err();
        assert!(matches!(err, CommitError::Spool { .. }), "{err}");
        assert!(!f.store.job_exists(gone).unwrap());

        // A row the database refuses (two pages with one number) fails its
        // batch; the others of that batch are stored all the same.
        let bad = Uuid::new_v4();
        let (upload_bad, mut job_bad) = upload(&f.spool, bad, b"bad").await;
        job_bad.pages.push(job_bad.pages[0].clone());
        let good = Uuid::new_v4();
        let (upload_good, job_good) = upload(&f.spool, good, b"good").await;
        let (bad_result, good_result) = tokio::join!(
            f.committer.commit(upload_bad, job_bad, None),
            f.committer.commit(upload_good, job_good, None)
        );
        assert!(matches!(bad_result, Err(CommitError::Store(_))));
        assert!(good_result.unwrap());
        assert!(!f.store.job_exists(bad).unwrap());
        assert!(
            !f.spool.job_dir(bad).exists(),
            "the refused job's pages went"
        );
        assert!(f.store.job_exists(good).unwrap());
        assert!(f.spool.job_dir(good).join("page-0001.png").exists());
    }

    #[test]
    fn each_job_of_a_failed_batch_gets_the_same_os_error() {
        let full = std::io::Error::from_raw_os_error(28);
        let copy = same_error(&full);
        assert_eq!(copy.raw_os_error(), Some(28));
        assert_eq!(copy.kind(), std::io::ErrorKind::StorageFull);
        let other = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let copy = same_error(&other);
        assert_eq!(copy.kind(), std::io::ErrorKind::NotFound);
        assert!(copy.to_string().contains("gone"));
    }

    /// A job stored meanwhile by another path keeps its row; the upload's
    /// directory goes.
    #[tokio::test]
    async fn a_job_stored_meanwhile_is_answered_not_stored_and_its_directory_goes() {
        let f = fixture();
        let id = Uuid::new_v4();
        let (upload, job) = upload(&f.spool, id, b"second").await;
        let mut first = job.clone();
        first.user = "first".into();
        assert!(f.store.insert_job(&first).unwrap());
        assert!(!f.committer.commit(upload, job, None).await.unwrap());
        assert_eq!(f.store.job(id).unwrap().unwrap().user, "first");
        assert!(!f.spool.job_dir(id).exists());
    }
}
