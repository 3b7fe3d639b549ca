//! The `folder` delivery: the document copied under a root directory with a
//! name from a template. It must not create the root itself: a missing root
//! usually means an unmounted share, and writing into the bare mount point
//! would hide the documents.
//!
//! The name is fixed per job (the template must contain `{job_id}` and its
//! other values come from the job), and the step creates it with no-replace:
//! a temporary file in the target directory, written and flushed, is
//! hard-linked to the final name (a link fails if the name exists and never
//! replaces it), the temporary name is removed, then the directory flushed.
//! Readers never see a partial document. The reason is a folder shared by
//! both servers of a pair: in two documented cases both deliver one job (a
//! crash between a destination accepting the document and the server
//! recording it; two live servers cut off from each other), and the second
//! copy must then neither overwrite the first nor land beside it. When the
//! name exists, the step compares contents. The same bytes mean this job's
//! document is there already: the step succeeds without writing and reports
//! the refused second copy ([`DeliveryReportKind::SecondCopyRefused`]).
//! Other bytes mean another document has the name: it is left as it is, and
//! the step fails permanently and reports it ([`DeliveryReportKind::NameTaken`]).
//! Either report goes to the admins through [`JobContext::reports`].
//!
//! Every attempt writes a temporary name of its own (a random part in it),
//! so two servers or two attempts never write into one temporary file; only
//! a crash in the middle of a copy leaves one behind, hidden
//! (`.NAME.RANDOM.partial`). On a file system without hard links (FAT, some
//! SMB and FUSE mounts) the step looks for the final name and then renames
//! onto it: still no-replace, except for two deliveries racing inside that
//! window.
//!
//! Delivered documents are private to the service user by default (files
//! 0600, the directories this step creates 0700): a folder meant for people
//! says so with `file_mode` (e.g. `"0640"`; the directories created get the
//! matching execute bits, `0750`) and `group` (a group name from
//! `/etc/group` or a numeric id, given to every file and directory the step
//! creates; the service user must be a member of it, or root).
//!
//! Settings: `root` (absolute, must exist), `name` (template, default
//! [`DEFAULT_NAME`]), `file_mode`, `group`, `timeout_secs`.

use std::fs::{File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::name::NameTemplate;
use crate::fsutil;
use crate::job::{DeliveryReport, DeliveryReportKind, JobContext, JobReports};
use crate::plugin::{Plugin, StepError, StepFuture, blocking};
use crate::settings::{self, SettingsError};

/// The default name: one directory per day, one file per job.
pub const DEFAULT_NAME: &str = "{date}/{user}-{job_id}.pdf";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FolderSettings {
    root: PathBuf,
    #[serde(default = "default_name")]
    name: String,
    #[serde(default)]
    timeout_secs: Option<u64>,
    #[serde(default)]
    file_mode: Option<String>,
    #[serde(default)]
    group: Option<String>,
}

/// Who may read what the step delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The mode of delivered files.
    pub file_mode: u32,
    /// The mode of directories the step creates: the file mode plus the
    /// execute (search) bit wherever it has the read bit.
    pub dir_mode: u32,
    /// The group given to delivered files and created directories.
    pub gid: Option<u32>,
}

impl Access {
    /// Files and directories for the service user alone.
    pub const PRIVATE: Access = Access {
        file_mode: fsutil::PRIVATE_FILE_MODE,
        dir_mode: fsutil::PRIVATE_DIR_MODE,
        gid: None,
    };

