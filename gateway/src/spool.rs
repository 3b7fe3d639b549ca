//! The job spool: where uploaded page files become durable before a job is
//! acknowledged. An upload streams straight into its job directory,
//! `jobs/<job id>/`, created with its first page; each page file is fsynced
//! as it ends. The job commit ([`crate::commit`]) then fsyncs the directory
//! and `jobs/`, and only after that commits the job's row. So a job row
//! always has its complete directory, and a directory without a row — an
//! upload in progress, or one a crash or a refusal cut off — belongs to
//! whoever holds the id's upload claim: an upload that fails removes its
//! own, and the data service removes those left at start-up.
//!
//! This module knows files only: no SQL, no HTTP. Every directory and file
//! it makes is private to the service user (0700, 0600).

use std::io;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use plugins::fsutil::{PRIVATE_DIR_MODE, create_private_dir_all, create_private_file};

use ring::digest;
use uuid::Uuid;

use crate::security::hex;

/// Buffer per page being written: large enough for few system calls, small
/// enough that hundreds of concurrent uploads need little memory. It is the
/// only copy of the data the spool holds: a full buffer is handed to the
/// blocking pool, written, and handed back.
const WRITE_BUFFER: usize = 128 * 1024;

/// The spool directory of one instance.
#[derive(Debug, Clone)]
pub struct JobSpool {
    root: PathBuf,
}

/// A page file written and fsynced.
#[derive(Debug, Clone)]
pub struct SpooledPage {
    pub file_name: String,
    pub bytes: u64,
    pub sha256: String,
}

