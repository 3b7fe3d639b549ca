//! Owns the device's outbox: every scanned job kept durably on the device's
//! disk from the moment it is scanned until a server acknowledged it, and the
//! `rejected/` part for jobs a server refused for good. It must not talk to
//! servers or decide when a job is acknowledged or refused (the failover
//! client does); it only makes each of those facts durable.
//!
//! Layout under the outbox directory:
//!
//! ```text
//! jobs/<job id>/manifest.json   the job: manifest, session stamp, page list
//! jobs/<job id>/page-0001 ...   the pages, in order
//! rejected/<job id>/...         the same, plus reason.json
//! tmp/                          jobs being written or being removed
//! ```
//!
//! A job appears in `jobs/` only complete: it is written under `tmp/`, every
//! file fsynced, the directory fsynced, then renamed into `jobs/` and `jobs/`
//! fsynced. Removal after an acknowledgement is the same in reverse (rename
//! out of `jobs/`, fsync, then delete), so a crash at any point leaves either
//! the whole job in `jobs/` or nothing but litter in `tmp/`, which opening the
//! outbox clears. A crash between the server's acknowledgement and the
//! removal leaves the job in `jobs/`; replaying it is harmless because the job
//! id is the idempotency key and the server answers with the original
//! acknowledgement (`200`).
//!
//! The manifest holds the session token the job was scanned under, so the
//! directory is created private to the device's user (mode 0700).

use std::{
    fmt, fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::multipart::{FormError, Manifest, MultipartForm, Page};

/// The version of `manifest.json` this code writes and reads.
const FORMAT: u32 = 1;
const MANIFEST_FILE: &str = "manifest.json";
const REASON_FILE: &str = "reason.json";

/// Limits of the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxLimits {
    /// The most page bytes the outbox holds in `jobs/`; a scan that would
    /// exceed it is refused as [`OutboxError::Full`], as a full disk is.
    /// `None`: only the disk limits it.
    pub max_bytes: Option<u64>,
}

/// The user session a job was scanned under and the job's number within it
/// (from 1). Both are sent with every attempt, so that the server can accept
/// replays of the session's jobs after the person logged out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStamp {
    /// The session token (a credential; kept out of `{:?}`).
    pub token: String,
    /// The job's sequence number within the session, from 1.
    pub seq: u64,
}

impl fmt::Debug for SessionStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStamp")
            .field("token", &"<redacted>")
            .field("seq", &self.seq)
            .finish()
    }
}

/// `manifest.json` of one job.
#[derive(Debug, Serialize, Deserialize)]
struct StoredJob {
    format: u32,
    job_id: Uuid,
    manifest: Manifest,
    session: SessionStamp,
    scanned_at: DateTime<Utc>,
    pages: Vec<StoredPage>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredPage {
    file: String,
    bytes: u64,
}

/// A job waiting in the outbox, its pages as files in the outbox.
#[derive(Debug, Clone)]
pub struct QueuedJob {
    /// The device-chosen job id: the idempotency key of every attempt.
    pub job_id: Uuid,
    /// The job's manifest, exactly as first sent.
    pub manifest: Manifest,
    /// The session it was scanned under.
    pub session: SessionStamp,
    /// When the device put it in the outbox (device clock; only used to
    /// replay jobs in the order they were scanned).
    pub scanned_at: DateTime<Utc>,
    /// The pages, in order.
    pub pages: Vec<Page>,
    dir: PathBuf,
}

impl QueuedJob {
    /// The upload form. The boundary is derived from the job id, so every
    /// attempt of one job sends identical bytes.
    pub fn form(&self) -> Result<MultipartForm, FormError> {
        MultipartForm::job_with_boundary(
            &self.manifest,
            &self.pages,
            &format!("mfd-outbox-{}", self.job_id.simple()),
        )
    }

    /// Page bytes of the job.
    pub fn bytes(&self) -> u64 {
        self.pages.iter().map(Page::len).sum()
    }