    fn parse(file_mode: Option<&str>, group: Option<&str>) -> Result<Access, SettingsError> {
        let mut access = Access::PRIVATE;
        if let Some(text) = file_mode {
            let digits = text.trim();
            let mode = u32::from_str_radix(digits, 8)
                .ok()
                .filter(|m| digits.len() >= 3 && *m <= 0o777)
                .ok_or_else(|| {
                    SettingsError::bad(
                        "file_mode",
                        format!(
                            "`{text}` is not a file mode; write it in octal as a string, such as \"0640\""
                        ),
                    )
                })?;
            if mode & 0o600 != 0o600 {
                return Err(SettingsError::bad(
                    "file_mode",
                    format!(
                        "{mode:04o} does not let the service user read and write its own deliveries; \
                         keep the owner's rw (06xx)"
                    ),
                ));
            }
            access.file_mode = mode;
            access.dir_mode = mode | ((mode & 0o444) >> 2);
        }
        if let Some(group) = group {
            access.gid = Some(group_id(group)?);
        }
        Ok(access)
    }
}

/// A group's id: a number, or a name looked up in `/etc/group` (groups
/// from a directory service are given by number).
fn group_id(group: &str) -> Result<u32, SettingsError> {
    if let Ok(gid) = group.trim().parse::<u32>() {
        return Ok(gid);
    }
    let table = std::fs::read_to_string("/etc/group").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (name == group.trim()).then_some(gid)
        })
        .next()
        .ok_or_else(|| {
            SettingsError::bad(
                "group",
                format!("there is no group `{group}` in /etc/group; give its name or numeric id"),
            )
        })
}

fn default_name() -> String {
    DEFAULT_NAME.to_string()
}

/// The configured `folder` step.
#[derive(Debug)]
pub struct FolderStep {
    root: PathBuf,
    name: NameTemplate,
    timeout: Option<Duration>,
    access: Access,
}

impl FolderStep {
    pub(crate) fn build(table: &Map<String, Value>) -> Result<Self, SettingsError> {
        let parsed: FolderSettings = settings::parse(table)?;
        if !parsed.root.is_absolute() {
            return Err(SettingsError::bad("root", "must be an absolute path"));
        }
        let name = NameTemplate::path(&parsed.name).map_err(|e| SettingsError::bad("name", e))?;
        let access = Access::parse(parsed.file_mode.as_deref(), parsed.group.as_deref())?;
        Ok(FolderStep {
            root: parsed.root,
            name,
            timeout: settings::timeout_from(parsed.timeout_secs)?,
            access,
        })
    }

    /// Who may read the step's deliveries.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Where this step puts `job`'s document.
    pub fn target(&self, job: &JobContext) -> PathBuf {
        self.root.join(self.name.render_path(job))
    }
}

impl Plugin for FolderStep {
    fn name(&self) -> &'static str {
        "folder"
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn run<'a>(&'a self, job: &'a JobContext) -> StepFuture<'a> {
        let source = job.document_path();
        let root = self.root.clone();
        let target = self.target(job);
        let access = self.access;
        let reports = job.reports.clone();
        Box::pin(blocking("delivering to the folder", move || {
            deliver(&source, &root, &target, access, &reports)
        }))
    }
}

/// Creates the directories between `root` (which exists) and `dir` with
/// the delivery's mode and group. Existing directories are left as they
/// are: they belong to whoever set the share up.
fn create_dirs(root: &Path, dir: &Path, access: Access) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| *d != root && d.starts_with(root))
        .filter(|d| !d.is_dir())
        .collect();
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(access.dir_mode).create(d) {
            Ok(()) => {}
            // Another delivery made it meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => continue,
            Err(e) => return Err(e),
        }
        std::fs::set_permissions(d, Permissions::from_mode(access.dir_mode))?;
        if let Some(gid) = access.gid {
            std::os::unix::fs::chown(d, None, Some(gid))?;
        }
    }
    Ok(())
}

