//! Atomic, durable file writes for step outputs and deliveries: a reader (or
//! a job resumed after a crash) sees either the complete new file or none.
//! It must not choose file names or locations; callers do.
//!
//! The pattern is the classic one: write a temporary file in the target
//! directory, flush it to disk, rename it over the final name, then flush the
//! directory so that the rename itself survives a power loss. Everything here
//! is blocking; async callers use `spawn_blocking`.
//!
//! Files and directories made here are private to the service user (0600
//! and 0700) unless a caller asks for another mode: the process umask is
//! whatever started the server, and it cannot be set without `unsafe`, so
//! every file and directory the server creates is given its mode
//! explicitly instead.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of files only the service user may read.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// The mode of directories only the service user may enter.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents with mode 0700, and makes `dir`
/// itself 0700 if it already existed (an older install, or one made by hand
/// under a lax umask). Parents that already exist are left as they are.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    create_dir_all_with_mode(dir, PRIVATE_DIR_MODE)
}

/// Creates `dir` and any missing parents with `mode`, and sets `mode` on
/// `dir` itself.
pub fn create_dir_all_with_mode(dir: &Path, mode: u32) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(mode))
}

/// Creates (or truncates) a file readable and writable by the service user
/// only.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)?;
    // `mode` only applies to a file the call creates.
    file.set_permissions(Permissions::from_mode(PRIVATE_FILE_MODE))?;
    Ok(file)
}

/// Opens a file for appending (a log), creating it private to the service
/// user, and making an existing one private too.
pub fn open_private_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(PRIVATE_FILE_MODE))?;
    Ok(file)
}

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
        let mut file = create_private_file(&temp)?;
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

/// Flushes a file another program wrote, makes it private (the program
/// created it under the process umask), then renames it into place durably.
pub fn commit_file(temp: &Path, path: &Path) -> io::Result<()> {
    let file = File::open(temp)?;
    file.set_permissions(Permissions::from_mode(PRIVATE_FILE_MODE))?;
    file.sync_all()?;
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

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn what_is_made_here_is_private_to_the_service_user() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_private_dir_all(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);
        // An existing directory made under a lax umask is tightened.
        std::fs::set_permissions(&nested, Permissions::from_mode(0o755)).unwrap();
        create_private_dir_all(&nested).unwrap();
        assert_eq!(mode(&nested), 0o700);

        let file = nested.join("out.pdf");
        write_atomic(&file, b"x", "t").unwrap();
        assert_eq!(mode(&file), 0o600);
        let log = nested.join("x.log");
        std::fs::write(&log, b"").unwrap();
        std::fs::set_permissions(&log, Permissions::from_mode(0o644)).unwrap();
        open_private_append(&log).unwrap();
        assert_eq!(mode(&log), 0o600);
        let other = nested.join("engine-output");
        std::fs::write(&other, b"").unwrap();
        std::fs::set_permissions(&other, Permissions::from_mode(0o644)).unwrap();
        commit_file(&other, &nested.join("committed")).unwrap();
        assert_eq!(mode(&nested.join("committed")), 0o600);
    }

    #[test]
    fn causes_are_short_and_human() {
        let e = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(io_cause(&e), "disk full");
        let e = io::Error::from_raw_os_error(13);
        assert_eq!(io_cause(&e), "permission denied");
    }
}