    /// The job's directory in the outbox.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Why a server refused a job for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The server that refused it.
    pub server: String,
    /// The HTTP status.
    pub status: u16,
    /// The API's error code, e.g. `unknown_workflow`.
    pub code: Option<String>,
    /// The server's message, for the person at the panel.
    pub message: String,
    /// When (device clock).
    pub at: DateTime<Utc>,
}

/// A job in `rejected/`.
#[derive(Debug, Clone)]
pub struct RejectedJob {
    /// The job id.
    pub job_id: Uuid,
    /// Its manifest.
    pub manifest: Manifest,
    /// Why it was refused.
    pub rejection: Rejection,
}

/// An outbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// No room for the scan: the disk is full or the configured limit is
    /// reached. The scan is not kept; nothing half-written remains.
    #[error(
        "the outbox at {} is full: there is no room to keep this scan until a server takes it ({needed} bytes needed). Wait until the queued jobs are delivered, or free space on the device",
        dir.display()
    )]
    Full {
        /// The outbox directory.
        dir: PathBuf,
        /// The bytes the refused scan needed.
        needed: u64,
    },
    /// A file operation failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The job id is already in the outbox.
    #[error("job {0} is already in the outbox")]
    Exists(Uuid),
    /// The job id is not in the outbox (already acknowledged or rejected).
    #[error("job {0} is not in the outbox")]
    Missing(Uuid),
    /// The job's manifest page count does not match its pages.
    #[error("the manifest says {manifest} pages but the scan has {pages}")]
    PageCount {
        /// `page_count` of the manifest.
        manifest: usize,
        /// Pages given.
        pages: usize,
    },
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OutboxError + 'a {
    move |source| OutboxError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The device's outbox directory.
#[derive(Debug, Clone)]
pub struct Outbox {
    root: PathBuf,
    limits: OutboxLimits,
}

impl Outbox {
    /// Opens (creating if needed) the outbox at `dir` and clears what an
    /// interrupted write or removal left in `tmp/`. The operations are
    /// blocking file I/O with fsyncs: call them from a blocking thread in
    /// async code.
    pub fn open(dir: impl Into<PathBuf>, limits: OutboxLimits) -> Result<Outbox, OutboxError> {
        let outbox = Outbox {
            root: dir.into(),
            limits,
        };
        for d in [
            outbox.root.clone(),
            outbox.jobs_dir(),
            outbox.rejected_dir(),
            outbox.tmp_dir(),
        ] {
            create_private_dir(&d)?;
        }
        let tmp = outbox.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(io_error("read", &tmp))? {
            let path = entry.map_err(io_error("read", &tmp))?.path();
            remove_any(&path)?;
        }
        sync_dir(&tmp)?;
        Ok(outbox)
    }