fn deliver(
    source: &Path,
    root: &Path,
    target: &Path,
    access: Access,
    reports: &JobReports,
) -> Result<(), StepError> {
    let shown = target.display();
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(StepError::permanent(format!(
                "folder delivery to {shown} failed: the root {} is not a directory",
                root.display()
            )));
        }
        Err(e) => {
            return Err(StepError::transient(format!(
                "folder delivery to {shown} failed: the root {} is not available ({}); is the share mounted?",
                root.display(),
                fsutil::io_cause(&e)
            )));
        }
    }
    let dir = target.parent().unwrap_or(root);
    create_dirs(root, dir, access).map_err(|e| {
        StepError::from_io(
            format!(
                "folder delivery to {shown} failed creating {}",
                dir.display()
            ),
            &e,
        )
    })?;
    let mut input = File::open(source).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StepError::permanent(format!(
                "folder delivery to {shown} has no document: {} does not exist",
                source.display()
            ))
        } else {
            StepError::from_io(
                format!(
                    "folder delivery to {shown} cannot read {}",
                    source.display()
                ),
                &e,
            )
        }
    })?;
    let temp = temp_path(target);
    let copy = (|| {
        let mut output = fsutil::create_private_file(&temp)?;
        // The group first, then the mode: a group-readable file never
        // exists with another group.
        if let Some(gid) = access.gid {
            std::os::unix::fs::chown(&temp, None, Some(gid))?;
        }
        output.set_permissions(Permissions::from_mode(access.file_mode))?;
        std::io::copy(&mut input, &mut output)?;
        output.flush()?;
        output.sync_all()
    })();
    if let Err(e) = copy {
        let _ = std::fs::remove_file(&temp);
        return Err(StepError::from_io(
            format!("folder delivery to {shown} failed"),
            &e,
        ));
    }
    let placed = place(&temp, target);
    // Whatever happened, the document now has its final name or none, and
    // the temporary name goes (removing a link leaves the final name as it
    // is; after a rename there is nothing left to remove).
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            temp = %temp.display(),
            "folder delivery left its temporary file behind: {}",
            fsutil::io_cause(&e)
        ),
    }
    match placed {
        Ok(Placed::Created) => fsutil::sync_parent(target).map_err(|e| {
            StepError::from_io(
                format!("folder delivery to {shown} failed flushing the directory"),
                &e,
            )
        }),
        Ok(Placed::NameExists) => refuse_second_copy(source, target, reports),
        Err(e) => Err(StepError::from_io(
            format!("folder delivery to {shown} failed"),
            &e,
        )),
    }
}

/// How putting the document under its final name went.
enum Placed {
    /// The final name is the new document.
    Created,
    /// Something already had the final name; it was left as it is.
    NameExists,
}