impl JobSpool {
    /// Opens the spool, creating its directories, and empties `tmp/` (the
    /// write probe's scratch space).
    pub fn open(root: &Path) -> io::Result<JobSpool> {
        // Private to the service user: page files are people's documents.
        create_private_dir_all(root)?;
        create_private_dir_all(&root.join("tmp"))?;
        create_private_dir_all(&root.join("jobs"))?;
        for entry in std::fs::read_dir(root.join("tmp"))? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(JobSpool {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding every job directory.
    pub fn jobs_dir(&self) -> PathBuf {
        self.root.join("jobs")
    }

    /// The directory of a job.
    pub fn job_dir(&self, id: Uuid) -> PathBuf {
        self.jobs_dir().join(id.to_string())
    }

    /// Proves the spool takes writes right now: creates, fsyncs and removes a
    /// small file. Used by the data service to notice a full or read-only
    /// disk and to decide when it may come back up.
    pub fn probe(&self) -> io::Result<()> {
        let path = self
            .root
            .join("tmp")
            .join(format!(".probe-{}", Uuid::new_v4()));
        let result = (|| {
            let mut f = create_private_file(&path)?;
            f.write_all(b"probe")?;
            f.sync_all()
        })();
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Starts a new upload for `id`, in its job directory (made with the
    /// first page, so this does no I/O). The caller holds the id's upload
    /// claim and knows no row exists for it; a directory already there is
    /// an orphan the caller removes first, since the upload's first page
    /// fails with `AlreadyExists` rather than write into it.
    pub fn begin(&self, id: Uuid) -> SpoolUpload {
        SpoolUpload {
            id,
            dir: self.job_dir(id),
            dir_state: Arc::default(),
            pages: 0,
            committed: false,
        }
    }

    /// Starts the upload of job `id` when no row holds the id and the
    /// caller holds its upload claim: a directory already there is then an
    /// orphan of an earlier attempt that never committed, and is removed
    /// first, since a commit never replaces one. Touches the disk (a stat;
    /// a removal when there is an orphan).
    pub fn begin_new(&self, id: Uuid) -> io::Result<SpoolUpload> {
        if self.job_dir(id).exists() {
            tracing::warn!(job = %id, "removing the spool directory of an earlier attempt that never committed");
            self.remove_job(id)?;
        }
        Ok(self.begin(id))
    }

    /// Ids of the job directories present.
    pub fn job_ids(&self) -> io::Result<Vec<Uuid>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(self.jobs_dir())? {
            if let Some(id) = entry?
                .file_name()
                .to_str()
                .and_then(|n| Uuid::parse_str(n).ok())
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Removes a job's directory (orphans, and jobs whose pipeline finished).
    pub fn remove_job(&self, id: Uuid) -> io::Result<()> {
        match std::fs::remove_dir_all(self.job_dir(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// One upload in progress. Dropping it before [`SpoolUpload::committed`]
/// removes the directory it made.
#[derive(Debug)]
pub struct SpoolUpload {
    id: Uuid,
    dir: PathBuf,
    /// Whether this upload made its directory (only then is it this
    /// upload's to remove), shared with the page writer that makes it.
    dir_state: Arc<DirState>,
    pages: u32,
    committed: bool,
}

impl SpoolUpload {
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Opens the file for page `seq` (1-based) with the given extension.
    /// The file (and, for the first page, the directory) is created with
    /// the page's first bytes, in the same trip to the blocking pool.
    pub fn page(&mut self, seq: u32, extension: &str) -> PageWriter {
        let file_name = format!("page-{seq:04}.{extension}");
        let make_dir = (self.pages == 0).then(|| (self.dir.clone(), self.dir_state.clone()));
        self.pages += 1;
        PageWriter {
            file: None,
            path: self.dir.join(&file_name),
            make_dir,
            buffer: Vec::with_capacity(WRITE_BUFFER),
            digest: digest::Context::new(&digest::SHA256),
            bytes: 0,
            file_name,
        }
    }

    /// Makes the directory of an upload that has no page (its first page
    /// makes it otherwise), and fsyncs it: every page file of the upload is
    /// then durable under its name. Blocking: for the job commit.
    pub fn sync(&self) -> io::Result<()> {
        if self.pages == 0 {
            make_private_dir(&self.dir)?;
            self.dir_state.made.store(true, Ordering::SeqCst);
        }
        sync_dir(&self.dir)
    }

    /// Keeps the directory: its job row is committed.
    pub fn committed(mut self) {
        self.committed = true;
    }
}

impl Drop for SpoolUpload {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Said before `made` is read: a page writer making the directory
        // right now sets `made` before it reads `abandoned`, so one of the
        // two sees the other and removes the directory.
        self.dir_state.abandoned.store(true, Ordering::SeqCst);
        if !self.dir_state.made.load(Ordering::SeqCst) {
            return;
        }
        let dir = self.dir.clone();
        // An upload cut off or refused leaves nothing behind. Removal is
        // blocking I/O, so it goes to the blocking pool when there is one.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || std::fs::remove_dir_all(dir));
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Who removes the directory of an upload that ends without a commit: the
/// upload when it is dropped after the directory was made, or the page
/// writer that makes it after the upload was dropped (a device that hung
/// up while its first bytes were on their way to the disk).
#[derive(Debug, Default)]
struct DirState {
    made: AtomicBool,
    abandoned: AtomicBool,
}

/// Streams one page file to disk while hashing it.
pub struct PageWriter {
    /// Opened with the first bytes written out.
    file: Option<std::fs::File>,
    path: PathBuf,
    /// The upload's directory, for the first page: made with the file.
    make_dir: Option<(PathBuf, Arc<DirState>)>,
    buffer: Vec<u8>,
    digest: digest::Context,
    bytes: u64,
    file_name: String,
}

impl PageWriter {
    pub async fn write(&mut self, mut chunk: &[u8]) -> io::Result<()> {
        self.digest.update(chunk);
        self.bytes += chunk.len() as u64;
        while !chunk.is_empty() {
            let room = WRITE_BUFFER - self.buffer.len();
            let n = room.min(chunk.len());
            self.buffer.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.buffer.len() == WRITE_BUFFER {
                self.flush(false).await?;
            }
        }
        Ok(())
    }

    /// Writes the buffer out on the blocking pool (opening the file first
    /// if this is its first write), and with `sync` fsyncs the file: one
    /// trip to the pool either way.
    async fn flush(&mut self, sync: bool) -> io::Result<()> {
        let file = self.file.take();
        let path = self.path.clone();
        let make_dir = self.make_dir.take();
        let buffer = std::mem::take(&mut self.buffer);
        let (file, mut buffer) = blocking(move || {
            let mut file = match file {
                Some(file) => file,
                None => {
                    if let Some((dir, state)) = make_dir {
                        make_private_dir(&dir)?;
                        state.made.store(true, Ordering::SeqCst);
                        if state.abandoned.load(Ordering::SeqCst) {
                            let _ = std::fs::remove_dir_all(&dir);
                            return Err(io::Error::new(
                                io::ErrorKind::Interrupted,
                                "the upload ended while its directory was being made",
                            ));
                        }
                    }
                    create_private_file(&path)?
                }
            };
            file.write_all(&buffer)?;
            if sync {
                // The data and the size; the name is made durable by the
                // directory's fsync at commit.
                file.sync_data()?;
            }
            Ok((file, buffer))
        })
        .await?;
        buffer.clear();
        self.file = Some(file);
        self.buffer = buffer;
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes what is left and fsyncs the file.
    pub async fn finish(mut self) -> io::Result<SpooledPage> {
        self.flush(true).await?;
        Ok(SpooledPage {
            file_name: self.file_name,
            bytes: self.bytes,
            sha256: hex(self.digest.finish().as_ref()),
        })
    }
}

/// Runs blocking file I/O on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// Makes one private directory; fails with `AlreadyExists` if it is there.
fn make_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("job directory {} already exists", dir.display()),
                )
            } else {
                e
            }
        })?;
    // The mode asked for is filtered by the umask; set it outright.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn write_page(
        up: &mut SpoolUpload,
        seq: u32,
        parts: &[&[u8]],
    ) -> io::Result<SpooledPage> {
        let mut page = up.page(seq, "png");
        for part in parts {
            page.write(part).await?;
        }
        page.finish().await
    }

    #[tokio::test]
    async fn an_upload_writes_its_job_directory_and_a_commit_keeps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = JobSpool::open(tmp.path()).unwrap();
        let id = Uuid::new_v4();
        let mut up = spool.begin(id);
        assert!(!spool.job_dir(id).exists(), "nothing is made before a page");
        let done = write_page(&mut up, 1, &[b"abc", b"def"]).await.unwrap();
        assert_eq!(done.bytes, 6);
        assert_eq!(
            done.sha256,
            hex(digest::digest(&digest::SHA256, b"abcdef").as_ref())
        );
        // A page larger than the write buffer goes out in several writes.
        let big = vec![7u8; WRITE_BUFFER * 2 + 5];
        let second = write_page(&mut up, 2, &[&big]).await.unwrap();
        assert_eq!(second.bytes, big.len() as u64);
        up.sync().unwrap();
        up.committed();
        let dir = spool.job_dir(id);
        assert_eq!(std::fs::read(dir.join("page-0001.png")).unwrap(), b"abcdef");
        assert_eq!(std::fs::read(dir.join("page-0002.png")).unwrap(), big);
        assert_eq!(spool.job_ids().unwrap(), vec![id]);
    }

    // Regression: spooled pages were 0644 in 0755 directories, readable by
    // every local user.
    #[tokio::test]
    async fn spooled_files_and_directories_are_private_to_the_service_user() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let spool = JobSpool::open(&root).unwrap();
        let id = Uuid::new_v4();
        let mut up = spool.begin(id);
        write_page(&mut up, 1, &[b"abc"]).await.unwrap();
        up.sync().unwrap();
        up.committed();
        let dir = spool.job_dir(id);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        for d in [&root, &root.join("tmp"), &root.join("jobs"), &dir] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        assert_eq!(mode(&dir.join("page-0001.png")), 0o600);
    }

    #[tokio::test]
    async fn a_dropped_upload_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = JobSpool::open(tmp.path()).unwrap();
        {
            let mut up = spool.begin(Uuid::new_v4());
            write_page(&mut up, 1, &[b"%PDF-"]).await.unwrap();
            let mut second = up.page(2, "pdf");
            second.write(b"%PDF-").await.unwrap();
        }
        // Removal runs on the blocking pool; give it a moment.
        for _ in 0..100 {
            if spool.job_ids().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(spool.job_ids().unwrap().is_empty());
    }

    /// A device that hangs up while its first bytes are on their way to
    /// the disk: the upload is dropped before its directory exists, and the
    /// page writer that makes it then removes it.
    #[tokio::test]
    async fn a_directory_made_after_its_upload_was_dropped_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = JobSpool::open(tmp.path()).unwrap();
        let id = Uuid::new_v4();
        let mut up = spool.begin(id);
        let mut page = up.page(1, "png");
        page.write(b"late").await.unwrap();
        drop(up);
        let err = page.finish().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted, "{err}");
        assert!(!spool.job_dir(id).exists());
    }

    /// An upload never writes into an existing job directory, nor removes
    /// it: whether one is an orphan is for the caller to decide (it knows
    /// whether a row exists).
    #[tokio::test]
    async fn an_upload_never_writes_into_an_existing_directory_and_tmp_is_cleared_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = JobSpool::open(tmp.path()).unwrap();
        let id = Uuid::new_v4();
        std::fs::create_dir_all(spool.job_dir(id)).unwrap();
        std::fs::write(spool.job_dir(id).join("stale"), b"x").unwrap();
        std::fs::create_dir_all(tmp.path().join("tmp/leftover")).unwrap();
        let spool = JobSpool::open(tmp.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(tmp.path().join("tmp")).unwrap().count(),
            0
        );
        let mut up = spool.begin(id);
        let err = write_page(&mut up, 1, &[b"abc"]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        drop(up);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(spool.job_dir(id).join("stale").exists(), "left untouched");
        assert!(!spool.job_dir(id).join("page-0001.png").exists());
        spool.remove_job(id).unwrap();
        let up = spool.begin(id);
        up.sync().unwrap();
        up.committed();
        assert!(
            spool.job_dir(id).is_dir(),
            "a job without pages has its directory"
        );
        spool.probe().unwrap();
    }

    #[tokio::test]
    async fn a_new_upload_removes_the_orphan_of_an_earlier_attempt_first() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = JobSpool::open(tmp.path()).unwrap();
        let id = Uuid::new_v4();
        let orphan = spool.job_dir(id);
        std::fs::create_dir_all(&orphan).unwrap();
        std::fs::write(orphan.join("page-0009.png"), b"stale").unwrap();
        let mut up = spool.begin_new(id).unwrap();
        assert!(!orphan.exists(), "the orphan went before the upload began");
        write_page(&mut up, 1, &[b"new"]).await.unwrap();
        let names: Vec<_> = std::fs::read_dir(&orphan)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["page-0001.png"], "only the new upload's page");
        // Nothing there: nothing removed, nothing made.
        let other = Uuid::new_v4();
        drop(spool.begin_new(other).unwrap());
        assert!(!spool.job_dir(other).exists());
    }

    #[test]
    fn probe_fails_when_the_spool_is_not_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = JobSpool::open(&tmp.path().join("s")).unwrap();
        std::fs::remove_dir_all(tmp.path().join("s")).unwrap();
        std::fs::write(tmp.path().join("s"), b"not a dir").unwrap();
        assert!(spool.probe().is_err());
    }
}
