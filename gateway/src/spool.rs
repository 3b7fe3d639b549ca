//! The job spool: where uploaded page files become durable before a job is
//! acknowledged. An upload streams into its own directory under `tmp/`; on
//! commit every file and the directory are fsynced and the directory is
//! renamed to `jobs/<job id>/` in one step, so a job directory is either
//! complete or absent. The database row is written after that rename (by the
//! intake), and a directory without a row — a crash between the two — is an
//! orphan the data service removes at start-up.
//!
//! This module knows files only: no SQL, no HTTP. Every directory and file
//! it makes is private to the service user (0700, 0600).

use std::io;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
    /// Opens the spool, creating its directories, and empties `tmp/` (what is
    /// there belongs to uploads that were never acknowledged).
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

    /// The directory of a committed job.
    pub fn job_dir(&self, id: Uuid) -> PathBuf {
        self.root.join("jobs").join(id.to_string())
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

    /// Starts a new upload for `id`.
    pub async fn begin(&self, id: Uuid) -> io::Result<SpoolUpload> {
        let dir = self
            .root
            .join("tmp")
            .join(format!("{id}.{}", Uuid::new_v4().simple()));
        let create = dir.clone();
        blocking(move || {
            std::fs::DirBuilder::new()
                .mode(PRIVATE_DIR_MODE)
                .create(&create)?;
            // The mode asked for is filtered by the umask; set it outright.
            std::fs::set_permissions(&create, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
        })
        .await?;
        Ok(SpoolUpload {
            spool: self.clone(),
            id,
            dir: Some(dir),
        })
    }

    /// Ids of the job directories present.
    pub fn job_ids(&self) -> io::Result<Vec<Uuid>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(self.root.join("jobs"))? {
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

/// One upload in progress. Dropping it without `commit` removes its files.
#[derive(Debug)]
pub struct SpoolUpload {
    spool: JobSpool,
    id: Uuid,
    dir: Option<PathBuf>,
}

impl SpoolUpload {
    /// Opens the file for page `seq` (1-based) with the given extension.
    pub async fn page(&mut self, seq: u32, extension: &str) -> io::Result<PageWriter> {
        let file_name = format!("page-{seq:04}.{extension}");
        let path = self
            .dir
            .as_ref()
            .expect("upload not committed yet")
            .join(&file_name);
        let file = blocking(move || create_private_file(&path)).await?;
        Ok(PageWriter {
            file: Some(file),
            buffer: Vec::with_capacity(WRITE_BUFFER),
            digest: digest::Context::new(&digest::SHA256),
            bytes: 0,
            file_name,
        })
    }

    /// Makes the upload a durable job directory: writes the manifest, fsyncs
    /// the directory, renames it into `jobs/` and fsyncs `jobs/`. An
    /// existing directory for the id is never replaced: the commit fails
    /// with `AlreadyExists` (the caller decides whether that directory is an
    /// orphan to remove, knowing whether a job row exists).
    pub async fn commit(mut self, manifest: &[u8]) -> io::Result<PathBuf> {
        let dir = self.dir.take().expect("commit once");
        let target = self.spool.job_dir(self.id);
        let jobs = self.spool.root.join("jobs");
        let manifest = manifest.to_vec();
        tokio::task::spawn_blocking(move || -> io::Result<PathBuf> {
            let mut f = create_private_file(&dir.join("manifest.json"))?;
            f.write_all(&manifest)?;
            f.sync_all()?;
            sync_dir(&dir)?;
            if target.exists() {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("job directory {} already exists", target.display()),
                ));
            }
            std::fs::rename(&dir, &target).inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&dir);
            })?;
            sync_dir(&jobs)?;
            Ok(target)
        })
        .await
        .map_err(io::Error::other)?
    }
}

impl Drop for SpoolUpload {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
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
}

/// Streams one page file to disk while hashing it.
pub struct PageWriter {
    file: Option<std::fs::File>,
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
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Writes the buffer out on the blocking pool.
    async fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut file = self.file.take().expect("file present between writes");
        let buffer = std::mem::take(&mut self.buffer);
        let (file, mut buffer) = blocking(move || {
            file.write_all(&buffer)?;
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

    /// Flushes and fsyncs the file.
    pub async fn finish(mut self) -> io::Result<SpooledPage> {
        self.flush().await?;
        let file = self.file.take().expect("file present");
        blocking(move || file.sync_all()).await?;
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

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn committed_upload_becomes_a_job_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = JobSpool::open(tmp.path()).unwrap();
        let id = Uuid::new_v4();
        let mut up = spool.begin(id).await.unwrap();
        let mut page = up.page(1, "png").await.unwrap();
        page.write(b"abc").await.unwrap();
        page.write(b"def").await.unwrap();
        let done = page.finish().await.unwrap();
        assert_eq!(done.bytes, 6);
        assert_eq!(
            done.sha256,
            hex(digest::digest(&digest::SHA256, b"abcdef").as_ref())
        );
        let dir = up.commit(b"{}").await.unwrap();
        assert_eq!(dir, spool.job_dir(id));
        assert_eq!(std::fs::read(dir.join("page-0001.png")).unwrap(), b"abcdef");
        assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), b"{}");
        assert_eq!(spool.job_ids().unwrap(), vec![id]);
        assert_eq!(
            std::fs::read_dir(tmp.path().join("tmp")).unwrap().count(),
            0
        );
    }

    // Regression: spooled pages were 0644 in 0755 directories, readable by
    // every local user.
    #[tokio::test]
    async fn spooled_files_and_directories_are_private_to_the_service_user() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let spool = JobSpool::open(&root).unwrap();
        let mut up = spool.begin(Uuid::new_v4()).await.unwrap();
        let mut page = up.page(1, "png").await.unwrap();
        page.write(b"abc").await.unwrap();
        page.finish().await.unwrap();
        let dir = up.commit(b"{}").await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        for d in [&root, &root.join("tmp"), &root.join("jobs"), &dir] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        for f in [dir.join("page-0001.png"), dir.join("manifest.json")] {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }

    #[tokio::test]
    async fn dropped_upload_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = JobSpool::open(tmp.path()).unwrap();
        {
            let mut up = spool.begin(Uuid::new_v4()).await.unwrap();
            let mut page = up.page(1, "pdf").await.unwrap();
            page.write(b"%PDF-").await.unwrap();
        }
        // Removal runs on the blocking pool; give it a moment.
        for _ in 0..100 {
            if std::fs::read_dir(tmp.path().join("tmp")).unwrap().count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            std::fs::read_dir(tmp.path().join("tmp")).unwrap().count(),
            0
        );
        assert!(spool.job_ids().unwrap().is_empty());
    }

    /// A commit never replaces an existing job directory: whether one is an
    /// orphan is for the caller to decide (it knows whether a row exists).
    #[tokio::test]
    async fn commit_never_replaces_a_job_directory_and_tmp_is_cleared_on_open() {
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
        let up = spool.begin(id).await.unwrap();
        let err = up.commit(b"{}").await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(spool.job_dir(id).join("stale").exists(), "left untouched");
        assert_eq!(
            std::fs::read_dir(tmp.path().join("tmp")).unwrap().count(),
            0,
            "the refused upload left nothing behind"
        );
        spool.remove_job(id).unwrap();
        let up = spool.begin(id).await.unwrap();
        up.commit(b"{}").await.unwrap();
        assert!(spool.job_dir(id).join("manifest.json").exists());
        spool.probe().unwrap();
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