/// Gives the written `temp` the name `target` unless that name exists.
fn place(temp: &Path, target: &Path) -> io::Result<Placed> {
    match std::fs::hard_link(temp, target) {
        Ok(()) => Ok(Placed::Created),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Placed::NameExists),
        Err(e) if without_hard_links(&e) => {
            // Check, then rename: no-replace but for a race in between,
            // the best a file system without links allows.
            match std::fs::symlink_metadata(target) {
                Ok(_) => Ok(Placed::NameExists),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::rename(temp, target)?;
                    Ok(Placed::Created)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether `link` failed because the file system has no hard links. Linux
/// says so with EPERM (FAT, some SMB mounts) or EOPNOTSUPP (some FUSE
/// mounts); the numbers are Linux's, as `libc` is not a dependency here.
fn without_hard_links(error: &io::Error) -> bool {
    const EPERM: i32 = 1;
    const EOPNOTSUPP: i32 = 95;
    error.kind() == io::ErrorKind::Unsupported
        || matches!(error.raw_os_error(), Some(EPERM | EOPNOTSUPP))
}

/// The temporary name of one attempt: hidden, beside `target` (a link or
/// rename across file systems is impossible), and with a random part, so
/// that a delivery racing this one (the other server of a pair) never
/// writes into the same file. A name too long to extend drops the final
/// name's part.
fn temp_path(target: &Path) -> PathBuf {
    let random = uuid::Uuid::new_v4().simple().to_string();
    let temp = fsutil::partial_path(target, &random[..16]);
    match temp.file_name() {
        Some(name) if name.len() > 255 => {
            temp.with_file_name(format!(".{}.partial", &random[..16]))
        }
        _ => temp,
    }
}

/// The final name exists: this job's document delivered before (by this
/// server, or by the other one of a pair), or another document. Neither is
/// overwritten; which one it is decides whether the step succeeded.
fn refuse_second_copy(source: &Path, target: &Path, reports: &JobReports) -> Result<(), StepError> {
    let shown = target.display();
    let report = |kind, text: String| {
        reports.push(DeliveryReport {
            plugin: "folder".into(),
            step: None,
            kind,
            text,
        })
    };
    let name_taken = |what: &str| {
        report(
            DeliveryReportKind::NameTaken,
            format!(
                "the folder already held {what} at {shown}; this job's document was not written \
                 there, and the file was left as it is"
            ),
        );
        StepError::permanent(format!(
            "folder delivery to {shown} refused: {what} already has that name and was left as it is, \
             so this job's document was not written (the other server of a pair may have delivered \
             a different version of this job, or something other than this workflow writes there)"
        ))
    };
    let is_file = std::fs::symlink_metadata(target).is_ok_and(|meta| meta.is_file());
    if !is_file {
        return Err(name_taken("something other than a file"));
    }
    match same_content(source, target) {
        Ok(true) => {
            report(
                DeliveryReportKind::SecondCopyRefused,
                format!(
                    "the folder already held this job's document at {shown}; the second copy was \
                     refused (not written)"
                ),
            );
            Ok(())
        }
        Ok(false) => Err(name_taken("a different document")),
        Err(e) => {
            let error = StepError::from_io(
                format!(
                    "folder delivery to {shown} found the name taken and cannot compare the file \
                     there with this job's document; it was left as it is"
                ),
                &e,
            );
            if !error.is_transient() {
                report(
                    DeliveryReportKind::NameTaken,
                    format!(
                        "the folder already held a file at {shown} that could not be read ({}); \
                         this job's document was not written there",
                        fsutil::io_cause(&e)
                    ),
                );
            }
            Err(error)
        }
    }
}

/// Whether two files hold the same bytes: the sizes first, then the
/// contents in blocks, so a large document is never held in memory.
fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    let (mut block_a, mut block_b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_block(&mut a, &mut block_a)?;
        let m = read_block(&mut b, &mut block_b)?;
        if block_a[..n] != block_b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Fills `block` as far as the file allows; returns how much was read.
fn read_block(file: &mut File, block: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < block.len() {
        match file.read(&mut block[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_missing_root_is_transient_and_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("document.pdf");
        std::fs::write(&source, b"%PDF-1.7").unwrap();
        let root = dir.path().join("share");
        let err = deliver(
            &source,
            &root,
            &root.join("a/b.pdf"),
            Access::PRIVATE,
            &JobReports::default(),
        )
        .unwrap_err();
        assert!(err.is_transient());
        assert!(err.reason().contains("is the share mounted?"), "{err}");
        assert!(!root.exists());
    }

    #[test]
    fn a_blocked_directory_fails_naming_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("document.pdf");
        std::fs::write(&source, b"%PDF-1.7").unwrap();
        let root = dir.path().join("share");
        std::fs::create_dir(&root).unwrap();
        let target = root.join("x.pdf");
        // A regular file where the day's directory should be cannot be
        // turned into a directory; as root, permissions alone would not stop
        // the write, so this is the portable way to provoke the failure.
        std::fs::write(root.join("day"), b"").unwrap();
        let err = deliver(
            &source,
            &root,
            &root.join("day/x.pdf"),
            Access::PRIVATE,
            &JobReports::default(),
        )
        .unwrap_err();
        assert!(err.reason().starts_with("folder delivery to "), "{err}");
        deliver(
            &source,
            &root,
            &target,
            Access::PRIVATE,
            &JobReports::default(),
        )
        .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"%PDF-1.7");
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn step(extra: serde_json::Value, root: &Path) -> Result<FolderStep, SettingsError> {
        let mut table = serde_json::json!({ "root": root });
        table
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        FolderStep::build(table.as_object().unwrap())
    }

    // Regression: deliveries were 0644 in 0755 directories, readable by
    // every local user.
    #[test]
    fn deliveries_are_private_unless_the_step_says_who_may_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("document.pdf");
        std::fs::write(&source, b"%PDF-1.7").unwrap();
        let root = dir.path().join("share");
        std::fs::create_dir(&root).unwrap();

        let private = step(serde_json::json!({}), &root).unwrap();
        assert_eq!(private.access(), Access::PRIVATE);
        let target = root.join("2030-01-01/a.pdf");
        deliver(
            &source,
            &root,
            &target,
            private.access(),
            &JobReports::default(),
        )
        .unwrap();
        assert_eq!(mode(&target), 0o600);
        assert_eq!(mode(&root.join("2030-01-01")), 0o700);
        assert_eq!(mode(&root), 0o755, "the root is the admin's, left alone");

        let gid = std::fs::metadata(&root).unwrap().gid();
        let shared = step(
            serde_json::json!({ "file_mode": "0640", "group": gid.to_string() }),
            &root,
        )
        .unwrap();
        let target = root.join("2030-01-02/b.pdf");
        deliver(
            &source,
            &root,
            &target,
            shared.access(),
            &JobReports::default(),
        )
        .unwrap();
        assert_eq!(mode(&target), 0o640);
        assert_eq!(mode(&root.join("2030-01-02")), 0o750);
        assert_eq!(std::fs::metadata(&target).unwrap().gid(), gid);
        let root_group = step(serde_json::json!({ "group": "root" }), &root).unwrap();
        assert_eq!(root_group.access().gid, Some(0));
    }

    /// Every file under `dir`, hidden ones included, as paths relative to it.
    fn entries(dir: &Path) -> Vec<PathBuf> {
        e2e::support::files_under(dir)
            .into_iter()
            .map(|p| p.strip_prefix(dir).unwrap().to_path_buf())
            .collect()
    }

    fn share_with_document(content: &[u8]) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("document.pdf");
        std::fs::write(&source, content).unwrap();
        let root = dir.path().join("share");
        std::fs::create_dir(&root).unwrap();
        (dir, source, root)
    }

    // Both servers of a pair may deliver one job (a crash before the
    // delivery was recorded, or a split pair); a shared folder must keep
    // the first copy and say that the second was refused.
    #[test]
    fn a_second_delivery_of_the_same_document_is_refused_and_reported() {
        let (_dir, source, root) = share_with_document(b"%PDF-1.7 the job");
        let target = root.join("day/a-job.pdf");
        let reports = JobReports::default();
        deliver(&source, &root, &target, Access::PRIVATE, &reports).unwrap();
        assert_eq!(
            reports.take(),
            Vec::new(),
            "a first delivery reports nothing"
        );
        let first = std::fs::metadata(&target).unwrap();

        deliver(&source, &root, &target, Access::PRIVATE, &reports).unwrap();
        let reported = reports.take();
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert_eq!(reported[0].kind, DeliveryReportKind::SecondCopyRefused);
        assert_eq!(reported[0].plugin, "folder");
        assert!(
            reported[0].text.contains(&target.display().to_string())
                && reported[0].text.contains("second copy was refused"),
            "{}",
            reported[0].text
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"%PDF-1.7 the job");
        let second = std::fs::metadata(&target).unwrap();
        assert_eq!(second.ino(), first.ino(), "the first file was replaced");
        assert_eq!(entries(&root), vec![PathBuf::from("day/a-job.pdf")]);
    }

    #[test]
    fn a_different_document_under_a_taken_name_fails_and_leaves_the_file() {
        let (_dir, source, root) = share_with_document(b"%PDF-1.7 this job");
        let target = root.join("a-job.pdf");
        // Same size, other bytes: the comparison must read the contents.
        std::fs::write(&target, b"%PDF-1.7 that one").unwrap();
        let reports = JobReports::default();
        let err = deliver(&source, &root, &target, Access::PRIVATE, &reports).unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert!(
            err.reason().contains(&target.display().to_string())
                && err.reason().contains("already has that name"),
            "{err}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"%PDF-1.7 that one");
        let reported = reports.take();
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert_eq!(reported[0].kind, DeliveryReportKind::NameTaken);
        assert_eq!(entries(&root), vec![PathBuf::from("a-job.pdf")]);

        // A shorter document is different too.
        std::fs::write(&source, b"%PDF").unwrap();
        let err = deliver(&source, &root, &target, Access::PRIVATE, &reports).unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert_eq!(reports.take()[0].kind, DeliveryReportKind::NameTaken);

        // A directory with the name is never a delivered document.
        let taken = root.join("dir-job.pdf");
        std::fs::create_dir(&taken).unwrap();
        let err = deliver(&source, &root, &taken, Access::PRIVATE, &reports).unwrap_err();
        assert!(
            err.reason().contains("something other than a file"),
            "{err}"
        );
        assert_eq!(reports.take()[0].kind, DeliveryReportKind::NameTaken);
        assert_eq!(entries(&root), vec![PathBuf::from("a-job.pdf")]);
    }

    #[test]
    fn racing_deliveries_of_one_job_leave_one_file_and_one_report() {
        let (_dir, source, root) = share_with_document(&vec![7u8; 300 * 1024]);
        // Several rounds, each with a fresh name, to give the race chances.
        for round in 0..20 {
            let target = root.join(format!("{round}/job.pdf"));
            let reports = JobReports::default();
            let start = std::sync::Barrier::new(2);
            let results: Vec<_> = std::thread::scope(|scope| {
                let racers: Vec<_> = (0..2)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            deliver(&source, &root, &target, Access::PRIVATE, &reports)
                        })
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            let reported = reports.take();
            assert_eq!(reported.len(), 1, "round {round}: {reported:?}");
            assert_eq!(reported[0].kind, DeliveryReportKind::SecondCopyRefused);
            assert_eq!(
                std::fs::read(&target).unwrap(),
                std::fs::read(&source).unwrap()
            );
            assert_eq!(
                entries(&root.join(round.to_string())),
                vec![PathBuf::from("job.pdf")]
            );
        }
    }

    #[test]
    fn temporary_names_differ_per_attempt_and_fit_the_file_system() {
        let target = Path::new("/srv/share/day/a-job.pdf");
        let (a, b) = (temp_path(target), temp_path(target));
        assert_ne!(a, b);
        assert_eq!(a.parent(), target.parent());
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(".a-job.pdf.") && name.ends_with(".partial"),
            "{name}"
        );
        let long = PathBuf::from(format!("/srv/{}.pdf", "x".repeat(250)));
        let temp = temp_path(&long);
        assert!(temp.file_name().unwrap().len() <= 255, "{}", temp.display());
        assert_eq!(temp.parent(), long.parent());
    }

    #[test]
    fn bad_access_settings_name_the_key() {
        let root = Path::new("/srv/share");
        for (extra, expected) in [
            (serde_json::json!({ "file_mode": "rw-r-----" }), "file_mode"),
            (serde_json::json!({ "file_mode": "4755" }), "file_mode"),
            (
                serde_json::json!({ "file_mode": "0440" }),
                "keep the owner's rw",
            ),
            (
                serde_json::json!({ "group": "no-such-group-here" }),
                "there is no group `no-such-group-here`",
            ),
        ] {
            let err = step(extra.clone(), root).unwrap_err().to_string();
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }
}