    /// The outbox directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    fn jobs_dir(&self) -> PathBuf {
        self.root.join("jobs")
    }

    fn rejected_dir(&self) -> PathBuf {
        self.root.join("rejected")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Page bytes of the jobs waiting in the outbox.
    pub fn used_bytes(&self) -> Result<u64, OutboxError> {
        Ok(self.pending()?.iter().map(QueuedJob::bytes).sum())
    }

    /// Keeps a scanned job durably. When this returns, the job survives a
    /// crash or power loss of the device and [`Outbox::pending`] lists it.
    /// Pages in files are copied into the outbox.
    pub fn put(
        &self,
        job_id: Uuid,
        manifest: &Manifest,
        pages: &[Page],
        session: SessionStamp,
    ) -> Result<QueuedJob, OutboxError> {
        if manifest.page_count != pages.len() {
            return Err(OutboxError::PageCount {
                manifest: manifest.page_count,
                pages: pages.len(),
            });
        }
        let target = self.jobs_dir().join(job_id.to_string());
        if target.exists() {
            return Err(OutboxError::Exists(job_id));
        }
        let needed: u64 = pages.iter().map(Page::len).sum();
        if let Some(max) = self.limits.max_bytes
            && self.used_bytes()?.saturating_add(needed) > max
        {
            return Err(OutboxError::Full {
                dir: self.root.clone(),
                needed,
            });
        }
        let tmp = self
            .tmp_dir()
            .join(format!("new-{job_id}-{}", Uuid::new_v4().simple()));
        let written = self.write_job(&tmp, job_id, manifest, pages, session);
        let job = match written {
            Ok(job) => job,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(self.full_if_no_space(e, needed));
            }
        };
        fs::rename(&tmp, &target).map_err(io_error("move into place", &target))?;
        sync_dir(&self.jobs_dir())?;
        sync_dir(&self.tmp_dir())?;
        Ok(QueuedJob {
            dir: target.clone(),
            pages: relocate(&job.pages, &tmp, &target),
            ..job
        })
    }

    fn full_if_no_space(&self, e: OutboxError, needed: u64) -> OutboxError {
        match &e {
            OutboxError::Io { source, .. } if is_no_space(source) => OutboxError::Full {
                dir: self.root.clone(),
                needed,
            },
            _ => e,
        }
    }

    fn write_job(
        &self,
        dir: &Path,
        job_id: Uuid,
        manifest: &Manifest,
        pages: &[Page],
        session: SessionStamp,
    ) -> Result<QueuedJob, OutboxError> {
        create_private_dir(dir)?;
        let mut stored = Vec::with_capacity(pages.len());
        let mut files = Vec::with_capacity(pages.len());
        for (i, page) in pages.iter().enumerate() {
            let name = format!("page-{:04}", i + 1);
            let path = dir.join(&name);
            match page {
                Page::Memory(bytes) => write_synced(&path, bytes)?,
                Page::File { path: source, len } => {
                    let copied = fs::copy(source, &path).map_err(io_error("copy page", source))?;
                    if copied != *len {
                        return Err(OutboxError::Io {
                            what: "copy page",
                            path: source.clone(),
                            source: io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("expected {len} bytes, found {copied}"),
                            ),
                        });
                    }
                    fs::File::open(&path)
                        .and_then(|f| f.sync_all())
                        .map_err(io_error("sync", &path))?;
                }
            }
            stored.push(StoredPage {
                file: name,
                bytes: page.len(),
            });
            files.push(Page::File {
                path,
                len: page.len(),
            });
        }
        let record = StoredJob {
            format: FORMAT,
            job_id,
            manifest: manifest.clone(),
            session: session.clone(),
            scanned_at: Utc::now(),
            pages: stored,
        };
        let json = serde_json::to_vec_pretty(&record).expect("a stored job serialises");
        write_synced(&dir.join(MANIFEST_FILE), &json)?;
        sync_dir(dir)?;
        Ok(QueuedJob {
            job_id,
            manifest: manifest.clone(),
            session,
            scanned_at: record.scanned_at,
            pages: files,
            dir: dir.to_owned(),
        })
    }

    /// The jobs waiting for an acknowledgement, in the order they were
    /// scanned. A job whose files are damaged (cut short by a disk error) is
    /// moved to `rejected/` with the code `damaged_in_outbox` instead of being
    /// sent wrong.
    pub fn pending(&self) -> Result<Vec<QueuedJob>, OutboxError> {
        let jobs_dir = self.jobs_dir();
        let mut jobs = Vec::new();
        for entry in fs::read_dir(&jobs_dir).map_err(io_error("read", &jobs_dir))? {
            let dir = entry.map_err(io_error("read", &jobs_dir))?.path();
            match read_job(&dir) {
                Ok(job) => jobs.push(job),
                Err(reason) => {
                    tracing::warn!(dir = %dir.display(), %reason, "damaged job in the outbox");
                    self.move_damaged(&dir, reason)?;
                }
            }
        }
        jobs.sort_by(|a, b| {
            (a.scanned_at, a.session.seq, a.job_id).cmp(&(b.scanned_at, b.session.seq, b.job_id))
        });
        Ok(jobs)
    }

    fn move_damaged(&self, dir: &Path, reason: String) -> Result<(), OutboxError> {
        let Some(name) = dir.file_name() else {
            return Ok(());
        };
        let rejection = Rejection {
            server: String::new(),
            status: 0,
            code: Some("damaged_in_outbox".to_owned()),
            message: reason,
            at: Utc::now(),
        };
        let json = serde_json::to_vec_pretty(&rejection).expect("a rejection serialises");
        write_synced(&dir.join(REASON_FILE), &json)?;
        let target = self.rejected_dir().join(name);
        fs::rename(dir, &target).map_err(io_error("move to rejected", &target))?;
        sync_dir(&self.jobs_dir())?;
        sync_dir(&self.rejected_dir())
    }

    /// Removes a job a server acknowledged. Removing a job that is no longer
    /// there is not an error: the acknowledgement is what counts.
    pub fn acknowledge(&self, job_id: Uuid) -> Result<(), OutboxError> {
        let dir = self.jobs_dir().join(job_id.to_string());
        let doomed = self
            .tmp_dir()
            .join(format!("done-{job_id}-{}", Uuid::new_v4().simple()));
        match fs::rename(&dir, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("remove", &dir)(e)),
        }
        sync_dir(&self.jobs_dir())?;
        remove_any(&doomed)?;
        sync_dir(&self.tmp_dir())
    }

    /// Moves a job a server refused for good to `rejected/` with the reason.
    /// It is never sent again.
    pub fn reject(&self, job_id: Uuid, rejection: &Rejection) -> Result<(), OutboxError> {
        let dir = self.jobs_dir().join(job_id.to_string());
        if !dir.is_dir() {
            return Err(OutboxError::Missing(job_id));
        }
        let json = serde_json::to_vec_pretty(rejection).expect("a rejection serialises");
        write_synced(&dir.join(REASON_FILE), &json)?;
        sync_dir(&dir)?;
        let target = self.rejected_dir().join(job_id.to_string());
        if target.exists() {
            remove_any(&target)?;
        }
        fs::rename(&dir, &target).map_err(io_error("move to rejected", &target))?;
        sync_dir(&self.jobs_dir())?;
        sync_dir(&self.rejected_dir())
    }

    /// The jobs in `rejected/`, with their reasons, for the person or admin.
    pub fn rejected(&self) -> Result<Vec<RejectedJob>, OutboxError> {
        let rejected_dir = self.rejected_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&rejected_dir).map_err(io_error("read", &rejected_dir))? {
            let dir = entry.map_err(io_error("read", &rejected_dir))?.path();
            let reason_path = dir.join(REASON_FILE);
            let Ok(text) = fs::read(&reason_path) else {
                continue;
            };
            let Ok(rejection) = serde_json::from_slice::<Rejection>(&text) else {
                continue;
            };
            let stored = fs::read(dir.join(MANIFEST_FILE))
                .ok()
                .and_then(|t| serde_json::from_slice::<StoredJob>(&t).ok());
            let job_id = stored.as_ref().map(|s| s.job_id).or_else(|| {
                dir.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| Uuid::parse_str(n).ok())
            });
            let Some(job_id) = job_id else { continue };
            out.push(RejectedJob {
                job_id,
                manifest: stored
                    .map(|s| s.manifest)
                    .unwrap_or_else(|| Manifest::new("", 0)),
                rejection,
            });
        }
        out.sort_by_key(|r| (r.rejection.at, r.job_id));
        Ok(out)
    }
}

