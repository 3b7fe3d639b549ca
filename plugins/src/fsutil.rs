//! Atomic, durable file writes for step outputs and deliveries: a reader (or
//! a job resumed after a crash) sees either the complete new file or none.
//! It must not choose file names or locations; callers do.
//!
//! The pattern is the classic one: write a temporary file in the target
//! directory, flush it to disk, rename it over the final name, then flush the
//! directory so that the rename itself survives a power loss. Everything here
//! is blocking; async callers use `spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary name used while `path` is being written: hidden, in the
/// same directory (a rename across file systems would not be atomic), and
/// derived from the final name so that a retry reuses and overwrites a
/// leftover from a crash instead of accumulating them.
pub fn partial_path(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}.partial"))
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8], tag: &str) -> io::Result<()> {
    let temp = partial_path(path, tag);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        // Best effort: a leftover would be overwritten by the next try anyway.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Flushes a file another program wrote, then renames it into place durably.
pub fn commit_file(temp: &Path, path: &Path) -> io::Result<()> {
    File::open(temp)?.sync_all()?;
    std::fs::rename(temp, path)?;
    sync_parent(path)
}

/// Flushes the directory holding `path`, making a rename into it durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// A short cause for an I/O error, for messages people read: "permission
/// denied", "disk full", rather than an OS error number.
pub fn io_cause(error: &io::Error) -> String {
    use io::ErrorKind as K;
    let cause = match error.kind() {
        K::NotFound => "no such file or directory",
        K::PermissionDenied => "permission denied",
        K::StorageFull => "disk full",
        K::ReadOnlyFilesystem => "read-only file system",
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset by the peer",
        K::ConnectionAborted => "connection aborted",
        K::TimedOut => "timed out",
        K::AddrNotAvailable => "address not available",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::UnexpectedEof => "the connection closed early",
        K::QuotaExceeded => "disk quota exceeded",
        K::FileTooLarge => "file too large",
        _ => return error.to_string(),
    };
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_partial() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.pdf");
        write_atomic(&path, b"first", "t").unwrap();
        write_atomic(&path, b"second", "t").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["out.pdf"]);
    }

    #[test]
    fn causes_are_short_and_human() {
        let e = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(io_cause(&e), "disk full");
        let e = io::Error::from_raw_os_error(13);
        assert_eq!(io_cause(&e), "permission denied");
    }
}
