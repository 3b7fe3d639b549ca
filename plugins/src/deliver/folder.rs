//! The `folder` delivery: the document copied under a root directory with a
//! name from a template. It must not create the root itself: a missing root
//! usually means an unmounted share, and writing into the bare mount point
//! would hide the documents.
//!
//! The name is fixed per job (the template must contain `{job_id}` and its
//! other values come from the job), so a repeated delivery overwrites the
//! same file instead of adding a second one. The copy is atomic: a temporary
//! file in the target directory, flushed, renamed over the final name, then
//! the directory flushed.
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
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::name::NameTemplate;
use crate::fsutil;
use crate::job::JobContext;
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
        let tag = job.job_id.to_string();
        let access = self.access;
        Box::pin(blocking("delivering to the folder", move || {
            deliver(&source, &root, &target, &tag, access)
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
    tag: &str,
    access: Access,
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
    let temp = fsutil::partial_path(target, tag);
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
        output.sync_all()?;
        drop(output);
        std::fs::rename(&temp, target)?;
        fsutil::sync_parent(target)
    })();
    copy.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        StepError::from_io(format!("folder delivery to {shown} failed"), &e)
    })
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
        let err = deliver(&source, &root, &root.join("a/b.pdf"), "t", Access::PRIVATE).unwrap_err();
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
            "t",
            Access::PRIVATE,
        )
        .unwrap_err();
        assert!(err.reason().starts_with("folder delivery to "), "{err}");
        deliver(&source, &root, &target, "t", Access::PRIVATE).unwrap();
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
        deliver(&source, &root, &target, "t", private.access()).unwrap();
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
        deliver(&source, &root, &target, "t", shared.access()).unwrap();
        assert_eq!(mode(&target), 0o640);
        assert_eq!(mode(&root.join("2030-01-02")), 0o750);
        assert_eq!(std::fs::metadata(&target).unwrap().gid(), gid);
        let root_group = step(serde_json::json!({ "group": "root" }), &root).unwrap();
        assert_eq!(root_group.access().gid, Some(0));
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