/// Reads one job directory; the error says what is wrong with it.
fn read_job(dir: &Path) -> Result<QueuedJob, String> {
    let text = fs::read(dir.join(MANIFEST_FILE)).map_err(|e| format!("{MANIFEST_FILE}: {e}"))?;
    let stored: StoredJob =
        serde_json::from_slice(&text).map_err(|e| format!("{MANIFEST_FILE}: {e}"))?;
    if stored.format != FORMAT {
        return Err(format!("unknown outbox format {}", stored.format));
    }
    let mut pages = Vec::with_capacity(stored.pages.len());
    for page in &stored.pages {
        if page.file.contains('/') || page.file.contains("..") {
            return Err(format!("page file name `{}` is not plain", page.file));
        }
        let path = dir.join(&page.file);
        let len = fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", page.file))?
            .len();
        if len != page.bytes {
            return Err(format!(
                "{} has {len} bytes, the manifest says {}",
                page.file, page.bytes
            ));
        }
        pages.push(Page::File { path, len });
    }
    Ok(QueuedJob {
        job_id: stored.job_id,
        manifest: stored.manifest,
        session: stored.session,
        scanned_at: stored.scanned_at,
        pages,
        dir: dir.to_owned(),
    })
}

fn relocate(pages: &[Page], from: &Path, to: &Path) -> Vec<Page> {
    pages
        .iter()
        .map(|p| match p {
            Page::File { path, len } => Page::File {
                path: path
                    .strip_prefix(from)
                    .map(|rest| to.join(rest))
                    .unwrap_or_else(|_| path.clone()),
                len: *len,
            },
            Page::Memory(b) => Page::Memory(Bytes::clone(b)),
        })
        .collect()
}

/// True for the errors a full disk or an exhausted quota gives.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), OutboxError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error("create", path))?;
    f.write_all(bytes).map_err(io_error("write", path))?;
    f.sync_all().map_err(io_error("sync", path))
}

/// Makes a directory's entries (a new file, a rename) durable.
fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync directory", dir))
}

fn create_private_dir(dir: &Path) -> Result<(), OutboxError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(io_error("create directory", dir))
}

fn remove_any(path: &Path) -> Result<(), OutboxError> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("remove", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(seq: u64) -> SessionStamp {
        SessionStamp {
            token: "sess-secret".into(),
            seq,
        }
    }

    fn page(b: &'static [u8]) -> Page {
        Page::Memory(Bytes::from_static(b))
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_job_put_is_listed_with_its_pages_and_stamp_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        let id = Uuid::new_v4();
        let manifest = Manifest::new("scan-to-folder", 2).with_metadata("matter", "A-17");
        let job = outbox
            .put(id, &manifest, &[page(b"one"), page(b"second")], stamp(3))
            .unwrap();
        assert_eq!(job.bytes(), 9);
        assert!(job.dir().starts_with(dir.path().join("jobs")));

        let reopened = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        let pending = reopened.pending().unwrap();
        assert_eq!(pending.len(), 1);
        let p = &pending[0];
        assert_eq!((p.job_id, &p.manifest, p.session.seq), (id, &manifest, 3));
        assert_eq!(p.session.token, "sess-secret");
        assert!(!format!("{p:?}").contains("sess-secret"));
        let Page::File { path, .. } = &p.pages[1] else {
            panic!("pages are files in the outbox")
        };
        assert_eq!(fs::read(path).unwrap(), b"second");
        // Every attempt of a job sends the same bytes.
        assert_eq!(
            p.form().unwrap().content_type(),
            job.form().unwrap().content_type()
        );
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_not_jobs_and_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        // What a crash in the middle of `put` leaves: a half-written job
        // under tmp/ (no manifest yet).
        let half = dir
            .path()
            .join("tmp")
            .join(format!("new-{}-x", Uuid::new_v4()));
        fs::create_dir_all(&half).unwrap();
        fs::write(half.join("page-0001"), b"half a pa").unwrap();
        assert!(outbox.pending().unwrap().is_empty());
        let _ = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        assert!(entries(&dir.path().join("tmp")).is_empty());
    }

    #[test]
    fn acknowledged_jobs_are_removed_and_acknowledging_twice_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        let id = Uuid::new_v4();
        outbox
            .put(id, &Manifest::new("w", 1), &[page(b"p")], stamp(1))
            .unwrap();
        outbox.acknowledge(id).unwrap();
        outbox.acknowledge(id).unwrap();
        assert!(outbox.pending().unwrap().is_empty());
        assert!(entries(&dir.path().join("jobs")).is_empty());
        assert!(entries(&dir.path().join("tmp")).is_empty());
    }

    #[test]
    fn rejected_jobs_keep_their_reason_and_are_never_pending_again() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        let id = Uuid::new_v4();
        outbox
            .put(
                id,
                &Manifest::new("scan-to-mars", 1),
                &[page(b"p")],
                stamp(1),
            )
            .unwrap();
        let rejection = Rejection {
            server: "https://gw-a".into(),
            status: 422,
            code: Some("unknown_workflow".into()),
            message: "workflow `scan-to-mars` is not configured".into(),
            at: Utc::now(),
        };
        outbox.reject(id, &rejection).unwrap();
        assert!(outbox.pending().unwrap().is_empty());
        let rejected = outbox.rejected().unwrap();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].job_id, id);
        assert_eq!(rejected[0].rejection, rejection);
        assert_eq!(rejected[0].manifest.workflow, "scan-to-mars");
    }

    #[test]
    fn jobs_replay_in_the_order_they_were_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids.iter().enumerate() {
            outbox
                .put(
                    *id,
                    &Manifest::new("w", 1),
                    &[page(b"p")],
                    stamp(i as u64 + 1),
                )
                .unwrap();
        }
        let order: Vec<Uuid> = outbox.pending().unwrap().iter().map(|j| j.job_id).collect();
        assert_eq!(order, ids);
    }

    #[test]
    fn a_full_outbox_refuses_the_next_scan_with_a_clear_message_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(
            dir.path(),
            OutboxLimits {
                max_bytes: Some(10),
            },
        )
        .unwrap();
        outbox
            .put(
                Uuid::new_v4(),
                &Manifest::new("w", 1),
                &[page(b"12345678")],
                stamp(1),
            )
            .unwrap();
        let e = outbox
            .put(
                Uuid::new_v4(),
                &Manifest::new("w", 1),
                &[page(b"abc")],
                stamp(2),
            )
            .unwrap_err();
        assert!(matches!(e, OutboxError::Full { needed: 3, .. }), "{e:?}");
        assert!(e.to_string().contains("is full"), "{e}");
        assert_eq!(outbox.pending().unwrap().len(), 1);
        assert!(entries(&dir.path().join("tmp")).is_empty());
        // The disk's own "no space" is the same refusal.
        assert!(is_no_space(&io::Error::from(io::ErrorKind::StorageFull)));
    }

    #[test]
    fn a_damaged_job_is_moved_aside_not_sent_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        let id = Uuid::new_v4();
        let job = outbox
            .put(id, &Manifest::new("w", 1), &[page(b"a page")], stamp(1))
            .unwrap();
        fs::write(job.dir().join("page-0001"), b"a p").unwrap();
        assert!(outbox.pending().unwrap().is_empty());
        let rejected = outbox.rejected().unwrap();
        assert_eq!(
            rejected[0].rejection.code.as_deref(),
            Some("damaged_in_outbox")
        );
    }

    #[test]
    fn the_same_job_id_cannot_be_put_twice_and_page_counts_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        let id = Uuid::new_v4();
        outbox
            .put(id, &Manifest::new("w", 1), &[page(b"p")], stamp(1))
            .unwrap();
        assert!(matches!(
            outbox.put(id, &Manifest::new("w", 1), &[page(b"p")], stamp(2)),
            Err(OutboxError::Exists(_))
        ));
        assert!(matches!(
            outbox.put(
                Uuid::new_v4(),
                &Manifest::new("w", 2),
                &[page(b"p")],
                stamp(3)
            ),
            Err(OutboxError::PageCount { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn the_outbox_is_private_to_the_device_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("outbox");
        Outbox::open(&root, OutboxLimits::default()).unwrap();
        let mode = fs::metadata(&root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
